"""zram parity against real nbdkit, real libnbd, real files and (where said) real kcompressd
workers: ``uzram ctl`` attributes in zram's formats and refusals, idle marking by age
(the device clock moved with ``clock=+N``), writeback to a backing file, recompression,
a mem_limit that holds under random overwrites, reset and disksize, ``uzram list``."""

import json
import os
import random
import re
import subprocess
import sys
import threading
import time

import pytest

from uzram.nbd import control
from uzram.tools.storm import mem_limit_storm

P = 4096
UZRAM = [os.path.join(os.path.dirname(sys.executable), "uzram")]
HERE = os.path.dirname(os.path.abspath(__file__))


def ctl(srv, *items, check=True):
    r = subprocess.run(UZRAM + ["ctl", "--runtime-dir", srv.runtime_dir, "dev", *items],
                       capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def get(srv, attr):
    return control.query(srv.runtime_dir, f"get {attr}")["value"]


def put(srv, attr, value):
    return control.query(srv.runtime_dir, f"set {attr} {value}", timeout=None)["done"]


def text_page(i):
    return (f"{i} lorem ipsum dolor sit amet " * 160).encode()[:P]


def sixteen_symbols(r):
    """lz4 stores it raw (huge), zstd packs it to about half."""
    return bytes(r.choice(b"abcdefghijklmnop") for _ in range(P))


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) * 1024


def fields(line):
    return [int(x) for x in line.split()]


def wait_until_no_client(srv):
    for _ in range(100):            # nbdkit closes the socket before the plugin's close
        if srv.stats().connections == 0:
            return
        time.sleep(0.05)
    raise AssertionError("a client is still connected")


def test_attributes_read_as_zram_prints_them(server, nbd):
    srv = server(size="16M")
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    h.pwrite(b"".join(text_page(i) for i in range(8)) + bytes(P), 0)
    s = srv.stats()
    mm = get(srv, "mm_stat")
    assert re.fullmatch(r"( *\d+)( +\d+){8}", mm) and all(len(f) == 8 for f in mm.split(" ") if f) is not None
    assert fields(mm)[:2] == [s.orig_data_size, s.compr_data_size] and fields(mm)[5] == 1
    assert fields(get(srv, "io_stat")) == [0, 0, 0, 0] and fields(get(srv, "bd_stat")) == [0, 0, 0]
    assert get(srv, "debug_stat").split("\n")[0] == "version: 1"
    assert get(srv, "comp_algorithm") == "[lz4] lz4hc zstd deflate"
    assert get(srv, "disksize") == str(16 << 20) and get(srv, "backing_dev") == "none"
    listing = ctl(srv).stdout
    assert re.search(r"^mm_stat +" + re.escape(mm.strip()), listing, re.M)
    assert re.search(r"^writeback +\(write-only", listing, re.M)
    doc = json.loads(ctl(srv, "--json").stdout)
    assert doc["version"] == 1 and doc["attrs"]["mm_stat"] == mm and doc["attrs"]["idle"] is None
    h.shutdown()


@pytest.mark.parametrize("item, message", [
    ("nosuch=1", r"nosuch: no such attribute .*\(ENOENT\)"),
    ("mm_stat=1", r"mm_stat: read-only \(EACCES\)"),
    ("writeback=idle", r"writeback: no backing_dev .*\(ENODEV\)"),
    ("recompress=type=huge", r"recompress: no recomp_algorithm is set .*\(EINVAL\)"),
    ("mem_used_max=5", r"mem_used_max: only 0 may be written .*\(EINVAL\)"),
    ("comp_algorithm=snappy", r"comp_algorithm: unknown codec 'snappy' \(EINVAL\)"),
    ("recomp_algorithm=algo=zstd priority=4", r"recomp_algorithm: priority 4 is outside 1..3 \(EINVAL\)"),
    ("idle=soon", r"idle: 'soon' is not a whole number \(EINVAL\)"),
    ("clock=-5", r"clock: write \+SECONDS"),
])
def test_bad_writes_get_one_line(server, item, message):
    srv = server(size="16M")
    r = ctl(srv, item, check=False)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and re.search(message, r.stderr), r.stderr


def test_reset_is_refused_while_connected_and_done_when_not(server, nbd):
    srv = server(size="16M")
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    h.pwrite(b"".join(text_page(i) for i in range(64)), 0)
    for item in ("reset=1", "disksize=32M", "backing_dev=/tmp/x"):
        r = ctl(srv, item, check=False)
        assert r.returncode == 2 and "1 client connected" in r.stderr and "(EBUSY)" in r.stderr
    assert h.pread(P, 0) == text_page(0)
    h.shutdown()
    wait_until_no_client(srv)
    r = ctl(srv, "disksize=32M", check=False)
    assert r.returncode == 2 and "holds 64 pages (write reset=1 first) (EBUSY)" in r.stderr
    ctl(srv, "reset=1")
    s = srv.stats()
    assert s.pages_stored == 0 and s.mem_used_total == 0 and s.writes == 0 and s.mem_used_max == 0
    ctl(srv, "disksize=32M")
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    assert h.get_size() == 32 << 20 and h.pread(P, 0) == bytes(P)
    h.pwrite(text_page(5), (32 << 20) - P)
    assert h.pread(P, (32 << 20) - P) == text_page(5)
    h.shutdown()


def test_a_client_connecting_during_a_reset_waits_for_it(server, nbd, tmp_path):
    # The reset is held in its flush: the first job goes to a worker that never answers it
    # and keeps its heartbeats (tests/integration/fake_kcompressd.py, mode drop), so the
    # dispatcher sends it again only after its deadline (pool.JOB_DEADLINE, 10 s).  A
    # client that connects meanwhile must get in only once the reset is done.
    wrapper = tmp_path / "fake-drop"
    wrapper.write_text(f"#!/bin/sh\nUZRAM_FAKE_MODE=drop UZRAM_FAKE_BAD=1 exec {sys.executable} "
                       f"{HERE}/fake_kcompressd.py \"$@\"\n")
    wrapper.chmod(0o755)
    srv = server(size="16M", workers=1, python=str(wrapper))
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    h.pwrite(b"".join(text_page(i) for i in range(64)), 0)
    h.shutdown()
    wait_until_no_client(srv)
    assert srv.stats().pending_pages == 64
    started = time.monotonic()
    reset = subprocess.Popen(UZRAM + ["ctl", "--runtime-dir", srv.runtime_dir, "dev", "reset=1"],
                             stderr=subprocess.PIPE, text=True)
    time.sleep(2)                   # the reset has passed its check and waits in its flush
    assert reset.poll() is None, reset.stderr.read()
    connected = threading.Event()
    late = nbd.NBD()
    t = threading.Thread(target=lambda: (late.connect_uri(srv.uri), connected.set()), daemon=True)
    t.start()
    assert not connected.wait(2), "a client got in while the reset was running"
    err = reset.communicate(timeout=60)[1]
    assert reset.returncode == 0, err
    assert connected.wait(30)
    t.join(30)
    assert time.monotonic() - started > 8        # it waited for the resent job
    s = srv.stats()
    assert s.pages_stored == 0 and s.connections == 1
    assert late.pread(64 * P, 0) == bytes(64 * P)
    late.shutdown()


def test_comp_algorithm_changes_at_run_time(server, nbd):
    srv = server(size="16M", workers=1)
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    old = b"".join(text_page(i) for i in range(32))
    h.pwrite(old, 0)
    h.flush()
    ctl(srv, "comp_algorithm=zstd:9")
    assert get(srv, "comp_algorithm") == "lz4 lz4hc [zstd] deflate" and srv.stats().algorithm == "zstd:9"
    new = b"".join(text_page(i) for i in range(100, 132))
    h.pwrite(new, 32 * P)
    h.flush()
    assert h.pread(64 * P, 0) == old + new        # old pages keep lz4, new ones are zstd
    ctl(srv, "mem_limit=4M")
    assert fields(get(srv, "mm_stat"))[3] == 4 << 20
    h.shutdown()


def test_idle_by_age_with_the_device_clock(server, nbd):
    srv = server(size="16M")
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    h.pwrite(b"".join(text_page(i) for i in range(10)), 0)
    ctl(srv, "clock=+120")
    for p in (2, 3):
        h.pread(P, p * P)                           # accessed "now"
    h.pwrite(text_page(50), 4 * P)
    ctl(srv, "idle=60")
    assert srv.stats().idle_pages == 7
    ctl(srv, "idle=600")                            # nothing is that old: marks cleared
    assert srv.stats().idle_pages == 0
    ctl(srv, "idle=all")
    assert srv.stats().idle_pages == 10
    h.pread(P, 0)
    assert srv.stats().idle_pages == 9
    h.shutdown()


@pytest.mark.parametrize("workers", [0, 1], ids=["inline", "kcompressd"])
def test_writeback_idle_then_verified_reads(server, nbd, tools, tmp_path, workers):
    backing = tmp_path / "backing.img"
    srv = server(size="48M", workers=workers, backing_dev=str(backing))
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    r = random.Random(1)
    chunk = 256
    for c in range(0, 8192, chunk):                 # 32 MiB, about half of it compressible
        h.pwrite(b"".join(r.randbytes(2048) + bytes(2048) for _ in range(chunk)), c * P)
    h.flush()
    out1 = tmp_path / "before.img"
    subprocess.run(["nbdcopy", srv.uri, str(out1)], check=True, timeout=120)
    s0 = srv.stats()
    rss0 = rss(srv.pid)
    ctl(srv, "idle=all")
    done = ctl(srv, "writeback=idle").stdout
    assert done.startswith("writeback: 8192 pages written back")
    s1 = srv.stats()
    assert s1.bd_count == 8192 and s1.bd_writes == 8192 and s1.compr_data_size == 0
    assert fields(get(srv, "bd_stat")) == [8192, 0, 8192]
    rss1 = rss(srv.pid)
    # what was written back was about compr_data_size of blobs; the process gives most of it back
    assert rss0 - rss1 > 0.7 * s0.compr_data_size, (rss0, rss1, s0.compr_data_size)
    out2 = tmp_path / "after.img"
    subprocess.run(["nbdcopy", srv.uri, str(out2)], check=True, timeout=120)
    assert out1.read_bytes() == out2.read_bytes()
    assert srv.stats().bd_reads >= 8192
    # trim punches the freed blocks out of the backing file
    allocated = os.stat(backing).st_blocks * 512
    h.trim(16 << 20, 0)
    assert os.stat(backing).st_blocks * 512 <= allocated - (15 << 20)
    assert srv.stats().bd_count == 4096
    assert h.pread(P, 5000 * P)[2048:] == bytes(2048)
    h.shutdown()


def test_writeback_limit(server, nbd, tmp_path):
    srv = server(size="16M", backing_dev=str(tmp_path / "b"))
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    h.pwrite(b"".join(text_page(i) for i in range(20)), 0)
    ctl(srv, "writeback_limit_enable=1", "writeback_limit=5", "idle=all")
    r = ctl(srv, "writeback=idle", check=False)
    assert r.returncode == 2 and "writeback_limit reached: 5 pages written back" in r.stderr and "(EIO)" in r.stderr
    assert get(srv, "writeback_limit") == "0" and srv.stats().bd_count == 5
    ctl(srv, "writeback_limit=1", "writeback=page_index=19")
    assert "writeback_limit is 0" in ctl(srv, "writeback=page_index=18", check=False).stderr
    ctl(srv, "writeback_limit_enable=0", "writeback=page_indexes=10-12")
    assert srv.stats().bd_count == 9
    assert h.pread(20 * P, 0) == b"".join(text_page(i) for i in range(20))
    h.shutdown()


@pytest.mark.parametrize("workers", [0, 1], ids=["inline", "kcompressd"])
def test_recompress_huge_pages_with_zstd(server, nbd, workers):
    srv = server(size="16M", workers=workers, recomp_algorithm="zstd")
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    r = random.Random(2)
    data = b"".join(sixteen_symbols(r) if i % 2 else text_page(i) for i in range(512))
    h.pwrite(data, 0)
    h.flush()
    before = srv.stats()
    assert before.huge_pages == 256
    done = ctl(srv, "recompress=type=huge").stdout
    after = srv.stats()
    saved = before.compr_data_size - after.compr_data_size
    assert saved > 256 * 1500 and after.huge_pages == 0 and after.num_recompressed == 256
    assert f"256 of 256 pages recompressed, {saved} bytes saved" in done
    assert after.recompressed_saved_bytes == saved
    if workers:
        assert after.recompress_jobs_sent >= 1 and after.bad_results == 0
    assert h.pread(len(data), 0) == data
    assert get(srv, "recomp_algorithm") == "#1: lz4 lz4hc [zstd] deflate"
    h.shutdown()


def test_pages_written_during_recompression_keep_their_new_data(server, nbd):
    srv = server(size="16M", workers=1, recomp_algorithm="zstd:19")
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    r = random.Random(3)
    model = bytearray(b"".join(sixteen_symbols(r) for _ in range(1024)))
    h.pwrite(bytes(model), 0)
    h.flush()
    stop = threading.Event()

    def writer():
        w = nbd.NBD()
        w.connect_uri(srv.uri)
        rw = random.Random(4)
        while not stop.is_set():
            p = rw.randrange(1024)
            page = text_page(rw.randrange(10 ** 6))
            w.pwrite(page, p * P)
            model[p * P:(p + 1) * P] = page
        w.shutdown()

    t = threading.Thread(target=writer)
    t.start()
    try:
        ctl(srv, "recompress=")                  # every page (no type=)
    finally:
        stop.set()
        t.join(60)
    assert srv.stats().num_recompressed > 0
    assert h.pread(len(model), 0) == bytes(model)
    h.shutdown()


@pytest.mark.parametrize("clients", [1, 4])
def test_mem_limit_holds_under_random_overwrites(server, nbd, clients):
    limit = 8 << 20
    srv = server(size="32M", workers=1, mem_limit="8M", max_pending="2M")
    model, _, refused = mem_limit_storm(srv.uri, 32 << 20, clients, 1500)
    s = srv.stats()
    assert refused > 0, "the storm should reach the limit"
    assert s.mem_used_max <= limit and s.mem_used_total <= limit, (s.mem_used_max, s.mem_used_total)
    ctl(srv, "compact=1")
    s = srv.stats()
    assert s.mem_used_total <= s.compr_data_size + (1 << 20)
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    assert h.pread(32 << 20, 0) == bytes(model)      # what was refused changed nothing
    h.shutdown()


def test_uzram_list(server, tmp_path):
    run_dir = tmp_path / "run"                      # as uzram serve --config --runtime-dir makes them
    a = server(size="16M", name="lista", runtime_dir=str(run_dir / "lista"))
    b = server(size="32M", name="listb", algorithm="zstd", workers=2, runtime_dir=str(run_dir / "listb"))

    def run(*args):
        r = subprocess.run(UZRAM + ["list", "--runtime-dir", a.runtime_dir, "--runtime-dir", b.runtime_dir, *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()

    lines = run()
    assert lines[0].split() == ["NAME", "DISKSIZE", "DATA", "COMPR", "TOTAL", "ALGORITHM", "STREAMS", "ZERO-PAGES",
                                "MOUNTPOINT"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["lista"][1:3] == ["16M", "0B"] and rows["lista"][5:7] == ["lz4", "1"]
    assert rows["listb"][1] == "32M" and rows["listb"][5:7] == ["zstd", "2"]
    raw = run("--raw", "--noheadings", "--bytes", "--output", "name,disksize")
    assert "lista 16777216" in raw and "listb 33554432" in raw and len(raw) >= 2
    doc = json.loads("\n".join(run("--json", "-o", "NAME,MEM-LIMIT")))
    names = {d["name"] for d in doc["zramdevices"]}
    assert doc["version"] == 1 and {"lista", "listb"} <= names
    # a directory of runtime directories lists its devices
    r = subprocess.run(UZRAM + ["list", "--runtime-dir", str(run_dir), "-rn", "-o", "name"],
                       capture_output=True, text=True, timeout=60)
    assert {"lista", "listb"} <= set(r.stdout.split()), r.stdout + r.stderr
    r = subprocess.run(UZRAM + ["list", "-o", "BOGUS"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown column 'BOGUS'" in r.stderr
