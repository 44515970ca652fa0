"""kcompressd: a compression worker process.

    python -m uzram.kcompressd --endpoint ipc://DIR/kcompressd.sock --index N --parent PID \\
        --ring-fd FD --ring-slots N --arena-fd FD --segment-bytes N

Connects a DEALER socket to the dispatcher's ROUTER, says READY, then answers each JOB
with one RESULT.  A JOB names slots of the pending ring and a window of the arena, both
shared memory inherited as descriptors: the worker maps the ring read-only, compresses
each slot that is not cancelled straight into the window, its blobs back to back, and
answers with their lengths and codec IDs.  It maps only the arena segments its windows
are in.

A RECOMPRESS job names blobs in the arena instead (words and lengths): the worker reads
each with ``pread`` from the arena's descriptor, decompresses it, compresses it again with
the job's secondary codecs (uzram.core.codecs.recompress_page) and writes what came out
smaller into its window.

Heartbeats go both ways (the zguide's Paranoid Pirate): the worker says HEARTBEAT after
a second without sending anything (during a long job too), and exits after PARENT_SILENCE
seconds without hearing from the dispatcher.  It never outlives the server: the kernel
kills it when the thread that spawned it dies (PR_SET_PDEATHSIG), and it also exits when
its parent changes.

Imports only the low layer (codecs, protocol, shm), never the store.
"""

import argparse
import collections
import ctypes
import mmap
import os
import signal
import sys
import time

import zmq

from . import protocol
from uzram.core import shm
from uzram.core.codecs import RAW_ID, SKIPPED, encoder, recompress_page, source_page
from uzram.core.constants import HUGE_THRESHOLD, PAGE_SIZE
from uzram.core.errors import UzramError

HEARTBEAT_INTERVAL = 1.0
PARENT_SILENCE = 10.0
PR_SET_PDEATHSIG = 1
MAX_MAPS = 8             # arena segments kept mapped (a worker writes in two lanes at most)


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def die_with_parent(parent):
    libc = _libc()
    if libc is not None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def set_title(index):
    title = f"uzram-kcompressd/{index}"
    try:
        import setproctitle
        setproctitle.setproctitle(title)
    except ImportError:
        pass
    libc = _libc()
    if libc is not None:
        libc.prctl(15, title.encode()[:15], 0, 0, 0)  # PR_SET_NAME: the 15-byte comm


class Compressor:
    """The worker's view of the shared memory, and the compression of one JOB."""

    def __init__(self, ring_fd, ring_slots, arena_fd, segment_bytes):
        size = ring_slots * PAGE_SIZE + shm.round_up(max(ring_slots, 1))
        self._ring = mmap.mmap(ring_fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        ring = memoryview(self._ring)
        self.pages = ring[:ring_slots * PAGE_SIZE]
        self.cancel = ring[ring_slots * PAGE_SIZE:ring_slots * PAGE_SIZE + ring_slots]
        self.slots = ring_slots
        self.arena_fd = arena_fd
        self.segment_bytes = segment_bytes
        self._maps = collections.OrderedDict()      # segment -> memoryview of its map
        self._codecs = {}
        self.beat = None                            # called between pages of a long job

    def _segment(self, seg):
        mv = self._maps.get(seg)
        if mv is None:
            m = mmap.mmap(self.arena_fd, self.segment_bytes, flags=mmap.MAP_SHARED,
                          offset=seg * self.segment_bytes)
            mv = self._maps[seg] = memoryview(m)
            while len(self._maps) > MAX_MAPS:
                self._maps.popitem(last=False)[1].release()
        else:
            self._maps.move_to_end(seg)
        return mv

    def codec(self, codec_id, level):
        key = (codec_id, level)
        codec = self._codecs.get(key)
        if codec is None:
            codec = self._codecs[key] = encoder(codec_id, level)
        return codec

    def compress(self, msg):
        """RESULT frames for a decoded JOB message."""
        p = protocol.job_params(msg)
        n = msg.count
        if p.slot + n > self.slots:
            raise UzramError(f"JOB slots {p.slot}..{p.slot + n} are outside the ring of {self.slots}")
        out = self._window(p.window, p.capacity)
        codec = self.codec(p.codec_id, p.level)
        compress, cid = codec.compress, codec.codec_id
        pages, cancel, beat = self.pages, self.cancel, self.beat
        ids = bytearray([protocol.SKIPPED]) * n     # until compressed
        lens = [0] * n
        pos = 0
        src = p.slot * PAGE_SIZE
        for i in range(n):
            if cancel[p.slot + i]:
                src += PAGE_SIZE
                continue        # overwritten, zeroed or trimmed since it was queued: skipped
            page = pages[src:src + PAGE_SIZE]
            src += PAGE_SIZE
            blob = compress(page)
            size = len(blob)
            if size >= HUGE_THRESHOLD:
                out[pos:pos + PAGE_SIZE] = page
                ids[i] = RAW_ID
                size = PAGE_SIZE
            else:
                out[pos:pos + size] = blob
                ids[i] = cid
            lens[i] = size
            pos += size          # the next blob starts where this one ends
            if beat is not None and not i & 15:
                beat()
        return protocol.result(msg.job, ids, lens)

    def _window(self, window, capacity):
        seg, off = divmod(window, self.segment_bytes)
        if off + capacity > self.segment_bytes:
            raise UzramError("JOB window crosses a segment boundary")
        return self._segment(seg)[off:off + capacity]

    def recompress(self, msg):
        """RECOMPRESSED frames for a decoded RECOMPRESS message."""
        p, words, lens, src_ids, src_prios = protocol.recompress_params(msg)
        out = self._window(p.window, p.capacity)
        codecs = [(prio, self.codec(cid, level)) for prio, cid, level in p.codecs]
        n = msg.count
        ids = bytearray(n)
        new_lens = [0] * n
        offs = [0] * n
        outcome = bytearray(n)
        pos = 0
        fd, beat = self.arena_fd, self.beat
        for i in range(n):
            try:
                page = source_page(os.pread(fd, lens[i], words[i]), src_ids[i])
            except UzramError:
                outcome[i] = SKIPPED      # its page was rewritten meanwhile: the install skips it anyway
                continue
            prio, cid, blob = recompress_page(page, lens[i], src_prios[i], codecs, p.threshold, p.auto)
            outcome[i] = prio
            if blob is not None:
                size = len(blob)
                if pos + size > p.capacity:
                    raise UzramError("RECOMPRESS window too small for its results")
                out[pos:pos + size] = blob
                ids[i], new_lens[i], offs[i] = cid, size, pos
                pos += size
            if beat is not None and not i & 15:
                beat()
        return protocol.recompressed(msg.job, ids, new_lens, offs, outcome)


def serve(compressor, endpoint, index, parent, clock=time.monotonic, silence=PARENT_SILENCE):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, f"w{index}-{os.getpid()}".encode())
    sock.connect(endpoint)
    sock.send_multipart(protocol.ready(index, os.getpid()))
    last_heard = last_sent = clock()

    def beat():
        nonlocal last_sent
        now = clock()
        if now - last_sent >= HEARTBEAT_INTERVAL:
            sock.send_multipart(protocol.heartbeat())
            last_sent = now

    compressor.beat = beat
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while True:
        if os.getppid() != parent:
            return 0
        events = dict(poller.poll(HEARTBEAT_INTERVAL * 1000))
        now = clock()
        if sock in events:
            frames = sock.recv_multipart(copy=False)
            last_heard = now
            try:
                msg = protocol.decode([f.buffer for f in frames])
            except UzramError as e:
                # Malformed.  If it names a job, fail that job, so it is sent again at once
                # (else it would wait for the dispatcher's deadline); anything else is dropped.
                job_id = None
                if frames:
                    job_id = protocol.peek_job(frames[0].buffer, protocol.JOB)
                    if job_id is None:
                        job_id = protocol.peek_job(frames[0].buffer, protocol.RECOMPRESS)
                if job_id is not None:
                    sock.send_multipart(protocol.failed(job_id, f"malformed JOB: {e}"))
                    last_sent = clock()
                continue
            if msg.command in (protocol.JOB, protocol.RECOMPRESS):
                try:
                    reply = (compressor.compress if msg.command == protocol.JOB else compressor.recompress)(msg)
                except Exception as e:  # a failed compression fails the job, never the worker
                    reply = protocol.failed(msg.job, f"{type(e).__name__}: {e}")
                sock.send_multipart(reply)
                last_sent = clock()
        if now - last_heard > silence:
            return 0
        beat()


def main(argv=None):
    p = argparse.ArgumentParser(prog="uzram-kcompressd")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--ring-fd", type=int, required=True)
    p.add_argument("--ring-slots", type=int, required=True)
    p.add_argument("--arena-fd", type=int, required=True)
    p.add_argument("--segment-bytes", type=int, required=True)
    p.add_argument("--mlock", action="store_true")
    p.add_argument("--nice", type=int, default=0, help="nice(2) increment over the nbdkit process")
    p.add_argument("--silence", type=float, default=PARENT_SILENCE,
                   help="exit after this many seconds without a message from the dispatcher")
    args = p.parse_args(argv)
    die_with_parent(args.parent)
    set_title(args.index)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.nice:
        os.nice(args.nice)          # throughput work: request threads should win a contended CPU
    if args.mlock:
        shm.lock_all_on_fault()     # so swapping onto uzram cannot page the compressor out
    compressor = Compressor(args.ring_fd, args.ring_slots, args.arena_fd, args.segment_bytes)
    try:
        return serve(compressor, args.endpoint, args.index, args.parent, silence=args.silence)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
