"""kcompressd end to end: real nbdkit, real worker processes over ZeroMQ, libnbd clients."""

import os
import random
import signal
import stat
import subprocess
import sys
import time

import pytest

from helpers import PAGE, connect_uri, page, uzram_on_socket, wait_for
from uzram.nbd.control import query

HERE = os.path.dirname(os.path.abspath(__file__))


def stats(rt):
    return query(rt, "stats")


def worker_pids(rt):
    return query(rt, "workers")["pids"]


def wait_workers(rt, n, timeout=20):
    wait_for(lambda: stats(rt)["workers_alive"] >= n and len(worker_pids(rt)) >= n, timeout, f"{n} workers")


def test_workers_are_processes_with_titles_and_private_sockets(server):
    srv = server(size="16M", workers=2)
    wait_workers(srv.runtime_dir, 2)
    for pid in worker_pids(srv.runtime_dir):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[0].startswith(b"uzram-kcompressd/")
    st = os.stat(os.path.join(srv.runtime_dir, "kcompressd.sock"))
    assert stat.S_IMODE(st.st_mode) & 0o077 == 0
    assert stat.S_IMODE(os.stat(srv.runtime_dir).st_mode) == 0o700


def _memfds(pid):
    """{memfd name: [access mode (os.O_RDONLY, O_WRONLY or O_RDWR)]} of a process's descriptors."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                flags = int(next(line for line in f if line.startswith("flags:")).split()[1], 8)
        except (OSError, StopIteration):
            continue
        if target.startswith("/memfd:"):
            out.setdefault(target.split()[0][len("/memfd:"):], []).append(flags & os.O_ACCMODE)
    return out


def test_a_worker_holds_the_ring_read_only(server):
    """It compresses from the ring and writes only into the arena: its ring descriptor is a
    read-only one, so not even a bug can map the ring writable (its cancel bytes, its pages)."""
    srv = server(size="16M", workers=1)
    wait_workers(srv.runtime_dir, 1)
    fds = _memfds(worker_pids(srv.runtime_dir)[0])      # (Python's mmap keeps a dup of its descriptor)
    assert fds.get("uzram-pending") and set(fds["uzram-pending"]) == {os.O_RDONLY}, fds
    assert fds.get("uzram-arena") and set(fds["uzram-arena"]) == {os.O_RDWR}, fds


def _nice(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])      # field 19, nice


CPUS = len(os.sched_getaffinity(0))


@pytest.mark.parametrize("workers, nice, increment", [
    (CPUS, None, 5),                       # the workers can hold every CPU: nicer by default
    (CPUS - 1 or 1, None, 0 if CPUS > 1 else 5),   # one CPU no worker holds: the same priority
    (2, 0, 0), (2, 12, 12)])
def test_workers_run_nicer_than_the_server(server, workers, nice, increment):
    """worker_nice: the workers' compression yields a contended CPU to request threads (it
    lowered the serialized writer's p99 with two workers on two CPUs); by default only
    when the workers can hold every CPU."""
    srv = server(size="16M", workers=workers, **({} if nice is None else {"worker_nice": nice}))
    wait_workers(srv.runtime_dir, workers)
    want = min(19, _nice(srv.proc.pid) + increment)
    assert [_nice(pid) for pid in worker_pids(srv.runtime_dir)] == [want] * workers


def test_writes_are_compressed_by_workers_and_flush_waits(server, nbd):
    srv = server(size="32M", workers=1, algorithm="zstd")
    wait_workers(srv.runtime_dir, 1)
    h = connect_uri(srv.uri)
    data = b"".join(page(i, "text") for i in range(2000)) + b"".join(page(i, "same") for i in range(100))
    for off in range(0, len(data), 64 * PAGE):       # requests up to a quarter of the ring are queued
        h.pwrite(data[off:off + 64 * PAGE], off)
    h.flush()
    s = stats(srv.runtime_dir)
    assert s["pending_pages"] == 0
    assert s["compressed_pages"] == 2000 and s["same_pages"] == 100
    assert s["batches_sent"] >= 2000 // 256
    assert s["worker_cpu_seconds"] > 0
    req, wkr = map(int, s["cpu_split"].split(":"))
    assert req + wkr == 100 and wkr > 0
    assert h.pread(len(data), 0) == data
    h.shutdown()


def test_fua_write_is_compressed_when_it_returns(server, nbd):
    srv = server(size="8M", workers=1)
    wait_workers(srv.runtime_dir, 1)
    h = connect_uri(srv.uri)
    h.pwrite(page(1, "text") * 64, 0, nbd.CMD_FLAG_FUA)
    assert stats(srv.runtime_dir)["pending_pages"] == 0
    h.shutdown()


def test_read_your_writes_under_concurrent_overwrite_and_trim_storms(server, nbd, in_threads):
    """Four connections hammer interleaved pages (page p belongs to connection p % 4, so
    every batch and job mixes them); each checks every read against its own model."""
    npages = 2048
    srv = server(size=f"{npages * PAGE}", workers=2, max_pending="2M", batch_pages=16)
    wait_workers(srv.runtime_dir, 2)
    errors = []

    def storm(c):
        h = connect_uri(srv.uri)
        r = random.Random(c)
        mine = [p for p in range(npages) if p % 4 == c]
        model = {}
        try:
            for i in range(600):
                p = r.choice(mine)
                op = r.random()
                if op < 0.6:
                    run = [q for q in range(p, min(p + r.randrange(1, 9) * 4, npages), 4)]
                    for q in run:          # one request per page keeps pages interleaved
                        d = page(c * 100000 + i * 10 + q)
                        h.pwrite(d, q * PAGE)
                        model[q] = d
                elif op < 0.75:
                    h.trim(PAGE, p * PAGE)
                    model[p] = bytes(PAGE)
                elif op < 0.85:
                    h.zero(PAGE, p * PAGE)
                    model[p] = bytes(PAGE)
                q = r.choice(mine)
                got = h.pread(PAGE, q * PAGE)
                if got != model.get(q, bytes(PAGE)):
                    errors.append(f"conn {c} op {i}: page {q} differs")
                    return
            h.flush()
            for q in mine:
                if h.pread(PAGE, q * PAGE) != model.get(q, bytes(PAGE)):
                    errors.append(f"conn {c}: page {q} differs after flush")
                    return
        finally:
            h.shutdown()

    in_threads(storm, 4)
    assert not errors, errors
    s = stats(srv.runtime_dir)
    assert s["pending_pages"] == 0
    assert s["batches_sent"] > 0


def test_kill_9_workers_during_a_verified_write_stream(server, nbd):
    srv = server(size="64M", workers=2, algorithm="zstd", batch_pages=8)
    rt = srv.runtime_dir
    wait_workers(rt, 2)
    h = connect_uri(srv.uri)
    killed = []
    r = random.Random(7)
    written = {}
    for i in range(400):
        chunk = b"".join(page(i * 64 + j, r.choice(["text", "random", "text"])) for j in range(16))
        off = (i * 16 % (64 * 256 - 16)) * PAGE
        h.pwrite(chunk, off)
        written[off] = chunk
        if i % 40 == 5:
            wait_workers(rt, 1)
            pid = r.choice(worker_pids(rt))         # a ready worker (the pool lists no other)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    h.flush()
    for off, chunk in written.items():
        assert h.pread(len(chunk), off) == chunk, f"data lost at {off}"
    assert len(killed) == 10                        # one kill every 40 writes
    assert stats(rt)["pending_pages"] == 0
    wait_workers(rt, 2, timeout=30)
    # every killed worker was noticed and replaced by a new process (a respawn of a worker
    # that had been ready counts as a restart; more, if a heartbeat timed out meanwhile)
    assert stats(rt)["worker_restarts"] >= len(killed)
    assert not set(killed) & set(worker_pids(rt))
    for off, chunk in written.items():              # and the new workers lost nothing either
        assert h.pread(len(chunk), off) == chunk, f"data lost at {off} after the respawns"
    h.shutdown()


def test_every_worker_gone_writes_still_succeed(server, nbd, tmp_path):
    # a "python" that cannot start workers: every spawn dies at once
    fake = tmp_path / "nopython"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    srv = server(size="8M", workers=2, python=str(fake), require_workers=False)
    h = connect_uri(srv.uri)
    data = b"".join(page(i) for i in range(500))
    h.pwrite(data, 0)
    h.flush()
    assert h.pread(len(data), 0) == data
    s = stats(srv.runtime_dir)
    assert s["workers_alive"] == 0 and s["pending_pages"] == 0
    h.shutdown()


def _fake_python(tmp_path, mode, bad=3):
    wrapper = tmp_path / f"fake-{mode}"
    wrapper.write_text(f"#!/bin/sh\nUZRAM_FAKE_MODE={mode} UZRAM_FAKE_BAD={bad} exec {sys.executable} "
                       f"{HERE}/fake_kcompressd.py \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)


def _verified_write_through_fake(server, nbd, tmp_path, mode, npages, bad=3):
    """Write ``npages`` pages through one fake worker, flush, read them back (asserting
    they are intact) and return the statistics."""
    srv = server(size="16M", workers=1, python=_fake_python(tmp_path, mode, bad), batch_pages=16)
    wait_workers(srv.runtime_dir, 1)
    h = connect_uri(srv.uri)
    data = b"".join(page(i, "text") for i in range(npages))
    h.pwrite(data, 0)
    h.flush()
    assert h.pread(len(data), 0) == data
    h.shutdown()
    return stats(srv.runtime_dir)


@pytest.mark.parametrize("mode", ["badsize", "garbage", "failed", "wrongid", "outside", "shifted", "swapped"])
def test_misbehaving_worker_loses_nothing(server, nbd, tmp_path, mode):
    s = _verified_write_through_fake(server, nbd, tmp_path, mode, 400)
    assert s["resent_jobs"] >= 3
    if mode in ("swapped", "shifted"):
        assert s["bad_results"] >= 3        # well-formed, caught by the spot check
    elif mode != "failed":
        assert s["bad_messages"] >= 3
    assert s["pending_pages"] == 0 and s["compressed_pages"] == 400


def test_a_worker_that_is_always_wrong_cannot_stall_flush(server, nbd, tmp_path):
    # every answer swapped: each job is sent MAX_TRIES more times, then the dispatcher
    # compresses it itself
    s = _verified_write_through_fake(server, nbd, tmp_path, "swapped", 200, bad=10 ** 6)
    assert s["compressed_here"] == 200 and s["bad_results"] >= 4 and s["pending_pages"] == 0


def test_garbage_from_a_stranger_is_counted_and_dropped(server, nbd):
    import zmq
    srv = server(size="8M", workers=1)
    rt = srv.runtime_dir
    wait_workers(rt, 1)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{rt}/kcompressd.sock")
    from uzram.kcompressd import protocol
    for frames in ([b"junk"], [b""], [protocol.header(protocol.RESULT, 1, 1), b"\x05\x00\x01"],
                   protocol.ready(0, 1), protocol.heartbeat()):
        sock.send_multipart(frames)
    wait_for(lambda: stats(rt)["bad_messages"] >= 5, what="bad messages counted")
    sock.close()
    h = connect_uri(srv.uri)
    h.pwrite(page(3, "text") * 32, 0)
    h.flush()
    assert h.pread(PAGE * 32, 0) == page(3, "text") * 32
    h.shutdown()


def test_backpressure_with_workers_stopped(server, nbd):
    srv = server(size="32M", workers=2, max_pending="1M", batch_pages=16)
    rt = srv.runtime_dir
    wait_workers(rt, 2)
    pids = worker_pids(rt)
    h = connect_uri(srv.uri)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        data = b"".join(page(i, "text") for i in range(2048))  # 8 MiB, 8x max_pending
        t0 = time.monotonic()
        for off in range(0, len(data), 64 * PAGE):
            h.pwrite(data[off:off + 64 * PAGE], off)
        assert time.monotonic() - t0 < 60
        s = stats(rt)
        assert s["writestall"] > 0
        assert s["pending_bytes"] <= 1 << 20
        assert h.pread(len(data), 0) == data           # pending pages read from their copies
        # overwrite pages still queued: they are cancelled, never compressed
        h.pwrite(bytes(len(data)), 0)
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    h.flush()
    assert h.pread(8 << 20, 0) == bytes(8 << 20)
    s = stats(rt)
    assert s["pending_pages"] == 0
    assert s["cancelled_pages"] + s["stale_results"] > 0
    h.shutdown()


def uzram_memfds():
    """{pid: [memfd names]} of every process holding one of uzram's shared files open or mapped."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        names = []
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue    # closed since the listing (one fd gone must not hide the others)
                if target.startswith("/memfd:uzram-"):
                    names.append(target)
            with open(f"/proc/{pid}/maps") as f:
                names += [line.split(None, 5)[-1].strip() for line in f if "/memfd:uzram-" in line]
        except OSError:
            continue            # gone, or not ours to read
        if names:
            out[int(pid)] = sorted(set(names))
    return out


def test_no_worker_or_shared_memory_outlives_nbdkit_killed_with_sigkill(server):
    before = set(uzram_memfds())
    srv = server(size="8M", workers=2)
    wait_workers(srv.runtime_dir, 2)
    pids = worker_pids(srv.runtime_dir)
    held = uzram_memfds()
    # the server and both workers hold the ring and the arena (no file in /dev/shm: memfds)
    assert {srv.proc.pid, *pids} <= set(held)
    assert all(any("uzram-pending" in n for n in held[p]) and any("uzram-arena" in n for n in held[p])
               for p in (srv.proc.pid, *pids))
    assert not [f for f in os.listdir("/dev/shm") if "uzram" in f]
    os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait()

    def gone():
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rpartition(")")[2].split()[0] != "Z":
                        return False
            except FileNotFoundError:
                pass
        return True

    wait_for(gone, 10, "workers to exit")
    wait_for(lambda: set(uzram_memfds()) <= before, 10, "the shared files to go")


def test_old_result_arriving_after_a_newer_write_is_dropped(server, nbd):
    """Race through real processes: jobs are in flight to a stopped worker when the same
    pages are written again.  The worker, resumed, finds the old pages cancelled in the
    shared ring and skips them (cancellation after dispatch); nothing old is installed."""
    srv = server(size="8M", workers=1, batch_pages=16)
    rt = srv.runtime_dir
    wait_workers(rt, 1)
    pid = worker_pids(rt)[0]
    h = connect_uri(srv.uri)
    old = b"".join(page(i, "text") for i in range(64))
    new = b"".join(page(1000 + i, "text") for i in range(64))
    os.kill(pid, signal.SIGSTOP)
    try:
        h.pwrite(old, 0)
        wait_for(lambda: stats(rt)["batches_in_flight"] >= 1, 2, "jobs in flight to the stopped worker")
        h.pwrite(new, 0)                       # newer data while the old jobs are still out
        assert h.pread(len(new), 0) == new     # read from the newer pending copies
    finally:
        os.kill(pid, signal.SIGCONT)           # well within the 3 s liveness limit
    h.flush()
    assert h.pread(len(new), 0) == new
    s = stats(rt)
    assert s["cancelled_pages"] == 64 and s["stale_results"] == 0   # no old page compressed
    assert s["batches_sent"] >= 4 + 2            # the 2 jobs out when the new data came were old ones
    assert s["pending_pages"] == 0 and s["compressed_pages"] == 64
    h.shutdown()


def test_a_bad_python_is_reported_once_in_the_log_and_in_stats(tmp_path, nbd):
    """Regression: python=/nonexistent started silently, compressed everything inline and
    counted worker restarts forever."""
    rt = tmp_path / "rt"
    log = tmp_path / "nbdkit.log"
    errlog = open(log, "wb")
    server = uzram_on_socket(tmp_path / "nbd.sock", {"size": "8M", "workers": 1, "python": "/nonexistent",
                                                     "runtime_dir": str(rt)}, stderr=errlog)
    try:
        time.sleep(6)                       # several retries (backoff 0.1 s .. 5 s)
        h = connect_uri(f"nbd+unix:///?socket={tmp_path}/nbd.sock")
        h.pwrite(page(1, "text") * 4, 0)    # still served: compressed inline
        h.flush()
        assert h.pread(4 * PAGE, 0) == page(1, "text") * 4
        h.shutdown()
        s = stats(str(rt))
        assert s["worker_start_failures"] >= 3 and s["worker_restarts"] == 0 and s["workers_alive"] == 0
        assert "could not be started" in s["worker_error"] and "/nonexistent" in s["worker_error"]
    finally:
        server.stop(30)
        errlog.close()
    lines = [l for l in log.read_text().splitlines() if "kcompressd/" in l]   # (a writestall line may follow)
    assert len(lines) == 1 and "kcompressd/0 could not be started" in lines[0] and "/nonexistent" in lines[0], lines


@pytest.mark.parametrize("python", ["/nonexistent", "/bin/false"])
def test_serve_fails_at_start_when_no_worker_becomes_ready(tmp_path, python):
    r = subprocess.run([sys.executable, "-m", "uzram", "serve", "--size", "8M", "--workers", "1",
                        "--python", python, "--runtime-dir", str(tmp_path / "rt")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("uzram serve: no kcompressd worker became ready"), r.stderr
    assert ("could not be started" in last and python in last) or "exited before it was ready" in last
    assert "Traceback" not in r.stderr
    assert os.listdir(tmp_path / "rt") == []
