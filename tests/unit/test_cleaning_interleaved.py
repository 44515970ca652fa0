"""The store's idle cleaning passes (PageStore.clean_idle_step: victims and their pages
found once, then a few segments a step) interleaved at random with everything else that
changes the arena between two steps: writes (inline, and staged through the in-process
kcompressd with lanes and out-of-order installs), trims, zeroes, pages of the pass's victims
killed so that a victim dies whole, is freed and taken again as the head or a lane, compact,
clear, mem_limit changes, a held maintenance count.  After every operation the counters and
the arena's invariants are checked, and reads against a model.  (From a hostile review's
stress script.)"""

import functools
import random

import numpy as np
import pytest
from helpers import PAGE as P
from helpers import InProcessKcompressd, read
from test_store import check_counters

from uzram.core import arena as arena_module
from uzram.core import store as store_module
from uzram.core.arena import FREE, OPEN, SEALED
from uzram.core.codecs import get_codec
from uzram.core.constants import COMPRESSED, HUGE
from uzram.core.errors import NoSpaceError
from uzram.core.shm import round_up


def arena_invariants(st):
    a = st.arena
    blob = (st.kind == COMPRESSED) | (st.kind == HUGE)
    bp = np.flatnonzero(blob)
    segs = (st.meta[bp] // a.segment_bytes).astype(np.int64)
    # no live page points into a free segment, nor past its segment's fill
    assert (a.state[segs] != FREE).all(), "a live page points into a FREE segment"
    ends = st.meta[bp].astype(np.int64) + st.clen[bp].astype(np.int64) - segs * a.segment_bytes
    assert (ends <= a.fill[segs]).all(), "a live blob lies past its segment's fill"
    # a sealed segment without live bytes was freed
    assert not ((a.state == SEALED) & (a.live == 0)).any(), "a sealed empty segment kept"
    assert a.used_bytes == int(a.live.sum())
    held = sum(round_up(int(a.fill[s])) for s in np.flatnonzero(a.state != FREE).tolist())
    assert a.held_bytes == held, (a.held_bytes, held)
    assert set(a._free) == set(np.flatnonzero(a.state == FREE).tolist())
    assert len(a._free) == len(set(a._free))
    lanes = a.lane_segments()
    for s in lanes:
        assert a.state[s] == OPEN
    if a.head >= 0:
        assert a.state[a.head] == OPEN and a.head not in lanes
    if st._idle_pass is not None:
        victims = st._idle_pass.victims
        assert len(set(victims)) == len(victims)


def gen_page(rng, i):
    k = rng.random()
    if k < 0.55:                                   # about 2 KiB compressed
        return rng.randbytes(rng.randrange(800, 3000)).ljust(P, b"\0")
    if k < 0.7:
        return rng.randbytes(P)                    # huge
    if k < 0.8:
        return bytes(P)
    if k < 0.9:
        return (rng.getrandbits(64) | 1).to_bytes(8, "little") * (P // 8)
    return (f"{i} lorem ipsum dolor sit amet {rng.random()} " * 100).encode()[:P]


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("mode", ["plain", "stage", "memlimit", "memstage", "lock"])
def test_idle_passes_interleaved_with_everything_else(monkeypatch, mode, seed, ops=1500):
    rng = random.Random(seed)
    npages = 3000
    # 64 KiB segments and a low CLEAN_MIN, so that passes start often on a small store
    monkeypatch.setattr(store_module, "Arena", functools.partial(arena_module.Arena, segment_bytes=64 << 10))
    monkeypatch.setattr(store_module, "CLEAN_MIN", 64 << 10)
    size = npages * P
    stage = mode in ("stage", "lock", "memstage")
    lock = mode == "lock"
    st = store_module.PageStore(size, get_codec("lz4"), max_pending=512 * P if stage else 0,
                                lanes=16 if stage else 0, lock=lock)
    kc = InProcessKcompressd(st, batch_pages=16) if stage else None
    model = bytearray(size)
    out = []
    going = False

    def do_write(off, d):
        try:
            if not stage or rng.random() < 0.3 or st.stage(d, off) is None:
                st.write(d, off)
        except NoSpaceError:
                    return
        model[off:off + len(d)] = d

    def pump(all_=False):
        nonlocal out
        if not stage:
            return
        if all_:
            for job in out:
                kc.compress_job(job)
                kc.install(job)
            out = []
            kc.drain()
            return
        if rng.random() < 0.5 and len(out) < 8 and (job := kc.send(compress=rng.random() < 0.5)) is not None:
            out.append(job)
        if out and rng.random() < 0.4:
            job = out.pop(rng.randrange(len(out)))
            kc.compress_job(job)
            kc.install(job)

    def pass_pages():
        if st._idle_pass is None:
            return []
        return st._idle_pass.pages.tolist()

    for i in range(ops):
        op = rng.random()
        what = None
        if op < 0.25:
            what = "write"
            first = rng.randrange(npages)
            n = rng.randrange(1, min(64, npages - first) + 1)
            d = b"".join(gen_page(rng, i * 100 + j) for j in range(n))
            if rng.random() < 0.15:                # unaligned
                off = first * P + rng.randrange(P)
                d = d[:max(1, min(len(d), size - off) - rng.randrange(P))]
                do_write(off, d)
            else:
                do_write(first * P, d)
        elif op < 0.33:
            what = "trim"
            first = rng.randrange(npages)
            n = rng.randrange(1, min(200, npages - first) + 1)
            st.trim(first * P, n * P)
            model[first * P:(first + n) * P] = bytes(n * P)
        elif op < 0.36:
            what = "zero"
            off = rng.randrange(size)
            n = rng.randrange(1, min(size - off, 100000) + 1)
            if mode in ("memlimit", "memstage"):      # (an edge's rewrite may fail there: whole pages only)
                off, n = off // P * P, max(P, n // P * P)
                n = min(n, size - off)
            st.zero(off, n, may_trim=rng.random() < 0.5)
            model[off:off + n] = bytes(n)
        elif op < 0.46:
            # kill the pass's victims between its steps: overwrite or trim every page of
            # one or more victims not yet done, then roll the head so it takes them again
            what = "kill"
            if st._idle_pass is not None and st._idle_pass.victims:
                victims = st._idle_pass.victims
                a = st.arena
                for v in rng.sample(victims, min(len(victims), rng.randrange(1, 4))):
                    blob = (st.kind == COMPRESSED) | (st.kind == HUGE)
                    pages = np.flatnonzero(blob & (st.meta // np.uint64(a.segment_bytes) == v)).tolist()
                    for p in pages:
                        if rng.random() < 0.5:
                            st.trim(p * P, P)
                            model[p * P:(p + 1) * P] = bytes(P)
                        else:
                            do_write(p * P, gen_page(rng, p))
                # fill the head (or lanes) so a freed victim is taken again
                for _ in range(rng.randrange(0, 40)):
                    p = rng.randrange(npages)
                    do_write(p * P, rng.randbytes(P) if rng.random() < .5 else gen_page(rng, p))
                    pump()
        elif op < 0.49:
            what = "overwrite-candidates"
            pp = pass_pages()
            if pp:
                for p in rng.sample(pp, min(len(pp), 20)):
                    do_write(p * P, gen_page(rng, p))
        elif op < 0.75:
            what = "clean"
            if not going and rng.random() < 0.7:
                what = "clean-skipped"      # let dead bytes pile up before a pass starts
            else:
                if going and rng.random() < 0.05:
                    going = False               # a pass cut short: the next starts afresh
                r = st.clean_idle_step(going)
                going = r
        elif op < 0.76:
            what = "compact"
            st.compact()
        elif op < 0.7615:
            what = "clear"
            pump(all_=True)
            st.clear()
            model[:] = bytes(size)
            assert st._idle_pass is None
        elif op < 0.78 and mode in ("memlimit", "memstage"):
            what = "mem_limit"
            used = st.mem_used
            st.mem_limit = 0 if rng.random() < 0.1 else max(1 << 20, int(used * rng.uniform(0.9, 1.3)))
            st.fit_limit()
        elif op < 0.79:
            what = "maintenance"
            st.maintenance += 1
            assert not st.clean_idle_step(going)
            st.maintenance -= 1
        elif op < 0.9:
            what = "read"
            off = rng.randrange(size)
            n = rng.randrange(1, min(size - off, 200000) + 1)
            assert read(st, off, n) == model[off:off + n], (mode, seed, i, "read", off, n)
        else:
            what = "pump"
        pump()
        if what == "clean" or rng.random() < 0.02:
            # every page the pass knows about reads back right after a step
            pp = pass_pages()
            for p in rng.sample(pp, min(len(pp), 50)) if pp else []:
                assert read(st, p * P, P) == model[p * P:(p + 1) * P], (mode, seed, i, "cand", p)
        check_counters(st)
        arena_invariants(st)
    pump(all_=True)
    assert read(st, 0, size) == model, (mode, seed, "final")
    check_counters(st)
    arena_invariants(st)
    st.close()
