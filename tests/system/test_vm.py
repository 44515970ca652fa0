"""The test VM swaps onto an NBD export and reads every page back (uzram/tools/vm/__init__.py).

Against a uzram server the eater must PASS and uzram's statistics must show the traffic;
against a deliberately corrupting server (corrupting_plugin.py) it must FAIL, so the first
test cannot pass vacuously.  Needs qemu, gcc, busybox-static and Debian's package registry
(the kernel is fetched once into the VM cache); no KVM, no root.
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from helpers import need, nbdkit_on_socket
from uzram.tools import vm
from uzram.nbd.server import Server

pytestmark = [pytest.mark.vm, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
TOOLS = (vm.QEMU, "gcc", "apt-get", "dpkg-deb", "modinfo", "nbdkit")
MEMORY = "96M"
EAT = 154           # MiB: 1.6 x guest RAM
EAT_NEGATIVE = 128  # enough to swap; the eater stops at the first few hundred bad pages
TIMEOUT = 240


@pytest.fixture(scope="module")
def artifacts():
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing or not os.path.exists(vm.BUSYBOX):
        need(False, f"the VM tests need {' '.join(missing) or vm.BUSYBOX}")
    try:
        return vm.build()
    except vm.VmError as e:
        need(False, f"cannot build the VM: {e}")


@pytest.fixture
def short_dir():
    """A private directory with a short path (Unix socket paths are limited to 108 bytes)."""
    path = tempfile.mkdtemp(prefix="uzram-vm-")
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def nbdkit_export(socket, *plugin_argv, timeout=30):
    """Serve ``plugin_argv`` (e.g. "memory", "1G") with nbdkit on the Unix ``socket``."""
    server = nbdkit_on_socket(socket, *plugin_argv, timeout=timeout)
    try:
        yield socket
    finally:
        server.stop()


def _explain(result):
    return result.summary() + "\n" + "\n".join(result.log_tail)


def test_swap_round_trip_through_uzram(artifacts, short_dir):
    # To run against nbdkit's memory plugin instead (no stats):
    #   with nbdkit_export(short_dir / "nbd.sock", "memory", "512M") as socket: ...
    with Server(size="512M", runtime_dir=str(short_dir / "run")) as server:
        result = vm.run(server.socket, memory=MEMORY, eat=EAT, timeout=TIMEOUT, artifacts=artifacts)
        stats = server.stats()
    assert result.passed, _explain(result)
    assert result.mismatches == 0
    assert result.pswpout > 0 and result.pswpin > 0, _explain(result)
    # uzram saw the swap traffic: zero and same-filled pages stored as such, the rest compressed.
    assert stats.same_pages > 0, stats
    assert stats.orig_data_size > stats.compr_data_size, stats
    assert stats.failed_reads == stats.failed_writes == 0, stats


def test_corrupting_server_is_caught(artifacts, short_dir):
    plugin = HERE / "corrupting_plugin.py"
    with nbdkit_export(short_dir / "nbd.sock", "python", str(plugin), "size=512M", "after=64") as socket:
        result = vm.run(socket, memory=MEMORY, eat=EAT_NEGATIVE, timeout=TIMEOUT, artifacts=artifacts)
    assert not result.passed, _explain(result)
    # The eater itself found the damage (not a crash or a timeout that happens to say FAIL).
    assert result.mismatches > 0, _explain(result)
    assert result.pswpin > 0, _explain(result)
