"""The pending ring's size (``max_pending``) against write speed, drain included.

    .venv/bin/python bench/ring_size.py [ROUNDS] [SIZES]     (default 3, 32M,8M,4M)

Writes the `uzram bench` data set (256 MiB, seed 1, default mix) with nbdcopy into a fresh
uzram device per row, for lz4 and zstd with one kcompressd worker and each ring size, rows
interleaved round by round.  The time runs from the start of the copy until the ring has
drained (every page stored compressed), as in `uzram bench`.  Per row it prints the median
MB/s (each round's in brackets), the copy's and the drain's seconds, the CPU seconds of the
nbdkit process and of the worker, and writestall (writes compressed inline because the ring
was full); then each size's MB/s as a ratio to the first size's.  Saves the figures as
bench-results/ring_size.json.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from uzram.core.stats import process_cpu_seconds
from uzram.nbd.server import Server
from uzram.tools.bench import BenchError, dataset
from uzram.tools.bench.targets import wait_drained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 256 << 20
CODECS = ("lz4", "zstd")
DRAIN_TIMEOUT = 600


def one(image, algorithm, max_pending, workdir):
    srv = Server("256M", algorithm=algorithm, workers=1, max_pending=max_pending, name=f"ring-{os.getpid()}",
                 runtime_dir=os.path.join(workdir, "rt"))
    srv.start()
    try:
        time.sleep(0.3)                                  # the worker's start-up CPU is not the copy's
        s0, c0 = srv.stats(), process_cpu_seconds(srv.proc.pid)
        t0 = time.perf_counter()
        subprocess.run(["nbdcopy", image, srv.uri], check=True)
        copied = time.perf_counter() - t0
        try:
            drained, s1 = wait_drained(srv, DRAIN_TIMEOUT)     # as uzram bench waits
        except BenchError as e:
            raise SystemExit(f"ring_size: {algorithm} max_pending={max_pending}: {e}") from None
        total = copied + drained
        return {"mb_s": SIZE / total / 1e6, "copy_s": copied, "drain_s": drained,
                "nbdkit_cpu_s": process_cpu_seconds(srv.proc.pid) - c0,
                "worker_cpu_s": s1.worker_cpu_seconds - s0.worker_cpu_seconds, "writestall": s1.writestall}
    finally:
        srv.stop()


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    sizes = (sys.argv[2] if len(sys.argv) > 2 else "32M,8M,4M").split(",")
    rows = [(a, s) for a in CODECS for s in sizes]
    runs = {row: [] for row in rows}
    with tempfile.TemporaryDirectory() as workdir:
        image = os.path.join(workdir, "mix.img")
        dataset.make_dataset(image, SIZE, dataset.DEFAULT_MIX, 1)
        for r in range(rounds):
            for row in rows:
                runs[row].append(one(image, *row, workdir))
            print(f"round {r + 1} of {rounds} done", file=sys.stderr)
    med = {row: {k: statistics.median(x[k] for x in v) for k in v[0]} for row, v in runs.items()}
    for (a, s), m in med.items():
        each = " ".join(f"{x['mb_s']:.0f}" for x in runs[(a, s)])
        print(f"{a:5s} max_pending={s:4s} MB/s {m['mb_s']:5.0f} [{each}]  copy {m['copy_s']:.3f} s  "
              f"drain {m['drain_s']:.3f} s  nbdkit cpu {m['nbdkit_cpu_s']:.2f} s  worker cpu "
              f"{m['worker_cpu_s']:.2f} s  writestall {m['writestall']:.0f}")
    for a in CODECS:
        base = med[(a, sizes[0])]["mb_s"]
        print(f"{a}: MB/s / max_pending={sizes[0]}: "
              + "  ".join(f"{s} {med[(a, s)]['mb_s'] / base:.2f}" for s in sizes[1:]))
    out = os.path.join(ROOT, "bench-results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "ring_size.json"), "w") as f:
        json.dump({"rounds": rounds, "sizes": sizes,
                   "runs": {f"{a}:{s}": v for (a, s), v in runs.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
