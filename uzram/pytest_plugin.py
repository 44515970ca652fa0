"""uzram's pytest plugin: real uzram devices for integration tests.

Installed with uzram (the ``pytest11`` entry point ``uzram``), so any project whose test
environment has uzram gets these fixtures without a conftest:

``uzram_device``
    A running 64 MiB device (lz4, inline compression), fresh for each test.
``uzram_device_factory``
    ``uzram_device_factory(size="64M", algorithm="lz4", workers=0, mem_limit=None, **keys)``
    starts another device and returns it; any plugin key or ``uzram.Server`` argument
    (``max_pending``, ``name``, ``tcp_port``, ``tls_psk``, ...) may be given.

Each device is a ``uzram.Server`` (uzram/api.py): ``dev.uri`` (the NBD URI), ``dev.socket``
(its Unix socket), ``dev.stats()`` (a mapping with zram's names: ``dev.stats()["mem_used_total"]``),
``dev.runtime_dir``, and ``dev.attach()``, which returns a block device (/dev/loopN through
nbdfuse + loop, or /dev/nbdN through nbd-client where the kernel has NBD).  ``attach``
skips the test, naming the reason, where the host cannot (not root, no FUSE, a tool
missing); ``dev.attach(skip=False)`` raises instead.  At the end of the test, passed or
failed, every device is detached and stopped and its runtime directory removed.

Disable the plugin with ``pytest -p no:uzram``.
"""

import pytest

from uzram.host import blockdev
from .api import Server


class Device(Server):
    """A ``uzram.Server`` whose ``attach`` skips the test where the host cannot attach."""

    def attach(self, how="auto", timeout=30, skip=True):
        if skip:
            why = blockdev.unavailable(how)
            if why:
                pytest.skip(f"uzram_device.attach: {why}")
        return super().attach(how, timeout)


@pytest.fixture
def uzram_device_factory():
    """``uzram_device_factory(size=..., algorithm=..., workers=..., mem_limit=..., **keys)``
    -> a started device; all are stopped when the test ends."""
    devices = []

    def make(size="64M", algorithm="lz4", workers=0, mem_limit=None, **keys):
        dev = Device(size, algorithm=algorithm, workers=workers, mem_limit=mem_limit, **keys)
        devices.append(dev)
        return dev.start()

    yield make
    errors = []
    for dev in reversed(devices):
        try:
            dev.stop()
        except Exception as e:   # stop every device even when one fails to stop
            errors.append(f"{dev!r}: {e}")
    if errors:
        raise RuntimeError("uzram_device_factory teardown: " + "; ".join(errors))


@pytest.fixture
def uzram_device(uzram_device_factory):
    """A running 64 MiB uzram device (lz4, inline compression), stopped after the test."""
    return uzram_device_factory()
