"""One real kcompressd worker process against a ROUTER socket of the test's own: the
heartbeats both ways (the worker's side of the Paranoid Pirate rules), and a JOB answered
from shared memory.  The dispatcher's side is tests/unit/test_pool.py (fake clock) and
tests/integration/test_kcompressd.py (real server)."""

import os
import subprocess
import sys
import time

import pytest
import zmq
from helpers import page

from uzram.kcompressd import protocol
from uzram.core.arena import Arena
from uzram.core.codecs import KNOWN_IDS, decoder
from uzram.core.pending import PendingRing
from uzram.nbd.server import REPO

P = 4096


@pytest.fixture
def worker(tmp_path):
    """start(silence) -> (process, ROUTER socket, ring, arena); all stopped at teardown."""
    started = []
    ctx = zmq.Context()

    def start(silence=1.0):
        ring, arena = PendingRing(64 * P), Arena(8 << 20)
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        endpoint = f"ipc://{tmp_path}/w{len(started)}.sock"
        sock.bind(endpoint)
        argv = [sys.executable, "-m", "uzram.kcompressd.worker", "--endpoint", endpoint, "--index", "0",
                "--parent", str(os.getpid()), "--ring-fd", str(ring.file.fd), "--ring-slots", str(ring.capacity),
                "--arena-fd", str(arena.file.fd), "--segment-bytes", str(arena.segment_bytes),
                "--silence", str(silence)]
        proc = subprocess.Popen(argv, pass_fds=(ring.file.fd, arena.file.fd), cwd=REPO)
        started.append((proc, sock))
        assert sock.poll(10000), "no READY"
        identity, *frames = sock.recv_multipart()
        msg = protocol.decode(frames)
        assert msg.command == protocol.READY and msg.job == proc.pid
        return proc, sock, identity, ring, arena

    yield start
    for proc, sock in started:
        proc.kill()
        proc.wait()
        sock.close()
    ctx.term()


def heard(sock, seconds, send_to=None, every=0.2):
    """Commands received in ``seconds``; heartbeats sent to ``send_to`` every ``every`` s."""
    got = []
    end = time.monotonic() + seconds
    next_beat = time.monotonic()
    while time.monotonic() < end:
        if send_to is not None and time.monotonic() >= next_beat:
            sock.send_multipart([send_to] + protocol.heartbeat())
            next_beat += every
        if sock.poll(50):
            got.append(protocol.decode(sock.recv_multipart()[1:]).command)
    return got


def test_a_heartbeated_worker_stays_and_beats_back(worker):
    proc, sock, identity, _, _ = worker(silence=1.0)
    got = heard(sock, 3.0, send_to=identity)          # three times its silence limit
    assert proc.poll() is None
    assert got.count(protocol.HEARTBEAT) >= 2         # one a second when it has nothing else to say


def test_a_worker_that_hears_nothing_leaves(worker):
    proc, sock, _, _, _ = worker(silence=1.0)
    proc.wait(5)                                       # it exits on its own after ~1 s of silence
    assert proc.returncode == 0


def test_a_job_is_compressed_from_the_ring_into_its_window(worker):
    proc, sock, identity, ring, arena = worker()
    pages = [page(i, "text") for i in range(3)] + [page(9, "random")]
    ring.mv[:4 * P] = b"".join(pages)
    ring.cancel[:4] = b"\0\0\1\0"                       # slot 2 was overwritten while queued
    window, capacity = arena.window("lane", 4 * P)
    sock.send_multipart([identity] + protocol.job(5, 4, 3, 3, 0, window, capacity))
    assert sock.poll(5000)
    msg = protocol.decode(sock.recv_multipart()[1:])
    assert msg.command == protocol.RESULT and msg.job == 5
    ids, lens, offs, used = protocol.result_arrays(msg, 4, capacity, KNOWN_IDS)
    assert list(ids) == [3, 3, protocol.SKIPPED, 0] and lens[2] == 0 and lens[3] == P
    for i in (0, 1, 3):
        blob = arena.load(window + int(offs[i]), int(lens[i]))
        assert (blob if ids[i] == 0 else decoder(3).decompress(blob)) == pages[i]
    assert used == int(lens.sum()) <= capacity
