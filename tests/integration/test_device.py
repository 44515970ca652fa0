"""The device end to end: real nbdkit running the plugin, real libnbd clients, and
external tools (nbdcopy, nbdinfo)."""

import errno
import json
import os
import random
import subprocess
import time

import pytest

from helpers import page
from uzram.nbd.control import query
from uzram.nbd.server import PLUGIN, clean_env, nbdkit_argv

MiB = 1 << 20


def stats(h):
    return query(h.runtime_dir, "stats")


@pytest.mark.parametrize("algorithm", ["lz4", "zstd", "lz4hc", "deflate"])
def test_unaligned_random_writes_read_back_exactly(connect, algorithm):
    size = 8 * MiB + 123
    h = connect(size=size, algorithm=algorithm)
    rng = random.Random(42)
    model = bytearray(size)
    for i in range(300):
        off = rng.randrange(size)
        n = rng.randrange(1, min(size - off, 70000) + 1)
        kind = rng.choice(["zero", "same", "text", "random"])
        data = (page(i, kind) * (n // 4096 + 2))[:n]
        h.pwrite(data, off)
        model[off:off + n] = data
        if i % 25 == 0:
            off = rng.randrange(size)
            n = rng.randrange(1, min(size - off, 50000) + 1)
            assert h.pread(n, off) == model[off:off + n]
    for off in range(0, size, 1 << 20):
        n = min(1 << 20, size - off)
        assert h.pread(n, off) == model[off:off + n]
    assert h.get_size() == size


def test_read_after_write_across_two_connections(server, nbd):
    srv = server(size="16M")
    a, b = nbd.NBD(), nbd.NBD()
    a.connect_uri(srv.uri)
    b.connect_uri(srv.uri)
    try:
        assert a.can_multi_conn() and b.can_multi_conn()
        for i in range(50):
            data = page(i, ["text", "random", "same"][i % 3]) * 3
            off = (i * 7919 * 512) % (16 * MiB - len(data))
            a.pwrite(data, off)
            assert b.pread(len(data), off) == data
            b.pwrite(data[::-1], off)
            assert a.pread(len(data), off) == data[::-1]
    finally:
        a.shutdown()
        b.shutdown()


def test_each_connection_keeps_one_thread_state_until_it_closes(server, nbd):
    # uzram.nbd.threadstate: pinned in open, given back in close, on the connection's thread
    srv = server(size="8M")
    data = page(1, "text")
    for round_ in range(3):
        handles = [nbd.NBD() for _ in range(4)]
        for i, h in enumerate(handles):
            h.connect_uri(srv.uri)
            h.pwrite(data, (round_ * 4 + i) * 4096)
        assert stats(srv)["connections"] == 4 and stats(srv)["thread_states"] == 4
        for i, h in enumerate(handles):
            assert h.pread(4096, (round_ * 4 + i) * 4096) == data
            h.shutdown()
        for _ in range(100):
            if stats(srv)["connections"] == 0:
                break
            time.sleep(0.05)
        assert stats(srv)["connections"] == 0 and stats(srv)["thread_states"] == 0
    assert stats(srv)["reads"] == 12 and stats(srv)["writes"] == 12


@pytest.mark.parametrize("workers", [0, 1])
def test_many_requests_in_flight_on_one_connection(server, nbd, in_threads, workers):
    # six client threads share one connection, so requests are in flight together; nbdkit
    # (SERIALIZE_REQUESTS, whatever --threads says) serves them in turn on the connection's
    # thread, and every read sees the client's last write
    srv = server(size="8M", threads=8, workers=workers)
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    errors = []

    def client(c):
        r = random.Random(c)
        mine = list(range(c * 64, c * 64 + 64))
        model = {}
        for i in range(300):
            p = r.choice(mine)
            op = r.random()
            if op < 0.6:
                d = page(c * 1000 + i, r.choice(["zero", "same", "text", "random"]))
                h.pwrite(d, p * 4096)
                model[p] = d
            elif op < 0.8:
                (h.trim if op < 0.7 else h.zero)(4096, p * 4096)
                model[p] = bytes(4096)
            q = r.choice(mine)
            if h.pread(4096, q * 4096) != model.get(q, bytes(4096)):
                errors.append(f"client {c} op {i}: page {q} differs")
                return

    try:
        in_threads(client, 6)
        assert not errors, errors
        assert stats(srv)["connections"] == 1
    finally:
        h.shutdown()


def test_never_written_reads_zero_and_trim_frees(connect):
    h = connect(size="4M")
    assert h.pread(1 << 20, 0) == bytes(1 << 20)
    data = page(1, "text") * 16
    h.pwrite(data, 0)
    assert stats(h)["pages_stored"] == 16
    h.trim(8 * 4096, 0)
    s = stats(h)
    assert s["pages_stored"] == 8 and s["notify_free"] == 8
    assert h.pread(len(data), 0) == bytes(8 * 4096) + data[8 * 4096:]
    # trim is advisory: the partial pages at its edges keep their data
    h.trim(4096 * 9 + 100, 4096 * 2 + 200)              # (count, offset): pages 3..10
    assert h.pread(len(data), 0) == bytes(11 * 4096) + data[11 * 4096:]


@pytest.mark.parametrize("workers", [0, 1])
def test_an_idle_device_cleans_its_dead_bytes_by_itself(connect, workers):
    """A sixth of what is held dies: too little for the requests to clean in passing (a
    quarter), enough for the cleaner once writes and trims pause (5%): no compact command
    needed.  (That the trims themselves cleaned nothing is the unit tests' to check: here
    the cleaner may start between two trims on a busy machine.)"""
    h = connect(size="64M", algorithm="lz4", workers=workers)
    rng = random.Random(7)
    pages = [rng.randbytes(2000) + bytes(2096) for _ in range(12000)]     # about 2 KiB each, compressed
    for first in range(0, 12000, 500):
        h.pwrite(b"".join(pages[first:first + 500]), first * 4096)
    h.flush()
    for p in range(3000):
        if p % 3:
            h.trim(4096, p * 4096)
    s = stats(h)
    deadline = time.monotonic() + 10
    # (a pass cut short by a request leaves what is under the idle mark, 2 MiB here)
    while s["pages_compacted"] == 0 or s["arena_dead_bytes"] >= max(2 * MiB, 0.05 * s["mem_used_total"]):
        assert time.monotonic() < deadline, s
        time.sleep(0.1)
        s = stats(h)
    for p in range(0, 12000, 7):
        assert h.pread(4096, p * 4096) == (bytes(4096) if p < 3000 and p % 3 else pages[p])


def test_write_zeroes(connect, nbd):
    h = connect(size="4M")
    data = page(2, "random") * 8
    h.pwrite(data, 0)
    h.zero(4096 * 2, 4096 * 2)                     # whole pages -> zero same-filled pages
    h.zero(4096 * 5 + 7, 100)                       # (count, offset): partial edges rewritten
    expect = bytearray(data)
    expect[4096 * 2:4096 * 4] = bytes(8192)
    expect[100:100 + 4096 * 5 + 7] = bytes(4096 * 5 + 7)
    assert h.pread(len(data), 0) == expect
    h.zero(4096 * 8, 0, nbd.CMD_FLAG_FAST_ZERO)
    assert h.pread(len(data), 0) == bytes(len(data))
    assert stats(h)["pages_stored"] == 0


def test_extents_report_holes_zeros_and_data(connect, nbd):
    h = connect(size="1M")
    h.pwrite(page(0, "text"), 0)              # page 0: data
    h.pwrite(bytes(4096), 4096)                     # page 1: zero page (allocated)
    h.pwrite(page(0, "same"), 8192)           # page 2: same-filled (data)
    seen = []

    def cb(metacontext, offset, entries, err):
        seen.extend(zip(entries[0::2], entries[1::2]))

    h.block_status(1 << 20, 0, cb)
    assert seen[0] == (4096, 0)
    assert seen[1] == (4096, nbd.STATE_ZERO)
    assert seen[2] == (4096, 0)
    assert seen[3] == ((1 << 20) - 3 * 4096, nbd.STATE_HOLE | nbd.STATE_ZERO)


def test_same_and_huge_page_counts_are_exact(connect):
    h = connect(size="8M", algorithm="zstd")
    kinds = ["zero"] * 10 + ["same"] * 20 + ["text"] * 30 + ["random"] * 40
    h.pwrite(b"".join(page(i, k) for i, k in enumerate(kinds)), 0)
    s = stats(h)
    assert s["same_pages"] == 30
    assert s["huge_pages"] == 40 and s["huge_pages_since"] == 40
    assert s["compressed_pages"] == 30
    assert s["pages_stored"] == 100 and s["orig_data_size"] == 100 * 4096
    assert 40 * 4096 < s["compr_data_size"] < 40 * 4096 + 30 * 1024
    # overwrite the random pages with text: huge_pages falls, huge_pages_since does not
    h.pwrite(b"".join(page(i, "text") for i in range(40)), 60 * 4096)
    s = stats(h)
    assert s["huge_pages"] == 0 and s["huge_pages_since"] == 40 and s["compressed_pages"] == 70


def test_mem_limit_gives_enospc_and_keeps_old_data(connect, nbd):
    h = connect(size="16M", mem_limit="1M", algorithm="lz4")
    old = b"".join(page(i, "random") for i in range(200))  # 800 KiB of huge pages
    h.pwrite(old, 0)
    new = b"".join(page(1000 + i, "random") for i in range(100))
    with pytest.raises(nbd.Error) as e:
        h.pwrite(new, 250 * 4096)                   # would need 400 KiB more
    assert e.value.errno in ("ENOSPC", errno.ENOSPC)
    with pytest.raises(nbd.Error) as e:             # overlaps 50 stored pages, adds 50 more
        h.pwrite(new + new, 150 * 4096)
    assert e.value.errno in ("ENOSPC", errno.ENOSPC)
    assert h.pread(len(old), 0) == old              # every page kept its old contents
    assert h.pread(100 * 4096, 250 * 4096) == bytes(100 * 4096)
    s = stats(h)
    assert s["failed_writes"] == 2 and s["mem_used_total"] <= 1 << 20
    h.pwrite(bytes(len(new)), 250 * 4096)           # same-filled pages need no memory
    h.pwrite(new[:4096 * 10], 0)                    # overwriting in place fits
    assert h.pread(4096 * 10, 0) == new[:4096 * 10]


def test_the_last_page_of_a_size_that_is_not_whole_pages(connect, nbd):
    """nbdkit checks every request against the size the plugin reports; what uzram must get
    right is its last page, of which only 100 bytes are the device's: written, read, mapped,
    zeroed and trimmed up to the last byte, which the page table counts as a whole page."""
    size = (1 << 20) + 100
    h = connect(size=size)
    assert h.get_size() == size
    model = bytearray(size)

    def write(data, offset):
        h.pwrite(data, offset)
        model[offset:offset + len(data)] = data

    def states(offset, count):
        seen = []
        h.block_status(count, offset, lambda ctx, off, entries, err: seen.extend(zip(entries[0::2], entries[1::2])))
        return seen

    write(page(1, "random"), size - 4096 - 100)     # the last whole page
    write(page(2, "text")[:100], 1 << 20)           # the tail page, all of it
    assert h.pread(4196, size - 4196) == model[-4196:]
    assert stats(h)["pages_stored"] == 2
    write(page(3, "text")[:4000], size - 4000)      # unaligned, across both, to the last byte
    assert h.pread(4196, size - 4196) == model[-4196:]
    assert states(1 << 20, 100) == [(100, 0)]
    h.zero(100, 1 << 20, nbd.CMD_FLAG_NO_HOLE)      # the tail page becomes a zero page
    model[1 << 20:] = bytes(100)
    assert h.pread(4196, size - 4196) == model[-4196:]
    assert states(1 << 20, 100) == [(100, nbd.STATE_ZERO)]
    write(page(4, "text")[:100], 1 << 20)
    h.trim(100, 1 << 20)                            # ends at the device's end: a whole page, freed
    model[1 << 20:] = bytes(100)
    assert h.pread(4196, size - 4196) == model[-4196:]
    assert states(1 << 20, 100) == [(100, nbd.STATE_HOLE | nbd.STATE_ZERO)]
    assert states(size - 4196, 4196)[0] == (4096, 0)    # the page before it kept its data
    assert stats(h)["pages_stored"] == 1


@pytest.mark.parametrize("args, message", [
    (["size=1M", "colour=blue"], "unknown key 'colour'"),
    (["size=1M", "algorithm=snappy"], "unknown codec 'snappy'"),
    (["size=lots"], "size: 'lots' is not a size"),
    (["size=1M", "algorithm=zstd", "level=99"], "outside -7..22"),
    (["size=1M", "workers=-1"], "workers: -1 is below the minimum 0"),
    (["algorithm=lz4"], "size: required"),
    (["size=1M", "mem_limit=1Q"], "mem_limit: '1Q' is not a size"),
])
def test_bad_configuration_stops_nbdkit_with_one_line(tmp_path, args, message):
    argv = nbdkit_argv({}, single=False, foreground=True)[:-0 or None]
    argv = argv + args + [f"runtime_dir={tmp_path}/rt"]
    r = subprocess.run(argv, env=clean_env(), capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_dump_plugin_documents_every_key():
    from uzram.core.config import PLUGIN_KEYS
    r = subprocess.run(["nbdkit", "python", PLUGIN, "--dump-plugin"], env=clean_env(),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    for key in PLUGIN_KEYS:
        assert f"{key}=" in r.stdout


def test_nbdcopy_in_and_out_and_nbdinfo(server, tmp_path, tools):
    srv = server(size="32M", algorithm="zstd")
    src = tmp_path / "in.img"
    with open(src, "wb") as f:
        for i in range(6000):
            f.write(page(i, ["zero", "same", "text", "random"][i % 4]))
    env = clean_env()
    subprocess.run(["nbdcopy", str(src), srv.uri], check=True, env=env, timeout=120)
    out = tmp_path / "out.img"
    subprocess.run(["nbdcopy", srv.uri, str(out)], check=True, env=env, timeout=120)
    data = out.read_bytes()
    assert len(data) == 32 * MiB
    assert data[:src.stat().st_size] == src.read_bytes()
    assert data[src.stat().st_size:] == bytes(len(data) - src.stat().st_size)
    info = json.loads(subprocess.run(["nbdinfo", "--json", srv.uri], check=True, env=env,
                                     capture_output=True, text=True, timeout=30).stdout)
    export = info["exports"][0]
    assert export["export-size"] == 32 * MiB
    assert export["can_multi_conn"] and export["can_fua"] and export["can_trim"] and export["can_fast_zero"]
    assert export["block_size_preferred"] == 4096
    mapping = subprocess.run(["nbdinfo", "--map", srv.uri], check=True, env=env, capture_output=True,
                             text=True, timeout=30).stdout
    assert "hole,zero" in mapping and "data" in mapping
    s = srv.stats()
    # nbdcopy copies sparsely: zero pages arrive as holes, not writes
    assert s.same_pages == 1500 and s.huge_pages == 1500 and s.compressed_pages == 1500


def test_stats_cli(server):
    import sys
    srv = server(size="8M")
    r = subprocess.run([sys.executable, "-m", "uzram", "stats", "--runtime-dir", srv.runtime_dir, "--json"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["disksize"] == 8 * MiB
    r = subprocess.run([sys.executable, "-m", "uzram", "stats", "--runtime-dir", srv.runtime_dir, "--zram"],
                       capture_output=True, text=True, timeout=30)
    assert r.stdout.splitlines()[0] == "mm_stat: 0 0 0 0 0 0 0 0 0"
    assert oct(os.stat(srv.runtime_dir).st_mode & 0o777) == "0o700"
    assert oct(os.stat(os.path.join(srv.runtime_dir, "control.sock")).st_mode & 0o777) == "0o600"
