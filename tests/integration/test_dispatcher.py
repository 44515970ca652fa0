"""The dispatcher in this process (real worker processes, no nbdkit), for what cannot be
provoked through a server: a bug that kills the dispatcher thread must strand nothing."""

import time

import pytest
from helpers import PAGE, page, read

from uzram.config import Config
from uzram.device import Device
from uzram.dispatcher import Dispatcher


@pytest.fixture
def device(tmp_path):
    devices = []

    def make(**keys):
        c = Config(size=16 << 20, workers=1, batch_pages=16, runtime_dir=str(tmp_path / "rt"), **keys).complete()
        tmp_path.joinpath("rt").mkdir(mode=0o700, exist_ok=True)
        d = Device(c)
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
