"""Events reach nbdkit's log (its stderr) once each, rate-limited: worker deaths and
respawns, writestall onsets, ENOSPC, the reasons of FAILED answers.  Real nbdkit, real
workers, a real fake worker for FAILED."""

import os
import random
import signal
import sys

import pytest

from helpers import wait_for
from uzram.nbd.control import query

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def logged(uzram_device_factory, tmp_path):
    """logged(**keys) -> (device, lines()): a device whose nbdkit stderr goes to a file."""
    files = []

    def make(**keys):
        path = tmp_path / f"nbdkit{len(files)}.log"
        f = open(path, "w+b")
        files.append(f)
        dev = uzram_device_factory(stderr=f, **keys)

        def lines(kind=""):
            text = path.read_text(errors="replace")
            return [ln for ln in text.splitlines() if ln.startswith("nbdkit: uzram[") and kind in ln]
        return dev, lines
    yield make
    for f in files:   # nbdkit has its own descriptor of the file
        f.close()


def connect(nbd, dev):
    h = nbd.NBD()
    h.connect_uri(dev.uri)
    return h


def test_worker_deaths_and_respawns_logged_once_each(logged):
    dev, lines = logged(size="8M", workers=1, name="logs0")
    rt = dev.runtime_dir
    for k in range(3):
        wait_for(lambda: query(rt, "stats")["workers_alive"] == 1 and query(rt, "workers")["pids"], what="a worker")
        os.kill(query(rt, "workers")["pids"][0], signal.SIGKILL)
        wait_for(lambda: query(rt, "stats")["worker_restarts"] > k, what="the respawn")
    died, respawned = lines("exited"), lines("respawned")
    assert len(died) == 1 and len(respawned) == 1, lines()
    assert died[0].startswith("nbdkit: uzram[logs0]: warning: kcompressd/0 (pid ")
    assert respawned[0] == "nbdkit: uzram[logs0]: info: kcompressd: 1 worker(s) respawned (1 restarts since start)"
    dev.stop()   # at shutdown the log says how many were held back
    held = lines("like this in the last")
    assert any("exited" in ln and "(2 like this" in ln for ln in held), lines()
    assert any("respawned" in ln and "(2 like this" in ln for ln in held), lines()


def test_enospc_logged_once_however_many_writes_fail(logged, nbd):
    dev, lines = logged(size="16M", mem_limit="256K", name="full")
    h = connect(nbd, dev)
    for i in range(20):
        with pytest.raises(nbd.Error, match="No space left"):
            h.pwrite(os.urandom(1 << 20), (i % 8) << 20)
    h.shutdown()
    assert dev.stats()["failed_writes"] == 20
    [line] = lines("ENOSPC")
    assert line == ("nbdkit: uzram[full]: error: a write was refused with ENOSPC: mem_limit 262144 bytes reached "
                    "(it keeps serving; trim, or raise mem_limit)")


def test_writestall_onset_logged(logged, nbd):
    dev, lines = logged(size="32M", workers=1, max_pending="1M", batch_pages=16, name="stall")
    rt = dev.runtime_dir
    wait_for(lambda: query(rt, "workers")["pids"], what="a worker")
    [pid] = query(rt, "workers")["pids"]
    h = connect(nbd, dev)
    os.kill(pid, signal.SIGSTOP)
    try:
        r = random.Random(1)
        for off in range(0, 8 << 20, 256 << 10):
            h.pwrite(r.randbytes(256 << 10), off)
    finally:
        os.kill(pid, signal.SIGCONT)
    h.flush()
    h.shutdown()
    assert dev.stats()["writestall"] > 1
    [line] = lines("writestall")
    assert line == ("nbdkit: uzram[stall]: warning: writestall: the pending area is full "
                    "(max_pending 1048576 bytes); writers compress inline")


def test_a_write_too_big_for_the_ring_is_no_writestall(logged, nbd):
    # Of a write, aligned or not, a quarter of max_pending is queued and the writer
    # compresses the rest: no writestall, nothing to log.
    dev, lines = logged(size="16M", workers=1, max_pending="1M", name="big")
    wait_for(lambda: query(dev.runtime_dir, "workers")["pids"], what="a worker")
    h = connect(nbd, dev)
    data = random.Random(2).randbytes(512 << 10)
    h.pwrite(data, 0)
    h.flush()
    s = dev.stats()
    assert (s["writestall"], s["writer_pages"]) == (0, 64)      # 128 pages, 64 queued
    h.pwrite(data, 1 << 20 | 1)                                 # 129 pages, 2 of them in part
    h.flush()
    assert h.pread(len(data), 0) == data and h.pread(len(data), 1 << 20 | 1) == data
    h.shutdown()
    s = dev.stats()
    assert (s["writestall"], s["writer_pages"]) == (0, 64 + 65)
    assert lines("writestall") == []


def test_failed_reasons_logged_once(logged, nbd, tmp_path):
    wrapper = tmp_path / "fake-failed"
    wrapper.write_text(f"#!/bin/sh\nUZRAM_FAKE_MODE=failed UZRAM_FAKE_BAD=5 exec {sys.executable} "
                       f"{HERE}/fake_kcompressd.py \"$@\"\n")
    wrapper.chmod(0o755)
    dev, lines = logged(size="16M", workers=1, python=str(wrapper), batch_pages=16, name="fail")
    wait_for(lambda: query(dev.runtime_dir, "workers")["pids"], what="the fake worker")
    h = connect(nbd, dev)
    data = b"".join((f"page {i} " * 600).encode()[:4096] for i in range(400))
    h.pwrite(data, 0)
    h.flush()
    assert h.pread(len(data), 0) == data
    h.shutdown()
    assert dev.stats()["resent_jobs"] >= 5
    [line] = lines("failed a job")
    assert line.startswith("nbdkit: uzram[fail]: warning: kcompressd/0 failed a job: ")
    assert len(line) > len("nbdkit: uzram[fail]: warning: kcompressd/0 failed a job: ")   # the reason
