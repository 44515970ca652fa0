"""The backing file: where written-back pages live (zram's ``backing_dev``).

A regular file or a block device, in blocks of one page.  A written-back page is stored
uncompressed in one block (as zram writes it back), so a read of it is one ``pread``.
Which blocks are in use is a bitmap kept here, in memory; the file's contents mean
nothing once the device stops.  A block that is freed (its page was overwritten,
trimmed or zeroed) is punched out of the file at once, so the file's allocated size
follows what it holds.  A punch that fails costs disk space, never data: the block is
already free in the bitmap (a freed block's old contents are never read again), so the
failure is counted (``punch_failures``) and logged, and the write, trim or zero that freed
the block goes on.

A file that does not exist is created sparse, as big as the device; an existing file of
size 0 is extended to that size; otherwise its own size (or the block device's) counts.
The file is locked (``flock``) so that two devices cannot write into one file.

Not thread-safe for ``reserve`` and ``release``: the store calls them under its lock.
``read_into`` and ``write`` may run outside it.
"""

import errno
import fcntl
import os
import stat

import numpy as np

from .constants import PAGE_SHIFT, PAGE_SIZE
from .errors import ConfigError, UzramError
from .shm import punch_hole



class BackingError(UzramError):
    """The backing file could not be opened, read or written."""


class BackingFile:
    def __init__(self, path, size, log=None):
        """Open (or create) ``path`` for a device of ``size`` bytes.  Raises ConfigError
        naming the path and the problem.  ``log`` (a RateLimitedLog) hears of failed punches."""
        self.path = os.path.abspath(path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise ConfigError(f"backing_dev: {path}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if stat.S_ISBLK(st.st_mode):
                nbytes = os.lseek(fd, 0, os.SEEK_END)
                self.is_block = True
            elif stat.S_ISREG(st.st_mode):
                self.is_block = False
                nbytes = st.st_size
                if nbytes == 0:
                    os.ftruncate(fd, size)
                    nbytes = size
            else:
                raise ConfigError(f"backing_dev: {path}: not a regular file or a block device")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"backing_dev: {path}: in use by another device (it is locked)") from None
            self.nblocks = nbytes >> PAGE_SHIFT
            if not self.nblocks:
                raise ConfigError(f"backing_dev: {path}: smaller than one page ({nbytes} bytes)")
        except OSError as e:
            os.close(fd)
            raise ConfigError(f"backing_dev: {path}: {e.strerror}") from None
        except ConfigError:
            os.close(fd)
            raise
        self.fd = fd
        self.used = np.zeros(self.nblocks, dtype=bool)
        self.count = 0              # blocks in use
        self._next = 0              # where the search for free blocks starts
        self._punch_works = True
        self.punch_failures = 0     # punches that failed (the blocks stay allocated on disk)
        self.log = log

    # ------------------------------------------------------------ blocks

    @property
    def free(self):
        return self.nblocks - self.count

    def reserve(self, n):
        """Up to ``n`` free blocks (an int64 array, ascending where it can), now in use."""
        n = min(n, self.free)
        if n <= 0:
            return np.zeros(0, dtype=np.int64)
        found = np.flatnonzero(~self.used[self._next:])[:n] + self._next
        if len(found) < n:
            found = np.concatenate([found, np.flatnonzero(~self.used[:self._next])[:n - len(found)]])
        self.used[found] = True
        self.count += len(found)
        self._next = int(found[-1]) + 1 if int(found[-1]) + 1 < self.nblocks else 0
        return found.astype(np.int64)

    def release(self, blocks):
        """Blocks (an array or a list of ints) no longer hold a page: free and punch them."""
        blocks = np.unique(np.asarray(blocks, dtype=np.int64))
        if not len(blocks):
            return
        self.used[blocks] = False
        self.count -= len(blocks)
        cuts = np.flatnonzero(np.diff(blocks) != 1) + 1
        for run in np.split(blocks, cuts):
            self._punch(int(run[0]), len(run))

    def release_one(self, block):
        self.used[block] = False
        self.count -= 1
        self._punch(block, 1)

    def _punch(self, block, n):
        if not self._punch_works:
            return
        try:
            punch_hole(self.fd, block << PAGE_SHIFT, n << PAGE_SHIFT)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                self._punch_works = False     # a file system or device without holes: blocks are reused
                return
            # Raising here would stop the request that freed the block half way through
            # its locked step; the block is free all the same, only its disk space stays.
            self.punch_failures += 1
            if self.log is not None:
                self.log.event("backing-punch", f"backing_dev {self.path}: punching out freed blocks: "
                                                f"{e.strerror}; they stay allocated on disk")

    # ------------------------------------------------------------ data

    def write(self, block, page):
        try:
            n = os.pwrite(self.fd, page, block << PAGE_SHIFT)
        except OSError as e:
            raise BackingError(f"backing_dev {self.path}: write of block {block}: {e.strerror}") from None
        if n != PAGE_SIZE:
            raise BackingError(f"backing_dev {self.path}: short write of block {block}")

    def read(self, block):
        data = os.pread(self.fd, PAGE_SIZE, block << PAGE_SHIFT)
        if len(data) != PAGE_SIZE:
            raise BackingError(f"backing_dev {self.path}: short read of block {block}")
        return data

    def allocated(self):
        """Bytes the file holds on disk (regular files; a block device says 0)."""
        return 0 if self.is_block else os.fstat(self.fd).st_blocks * 512

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

