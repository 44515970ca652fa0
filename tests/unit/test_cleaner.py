"""The device's cleaner thread (Device._clean_when_idle), in process with a short tick: it
cleans dead bytes once requests pause, not while they go on, never beside a maintenance
command, and close() stops it."""

import os
import threading
import time

import pytest
from helpers import PAGE as P

from uzram.core import device as device_module
from uzram.core.config import Config
from uzram.core.device import Device

TICK = 0.1


@pytest.fixture
def device(monkeypatch):
    monkeypatch.setattr(device_module, "CLEAN_TICK", TICK)
    d = Device(Config(size=16000 * P, workers=0, algorithm="lz4").complete())
    d.start()
    yield d
    d.close()


def with_dead_bytes(d):
    """12,000 pages of about 2 KiB each, then a sixth of that dies: past the idle mark
    (5%), under the busy one (a quarter), so only the cleaner cleans it."""
    distinct = [os.urandom(2000) + bytes(P - 2000) for _ in range(1000)]
    for first in range(0, 12000, 1000):
        d.write(b"".join(distinct), first * P)
    for p in range(0, 3000, 3):
        d.trim((p + 1) * P, 2 * P)                  # (offset, count): two of every three pages
    assert d.store.arena.dead_bytes > 0.05 * d.store.arena.held_bytes


def wait_cleaned(d, timeout=10):
    deadline = time.monotonic() + timeout
    while d.store.pages_compacted == 0:
        assert time.monotonic() < deadline, "the cleaner did not clean"
        time.sleep(0.02)


def test_the_cleaner_waits_while_writes_go_on(device, monkeypatch):
    monkeypatch.setattr(device_module, "CLEAN_TICK", 0.25)  # (a stall of the loop below must not look idle)
    time.sleep(TICK)
    with_dead_bytes(device)
    stop = time.monotonic() + 1.0
    page = os.urandom(2000) + bytes(P - 2000)
    i = 0
    while time.monotonic() < stop:                  # a write every millisecond or so
        device.write(page, (13000 + i % 1000) * P)
        i += 1
        time.sleep(0.001)
    assert device.store.pages_compacted == 0
    wait_cleaned(device)                            # and once they stop, it cleans


def test_the_cleaner_never_runs_beside_a_maintenance_command(device):
    with device.maintenance:
        with_dead_bytes(device)
        time.sleep(6 * TICK)
        assert device.store.pages_compacted == 0
    wait_cleaned(device)


def test_close_stops_the_cleaner(device):
    cleaner = device._cleaner
    assert cleaner.is_alive() and cleaner.name == "uzram-clean"
    device.close()
    assert not cleaner.is_alive()
    assert "uzram-clean" not in [t.name for t in threading.enumerate()]
