"""A misbehaving kcompressd, started by the real dispatcher through ``python=`` (a wrapper
script execs this file with the worker's arguments).  Mode from $UZRAM_FAKE_MODE:

  badsize   first jobs answered with RESULT frames whose lengths do not add up
  garbage   sends junk frames, truncated headers and a wrong protocol version between results
  failed    answers the first jobs with FAILED
  wrongid   answers the first jobs with an unknown codec ID
  swapped   answers the first jobs with well-formed RESULTs whose blobs belong to other
            pages of the job (its pages compressed in reverse order)

After ``UZRAM_FAKE_BAD`` bad answers (default 3) it behaves like the real worker.  Every
answer that is not malformed (FAILED, swapped) fails only that job."""

import os
import sys

import zmq

from uzram import kcompressd, protocol


def main():
    args = sys.argv[sys.argv.index("uzram.kcompressd") + 1:] if "uzram.kcompressd" in sys.argv else sys.argv[1:]
    ns = {a.lstrip("-"): b for a, b in zip(args[::2], args[1::2])}
    endpoint, index, parent = ns["endpoint"], int(ns["index"]), int(ns["parent"])
    kcompressd.die_with_parent(parent)
    mode = os.environ.get("UZRAM_FAKE_MODE", "badsize")
    bad_left = int(os.environ.get("UZRAM_FAKE_BAD", "3"))
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send_multipart(protocol.ready(index, os.getpid()))
    codecs = {}
    while True:
        if not sock.poll(1000):
            if os.getppid() != parent:
                return
            sock.send_multipart(protocol.heartbeat())
            continue
        msg = protocol.decode(sock.recv_multipart())
        if msg.command != protocol.JOB:
            continue
        good = kcompressd.compress_job(codecs, msg)
        if bad_left <= 0:
            sock.send_multipart(good)
            continue
        bad_left -= 1
        if mode == "badsize":
            lengths = bytearray(good[2])
            lengths[0] ^= 1
            sock.send_multipart([good[0], good[1], bytes(lengths), good[3]])
        elif mode == "garbage":
            sock.send_multipart([b"\x00garbage"])
            sock.send_multipart([good[0][:5]])
            sock.send_multipart([bytes([9]) + good[0][1:], *good[1:]])
            sock.send_multipart(good[:2])                     # truncated RESULT
            sock.send_multipart([protocol.header(77)])        # unknown command
        elif mode == "failed":
            sock.send_multipart(protocol.failed(msg.job, "simulated compression failure"))
        elif mode == "wrongid":
            sock.send_multipart([good[0], bytes([200]) * msg.count, good[2], good[3]])
        elif mode == "swapped":
            raw = bytes(msg.frames[2])
            pages = [raw[i:i + 4096] for i in range(0, len(raw), 4096)][::-1]
            msg.frames[2] = b"".join(pages)
            sock.send_multipart(kcompressd.compress_job(codecs, msg))


if __name__ == "__main__":
    main()
