"""Shared memory for the hand-off to kcompressd: anonymous files (memfd) mapped MAP_SHARED.

The pending ring and the arena live in memfds.  The nbdkit process maps each one whole;
kcompressd workers inherit the descriptors when they are spawned and map what they need
(the ring read-only, their output segments of the arena read-write).  A memfd has no
name in any file system, so nothing is left behind: its memory goes back to the kernel
when the last descriptor and mapping are gone, which includes SIGKILL of everyone.

Memory is allocated only where a page is touched, and ``punch`` gives a range back at
once (fallocate PUNCH_HOLE), also where the range is mapped and locked in memory.

Imports nothing from uzram but constants and errors.
"""

import ctypes
import mmap
import os
import weakref

from .constants import PAGE_SIZE
from .errors import UzramError

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_fallocate.restype = ctypes.c_int
_mlockall = _libc.mlockall
_mlockall.argtypes = [ctypes.c_int]
_mlockall.restype = ctypes.c_int
_mlock = _libc.mlock
_mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_mlock.restype = ctypes.c_int
_munlock = _libc.munlock
_munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_munlock.restype = ctypes.c_int


def round_up(n, to=PAGE_SIZE):
    return (n + to - 1) // to * to


def round_down(n, to=PAGE_SIZE):
    return n // to * to


def punch_hole(fd, offset, length):
    """fallocate(PUNCH_HOLE | KEEP_SIZE) over the whole pages inside [offset, offset + length)
    of file ``fd``: they read as zeros and hold no memory or disk.  Raises OSError."""
    start, end = round_up(offset), round_down(offset + length)
    if end > start and _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start, end - start):
        err = ctypes.get_errno()
        raise OSError(err, f"fallocate(PUNCH_HOLE): {os.strerror(err)}")


class SharedFile:
    """A memfd of ``size`` bytes, mapped whole and shared: ``mm`` (the mmap) and ``fd``."""

    def __init__(self, name, size):
        self.size = size
        self.fd = os.memfd_create(f"uzram-{name}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            self.mm = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED)
        except OSError as e:
            os.close(self.fd)
            raise UzramError(f"cannot map {size} bytes of shared memory for {name}: {e.strerror}") from None
        # the descriptor keeps the memory alive: close it with the object, if not before
        self._close_fd = weakref.finalize(self, os.close, self.fd)
        self._ro_fd = self._close_ro_fd = None
        self.punch_failures = 0
        self.log = None             # a RateLimitedLog (the device's), told of failed punches
        self.name = name

    def read_only_fd(self):
        """A second descriptor of the file, opened read-only (made once, closed with the
        object): what a process that must only read it is given, so that it cannot map
        the file writable, by mistake or by a bug."""
        if self._ro_fd is None:
            self._ro_fd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)
            self._close_ro_fd = weakref.finalize(self, os.close, self._ro_fd)
        return self._ro_fd

    def _address(self):
        probe = ctypes.c_char.from_buffer(self.mm)
        try:
            return ctypes.addressof(probe)
        finally:
            del probe

    def lock(self, offset, length):
        """mlock [offset, offset + length) of this map: every page of it is allocated now
        and stays in memory, whichever process writes it."""
        if _mlock(self._address() + offset, length):
            err = ctypes.get_errno()
            raise OSError(err, f"mlock: {os.strerror(err)}")

    def unlock_all(self):
        """No page of this map is locked (not even on fault, as mlockall(MCL_FUTURE) would
        have it), until ``lock`` says otherwise."""
        _munlock(self._address(), self.size)

    def punch(self, offset, length):
        """Give the whole pages inside [offset, offset + length) back to the kernel; True
        when they went.  Nothing relies on them reading as zeros afterwards: a punch only
        gives memory back, so one that fails is counted (``punch_failures``) and logged,
        not raised in the middle of the caller's locked step, and the caller keeps counting
        the memory as held (False)."""
        try:
            punch_hole(self.fd, offset, length)
            return True
        except OSError as e:
            self.punch_failures += 1
            if self.log is not None:
                self.log.event("shared-punch", f"{self.name}: giving memory back (fallocate PUNCH_HOLE): "
                               f"{e.strerror}; the memory stays held and counted until it is used again")
            return False

    def allocated(self):
        """Bytes of memory the file holds now (what the kernel allocated for it)."""
        return os.fstat(self.fd).st_blocks * 512

    def close(self):
        """Unmap and close.  Views of ``mm`` must be released first."""
        try:
            self.mm.close()
        except BufferError:
            pass            # a view still exists: the map goes with the last of them
        self._close_fd()
        if self._close_ro_fd is not None:
            self._close_ro_fd()


def set_thread_name(name):
    """Name the calling OS thread (its comm, 15 bytes), as top -H and perf show it."""
    _libc.prctl(15, name.encode()[:15], 0, 0, 0)     # PR_SET_NAME


def set_timer_slack(ns):
    """Let the calling thread's sleeps overrun by at most ``ns`` nanoseconds (the
    default is 50 us), so that a short sleep is as short as it says."""
    _libc.prctl(29, ns, 0, 0, 0)                     # PR_SET_TIMERSLACK


def locked_in_memory():
    """True when this process has memory locked (nbdkit --swap calls mlockall)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmLck:"):
                    return int(line.split()[1]) > 0
    except OSError:
        pass
    return False


def lock_future_on_fault():
    """Lock future mappings page by page as they are touched, not whole when they are made.

    nbdkit --swap calls mlockall(MCL_CURRENT | MCL_FUTURE), which would fault in and lock
    every mapping made afterwards at once: the arena's whole address range, the pending
    ring, every thread stack.  With MCL_ONFAULT a page is locked when it is first used, so
    what is locked is what is used.  Current mappings keep their locks.  Returns True on
    success."""
    return _mlockall(MCL_FUTURE | MCL_ONFAULT) == 0


def lock_all_on_fault():
    """mlockall for a kcompressd worker: what is resident now and whatever it touches later."""
    return _mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0
