"""worker_nice against write speed: the mix through nbdcopy, and the serialized writer.

    .venv/bin/python bench/worker_nice.py [ROUNDS] [NICES] [WORKERS]     (default 5, 0,5, 1)

For lz4 and zstd with WORKERS kcompressd workers at each nice in NICES, rows interleaved
round by round, each on a fresh uzram device: the `uzram bench` data set (256 MiB, seed 1,
default mix) written with nbdcopy, timed until the ring has drained, as in `uzram bench`
(MB/s; the nbdkit process's CPU seconds over the copy, and over copy and drain, where the
drain's stats polling counts too; the workers' CPU seconds; writer_pages: pages the writers
compressed themselves because the ring was past half full); then, on another fresh device,
the serialized writer of `uzram bench` (one connection, one 64 KiB request in flight, the
first 128 MiB, the flush included: MB/s and request p99).  An inline row per codec gives
the serialized p99 the target compares with.  Prints medians (each round's in brackets)
and saves bench-results/worker_nice.json.
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
from uzram.tools.bench import BenchError, dataset, measure
from uzram.tools.bench.targets import wait_drained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 256 << 20
SERIAL = 128 << 20
CODECS = ("lz4", "zstd")
DRAIN_TIMEOUT = 600


def server(workdir, algorithm, workers, nice):
    keys = {} if nice is None else {"worker_nice": nice}
    srv = Server("256M", algorithm=algorithm, workers=workers, name=f"nice-{os.getpid()}",
                 runtime_dir=os.path.join(workdir, "rt"), **keys)
    srv.start()
    time.sleep(0.3)                                      # the workers' start-up is not the copy's
    return srv


def copy(image, workdir, algorithm, workers, nice):
    srv = server(workdir, algorithm, workers, nice)
    try:
        s0, c0 = srv.stats(), process_cpu_seconds(srv.proc.pid)
        t0 = time.perf_counter()
        subprocess.run(["nbdcopy", image, srv.uri], check=True)
        copied = time.perf_counter() - t0
        c1 = process_cpu_seconds(srv.proc.pid)           # before the drain's stats polling
        try:
            drained, s1 = wait_drained(srv, DRAIN_TIMEOUT)
        except BenchError as e:
            raise SystemExit(f"worker_nice: {algorithm} nice={nice}: {e}") from None
        return {"mb_s": SIZE / (copied + drained) / 1e6, "nbdkit_copy_cpu_s": c1 - c0,
                "nbdkit_cpu_s": process_cpu_seconds(srv.proc.pid) - c0,
                "worker_cpu_s": s1.worker_cpu_seconds - s0.worker_cpu_seconds,
                "writer_pages": s1.writer_pages - s0.writer_pages}
    finally:
        srv.stop()


def serial(image, workdir, algorithm, workers, nice):
    srv = server(workdir, algorithm, workers, nice)
    try:
        out = measure.serial_write(srv, image, SERIAL)
        return {"serial_mb_s": out["serial_mb_s"], "serial_p99_us": out["serial_p99_us"]}
    finally:
        srv.stop()


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    nices = [int(n) for n in (sys.argv[2] if len(sys.argv) > 2 else "0,5").split(",")]
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    rows = [(a, n) for a in CODECS for n in nices]
    runs = {row: [] for row in rows}
    inline = {a: [] for a in CODECS}
    with tempfile.TemporaryDirectory() as workdir:
        image = os.path.join(workdir, "mix.img")
        dataset.make_dataset(image, SIZE, dataset.DEFAULT_MIX, 1)
        for r in range(rounds):
            order = rows + [(a, "inline") for a in CODECS]
            for a, n in order[r % len(order):] + order[:r % len(order)]:
                if n == "inline":
                    inline[a].append(serial(image, workdir, a, 0, None))
                else:
                    runs[(a, n)].append({**copy(image, workdir, a, workers, n), **serial(image, workdir, a, workers, n)})
            print(f"round {r + 1} of {rounds} done", file=sys.stderr)

    def med(v, k):
        return statistics.median(x[k] for x in v)

    def each(v, k, fmt="{:.0f}"):
        return " ".join(fmt.format(x[k]) for x in v)

    print(f"{workers} worker(s), {rounds} rounds, medians [each round]")
    for (a, n), v in runs.items():
        print(f"{a:4s} nice {n:2d}  copy MB/s {med(v, 'mb_s'):4.0f} [{each(v, 'mb_s')}]  nbdkit cpu "
              f"{med(v, 'nbdkit_copy_cpu_s'):.2f} s (with the drain {med(v, 'nbdkit_cpu_s'):.2f})  worker cpu {med(v, 'worker_cpu_s'):.2f} s  writer_pages "
              f"{med(v, 'writer_pages'):.0f} [{each(v, 'writer_pages')}]  serialized MB/s {med(v, 'serial_mb_s'):3.0f} "
              f"p99 {med(v, 'serial_p99_us'):4.0f} us [{each(v, 'serial_p99_us')}]")
    for a, v in inline.items():
        print(f"{a:4s} inline   serialized MB/s {med(v, 'serial_mb_s'):3.0f}  p99 {med(v, 'serial_p99_us'):4.0f} us "
              f"[{each(v, 'serial_p99_us')}]")
    out = os.path.join(ROOT, "bench-results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "worker_nice.json"), "w") as f:
        json.dump({"rounds": rounds, "workers": workers, "nices": nices,
                   "runs": {f"{a}:{n}": v for (a, n), v in runs.items()}, "inline": inline}, f, indent=1)


if __name__ == "__main__":
    main()
