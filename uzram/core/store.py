"""The page store: the page table, the arena, the pending ring, and the accounting.

The page table is seven numpy arrays indexed by page number (21 bytes a page, resident
only where touched), so a request works on slices, not on one Python object per page:

    kind     uint8   EMPTY, SAME, COMPRESSED, HUGE, PENDING or BACKED (constants.py)
    codec    uint8   stored codec ID of a COMPRESSED page (0 = raw)
    clen     uint16  bytes of the blob (4096 for HUGE)
    meta     uint64  SAME: the 8-byte pattern; COMPRESSED/HUGE: the blob's offset in the
                     arena; PENDING: its slot in the pending ring; BACKED: its block in
                     the backing file
    gen      uint32  generation: bumped by every write, zero and trim of the page
    atime    uint32  last access (the device clock's seconds), top bit = idle
    flags    uint8   codec priority and INCOMPRESSIBLE (constants.py)

One lock guards all of it (StoreLock; whole-page reads check its sequence number instead
of taking it, see ``reader``).  Nothing is compressed under the lock.  There are two ways
in for a write, and the device chooses between them:

- ``write`` (inline): compress the request's pages outside the lock, then install them
  in one locked step;
- ``stage`` (kcompressd): copy the pages that are not same-filled from the request's
  buffer into consecutive slots of the shared pending ring, point the page table at the
  slots, and return.  Workers compress from the ring into their own windows of the
  shared arena; ``install`` then takes each checked result over with a few vectorized
  page-table updates, for the pages that are still queued in the slot they were staged
  in (so an older result never overwrites a newer write, and a page overwritten,
  zeroed or trimmed while queued is never installed).

Same-filled pages are stored at once on both ways, never queued.  A page written only in
part is read, patched and (inline) compressed outside the lock; it is installed only if
its generation did not move meanwhile, else read and patched again.

Every mutation of a request is all-or-nothing: the ENOSPC check runs before anything of
the request is changed.

mem_limit holds for mem_used_total, the memory really held (arena segments as written,
the pending ring as touched), not only for live bytes: a write is admitted when what it
may add fits under the limit, less a reserve of one segment (at most an eighth of the
limit) that cleaning needs to move blobs; pages queued for kcompressd count for the arena
space their results may take.  When a write does not fit, the emptiest segments are
cleaned first, each only if its move fits under the limit; if that frees too little, the
write fails with ENOSPC and nothing of it changes.

Writeback, recompression and idle marking (zram's post-processing) work on this table
from ``uzram.core.postproc``.
"""

import itertools
import os
import threading
import time
from array import array

import numpy as np

from .arena import SEALED, Arena, capacity_for
from .codecs import KNOWN_IDS, RAW_ID, compress_pages, decoder
from .constants import (BACKED, COMPRESSED, EMPTY, HUGE, IDLE_BIT, INCOMPRESSIBLE, PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, PENDING, SAME,
                        WORDS_PER_PAGE)
from .errors import InvalidRequestError, NoSpaceError, ProtocolError, UzramError
from .pending import PendingRing
from .samefill import same_value

ZERO_PAGE = bytes(PAGE_SIZE)
GEN_MASK = 0xFFFFFFFF
_KIND_OF_ID = np.full(256, COMPRESSED, dtype=np.uint8)   # a blob's kind by its codec ID: raw is HUGE
_KIND_OF_ID[RAW_ID] = HUGE
#: How full the pending ring is (a share of its slots) when writers start compressing a
#: share of their own pages (PageStore._own_share).
OWN_SHARE_FROM = 0.5
#: Cleaning (copying the live blobs of the emptiest segments away, zram's compaction) is
#: mostly left to idle moments: once writes pause (``clean_idle_step``, the device's
#: cleaner) dead bytes past CLEAN_MIN and CLEAN_IDLE of what is held are cleaned down to
#: CLEAN_TO.  While writes go on, a request cleans in passing only past CLEAN_BUSY, and at
#: most CLEAN_STEP segments: an overwrite that is under way kills whole segments by itself,
#: and copying their last live blobs only moves pages about to die (on the mix copied over
#: itself with four connections, that cleaning took 9.5 ms of a request's time on average,
#: 27 ms at worst, and 0.12 s per copy: README, "When cleaning runs").
CLEAN_MIN = 2 << 20
CLEAN_IDLE = 0.05
CLEAN_BUSY = 0.25
CLEAN_TO = 0.02
CLEAN_STEP = 4


class _IdlePass:
    """A pass of ``PageStore.clean_idle_step``: the victims left, the pages found in them
    (sorted by segment, with their segments), the head when it started, the bytes freed."""

    __slots__ = ("victims", "pages", "segs", "head", "freed")

    def __init__(self, victims, pages, segs, head):
        self.victims, self.pages, self.segs, self.head, self.freed = victims, pages, segs, head, 0


class StoreLock:
    """The store's lock, with a sequence number for readers that do not take it.

    Every holder may change the store, so the number is odd while the lock is held and
    moves on by two for each holding.  A reader that saw the same even number before and
    after copying a page saw no change in between (``PageStore.reader``); the GIL orders
    these reads and writes across threads.
    """

    __slots__ = ("_lock", "seq")

    def __init__(self):
        self._lock = threading.Lock()
        self.seq = 0

    def __enter__(self):
        self._lock.acquire()
        self.seq += 1

    def __exit__(self, *exc):
        self.seq += 1
        self._lock.release()


class Clock:
    """The device's clock for access times: whole seconds since boot (zram's ac_time uses
    boot time too), moved on by ``skew`` (``uzram ctl NAME clock=+SECONDS``, for tests
    and demonstrations of idle marking)."""

    __slots__ = ("skew",)
    MAX = IDLE_BIT - 1      # an access time must leave the idle bit clear (about 68 years)

    def __init__(self):
        self.skew = 0

    def now(self):
        return int(time.clock_gettime(time.CLOCK_BOOTTIME)) + self.skew     # (skew is kept under MAX)


class PageStore:
    SMALL_RANGE = 32   # pages: below this, freeing page by page beats numpy's fixed costs

    def __init__(self, size, codec, mem_limit=0, max_pending=0, lanes=0, lock=False, clock=None):
        self.size = size
        self.npages = -(-size // PAGE_SIZE)
        self.codec = codec
        self.mem_limit = mem_limit
        n = self.npages
        self.kind = np.zeros(n, dtype=np.uint8)
        self.codec_ids = np.zeros(n, dtype=np.uint8)
        self.clen = np.zeros(n, dtype=np.uint16)
        self.meta = np.zeros(n, dtype=np.uint64)
        self.gen = np.zeros(n, dtype=np.uint32)
        self.atime = np.zeros(n, dtype=np.uint32)
        self.flags = np.zeros(n, dtype=np.uint8)
        # Scalar views of the same memory: indexing a memoryview gives a Python int, about
        # five times cheaper than a numpy scalar; used where a request touches few pages.
        self._kind = memoryview(self.kind)
        self._codec = memoryview(self.codec_ids)
        self._clen = memoryview(self.clen)
        self._meta = memoryview(self.meta)
        self._gen = memoryview(self.gen)
        self._atime = memoryview(self.atime)
        self._flags = memoryview(self.flags)
        self.clock = clock or Clock()
        self._stamp_at = -1                 # the time in _stamp_run (a run of it, for slice stores)
        self._stamp_run = None
        self.backing = None                 # a BackingFile, once attached
        self.lanes = lanes
        self.arena = Arena(capacity_for(size, lanes), lock=lock)
        self.ring = PendingRing(max_pending) if max_pending else None
        self._decoders = [None] * 256    # codec ID -> its decompress(blob), filled on first use
        self.page_decoders = [None] * 256  # codec ID -> its page_decoder(), for ``reader``
        for cid in KNOWN_IDS:
            self.page_decoders[cid] = decoder(cid).page_decoder()
        self.lock = StoreLock()
        # accounting (under the lock)
        self.n_stored = 0
        self.n_same = 0
        self.n_compressed = 0
        self.n_huge = 0
        self.n_pending = 0
        self.compr_bytes = 0
        self.huge_since = 0
        self.notify_free = 0
        self.pages_compacted = 0
        self.mem_used_max = 0
        self.stale_results = 0
        self.cancelled_pages = 0
        self.writer_pages = 0         # pages a writer compressed itself instead of queueing them
        self._own_carry = 0.0         # the share of a page owed (_own_share)
        self.n_backed = 0
        self.bd_reads = 0
        self.bd_writes = 0
        self.num_recompressed = 0
        self.recompressed_saved = 0
        self.refused = ""                 # why ``stage`` last returned None: max_pending or mem_limit
        self.maintenance = 0              # post-processing jobs reading blobs in place: no cleaning
        self._clean_failed_at = None      # dead bytes when cleaning last found no victim
        self._idle_pass = None            # an _IdlePass while clean_idle_step is in a pass

    def close(self):
        self.arena.close()
        if self.ring is not None:
            self.ring.mv.release()
            self.ring.cancel.release()
            self.ring.file.close()

    # ------------------------------------------------------------------ helpers

    def check_range(self, offset, count):
        if offset < 0 or count < 0 or offset + count > self.size:
            raise InvalidRequestError(
                f"request [{offset}, {offset + count}) is outside the device (size {self.size})")

    @property
    def mem_used(self):
        return self.arena.counted_bytes + (self.ring.held_bytes if self.ring is not None else 0)

    def _charged(self):
        """Bytes the limit is checked against: live compressed bytes plus queued pages."""
        return self.arena.used_bytes + self.n_pending * PAGE_SIZE

    def _note_mem(self):
        used = self.mem_used
        if used > self.mem_used_max:
            self.mem_used_max = used

    def _release_one(self, p, now):
        """Free whatever page ``p`` holds, mark it EMPTY, bump its generation and stamp its
        access time with ``now`` (the caller is writing, zeroing or trimming it, and reads
        the clock once for the request)."""
        gen = self._gen
        gen[p] = (gen[p] + 1) & GEN_MASK
        k = self._kind[p]
        if k == EMPTY:
            self._atime[p] = now
            return
        self._kind[p] = EMPTY
        self._flags[p] = 0
        self._atime[p] = now
        self.n_stored -= 1
        if k == SAME:
            self.n_same -= 1
        elif k == PENDING:
            self.ring.cancel_slot(self._meta[p])    # a worker skips it, even if already sent
            self.n_pending -= 1
        elif k == BACKED:
            self.backing.release_one(self._meta[p])
            self.n_backed -= 1
        else:
            n = self._clen[p]
            self.arena.release_one(self._meta[p], n)
            self.compr_bytes -= n
            if k == HUGE:
                self.n_huge -= 1
            else:
                self.n_compressed -= 1

    def _release(self, pages):
        """The vectorized form of _release_one for an array of pages."""
        self.gen[pages] += 1
        self.atime[pages] = self.clock.now()
        k = self.kind[pages]
        if not k.any():
            return
        self.flags[pages] = 0
        self.n_stored -= int(np.count_nonzero(k))
        self.n_same -= int(np.count_nonzero(k == SAME))
        blob = (k == COMPRESSED) | (k == HUGE)
        if blob.any():
            bp = pages[blob]
            lens = self.clen[bp]
            self.compr_bytes -= int(lens.sum(dtype=np.int64))
            nhuge = int(np.count_nonzero(k == HUGE))
            self.n_huge -= nhuge
            self.n_compressed -= len(bp) - nhuge
            self.arena.release_many(self.meta[bp], lens)
        pend = k == PENDING
        if pend.any():
            self.ring.cancel_slots(self.meta[pages[pend]].astype(np.int64))
            self.n_pending -= int(np.count_nonzero(pend))
        backed = k == BACKED
        if backed.any():
            self.backing.release(self.meta[pages[backed]].astype(np.int64))
            self.n_backed -= int(np.count_nonzero(backed))
        self.kind[pages] = EMPTY

    def _put_same(self, pages, values):
        """Pages (already released) become same-filled with ``values``."""
        kind, meta = self._kind, self._meta
        n = 0
        for p, v in zip(pages, values):
            kind[p] = SAME
            meta[p] = v
            n += 1
        self.n_same += n
        self.n_stored += n

    def _count_blobs(self, npages, nhuge, nbytes):
        self.n_huge += nhuge
        self.huge_since += nhuge
        self.n_compressed += npages - nhuge
        self.compr_bytes += nbytes

    def _put_blobs(self, pages, ids, blobs):
        """Install blobs (lists) for ``pages`` (already released): one append to the arena
        per segment's worth."""
        kind, codec, clen, meta = self._kind, self._codec, self._clen, self._meta
        nhuge = total = 0
        for group in self._segment_groups(blobs):
            word = base = self.arena.append(b"".join(blobs[i] for i in group))
            for i in group:
                p, cid, n = pages[i], ids[i], len(blobs[i])
                if cid == RAW_ID:
                    kind[p] = HUGE
                    nhuge += 1
                else:
                    kind[p] = COMPRESSED
                codec[p] = cid
                clen[p] = n
                meta[p] = word
                word += n
            self.arena.add_live(base, word - base)
            total += word - base
        self._count_blobs(len(pages), nhuge, total)
        self.n_stored += len(pages)

    def _check_room(self, blobs, *freeing):
        """Raise NoSpaceError, before a request changes anything, when the arena could not
        take ``blobs`` once the request has freed the pages in ``freeing`` (ranges or lists,
        joined only here, past the fast path: their blobs may empty a sealed segment).  The arena has room for all the device's
        pages raw and as much again, so only a pathological fill gets here; the count is
        skipped when free segments are plenty (each group but the last fills all but 4 KiB
        of a segment)."""
        total = sum(map(len, blobs))
        if self.arena.free_segments > 2 * total // self.arena.segment_bytes + 1:
            return
        pages = np.asarray([p for part in freeing for p in part], dtype=np.int64)
        k = self.kind[pages]
        pages = pages[(k == COMPRESSED) | (k == HUGE)]
        freed = self.arena.segments_freed_by(self.meta[pages], self.clen[pages]) if len(pages) else 0
        self.arena.check_room([sum(len(blobs[i]) for i in g) for g in self._segment_groups(blobs)], freed)

    def _segment_groups(self, blobs):
        """Indexes of ``blobs`` in runs that each fit one arena segment."""
        limit = self.arena.segment_bytes
        group, size = [], 0
        for i, b in enumerate(blobs):
            if size + len(b) > limit:
                yield group
                group, size = [], 0
            group.append(i)
            size += len(b)
        if group:
            yield group

    def _page_bytes(self, p):
        """The content of page ``p`` (under the lock)."""
        k = self._kind[p]
        if k == EMPTY:
            return ZERO_PAGE
        if k == SAME:
            v = self._meta[p]
            return ZERO_PAGE if v == 0 else v.to_bytes(8, "little") * WORDS_PER_PAGE
        if k == PENDING:
            slot = self._meta[p]
            return self.ring.mv[slot * PAGE_SIZE:(slot + 1) * PAGE_SIZE].tobytes()
        if k == BACKED:
            self.bd_reads += 1
            return self.backing.read(self._meta[p])
        blob = self.arena.load(self._meta[p], self._clen[p])
        if k == HUGE:
            return blob
        return self._decompress(self._codec[p], blob)

    def _stamp(self, p0, n):
        """Pages [p0, p0 + n) were accessed now: their access time is set and their idle
        mark cleared, with one slice copy."""
        now = self.clock.now()
        if now != self._stamp_at or len(self._stamp_run) < n:
            self._stamp_at = now
            self._stamp_run = memoryview(array("I", [now]) * max(n, 256))
        self._atime[p0:p0 + n] = self._stamp_run[:n]

    def _decompress(self, codec_id, blob):
        """``blob`` decompressed by the codec with stored ID ``codec_id`` (looked up once)."""
        fn = self._decoders[codec_id]
        if fn is None:
            fn = self._decoders[codec_id] = decoder(codec_id).decompress
        return fn(blob)

    def _snapshot(self, p):
        """Under the lock: (generation, kind, codec, bytes) of page ``p``, enough to rebuild
        its content outside the lock (``_content``)."""
        k = self._kind[p]
        if k == COMPRESSED:
            return self._gen[p], k, self._codec[p], self.arena.load(self._meta[p], self._clen[p])
        return self._gen[p], k, 0, self._page_bytes(p)

    def _content(self, snap):
        _, k, cid, data = snap
        return self._decompress(cid, data) if k == COMPRESSED else data

    # ------------------------------------------------------------------ reads

    def read(self, buf, offset):
        """Fill ``buf`` (a writable buffer) from ``offset``: the general path, under the lock.
        Whole aligned pages are served by ``reader``'s closure, which falls back to this."""
        count = len(buf)
        self.check_range(offset, count)
        if count == 0:
            return
        first = offset >> PAGE_SHIFT
        last = (offset + count - 1) >> PAGE_SHIFT
        kind = self._kind
        with self.lock:
            self._stamp(first, last + 1 - first)
            pos = 0
            for p in range(first, last + 1):
                start = offset + pos - (p << PAGE_SHIFT)
                n = min(PAGE_SIZE - start, count - pos)
                if kind[p] == EMPTY:
                    buf[pos:pos + n] = ZERO_PAGE[:n]
                elif n == PAGE_SIZE:
                    buf[pos:pos + n] = self._page_bytes(p)
                else:
                    buf[pos:pos + n] = self._page_bytes(p)[start:start + n]
                pos += n

    def reader(self, general, tally):
        """nbdkit's ``pread(h, buf, offset, flags)`` for this store, in one Python frame.

        A 4 KiB read at a page boundary (swap-in, random reads: the latency-bound request)
        is served here without the lock: the closure notes the lock's sequence number (odd
        while a writer holds it), copies, and keeps the copy only if the number is the same
        even one afterwards.  Otherwise (a writer was at work), and for anything but a whole
        aligned page, the read goes to ``general(buf, offset)`` (the device's locked path,
        which also names and counts errors).  Compressed blobs are copied out and
        decompressed only after the check, so a decoder never sees bytes a writer is
        changing.  ``tally.reads`` and ``tally.bytes_read`` count the reads served here.

        Timed inside nbdkit by a scratch timer, a never-written page took 6.9 us through
        the general path and 3.1 us here (3.3 us in the bare plugin)."""
        lock = self.lock
        kind, codec, clen, meta, atime = self._kind, self._codec, self._clen, self._meta, self._atime
        amm, amv = self.arena.mm, self.arena.mv
        ring = self.ring.mv if self.ring is not None else None
        decoders = self.page_decoders
        last = self.size - PAGE_SIZE
        now = self.clock.now
        store = self
        preadv = os.preadv

        def pread(h, buf, offset, flags):
            if offset & PAGE_MASK or offset > last or len(buf) != PAGE_SIZE:
                return general(buf, offset)
            p = offset >> PAGE_SHIFT
            seq = lock.seq
            try:
                k = kind[p]
                if k == COMPRESSED:
                    w = meta[p]
                    blob = amm[w:w + clen[p]]
                    dec = decoders[codec[p]]
                elif k == EMPTY:
                    buf[:] = ZERO_PAGE
                elif k == HUGE:
                    w = meta[p]
                    buf[:] = amv[w:w + PAGE_SIZE]
                elif k == SAME:
                    v = meta[p]
                    buf[:] = v.to_bytes(8, "little") * WORDS_PER_PAGE if v else ZERO_PAGE
                elif k == PENDING:
                    s = meta[p] << PAGE_SHIFT
                    buf[:] = ring[s:s + PAGE_SIZE]
                else:   # BACKED: a block of the backing file (a stale block fails the check)
                    if preadv(store.backing.fd, (buf,), meta[p] << PAGE_SHIFT) != PAGE_SIZE:
                        seq = -1
            except Exception:
                # A writer changed the page under us (a stale location): the check below
                # sends the read to the general path.
                seq = -1
            if seq & 1 or lock.seq != seq:
                return general(buf, offset)
            if k == COMPRESSED:
                try:
                    buf[:] = dec(blob)
                except Exception:
                    # A corrupt blob or an unknown codec: the general path decodes it again
                    # and raises the error that names the problem.
                    return general(buf, offset)
            elif k == BACKED:
                store.bd_reads += 1
            atime[p] = now()
            tally.reads += 1
            tally.bytes_read += PAGE_SIZE

        return pread

    # ------------------------------------------------------------------ writes

    @staticmethod
    def _split(offset, count):
        """(first whole page, end of whole pages, [pages written only in part])."""
        end = offset + count
        first_full = -(-offset // PAGE_SIZE)
        end_full = max(first_full, end >> PAGE_SHIFT)
        partial = []
        if offset & PAGE_MASK:
            partial.append(offset >> PAGE_SHIFT)
        if end & PAGE_MASK and (end >> PAGE_SHIFT) not in partial:
            partial.append(end >> PAGE_SHIFT)
        return first_full, end_full, partial

    @staticmethod
    def _classify(data, offset, first, end):
        """The whole pages [first, end) of a request split into same-filled ones (pages,
        values) and the others (pages, their bytes)."""
        starts = range((first << PAGE_SHIFT) - offset, (end << PAGE_SHIFT) - offset, PAGE_SIZE)
        pages = ((p, data[pos:pos + PAGE_SIZE].tobytes()) for p, pos in zip(range(first, end), starts))
        return _split_same(pages, ([], [], [], []))

    def _patch(self, data, offset, partial):
        """Pages written only in part, read and patched outside the lock: [(page, snapshot
        generation, snapshot kind, patched bytes)]."""
        if not partial:
            return []
        with self.lock:
            snaps = [self._snapshot(p) for p in partial]
        end = offset + len(data)
        out = []
        for p, snap in zip(partial, snaps):
            page = bytearray(self._content(snap))
            base = p << PAGE_SHIFT
            lo, hi = max(offset, base), min(end, base + PAGE_SIZE)
            page[lo - base:hi - base] = data[lo - offset:hi - offset]
            out.append((p, snap[0], snap[1], bytes(page)))
        return out

    def _unchanged(self, patched):
        """No write, zero or trim touched these pages since their snapshot: every release of
        a stored page bumps its generation, and a page that was empty has a kind now."""
        gen, kind = self._gen, self._kind
        return all(gen[p] == g and kind[p] == k for p, g, k, _ in patched)

    def write(self, data, offset):
        """Store ``data`` (bytes-like) at ``offset``, compressing inline: outside the lock,
        then one locked step installs the whole request.  Raises NoSpaceError with nothing
        changed."""
        data = memoryview(data).cast("B")
        count = len(data)
        self.check_range(offset, count)
        if count == 0:
            return
        first, end, partial = self._split(offset, count)
        same_p, same_v, blob_p, raw = self._classify(data, offset, first, end)
        ids, blobs = compress_pages(self.codec, raw)
        while True:
            patched = self._patch(data, offset, partial)
            sp, sv, bp, pb = _with_patched(patched, same_p, same_v, blob_p, ())
            pids, pblobs = compress_pages(self.codec, pb)
            with self.lock:
                if patched and not self._unchanged(patched):
                    continue          # another write changed a partial page: patch it again
                all_ids, all_blobs = ids + pids, blobs + pblobs
                if self.mem_limit and all_blobs:
                    self._admit(len(sp) + len(bp), self._blob_cost(all_blobs))
                if all_blobs:
                    self._check_room(all_blobs, sp, bp)
                release, now = self._release_one, self.clock.now()
                for p in sp:
                    release(p, now)
                for p in bp:
                    release(p, now)
                if sp:
                    self._put_same(sp, sv)
                if bp:
                    self._put_blobs(bp, all_ids, all_blobs)
                self._maybe_compact_locked()
                self._note_mem()
                return

    def stage(self, data, offset):
        """Queue ``data`` (bytes-like) at ``offset`` for kcompressd: its pages that are not
        same-filled are copied into the pending ring (one copy per run of such pages) and
        stay readable there; same-filled pages are stored at once.  The writer compresses
        some pages itself, in the same locked step (``_writer_part``): a share once the ring
        is past half full, and what a request cannot queue (beyond a quarter of the ring,
        or beyond its room).

        Returns the ring position that the request's last page was staged before (a flush
        or FUA write waits until the ring has retired up to it), 0 when nothing was queued,
        or None when the ring has no room for the request, or mem_limit none for queueing
        it (``refused`` says which): then nothing was changed, and the caller writes it
        inline, where a request that does not fit under mem_limit fails with ENOSPC.
        Raises NoSpaceError, with nothing changed, when the arena cannot take the blobs
        of the writer's own part.

        Requests are mostly a few pages (nbdcopy splits at every hole, the kernel swaps out
        4..128 KiB), so the work per page is plain Python on memoryviews of the page table,
        a few operations a page: a numpy call costs more than a page's bookkeeping."""
        data = memoryview(data).cast("B")
        count = len(data)
        if offset < 0 or offset + count > self.size:
            self.check_range(offset, count)
        if (offset | count) & PAGE_MASK or not count:
            return self._stage_unaligned(data, offset) if count else 0
        ring = self.ring
        n = count >> PAGE_SHIFT
        p0 = offset >> PAGE_SHIFT
        # Same-filled pages: most pages differ in their first, second or last word.
        q = data.cast("Q")
        same = None
        for i in range(n):
            w = i << 9
            a = q[w]
            if a == q[w + 1] and a == q[w + 511]:
                v = same_value(data[i << PAGE_SHIFT:(i + 1) << PAGE_SHIFT].tobytes())
                if v is not None:
                    if same is None:
                        same = {}
                    same[i] = v
        k = n if same is None else n - len(same)
        # Once the ring is more than half full, the writer compresses a share of its pages
        # itself (the last ones), a share that grows with the fill: the backlog stays
        # bounded without whole requests stalling.  A full ring is a writestall.  Of a
        # request bigger than a quarter of the ring, or than the room left in it, the
        # writer compresses the rest.
        own = self._writer_part(k) if k else 0
        if own is None:
            return None
        cut, ids, blobs, extra = n, (), (), 0
        if own:
            others = [i for i in range(n) if same is None or i not in same]
            cut = others[k - own]
            ids, blobs = compress_pages(self.codec, [data[i << PAGE_SHIFT:(i + 1) << PAGE_SHIFT]
                                                     for i in others[k - own:]])
            extra = self._blob_cost(blobs)   # (mem_limit may be set meanwhile: read under the lock)
            k -= own
        slot = 0
        with self.lock:
            filling = ring.filling      # (before the alloc: the write that finishes the first touch grows too)
            if self.mem_limit and (k or own) and not self._room_to_stage(k, extra):
                self.refused = "mem_limit"
                return None     # inline, which refuses with ENOSPC if the pages do not fit either
            if own:
                self._check_room(blobs, range(p0, p0 + n))
            if k:
                slot = ring.alloc(k)
                if slot is None:
                    self.refused = "max_pending"
                    return None
            kind = self._kind
            # old contents to free (rare on a fresh device)
            freed = kind[p0:p0 + n] != (ring.zeros[:n] if n <= ring.capacity else bytes(n))
            if freed:
                release, now = self._release_one, self.clock.now()
                for p in range(p0, p0 + n):
                    if kind[p]:
                        release(p, now)
            self._stamp(p0, n)
            # Runs of staged pages are filled with slice copies: one for the data, one for
            # each page-table column, whatever their length.
            if same is None:
                runs = ((0, cut),)
            else:
                runs, start = [], None
                for i in range(cut + 1):
                    if i < cut and i not in same:
                        if start is None:
                            start = i
                    elif start is not None:
                        runs.append((start, i))
                        start = None
            meta, mv, sp, slots, pending = self._meta, ring.mv, ring.slot_pages, ring.slot_numbers, ring.pending_kinds
            s = slot
            for i0, i1 in runs:
                m = i1 - i0
                mv[s << PAGE_SHIFT:(s + m) << PAGE_SHIFT] = data[i0 << PAGE_SHIFT:i1 << PAGE_SHIFT]
                kind[p0 + i0:p0 + i1] = pending[:m]
                meta[p0 + i0:p0 + i1] = slots[s:s + m]
                sp[s:s + m] = array("l", range(p0 + i0, p0 + i1))
                ring.clear_cancel(s, m)
                s += m
            if same is not None:
                for i, v in same.items():
                    kind[p0 + i] = SAME
                    meta[p0 + i] = v
                self.n_same += len(same)
            # the queued part is whole and counted before the writer's own blobs go in
            self.n_stored += n - own
            self.n_pending += k
            end = ring.publish() if k else 0
            if own:
                self._put_blobs([p0 + i for i in others[-own:]], ids, blobs)
                self.writer_pages += own
            if freed:
                self._maybe_compact_locked()
            if own or filling:
                self._note_mem()        # only a ring that is not yet touched all over grows
            return end

    def _stage_unaligned(self, data, offset):
        """``stage`` for a request with pages written only in part: those are read and
        patched (outside the lock), then staged raw with the whole pages, page by page.
        The writer's part (``_writer_part``, decided once a request) is its last whole
        pages that are not same-filled, compressed once, outside the lock; only where it
        is bigger than those are pages written in part in it, compressed again whenever
        another write changes them before the lock is taken."""
        first, end, partial = self._split(offset, len(data))
        same_p, same_v, other_p, other_b = self._classify(data, offset, first, end)
        ring = self.ring
        todo = len(other_p) + len(partial)                  # pages that may be queued
        own = self._writer_part(todo) if todo else 0
        if own is None:
            return None
        kw = len(other_p) - min(own, len(other_p))          # whole pages to queue
        wids, wblobs = compress_pages(self.codec, other_b[kw:])
        while True:
            patched = self._patch(data, offset, partial)
            sp, sv, bp, pages = _with_patched(patched, same_p, same_v, other_p[:kw], other_b[:kw])
            k = len(bp) - min(own - len(wids), len(bp) - kw)  # queued: no more than the room
            pids, pblobs = compress_pages(self.codec, pages[k:])
            own_p, ids, blobs = bp[k:] + other_p[kw:], pids + wids, pblobs + wblobs
            extra = self._blob_cost(blobs) if blobs else 0
            with self.lock:
                if patched and not self._unchanged(patched):
                    continue
                if self.mem_limit and (k or blobs) and not self._room_to_stage(k, extra):
                    self.refused = "mem_limit"
                    return None
                if blobs:
                    self._check_room(blobs, sp, bp, other_p[kw:])
                if k:
                    slot = ring.alloc(k)
                    if slot is None:
                        self.refused = "max_pending"
                        return None
                release, now = self._release_one, self.clock.now()
                for p in sp:
                    release(p, now)
                for p in bp:
                    release(p, now)
                for p in other_p[kw:]:
                    release(p, now)
                if sp:
                    self._put_same(sp, sv)
                kind, meta, mv, slots = self._kind, self._meta, ring.mv, ring.slot_pages
                for i, (p, page) in enumerate(zip(bp[:k], pages[:k])):
                    s = slot + i
                    mv[s << PAGE_SHIFT:(s + 1) << PAGE_SHIFT] = page
                    kind[p] = PENDING
                    meta[p] = s
                    slots[s] = p
                    ring.clear_cancel(s)
                self.n_stored += k
                self.n_pending += k
                end = ring.publish() if k else 0
                if own_p:
                    self._put_blobs(own_p, ids, blobs)
                    self.writer_pages += len(own_p)
                self._maybe_compact_locked()
                self._note_mem()
                return end

    # ------------------------------------------------------------------ the memory limit

    @property
    def reserve(self):
        """Bytes under mem_limit kept free for cleaning, which copies a segment's live blobs
        before it can free the segment: one segment, at most an eighth of the limit."""
        return min(self.arena.segment_bytes, self.mem_limit // 8)

    def _promised(self, more_slots=0):
        """Arena bytes that queued pages may still take when installed: a page for each
        ring slot not yet retired (staged, in a job or a gap; ``more_slots`` about to be),
        and a page of rounding for each lane and two for the head."""
        ring = self.ring
        slots = (ring.used if ring is not None else 0) + more_slots
        return (slots + self.lanes + 2) * PAGE_SIZE if slots else 0

    def _fits(self, extra, more_slots=0):
        return self.mem_used + extra + self._promised(more_slots) <= self.mem_limit - self.reserve

    def _make_room(self, extra, more_slots=0):
        """With mem_limit: True when ``extra`` more bytes (and ``more_slots`` queued pages)
        fit under it, after cleaning the emptiest segments if they did not."""
        if self._fits(extra, more_slots):
            return True
        self.arena.retry_stuck(again=False)
        self._clean_locked(self.mem_used + extra + self._promised(more_slots) - (self.mem_limit - self.reserve))
        return self._fits(extra, more_slots)

    def _admit(self, npages, extra):
        """Raise NoSpaceError unless ``extra`` more bytes for ``npages`` pages fit under mem_limit."""
        if not self._make_room(extra):
            raise NoSpaceError(
                f"storing {npages} pages would take mem_used_total past mem_limit {self.mem_limit}: "
                f"{self.mem_used} bytes held, up to {extra} more needed, {self.reserve} kept for cleaning")

    def _blob_cost(self, blobs):
        """What storing ``blobs`` may add to mem_used_total: their bytes, and a page of
        rounding for each segment they span and two more."""
        total = sum(map(len, blobs))
        return total + (total // self.arena.segment_bytes + 2) * PAGE_SIZE

    def _room_to_stage(self, n, extra=0):
        """With mem_limit: room to queue ``n`` pages (the ring memory they touch, and the
        arena space their results may take), and ``extra`` bytes more."""
        grow, slots = self.ring.cost(n)
        return self._make_room(grow + extra, slots)

    def _writer_part(self, k):
        """How many of a request's ``k`` pages to queue its writer compresses itself (its
        last ones; whole pages before pages written in part): its share (``_own_share``),
        or more where the ring cannot take the rest (a request queues at most a quarter of
        the ring, and no more than its room).  None, with ``refused`` set, when the ring is
        full: the whole request is a writestall.  Called once a request."""
        ring = self.ring
        own, room = self._own_share(k), min(ring.max_request, ring.room())
        if own < 0 or not room:
            self.refused = "max_pending"
            return None
        return max(own, k - room)

    def _own_share(self, k):
        """How many of a write's ``k`` pages to queue its writer compresses itself: none while
        the ring is at most half full, then a share that grows with the fill (carried from
        write to write, so that one-page writes get their share too); -1 when the ring is full."""
        ring = self.ring
        over = ring.used - ring.capacity * OWN_SHARE_FROM
        if over <= 0:
            self._own_carry = 0.0
            return 0
        share = over / (ring.capacity * (1 - OWN_SHARE_FROM))
        if share >= 1:
            return -1
        want = k * share + self._own_carry
        own = int(want)
        self._own_carry = want - own
        return own

    # ------------------------------------------------------------------ kcompressd support

    def window(self, lane, need):
        """Arena space for a worker's job: (word, capacity).  See Arena.window."""
        with self.lock:
            return self.arena.window(lane, need)

    def abandon(self, lane):
        """A job written in ``lane`` will not be installed: see Arena.abandon."""
        with self.lock:
            self.arena.abandon(lane)

    def queued(self, start, n):
        """The raw pages of ring positions [start, start + n) (a memoryview; stable while
        the job is out) and which of them are still wanted (not cancelled)."""
        ring = self.ring
        s = start % ring.capacity
        return ring.mv[s << PAGE_SHIFT:(s + n) << PAGE_SHIFT], ring.live_slots(start, n)

    def retire(self, start, n):
        """A job of ring positions [start, start + n) whose pages were all cancelled."""
        with self.lock:
            ring = self.ring
            s = start % ring.capacity
            self.cancelled_pages += int(np.count_nonzero(ring.slot_page[s:s + n] >= 0))
            ring.retire(start, n)

    def install(self, start, n, ids, lens, words, lane, end):
        """Install a checked RESULT for ring positions [start, start + n): codec ``ids``,
        ``lens`` (0: skipped as cancelled) and arena ``words`` of each blob (numpy arrays),
        written by a worker in ``lane``'s window up to ``end``.  The arena adopts the blobs
        of pages still queued in the slot they were staged in; the rest are stale.  Returns
        the number of pages installed.

        Raises ProtocolError, with nothing changed, when the result skipped a page that
        is still queued (the job can be sent again)."""
        with self.lock:
            _, nlive, live_bytes = self._install_locked(start, n, ids, lens, words)
            self.arena.adopt(lane, end, live_bytes)
            self.ring.retire(start, n)
            self._note_mem()
            return nlive

    def install_local(self, start, n, ids, blobs):
        """``install`` for blobs compressed in this process (lists; an empty blob for a
        skipped page): they are appended to the arena's head first, a segment's worth at
        a time."""
        lens = np.fromiter(map(len, blobs), dtype=np.int64, count=n)
        ids = np.asarray(ids, dtype=np.uint8)
        words = np.zeros(n, dtype=np.uint64)
        with self.lock:
            self._check_room(blobs)        # (it frees nothing first)
            self._append_live(blobs, lens, words)
            live, nlive, _ = self._install_locked(start, n, ids, lens, words)
            if live is not None:
                self._release_unused(words, lens, live)
            self.ring.retire(start, n)
            self._note_mem()
            return nlive

    def _append_live(self, blobs, lens, words):
        """Append ``blobs`` (a list; ``lens`` their lengths) to the arena's head, a segment's
        worth at a time, writing each blob's word into ``words``.  Each group counts as live
        at once: the next group's append may seal its segment, and a sealed segment without
        live bytes is freed.  Empty groups take no segment.  The caller gives back the blobs
        it does not install (``_release_unused``)."""
        for group in self._segment_groups(blobs):
            gl = lens[group]
            if not gl.any():
                continue
            base = self.arena.append(b"".join(blobs[i] for i in group))
            words[group] = base + np.cumsum(gl) - gl
            self.arena.add_live(base, int(gl.sum()))

    def _release_unused(self, words, lens, installed):
        """Give back the appended blobs (``_append_live``) not ``installed`` (a mask): results
        for pages rewritten meanwhile."""
        dead = ~installed & (lens > 0)
        if dead.any():
            self.arena.release_many(words[dead], lens[dead])

    def _install_locked(self, start, n, ids, lens, words):
        """The page-table part of an install: (the mask of pages installed, or None when all
        of them were, their number, their blobs' bytes).  All of them are when no slot of
        the job was cancelled (in this process's copy of the cancel bytes): the common case,
        a few vectorized stores."""
        ring = self.ring
        s = start % ring.capacity
        pages = ring.slot_page[s:s + n]
        if ring.none_cancelled(start, n):
            if not lens.all():
                _skipped_queued(pages, lens == 0)
            nbytes = int(lens.sum())
            self.kind[pages] = _KIND_OF_ID[ids]
            self.codec_ids[pages] = ids
            self.clen[pages] = lens
            self.meta[pages] = words
            self.n_pending -= n
            self._count_blobs(n, int(np.count_nonzero(ids == RAW_ID)), nbytes)
            return None, n, nbytes
        valid = pages >= 0
        safe = np.where(valid, pages, 0)
        live = valid & (self.kind[safe] == PENDING) & (self.meta[safe] == np.arange(s, s + n, dtype=np.uint64))
        done = lens > 0
        missing = live & ~done
        if missing.any():
            _skipped_queued(pages, missing)
        self.cancelled_pages += int(np.count_nonzero(valid & ~done))
        nlive = int(np.count_nonzero(live))
        self.stale_results += int(np.count_nonzero(done)) - nlive
        nbytes = 0
        if nlive:
            lp = pages[live]
            lid = ids[live]
            ll = lens[live]
            nbytes = int(ll.sum())
            self.kind[lp] = _KIND_OF_ID[lid]
            self.codec_ids[lp] = lid
            self.clen[lp] = ll
            self.meta[lp] = words[live]
            self.n_pending -= nlive
            self._count_blobs(nlive, int(np.count_nonzero(lid == RAW_ID)), nbytes)
        return live, nlive, nbytes

    def give_back_pending(self):
        """An idle, empty pending ring returns its memory to the kernel.  Returns bytes."""
        with self.lock:
            if self.ring is None or self.ring.held_bytes < self.ring.GIVE_BACK:
                return 0
            return self.ring.give_back(again=False)

    # ------------------------------------------------------------------ trim, zero, extents

    def _whole_pages(self, offset, count):
        first = -(-offset // PAGE_SIZE)
        end = offset + count
        last = end >> PAGE_SHIFT if end != self.size else self.npages
        return first, max(first, last)

    def _free_range_locked(self, first, last, pattern=None):
        """Free pages [first, last); with ``pattern`` make them same-filled.  Returns the
        number of pages that held data."""
        if last - first <= self.SMALL_RANGE:
            kind, release, now = self._kind, self._release_one, self.clock.now()
            freed = 0
            for p in range(first, last):
                if kind[p]:
                    freed += 1
                    release(p, now)
            if pattern is not None:
                self._put_same(range(first, last), itertools.repeat(pattern))
            return freed
        pages = np.arange(first, last, dtype=np.int64)
        freed = int(np.count_nonzero(self.kind[first:last]))
        self._release(pages)
        if pattern is not None:
            self.kind[first:last] = SAME
            self.meta[first:last] = pattern
            self.n_same += last - first
            self.n_stored += last - first
        return freed

    def trim(self, offset, count):
        """Discard the whole pages in the range (partial edges are left as they are:
        trim is advisory).  Returns the pages freed."""
        self.check_range(offset, count)
        first, last = self._whole_pages(offset, count)
        if last <= first:
            return 0
        with self.lock:
            freed = self._free_range_locked(first, last)
            self.notify_free += freed
            if freed:
                self._maybe_compact_locked()
        return freed

    def zero(self, offset, count, may_trim=False):
        """Make the range read as zeros: whole pages become holes (``may_trim``) or zero
        same-filled pages; partial edges are rewritten."""
        self.check_range(offset, count)
        if count == 0:
            return
        first, last = self._whole_pages(offset, count)
        end = offset + count
        if last > first:
            with self.lock:
                freed = self._free_range_locked(first, last, None if may_trim else 0)
                self.notify_free += freed
                if freed:
                    self._maybe_compact_locked()
            head_end = first << PAGE_SHIFT
            tail_start = last << PAGE_SHIFT
        else:
            head_end = tail_start = end
        if offset < head_end:
            self.write(bytes(min(head_end, end) - offset), offset)
        if tail_start < end and tail_start >= head_end:
            self.write(bytes(end - tail_start), tail_start)

    def extents(self, offset, count):
        """[(offset, length, type)] covering the range; type is nbdkit's
        EXTENT_HOLE|EXTENT_ZERO for never-written or trimmed pages, EXTENT_ZERO for
        pages of zeros, 0 for data."""
        self.check_range(offset, count)
        first = offset >> PAGE_SHIFT
        last = (offset + count - 1) >> PAGE_SHIFT
        with self.lock:
            k = self.kind[first:last + 1]
            zero = (k == SAME) & (self.meta[first:last + 1] == 0)
        types = np.where(k == EMPTY, 3, np.where(zero, 2, 0)).astype(np.int8)
        cuts = np.flatnonzero(np.diff(types)) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [len(types)]])
        out = []
        end = offset + count
        for s, e, t in zip(starts.tolist(), ends.tolist(), types[starts].tolist()):
            lo = max(offset, (first + s) << PAGE_SHIFT)
            hi = min(end, (first + e) << PAGE_SHIFT)
            out.append((lo, hi - lo, t))
        return out

    # ------------------------------------------------------------------ maintenance

    def _maybe_compact_locked(self):
        """Clean in passing when dead bytes pile up while writes go on: past CLEAN_BUSY of
        what is held, at most CLEAN_STEP of the emptiest segments (at most 75% live) a
        request.  Skipped while post-processing reads blobs in place."""
        arena = self.arena
        held = arena.held_bytes
        dead = held - arena.used_bytes
        if dead < max(CLEAN_MIN, CLEAN_BUSY * held) or self.maintenance or self._found_nothing(dead):
            return
        freed = self._move_locked(arena.victims(CLEAN_TO * held)[:CLEAN_STEP])[1]
        self._clean_failed_at = None if freed else dead

    def _found_nothing(self, dead):
        """The last try found nothing worth copying, and little has died since."""
        failed = self._clean_failed_at
        return failed is not None and failed <= dead < failed + (1 << 20)

    def clean_idle_step(self, going=False):
        """One step of cleaning for an idle moment (the device's cleaner calls it while no
        requests come).  A pass starts (``going`` false) when dead bytes pass CLEAN_MIN and
        CLEAN_IDLE of what is held: its victims, the emptiest segments (at most 75% live)
        until CLEAN_TO would be left dead, and their pages are found then, with the one
        scan of the page table the pass makes.  Each step (``going`` true after the first)
        copies out at most CLEAN_STEP of them.  Returns True when it made a step (call it
        again, ``going``), False when there is nothing to do or the pass is done.  A pass
        that freed nothing (under mem_limit no copy may fit) is not tried again until more
        has died."""
        with self.lock:
            arena = self.arena
            held = arena.held_bytes
            dead = held - arena.used_bytes
            if self.maintenance:
                return False
            if not going:
                self._idle_pass = None
                if dead < max(CLEAN_MIN, CLEAN_IDLE * held) or self._found_nothing(dead):
                    return False
                victims = arena.victims(CLEAN_TO * held)
                if not victims:
                    self._clean_failed_at = dead
                    return False
                pages = self._blob_pages_in(victims)
                segs = self._segments_of(self.meta[pages])
                order = np.argsort(segs, kind="stable")
                self._idle_pass = _IdlePass(victims, pages[order], segs[order], arena.head)
            p = self._idle_pass
            if p is None:
                return False
            if not p.victims or dead <= CLEAN_TO * held:
                self._idle_pass = None
                if not p.freed:
                    self._clean_failed_at = dead
                return False
            # victims still sealed (one that died whole since was freed, and may be in use
            # again: a new head is not taken); blobs that landed in a victim after the scan
            # are not among the candidates, and only keep it alive
            step = [v for v in p.victims[:CLEAN_STEP]
                    if arena.state[v] == SEALED or v == arena.head == p.head]
            del p.victims[:CLEAN_STEP]
            if step:
                pick = [p.pages[np.searchsorted(p.segs, v, "left"):np.searchsorted(p.segs, v, "right")] for v in step]
                p.freed += self._move_locked(step, np.concatenate(pick))[1]
            return True

    def _blob_pages_in(self, segments, pages=None):
        """The pages (of ``pages``, else of the whole page table) whose blobs lie in
        ``segments``: a table of the segments marked, no sorting."""
        marked = np.zeros(self.arena.nsegments, dtype=bool)
        marked[np.asarray(segments, dtype=np.int64)] = True
        kind = self.kind if pages is None else self.kind[pages]
        blobs = np.flatnonzero((kind == COMPRESSED) | (kind == HUGE))
        if pages is not None:
            blobs = pages[blobs]
        return blobs[marked[self._segments_of(self.meta[blobs])]]

    def _segments_of(self, words):
        """The arena segments that the words (byte offsets) ``words`` lie in."""
        return (words // np.uint64(self.arena.segment_bytes)).astype(np.int64)

    def _clean_locked(self, need):
        """Clean for mem_limit: free at least ``need`` bytes (and a segment more, so that the
        next writes do not clean again at once) if the segments allow, emptiest first
        whatever their share of live bytes.  Returns the bytes freed."""
        if self.maintenance:
            return 0
        arena = self.arena
        target = arena.dead_bytes - need - arena.segment_bytes
        return self._move_locked(arena.victims(max(0, target), max_live_share=1.0))[1]

    def _move_locked(self, victims, candidates=None):
        """Copy the live blobs of segments ``victims`` (in that order) to the head, point
        their pages there and free the segments (pages are looked for among ``candidates``
        when given, else in the whole page table).  With mem_limit a segment is moved only if
        the copy fits under the limit, unless the device is over it already (the move gives
        memory back).  Returns (pages moved, bytes freed)."""
        if not victims:
            return 0, 0
        arena = self.arena
        if arena.head in victims:
            arena.seal_head()
        before = arena.counted_bytes
        pages = self._blob_pages_in(victims, candidates)     # (of those found earlier: still there)
        words = self.meta[pages]
        order = np.argsort(words, kind="stable")
        pages, words = pages[order], words[order]
        lens = self.clen[pages].astype(np.int64)
        segs = self._segments_of(words)
        load = arena.load
        moved = 0
        for seg in victims:
            lo, hi = np.searchsorted(segs, seg, "left"), np.searchsorted(segs, seg, "right")
            if self.mem_limit:
                live = int(lens[lo:hi].sum())
                held = self.mem_used + self._promised()
                if held <= self.mem_limit and held + live + 2 * PAGE_SIZE > self.mem_limit:
                    continue      # no room to copy it: a segment with fewer live bytes may fit
            vp, vw, vl = pages[lo:hi], words[lo:hi], lens[lo:hi]
            blobs = [load(w, n) for w, n in zip(vw.tolist(), vl.tolist())]
            for group in self._segment_groups(blobs):
                # each group is moved whole (copied, pointed at, the old copies freed), so
                # running out of segments part way leaves everything consistent
                try:
                    base = arena.append(b"".join(blobs[i] for i in group))
                except NoSpaceError:
                    return moved, max(0, before - arena.counted_bytes)
                gp, gl, gw = vp[group], vl[group], vw[group]
                arena.add_live(base, int(gl.sum()))
                self._note_mem()            # the peak: both copies held
                self.meta[gp] = base + np.cumsum(gl) - gl
                arena.release_many(gw, gl)
                moved += len(group)
        freed = max(0, before - arena.counted_bytes)
        self.pages_compacted += freed // PAGE_SIZE
        return moved, freed

    def compact(self):
        """Clean the whole arena now (zram's ``compact``): every segment with dead bytes is
        copied out and freed, the head and lanes no job is writing in included, and an
        empty pending ring gives its memory back.  Afterwards mem_used_total is the live
        bytes plus at most about a segment (the head's, and lanes a job is writing in),
        and what failed hole punches still leave held (``stuck_bytes``; they are tried
        again here).  Works a few segments per holding of the lock.  Returns (pages
        moved, bytes freed)."""
        moved = freed = 0
        with self.lock:
            self.arena.seal_head()
            self.arena.seal_idle_lanes()
            if self.ring is not None:
                freed += self.ring.give_back()
            freed += self.arena.retry_stuck()
            rounds = self.arena.segments + 1
        for _ in range(rounds):
            with self.lock:
                if self.maintenance:
                    break
                victims = self.arena.victims(0, max_live_share=1.0)[:8]
                if not victims:
                    break
                m, f = self._move_locked(victims)
                moved += m
                freed += f
                if not m and not f:
                    break
        return moved, freed

    def fit_limit(self):
        """After mem_limit was lowered: clean until mem_used_total is under it, if it can.
        Returns the bytes freed."""
        freed = 0
        while True:
            with self.lock:
                if not self.mem_limit or self.mem_used <= self.mem_limit or self.maintenance:
                    return freed
                f = self.arena.retry_stuck() + self._clean_locked(self.mem_used - self.mem_limit)
                if self.ring is not None and self.ring.head == self.ring.tail:
                    f += self.ring.give_back()
            if not f:
                return freed
            freed += f

    def clear(self):
        """Empty the device (zram's ``reset``): every page freed, the statistics zeroed.
        The caller makes sure no page is queued (a flush) and no client is connected."""
        with self.lock:
            if self.n_pending:
                raise UzramError(f"{self.n_pending} pages are still queued for compression")
            stored = np.flatnonzero(self.kind != EMPTY)
            if len(stored):
                self._release(stored)
            self.atime[:] = 0
            self.flags[:] = 0
            self.arena.seal_head()
            self.arena.seal_idle_lanes()
            if self.ring is not None:
                self.ring.give_back()
            self.arena.retry_stuck()
            self.huge_since = self.notify_free = self.pages_compacted = 0
            self._clean_failed_at = self._idle_pass = None
            self.stale_results = self.cancelled_pages = self.writer_pages = 0
            self.bd_reads = self.bd_writes = 0
            self.num_recompressed = self.recompressed_saved = 0
            self.mem_used_max = self.mem_used

    def counters(self):
        """The store's part of the statistics, as a dict (consistent snapshot)."""
        ring = self.ring
        backing = self.backing
        with self.lock:
            idle = int(np.count_nonzero(self.atime >= IDLE_BIT))
            incompressible = int(np.count_nonzero(self.flags & INCOMPRESSIBLE))
            return dict(
                bd_count=self.n_backed,
                bd_reads=self.bd_reads,
                bd_writes=self.bd_writes,
                backing_dev=backing.path if backing is not None else "",
                backing_blocks=backing.nblocks if backing is not None else 0,
                backing_allocated=backing.allocated() if backing is not None else 0,
                backing_punch_failures=backing.punch_failures if backing is not None else 0,
                shared_punch_failures=self.arena.file.punch_failures + (
                    ring.file.punch_failures if ring is not None else 0),
                idle_pages=idle,
                incompressible_pages=incompressible,
                num_recompressed=self.num_recompressed,
                recompressed_saved_bytes=self.recompressed_saved,
                orig_data_size=self.n_stored * PAGE_SIZE,
                compr_data_size=self.compr_bytes,
                mem_used_total=self.mem_used,
                mem_limit=self.mem_limit,
                mem_used_max=self.mem_used_max,
                same_pages=self.n_same,
                pages_compacted=self.pages_compacted,
                huge_pages=self.n_huge,
                huge_pages_since=self.huge_since,
                notify_free=self.notify_free,
                disksize=self.size,
                pages_stored=self.n_stored,
                compressed_pages=self.n_compressed,
                arena_used_bytes=self.arena.used_bytes,
                arena_dead_bytes=self.arena.dead_bytes,
                arena_segments=self.arena.segments,
                table_bytes=self.npages * 16,
                pending_pages=self.n_pending,
                pending_bytes=self.n_pending * PAGE_SIZE,
                pending_held_bytes=ring.held_bytes if ring is not None else 0,
                pending_slots_used=ring.used if ring is not None else 0,
                max_pending=ring.capacity * PAGE_SIZE if ring is not None else 0,
                stale_results=self.stale_results,
                cancelled_pages=self.cancelled_pages,
                writer_pages=self.writer_pages,
            )


def _split_same(pages, out):
    """Append each (page number, bytes) of ``pages`` to its class in ``out``: (same-filled
    pages, their values, other pages, their bytes), four lists.  Returns ``out``."""
    same_p, same_v, other_p, other_b = out
    for p, b in pages:
        v = same_value(b)
        if v is None:
            other_p.append(p)
            other_b.append(b)
        else:
            same_p.append(p)
            same_v.append(v)
    return out


def _with_patched(patched, same_p, same_v, other_p, other_pages):
    """A request's pages with its patched partial pages (``_patch``) added, each to its
    class: (same-filled pages, their values, other pages, their contents), new lists."""
    return _split_same(((p, page) for p, _, _, page in patched),
                       (list(same_p), list(same_v), list(other_p), list(other_pages)))


def _skipped_queued(pages, missing):
    """Raise for an install whose result skipped a page still queued (``missing``: a mask)."""
    raise ProtocolError(f"RESULT skipped page {int(pages[int(np.argmax(missing))])}, which is still queued")
