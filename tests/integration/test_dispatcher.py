"""The dispatcher in this process (real worker processes, no nbdkit), for what cannot be
provoked through a server: a bug that kills the dispatcher thread must strand nothing."""

import os
import sys
import threading
import time

import pytest
from helpers import PAGE, page, read

from uzram.core.config import Config
from uzram.core.device import Device
from uzram.kcompressd.dispatcher import Dispatcher
from uzram.core.errors import UzramError

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def device(tmp_path):
    devices = []

    def make(**keys):
        c = Config(**{"size": 16 << 20, "workers": 1, "batch_pages": 16, "runtime_dir": str(tmp_path / "rt"),
                      **keys}).complete()
        tmp_path.joinpath("rt").mkdir(mode=0o700, exist_ok=True)
        d = Device(c, offload=Dispatcher)
        d.start()
        devices.append(d)
        deadline = time.monotonic() + 20
        while d.dispatcher.workers_alive < 1:
            assert time.monotonic() < deadline, "no worker"
            time.sleep(0.02)
        return d

    yield make
    for d in devices:
        d.close()


def test_a_dispatcher_that_dies_strands_nothing(device, monkeypatch):
    d = device()
    data = b"".join(page(i, "text") for i in range(64))
    boom = []

    def broken(self, now):
        boom.append(now)
        raise RuntimeError("a bug in the dispatcher")

    monkeypatch.setattr(Dispatcher, "_dispatch", broken)
    for off in range(0, len(data), 8 * PAGE):
        d.write(data[off:off + 8 * PAGE], off)         # staged, or inline once it is gone
    deadline = time.monotonic() + 10
    while d.dispatcher._running:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert boom and d.dispatcher.workers_alive == 0
    d.flush()                                            # returns: nothing is left queued
    assert d.store.n_pending == 0 and d.store.ring.tail == d.store.ring.head
    assert read(d.store, 0, len(data)) == data
    d.write(page(99, "text"), 0)                         # and writes still work, inline
    assert read(d.store, 0, PAGE) == page(99, "text") and d.store.n_pending == 0


def test_an_idle_device_keeps_its_workers(device, monkeypatch):
    """Regression: workers left after 30 s without hearing from the dispatcher, which sent
    no heartbeats, so an idle device respawned them every 30 s (16 times in 20 minutes).
    Here they leave after 2.5 s of silence (heartbeats come every second), and the device
    idles for 5 s."""
    from uzram.kcompressd import dispatcher as dispatcher_mod
    monkeypatch.setattr(dispatcher_mod, "WORKER_SILENCE", 2.5)
    d = device()
    pids = d.dispatcher.worker_pids()
    time.sleep(5.0)
    assert d.dispatcher.pool.restarts == 0 and d.dispatcher.worker_pids() == pids
    d.write(page(1, "text") * 4, 0)
    d.flush()
    assert read(d.store, 0, 4 * PAGE) == page(1, "text") * 4


def test_a_job_a_worker_never_answers_is_sent_again(device, monkeypatch, tmp_path):
    """A worker that keeps its heartbeats but drops a JOB: after the job deadline the
    worker counts as dead, and the job goes out again."""
    from uzram.kcompressd import pool as pool_mod
    monkeypatch.setattr(pool_mod, "JOB_DEADLINE", 1.0)
    wrapper = tmp_path / "dropper"
    wrapper.write_text(f"#!/bin/sh\nUZRAM_FAKE_MODE=drop UZRAM_FAKE_BAD=1 exec {sys.executable} "
                       f"{HERE}/fake_kcompressd.py \"$@\"\n")
    wrapper.chmod(0o755)
    d = device(python=str(wrapper))
    data = b"".join(page(i, "text") for i in range(16))
    d.write(data, 0)
    t0 = time.monotonic()
    d.flush()
    assert time.monotonic() - t0 < 10
    assert d.dispatcher.resent_jobs >= 1       # sent again (or compressed here, while none was ready)
    assert read(d.store, 0, len(data)) == data and d.store.n_pending == 0


def test_a_dispatcher_whose_clean_up_fails_too_makes_flush_fail_not_hang(device, monkeypatch):
    d = device()
    monkeypatch.setattr(Dispatcher, "_dispatch", lambda self, now: (_ for _ in ()).throw(RuntimeError("bug")))
    monkeypatch.setattr(d.store, "install_local", lambda *a: (_ for _ in ()).throw(RuntimeError("bug 2")))
    d.write(page(1, "text") * 4, 0)
    t0 = time.monotonic()
    with pytest.raises(UzramError, match="dispatcher stopped"):
        d.flush()
    assert time.monotonic() - t0 < 10
    assert read(d.store, 0, 4 * PAGE) == page(1, "text") * 4     # still readable, from the ring


def test_a_worker_killed_during_recompression_loses_nothing(device):
    """The RECOMPRESS jobs of a killed worker go back to the maintenance thread, which does
    them itself: the recompression returns, and the ring (which those jobs never used) is
    untouched, so writes and flushes after it go on."""
    import random
    import signal
    import threading
    d = device(size=64 << 20, recomp_algorithm=["zstd:19"])
    r = random.Random(1)
    pages = [bytes(r.choice(b"abcdefghijklmnop") for _ in range(PAGE - 8)) + i.to_bytes(8, "little")
             for i in range(2048)]        # huge for lz4, small for zstd: every page is work
    for i, p in enumerate(pages):
        d.store.write(p, i * PAGE)
    d.flush()
    ring = d.store.ring
    before = (ring.tail, ring.head)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("done", d.recompress(0, 0, None, None, None)), daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while d.dispatcher.recompress_sent < 2:
        assert time.monotonic() < deadline and t.is_alive()
        time.sleep(0.002)
    os.kill(d.dispatcher.worker_pids()[0], signal.SIGKILL)
    t.join(120)
    assert not t.is_alive(), "the recompression never returned"
    assert "2048 pages recompressed" in out["done"] or "of 2048 pages" in out["done"], out
    assert (ring.tail, ring.head) == before
    assert all(read(d.store, i * PAGE, PAGE) == p for i, p in enumerate(pages))
    d.store.write(page(7, "text"), 0)
    d.flush()
    assert read(d.store, 0, PAGE) == page(7, "text")


def test_a_flood_of_messages_is_handled_in_batches(device, monkeypatch):
    """A stranger's flood cannot keep the dispatcher in one receive: it handles at most
    RECEIVE_BATCH messages, then watches, sends and polls again; every message is counted."""
    import zmq
    from uzram.kcompressd import dispatcher as dispatcher_mod
    d = device()
    batches, current = [], [0]
    handle, receive = Dispatcher._handle, Dispatcher._receive

    def counted_handle(self, frames):
        current[0] += 1
        return handle(self, frames)

    def counted_receive(self):
        sent.wait(10)             # the whole flood is queued before the first receive
        current[0] = 0
        receive(self)
        batches.append(current[0])

    sent = threading.Event()

    monkeypatch.setattr(Dispatcher, "_handle", counted_handle)
    monkeypatch.setattr(Dispatcher, "_receive", counted_receive)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(d.dispatcher.endpoint)
    flood = 5 * dispatcher_mod.RECEIVE_BATCH
    try:
        for _ in range(flood):
            sock.send_multipart([b"junk"])
        time.sleep(0.2)           # (ZeroMQ's I/O thread queues them meanwhile)
        sent.set()
        deadline = time.monotonic() + 20
        while d.dispatcher.bad_messages < flood:
            assert time.monotonic() < deadline, f"{d.dispatcher.bad_messages} of {flood} counted"
            time.sleep(0.02)
    finally:
        sock.close()
    data = page(1, "text") * 32
    d.write(data, 0)
    d.flush()
    assert read(d.store, 0, len(data)) == data
    assert sum(batches) >= flood and max(batches) <= dispatcher_mod.RECEIVE_BATCH
    assert sum(b == dispatcher_mod.RECEIVE_BATCH for b in batches) >= 4
