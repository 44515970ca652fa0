"""PageStore.reader: the plugin's one-frame read path gives what PageStore.read gives, for
every kind of page, and a read that races a writer returns the whole new page.  (In-process:
the closure is plain Python over a real Device; the integration tests run it in nbdkit.)"""

import errno
import os
import random
import sys
import threading

import pytest
from helpers import page

from uzram.core.config import Config
from uzram.core.constants import COMPRESSED, EMPTY, HUGE, PENDING, SAME
from uzram.core.device import Device
from uzram.core.errors import CorruptPageError
from uzram.core.store import PageStore
from uzram.kcompressd.dispatcher import Dispatcher

P = 4096
TEXT = page(0, "text")


class Unstarted(Device):
    """A device whose store exists but whose dispatcher never starts, so staged pages stay queued."""

    def __init__(self, config):
        super().__init__(config, offload=Dispatcher)
        self.store = PageStore(config.size, self.codec, max_pending=config.max_pending)


def device(algorithm, pages=16):
    return Unstarted(Config(size=pages * P, algorithm=algorithm, workers=1, max_pending=64 * P).complete())


def nbdkit_pread(dev, general):
    return dev.store.reader(general, dev)


def fill_every_kind(dev):
    """Pages 0..5: never written, zero, same-filled, compressed, raw (huge), pending."""
    st = dev.store
    st.write(bytes(P), 1 * P)
    st.write(b"\x01\x02\x03\x04\x05\x06\x07\x08" * (P // 8), 2 * P)
    st.write(TEXT, 3 * P)
    st.write(os.urandom(P), 4 * P)
    st.stage(TEXT[::-1], 5 * P)
    assert [int(k) for k in st.kind[:6]] == [EMPTY, SAME, SAME, COMPRESSED, HUGE, PENDING]


def store_read(dev, offset, n):
    buf = bytearray(n)
    dev.store.read(buf, offset)
    return bytes(buf)


def call(pread, offset, n):
    buf = bytearray(n)
    pread(None, memoryview(buf), offset, 0)
    return bytes(buf)


@pytest.mark.parametrize("algorithm", ["lz4", "zstd", "lz4hc", "deflate"])
def test_every_kind_of_page_reads_as_the_store_reads_it(algorithm):
    dev = device(algorithm)
    fill_every_kind(dev)
    pread = nbdkit_pread(dev, dev.read)
    for p in range(8):
        assert call(pread, p * P, P) == store_read(dev, p * P, P), p
    assert dev.reads == 8 and dev.bytes_read == 8 * P
    # partial, unaligned and multi-page reads take the general path, with the same result
    for offset, n in ((3 * P + 100, 50), (2 * P - 7, P), (0, 8 * P), (5 * P + 1, P - 1)):
        assert call(pread, offset, n) == store_read(dev, offset, n)


def test_a_read_while_a_writer_holds_the_store_waits_for_its_result():
    dev = device("lz4")
    dev.store.write(TEXT, 0)
    pread = nbdkit_pread(dev, dev.read)
    got = []
    with dev.store.lock:            # a writer at work: the sequence number is odd
        reader = threading.Thread(target=lambda: got.append(call(pread, 0, P)))
        reader.start()
        reader.join(0.2)
        assert reader.is_alive()    # it went to the general path and waits for the lock
    reader.join(10)
    assert got == [TEXT]


class RacingBuffer:
    """nbdkit's buffer, except that the first copy into it lets a writer overwrite the page
    (as another thread could between the reader's look-up and its check)."""

    def __init__(self, dev, offset, new):
        self.data = bytearray(P)
        self._race = lambda: dev.store.write(new, offset)

    def __len__(self):
        return P

    def __setitem__(self, key, value):
        race, self._race = self._race, None
        self.data[key] = value
        if race is not None:
            race()


@pytest.mark.parametrize("old", [bytes(P), os.urandom(P), b"\x07" * P])
def test_a_page_overwritten_during_the_copy_is_read_again(old):
    dev = device("lz4")
    dev.store.write(old, 0)
    buf = RacingBuffer(dev, 0, TEXT)
    nbdkit_pread(dev, dev.read)(None, buf, 0, 0)
    assert bytes(buf.data) == TEXT


def test_a_corrupt_page_is_named_and_counted():
    dev = device("lz4")
    dev.store.write(TEXT, 0)
    word, n = int(dev.store.meta[0]), int(dev.store.clen[0])
    dev.store.arena.load(word, n)                          # it is there ...
    dev.store.arena.mm[word:word + n] = b"\xff" * n       # ... and now it is garbage
    errors = []

    def general(buf, offset):   # as the plugin's: tell nbdkit the errno, then re-raise
        try:
            dev.read(buf, offset)
        except CorruptPageError as e:
            errors.append(e.errno)
            raise

    with pytest.raises(CorruptPageError):
        nbdkit_pread(dev, general)(None, memoryview(bytearray(P)), 0, 0)
    assert errors == [errno.EIO] and dev.failed_reads == 1 and dev.reads == 0


def test_reads_racing_a_writer_thread_see_whole_pages():
    # CPython switches threads at calls and loop jumps, and numpy lets go of the GIL inside
    # large array operations: whole-device rewrites give the reader chances to run in the
    # middle of one, and it must still see only pages that were written.  Such a chance is
    # rare (with the sequence check disabled this failed in 1 of 7 runs), so the check's
    # logic is tested deterministically above, with RacingBuffer.
    npages = 2048
    contents = [TEXT, os.urandom(P), b"\x05" * P, bytes(P), TEXT[::-1]]
    dev = device("lz4", pages=npages)
    dev.store.write(contents[0] * npages, 0)
    pread = nbdkit_pread(dev, dev.read)
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            i += 1
            dev.store.write(contents[i % len(contents)] * npages, 0)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    w = threading.Thread(target=writer)
    w.start()
    try:
        rng = random.Random(1)
        seen = set()
        for _ in range(20000):
            got = call(pread, rng.randrange(npages) * P, P)
            assert got in contents
            seen.add(contents.index(got))
    finally:
        stop.set()
        w.join(10)
        sys.setswitchinterval(old)
    assert len(seen) > 1
