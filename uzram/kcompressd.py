"""kcompressd: a compression worker process.

    python -m uzram.kcompressd --endpoint ipc://DIR/kcompressd.sock --index N --parent PID

Connects a DEALER socket to the dispatcher's ROUTER, says READY, then answers each JOB
(a batch of raw pages) with one RESULT (codec IDs, lengths and blobs).  It never outlives
the server: the kernel kills it when the thread that spawned it dies (PR_SET_PDEATHSIG),
and it also exits when its parent changes or stays silent past the liveness interval.

Imports only the low layer (codecs, protocol), never the store.
"""

import argparse
import ctypes
import os
import signal
import sys
import time

import zmq

from . import protocol
from .codecs import compress_pages, encoder
from .constants import PAGE_SIZE
from .errors import UzramError

HEARTBEAT_INTERVAL = 1.0
PARENT_SILENCE = 30.0
PR_SET_PDEATHSIG = 1
MCL_CURRENT, MCL_FUTURE = 1, 2


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


def lock_memory():
    """Best effort mlockall, so swapping onto uzram cannot page the compressor out."""
    libc = _libc()
    if libc is None or libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
        return False
    return True


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


def compress_job(codecs, msg):
    """RESULT frames for a decoded JOB message."""
    codec_id, level = protocol.job_params(msg)
    key = (codec_id, level)
    codec = codecs.get(key)
    if codec is None:
        codec = codecs[key] = encoder(codec_id, level)
    raw = memoryview(msg.frames[2])
    ids, blobs = compress_pages(codec, (raw[i:i + PAGE_SIZE] for i in range(0, len(raw), PAGE_SIZE)))
    return protocol.result(msg.job, ids, blobs)


def serve(endpoint, index, parent, clock=time.monotonic):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, f"w{index}-{os.getpid()}".encode())
    sock.connect(endpoint)
    sock.send_multipart(protocol.ready(index, os.getpid()))
    codecs = {}
    last_heard = last_sent = clock()
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
            except UzramError:
                continue  # malformed: dropped (the dispatcher owns retries)
            if msg.command == protocol.JOB:
                try:
                    reply = compress_job(codecs, msg)
                except Exception as e:  # a failed compression fails the job, never the worker
                    reply = protocol.failed(msg.job, f"{type(e).__name__}: {e}")
                sock.send_multipart(reply, copy=False)
                last_sent = now
        elif now - last_heard > PARENT_SILENCE:
            return 0
        if now - last_sent >= HEARTBEAT_INTERVAL:
            sock.send_multipart(protocol.heartbeat())
            last_sent = now


def main(argv=None):
    p = argparse.ArgumentParser(prog="uzram-kcompressd")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--mlock", action="store_true")
    args = p.parse_args(argv)
    die_with_parent(args.parent)
    set_title(args.index)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.mlock:
        lock_memory()
    try:
        return serve(args.endpoint, args.index, args.parent)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
