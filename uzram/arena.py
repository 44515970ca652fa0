"""Compact storage for compressed pages: a log of segments on anonymous memory maps.

Built for a batched writer: a batch of compressed pages (a kcompressd RESULT, or the
pages of one inline request) is appended to the head segment with ONE copy, blobs back
to back, and its pages' locations are set with numpy in one step — no Python work and
no Python object per page.  A page's location is (segment, offset), its length is in
the page table.

Freeing a page only lowers its segment's live-byte count (vectorized).  A segment whose
live count reaches zero is unmapped at once, so memory really goes back to the kernel.
Overwrites leave dead bytes in older segments; ``clean`` (zram would say compact) copies
the live blobs of the emptiest segments to the head and unmaps them.  Blobs are packed
exactly, so there is no size-class slack; the only overhead is dead bytes awaiting
cleaning and the page rounding of each segment's tail.

Not thread-safe: the store calls it under its own lock.
"""

import mmap

import numpy as np

from .constants import PAGE_SIZE

SEGMENT_BYTES = 1 << 20
_MAP_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
SEG_SHIFT = 32
OFF_MASK = (1 << SEG_SHIFT) - 1


def _round_page(n):
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def locate(seg, off):
    """The page-table word for a blob at ``off`` in segment ``seg``."""
    return (seg << SEG_SHIFT) | off


class Arena:
    def __init__(self, segment_bytes=SEGMENT_BYTES):
        self.segment_bytes = segment_bytes
        self._maps = []                        # segment id -> mmap, or None when free
        self._fill = []                        # segment id -> bytes appended
        self.live = np.zeros(0, dtype=np.int64)  # segment id -> live bytes
        self._free_ids = []
        self.head = -1
        self.used_bytes = 0                    # live blob bytes
        self.held_bytes = 0                    # touched bytes of mapped segments (page rounded)

    # ------------------------------------------------------------- appending

    def _new_segment(self, need):
        size = max(self.segment_bytes, _round_page(need))
        mm = mmap.mmap(-1, size, flags=_MAP_FLAGS)
        if self._free_ids:
            seg = self._free_ids.pop()
            self._maps[seg] = mm
            self._fill[seg] = 0
        else:
            seg = len(self._maps)
            self._maps.append(mm)
            self._fill.append(0)
            if seg >= len(self.live):
                live = np.zeros(max(16, 2 * len(self.live)), dtype=np.int64)
                live[: len(self.live)] = self.live
                self.live = live
        self.live[seg] = 0
        return seg

    def append(self, packed, nbytes=None):
        """Copy ``packed`` (blobs back to back) to the head; returns (segment, offset).

        The caller then calls ``add_live`` for the bytes that belong to live pages."""
        n = len(packed) if nbytes is None else nbytes
        head = self.head
        if head < 0 or self._fill[head] + n > len(self._maps[head]):
            old = head
            head = self.head = self._new_segment(n)
            if old >= 0 and self.live[old] == 0:
                self._release_segment(old)
        off = self._fill[head]
        self._maps[head][off: off + n] = packed
        before = _round_page(off)
        self._fill[head] = off + n
        self.held_bytes += _round_page(off + n) - before
        return head, off

    def add_live(self, seg, nbytes):
        self.live[seg] += nbytes
        self.used_bytes += nbytes

    # ------------------------------------------------------------- reading

    def load(self, word, nbytes):
        """The ``nbytes`` at page-table word ``word``, as bytes."""
        seg = word >> SEG_SHIFT
        off = word & OFF_MASK
        return self._maps[seg][off: off + nbytes]

    # ------------------------------------------------------------- freeing

    def release_many(self, words, lens):
        """Free blobs given their page-table words and lengths (numpy arrays)."""
        segs = (words >> SEG_SHIFT).astype(np.int64)
        lens = lens.astype(np.int64)
        uniq, inverse = np.unique(segs, return_inverse=True)
        self.live[uniq] -= np.bincount(inverse, weights=lens).astype(np.int64)
        self.used_bytes -= int(lens.sum())
        for seg in uniq[self.live[uniq] == 0].tolist():
            if seg != self.head:
                self._release_segment(seg)

    def release_one(self, word, nbytes):
        """Free one blob (the scalar form of release_many)."""
        seg = word >> SEG_SHIFT
        live = self.live[seg] - nbytes
        self.live[seg] = live
        self.used_bytes -= nbytes
        if live == 0 and seg != self.head:
            self._release_segment(seg)

    def _release_segment(self, seg):
        self.held_bytes -= _round_page(self._fill[seg])
        self._maps[seg].close()
        self._maps[seg] = None
        self._fill[seg] = 0
        self.live[seg] = 0
        self._free_ids.append(seg)

    # ------------------------------------------------------------- cleaning

    @property
    def dead_bytes(self):
        return self.held_bytes - self.used_bytes

    @property
    def segments(self):
        return sum(1 for m in self._maps if m is not None)

    def worth_cleaning(self, min_bytes=2 << 20, max_share=0.05):
        """True when dead bytes exceed both ``min_bytes`` and ``max_share`` of what is held."""
        dead = self.dead_bytes
        return dead >= min_bytes and dead > max_share * self.held_bytes

    def seal(self):
        """Stop appending to the head (the next append starts a new segment), so that it
        can be cleaned like any other.  An empty sealed head is unmapped."""
        old, self.head = self.head, -1
        if old >= 0 and self.live[old] == 0:
            self._release_segment(old)

    def victims(self, target_dead):
        """Segments to clean, emptiest first, until the dead bytes left would be under
        ``target_dead``.  The head is a candidate too: the caller seals it if chosen."""
        ids = [s for s, m in enumerate(self._maps) if m is not None]
        if not ids:
            return []
        ids = np.asarray(ids, dtype=np.int64)
        fill = np.asarray([self._fill[s] for s in ids.tolist()], dtype=np.int64)
        dead = fill - self.live[ids]
        order = np.argsort(self.live[ids] / np.maximum(fill, 1), kind="stable")
        out, remaining = [], self.dead_bytes
        for i in order.tolist():
            if remaining <= target_dead or dead[i] <= 0:
                break
            if self.live[ids[i]] > 0.75 * fill[i]:
                break     # copying a mostly-live segment buys little
            out.append(int(ids[i]))
            remaining -= int(dead[i])
        return out
