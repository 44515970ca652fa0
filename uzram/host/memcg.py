"""A memory cgroup with a limit far below what a process writes, so its pages go to swap.

Works with cgroup v2 (a cgroup2 mount whose ``cgroup.controllers`` lists ``memory``) and
with cgroup v1 (``/sys/fs/cgroup/memory``).  A process joins by writing its pid to
``cgroup.procs`` before it allocates: ``wrap(argv)`` returns a command line that does so and
then execs ``argv``.  ``remove()`` kills what is left in the cgroup and removes it; the
cgroup is always one this module created (its name starts with ``uzram-``).
"""

import os
import signal
import time

from uzram.core.errors import UzramError

V1_ROOT = "/sys/fs/cgroup/memory"
PREFIX = "uzram-"


class CgroupError(UzramError):
    """No usable memory cgroup controller, or the cgroup could not be made or removed."""


def _read(path):
    with open(path) as f:
        return f.read()


def _write(path, value):
    with open(path, "w") as f:
        f.write(str(value))


def _cgroup2_roots():
    try:
        mounts = _read("/proc/mounts").splitlines()
    except OSError:
        return []
    return [line.split()[1] for line in mounts if len(line.split()) > 2 and line.split()[2] == "cgroup2"]


def find_controller():
    """(version, root) of the memory controller: cgroup v2 preferred, else v1.  Raises CgroupError."""
    for root in _cgroup2_roots():
        try:
            if "memory" in _read(os.path.join(root, "cgroup.controllers")).split():
                return 2, root
        except OSError:
            continue
    if os.path.exists(os.path.join(V1_ROOT, "memory.limit_in_bytes")):
        return 1, V1_ROOT
    raise CgroupError("no memory cgroup controller (neither a cgroup2 mount with 'memory' nor "
                      f"{V1_ROOT}); boot with cgroup_enable=memory")


class MemoryCgroup:
    """A memory cgroup this process created; use as a context manager, or call remove()."""

    def __init__(self, path, version):
        self.path = path
        self.version = version

    @classmethod
    def create(cls, name, limit, *, swap=True):
        """Create ``uzram-NAME`` limited to ``limit`` bytes of RAM (swap unlimited, or none if not ``swap``)."""
        if os.geteuid() != 0:
            raise CgroupError("creating a memory cgroup needs root")
        version, root = find_controller()
        path = os.path.join(root, PREFIX + name)
        if version == 2:
            subtree = os.path.join(root, "cgroup.subtree_control")
            if "memory" not in _read(subtree).split():
                # Enabling the controller for children of the root is needed once; it is not undone,
                # because other cgroups may rely on it from then on.
                _write(subtree, "+memory")
        try:
            os.mkdir(path)
        except FileExistsError:
            raise CgroupError(f"{path} exists already (left over? remove it with rmdir)") from None
        except OSError as e:
            raise CgroupError(f"{path}: {e.strerror}") from None
        cg = cls(path, version)
        try:
            if version == 2:
                _write(cg.file("memory.max"), limit)
                if os.path.exists(cg.file("memory.swap.max")):
                    _write(cg.file("memory.swap.max"), "max" if swap else 0)
            else:
                _write(cg.file("memory.limit_in_bytes"), limit)
                if not swap:
                    _write(cg.file("memory.swappiness"), 0)
        except OSError as e:
            cg.remove()
            raise CgroupError(f"{path}: setting the limit failed: {e.strerror}") from None
        return cg

    def file(self, name):
        return os.path.join(self.path, name)

    @property
    def procs_file(self):
        return self.file("cgroup.procs")

    def add(self, pid):
        _write(self.procs_file, pid)

    def pids(self):
        try:
            return [int(p) for p in _read(self.procs_file).split()]
        except FileNotFoundError:
            return []

    def wrap(self, argv):
        """A command line that moves itself into this cgroup, then execs ``argv``."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', self.procs_file] + list(argv)

    def stat(self):
        """memory.stat as a dict of ints."""
        out = {}
        for line in _read(self.file("memory.stat")).splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                out[key] = int(value)
        return out

    def remove(self, timeout=10):
        """Kill any process left in the cgroup and remove it.  Idempotent; raises CgroupError."""
        if not os.path.isdir(self.path):
            return
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if time.monotonic() > deadline:
                    raise CgroupError(f"{self.path}: cannot remove: {e.strerror} (pids {pids})") from None
                time.sleep(0.05)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
