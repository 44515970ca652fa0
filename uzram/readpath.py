"""The read request path, in one Python frame.

A 4 KiB read at a page boundary (swap-in, random reads: the latency-bound request) costs
the bare plugin one frame and one copy.  Through Device.read, PageStore.read and the
codec, uzram paid five frames, the store's lock, and for a raw page an extra allocation
and copy.  Timed inside nbdkit by a scratch timer, with the interpreter's caches as cold
as requests leave them, a never-written page took 6.9 us that way, 3.1 us through this
closure, and 3.3 us in the bare plugin.

So the plugin's ``pread`` is this closure.  It looks the page up and fills nbdkit's
buffer itself, without the lock: it notes the store lock's sequence number (odd while a
writer holds the lock), copies, and keeps the copy only if the number is the same even
one afterwards.  Otherwise (a writer was at work), and for anything but a whole aligned
page or on a decoding failure, the read goes to ``general`` (Device.read, which takes the
lock, has the general code, and names and counts errors).

Compressed blobs are copied out and decompressed only after the
check, so a decoder never sees bytes that a writer is changing.  tests/unit/test_readpath.py
checks the closure against PageStore.read for every kind of page and with a writer racing
the copy.
"""

from .arena import OFF_MASK, SEG_SHIFT
from .constants import COMPRESSED, EMPTY, HUGE, PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, SAME, WORDS_PER_PAGE

ZERO_PAGE = bytes(PAGE_SIZE)


def nbdkit_pread(device, general):
    """nbdkit's ``pread(h, buf, offset, flags)`` over ``device``.  ``general(buf, offset)``
    serves every read this path does not: Device.read behind the plugin's error mapping."""
    store = device.store
    lock = store.lock
    kind, codec, clen, meta = store._kind, store._codec, store._clen, store._meta
    maps = store.arena._maps        # segment id -> mmap (the list is changed in place)
    pending = store.pending.mv
    decoders = store.page_decoders  # codec ID -> decompress(blob) of one page
    last = store.size - PAGE_SIZE

    def pread(h, buf, offset, flags):
        if offset & PAGE_MASK or offset > last or len(buf) != PAGE_SIZE:
            return general(buf, offset)
        p = offset >> PAGE_SHIFT
        seq = lock.seq
        try:
            k = kind[p]
            if k == COMPRESSED:
                w = meta[p]
                o = w & OFF_MASK
                blob = maps[w >> SEG_SHIFT][o:o + clen[p]]
                dec = decoders[codec[p]]
            elif k == EMPTY:
                buf[:] = ZERO_PAGE
            elif k == HUGE:
                w = meta[p]
                o = w & OFF_MASK
                buf[:] = maps[w >> SEG_SHIFT][o:o + PAGE_SIZE]
            elif k == SAME:
                v = meta[p]
                buf[:] = v.to_bytes(8, "little") * WORDS_PER_PAGE if v else ZERO_PAGE
            else:   # PENDING
                s = meta[p] << PAGE_SHIFT
                buf[:] = pending[s:s + PAGE_SIZE]
        except Exception:
            # A writer changed the page under us (a segment unmapped, a stale location):
            # the check below sends the read to the general path.
            seq = -1
        if seq & 1 or lock.seq != seq:
            return general(buf, offset)
        if k == COMPRESSED:
            try:
                buf[:] = dec(blob)
            except Exception:
                # A corrupt blob or an unknown codec: the general path decodes it again
                # and raises the error that names the problem.
                return general(buf, offset)
        device.reads += 1
        device.bytes_read += PAGE_SIZE

    return pread
