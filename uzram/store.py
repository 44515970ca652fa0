"""The page store: the page table, the arena, the pending area, and the accounting.

The page table is five numpy arrays indexed by page number (16 bytes a page, resident
only where touched), so a request works on slices, not on one Python object per page:

    kind     uint8   EMPTY, SAME, COMPRESSED, HUGE or PENDING (constants.py)
    codec    uint8   stored codec ID of a COMPRESSED page (0 = raw)
    clen     uint16  bytes of the blob (4096 for HUGE)
    meta     uint64  SAME: the 8-byte pattern; COMPRESSED/HUGE: arena location (segment << 32 | offset);
                     PENDING: pending slot
    gen      uint32  generation: bumped by every write, zero and trim of the page

One lock guards all of it (StoreLock: whole-page reads in uzram.readpath check its sequence
number instead of taking it).  Compression happens outside the lock: inline writers compress
their full pages first and install them in one locked step; with kcompressd, writers copy
pages into the pending area under the lock and return, and results are installed later
only if the page's generation is unchanged (so an older result can never overwrite a
newer write, and a page overwritten while queued is never installed).

Every mutation of a request is all-or-nothing: the ENOSPC check runs before anything of
the request is changed.
"""

import itertools
import threading

import numpy as np

from .arena import SEG_SHIFT, Arena, locate
from .codecs import KNOWN_IDS, RAW_ID, compress_page, compress_pages, decoder
from .samefill import same_value
from .constants import COMPRESSED, EMPTY, HUGE, PAGE_SHIFT, PAGE_SIZE, PENDING, SAME, WORDS_PER_PAGE
from .errors import InvalidRequestError, NoSpaceError, ProtocolError, UzramError
from .pending import PendingArea

ZERO_PAGE = bytes(PAGE_SIZE)


class StoreLock:
    """The store's lock, with a sequence number for readers that do not take it.

    Every holder may change the store, so the number is odd while the lock is held and
    moves on by two for each holding.  A reader that saw the same even number before and
    after copying a page saw no change in between (uzram.readpath); the GIL orders these
    reads and writes across threads.
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


class Batch:
    """Pages staged in the pending area by one write, for kcompressd."""

    __slots__ = ("pages", "gens", "slots", "seq")

    def __init__(self, pages, gens, slots, seq):
        self.pages = pages    # np.int64 array
        self.gens = gens      # np.uint32 array: generation of each page when staged
        self.slots = slots    # np.int64 array: pending slots
        self.seq = seq        # staging order, for flush

    def __len__(self):
        return len(self.pages)


class PageStore:
    def __init__(self, size, codec, mem_limit=0, max_pending=0):
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
        # Scalar views of the same memory: indexing a memoryview gives a Python int, about
        # five times cheaper than a numpy scalar; used where a request touches few pages.
        self._kind = memoryview(self.kind)
        self._codec = memoryview(self.codec_ids)
        self._clen = memoryview(self.clen)
        self._meta = memoryview(self.meta)
        self._gen = memoryview(self.gen)
        self.arena = Arena()
        self._decoders = [None] * 256    # codec ID -> its decompress(blob), filled on first use
        # codec ID -> its page_decoder(), for uzram.readpath (None: unknown ID)
        self.page_decoders = [None] * 256
        for cid in KNOWN_IDS:
            self.page_decoders[cid] = decoder(cid).page_decoder()
        self.pending = PendingArea(max_pending)
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
        self._clean_failed_at = None   # dead bytes when cleaning last found no victim
        self.cancelled_pages = 0
        self.stage_seq = 0

    # ------------------------------------------------------------------ helpers

    def check_range(self, offset, count):
        if offset < 0 or count < 0 or offset + count > self.size:
            raise InvalidRequestError(
                f"request [{offset}, {offset + count}) is outside the device (size {self.size})")

    @property
    def mem_used(self):
        return self.arena.held_bytes + self.pending.held_bytes

    def _charged(self):
        """Bytes the limit is checked against: live compressed bytes plus pending copies."""
        return self.arena.used_bytes + self.pending.used * PAGE_SIZE

    def _release(self, pages):
        """Free whatever ``pages`` hold and mark them EMPTY; bumps their generation."""
        self.gen[pages] += 1
        k = self.kind[pages]
        if not k.any():
            return
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
            slots = self.meta[pages[pend]]
            self.pending.release(slots.astype(np.int64).tolist())
            self.n_pending -= len(slots)
        self.kind[pages] = EMPTY

    def _put_same(self, pages, patterns):
        self.kind[pages] = SAME
        self.meta[pages] = patterns
        self.n_same += len(pages)
        self.n_stored += len(pages)

    def _put_same_each(self, pages, values):
        """The scalar form of _put_same, for the few pages of one request."""
        kind, meta = self._kind, self._meta
        n = 0
        for p, v in zip(pages, values):
            kind[p] = SAME
            meta[p] = v
            n += 1
        self.n_same += n
        self.n_stored += n

    def _put_blobs(self, pages, ids, blobs):
        """Install blobs (lists) for ``pages`` (already released): one append to the arena."""
        seg, off = self.arena.append(b"".join(blobs))
        kind, codec, clen, meta = self._kind, self._codec, self._clen, self._meta
        base = locate(seg, 0)
        nhuge = total = 0
        for p, cid, blob in zip(pages, ids, blobs):
            n = len(blob)
            if cid == RAW_ID:
                kind[p] = HUGE
                nhuge += 1
            else:
                kind[p] = COMPRESSED
            codec[p] = cid
            clen[p] = n
            meta[p] = base | off
            off += n
            total += n
        self.arena.add_live(seg, total)
        self._count_blobs(len(pages), nhuge, total)

    def _count_blobs(self, npages, nhuge, nbytes):
        self.n_huge += nhuge
        self.huge_since += nhuge
        self.n_compressed += npages - nhuge
        self.n_stored += npages
        self.compr_bytes += nbytes

    def _put_packed(self, pages, ids, lens, packed, live=None):
        """Install blobs packed back to back in ``packed`` with one copy into the arena.

        ``pages``, ``ids`` and ``lens`` are numpy arrays; ``live`` (a mask) says which of
        them to install (the others' bytes are dead on arrival).  Pages must be released."""
        seg, off = self.arena.append(packed, int(lens.sum()))
        words = locate(seg, off + np.cumsum(lens) - lens)
        if live is not None:
            pages, ids, lens, words = pages[live], ids[live], lens[live], words[live]
        huge = ids == RAW_ID
        nhuge = int(np.count_nonzero(huge))
        nbytes = int(lens.sum())
        self.arena.add_live(seg, nbytes)
        self.kind[pages] = np.where(huge, HUGE, COMPRESSED)
        self.codec_ids[pages] = ids
        self.clen[pages] = lens
        self.meta[pages] = words
        self._count_blobs(len(pages), nhuge, nbytes)

    def _note_mem(self):
        used = self.mem_used
        if used > self.mem_used_max:
            self.mem_used_max = used

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
            return self.pending.mv[slot * PAGE_SIZE:(slot + 1) * PAGE_SIZE].tobytes()
        blob = self.arena.load(self._meta[p], self._clen[p])
        if k == HUGE:
            return blob
        return self._decompress(self._codec[p], blob)

    def _decompress(self, codec_id, blob):
        """``blob`` decompressed by the codec with stored ID ``codec_id`` (looked up once)."""
        fn = self._decoders[codec_id]
        if fn is None:
            fn = self._decoders[codec_id] = decoder(codec_id).decompress
        return fn(blob)

    # ------------------------------------------------------------------ reads

    def read(self, buf, offset):
        """Fill ``buf`` (a writable buffer) from ``offset``.  The plugin serves whole,
        aligned pages through uzram.readpath; this is the general path it falls back to."""
        count = len(buf)
        self.check_range(offset, count)
        if count == 0:
            return
        first = offset >> PAGE_SHIFT
        last = (offset + count - 1) >> PAGE_SHIFT
        kind = self._kind
        with self.lock:
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

    # ------------------------------------------------------------------ writes

    def write(self, data, offset, stage=False):
        """Store ``data`` (bytes-like) at ``offset``.

        Inline (``stage=False``): compress outside the lock, then install the whole request
        in one locked step.  Staged: copy the pages that are not same-filled into the
        pending area and return a Batch for kcompressd.  Returns (batch or None, stalled):
        ``stalled`` is True when the pending area had no room and the write was compressed
        inline instead.  Raises NoSpaceError with nothing changed.

        Requests are mostly a few pages (nbdcopy splits at every hole, the kernel swaps out
        4..128 KiB), so the work per page is plain Python on memoryviews of the page
        table: a numpy call costs more than the whole page's bookkeeping."""
        data = memoryview(data).cast("B")
        count = len(data)
        self.check_range(offset, count)
        if count == 0:
            return None, False
        end = offset + count
        first_full = -(-offset // PAGE_SIZE)
        end_full = max(first_full, end >> PAGE_SHIFT)
        same_p, same_v, other_p, other_b = [], [], [], []
        pos = (first_full << PAGE_SHIFT) - offset
        for p in range(first_full, end_full):
            b = data[pos:pos + PAGE_SIZE].tobytes()
            pos += PAGE_SIZE
            v = same_value(b)
            if v is None:
                other_p.append(p)
                other_b.append(b)
            else:
                same_p.append(p)
                same_v.append(v)
        # Pages not fully covered (a head and/or a tail page) are read, patched and
        # stored under the lock, so concurrent partial writes cannot lose each other.
        partial = []
        if offset & (PAGE_SIZE - 1):
            partial.append(offset >> PAGE_SHIFT)
        if end & (PAGE_SIZE - 1) and (end >> PAGE_SHIFT) not in partial:
            partial.append(end >> PAGE_SHIFT)

        stalled = False
        if stage and other_p:
            with self.lock:
                slots = self.pending.alloc(len(other_p))
                if slots is not None:
                    try:
                        return self._commit_locked(data, offset, partial, same_p, same_v, other_p, other_b,
                                                   None, slots), False
                    except BaseException:
                        self.pending.release(slots)
                        raise
            stalled = True
        ids, blobs = compress_pages(self.codec, other_b)
        with self.lock:
            self._commit_locked(data, offset, partial, same_p, same_v, other_p, blobs, ids, None)
        return None, stalled

    def _commit_locked(self, data, offset, partial, same_p, same_v, blob_p, blobs, ids, slots):
        """Install one write request.  With ``slots``, ``blobs`` are raw pages to stage in
        those pending slots; otherwise they are compressed blobs with codec ``ids``."""
        extra_p, extra_ids, extra_b = [], [], []   # compressed partial pages (staged mode)
        if partial:
            end = offset + len(data)
            blob_p, blobs = list(blob_p), list(blobs)
            ids = None if ids is None else list(ids)
            for p in partial:
                base = p << PAGE_SHIFT
                page = bytearray(self._page_bytes(p))
                lo, hi = max(offset, base), min(end, base + PAGE_SIZE)
                page[lo - base:hi - base] = data[lo - offset:hi - offset]
                v = same_value(page)
                if v is not None:
                    same_p.append(p)
                    same_v.append(v)
                    continue
                cid, blob = compress_page(self.codec, page)   # at most two pages: compress here
                if slots is None:
                    blob_p.append(p)
                    blobs.append(blob)
                    ids.append(cid)
                else:
                    extra_p.append(p)
                    extra_ids.append(cid)
                    extra_b.append(blob)
        if self.mem_limit:
            new = len(blobs) * PAGE_SIZE if slots is not None else sum(map(len, blobs))
            self._check_space_list(same_p + blob_p + extra_p, new + sum(map(len, extra_b)))
        release = self._release_one
        for p in same_p:
            release(p)
        for p in blob_p:
            release(p)
        for p in extra_p:
            release(p)
        if same_p:
            self._put_same_each(same_p, same_v)
        if extra_p:
            self._put_blobs(extra_p, extra_ids, extra_b)
        batch = None
        if blob_p:
            if slots is None:
                self._put_blobs(blob_p, ids, blobs)
            else:
                batch = self._stage_pages(blob_p, blobs, slots)
        self._maybe_compact_locked()
        self._note_mem()
        return batch

    def _stage_pages(self, pages, raws, slots):
        kind, meta, pmv = self._kind, self._meta, self.pending.mv
        for p, b, slot in zip(pages, raws, slots):
            pmv[slot * PAGE_SIZE:(slot + 1) * PAGE_SIZE] = b
            kind[p] = PENDING
            meta[p] = slot
        self.n_pending += len(pages)
        self.n_stored += len(pages)
        self.stage_seq += 1
        idx = np.asarray(pages, dtype=np.int64)
        return Batch(idx, self.gen[idx], np.asarray(slots, dtype=np.int64), self.stage_seq)

    def _release_one(self, p):
        """Free whatever page ``p`` holds, mark it EMPTY and bump its generation."""
        gen = self._gen
        gen[p] = (gen[p] + 1) & 0xFFFFFFFF
        k = self._kind[p]
        if k == EMPTY:
            return
        self._kind[p] = EMPTY
        self.n_stored -= 1
        if k == SAME:
            self.n_same -= 1
        elif k == PENDING:
            self.pending.release((self._meta[p],))
            self.n_pending -= 1
        else:
            n = self._clen[p]
            self.arena.release_one(self._meta[p], n)
            self.compr_bytes -= n
            if k == HUGE:
                self.n_huge -= 1
            else:
                self.n_compressed -= 1

    def _check_space_list(self, pages, new_bytes):
        if new_bytes:
            kind, clen = self._kind, self._clen
            old = 0
            for p in pages:
                k = kind[p]
                if k == COMPRESSED or k == HUGE:
                    old += clen[p]
                elif k == PENDING:
                    old += PAGE_SIZE
            after = self._charged() - old + new_bytes
            if after > self.mem_limit:
                raise NoSpaceError(
                    f"storing {len(pages)} pages needs {after} bytes, over mem_limit {self.mem_limit}")

    # ------------------------------------------------------------------ kcompressd support

    def take_for_dispatch(self, batch):
        """Under the lock: the pages of ``batch`` still waiting (not overwritten or trimmed
        since staging) and their raw contents, gathered into one contiguous array (a
        buffer ZeroMQ can send without another copy).  Pages gone stale are dropped here,
        before anything compresses them."""
        with self.lock:
            live = (self.gen[batch.pages] == batch.gens) & (self.kind[batch.pages] == PENDING)
            ncancel = len(batch) - int(np.count_nonzero(live))
            if ncancel:
                self.cancelled_pages += ncancel
                batch = Batch(batch.pages[live], batch.gens[live], batch.slots[live], batch.seq)
            if not len(batch):
                return batch, b""
            raw = np.take(self.pending.pages, batch.slots, axis=0)
        return batch, memoryview(raw).cast("B")

    def install(self, batch, ids, blobs):
        """Install compressed results (``ids`` and ``blobs`` lists) for ``batch``."""
        lens = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
        return self.install_packed(batch, np.asarray(ids, dtype=np.uint8), lens, b"".join(blobs), check=False)

    def install_packed(self, batch, ids, lens, packed, check=True):
        """Install a batch's results given as arrays and one packed buffer (a RESULT's
        frames as they arrived).  Pages written, zeroed or trimmed since staging are
        dropped (counted as stale).  Returns the number installed.

        With ``check`` (results from a worker), one live page of the batch is first
        decompressed and compared with its pending copy; when it differs, ProtocolError
        is raised and nothing is installed (the pending copies stay, the job can be
        sent again).  One page a job catches a worker that is wrong about everything
        (a codec mix-up, misplaced blobs) for ~1/batch_pages of the compression cost."""
        with self.lock:
            pages = batch.pages
            live = ((self.gen[pages] == batch.gens) & (self.kind[pages] == PENDING)
                    & (self.meta[pages] == batch.slots.astype(np.uint64)))
            nlive = int(np.count_nonzero(live))
            if not nlive:
                self.stale_results += len(batch)
                return 0
            if check:
                self._spot_check(batch, ids, lens, packed, int(np.argmax(live)))
            self.stale_results += len(batch) - nlive
            lp = pages[live]
            self.pending.release(batch.slots[live].tolist())
            self.n_pending -= nlive
            self.n_stored -= nlive
            self.kind[lp] = EMPTY
            self._put_packed(pages, ids, lens.astype(np.int64), packed, None if nlive == len(batch) else live)
            self._maybe_compact_locked()
            self._note_mem()
            return nlive

    def _spot_check(self, batch, ids, lens, packed, i):
        """Raise ProtocolError unless result ``i`` of ``batch`` decodes to its pending copy."""
        start = int(lens[:i].sum())
        blob = bytes(packed[start:start + int(lens[i])])
        cid = int(ids[i])
        slot = int(batch.slots[i])
        try:
            page = blob if cid == RAW_ID else self._decompress(cid, blob)
        except UzramError as e:     # CorruptPageError, or an ID no codec has
            raise ProtocolError(f"RESULT page {int(batch.pages[i])} does not decompress: {e}") from None
        if page != self.pending.mv[slot * PAGE_SIZE:(slot + 1) * PAGE_SIZE]:
            raise ProtocolError(f"RESULT page {int(batch.pages[i])} decompresses to other data than was sent")

    # ------------------------------------------------------------------ trim, zero, extents

    def _whole_pages(self, offset, count):
        first = -(-offset // PAGE_SIZE)
        end = offset + count
        last = end >> PAGE_SHIFT if end != self.size else self.npages
        return first, max(first, last)

    SMALL_RANGE = 32   # pages: below this, freeing page by page beats numpy's fixed costs

    def _free_range_locked(self, first, last, pattern=None):
        """Free pages [first, last); with ``pattern`` make them same-filled.  Returns the
        number of pages that held data."""
        if last - first <= self.SMALL_RANGE:
            kind, release = self._kind, self._release_one
            freed = 0
            for p in range(first, last):
                if kind[p] != EMPTY:
                    freed += 1
                release(p)
            if pattern is not None:
                self._put_same_each(range(first, last), itertools.repeat(pattern))
            return freed
        pages = np.arange(first, last, dtype=np.int64)
        freed = int(np.count_nonzero(self.kind[first:last]))
        self._release(pages)
        if pattern is not None:
            self._put_same(pages, np.full(len(pages), pattern, dtype=np.uint64))
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
                self.notify_free += self._free_range_locked(first, last, None if may_trim else 0)
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
        arena = self.arena
        dead = arena.dead_bytes
        failed = self._clean_failed_at
        if failed is not None and failed <= dead < failed + (1 << 20):
            return      # the last try found nothing worth copying, and little has died since
        if arena.worth_cleaning() or (self.mem_limit and arena.held_bytes > self.mem_limit
                                      and dead > PAGE_SIZE * 64):
            if self._compact_locked()[1] == 0:
                self._clean_failed_at = dead

    def _compact_locked(self, target_share=0.02):
        """Copy the live blobs of the emptiest segments to a new head and unmap them.
        Returns (pages moved, bytes given back)."""
        arena = self.arena
        victims = arena.victims(target_share * arena.held_bytes)
        self._clean_failed_at = None
        if not victims:
            return 0, 0
        if arena.head in victims:
            arena.seal()
        before = arena.held_bytes
        blob = (self.kind == COMPRESSED) | (self.kind == HUGE)
        pages = np.flatnonzero(blob & np.isin(self.meta >> np.uint64(SEG_SHIFT), np.asarray(victims, dtype=np.uint64)))
        if len(pages):
            words = self.meta[pages]
            lens = self.clen[pages].astype(np.int64)
            load = arena.load
            packed = b"".join([load(w, n) for w, n in zip(words.tolist(), lens.tolist())])
            seg, off = arena.append(packed)
            arena.add_live(seg, int(lens.sum()))
            self.meta[pages] = locate(seg, off + np.cumsum(lens) - lens)
            arena.release_many(words, lens)
        freed = max(0, before - arena.held_bytes)
        self.pages_compacted += freed // PAGE_SIZE
        return len(pages), freed

    def compact(self):
        """Clean the arena now (zram's ``compact``).  Returns (pages moved, bytes freed)."""
        with self.lock:
            return self._compact_locked(target_share=0.0)

    def counters(self):
        """The store's part of the statistics, as a dict (consistent snapshot)."""
        with self.lock:
            return dict(
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
                max_pending=self.pending.capacity * PAGE_SIZE,
                stale_results=self.stale_results,
                cancelled_pages=self.cancelled_pages,
            )
