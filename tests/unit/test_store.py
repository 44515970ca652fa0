"""The page store on its own: partial writes, accounting, generations, the pending ring,
the arena, installs and compaction.  (The store is in-process by design; kcompressd's
real Compressor runs in-process over the store's shared memory: tests/helpers.py.)"""

import mmap
import os
import random
import re

import numpy as np
import pytest
from helpers import PAGE as P
from helpers import InProcessKcompressd, page, read

from uzram.kcompressd import protocol
from uzram.core import shm
from uzram.core.arena import Arena, capacity_for
from uzram.core.codecs import compress_pages, get_codec
from uzram.core.constants import COMPRESSED, EMPTY, HUGE, PENDING, SAME
from uzram.core.errors import InvalidRequestError, NoSpaceError, ProtocolError
from uzram.core.pending import PendingRing
from uzram.core.samefill import same_value
from uzram.core import store as store_module
from uzram.core.store import PageStore


def check_counters(st):
    c = st.counters()
    assert c["pages_stored"] == int(np.count_nonzero(st.kind))
    assert c["same_pages"] == int(np.count_nonzero(st.kind == SAME))
    assert c["pending_pages"] == int(np.count_nonzero(st.kind == PENDING))
    blob = (st.kind == COMPRESSED) | (st.kind == HUGE)
    assert c["compr_data_size"] == int(st.clen[blob].sum()) == st.arena.used_bytes
    assert c["huge_pages"] == int(np.count_nonzero(st.kind == HUGE))
    assert c["compressed_pages"] == int(np.count_nonzero(st.kind == COMPRESSED))
    # the arena's per-segment live bytes add up to the live blobs, segment by segment
    segs = (st.meta[blob] // st.arena.segment_bytes).astype(np.int64)
    live = np.bincount(segs, weights=st.clen[blob].astype(np.int64), minlength=st.arena.nsegments)
    assert (live.astype(np.int64) == st.arena.live).all()
    # A slot not yet retired is free of its cancel byte (this process's copy) exactly while
    # the page staged in it is still queued there: the install's fast path trusts this.
    ring = st.ring
    if ring is not None:
        retired = set()
        for start, end in ring._retired.items():
            retired.update(range(start, end))
        for pos in range(ring.tail, ring.head):
            if pos in retired:
                continue
            s = pos % ring.capacity
            p = int(ring.slot_page[s])
            queued = p >= 0 and st.kind[p] == PENDING and int(st.meta[p]) == s
            assert queued == (ring.cancelled_flags[s] == 0), f"slot {s} (page {p})"
            assert ring.cancel_flags[s] == ring.cancelled_flags[s]     # what the workers read


@pytest.mark.parametrize("stage", [False, True])
def test_random_operations_match_a_model(stage):
    rng = random.Random(5)
    size = 600 * P + 1234
    st = PageStore(size, get_codec("zstd"), max_pending=256 * P if stage else 0)
    kc = InProcessKcompressd(st, batch_pages=16) if stage else None
    model = bytearray(size)
    out = []        # jobs sent, results not installed yet
    for i in range(2500):
        off = rng.randrange(size)
        n = rng.randrange(1, min(size - off, 30000) + 1)
        op = rng.random()
        if op < 0.6:
            k = rng.random()
            d = bytes(n) if k < .2 else (b"12345678" * (n // 8 + 1))[:n] if k < .4 else \
                (page(i, "text") * (n // P + 1))[:n] if k < .8 else os.urandom(n)
            if not stage or st.stage(d, off) is None:
                st.write(d, off)
            model[off:off + n] = d
        elif op < 0.7:
            st.zero(off, n, may_trim=rng.random() < .5)
            model[off:off + n] = bytes(n)
        elif op < 0.75:
            st.trim(off, n)
            first, last = -(-off // P), (off + n) // P if off + n != size else -(-size // P)
            for p in range(first, last):
                model[p * P:min(size, (p + 1) * P)] = bytes(min(size, (p + 1) * P) - p * P)
        elif op < 0.85:
            assert read(st, off, n) == model[off:off + n], i
        if stage:
            if rng.random() < 0.5 and len(out) < 8 and (job := kc.send(compress=rng.random() < 0.5)) is not None:
                out.append(job)
            if out and rng.random() < 0.4:
                job = out.pop(rng.randrange(len(out)))   # results arrive out of order
                kc.compress_job(job)                     # some compressed long after being sent
                kc.install(job)
    for job in out:
        kc.compress_job(job)
        kc.install(job)
    if stage:
        kc.drain()
        assert st.ring.tail == st.ring.head
    assert read(st, 0, size) == model
    check_counters(st)
    assert st.n_pending == 0


def test_full_page_overwrite_never_decompresses_the_old_page(monkeypatch):
    st = PageStore(16 * P, get_codec("lz4"), max_pending=64 * P)
    st.write(page(1, "text") * 4, 0)
    import uzram.core.store as store_mod
    monkeypatch.setattr(store_mod, "decoder", lambda cid: pytest.fail("decompressed on a full-page write"))
    st._decoders = [None] * 256
    st.write(page(2, "text") * 4, 0)
    assert st.stage(page(3, "text") * 4, 0)


@pytest.mark.parametrize("stage", [False, True])
def test_partial_write_read_modify_write(stage):
    st = PageStore(4 * P, get_codec("lz4"), max_pending=64 * P)
    write = (lambda d, o: st.stage(d, o)) if stage else st.write
    st.write(page(1, "text"), 0)
    write(b"XYZ", 100)
    assert read(st, 0, P) == page(1, "text")[:100] + b"XYZ" + page(1, "text")[103:]
    write(b"ab", P - 1)        # straddles two pages
    assert read(st, P - 1, 2) == b"ab"
    if stage:
        assert st.kind[0] == PENDING           # the patched page is queued raw, not compressed here
        InProcessKcompressd(st).drain()
    assert read(st, 0, P) == page(1, "text")[:100] + b"XYZ" + page(1, "text")[103:P - 1] + b"a"


def test_a_partial_page_changed_while_it_is_patched_is_patched_again(monkeypatch):
    """The old page is read under the lock, patched and compressed outside it: a write
    that lands in between must not be lost."""
    st = PageStore(4 * P, get_codec("lz4"))
    st.write(page(1, "text"), 0)
    real = st._content
    calls = []

    def racing(snap):
        if not calls:
            st.write(page(2, "text"), 0)               # another writer, between the snapshot and the commit
        calls.append(1)
        return real(snap)

    monkeypatch.setattr(st, "_content", racing)
    st.write(b"XYZ", 100)
    assert len(calls) == 2                      # patched twice: the first result was stale
    assert read(st, 0, P) == page(2, "text")[:100] + b"XYZ" + page(2, "text")[103:]


def test_same_filled_pages_store_no_blob_and_are_never_queued():
    st = PageStore(8 * P, get_codec("lz4"), max_pending=64 * P)
    pattern = b"\x01\x02\x03\x04\x05\x06\x07\x08" * 512
    st.write(bytes(P) + pattern, 0)
    assert list(st.kind[:2]) == [SAME, SAME]
    assert st.meta[1] == int.from_bytes(pattern[:8], "little")
    assert st.arena.used_bytes == 0 and st.compr_bytes == 0
    end = st.stage(pattern + page(1, "text") + bytes(P), 2 * P)
    assert list(st.kind[2:5]) == [SAME, PENDING, SAME]
    assert st.n_pending == 1 and st.ring.head == end == 1     # one slot: the text page
    assert st.stage(bytes(2 * P), 6 * P) == 0                 # nothing to queue, nothing to wait for


def test_old_result_after_newer_write_is_dropped():
    """A page staged, its job sent and compressed, then rewritten inline: the old result
    arrives later and must not overwrite the newer data."""
    st = PageStore(8 * P, get_codec("lz4"), max_pending=64 * P)
    kc = InProcessKcompressd(st)
    st.stage(page(1, "text"), 0)
    job = kc.send()                                 # the job is in flight ...
    st.write(page(2, "text"), 0)                            # ... when a newer write lands inline
    assert kc.install(job) == 0                     # the old result is dropped
    assert read(st, 0, P) == page(2, "text")
    assert st.stale_results == 1
    check_counters(st)


def test_page_overwritten_before_dispatch_is_never_compressed():
    st = PageStore(8 * P, get_codec("lz4"), max_pending=64 * P)
    kc = InProcessKcompressd(st)
    st.stage(page(1, "text") * 4, 0)
    st.stage(page(2, "text"), P)                            # overwrite one queued page (a new slot)
    st.trim(2 * P, P)                               # trim another
    job = kc.send()
    _, lens, _, _ = protocol.result_arrays(protocol.decode(job.frames), job.n, job.capacity, [0, 1])
    assert list(lens > 0) == [True, False, False, True, True]   # the worker skipped slots 1 and 2
    assert kc.install(job) == 3
    assert st.cancelled_pages == 2 and st.stale_results == 0
    assert read(st, 0, 4 * P) == page(1, "text") + page(2, "text") + bytes(P) + page(1, "text")


@pytest.mark.parametrize("how", ["trim", "zero", "overwrite"])
def test_a_page_changed_after_dispatch_is_not_installed(how):
    """The cancel byte is read when the worker gets to the page: a trim after the job was
    sent (but before it was compressed) is skipped; after it was compressed, the install
    finds the page no longer queued there and drops the result."""
    for compressed_first in (False, True):
        st = PageStore(8 * P, get_codec("lz4"), max_pending=64 * P)
        kc = InProcessKcompressd(st)
        st.stage(page(1, "text") * 2, 0)
        job = kc.send(compress=compressed_first)
        if how == "trim":
            st.trim(P, P)
        elif how == "zero":
            st.zero(P, P)
        else:
            st.write(page(9, "text"), P)
        kc.compress_job(job)
        assert kc.install(job) == 1
        expect = page(9, "text") if how == "overwrite" else bytes(P)
        assert read(st, 0, 2 * P) == page(1, "text") + expect
        assert (st.stale_results, st.cancelled_pages) == ((1, 0) if compressed_first else (0, 1))
        check_counters(st)


def _writable_ring(st):
    """The ring's shared file mapped read-write, as a broken worker could map it (it
    inherits the descriptor): what it writes there must not change what is stored."""
    ring = st.ring
    return mmap.mmap(ring.file.fd, ring.cancel_offset + ring.capacity, flags=mmap.MAP_SHARED)


def test_a_worker_that_clears_cancel_bytes_changes_nothing_stored():
    st = PageStore(64 * P, get_codec("lz4"), max_pending=32 * P, lanes=4)
    kc = InProcessKcompressd(st)
    st.stage(b"".join(page(i, "text") for i in range(4)), 0)
    job = kc.send()
    st.stage(page(99, "text"), P)                   # page 1 queued again, in a later slot
    st.trim(2 * P, P)                               # page 2 trimmed
    shared = _writable_ring(st)
    shared[st.ring.cancel_offset + 1] = shared[st.ring.cancel_offset + 2] = 0
    assert kc.install(job) == 2                     # pages 0 and 3 only
    assert read(st, P, P) == page(99, "text") and read(st, 2 * P, P) == bytes(P)
    kc.drain()
    assert read(st, 0, 4 * P) == page(0, "text") + page(99, "text") + bytes(P) + page(3, "text")
    check_counters(st)


def test_a_worker_that_clears_a_gap_s_cancel_byte_stores_nothing_there():
    st = PageStore(64 * P, get_codec("lz4"), max_pending=32 * P, lanes=4)
    kc = InProcessKcompressd(st, batch_pages=64)
    for i in range(0, 30, 6):                       # a request queues at most a quarter of the ring
        st.stage(b"".join(page(j, "text") for j in range(i, i + 6)), i * P)
        kc.drain()                                  # slots 0..29 used once: the next 4 pages wrap
    assert st.ring.head == 30
    st.stage(b"".join(page(40 + i, "text") for i in range(4)), 40 * P)   # a gap at slots 30, 31
    assert st.ring.slot_page[30:].tolist() == [-1, -1]
    shared = _writable_ring(st)
    shared[st.ring.cancel_offset + 30] = shared[st.ring.cancel_offset + 31] = 0
    kc.drain()
    last = st.npages - 1
    assert st.kind[last] == EMPTY and read(st, last * P, P) == bytes(P)
    assert read(st, 40 * P, 4 * P) == b"".join(page(40 + i, "text") for i in range(4))
    check_counters(st)


def test_a_result_that_skips_a_queued_page_is_refused_whole():
    st = PageStore(8 * P, get_codec("lz4"), max_pending=64 * P)
    kc = InProcessKcompressd(st)
    st.stage(page(1, "text") * 2, 0)
    job = kc.send()
    ids, lens, offs, _ = protocol.result_arrays(protocol.decode(job.frames), job.n, job.capacity, [0, 1])
    lens = lens.copy()
    lens[1] = 0                                     # "cancelled", but it is not
    with pytest.raises(ProtocolError, match="skipped page 1"):
        st.install(job.start, job.n, ids, lens, job.window + offs, job.lane, job.window)
    assert list(st.kind[:2]) == [PENDING, PENDING] and st.ring.tail == 0   # nothing changed
    assert read(st, 0, 2 * P) == page(1, "text") * 2


def test_read_of_a_queued_page_returns_the_pending_copy():
    st = PageStore(8 * P, get_codec("lz4"), max_pending=64 * P)
    st.stage(page(1, "text"), 0)
    st.stage(page(2, "text"), 0)
    assert st.kind[0] == PENDING and read(st, 0, P) == page(2, "text")
    assert st.n_pending == 1 and st.ring.cancel[0] == 1     # the first copy is cancelled


def test_ring_full_means_no_room_and_nothing_changed():
    st = PageStore(64 * P, get_codec("lz4"), max_pending=8 * P)
    assert st.ring.max_request == 2
    i = 0
    while st.ring.used < st.ring.capacity:                          # past half full, writers keep a share
        assert st.stage(page(i, "text") * 2, 2 * i * P) is not None
        i += 1
    before = (st.kind.copy(), st.gen.copy())
    assert st.stage(page(50, "text") * 2, 60 * P) is None and st.refused == "max_pending"
    assert (st.kind == before[0]).all() and (st.gen == before[1]).all()
    InProcessKcompressd(st).drain()
    assert st.stage(page(50, "text") * 2, 60 * P)


def test_a_ring_that_refuses_under_the_lock_changes_nothing(monkeypatch):
    """What concurrent writers meet when they all saw room: the share is turned off here,
    so that one writer reaches the ring's own refusal."""
    monkeypatch.setattr(store_module, "OWN_SHARE_FROM", 1.0)
    st = PageStore(64 * P, get_codec("lz4"), max_pending=8 * P)
    for i in range(4):
        assert st.stage(page(i, "text") * 2, 2 * i * P)
    before = (st.kind.copy(), st.gen.copy(), st.ring.reserved)
    assert st.stage(page(5, "text") * 2, 40 * P) is None and st.refused == "max_pending"
    assert (st.kind == before[0]).all() and (st.gen == before[1]).all() and st.ring.reserved == before[2]
    InProcessKcompressd(st).drain()
    assert st.stage(page(5, "text") * 2, 40 * P)


def test_a_request_bigger_than_a_quarter_of_the_ring_queues_a_quarter():
    st = PageStore(64 * P, get_codec("lz4"), max_pending=8 * P)
    data = b"".join(page(i, "same" if i == 1 else "text") for i in range(6))
    end = st.stage(data, 4 * P)                                     # 5 pages to queue, 2 may be
    assert end == 2 and st.ring.used == 2 and st.writer_pages == 3
    assert list(st.kind[4:10]) == [PENDING, SAME, PENDING, COMPRESSED, COMPRESSED, COMPRESSED]
    check_counters(st)
    assert read(st, 4 * P, len(data)) == data
    InProcessKcompressd(st).drain()
    assert read(st, 4 * P, len(data)) == data and st.n_pending == 0


def test_a_big_request_with_pages_written_in_part_queues_a_quarter_too():
    st = PageStore(64 * P, get_codec("lz4"), max_pending=8 * P)
    st.write(page(40, "text"), 19 * P)                              # the first page's old content
    data = b"x" + b"".join(page(i, "same" if i == 1 else "text") for i in range(6))
    end = st.stage(data, 20 * P - 1)           # 7 pages, 2 in part: 6 not same-filled, 2 queued
    assert end == 2 and st.ring.used == 2 and st.writer_pages == 4 and st.n_pending == 2
    assert list(st.kind[19:26]).count(PENDING) == 2 and list(st.kind[19:26]).count(COMPRESSED) == 4
    check_counters(st)
    want = page(40, "text")[:-1] + data
    assert read(st, 19 * P, len(want)) == want
    InProcessKcompressd(st).drain()
    check_counters(st)
    assert read(st, 19 * P, len(want)) == want and st.n_pending == 0


def test_a_retry_patches_again_but_compresses_the_writers_whole_pages_once(monkeypatch):
    """Another write changes a page written in part between its patch and the lock: the
    request patches it again, and neither compresses its whole pages again nor takes its
    share twice."""
    st = PageStore(1024 * P, get_codec("lz4"), max_pending=64 * P)
    i = 0
    while st.ring.used < 40:                                        # past half full: a share
        assert st.stage(page(i, "text") * 2, (100 + 2 * i) * P) is not None
        i += 1
    used, carry, before = st.ring.used, st._own_carry, st.writer_pages
    want = 9 * (used - 32) / 32 + carry                             # 9 pages that may be queued
    compressed, injected = [], []
    real_compress, real_patch = store_module.compress_pages, PageStore._patch

    def compress(codec, pages):
        if not injected or len(injected) > 1:
            compressed.append(len(pages))
        return real_compress(codec, pages)

    def patch(self, *args):
        out = real_patch(self, *args)
        if not injected:
            injected.append(1)
            st.write(b"Z", 0)                   # meanwhile, another writer: a retry
            injected.append(2)
        return out

    monkeypatch.setattr(store_module, "compress_pages", compress)
    monkeypatch.setattr(PageStore, "_patch", patch)
    data = b"".join(page(200 + j, "text") for j in range(9))[1:]    # page 0 in part, 8 whole
    assert st.stage(data, 1) is not None
    own = int(want)
    assert compressed == [own, 0, 0]            # the whole pages once; page 0 is queued
    assert st.writer_pages - before == own and st._own_carry == pytest.approx(want - own)
    check_counters(st)
    assert read(st, 0, 9 * P) == b"Z" + data


def test_past_half_full_a_request_with_pages_written_in_part_takes_its_share():
    st = PageStore(256 * P, get_codec("lz4"), max_pending=64 * P)
    while st.ring.used <= 48:                                       # three quarters full
        i = st.ring.used
        assert st.stage(page(i, "text") * 2, 2 * i * P) is not None
    before, used = st.writer_pages, st.ring.used
    data = b"".join(page(200 + j, "text") for j in range(8))[1:-1]  # 8 pages, 2 in part
    assert st.stage(data, 200 * P + 1) is not None
    kept = st.writer_pages - before
    assert 0 < kept < 8 and st.ring.used == used + 8 - kept
    check_counters(st)
    assert read(st, 200 * P + 1, len(data)) == data
    InProcessKcompressd(st).drain()
    assert read(st, 200 * P + 1, len(data)) == data and st.n_pending == 0


def test_a_big_request_queues_no_more_than_the_ring_has_room_for():
    st = PageStore(512 * P, get_codec("lz4"), max_pending=16 * P)
    i = 0
    while st.ring.room() >= st.ring.max_request:         # fill the ring to less than a quarter's room
        assert st.stage(page(i, "text") * 2, 2 * i * P) is not None
        i += 1
    used, room = st.ring.used, st.ring.room()
    assert room > 0
    before = st.writer_pages
    data = b"".join(page(100 + j, "text") for j in range(40))           # bigger than the whole ring
    assert st.stage(data, 300 * P) is not None
    queued = st.ring.used - used
    assert queued == room and st.writer_pages - before == 40 - queued   # nothing compressed in vain
    check_counters(st)
    assert read(st, 300 * P, len(data)) == data
    InProcessKcompressd(st).drain()
    assert read(st, 300 * P, len(data)) == data and st.n_pending == 0


def ring_at(cap, lap, filled, retired):
    """A ring of ``cap`` slots after a first job of ``lap`` slots came back, with ``filled``
    more taken by a job (given back too when ``retired``)."""
    r = PendingRing(cap * P)
    if lap:
        r.alloc(lap), r.publish(), r.take(lap), r.retire(0, lap)
    if filled:
        r.alloc(filled), r.publish(), r.take(filled)
        if retired:
            r.retire(lap, filled)
    return r


@pytest.mark.parametrize("cap", [1, 5, 8])
def test_room_is_the_most_that_alloc_can_give(cap):
    for lap in range(cap):
        for filled in range(cap - lap + 1):
            for retired in (False, True):
                room = ring_at(cap, lap, filled, retired).room()
                assert room == 0 or ring_at(cap, lap, filled, retired).alloc(room) is not None
                assert ring_at(cap, lap, filled, retired).alloc(room + 1) is None


def test_past_half_full_the_writer_compresses_a_growing_share_of_its_pages():
    st = PageStore(256 * P, get_codec("lz4"), max_pending=64 * P)
    others = [0, 1, 2, 3, 5, 6, 7]                                  # page 4 of each write is same-filled
    data, kept_at = {}, []
    for i in range(32):
        w = b"".join(page(8 * i + j, "same" if j == 4 else "text") for j in range(8))
        before, used = st.writer_pages, st.ring.used
        if used >= 60:
            break
        assert st.stage(w, 8 * i * P) is not None
        data[8 * i] = w
        kept = st.writer_pages - before
        kept_at.append((used, kept))
        assert st.ring.used == used + 7 - kept
        kinds = st.kind[[8 * i + j for j in others]]
        assert (kinds[:7 - kept] == PENDING).all() and (kinds[7 - kept:] == COMPRESSED).all()
        assert st.kind[8 * i + 4] == SAME
    assert all(kept == 0 for used, kept in kept_at if used <= 32)   # at most half full: all queued
    late = [kept for used, kept in kept_at if used > 48]
    assert late and all(0 < kept < 7 for kept in late)              # then a share, never all
    shares = st.writer_pages
    assert st.counters()["writer_pages"] == shares == sum(k for _, k in kept_at)
    check_counters(st)
    for off, w in data.items():
        assert read(st, off * P, len(w)) == w
    InProcessKcompressd(st).drain()
    check_counters(st)
    for off, w in data.items():
        assert read(st, off * P, len(w)) == w
    assert st.n_pending == 0
    # once the ring has been touched all over, the share still counts in mem_used_max
    st.mem_used_max = st.mem_used
    for i in range(8):
        st.stage(b"".join(page(1000 + 8 * i + j, "random") for j in range(8)), (128 + 8 * i) * P)
        assert st.mem_used_max >= st.mem_used
    assert not st.ring.filling and st.writer_pages > shares


def test_the_writers_share_is_held_to_mem_limit_too():
    st = PageStore(8 << 20, get_codec("lz4"), mem_limit=4 << 20, max_pending=64 * P, lanes=2)
    for i in range(5):
        assert st.stage(b"".join(page(8 * i + j, "text") for j in range(8)), 8 * i * P)
    assert st.ring.used > 32                                        # past half full
    with pytest.raises(NoSpaceError):
        for i in range(1024):                                       # fill the memory inline
            st.write(os.urandom(P), (100 + i) * P)
    before = (st.kind.copy(), st.gen.copy(), st.mem_used, st.writer_pages)
    st._own_carry = 0.99                     # this one-page write is the writer's to compress
    assert st.stage(os.urandom(P), 2000 * P) is None and st.refused == "mem_limit"
    assert (st.kind == before[0]).all() and (st.gen == before[1]).all()
    assert (st.mem_used, st.writer_pages) == before[2:]


def test_ring_wraps_with_a_gap_and_retires_out_of_order():
    r = PendingRing(8 * P)
    assert r.alloc(3) == 0 and r.publish() == 3
    assert r.alloc(3) == 3 and r.publish() == 6
    assert r.take(8) == (0, 6)
    assert r.alloc(3) is None                     # 2 left before the end: a gap of 2 and 3 more
    r.retire(3, 3)                                # the second job first: the tail waits
    assert r.tail == 0 and r.alloc(3) is None
    r.retire(0, 3)
    assert r.tail == 6
    assert r.alloc(3) == 0                        # slots 6, 7 are a gap: 3 pages do not fit there
    assert r.publish() == 11 and list(r.slot_page[6:]) == [-1, -1] and list(r.cancel[6:8]) == [1, 1]
    assert r.take(8) == (6, 2)                    # the gap is a job of its own, all cancelled
    assert not r.live_slots(6, 2).any()


def test_mem_limit_is_all_or_nothing():
    limit = 2 << 20
    for stage in (False, True):
        st = PageStore(4 << 20, get_codec("lz4"), mem_limit=limit, max_pending=1 << 20, lanes=2)
        rnd = os.urandom(384 * P)                 # 1.5 MiB that does not compress: huge pages
        st.write(rnd, 0)
        big = os.urandom(160 * P)                 # frees 64 pages (no memory: cleaning finds none), needs 160
        if stage:
            assert st.stage(big[:64 * P], 320 * P) is None and st.refused == "mem_limit"
        with pytest.raises(NoSpaceError, match="past mem_limit"):
            st.write(big, 320 * P)
        assert read(st, 0, 384 * P) == rnd and st.kind[384] == EMPTY and st.ring.head == 0
        assert st.mem_used_max <= limit


def test_out_of_range():
    st = PageStore(4 * P, get_codec("lz4"), max_pending=64 * P)
    with pytest.raises(InvalidRequestError, match="outside the device"):
        st.write(b"x", 4 * P)
    with pytest.raises(InvalidRequestError, match="outside the device"):
        st.stage(b"x" * P, 4 * P)


def test_extents_merge_runs():
    st = PageStore(8 * P, get_codec("lz4"))
    st.write(page(1, "text") * 2 + bytes(P), 0)
    assert st.extents(0, 8 * P) == [(0, 2 * P, 0), (2 * P, P, 2), (3 * P, 5 * P, 3)]
    assert st.extents(100, 200) == [(100, 200, 0)]


@pytest.mark.parametrize("first, last", [(3, 20), (0, 300), (10, 290)])   # the scalar and the numpy path
def test_trim_and_zero_ranges_keep_the_accounting(first, last):
    st = PageStore(300 * P, get_codec("lz4"), max_pending=64 * P)
    kc = InProcessKcompressd(st)
    data = b"".join(page(i) for i in range(300))
    st.write(data, 0)
    st.stage(b"".join(page(1000 + i, "text") for i in range(8)), 4 * P)   # some pages queued
    kc.drain()
    st.stage(page(7, "text") * 4, 12 * P)                                           # and some still queued
    st.trim(first * P, (last - first) * P)
    check_counters(st)
    assert st.kind[first:last].max() == EMPTY
    st.zero(first * P, (last - first) * P)                                  # zero same-filled pages
    assert (st.kind[first:last] == SAME).all() and (st.meta[first:last] == 0).all()
    check_counters(st)
    kc.drain()
    check_counters(st)
    assert read(st, first * P, (last - first) * P) == bytes((last - first) * P)


def test_arena_gives_a_segment_back_when_its_last_page_goes():
    a = Arena(8 << 20, segment_bytes=64 * 1024)
    words = []
    for i in range(100):
        w = a.append(os.urandom(1000))
        a.add_live(w, 1000)
        words.append(w)
    held = a.held_bytes
    assert a.used_bytes == 100_000 and held >= 100_000 and a.segments == 2
    allocated = a.file.allocated()
    a.release_many(np.asarray(words[:65], dtype=np.uint64), np.full(65, 1000))   # all of segment 0
    assert a.segments == 1 and a.held_bytes < held
    assert a.file.allocated() <= allocated - 60 * 1024   # really given back to the kernel
    assert a.load(words[70], 1000) != bytes(1000)


@pytest.mark.parametrize("rewrite", [False, True])
def test_a_local_install_spanning_segments_keeps_every_blob(rewrite):
    """Blobs compressed in this process (``install_local``) that take more than one arena
    segment: the first segment is sealed by the second append, and was freed then, with
    its blobs, while it had no live bytes yet.  Real segments (1 MiB) hold a whole job
    (at most 256 pages raw), so small ones stand in here; with ``rewrite``, pages rewritten
    while queued leave no live bytes behind."""
    st = PageStore(64 * P, get_codec("lz4"), max_pending=32 * P, lanes=4)
    st.arena = Arena(capacity_for(st.size, 4, 16 * 1024), segment_bytes=16 * 1024)
    data = [os.urandom(P) for _ in range(8)]              # stored raw: 4 to a segment
    st.stage(b"".join(data), 0)
    start, n = st.ring.take(8)
    raw, live = st.queued(start, n)
    ids, blobs = compress_pages(st.codec, [raw[i * P:(i + 1) * P] for i in range(n)])
    if rewrite:
        st.write(page(1, "text"), 2 * P)
        data[2] = page(1, "text")
    st.install_local(start, n, ids, blobs)
    assert read(st, 0, 8 * P) == b"".join(data)
    check_counters(st)


def test_recompression_spanning_segments_keeps_every_blob():
    """The same for recompression done in this process (postproc.recompress_here), which
    appended every group before counting any live (found by review: zstd read garbage)."""
    from uzram.core import postproc
    from uzram.core.codecs import parse_algorithm
    st = PageStore(256 * P, get_codec("lz4"))
    st.arena = Arena(capacity_for(st.size, 0, 16 * 1024), segment_bytes=16 * 1024)
    data = b"".join(os.urandom(1500) + bytes(P - 1500) for i in range(200))
    st.write(data, 0)
    st.arena.seal_head()
    postproc.recompress(st, [(1, parse_algorithm("zstd:19"))])
    assert read(st, 0, 200 * P) == data
    check_counters(st)


@pytest.mark.parametrize("free", [0, 5])
def test_a_local_install_of_cancelled_pages_takes_no_segment(free):
    """Every page of the job was trimmed while queued, and the head was sealed: nothing is
    appended, so no segment is taken (with none free, it failed with NoSpaceError)."""
    st = PageStore(64 * P, get_codec("lz4"), max_pending=32 * P, lanes=4)
    st.stage(b"".join(page(i, "text") for i in range(4)), 0)
    start, n = st.ring.take(4)
    st.trim(0, 4 * P)
    st.arena.seal_head()
    del st.arena._free[free:]
    before = st.arena.free_segments
    st.install_local(start, n, [0] * n, [b""] * n)
    assert st.arena.free_segments == before and st.arena.head == -1
    check_counters(st)


def test_store_compaction_keeps_data():
    st = PageStore(2000 * P, get_codec("lz4"))
    pages = [os.urandom(2000) + bytes(P - 2000) for i in range(2000)]   # ~2 KiB compressed: 4 segments
    st.write(b"".join(pages), 0)
    for p in range(0, 2000, 3):
        st.trim(p * P, P)
    before = st.arena.held_bytes
    moved, freed = st.compact()
    assert moved > 0 and freed > 0 and st.arena.held_bytes < before
    assert st.arena.dead_bytes < 64 * 1024
    check_counters(st)
    for p in range(2000):
        assert read(st, p * P, P) == (bytes(P) if p % 3 == 0 else pages[p])


def test_samefill_detection():
    assert same_value(bytes(P)) == 0
    assert same_value(b"\xff" * P) == 0xFFFFFFFFFFFFFFFF
    assert same_value(b"\x01\x02\x03\x04\x05\x06\x07\x08" * 512) == 0x0807060504030201
    assert same_value(bytes(P - 1) + b"\x01") is None
    assert same_value(os.urandom(P)) is None
    assert same_value(b"ab" * 8 + bytes(P - 32) + b"ab" * 8) is None   # passes the probes only
    st = PageStore(8 * P, get_codec("lz4"), max_pending=64 * P)
    probes = b"ab" * 8 + bytes(P - 32) + b"ab" * 8        # passes the probes of first, second and last word
    st.stage(probes + b"\x01\x02\x03\x04\x05\x06\x07\x08" * 512, 0)
    assert list(st.kind[:2]) == [PENDING, SAME]


def two_kib_pages(n):
    """``n`` pages that compress to about 2 KiB each (about two per arena segment's KiB)."""
    return [os.urandom(2000) + bytes(P - 2000) for _ in range(n)]


def store_with_dead_bytes(pages, dying):
    """A store of ``pages`` pages of about 2 KiB compressed (1,000 distinct ones over and
    over), and two of every three of its first ``dying`` pages trimmed."""
    st = PageStore(pages * P, get_codec("lz4"))
    distinct = two_kib_pages(1000)
    for first in range(0, pages, 1000):
        st.write(b"".join(distinct), first * P)
    for p in range(dying):
        if p % 3:
            st.trim(p * P, P)
    return st, distinct


def clean_a_pass(st):
    """Call clean_idle_step through a pass; returns the number of steps made."""
    steps = 0
    while st.clean_idle_step(going=steps > 0):
        steps += 1
    return steps


def test_dead_bytes_under_the_busy_mark_wait_for_an_idle_pass():
    """A tenth of what is held dies (two of every three pages of its first 15%): past the
    idle mark (CLEAN_IDLE), under the busy one (CLEAN_BUSY), so the requests clean nothing
    in passing; an idle pass, step by step, cleans it down to about CLEAN_TO (the device is
    big enough, 80 MiB of blobs, for CLEAN_TO to be under what CLEAN_IDLE and CLEAN_MIN
    would stop at)."""
    st, distinct = store_with_dead_bytes(40000, 6000)
    arena = st.arena
    dead = arena.dead_bytes
    assert store_module.CLEAN_IDLE * arena.held_bytes < dead < store_module.CLEAN_BUSY * arena.held_bytes
    assert st.pages_compacted == 0
    assert clean_a_pass(st) > 1 and st.pages_compacted > 0
    assert arena.dead_bytes <= store_module.CLEAN_TO * arena.held_bytes + arena.segment_bytes
    assert not st.clean_idle_step()         # under the idle mark now: no pass starts
    check_counters(st)
    for p in range(0, 40000, 7):
        assert read(st, p * P, P) == (bytes(P) if p < 6000 and p % 3 else distinct[p % 1000])


def test_an_idle_pass_that_frees_nothing_is_not_tried_again():
    """Under a mem_limit that no copy fits under, a pass finds victims and moves none: the
    next idle moment starts no pass (and no scan of the page table) until more has died."""
    st, _ = store_with_dead_bytes(12000, 3000)
    st.mem_limit = st.mem_used + 64 * 1024
    assert clean_a_pass(st) >= 1 and st.pages_compacted == 0
    assert not st.clean_idle_step()
    check_counters(st)


def test_cleaning_in_passing_takes_a_few_segments_a_request(monkeypatch):
    """Past the busy mark a request cleans in passing, but at most CLEAN_STEP segments, so
    no request pays for a whole clean-up; what is left waits for the next requests (or an
    idle moment)."""
    st = PageStore(12000 * P, get_codec("lz4"))
    pages = two_kib_pages(12000)
    for first in range(0, 12000, 1000):
        st.write(b"".join(pages[first:first + 1000]), first * P)
    moves = []
    move = st._move_locked
    monkeypatch.setattr(st, "_move_locked", lambda victims: moves.append(len(victims)) or move(victims))
    for p in range(12000):                   # two of every three pages die: most of what is held
        if p % 3:
            st.trim(p * P, P)
    assert moves and max(moves) <= store_module.CLEAN_STEP
    assert st.arena.dead_bytes <= store_module.CLEAN_BUSY * st.arena.held_bytes + st.arena.segment_bytes
    check_counters(st)
    for p in range(0, 12000, 7):
        assert read(st, p * P, P) == (bytes(P) if p % 3 else pages[p])


def test_cleaning_with_nothing_worth_copying_keeps_the_head():
    """Regression: when dead bytes passed the cleaning threshold but every segment was still
    mostly live, each write sealed the head and so started a new 1 MiB segment."""
    st = PageStore(8000 * P, get_codec("lz4"))
    for first in range(0, 6000, 64):
        st.write(b"".join(os.urandom(2000) + bytes(P - 2000) for _ in range(64)), first * P)
    for p in range(0, 6000, 5):                       # 20% dead everywhere: no segment worth copying
        st.trim(p * P, P)
    assert st.arena.dead_bytes > store_module.CLEAN_IDLE * st.arena.held_bytes
    segments = st.arena.segments
    for i in range(200):
        st.write(page(i, "text"), (6000 + i) * P)
        assert not st.clean_idle_step()
    assert st.arena.segments <= segments + 1
    assert read(st, 6100 * P, P) == page(100, "text")


def test_the_arena_has_a_segment_for_every_lane_and_the_head():
    """Regression: every worker lane holds a whole segment open, and the arena was sized
    for the data alone, so many workers on a small device ran out of segments."""
    st = PageStore(16 * P, get_codec("lz4"), max_pending=64 * P, lanes=512)
    for lane in range(512):
        st.window(lane, 256 * P)
    st.write(page(1, "text"), 0)                       # and the head still gets one
    assert read(st, 0, P) == page(1, "text")


def locked_resident_kib(arena):
    """Resident KiB of the locked parts of ``arena``'s own map (smaps, by address)."""
    base = arena.file._address()
    end = base + arena.file.size
    total, cur = 0, None
    with open("/proc/self/smaps") as f:
        for line in f:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                lo, hi = int(m.group(1), 16), int(m.group(2), 16)
                cur = {} if base <= lo and hi <= end else None
            elif cur is not None:
                key, _, value = line.partition(":")
                if key == "Rss":
                    cur["rss"] = int(value.split()[0])
                elif key == "VmFlags" and "lo" in value.split():
                    total += cur["rss"]
    return total


def test_a_locked_arena_locks_each_segment_whole_before_a_worker_writes_it():
    """For swap: pages a worker writes through its own map are locked in this process's
    map from the start (else they could be swapped out onto the device itself), and the
    memory an open segment holds is counted."""
    st = PageStore(64 * P, get_codec("lz4"), max_pending=64 * P, lanes=2, lock=True)
    kc = InProcessKcompressd(st)

    assert locked_resident_kib(st.arena) == 0 and st.mem_used == 0
    st.stage(page(1, "text") * 8, 0)
    job = kc.send()
    assert locked_resident_kib(st.arena) == 1024           # the lane's segment, before the worker wrote it
    assert st.mem_used >= 1 << 20                  # counted: it is resident
    kc.install(job)
    assert read(st, 0, 8 * P) == page(1, "text") * 8
    st.arena._seal(st.arena.lanes[job.lane])       # sealed: the unwritten tail goes
    assert locked_resident_kib(st.arena) * 1024 == st.arena.held_bytes < 1 << 20
    assert st.mem_used == st.arena.held_bytes + st.ring.held_bytes


def _arena_out_of_segments(st):
    """No free segment and no head to append to.  Simulated: a real arena has room for
    every page raw and as much again, and cleaning keeps it from filling."""
    st.arena._free.clear()
    st.arena.seal_head()


@pytest.mark.parametrize("how", ["inline", "staged with the writer's share", "staged, unaligned"])
def test_a_write_the_arena_cannot_take_fails_before_changing_anything(how):
    st = PageStore(256 * P, get_codec("lz4"), max_pending=16 * P, lanes=4)
    old = b"".join(page(i, "text") for i in range(4))
    st.write(old, 8 * P)
    st.write(page(9, "text"), 30 * P)             # the head keeps a live blob after the overwrite
    for i in range(3):                             # ring slots 10 of 16: the writer's share is due
        st.stage(b"".join(page(50 + 4 * i + j, "text") for j in range(4 if i < 2 else 2)), (40 + 8 * i) * P)
    assert st.ring.used == 10
    _arena_out_of_segments(st)
    before = (st.ring.head, st.ring.reserved, st.n_pending, st.n_stored, st.counters())
    new = b"".join(page(100 + i, "text") for i in range(4))
    with pytest.raises(NoSpaceError, match="segments are all in use"):
        if how == "inline":
            st.write(new, 8 * P)
        elif how == "staged, unaligned":
            st.stage(new[:-100], 8 * P + 100)
        else:
            st.stage(new, 8 * P)
    assert (st.ring.head, st.ring.reserved, st.n_pending, st.n_stored, st.counters()) == before
    assert read(st, 8 * P, 4 * P) == old
    check_counters(st)


@pytest.mark.parametrize("how", ["inline", "staged with the writer's share", "staged, unaligned"])
def test_a_write_that_frees_a_segment_fits_in_a_full_arena(how):
    """No free segment, but the write overwrites the only blobs of a sealed one: freeing
    them gives the segment back, so the write fits (the room check before it changes
    anything counted only free segments: a false ENOSPC, found by review)."""
    st = PageStore(256 * P, get_codec("lz4"), max_pending=16 * P, lanes=4)
    for i in range(3):                             # ring slots 10 of 16: the writer's share is due
        st.stage(b"".join(page(50 + 4 * i + j, "text") for j in range(4 if i < 2 else 2)), (40 + 8 * i) * P)
    st.write(b"".join(page(i, "text") for i in range(4)), 8 * P)
    _arena_out_of_segments(st)                     # seals the head: pages 8..11 are all it holds
    new = b"".join(page(100 + i, "text") for i in range(4))
    if how == "inline":
        st.write(new, 8 * P)
    elif how == "staged, unaligned":
        st.stage(new[:-100], 8 * P + 100)
        new = page(0, "text")[:100] + new[:-100]
    else:
        st.stage(new, 8 * P)
    assert read(st, 8 * P, 4 * P) == new
    check_counters(st)


def test_a_stage_that_fails_after_reserving_its_slots_leaves_gaps(monkeypatch):
    """A request that fails half way under the lock leaves its reserved slots as gaps: the
    next request's publish sends them, and nothing is installed from them (found by review:
    they looked queued, so the install's shortcut stored a blob in the device's last page).
    The failure is simulated (MemoryError as the pages' access times are stamped): the real
    ones found there, failed hole punches, are now counted instead of raised (below)."""
    st = PageStore(64 * P, get_codec("lz4"), max_pending=32 * P, lanes=4)
    kc = InProcessKcompressd(st)
    st.write(b"".join(page(i, "text") for i in range(4)), 0)

    def no_memory(p0, n):
        raise MemoryError

    monkeypatch.setattr(st, "_stamp", no_memory)
    with pytest.raises(MemoryError):
        st.stage(b"".join(page(100 + i, "text") for i in range(4)), 0)
    monkeypatch.undo()
    assert st.ring.reserved == 4 and st.ring.head == 0
    assert (st.ring.cancelled_flags[:4] == 1).all() and (st.ring.slot_page[:4] == -1).all()
    st.stage(page(200, "text") * 2, 10 * P)               # publishes the gaps with its own slots
    kc.drain()
    last = st.npages - 1
    assert st.kind[last] == EMPTY and read(st, last * P, P) == bytes(P)
    assert read(st, 10 * P, 2 * P) == page(200, "text") * 2
    check_counters(st)


def failing_punch(fd, offset, length):
    """``punch_hole`` as on a kernel that refuses: monkeypatched in by the tests below."""
    raise OSError(5, "fallocate(PUNCH_HOLE): Input/output error")


@pytest.mark.parametrize("how", ["staged", "inline", "trimmed", "zeroed"])
def test_a_failed_hole_punch_in_the_backing_file_loses_nothing(tmp_path, monkeypatch, how):
    """A freed backing block whose punch fails holds disk space, no data: the request that
    freed it goes on, the failure is counted and logged once (it raised half way through
    the request's locked step before)."""
    from uzram.core import backing as backing_mod, postproc
    from uzram.core.backing import BackingFile
    from uzram.core.ratelog import RateLimitedLog
    lines = []
    st = PageStore(64 * P, get_codec("lz4"), max_pending=32 * P, lanes=4)
    kc = InProcessKcompressd(st)
    (tmp_path / "bd").write_bytes(bytes(64 * P))
    st.backing = BackingFile(str(tmp_path / "bd"), st.size, log=RateLimitedLog("t", write=lines.append))
    st.write(b"".join(page(i, "text") for i in range(4)), 0)
    postproc.writeback(st, 0)                              # pages 0..3 in the backing file
    assert st.n_backed == 4

    monkeypatch.setattr(backing_mod, "punch_hole", failing_punch)
    new = b"".join(page(100 + i, "text") for i in range(4))
    if how == "staged":
        st.stage(new, 0)
        kc.drain()
    elif how == "inline":
        st.write(new, 0)
    elif how == "trimmed":
        st.trim(0, 4 * P)
        new = bytes(4 * P)
    else:
        st.zero(0, 4 * P)
        new = bytes(4 * P)
    assert read(st, 0, 4 * P) == new
    assert st.n_backed == 0 and st.backing.count == 0
    c = st.counters()
    assert c["backing_punch_failures"] >= 1 and c["bd_count"] == 0
    assert len(lines) == 1 and "backing_dev" in lines[0] and "Input/output error" in lines[0]
    check_counters(st)


def arena_memory_is_counted(arena):
    """What the arena counts as held (mem_used_total's part) is what the kernel holds for it."""
    assert arena.held_bytes + arena.stuck_bytes == arena.file.allocated()


def test_a_failed_hole_punch_in_shared_memory_loses_nothing(monkeypatch):
    """The arena's punch failing as an overwrite frees a sealed segment's last blob: the
    segment is free all the same, the write goes on and is counted (it raised half way
    through the locked step before), and its memory stays counted in mem_used_total until
    writes use it again (it was no longer counted before)."""
    st = PageStore(64 * P, get_codec("lz4"), max_pending=32 * P, lanes=4)
    kc = InProcessKcompressd(st)
    st.write(b"".join(page(i, "text") for i in range(4)), 0)
    st.arena.seal_head()                                   # pages 0..3: a sealed segment's only blobs
    free = st.arena.free_segments
    arena_memory_is_counted(st.arena)
    from uzram.core.ratelog import RateLimitedLog
    lines = []
    st.arena.file.log = RateLimitedLog("t", write=lines.append)     # (the device sets its own)

    monkeypatch.setattr(shm, "punch_hole", failing_punch)
    new = b"".join(page(100 + i, "text") for i in range(4))
    st.stage(new, 0)
    monkeypatch.undo()
    assert st.arena.stuck_bytes > 0
    arena_memory_is_counted(st.arena)
    assert st.mem_used - st.ring.held_bytes == st.arena.file.allocated()    # mem_used_total counts it
    kc.drain()
    assert read(st, 0, 4 * P) == new
    assert st.arena.free_segments >= free                 # the sealed one came back (a lane took one)
    assert st.counters()["shared_punch_failures"] == 1
    assert len(lines) == 1 and "arena" in lines[0] and "Input/output error" in lines[0]
    arena_memory_is_counted(st.arena)
    assert st.counters()["mem_used_total"] == st.mem_used >= st.arena.file.allocated()
    check_counters(st)
    for i in range(8):                                     # new segments: the stuck one is used again
        st.write(b"".join(page(200 + 8 * i + j, "random") for j in range(8)), 8 * P * i)
        arena_memory_is_counted(st.arena)
    assert st.arena.stuck_bytes == 0
    check_counters(st)


def test_an_unlocked_arena_gives_back_what_failed_punches_left(monkeypatch):
    """A free segment a failed punch left allocated is the next one taken, and is uncounted
    as far as new writes cover it; freed again with a punch that works, or tried again by
    ``retry_stuck`` (compact, mem_limit's cleaning), it is given back whole."""
    arena = Arena(4 << 20)
    size = arena.segment_bytes
    real = shm.punch_hole

    def fill_one_segment(nbytes):
        word = arena.append(b"x" * nbytes)
        arena.add_live(word, nbytes)
        arena.seal_head()
        return word

    word = fill_one_segment(10000)
    seg = word // size
    other = fill_one_segment(100)                         # another segment, freed after the first
    monkeypatch.setattr(shm, "punch_hole", failing_punch)
    arena.release_one(word, 10000)
    monkeypatch.setattr(shm, "punch_hole", real)
    arena.release_one(other, 100)
    assert arena.stuck_bytes == 12288
    arena_memory_is_counted(arena)
    word = arena.append(b"y" * 100)                       # the stuck segment is taken first ...
    assert word // size == seg
    assert arena.stuck_bytes == 8192                      # ... and its first page is written over
    arena_memory_is_counted(arena)
    arena.add_live(word, 100)
    arena.seal_head()
    arena.release_one(word, 100)                          # freed with a punch that works: all of it
    assert arena.stuck_bytes == 0
    arena_memory_is_counted(arena)

    word = fill_one_segment(10000)
    monkeypatch.setattr(shm, "punch_hole", failing_punch)
    arena.release_one(word, 10000)
    assert arena.retry_stuck() == 0 and arena.stuck_bytes == 12288     # still failing
    failures = arena.file.punch_failures
    for _ in range(3):              # a write short of room: no new try until a segment is freed
        assert arena.retry_stuck(again=False) == 0
    assert arena.file.punch_failures == failures
    arena.release_one(fill_one_segment(100), 100)         # the stuck segment, used and freed again
    assert arena.retry_stuck(again=False) == 0
    assert arena.file.punch_failures == failures + 2      # that free's punch, and the new try
    assert arena.stuck_bytes == 12288
    monkeypatch.setattr(shm, "punch_hole", real)
    assert arena.retry_stuck(again=False) == 0            # (nothing freed since the last try)
    assert arena.retry_stuck() == 12288 and arena.stuck_bytes == 0
    arena_memory_is_counted(arena)

    word = fill_one_segment(10000)
    monkeypatch.setattr(shm, "punch_hole", failing_punch)
    arena.release_one(word, 10000)
    monkeypatch.setattr(shm, "punch_hole", real)
    assert arena.retry_stuck() == 12288 and arena.stuck_bytes == 0
    arena_memory_is_counted(arena)
    arena.close()


def test_an_abandoned_window_whose_punch_fails_stays_counted(monkeypatch):
    """A worker that died may have written anywhere in its window: when the punch that
    gives it back fails, the segment past the lane's fill stays counted, until the lane's
    next writes cover it or the segment is freed."""
    arena = Arena(4 << 20)
    size = arena.segment_bytes
    word, cap = arena.window(0, 64 << 10)
    arena.mv[word:word + 200000] = b"w" * 200000           # what the worker wrote, never adopted
    monkeypatch.setattr(shm, "punch_hole", failing_punch)
    arena.abandon(0)
    monkeypatch.undo()
    assert arena.stuck_bytes == size
    assert arena.held_bytes + arena.stuck_bytes >= arena.file.allocated()
    word, cap = arena.window(0, 64 << 10)                  # the lane's next job
    arena.mv[word:word + 5000] = b"v" * 5000
    arena.adopt(0, word + 5000, 5000)
    assert arena.held_bytes == 8192 and arena.stuck_bytes == size - 8192
    arena.seal_idle_lanes()
    arena.release_one(word, 5000)                          # freed, the punch works: nothing left
    assert arena.stuck_bytes == 0 and arena.file.allocated() == 0

    word = arena.append(b"x" * 10000)                      # a segment freed while punches fail ...
    arena.add_live(word, 10000)
    arena.seal_head()
    monkeypatch.setattr(shm, "punch_hole", failing_punch)
    arena.release_one(word, 10000)
    monkeypatch.undo()
    assert arena.stuck_bytes == 12288
    word, cap = arena.window(0, 64 << 10)                  # ... is a lane's next segment
    assert word // size == 0
    arena.mv[word:word + 5000] = b"w" * 5000
    arena.abandon(0)                                       # this punch works: it took the rest too
    assert arena.stuck_bytes == 0 and arena.file.allocated() == 0
    arena.close()


def test_compaction_counts_only_what_it_gave_back(monkeypatch):
    """Locked in memory, with punches failing: compaction frees segments whose memory stays
    held, and takes one a failed punch left allocated (counted whole from then on); the
    bytes it says it freed are what mem_used_total lost."""
    st = PageStore(512 * P, get_codec("lz4"), lock=True)
    st.write(b"".join(page(i, "text") for i in range(200)), 0)
    st.arena.seal_head()
    st.write(b"".join(page(1000 + i, "text") for i in range(64)), 300 * P)
    st.write(bytes(60 * P), 300 * P)                       # dead bytes for compaction to clean

    monkeypatch.setattr(shm, "punch_hole", failing_punch)
    st.write(bytes(200 * P), 0)                            # the sealed segment is free, and stuck
    stuck = st.arena.stuck_bytes
    assert stuck >= 4 * P
    used = st.mem_used
    moved, freed = st.compact()
    assert moved > 0
    assert freed == max(0, used - st.mem_used)        # (it took a segment: more held now)
    monkeypatch.undo()
    check_counters(st)


def test_the_idle_give_back_does_not_retry_a_failed_punch_every_tick(monkeypatch):
    """The dispatcher offers the idle ring's memory back every tick: after a failed punch it
    tries again only once pages were staged since (compact always tries)."""
    st = PageStore(1024 * P, get_codec("lz4"), max_pending=512 * P, lanes=4)
    kc = InProcessKcompressd(st)

    def stage_some(first):      # (staged in requests the ring takes whole, each drained)
        for r in range(8):
            st.stage(b"".join(page(first + 40 * r + i, "text") for i in range(40)), (first + 40 * r) * P)
            kc.drain()

    stage_some(0)
    assert st.ring.held_bytes >= st.ring.GIVE_BACK

    monkeypatch.setattr(shm, "punch_hole", failing_punch)
    for _ in range(5):
        assert st.give_back_pending() == 0
    assert st.ring.file.punch_failures == 1
    stage_some(320)
    assert st.give_back_pending() == 0 and st.ring.file.punch_failures == 2
    monkeypatch.undo()
    assert st.give_back_pending() == 0                    # (no page staged since)
    held = st.ring.held_bytes
    assert st.compact()[1] >= held and st.ring.held_bytes == 0


def test_a_failed_punch_of_the_idle_ring_keeps_it_counted(monkeypatch):
    """An empty ring that cannot give its memory back still counts it in mem_used_total, and
    gives it back on a later try."""
    st = PageStore(64 * P, get_codec("lz4"), max_pending=32 * P, lanes=4)
    kc = InProcessKcompressd(st)
    st.stage(b"".join(page(i, "text") for i in range(16)), 0)
    kc.drain()
    held, allocated, used = st.ring.held_bytes, st.ring.file.allocated(), st.mem_used
    assert held > 0

    monkeypatch.setattr(shm, "punch_hole", failing_punch)
    assert st.ring.give_back() == 0
    assert st.ring.held_bytes == held and st.ring.file.allocated() == allocated and st.mem_used == used
    assert st.ring.file.punch_failures == 1
    monkeypatch.undo()
    assert st.ring.give_back() == held
    assert st.ring.held_bytes == 0 and st.mem_used == used - held
    assert st.ring.file.allocated() <= allocated - held     # (the slots; the cancel bytes go too)


def test_a_segment_that_cannot_be_locked_stays_free(monkeypatch):
    """mlock failing (RLIMIT_MEMLOCK, say) as a locked arena takes a segment loses no segment."""
    arena = Arena(4 << 20, lock=True)
    free = arena.free_segments

    def refuse(offset, length):
        raise OSError(12, "mlock: Cannot allocate memory")

    monkeypatch.setattr(arena.file, "lock", refuse)
    with pytest.raises(OSError):
        arena.append(b"x" * 100)
    assert arena.free_segments == free and arena.head == -1


def test_a_locked_arena_counts_what_failed_punches_left(monkeypatch):
    """Locked in memory (a swap device), a segment is resident whole from when it is taken:
    the tail punched at sealing and the segment punched when freed stay counted when the
    punch fails, and are counted once, not twice, when the segment is taken again."""
    arena = Arena(4 << 20, lock=True)
    size = arena.segment_bytes

    def counted():
        return arena.held_bytes + arena.open_slack + arena.stuck_bytes

    word = arena.append(b"x" * 10000)
    arena.add_live(word, 10000)
    assert counted() == arena.file.allocated() == size
    real = shm.punch_hole

    monkeypatch.setattr(shm, "punch_hole", failing_punch)
    arena.seal_head()                                      # the tail's punch fails
    assert arena.stuck_bytes == size - 12288
    assert counted() == arena.file.allocated() == size
    seg = word // size
    arena.release_one(word, 10000)                         # the segment is free; its punch fails
    assert arena.free_segments == arena.nsegments and arena.held_bytes == 0
    assert counted() == arena.file.allocated() == size
    monkeypatch.setattr(shm, "punch_hole", real)
    assert arena.append(b"y" * 100) // size == seg         # taken again: locked whole, counted once
    assert arena.stuck_bytes == 0
    assert counted() == arena.file.allocated() == size
    arena.close()
