"""Helpers shared by the tests: the CI rule for skips, page generators, nbdkit started on a
socket or for libnbd's connect_command, and kcompressd run in-process.

In CI (``CI=true``; 1 and yes count too) nothing may skip for a missing tool or package or
for needing root: the set-up installs everything and CI runs as root, so ``need`` fails
there instead of skipping.  Every test that would skip goes through it.

``InProcessKcompressd`` is the real worker code (uzram.kcompressd.Compressor) over a
store's real shared memory, driven the way the dispatcher drives it: jobs cut from the
pending ring, a window of a lane for each, RESULT frames checked by
``protocol.result_arrays`` and installed by the store.  Only the process boundary and
the socket are left out, so store tests can hold jobs, reorder them and race them.
"""

import os
import random
import shutil
import time

import numpy as np
import pytest

from uzram.kcompressd import protocol
from uzram.core.codecs import KNOWN_IDS
from uzram.kcompressd.worker import Compressor
from uzram.nbd.server import CLEAN_PATH, Nbdkit, clean_env, nbdkit_argv

PAGE = 4096
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# --- skips, or failures in CI ------------------------------------------------------------

def need(condition, reason):
    """Skip (outside CI) or fail (in CI) when ``condition`` is false; in a test, a fixture
    or at a module's top."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI must not skip: {reason}", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


def need_tool(program):
    """``need`` the program on the clean PATH nbdkit and the tests' children run with."""
    need(shutil.which(program, path=CLEAN_PATH), f"{program} is not installed")


def import_nbd():
    """libnbd's Python bindings (python3-libnbd), ``need``ed."""
    try:
        import nbd
    except ImportError:
        need(False, "python3-libnbd is not installed")
    return nbd


# --- pages -------------------------------------------------------------------------------

def page(seed, kind=None):
    """One 4 KiB page of ``kind``: zero, same (one 8-byte value, never zero), text
    (compressible, with ``seed`` in it), or random; a kind drawn from ``seed`` if not given."""
    r = random.Random(seed)
    kind = kind or r.choice(["text", "text", "random", "same", "zero"])
    if kind == "zero":
        return bytes(PAGE)
    if kind == "same":
        return (r.getrandbits(64) | 1).to_bytes(8, "little") * (PAGE // 8)
    if kind == "text":
        return (f"{seed} lorem ipsum dolor sit amet, consectetur adipiscing elit " * 80).encode()[:PAGE]
    return r.randbytes(PAGE)


# --- nbdkit ------------------------------------------------------------------------------

def env_i(argv):
    """``argv`` under ``env -i`` with the clean environment nbdkit needs (for libnbd's
    connect_command and for runs that must not inherit the test's environment)."""
    return ["env", "-i"] + [f"{k}={v}" for k, v in clean_env().items()] + list(argv)


def uzram_command(keys):
    """``env -i ... nbdkit -s --exit-with-parent python PLUGIN keys`` for connect_command."""
    return env_i(nbdkit_argv(keys, single=True, exit_with_parent=True))


def nbdkit_on_socket(sock, *plugin_argv, options=(), stderr=None, timeout=30):
    """nbdkit serving ``plugin_argv`` (``"memory", "64M"``) on the Unix socket ``sock``, started
    and waited for (a started uzram.nbd.server.Nbdkit: stop() it)."""
    need_tool("nbdkit")
    sock = str(sock)
    return Nbdkit(["nbdkit", "-f", "--exit-with-parent", "-U", sock, *options, *plugin_argv], stderr=stderr,
                  socket_path=sock).start(timeout)


def uzram_on_socket(sock, keys, stderr=None, timeout=30):
    """nbdkit serving uzram with plugin ``keys`` on the Unix socket ``sock``, started and
    waited for (the plugin as plain nbdkit runs it, not through uzram.Server; stop() it)."""
    sock = str(sock)
    return Nbdkit(nbdkit_argv(keys, socket_path=sock), stderr=stderr, socket_path=sock).start(timeout)


def connect_uri(uri):
    """A libnbd handle connected to ``uri``."""
    h = import_nbd().NBD()
    h.connect_uri(uri)
    return h


def wait_for(cond, timeout=20, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- the store ---------------------------------------------------------------------------

def read(store, offset, n):
    buf = bytearray(n)
    store.read(buf, offset)
    return bytes(buf)


class Job:
    def __init__(self, start, n, lane, window, capacity, frames):
        self.start, self.n, self.lane, self.window, self.capacity, self.frames = start, n, lane, window, capacity, frames


class InProcessKcompressd:
    def __init__(self, store, batch_pages=64, lanes=16):
        self.store = store
        ring, arena = store.ring, store.arena
        self.compressor = Compressor(ring.file.fd, ring.capacity, arena.file.fd, arena.segment_bytes)
        self.batch_pages = batch_pages
        self.free_lanes = list(range(lanes))

    def send(self, compress=True):
        """Cut the next job from the ring and compress it (unless ``compress`` is False:
        then ``compress_job`` does it later, as a worker that is slow to start).  Returns
        the Job, or None when nothing is staged."""
        taken = self.store.ring.take(self.batch_pages)
        if taken is None:
            return None
        start, n = taken
        lane = self.free_lanes.pop()
        window, capacity = self.store.window(lane, n * PAGE)
        codec = self.store.codec
        frames = protocol.job(1, n, codec.codec_id, codec.level, start % self.store.ring.capacity, window, capacity)
        job = Job(start, n, lane, window, capacity, frames)
        if compress:
            self.compress_job(job)
        return job

    def compress_job(self, job):
        msg = protocol.decode(job.frames)
        if msg.command == protocol.JOB:
            job.frames = self.compressor.compress(msg)

    def install(self, job):
        """Check and install a job's RESULT; returns the pages installed."""
        self.free_lanes.append(job.lane)
        ids, lens, offs, used = protocol.result_arrays(protocol.decode(job.frames), job.n, job.capacity, KNOWN_IDS)
        return self.store.install(job.start, job.n, ids, lens, job.window + offs, job.lane, job.window + used)

    def drain(self):
        """Send and install jobs until nothing is staged."""
        while (job := self.send()) is not None:
            self.install(job)
