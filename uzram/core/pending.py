"""The pending ring: raw copies of pages queued for kcompressd, in memory shared with the workers.

A writer copies its pages that are not same-filled straight from nbdkit's buffer into
consecutive 4 KiB slots (one copy for the whole request), and the page table points at
the slots.  The pages stay readable from there until their compressed form is installed,
or until they are overwritten, zeroed or trimmed.  Workers map the ring read-only and
compress straight from it: a job is a range of slots, not page bytes.

Positions are counters that only grow; slot = position % capacity.  Three of them:

    tail <= sent <= head
    [tail, sent)   in jobs (sent to a worker, or being compressed), not yet retired
    [sent, head)   staged, not yet in a job

A writer reserves slots (``alloc``), fills them and points the page table at them, and
only then moves ``head`` (``publish``), all under the store lock.  The dispatcher reads
``head`` without the lock, so it never sees a slot before its page is in it.

A job never spans the end of the ring: a request that does not fit before the end starts
again at slot 0, and the slots it skipped are a gap (no page, cancelled).  Jobs retire in
any order; the tail moves over retired jobs in order, and only slots behind the tail are
used again, so a slot cannot be reused while a job that reads it is out.

Each slot has a cancel byte after the page slots, in the same shared file.  A queued page
that is overwritten, zeroed or trimmed sets its slot's byte, and a worker skips cancelled
slots even after the job was sent.  This process keeps its own copy of the bytes, and
decides from that copy alone (what a job still wants, whether an install may skip the
page-table check): nothing stored may depend on what a worker does, and a worker's
descriptor of the file is a read-only one (``SharedFile.read_only_fd``) only because
the dispatcher hands it that one.

Not thread-safe: the store calls it under its own lock.
"""

from array import array

import numpy as np

from .constants import PAGE_SIZE, PENDING
from .shm import SharedFile, round_up


class PendingRing:
    GIVE_BACK = 1 << 20   # an idle, empty ring holding this much or more returns it to the kernel

    def __init__(self, max_bytes):
        cap = max_bytes // PAGE_SIZE
        self.capacity = cap
        self.cancel_offset = cap * PAGE_SIZE
        self.file = SharedFile("pending", cap * PAGE_SIZE + round_up(max(cap, 1)))
        self.mv = memoryview(self.file.mm)                       # slot s at s * 4096
        self.pages = np.frombuffer(self.file.mm, np.uint8, cap * PAGE_SIZE).reshape(cap, PAGE_SIZE)
        self.cancel_flags = np.frombuffer(self.file.mm, np.uint8, cap, offset=self.cancel_offset)
        self.cancel = self.mv[self.cancel_offset:self.cancel_offset + cap]   # scalar access
        # this process's copy, which no worker can reach: see the module's docstring
        self._cancelled = bytearray(cap)
        self.cancelled = memoryview(self._cancelled)
        self.cancelled_flags = np.frombuffer(self._cancelled, np.uint8)
        self.slot_page = np.full(cap, -1, dtype=np.int64)       # slot -> page (-1: a gap)
        self.slot_pages = memoryview(self.slot_page)
        # Sources for the store's slice copies into the page table (slot numbers as its
        # meta column holds them, the PENDING kind), and a run of zero bytes: to compare
        # kinds with (all EMPTY) and cancel bytes with (none cancelled), and to clear them.
        self._slot_numbers = np.arange(cap, dtype=np.uint64)
        self.slot_numbers = memoryview(self._slot_numbers)
        self.pending_kinds = bytes([PENDING]) * cap
        self.zeros = memoryview(bytes(cap))
        self.ones = memoryview(b"\1" * cap)
        self.no_pages = memoryview(array("l", [-1]) * cap)      # for slot_pages: all gaps
        self.head = self.sent = self.tail = 0
        self.reserved = 0         # head once the slots being filled are published
        self._retired = {}        # start -> end of jobs retired ahead of the tail
        self._fresh = 0           # position from which slots are untouched (after a give-back)
        self._punch_failed_at = None  # the head when a give-back's punch last failed
        # A request may queue at most a quarter of the ring, so that one request never waits
        # for the whole ring to drain; its writer compresses the rest (PageStore.stage).
        self.max_request = max(1, cap // 4)

    @property
    def used(self):
        """Slots not yet reusable (staged, in jobs, or skipped as gaps)."""
        return self.head - self.tail

    @property
    def held_bytes(self):
        """Memory of slots touched since the last give-back."""
        return min(self.capacity, self.head - self._fresh) * PAGE_SIZE

    @property
    def filling(self):
        """True while slots are still being touched for the first time since the last give-back."""
        return self.reserved - self._fresh < self.capacity

    def alloc(self, n):
        """The first of ``n`` consecutive free slots, or None when the ring has no room.
        They start as gaps (no page, cancelled); the caller fills each one (its page, its
        ``slot_pages`` entry) and then clears its cancel bytes (``clear_cancel``), then calls
        ``publish``.  So a request that fails half way leaves gaps, which the next publish
        sends and every job skips, never slots that look queued."""
        cap = self.capacity
        head = self.reserved
        slot = head % cap
        gap = cap - slot if slot + n > cap else 0
        if head + gap + n - self.tail > cap:
            return None
        if gap:
            self.slot_page[slot:] = -1
            self.cancel[slot:] = self.cancelled[slot:] = b"\1" * gap
            slot = 0
            head += gap
        self.reserved = head + n
        self.cancel[slot:slot + n] = self.cancelled[slot:slot + n] = self.ones[:n]
        self.slot_pages[slot:slot + n] = self.no_pages[:n]
        return slot

    def clear_cancel(self, slot, n=1):
        """Slots [slot, slot + n) hold their pages now (see ``alloc``)."""
        self.cancel[slot:slot + n] = self.cancelled[slot:slot + n] = self.zeros[:n]

    def cancel_slot(self, slot):
        """The page queued in ``slot`` was overwritten, zeroed or trimmed: a worker skips it,
        even if its job was already sent, and no result is installed for it."""
        self.cancel[slot] = self.cancelled[slot] = 1

    def cancel_slots(self, slots):
        """``cancel_slot`` for an array of slots."""
        self.cancel_flags[slots] = self.cancelled_flags[slots] = 1

    def room(self):
        """The most slots ``alloc`` could give one request now."""
        cap = self.capacity
        free = cap - (self.reserved - self.tail)
        to_end = cap - self.reserved % cap          # slots before the ring wraps
        return max(min(to_end, free), free - to_end)

    def cost(self, n):
        """(bytes of memory, slots) that reserving ``n`` slots now would add: slots touched
        for the first time since the last give-back, and the slots including a gap."""
        cap = self.capacity
        head = self.reserved
        slot = head % cap
        gap = cap - slot if slot + n > cap else 0
        fresh = self._fresh
        grow = min(cap, head + gap + n - fresh) - min(cap, head - fresh)
        return max(0, grow) * PAGE_SIZE, gap + n

    def publish(self):
        """The slots reserved so far are filled: jobs may take them.  Returns the new head."""
        self.head = self.reserved
        return self.head

    def take(self, limit):
        """The next job's positions (start, count): at most ``limit`` staged slots, never past
        the end of the ring; None when nothing is staged."""
        start = self.sent
        avail = self.head - start
        if avail <= 0:
            return None
        n = min(avail, limit, self.capacity - start % self.capacity)
        self.sent = start + n
        return start, n

    def retire(self, start, n):
        """Slots [start, start + n) (positions) are done: installed, or cancelled."""
        end = start + n
        if start != self.tail:
            self._retired[start] = end
            return
        retired = self._retired
        while end in retired:
            end = retired.pop(end)
        self.tail = end

    def none_cancelled(self, start, n):
        """No slot of [start, start + n) is cancelled (nor a gap): each still holds the page
        staged in it, and that page is still queued there (a queued page leaves its slot
        only by being released, which cancels the slot)."""
        s = start % self.capacity
        return self.cancelled[s:s + n] == self.zeros[:n]

    def any_live(self, start, n):
        """Some slot of [start, start + n) still holds a queued page (no numpy when none
        was cancelled, the common case)."""
        return self.none_cancelled(start, n) or bool(self.live_slots(start, n).any())

    def live_slots(self, start, n):
        """Slots of [start, start + n) holding a page that is not cancelled (a bool array)."""
        s = start % self.capacity
        return (self.cancelled_flags[s:s + n] == 0) & (self.slot_page[s:s + n] >= 0)

    def give_back(self, again=True):
        """Return the slots' memory to the kernel when the ring is empty.  Returns bytes
        freed.  ``again=False`` (the idle give-back, every tick): not when the last try's
        punch failed and no page was staged since."""
        if self.head != self.tail or (not again and self._punch_failed_at == self.head):
            return 0
        held = self.held_bytes
        if held:
            if not self.file.punch(0, self.capacity * PAGE_SIZE):
                self._punch_failed_at = self.head
                return 0        # still held, and counted: the slots are used again as they are
            self._fresh = self.head
        self._punch_failed_at = None
        return held
