"""The page store on its own: partial writes, accounting, generations, the pending area,
the arena and compaction.  (The store is in-process by design; these run it for real.)"""

import os
import random

import numpy as np
import pytest

from uzram import samefill
from uzram.arena import Arena, locate
from uzram.codecs import compress_pages, get_codec
from uzram.constants import COMPRESSED, EMPTY, HUGE, PENDING, SAME
from uzram.errors import InvalidRequestError, NoSpaceError
from uzram.store import PageStore

P = 4096


def text(i):
    return (f"{i} the quick brown fox " * 300).encode()[:P]


def read(store, offset, n):
    buf = bytearray(n)
    store.read(buf, offset)
    return bytes(buf)


def run_batch(store, batch):
    batch, raw = store.take_for_dispatch(batch)
    ids, blobs = compress_pages(store.codec, (raw[i:i + P] for i in range(0, len(raw), P)))
    return store.install(batch, ids, blobs)


@pytest.mark.parametrize("stage", [False, True])
def test_random_operations_match_a_model(stage):
    rng = random.Random(5)
    size = 600 * P + 1234
    st = PageStore(size, get_codec("zstd"), max_pending=256 * P if stage else 0)
    model = bytearray(size)
    queued = []
    for i in range(2500):
        off = rng.randrange(size)
        n = rng.randrange(1, min(size - off, 30000) + 1)
        op = rng.random()
        if op < 0.6:
            k = rng.random()
            d = bytes(n) if k < .2 else (b"12345678" * (n // 8 + 1))[:n] if k < .4 else \
                (text(i) * (n // P + 1))[:n] if k < .8 else os.urandom(n)
            batch, _ = st.write(d, off, stage=stage)
            if batch is not None:
                queued.append(batch)
            model[off:off + n] = d
        elif op < 0.7:
            st.zero(off, n, may_trim=rng.random() < .5)
            model[off:off + n] = bytes(n)
        elif op < 0.8:
            assert read(st, off, n) == model[off:off + n], i
        if queued and rng.random() < 0.4:
            run_batch(st, queued.pop(rng.randrange(len(queued))))   # results arrive out of order
    for b in queued:
        run_batch(st, b)
    assert read(st, 0, size) == model
    c = st.counters()
    assert c["pending_pages"] == 0
    assert c["pages_stored"] == int(np.count_nonzero(st.kind))
    assert c["same_pages"] == int(np.count_nonzero(st.kind == SAME))
    assert c["compr_data_size"] == int(st.clen[(st.kind == COMPRESSED) | (st.kind == HUGE)].sum())


def test_full_page_overwrite_never_decompresses_the_old_page(monkeypatch):
    st = PageStore(16 * P, get_codec("lz4"))
    st.write(text(1) * 4, 0)
    import uzram.store as store_mod
    monkeypatch.setattr(store_mod, "decoder", lambda cid: pytest.fail("decompressed on a full-page write"))
    st.write(text(2) * 4, 0)


def test_partial_write_read_modify_write():
    st = PageStore(4 * P, get_codec("lz4"))
    st.write(text(1), 0)
    st.write(b"XYZ", 100)
    assert read(st, 0, P) == text(1)[:100] + b"XYZ" + text(1)[103:]
    st.write(b"ab", P - 1)        # straddles two pages
    assert read(st, P - 1, 2) == b"ab"


def test_same_filled_pages_store_no_blob():
    st = PageStore(8 * P, get_codec("lz4"))
    st.write(bytes(P) + b"\x01\x02\x03\x04\x05\x06\x07\x08" * 512, 0)
    assert list(st.kind[:2]) == [SAME, SAME]
    assert st.meta[1] == int.from_bytes(b"\x01\x02\x03\x04\x05\x06\x07\x08", "little")
    assert st.arena.used_bytes == 0 and st.compr_bytes == 0


def test_old_result_after_newer_write_is_dropped():
    """Generation race: a page staged, then rewritten inline, then the old job's result arrives."""
    st = PageStore(8 * P, get_codec("lz4"), max_pending=64 * P)
    batch, _ = st.write(text(1), 0, stage=True)
    b2, raw = st.take_for_dispatch(batch)              # the job is in flight...
    st.write(text(2), 0)                               # ...when a newer write lands inline
    ids, blobs = compress_pages(st.codec, [raw])
    assert st.install(b2, ids, blobs) == 0             # the old result is dropped
    assert read(st, 0, P) == text(2)
    assert st.stale_results == 1


def test_page_overwritten_before_dispatch_is_never_compressed():
    st = PageStore(8 * P, get_codec("lz4"), max_pending=64 * P)
    batch, _ = st.write(text(1) * 4, 0, stage=True)
    st.write(text(2), P, stage=True)                   # overwrite one queued page
    st.trim(2 * P, P)                                  # trim another
    b2, raw = st.take_for_dispatch(batch)
    assert list(b2.pages) == [0, 3] and len(raw) == 2 * P
    assert st.cancelled_pages == 2


def test_read_of_a_queued_page_returns_the_pending_copy():
    st = PageStore(8 * P, get_codec("lz4"), max_pending=64 * P)
    st.write(text(1), 0, stage=True)
    st.write(text(2), 0, stage=True)
    assert st.kind[0] == PENDING and read(st, 0, P) == text(2)
    assert st.pending.used == 1                        # the first copy was freed


def test_pending_full_falls_back_inline():
    st = PageStore(64 * P, get_codec("lz4"), max_pending=4 * P)
    b, stalled = st.write(text(1) * 4, 0, stage=True)
    assert b is not None and not stalled
    b, stalled = st.write(text(2) * 4, 4 * P, stage=True)
    assert b is None and stalled
    assert list(st.kind[4:8]) == [COMPRESSED] * 4


def test_mem_limit_is_all_or_nothing():
    st = PageStore(64 * P, get_codec("lz4"), mem_limit=10 * P)
    rnd = os.urandom(8 * P)
    st.write(rnd, 0)
    with pytest.raises(NoSpaceError):
        st.write(os.urandom(5 * P), 6 * P)            # frees 2 pages, needs 5
    assert read(st, 0, 8 * P) == rnd and st.kind[8] == EMPTY


def test_out_of_range():
    st = PageStore(4 * P, get_codec("lz4"))
    with pytest.raises(InvalidRequestError, match="outside the device"):
        st.write(b"x", 4 * P)


def test_extents_merge_runs():
    st = PageStore(8 * P, get_codec("lz4"))
    st.write(text(1) * 2 + bytes(P), 0)
    assert st.extents(0, 8 * P) == [(0, 2 * P, 0), (2 * P, P, 2), (3 * P, 5 * P, 3)]
    assert st.extents(100, 200) == [(100, 200, 0)]


def test_arena_unmaps_a_segment_when_its_last_page_goes():
    a = Arena(segment_bytes=64 * 1024)
    words, lens = [], []
    for i in range(100):
        blob = os.urandom(1000)
        seg, off = a.append(blob)
        a.add_live(seg, 1000)
        words.append(locate(seg, off))
        lens.append(1000)
    held = a.held_bytes
    assert a.used_bytes == 100_000 and held >= 100_000 and a.segments == 2
    a.release_many(np.asarray(words[:65], dtype=np.uint64), np.asarray(lens[:65]))  # all of segment 0
    assert a.segments == 1 and a.held_bytes < held       # the first segment went back to the kernel
    assert a.load(words[70], 1000) == a.load(words[70], 1000)


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
    for p in range(2000):
        assert read(st, p * P, P) == (bytes(P) if p % 3 == 0 else pages[p])


def test_samefill_detection():
    assert samefill.same_value(bytes(P)) == 0
    assert samefill.same_value(b"\xff" * P) == 0xFFFFFFFFFFFFFFFF
    assert samefill.same_value(b"\x01\x02\x03\x04\x05\x06\x07\x08" * 512) == 0x0807060504030201
    assert samefill.same_value(bytearray(b"\x01\x02\x03\x04\x05\x06\x07\x08" * 512)) == 0x0807060504030201
    assert samefill.same_value(bytes(P - 1) + b"\x01") is None
    assert samefill.same_value(os.urandom(P)) is None
    assert samefill.same_value(b"ab" * 8 + bytes(P - 32) + b"ab" * 8) is None   # passes the probes only


def test_cleaning_with_nothing_worth_copying_keeps_the_head():
    """Regression: when dead bytes passed the cleaning threshold but every segment was still
    mostly live, each write sealed the head and so started a new 1 MiB segment."""
    st = PageStore(8000 * P, get_codec("lz4"))
    for first in range(0, 6000, 64):
        st.write(b"".join(os.urandom(2000) + bytes(P - 2000) for _ in range(64)), first * P)
    for p in range(0, 6000, 5):                       # 20% dead everywhere: no segment worth copying
        st.trim(p * P, P)
    assert st.arena.worth_cleaning()
    segments = st.arena.segments
    for i in range(200):
        st.write(text(i), (6000 + i) * P)
    assert st.arena.segments <= segments + 1
    assert read(st, 6100 * P, P) == text(100)
