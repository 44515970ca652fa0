"""Compact storage for compressed pages: segments of one shared file, written by whoever compresses.

The arena is one memfd (uzram.shm) of fixed-size segments, mapped whole by the nbdkit
process.  Its address range is twice the device plus some slack, but memory is used only
where blobs are.  A page's location in the page table is its byte offset in the file
(a "word"); its length is in the page table too.

A segment is written by one writer at a time, always appending:

- the **head**, the nbdkit process's own segment: inline writes, partial pages the
  dispatcher compressed itself, and cleaning copy their blobs there (``append``);
- **lanes**, one per worker and credit slot: a kcompressd worker writes the blobs of a job
  straight into a window of its lane's segment, and the RESULT says where each blob is.
  ``window`` grants the space before the job is sent (enough for every page raw), and
  ``adopt`` takes the blobs over once the result has been checked and installed: the
  nbdkit process never copies a compressed byte from a worker.

Freeing a page only lowers its segment's live-byte count.  A sealed segment (no longer a
head or a lane) whose live count reaches zero is punched out of the file at once, so the
memory really goes back to the kernel.  Overwrites leave dead bytes in older segments;
``victims`` chooses segments for cleaning (zram would say compact).  Blobs are packed
exactly, so there is no size-class slack; the only overhead is dead bytes awaiting
cleaning and the page rounding of each segment's tail.

Not thread-safe: the store calls it under its own lock.
"""

import numpy as np

from .errors import NoSpaceError
from .shm import SharedFile, round_up

SEGMENT_BYTES = 1 << 20
FREE, OPEN, SEALED = 0, 1, 2


def capacity_for(size, lanes=0, segment_bytes=SEGMENT_BYTES):
    """Address space for a device of ``size`` bytes: every page stored raw, as much again
    of dead bytes before cleaning must run, a segment for each of ``lanes`` (held open by
    the workers) and for the head, and 64 MiB of slack.  Only touched pages use memory."""
    return round_up(2 * size + (64 << 20), segment_bytes) + (lanes + 1) * segment_bytes


class Arena:
    """With ``lock`` (a device locked in memory, for swap), each segment is locked whole in
    this process's map when it is taken, before any worker writes it.  Locking on fault
    would not do: a worker writes blobs through its own map and this process touches them
    only when it reads them, so they could be swapped out onto this very device.  An open
    segment is then resident whole (counted in ``open_slack`` until it is sealed, when its
    unwritten tail is punched out)."""

    def __init__(self, capacity, segment_bytes=SEGMENT_BYTES, lock=False):
        self.segment_bytes = segment_bytes
        self.nsegments = max(2, -(-capacity // segment_bytes))
        self.file = SharedFile("arena", self.nsegments * segment_bytes)
        self.lock = lock
        self.open_slack = 0                         # locked, unwritten bytes of open segments
        if lock:
            self.file.unlock_all()
        self.mm = self.file.mm
        self.mv = memoryview(self.mm)
        n = self.nsegments
        self.fill = np.zeros(n, dtype=np.int64)     # segment -> bytes written (appended or adopted)
        self.live = np.zeros(n, dtype=np.int64)     # segment -> bytes of live blobs
        self.state = np.zeros(n, dtype=np.uint8)    # FREE, OPEN or SEALED
        self._live = memoryview(self.live)          # scalar views (a Python int per access)
        self._fill = memoryview(self.fill)
        self._state = memoryview(self.state)
        self._free = list(range(n - 1, -1, -1))     # low segments first
        self.head = -1
        self.lanes = {}                             # lane key -> segment
        self.busy = set()                           # lanes with a window out (a worker may write there)
        self.used_bytes = 0                         # live blob bytes
        self.held_bytes = 0                         # written bytes of mapped segments, page rounded
        # Memory a failed punch left allocated, by segment: held all the same, so counted in
        # stuck_bytes until the segment's next writes reuse it or a later punch gives it back.
        self._stuck = {}
        self._stuck_free = set()                    # free segments among them, taken first
        self._frees = 0                             # segments freed so far
        self._retry_failed_at = None                # _frees when a retry's punch last failed
        self.stuck_bytes = 0

    @property
    def counted_bytes(self):
        """What the arena holds, as mem_used_total counts it: written bytes, a locked
        arena's unwritten open segments, and what failed punches left."""
        return self.held_bytes + self.open_slack + self.stuck_bytes

    # ------------------------------------------------------------- segments

    def _take(self):
        if not self._free:
            raise NoSpaceError(f"the arena's {self.nsegments} segments are all in use")
        # a free segment a punch left allocated is used first (rare)
        seg = next(iter(self._stuck_free)) if self._stuck_free else self._free[-1]
        if self.lock:       # (before the segment leaves the free list: a failed mlock loses none)
            self.file.lock(seg * self.segment_bytes, self.segment_bytes)
            self.open_slack += self.segment_bytes
        if seg == self._free[-1]:
            self._free.pop()
        else:
            self._free.remove(seg)
        self._stuck_free.discard(seg)
        if self._stuck and seg in self._stuck and self.lock:
            self._unstick(seg, self._stuck[seg])   # open_slack counts the whole segment now
        self._state[seg] = OPEN
        self._fill[seg] = 0
        self._live[seg] = 0
        return seg

    def _seal(self, seg):
        self._state[seg] = SEALED
        if self.lock:
            size, tail = self.segment_bytes, round_up(self._fill[seg])
            if not self.file.punch(seg * size + tail, size - tail):     # never to be written now
                self._stick(seg, size - tail)
            self.open_slack -= size - tail
        if self._live[seg] == 0:
            self._free_segment(seg)

    def _free_segment(self, seg):
        size = self.segment_bytes
        held = round_up(self._fill[seg])
        if self.file.punch(seg * size, size):
            if self._stuck and seg in self._stuck:
                self._unstick(seg, self._stuck[seg])
        else:
            self._stick(seg, held)
            if seg in self._stuck:
                self._stuck_free.add(seg)
        self.held_bytes -= held
        self._frees += 1
        self._state[seg] = FREE
        self._fill[seg] = 0
        self._live[seg] = 0
        self._free.append(seg)

    def _grow(self, seg, end):
        """Segment ``seg`` is now written up to ``end`` (an offset inside it)."""
        old = self._fill[seg]
        if end > old:
            self._fill[seg] = end
            grown = round_up(end) - round_up(old)
            self.held_bytes += grown
            if self.lock:
                self.open_slack -= grown
            elif self._stuck and seg in self._stuck:
                self._unstick(seg, min(grown, self._stuck[seg]))    # written over what was held

    def _stick(self, seg, nbytes):
        if nbytes > 0:
            self._stuck[seg] = self._stuck.get(seg, 0) + nbytes
            self.stuck_bytes += nbytes

    def retry_stuck(self, again=True):
        """Punch again the free segments a failed punch left allocated.  Returns the bytes
        given back.  ``again=False`` (a write short of room under mem_limit): not when the
        last try failed and no segment was freed since."""
        if not self._stuck_free or (not again and self._retry_failed_at == self._frees):
            return 0
        freed = 0
        self._retry_failed_at = None
        for seg in list(self._stuck_free):
            if self.file.punch(seg * self.segment_bytes, self.segment_bytes):
                freed += self._stuck[seg]
                self._unstick(seg, self._stuck[seg])
                self._stuck_free.discard(seg)
            else:
                self._retry_failed_at = self._frees
        return freed

    def _unstick(self, seg, nbytes):
        left = self._stuck[seg] - nbytes
        if left > 0:
            self._stuck[seg] = left
        else:
            del self._stuck[seg]
        self.stuck_bytes -= nbytes

    # ------------------------------------------------------------- the head

    def append(self, packed, nbytes=None):
        """Copy ``packed`` (blobs back to back) to the head; returns the word of its first
        byte.  The caller then calls ``add_live`` for the bytes of live pages."""
        n = len(packed) if nbytes is None else nbytes
        size = self.segment_bytes
        head = self.head
        if head < 0 or self._fill[head] + n > size:
            if n > size:
                raise ValueError(f"{n} bytes do not fit in one segment")
            new = self._take()
            if head >= 0:
                self._seal(head)
            head = self.head = new
        off = self._fill[head]
        word = head * size + off
        self.mm[word:word + n] = packed
        self._grow(head, off + n)
        return word

    def check_room(self, groups, freed=0):
        """Raise NoSpaceError unless ``append`` can take, one after the other, blobs packed
        in ``groups`` (their sizes in bytes, each at most a segment), once ``freed`` more
        segments are free (``segments_freed_by``): so that a request fails before it
        changes anything, not half way."""
        size = self.segment_bytes
        fill = self._fill[self.head] if self.head >= 0 else size
        need = 0
        for n in groups:
            if fill + n > size:
                need += 1
                fill = n
            else:
                fill += n
        if need > len(self._free) + freed:
            raise NoSpaceError(f"the arena's {self.nsegments} segments are all in use")

    def segments_freed_by(self, words, lens):
        """How many segments ``release_many(words, lens)`` would free (sealed ones left with
        no live bytes)."""
        segs = (words // self.segment_bytes).astype(np.int64)
        uniq, inverse = np.unique(segs, return_inverse=True)
        left = self.live[uniq] - np.bincount(inverse, weights=lens).astype(np.int64)
        return int(np.count_nonzero((left == 0) & (self.state[uniq] == SEALED)))

    @property
    def free_segments(self):
        return len(self._free)

    def add_live(self, word, nbytes):
        seg = word // self.segment_bytes
        self._live[seg] += nbytes
        self.used_bytes += nbytes

    def seal_head(self):
        """Stop appending to the head (the next append starts a new segment), so that it can
        be cleaned like any other."""
        old, self.head = self.head, -1
        if old >= 0:
            self._seal(old)

    # ------------------------------------------------------------- lanes

    def window(self, lane, need):
        """Space for a worker's job in lane ``lane``: (word, capacity).  The lane moves to a
        fresh segment when its own has less than ``need`` bytes left."""
        size = self.segment_bytes
        if need > size:
            raise ValueError(f"a window of {need} bytes does not fit in one segment")
        seg = self.lanes.get(lane)
        if seg is None or self._fill[seg] + need > size:
            new = self._take()
            if seg is not None:
                self._seal(seg)
            seg = self.lanes[lane] = new
        self.busy.add(lane)
        return seg * size + self._fill[seg], need

    def adopt(self, lane, end_word, live_bytes):
        """The lane's segment holds a checked result up to ``end_word``, ``live_bytes`` of it
        belonging to live pages (installed by the caller)."""
        seg = self.lanes[lane]
        self.busy.discard(lane)
        self._grow(seg, end_word - seg * self.segment_bytes)
        self._live[seg] += live_bytes
        self.used_bytes += live_bytes

    def abandon(self, lane):
        """A job in ``lane`` will not be adopted (its worker died, failed it or answered
        badly): give back whatever it may have written past the lane's fill."""
        self.busy.discard(lane)
        seg = self.lanes.get(lane)
        if seg is not None:
            size = self.segment_bytes
            fill = round_up(self._fill[seg])
            punched = self.file.punch(seg * size + fill, size - fill)
            if not self.lock:       # (locked, the whole segment is counted in open_slack)
                # what an earlier failed punch left of this segment lies past the fill too
                stuck = 0 if punched else size - fill
                # failed: the worker may have written up to the segment's end; count all of
                # it, until the lane's next writes or the segment's free give it back
                self.stuck_bytes += stuck - self._stuck.pop(seg, 0)
                if stuck:
                    self._stuck[seg] = stuck
            if self.lock:
                self.file.lock(seg * size, size)        # resident and locked again, for the next job

    def lane_segments(self):
        return set(self.lanes.values())

    def seal_idle_lanes(self):
        """Seal the segments of lanes no window is out in (the lane takes a fresh segment
        with its next window), so that cleaning can take them."""
        for lane in [lane for lane in self.lanes if lane not in self.busy]:
            self._seal(self.lanes.pop(lane))

    # ------------------------------------------------------------- reading

    def load(self, word, nbytes):
        """The ``nbytes`` at ``word``, as bytes (a copy)."""
        return self.mm[word:word + nbytes]

    # ------------------------------------------------------------- freeing

    def release_many(self, words, lens):
        """Free blobs given their words and lengths (numpy arrays)."""
        segs = (words // self.segment_bytes).astype(np.int64)
        lens = lens.astype(np.int64)
        uniq, inverse = np.unique(segs, return_inverse=True)
        self.live[uniq] -= np.bincount(inverse, weights=lens).astype(np.int64)
        self.used_bytes -= int(lens.sum())
        empty = uniq[(self.live[uniq] == 0) & (self.state[uniq] == SEALED)]
        for seg in empty.tolist():
            self._free_segment(seg)

    def release_one(self, word, nbytes):
        """Free one blob (the scalar form of release_many)."""
        seg = word // self.segment_bytes
        live = self._live[seg] - nbytes
        self._live[seg] = live
        self.used_bytes -= nbytes
        if live == 0 and self._state[seg] == SEALED:
            self._free_segment(seg)

    # ------------------------------------------------------------- cleaning

    @property
    def dead_bytes(self):
        return self.held_bytes - self.used_bytes

    @property
    def segments(self):
        return self.nsegments - len(self._free)

    def victims(self, target_dead, max_live_share=0.75):
        """Segments to clean, emptiest first, until the dead bytes left would be under
        ``target_dead``.  Sealed segments and the head are candidates (the caller seals the
        head if chosen); lanes are not, a worker may be writing there."""
        cand = np.flatnonzero(self.state != FREE)
        lanes = self.lane_segments()
        if lanes:
            cand = cand[~np.isin(cand, np.fromiter(lanes, dtype=np.int64, count=len(lanes)))]
        if not len(cand):
            return []
        fill = self.fill[cand]
        live = self.live[cand]
        dead = fill - live
        order = np.argsort(live / np.maximum(fill, 1), kind="stable")
        out, remaining = [], self.dead_bytes
        for i in order.tolist():
            if remaining <= target_dead or dead[i] <= 0:
                break
            if live[i] > max_live_share * fill[i]:
                break     # copying a mostly-live segment buys little
            out.append(int(cand[i]))
            remaining -= int(dead[i])
        return out

    def close(self):
        self.mv.release()
        self.file.close()
