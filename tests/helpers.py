"""Helpers shared by the tests: page generators, and kcompressd run in-process.

``InProcessKcompressd`` is the real worker code (uzram.kcompressd.Compressor) over a
store's real shared memory, driven the way the dispatcher drives it: jobs cut from the
pending ring, a window of a lane for each, RESULT frames checked by
``protocol.result_arrays`` and installed by the store.  Only the process boundary and
the socket are left out, so store tests can hold jobs, reorder them and race them.
"""

import random

import numpy as np

from uzram.kcompressd import protocol
from uzram.core.codecs import KNOWN_IDS
from uzram.kcompressd.worker import Compressor

PAGE = 4096


def page(seed, kind=None):
    """One 4 KiB page of ``kind``: zero, same (one 8-byte value), text, or random."""
    r = random.Random(seed)
    kind = kind or r.choice(["text", "text", "random", "same", "zero"])
    if kind == "zero":
        return bytes(PAGE)
    if kind == "same":
        return (r.getrandbits(64) | 1).to_bytes(8, "little") * (PAGE // 8)
    if kind == "text":
        return (f"{seed} lorem ipsum dolor sit amet, consectetur adipiscing elit " * 80).encode()[:PAGE]
    return r.randbytes(PAGE)


def read(store, offset, n):
    buf = bytearray(n)
    store.read(buf, offset)
    return bytes(buf)


class Job:
    def __init__(self, start, n, lane, window, capacity, frames):
        self.start, self.n, self.lane, self.window, self.capacity, self.frames = start, n, lane, window, capacity, frames


class InProcessKcompressd:
    def __init__(self, store, batch_pages=64, lanes=16):
        self.store = store
        ring, arena = store.ring, store.arena
        self.compressor = Compressor(ring.file.fd, ring.capacity, arena.file.fd, arena.segment_bytes)
        self.batch_pages = batch_pages
        self.free_lanes = list(range(lanes))

    def send(self, compress=True):
        """Cut the next job from the ring and compress it (unless ``compress`` is False:
        then ``compress_job`` does it later, as a worker that is slow to start).  Returns
        the Job, or None when nothing is staged."""
        taken = self.store.ring.take(self.batch_pages)
        if taken is None:
            return None
        start, n = taken
        lane = self.free_lanes.pop()
        window, capacity = self.store.window(lane, n * PAGE)
        codec = self.store.codec
        frames = protocol.job(1, n, codec.codec_id, codec.level, start % self.store.ring.capacity, window, capacity)
        job = Job(start, n, lane, window, capacity, frames)
        if compress:
            self.compress_job(job)
        return job

    def compress_job(self, job):
        msg = protocol.decode(job.frames)
        if msg.command == protocol.JOB:
            job.frames = self.compressor.compress(msg)

    def install(self, job):
        """Check and install a job's RESULT; returns the pages installed."""
        self.free_lanes.append(job.lane)
        ids, lens, offs = protocol.result_arrays(protocol.decode(job.frames), job.n, job.capacity, KNOWN_IDS)
        end = job.window + protocol.window_end(offs, lens)
        return self.store.install(job.start, job.n, ids, lens, (job.window + offs).astype(np.uint64), job.lane, end)

    def drain(self):
        """Send and install jobs until nothing is staged."""
        while (job := self.send()) is not None:
            self.install(job)
