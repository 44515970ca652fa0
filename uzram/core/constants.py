"""Sizes and limits shared by every layer.  Imports nothing from uzram."""

PAGE_SIZE = 4096
PAGE_SHIFT = 12
PAGE_MASK = PAGE_SIZE - 1
WORDS_PER_PAGE = PAGE_SIZE // 8

#: A compressed page at least this big is stored raw, as zram's "huge" pages.
HUGE_THRESHOLD = PAGE_SIZE * 3 // 4

#: Page kinds in the page table.
EMPTY = 0       # never written, trimmed or zeroed with MAY_TRIM: reads as zeros, reported as a hole
SAME = 1        # one 8-byte value repeated; the value is in the table, no blob
COMPRESSED = 2  # a blob in the arena, compressed by the codec whose ID the table records
HUGE = 3        # the raw page in the arena (compression did not get below HUGE_THRESHOLD)
PENDING = 4     # a raw copy in the pending area, queued for kcompressd
BACKED = 5      # written back: the raw page in a block of the backing file

KIND_NAMES = {EMPTY: "empty", SAME: "same", COMPRESSED: "compressed", HUGE: "huge", PENDING: "pending",
              BACKED: "backed"}

#: The top bit of a page's access time (seconds, 31 bits) marks it idle (zram's ZRAM_IDLE):
#: set by ``idle=``, cleared by any read or write of the page, which stores a fresh time.
IDLE_BIT = 1 << 31

#: Page flags (one byte a page): the priority of the codec that stored the page (0 for
#: the primary, 1..3 for recompression's, zram's ZRAM_COMP_PRIORITY) and INCOMPRESSIBLE
#: (recompression found no codec that makes it smaller, zram's ZRAM_INCOMPRESSIBLE).
PRIO_MASK = 0x03
INCOMPRESSIBLE = 0x04
MAX_RECOMP = 3      # secondary codecs, priorities 1..3 (zram's ZRAM_MAX_COMPS - 1)

#: Largest request nbdkit hands a plugin (its own limit is 64 MiB).
MAX_REQUEST = 32 * 1024 * 1024
