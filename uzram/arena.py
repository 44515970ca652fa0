"""Compact storage for compressed pages: size classes on anonymous memory maps.

Like zsmalloc, every blob goes into a slot of the smallest size class that holds it
(classes are GRANULE bytes apart, so a blob wastes less than GRANULE bytes).  Each class
keeps its slots back to back in one private anonymous mmap that grows with mremap (no
copy) and shrinks after compaction, so freed memory really goes back to the kernel and
the heap never fragments: no Python object exists per stored page.

Not thread-safe: the store calls it under its own lock.
"""

import mmap

import numpy as np

from .constants import PAGE_SIZE

GRANULE = 16
NCLASSES = PAGE_SIZE // GRANULE + 1
_MAP_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
_GROW_BYTES = 256 * 1024  # headroom mapped (not touched, so not resident) per growth step


def class_of(nbytes):
    """Size-class index for a blob of ``nbytes`` (1..NCLASSES-1)."""
    return (nbytes + GRANULE - 1) // GRANULE


def slot_bytes(nbytes):
    return class_of(nbytes) * GRANULE


def _round_page(n):
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


class _SizeClass:
    __slots__ = ("size", "mm", "count", "free", "owner", "touched")

    def __init__(self, size):
        self.size = size
        self.mm = None          # slots [0, count) are in use or listed in ``free``
        self.count = 0
        self.free = []          # holes below count, reused last-freed first
        self.owner = np.empty(0, dtype=np.int64)  # page index per slot, -1 for a hole
        self.touched = 0        # bytes of the map that may be resident

    def alloc(self, page):
        if self.free:
            slot = self.free.pop()
        else:
            slot = self.count
            self.count += 1
            end = self.count * self.size
            if self.mm is None or end > len(self.mm):
                self._grow(end)
            if end > self.touched:
                self.touched = _round_page(end)
        self.owner[slot] = page
        return slot

    def _grow(self, end):
        new_len = _round_page(max(end + _GROW_BYTES, (len(self.mm) if self.mm else 0) * 9 // 8))
        if self.mm is None:
            self.mm = mmap.mmap(-1, new_len, flags=_MAP_FLAGS)
        else:
            self.mm.resize(new_len)
        slots = new_len // self.size
        owner = np.full(slots, -1, dtype=np.int64)
        owner[: len(self.owner)] = self.owner
        self.owner = owner

    def compact(self):
        """Move the highest slots into the holes, then give the tail back.

        Returns (pages moved, their new slots)."""
        holes = sorted(self.free)
        self.free = []
        owner, size, mm = self.owner, self.size, self.mm
        top = self.count - 1
        moved_pages, moved_slots = [], []
        for hole in holes:
            while top >= 0 and owner[top] < 0:
                top -= 1
            if hole >= top:
                break
            src = top * size
            mm[hole * size: hole * size + size] = mm[src: src + size]
            page = int(owner[top])
            owner[hole] = page
            owner[top] = -1
            moved_pages.append(page)
            moved_slots.append(hole)
            top -= 1
        while top >= 0 and owner[top] < 0:
            top -= 1
        self.count = top + 1
        self._shrink()
        return moved_pages, moved_slots

    def _shrink(self):
        if self.count == 0:
            if self.mm is not None:
                self.mm.close()
            self.mm = None
            self.owner = np.empty(0, dtype=np.int64)
            self.touched = 0
            return
        end = _round_page(self.count * self.size)
        if end < len(self.mm):
            self.mm.resize(end)
            self.owner = self.owner[: end // self.size].copy()
        self.touched = min(self.touched, end)


class Arena:
    """Blobs of 1..PAGE_SIZE bytes addressed by (size class, slot)."""

    def __init__(self):
        self._classes = [_SizeClass(i * GRANULE) for i in range(NCLASSES)]
        self.used_bytes = 0  # sum of the slot sizes in use

    def store(self, blob, page):
        """Copy ``blob`` into a new slot owned by ``page``; returns the slot."""
        n = len(blob)
        cls = self._classes[class_of(n)]
        slot = cls.alloc(page)
        off = slot * cls.size
        cls.mm[off: off + n] = blob
        self.used_bytes += cls.size
        return slot

    def load(self, nbytes, slot):
        """The ``nbytes`` stored at ``slot`` of the class for ``nbytes``, as bytes."""
        cls = self._classes[class_of(nbytes)]
        off = slot * cls.size
        return cls.mm[off: off + nbytes]

    def release(self, nbytes, slot):
        cls = self._classes[class_of(nbytes)]
        cls.owner[slot] = -1
        cls.free.append(slot)
        self.used_bytes -= cls.size

    @property
    def held_bytes(self):
        """Bytes of memory the arena may have resident: slots in use, holes, page rounding."""
        return sum(c.touched for c in self._classes)

    @property
    def hole_bytes(self):
        return sum(len(c.free) * c.size for c in self._classes)

    def fragmented_classes(self, min_bytes=256 * 1024, min_share=0.125):
        """Classes whose holes are worth compacting."""
        out = []
        for i, c in enumerate(self._classes):
            hole = len(c.free) * c.size
            if hole >= min_bytes and hole >= min_share * c.count * c.size:
                out.append(i)
        return out

    def compact(self, classes=None):
        """Compact the given classes (all by default).

        Returns (pages moved, their new slots, bytes given back)."""
        before = self.held_bytes
        pages, slots = [], []
        for i in range(NCLASSES) if classes is None else classes:
            c = self._classes[i]
            if c.free:
                p, s = c.compact()
                pages += p
                slots += s
        return pages, slots, before - self.held_bytes
