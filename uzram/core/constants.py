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

KIND_NAMES = {EMPTY: "empty", SAME: "same", COMPRESSED: "compressed", HUGE: "huge", PENDING: "pending"}

#: Largest request nbdkit hands a plugin (its own limit is 64 MiB).
MAX_REQUEST = 32 * 1024 * 1024
