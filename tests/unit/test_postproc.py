"""Post-processing on the store itself: idle marking by age (the store's clock moved by
hand), writeback to a real backing file, recompression with real codecs, and pages
written while each of them runs (a codec or a file write that writes the page itself)."""

import os
import random

import numpy as np
import pytest
from helpers import PAGE as P
from helpers import read

from uzram.core import postproc
from uzram.core.backing import BackingFile
from uzram.core.codecs import get_codec, parse_algorithm
from uzram.core.constants import BACKED, COMPRESSED, HUGE, IDLE_BIT, INCOMPRESSIBLE, SAME
from uzram.core.errors import ConfigError
from uzram.core.store import PageStore


def text(i):
    return (f"{i} the quick brown fox jumps over the lazy dog " * 100).encode()[:P]


def sixteen_symbols(r):
    """A page lz4 cannot pack below 3/4 (a huge page) and zstd packs to about half:
    random bytes from an alphabet of 16."""
    return bytes(r.choice(b"abcdefghijklmnop") for _ in range(P))


@pytest.fixture
def store(tmp_path):
    st = PageStore(256 * P, get_codec("lz4"), max_pending=64 * P)
    st.backing = BackingFile(str(tmp_path / "backing"), st.size)
    yield st
    st.backing.close()
    st.close()


def idle_pages(st):
    return set(np.flatnonzero(st.atime >= IDLE_BIT).tolist())


@pytest.mark.parametrize("stage", [False, True])
def test_idle_by_age_and_access_clears_it(store, stage):
    st = store
    put = st.stage if stage else st.write           # queued pages are stamped as inline ones
    for p in range(4):
        put(text(p), p * P)
    put(bytes(P), 4 * P)                            # same-filled: never marked
    st.clock.skew += 100
    put(text(9), 5 * P)                             # written "now"
    buf = bytearray(P)
    st.read(buf, 1 * P)                             # read now: fresh
    assert postproc.mark_idle(st, age=50) == 3 and idle_pages(st) == {0, 2, 3}
    assert postproc.mark_idle(st, age=200) == 0     # nothing is that old: marks cleared
    assert postproc.mark_idle(st) == 5 and idle_pages(st) == {0, 1, 2, 3, 5}
    st.read(buf, 2 * P)
    reader = st.reader(lambda b, o: st.read(b, o), type("T", (), {"reads": 0, "bytes_read": 0})())
    reader(None, buf, 3 * P, 0)                     # the lockless read path clears it too
    st.write(text(7), 0)
    assert idle_pages(st) == {1, 5}


def test_writeback_idle_moves_exactly_what_reads_return(store, tmp_path):
    st = store
    r = random.Random(1)
    pages = [text(i) if i % 3 else r.randbytes(P) for i in range(64)]
    st.write(b"".join(pages), 0)
    st.write((7).to_bytes(8, "little") * 512, 64 * P)     # same-filled: never written back
    before = read(st, 0, st.size)
    postproc.mark_idle(st)
    written, stopped = postproc.writeback(st, postproc.WB_MODES["idle"])
    assert (written, stopped) == (64, None)
    assert (st.kind[:64] == BACKED).all() and st.kind[64] == SAME
    c = st.counters()
    assert c["bd_count"] == 64 and c["bd_writes"] == 64 and c["compr_data_size"] == 0 and c["huge_pages"] == 0
    assert read(st, 0, st.size) == before and st.counters()["bd_reads"] == 64
    assert not idle_pages(st)
    held = st.mem_used
    st.compact()
    assert st.mem_used < held and st.mem_used == 0
    # a trim frees blocks and punches them out of the file
    allocated = st.backing.allocated()
    st.trim(0, 32 * P)
    assert st.backing.allocated() <= allocated - 32 * P and st.counters()["bd_count"] == 32
    st.write(text(100), 40 * P)                     # an overwrite frees its block too
    assert st.counters()["bd_count"] == 31 and st.kind[40] == COMPRESSED
    assert read(st, 33 * P, P) == before[33 * P:34 * P]


def test_writeback_by_type_and_index(store):
    st = store
    r = random.Random(2)
    st.write(text(0) + r.randbytes(P) + text(2), 0)         # compressed, huge, compressed
    assert postproc.writeback(st, postproc.WB_MODES["huge"]) == (1, None) and st.kind[1] == BACKED
    assert postproc.writeback(st, 0, 2, 3) == (1, None) and st.kind[2] == BACKED   # page_index=2
    assert st.kind[0] == COMPRESSED


def test_writeback_limit_and_a_full_backing_file(tmp_path):
    st = PageStore(64 * P, get_codec("lz4"))
    st.backing = BackingFile(str(tmp_path / "small"), 8 * P)
    st.write(b"".join(text(i) for i in range(16)), 0)
    assert postproc.writeback(st, 0, 0, 16, limit=3) == (3, "limit")
    assert postproc.writeback(st, 0, 0, 16) == (5, "full")   # 8 blocks in all
    assert (st.kind[:16] == BACKED).sum() == 8
    assert read(st, 0, 16 * P) == b"".join(text(i) for i in range(16))


def test_a_page_written_during_writeback_keeps_its_new_data(store):
    st = store
    st.write(text(1) + text(2), 0)
    real_write = st.backing.write

    def write_then_race(block, page):
        real_write(block, page)
        if page == text(1):
            st.write(text(99), 0)                   # a client overwrites page 0 meanwhile
    st.backing.write = write_then_race
    written, _ = postproc.writeback(st, 0)
    assert written == 1 and st.bd_writes == 2       # both blocks were written, one page moved:
    assert st.kind[0] == COMPRESSED and st.kind[1] == BACKED   # page 0 stayed as it is now
    assert read(st, 0, 2 * P) == text(99) + text(2)
    assert st.counters()["bd_count"] == 1 and st.backing.count == 1


def test_recompress_huge_pages_with_zstd(store):
    st = store
    r = random.Random(3)
    pages = [sixteen_symbols(r) for _ in range(32)] + [text(i) for i in range(32)]
    st.write(b"".join(pages), 0)
    assert st.counters()["huge_pages"] == 32
    before = st.counters()["compr_data_size"]
    out = postproc.recompress(st, [(1, parse_algorithm("zstd"))], postproc.RECOMP_MODES["huge"])
    assert out["tried"] == 32 and out["recompressed"] == 32 and out["saved_bytes"] > 32 * 1024
    c = st.counters()
    assert c["compr_data_size"] == before - out["saved_bytes"] and c["huge_pages"] == 0
    assert c["num_recompressed"] == 32 and c["recompressed_saved_bytes"] == out["saved_bytes"]
    assert (st.flags[:32] & 3 == 1).all() and (st.codec_ids[:32] == 3).all()   # zstd's stored ID
    assert read(st, 0, 64 * P) == b"".join(pages)
    # already at priority 1: not tried again
    assert postproc.recompress(st, [(1, parse_algorithm("zstd"))], 0)["tried"] == 32   # the text pages


def test_random_pages_become_incompressible(store):
    st = store
    r = random.Random(4)
    st.write(r.randbytes(4 * P), 0)
    out = postproc.recompress(st, [(1, parse_algorithm("zstd"))], 0)
    assert out["recompressed"] == 0 and out["incompressible"] == 4
    assert (st.flags[:4] & INCOMPRESSIBLE).all()
    assert postproc.recompress(st, [(1, parse_algorithm("zstd"))], 0)["tried"] == 0
    assert postproc.writeback(st, postproc.WB_MODES["incompressible"]) == (4, None)


def test_auto_skips_pages_the_estimate_says_do_not_pay(store):
    st = store
    r = random.Random(5)
    st.write(r.randbytes(8 * P) + b"".join(sixteen_symbols(r) for _ in range(8)), 0)
    out = postproc.recompress(st, [(1, parse_algorithm("zstd"))], postproc.RECOMP_MODES["auto"])
    assert out["tried"] == 16 and out["recompressed"] == 8 and out["incompressible"] == 0
    assert (st.kind[:8] == HUGE).all() and not (st.flags[:8] & INCOMPRESSIBLE).any()


def test_a_page_written_during_recompression_keeps_its_new_data(store):
    st = store
    r = random.Random(6)
    old = [sixteen_symbols(r) for _ in range(3)]
    st.write(b"".join(old), 0)
    zstd = parse_algorithm("zstd")

    class Racing:
        codec_id = zstd.codec_id
        calls = 0

        def compress(self, page):
            Racing.calls += 1
            if Racing.calls == 2:
                st.write(text(42), 0)           # a client writes page 0 while page 1 compresses
            return zstd.compress(page)

    out = postproc.recompress(st, [(1, Racing())], 0)
    assert out["recompressed"] == 2
    assert read(st, 0, 3 * P) == text(42) + old[1] + old[2]


def test_backing_file_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="backing_dev: .*: Is a directory"):
        BackingFile(str(tmp_path), P)
    with pytest.raises(ConfigError, match="backing_dev: /dev/null: not a regular file or a block device"):
        BackingFile("/dev/null", P)
    BackingFile(str(tmp_path / "f"), 8 * P)
    a = BackingFile(str(tmp_path / "g"), 8 * P)
    with pytest.raises(ConfigError, match="in use by another device"):
        BackingFile(str(tmp_path / "g"), 8 * P)
    a.close()
    (tmp_path / "tiny").write_bytes(b"x" * 100)
    with pytest.raises(ConfigError, match="smaller than one page"):
        BackingFile(str(tmp_path / "tiny"), 8 * P)
    assert os.path.getsize(tmp_path / "f") == 8 * P      # created sparse, as big as asked
