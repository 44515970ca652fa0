"""Shared fixtures: real nbdkit servers running the uzram plugin, reached through libnbd.

In CI (CI=true) nothing may skip for a missing package or for needing root: the set-up
installs everything and CI runs as root, so ``need_root`` fails there instead of skipping.
"""

import os
import shutil
import threading

import pytest

from uzram.nbd.server import PLUGIN, clean_env, nbdkit_argv

IN_CI = os.environ.get("CI") == "true"


def need(condition, reason):
    """Skip (outside CI) or fail (in CI) when ``condition`` is false."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI must not skip: {reason}")
        pytest.skip(reason)


@pytest.fixture
def need_root():
    need(os.geteuid() == 0, "needs root")


def _import_nbd():
    try:
        import nbd
    except ImportError:
        need(False, "python3-libnbd is not installed")
    return nbd


@pytest.fixture
def nbd():
    return _import_nbd()


def command_for(keys):
    """``env -i ... nbdkit -s --exit-with-parent python PLUGIN keys`` for connect_command."""
    env = clean_env()
    argv = nbdkit_argv(keys, single=True, exit_with_parent=True)
    return ["env", "-i"] + [f"{k}={v}" for k, v in env.items()] + argv


@pytest.fixture
def connect(tmp_path):
    """connect(**keys) -> a libnbd handle to a private nbdkit (closed at teardown).

    Each handle gets its own runtime_dir under tmp_path; ``handle.runtime_dir`` says where."""
    nbd = _import_nbd()
    handles = []

    def make(**keys):
        keys.setdefault("size", "64M")
        keys.setdefault("workers", 0)
        keys.setdefault("runtime_dir", str(tmp_path / f"rt{len(handles)}"))
        h = nbd.NBD()
        h.add_meta_context("base:allocation")
        h.connect_command(command_for(keys))
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
        need(shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin"), f"{tool} is not installed")
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
