"""Shared fixtures: real nbdkit servers running the uzram plugin, reached through libnbd.

In CI (CI=true) nothing may skip for a missing package or for needing root: the fixtures
here ``need`` what they need (tests/helpers.py), which fails in CI instead of skipping.
"""

import os
import threading

import pytest

from helpers import import_nbd, need, need_tool, uzram_command
from uzram.nbd.server import PLUGIN


@pytest.fixture
def need_root():
    need(os.geteuid() == 0, "needs root")


@pytest.fixture
def nbd():
    return import_nbd()


@pytest.fixture
def connect(tmp_path):
    """connect(**keys) -> a libnbd handle to a private nbdkit (closed at teardown).

    Each handle gets its own runtime_dir under tmp_path; ``handle.runtime_dir`` says where."""
    nbd = import_nbd()
    handles = []

    def make(**keys):
        keys.setdefault("size", "64M")
        keys.setdefault("workers", 0)
        keys.setdefault("runtime_dir", str(tmp_path / f"rt{len(handles)}"))
        h = nbd.NBD()
        h.add_meta_context("base:allocation")
        h.connect_command(uzram_command(keys))
        h.runtime_dir = keys["runtime_dir"]
        handles.append(h)
        return h

    yield make
    for h in handles:
        try:
            h.shutdown()
        except Exception:
            pass
        del h


@pytest.fixture
def server(uzram_device_factory):
    """server(size="64M", **keys) -> a started uzram device on a Unix socket, inline unless
    ``workers`` says otherwise: the installed pytest plugin's factory (uzram/pytest_plugin.py),
    which stops it and removes its runtime directory at teardown."""
    return uzram_device_factory


@pytest.fixture(scope="session")
def tools():
    for tool in ("nbdkit", "nbdcopy", "nbdinfo"):
        need_tool(tool)
    assert os.path.exists(PLUGIN)


@pytest.fixture
def in_threads():
    """in_threads(fn, n): run fn(0) .. fn(n - 1) in n threads at once and wait for them all."""
    def run(fn, n, timeout=300):
        threads = [threading.Thread(target=fn, args=(c,)) for c in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
    return run
