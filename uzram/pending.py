"""The pending area: raw copies of pages queued for kcompressd, in one private map.

A page written while workers run is copied here (one slot of 4 KiB) and stays readable
from here until its compressed form is installed, or until it is overwritten, zeroed or
trimmed.  The area has a fixed number of slots (max_pending); when it has too few free
slots the writer compresses inline instead of waiting.

Not thread-safe: the store calls it under its own lock.
"""

import mmap

import numpy as np

from .constants import PAGE_SIZE


class PendingArea:
    GIVE_BACK = 1 << 20   # an emptied area this big or more returns its memory to the kernel

    def __init__(self, max_bytes):
        self.capacity = max_bytes // PAGE_SIZE
        self._mm = None
        self.pages = None  # (capacity, 4096) uint8 view of the map
        self.mv = None     # the map as a flat memoryview (slot s at s * 4096)
        if self.capacity:
            self._mm = mmap.mmap(-1, self.capacity * PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            self.pages = np.frombuffer(self._mm, dtype=np.uint8).reshape(self.capacity, PAGE_SIZE)
            self.mv = memoryview(self._mm)
        # Free slots as a stack; low slots first, so a lightly used area touches little memory.
        self._free = list(range(self.capacity - 1, -1, -1))
        self.touched = 0  # highest slot ever used + 1: pages of the map that may be resident

    @property
    def used(self):
        return self.capacity - len(self._free)

    @property
    def held_bytes(self):
        return self.touched * PAGE_SIZE

    def alloc(self, n):
        """``n`` slots as a list, or None when fewer are free."""
        free = self._free
        if len(free) < n:
            return None
        slots = free[len(free) - n:]
        del free[len(free) - n:]
        top = max(slots) + 1
        if top > self.touched:
            self.touched = top
        return slots

    def release(self, slots):
        self._free.extend(slots)
        if len(self._free) == self.capacity and self.touched * PAGE_SIZE >= self.GIVE_BACK:
            self.give_back()

    def give_back(self):
        """The area is empty: return its memory to the kernel (the map stays)."""
        try:
            self._mm.madvise(mmap.MADV_DONTNEED, 0, self.touched * PAGE_SIZE)
        except OSError:
            return  # locked in memory (nbdkit --swap): keep it
        self._free = list(range(self.capacity - 1, -1, -1))
        self.touched = 0
