"""Big writes (more than a quarter of the pending ring) with kcompressd and inline.

    .venv/bin/python bench/big_writes.py [ROUNDS] [REQUEST] [SHIFT]     (default 3, 4M, 0)

One writer with one request in flight writes the first 128 MiB of the `uzram bench` data
set (seed 1, default mix) in REQUEST-sized libnbd pwrites to a fresh uzram device, then
flushes; the time includes the flush.  Rows: lz4 and zstd, inline and with one kcompressd
worker (the default 8 MiB ring, so a 4 MiB request is twice the 2 MiB a request may queue),
interleaved round by round.  Per row it prints the median MB/s (each round's in brackets),
writestall and writer_pages (the pages the writer compressed itself); then kcompressd's
MB/s as a ratio to inline's, per round.  With SHIFT (bytes, for example 512), every
request starts that far past its aligned offset, so its first and last pages are written
only in part.  Saves the figures as bench-results/big_writes.json.
"""

import json
import os
import statistics
import sys
import tempfile
import time

from uzram.core.config import parse_size
from uzram.nbd.server import Server
from uzram.tools import probe
from uzram.tools.bench import dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 256 << 20
WRITTEN = 128 << 20
ROWS = (("lz4", 0), ("lz4", 1), ("zstd", 0), ("zstd", 1))


def one(data, algorithm, workers, request, shift, workdir):
    srv = Server("256M", algorithm=algorithm, workers=workers, name=f"big-{os.getpid()}",
                 runtime_dir=os.path.join(workdir, "rt"))
    srv.start()
    try:
        while workers and srv.stats().workers_alive < workers:
            time.sleep(0.02)
        h = probe.connect(srv.uri)
        try:
            t0 = time.perf_counter()
            for off in range(0, len(data), request):
                h.pwrite(data[off:off + request], off + shift)
            h.flush()
            took = time.perf_counter() - t0
        finally:
            probe.disconnect(h)
        s = srv.stats()
        return {"mb_s": len(data) / took / 1e6, "writestall": s.writestall, "writer_pages": s.writer_pages}
    finally:
        srv.stop()


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    request = parse_size(sys.argv[2] if len(sys.argv) > 2 else "4M")
    shift = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    runs = {row: [] for row in ROWS}
    with tempfile.TemporaryDirectory() as workdir:
        image = os.path.join(workdir, "mix.img")
        dataset.make_dataset(image, SIZE, dataset.DEFAULT_MIX, 1)
        with open(image, "rb") as f:
            data = memoryview(f.read(WRITTEN))
        for r in range(rounds):
            for row in ROWS[r % len(ROWS):] + ROWS[:r % len(ROWS)]:
                runs[row].append(one(data, *row, request, shift, workdir))
            print(f"round {r + 1} of {rounds} done", file=sys.stderr)
    for (a, w), v in runs.items():
        each = " ".join(f"{x['mb_s']:.0f}" for x in v)
        print(f"{a:5s} {'inline' if w == 0 else 'workers=1':9s} MB/s {statistics.median(x['mb_s'] for x in v):5.0f} "
              f"[{each}]  writestall {statistics.median(x['writestall'] for x in v):.0f}  "
              f"writer_pages {statistics.median(x['writer_pages'] for x in v):.0f}")
    for a in ("lz4", "zstd"):
        ratios = [k["mb_s"] / i["mb_s"] for k, i in zip(runs[(a, 1)], runs[(a, 0)])]
        print(f"{a}: kcompressd / inline {statistics.median(ratios):.2f} (per round "
              + " ".join(f"{x:.2f}" for x in ratios) + ")")
    out = os.path.join(ROOT, "bench-results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "big_writes.json"), "w") as f:
        json.dump({"rounds": rounds, "request": request, "shift": shift, "written": WRITTEN,
                   "runs": {f"{a}:{w}": v for (a, w), v in runs.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
