"""A misbehaving kcompressd, started by the real dispatcher through ``python=`` (a wrapper
script execs this file with the worker's arguments).  Mode from $UZRAM_FAKE_MODE:

  badsize   first jobs answered with an impossible length (a compressed page of 3500 bytes)
  garbage   sends junk frames, truncated headers and a wrong protocol version between results
  failed    answers the first jobs with FAILED
  wrongid   answers the first jobs with an unknown codec ID
  outside   answers the first jobs with one entry more than the job has pages (a blob that
            would lie past the end of the window)
  shifted   answers the first jobs with one length in the middle of the job a byte longer
            than its blob (still a possible length), so every blob after it is cut one
            byte late; the first page is right
  drop      never answers the first jobs (it keeps its heartbeats)
  swapped   answers the first jobs with well-formed RESULTs whose blobs belong to other
            pages of the job (its pages compressed in reverse order)

After ``UZRAM_FAKE_BAD`` bad answers (default 3) it behaves like the real worker.  Every
answer that is not malformed (FAILED, swapped) fails only that job."""

import os
import sys

import numpy as np
import zmq

from uzram.kcompressd import worker as kcompressd, protocol
from uzram.core.codecs import compress_page


def reversed_pages(compressor, msg):
    """A RESULT as the real worker would give it, but for the job's pages in reverse order."""
    p = protocol.job_params(msg)
    n = msg.count
    codec = compressor.codec(p.codec_id, p.level)
    seg, off = divmod(p.window, compressor.segment_bytes)
    out = compressor._segment(seg)[off:off + p.capacity]
    ids, lens, pos = bytearray(n), [], 0
    for i in range(n):
        src = (p.slot + n - 1 - i) * 4096
        cid, blob = compress_page(codec, compressor.pages[src:src + 4096])
        out[pos:pos + len(blob)] = blob
        ids[i] = cid
        lens.append(len(blob))
        pos += len(blob)
    return protocol.result(msg.job, ids, lens)


def main():
    args = sys.argv[sys.argv.index("uzram.kcompressd.worker") + 1:] if "uzram.kcompressd.worker" in sys.argv else sys.argv[1:]
    ns = {a.lstrip("-"): b for a, b in zip(args[::2], args[1::2])}
    endpoint, index, parent = ns["endpoint"], int(ns["index"]), int(ns["parent"])
    kcompressd.die_with_parent(parent)
    compressor = kcompressd.Compressor(int(ns["ring-fd"]), int(ns["ring-slots"]), int(ns["arena-fd"]),
                                       int(ns["segment-bytes"]))
    mode = os.environ.get("UZRAM_FAKE_MODE", "badsize")
    bad_left = int(os.environ.get("UZRAM_FAKE_BAD", "3"))
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send_multipart(protocol.ready(index, os.getpid()))
    while True:
        if not sock.poll(1000):
            if os.getppid() != parent:
                return
            sock.send_multipart(protocol.heartbeat())
            continue
        msg = protocol.decode(sock.recv_multipart())
        if msg.command != protocol.JOB:
            continue
        good = compressor.compress(msg)
        if bad_left <= 0:
            sock.send_multipart(good)
            continue
        bad_left -= 1
        head, table = good
        n = msg.count
        lens_a = np.frombuffer(table[:2 * n], dtype="<u2").copy()
        ids = table[2 * n:]
        first = int(np.argmax(lens_a > 0))
        if mode == "badsize":
            lens_a[first] = 3500 if ids[first] else 100
            sock.send_multipart([head, lens_a.tobytes() + ids])
        elif mode == "garbage":
            sock.send_multipart([b"\x00garbage"])
            sock.send_multipart([head[:5]])
            sock.send_multipart([bytes([9]) + head[1:], table])
            sock.send_multipart([head, table[:-1]])               # truncated RESULT
            sock.send_multipart([head])                           # no table
            sock.send_multipart([protocol.header(77)])            # unknown command
        elif mode == "failed":
            sock.send_multipart(protocol.failed(msg.job, "simulated compression failure"))
        elif mode == "wrongid":
            sock.send_multipart([head, lens_a.tobytes() + bytes([200]) * n])
        elif mode == "outside":
            sock.send_multipart(protocol.result(msg.job, ids + bytes([ids[first]]), list(lens_a) + [3000]))
        elif mode == "shifted":
            mid = n // 2 + int(np.argmax((lens_a[n // 2:] > 0) & (lens_a[n // 2:] < 3000)))
            lens_a[mid] += 1
            sock.send_multipart([head, lens_a.tobytes() + ids])
        elif mode == "drop":
            pass
        elif mode == "swapped":
            sock.send_multipart(reversed_pages(compressor, msg))


if __name__ == "__main__":
    main()
