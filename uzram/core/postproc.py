"""Post-processing of stored pages, as zram does it: idle marking, writeback to the backing
file, and recompression with stronger codecs.

These work on the store's page table (uzram.core.store) from outside the request path:
the device runs them one at a time on its maintenance thread.  Each takes the store's lock
for short steps only (a batch of pages at a time) and never compresses, decompresses or
writes a file under it.  A page that a client writes, zeroes or trims meanwhile moves its
generation, and a step that finds a page's generation (or kind, or location) changed
leaves the page alone: what is moved or recompressed is exactly what a read returns before
and after.

- ``mark_idle``: zram's ``idle=all`` and ``idle=SECONDS``.  The mark is the top bit of
  the page's access time; any read or write stores a fresh time, which clears it.
- ``writeback``: pages chosen by type (idle, huge, huge_idle, incompressible) or by
  index are decompressed and written, raw, into free blocks of the backing file; their
  blobs are freed (BACKED pages read from the file from then on).
- ``recompress``: pages chosen by type (idle, huge, huge_idle, auto, or all) and size are
  compressed again with the secondary codecs, in priority order, and the first result
  smaller than the blob they have replaces it.  The work is done by kcompressd workers
  when they run (``offload``, the dispatcher), else here; either way the results are
  installed by ``install_recompressed``.  A page keeps the stored ID of the codec that
  made its blob, so reads never depend on the configuration.
"""

import numpy as np

from .codecs import SKIPPED, decoder, recompress_page, source_page
from .constants import BACKED, COMPRESSED, HUGE, IDLE_BIT, INCOMPRESSIBLE, PAGE_SIZE, PENDING, PRIO_MASK
from .errors import NoSpaceError, ProtocolError, UzramError

CHUNK = 1 << 20          # pages marked idle per holding of the lock
BATCH = 256              # pages written back or recompressed per step
WB_MODES = {"idle": 1, "huge": 2, "huge_idle": 3, "incompressible": 4}
RECOMP_MODES = {"idle": 1, "huge": 2, "huge_idle": 3, "auto": 8}

_IDLE = np.uint32(IDLE_BIT)
_AGE = np.uint32(IDLE_BIT - 1)


class PostProcessError(UzramError):
    """Post-processing stopped part way (its message says how far it got)."""


def _blob_pages(store, lo, hi):
    k = store.kind[lo:hi]
    return (k == COMPRESSED) | (k == HUGE)


# ---------------------------------------------------------------------- idle

def mark_idle(store, age=None):
    """Mark idle every stored page (``age`` None, zram's ``idle=all``) or those not read
    or written for ``age`` seconds or more; the others lose their mark.  Same-filled and
    written-back pages are left as they are (zram never marks them).  Returns the number
    of pages idle afterwards."""
    idle_count = 0
    for lo in range(0, store.npages, CHUNK):
        hi = min(store.npages, lo + CHUNK)
        with store.lock:
            k = store.kind[lo:hi]
            eligible = (k == COMPRESSED) | (k == HUGE) | (k == PENDING)
            t = store.atime[lo:hi]
            if age is None:
                idle = eligible
            else:
                cutoff = store.clock.now() - int(age)
                idle = eligible & ((t & _AGE).astype(np.int64) < cutoff)
            store.atime[lo:hi] = np.where(idle, t | _IDLE, np.where(eligible, t & _AGE, t))
            idle_count += int(np.count_nonzero(store.atime[lo:hi] >= _IDLE))
    return idle_count


# ---------------------------------------------------------------------- writeback

def _wb_candidates(store, mode, lo, hi):
    with store.lock:
        ok = _blob_pages(store, lo, hi)
        if mode & 1:
            ok &= store.atime[lo:hi] >= _IDLE
        if mode & 2:
            ok &= store.kind[lo:hi] == HUGE
        if mode & 4:
            ok &= (store.flags[lo:hi] & INCOMPRESSIBLE) != 0
        return np.flatnonzero(ok) + lo


class WritebackFailed(UzramError):
    """The backing file failed part way: ``written`` pages were moved before, and the
    batch it failed in stayed in memory."""

    def __init__(self, written, cause):
        super().__init__(str(cause))
        self.written = written


def writeback(store, mode=0, lo=0, hi=None, limit=None):
    """Write back the pages of [lo, hi) that ``mode`` (WB_MODES bits; 0 = every stored
    page of the range, for page_index=) selects, at most ``limit`` of them.  Returns
    (pages written back, why it stopped early or None): "limit", "full" (no free block).
    A page written while its batch was being written out stays in memory and does not
    count.  WritebackFailed when the backing file fails."""
    backing = store.backing
    hi = store.npages if hi is None else hi
    pages = _wb_candidates(store, mode, lo, hi)
    written = 0
    stopped = None
    for i in range(0, len(pages), BATCH):
        batch = pages[i:i + BATCH]
        if limit is not None:
            if written >= limit:
                return written, "limit"
            batch = batch[:limit - written]
        with store.lock:
            k = store.kind[batch]
            still = (k == COMPRESSED) | (k == HUGE)
            if mode & 1:
                still &= store.atime[batch] >= _IDLE
            batch = batch[still]
            blocks = backing.reserve(len(batch))
            if len(blocks) < len(batch):
                stopped = "full"
                batch = batch[:len(blocks)]
            gens = store.gen[batch].copy()
            kinds = store.kind[batch].copy()
            cids = store.codec_ids[batch].tolist()
            blobs = [store.arena.load(w, n) for w, n in zip(store.meta[batch].tolist(), store.clen[batch].tolist())]
        try:
            for block, kind, cid, blob in zip(blocks.tolist(), kinds.tolist(), cids, blobs):
                backing.write(block, blob if kind == HUGE else decoder(cid).decompress(blob))
        except UzramError as e:
            with store.lock:
                backing.release(blocks)     # this batch stays where it was
            raise WritebackFailed(written, e) from None
        with store.lock:
            same = (store.gen[batch] == gens) & (store.kind[batch] == kinds)
            if not same.all():
                backing.release(blocks[~same])
            moved = batch[same]
            if len(moved):
                _to_backed(store, moved, blocks[same])
            store.bd_writes += len(blocks)      # (I/O done; pages written meanwhile stay in memory)
            written += len(moved)
        if stopped:
            break
    if stopped is None and limit is not None and written >= limit and written < len(pages):
        stopped = "limit"
    return written, stopped


def _to_backed(store, pages, blocks):
    """Under the lock: ``pages`` (COMPRESSED or HUGE) now live in ``blocks``."""
    kind = store.kind[pages]
    lens = store.clen[pages]
    nhuge = int(np.count_nonzero(kind == HUGE))
    store.arena.release_many(store.meta[pages], lens)
    store.compr_bytes -= int(lens.sum(dtype=np.int64))
    store.n_huge -= nhuge
    store.n_compressed -= len(pages) - nhuge
    store.n_backed += len(pages)
    store.kind[pages] = BACKED
    store.meta[pages] = blocks.astype(np.uint64)
    store.clen[pages] = 0
    store.codec_ids[pages] = 0
    store.atime[pages] &= _AGE


# ---------------------------------------------------------------------- recompression

class RecompressBatch:
    """One step of a recompression: the pages, and what they held when it was taken.
    ``words``, ``lens``, ``ids`` and ``prios`` are what a worker needs to read each blob
    in place; ``gens`` tell ``install_recompressed`` whether a page changed meanwhile."""

    __slots__ = ("pages", "gens", "words", "lens", "ids", "prios")

    def __init__(self, pages, gens, words, lens, ids, prios):
        self.pages, self.gens, self.words, self.lens, self.ids, self.prios = pages, gens, words, lens, ids, prios

    def __len__(self):
        return len(self.pages)


def _recomp_candidates(store, mode, threshold, prio_max):
    with store.lock:
        ok = _blob_pages(store, 0, store.npages)
        ok &= (store.flags & INCOMPRESSIBLE) == 0
        ok &= (store.flags & PRIO_MASK) < prio_max
        if mode & 1:
            ok &= store.atime >= _IDLE
        if mode & 2:
            ok &= store.kind == HUGE
        if threshold:
            ok &= store.clen >= threshold
        pages = np.flatnonzero(ok)
        # biggest blobs first: where there is most to gain (zram's post-processing buckets)
        return pages[np.argsort(-store.clen[pages].astype(np.int64), kind="stable")]


def recompress(store, codecs, mode=0, threshold=0, max_pages=None, offload=None, highest=None):
    """Recompress the pages ``mode`` (RECOMP_MODES bits) selects with ``codecs``
    ([(priority, codec)] in priority order: the configured secondary codecs, or the one
    that algo=/priority= chose).  ``max_pages`` bounds the pages tried, as in zram.
    ``offload`` (the dispatcher) sends the work to kcompressd while a worker runs.  A page
    none of them makes smaller is marked INCOMPRESSIBLE when ``codecs`` reach ``highest``,
    the highest configured priority (as zram marks it only after its last codec).
    With mem_limit, each batch is made room for first, and the recompression stops
    (``stopped``: "mem_limit") where there is none.
    Returns dict(tried, recompressed, saved_bytes, incompressible, stopped)."""
    prio_max = max(p for p, _ in codecs) if codecs else 0
    mark = prio_max >= (highest or prio_max)
    auto = bool(mode & 8)
    pages = _recomp_candidates(store, mode, threshold, prio_max)
    if max_pages is not None:
        pages = pages[:max_pages]
    totals = dict(tried=0, recompressed=0, saved_bytes=0, incompressible=0, stopped=None)
    i = 0
    while i < len(pages):
        chunk = pages[i:i + BATCH]
        with store.lock:
            if store.mem_limit:
                chunk = _fit_batch(store, chunk)
                if not len(chunk):
                    totals["stopped"] = "mem_limit"
                    break
            store.maintenance += 1      # blobs are read in place: no cleaning moves them meanwhile
        i += len(chunk)
        try:
            batch = _take_batch(store, chunk, prio_max)
            if not len(batch):
                continue
            if offload is not None and offload.accepting:
                outcome = offload.recompress(batch, codecs, threshold, auto, mark)
            else:
                outcome = recompress_here(store, batch, codecs, threshold, auto, mark)
            for key in outcome:
                totals[key] += outcome[key]
        finally:
            with store.lock:
                store.maintenance -= 1
    return totals


def _fit_batch(store, pages):
    """Under the lock, with mem_limit: the first of ``pages`` whose new blobs fit beside
    their old ones under the limit.  A batch holds both until it is installed, and no
    cleaning runs while its blobs are read in place, so room is made first (the dead
    bytes of the batches before are cleaned now); maintenance may use the segment that
    writes keep for cleaning, since it is the cleaning.  Empty when not even one fits."""
    lens = store.clen[pages].astype(np.int64)
    need = int(lens.sum())
    store._make_room(need)
    room = store.mem_limit - store.mem_used - store._promised() - 2 * PAGE_SIZE
    return pages[:int(np.searchsorted(np.cumsum(lens), room, "right"))]


def _take_batch(store, pages, prio_max):
    with store.lock:
        k = store.kind[pages]
        still = ((k == COMPRESSED) | (k == HUGE)) & ((store.flags[pages] & PRIO_MASK) < prio_max)
        pages = pages[still]
        # touched now: not idle any more (zram clears ZRAM_IDLE here too, so that the page
        # is not also picked for writeback as idle)
        store.atime[pages] &= _AGE
        return RecompressBatch(pages, store.gen[pages].copy(), store.meta[pages].copy(),
                               store.clen[pages].astype(np.int64), store.codec_ids[pages].copy(),
                               (store.flags[pages] & PRIO_MASK).astype(np.uint8))


def recompress_here(store, batch, codecs, threshold, auto, mark):
    """Recompress a batch in this process: the blobs are read in place (outside the lock,
    as a worker reads them) and the results appended to the arena's head."""
    mm = store.arena.mm
    n = len(batch)
    prios = np.zeros(n, dtype=np.uint8)
    ids = np.zeros(n, dtype=np.uint8)
    blobs = []
    for i, (w, ln, cid, p0) in enumerate(zip(batch.words.tolist(), batch.lens.tolist(), batch.ids.tolist(),
                                             batch.prios.tolist())):
        try:
            page = source_page(mm[w:w + ln], cid)
        except UzramError:
            prios[i] = SKIPPED        # rewritten meanwhile (its blob reused): the install skips it anyway
            blobs.append(b"")
            continue
        prio, new_id, blob = recompress_page(page, ln, p0, codecs, threshold, auto)
        prios[i], ids[i] = prio, new_id
        blobs.append(blob or b"")
    with store.lock:
        lens = np.fromiter(map(len, blobs), dtype=np.int64, count=n)
        words = np.zeros(n, dtype=np.uint64)
        try:
            store._check_room(blobs)
        except NoSpaceError:
            return dict(tried=n, recompressed=0, saved_bytes=0, incompressible=0)
        store._append_live(blobs, lens, words)
        outcome, live = install_recompressed(store, batch, mark, ids, lens, words, prios)
        store._release_unused(words, lens, live)
        store._note_mem()
        return outcome


def install_recompressed(store, batch, mark, ids, lens, words, prios, verify=False):
    """Under the lock: take over the new blobs (``ids``, ``lens``, arena ``words``; outcome
    ``prios``: a priority for a new blob, 0 for none smaller, SKIPPED) of the pages of
    ``batch`` that did not change since it was taken; with ``mark``, those none was
    smaller for become INCOMPRESSIBLE.  The caller adds the new blobs'
    live bytes to their segment (``live`` mask).  With ``verify`` (a worker's result),
    the first new blob is decompressed and compared with its source first: ProtocolError,
    with nothing changed, if they differ.  Returns (counts, live mask)."""
    pages = batch.pages
    unchanged = ((store.gen[pages] == batch.gens) & (store.meta[pages] == batch.words)
                 & (store.clen[pages] == batch.lens))
    k = store.kind[pages]
    unchanged &= (k == COMPRESSED) | (k == HUGE)
    new = (prios > 0) & (prios != SKIPPED) & (lens > 0)
    live = unchanged & new
    if verify and live.any():
        i = int(np.argmax(live))
        old = source_page(store.arena.load(int(batch.words[i]), int(batch.lens[i])), int(batch.ids[i]))
        try:
            mine = decoder(int(ids[i])).decompress(store.arena.load(int(words[i]), int(lens[i])))
        except UzramError as e:
            raise ProtocolError(f"recompressed page {int(pages[i])} does not decompress: {e}") from None
        if mine != old:
            raise ProtocolError(f"recompressed page {int(pages[i])} decompresses to other data than it held")
    tried_highest = unchanged & (prios == 0) if mark else np.zeros(len(pages), dtype=bool)
    store.flags[pages[tried_highest]] |= INCOMPRESSIBLE
    saved = 0
    if live.any():
        lp, old_lens, new_lens = pages[live], batch.lens[live], lens[live]
        was_huge = int(np.count_nonzero(store.kind[lp] == HUGE))
        store.arena.release_many(batch.words[live], old_lens)
        store.kind[lp] = COMPRESSED
        store.codec_ids[lp] = ids[live]
        store.clen[lp] = new_lens
        store.meta[lp] = words[live]
        store.flags[lp] = (store.flags[lp] & ~np.uint8(PRIO_MASK)) | prios[live]
        saved = int((old_lens - new_lens).sum())
        store.compr_bytes -= saved
        store.n_huge -= was_huge
        store.n_compressed += was_huge
        store.num_recompressed += len(lp)
        store.recompressed_saved += saved
    return dict(tried=len(pages), recompressed=int(np.count_nonzero(live)), saved_bytes=saved,
                incompressible=int(np.count_nonzero(tried_highest))), live


def install_worker_result(store, batch, mark, ids, lens, words, prios, lane, end):
    """A worker's checked RECOMPRESSED for ``batch``, written in ``lane`` up to ``end``:
    verified and installed (``install_recompressed``), the lane's blobs adopted.  Raises
    ProtocolError with nothing changed when the first new blob is wrong."""
    with store.lock:
        outcome, live = install_recompressed(store, batch, mark, ids, lens, words, prios, verify=True)
        store.arena.adopt(lane, end, int(lens[live].sum()))
        store._note_mem()
        return outcome


def max_window(batch):
    """Arena bytes a worker may write for ``batch`` (each new blob is smaller than the old)."""
    return int(batch.lens.sum()) if len(batch) else 0

