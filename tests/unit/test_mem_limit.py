"""mem_limit holds for mem_used_total (what is really held), under random overwrites, inline
and through the pending ring with kcompressd's real Compressor (in-process: helpers.py),
and compact brings mem_used_total down to the live bytes plus at most a segment."""

import random

import pytest
from helpers import PAGE as P
from helpers import InProcessKcompressd, read

from uzram.core.codecs import get_codec
from uzram.core.errors import NoSpaceError
from uzram.core.store import PageStore

LIMIT = 8 << 20


def half_compressible(r, n):
    """``n`` pages that lz4 packs to about half: random bytes and runs of one byte."""
    out = bytearray()
    for _ in range(n):
        k = r.randrange(1024, 3072)
        out += r.randbytes(k) + bytes([r.randrange(256)]) * (P - k)
    return bytes(out)


def storm(st, r, model, rounds, kc=None):
    """Random overwrites of 1..16 pages; a refused write must leave its pages as they were."""
    npages = st.npages
    refused = 0
    for _ in range(rounds):
        n = r.randint(1, 16)
        p = r.randrange(npages - n)
        data = half_compressible(r, n)
        try:
            if kc is None or st.stage(data, p * P) is None:
                st.write(data, p * P)
        except NoSpaceError:
            refused += 1
        else:
            model[p * P:(p + n) * P] = data
        assert st.mem_used <= LIMIT, "mem_used_total went past mem_limit"
        if kc is not None and r.random() < 0.01:
            kc.drain()                           # results installed: the arena space promised to them
            assert st.mem_used <= LIMIT, "installing queued pages took mem_used_total past mem_limit"
    if kc is not None:
        kc.drain()
    return refused


@pytest.mark.parametrize("staged", [False, True], ids=["inline", "kcompressd"])
def test_random_overwrites_stay_under_the_limit(staged):
    r = random.Random(7)
    st = PageStore(32 << 20, get_codec("lz4"), mem_limit=LIMIT, max_pending=4 << 20, lanes=4)
    kc = InProcessKcompressd(st, lanes=4) if staged else None
    model = bytearray(st.size)
    refused = storm(st, r, model, 6000, kc)
    c = st.counters()
    assert c["mem_used_max"] <= LIMIT and c["mem_used_total"] <= LIMIT
    assert refused > 0, "the storm should reach the limit"
    assert read(st, 0, st.size) == bytes(model)       # refused writes changed nothing
    moved, freed = st.compact()
    c = st.counters()
    assert c["mem_used_total"] <= c["compr_data_size"] + st.arena.segment_bytes
    assert read(st, 0, st.size) == bytes(model)


def test_writes_go_on_once_cleaning_makes_room():
    # A full device whose pages are overwritten in place has dead bytes to clean: the
    # writes keep being admitted (cleaning frees segments), the limit still holds.
    r = random.Random(3)
    st = PageStore(16 << 20, get_codec("lz4"), mem_limit=LIMIT)
    pages = 1200                                 # about 3.5 MiB of blobs, live
    data = half_compressible(r, pages)
    st.write(data, 0)
    model = bytearray(data)
    for _ in range(8):                           # 28 MiB of overwrites in all, in random order
        starts = list(range(0, pages, 4))
        r.shuffle(starts)
        for p in starts:
            new = half_compressible(r, 4)
            st.write(new, p * P)                 # never refused
            model[p * P:(p + 4) * P] = new
    assert st.counters()["mem_used_max"] <= LIMIT
    assert st.pages_compacted > 0 and read(st, 0, pages * P) == bytes(model)


def test_a_lowered_limit_is_reached_by_cleaning():
    r = random.Random(5)
    st = PageStore(16 << 20, get_codec("lz4"))
    st.write(half_compressible(r, 4096), 0)
    for p in range(0, 4096, 5):                  # a fifth dead in every segment: too live to clean in passing
        st.trim(p * P, P)
    live = st.counters()["compr_data_size"]
    assert st.mem_used > live + (1 << 20)
    st.mem_limit = live + (1 << 20)             # under what is held, above what is live
    freed = st.fit_limit()
    assert freed > 0 and st.mem_used <= st.mem_limit


def test_compact_takes_idle_lanes_and_the_head():
    st = PageStore(8 << 20, get_codec("lz4"), max_pending=1 << 20, lanes=4)
    kc = InProcessKcompressd(st, batch_pages=16, lanes=4)
    r = random.Random(9)
    st.stage(half_compressible(r, 64), 0)
    kc.drain()
    st.trim(0, 48 * P)                            # most of each lane segment is dead now
    live = st.counters()["compr_data_size"]
    assert st.mem_used > live + (256 << 10)       # the lanes' dead bytes
    st.compact()
    assert st.mem_used <= live + 2 * P and not st.arena.lanes   # one head segment, packed


def test_ring_memory_counts_under_the_limit():
    # With a limit, a write is queued only if the ring memory it touches fits too.
    st = PageStore(8 << 20, get_codec("lz4"), mem_limit=2 << 20, max_pending=4 << 20, lanes=2)
    r = random.Random(1)
    while st.stage(half_compressible(r, 64), 0) is not None:
        pass
    assert st.refused == "mem_limit" and st.mem_used <= 2 << 20


def test_recompression_at_the_limit_stays_under_it():
    """A device full to its limit with blobs of mixed sizes: recompression makes room for
    each batch (old and new blobs are both held until it is installed), so mem_used_total
    never goes past the limit, and every page still gets recompressed."""
    from uzram.core import postproc
    from uzram.core.codecs import parse_algorithm
    limit = 16 << 20
    st = PageStore(64 << 20, get_codec("lz4"), mem_limit=limit)
    r = random.Random(1)
    pages = []
    try:
        while True:
            k = r.randrange(1200, P)
            page = bytes(r.choice(b"abcdefghijklmnop") for _ in range(k)) + bytes(P - k)
            st.write(page, len(pages) * P)
            pages.append(page)
    except NoSpaceError:
        pass
    out = postproc.recompress(st, [(1, parse_algorithm("zstd"))])
    assert st.mem_used_max <= limit, st.mem_used_max - limit
    assert out["recompressed"] == len(pages) and out["stopped"] is None
    assert all(read(st, i * P, P) == page for i, page in enumerate(pages))
