"""The bench's mix copied three times over one device: cleaning while an overwrite is under way.

    .venv/bin/python bench/overwrite_copy.py [ROUNDS]        (default 1)

For lz4 inline, lz4 with one worker and zstd with one worker, each on a fresh device: the
`uzram bench` data set (256 MiB, seed 1, the default mix) written with nbdcopy (four
connections) three times over, each copy timed until the ring has drained. Per copy: MB/s,
the nbdkit process's CPU seconds, pages_compacted (what cleaning gave back, in pages), and
mem_used_total / compr_data_size afterwards with mem_used_max, in MiB. The second and third
copies overwrite every page: what they leave dead, and whether requests clean it up.
"""

import os
import subprocess
import sys
import tempfile
import time

from uzram.core.stats import process_cpu_seconds
from uzram.nbd.server import Server
from uzram.tools.bench import dataset
from uzram.tools.bench.targets import wait_drained

SIZE = 256 << 20
ROWS = (("lz4", 0), ("lz4", 1), ("zstd", 1))
COPIES = 3
DRAIN_TIMEOUT = 600


def copies(image, workdir, algorithm, workers):
    srv = Server("256M", algorithm=algorithm, workers=workers, name=f"overwrite-{os.getpid()}",
                 runtime_dir=os.path.join(workdir, "rt"))
    srv.start()
    time.sleep(0.3)                                      # the workers' start-up is not the copy's
    out = []
    try:
        for _ in range(COPIES):
            s0, c0 = srv.stats(), process_cpu_seconds(srv.proc.pid)
            t0 = time.perf_counter()
            subprocess.run(["nbdcopy", image, srv.uri], check=True)
            took = time.perf_counter() - t0
            if workers:
                drained, s1 = wait_drained(srv, DRAIN_TIMEOUT)
                took += drained
            else:
                s1 = srv.stats()
            out.append(f"[{SIZE / took / 1e6:.0f} MB/s, nbdkit {process_cpu_seconds(srv.proc.pid) - c0:.2f} s, "
                       f"compacted {s1.pages_compacted - s0.pages_compacted}, mem {s1.mem_used_total >> 20}"
                       f"/{s1.compr_data_size >> 20} max {s1.mem_used_max >> 20} MiB]")
    finally:
        srv.stop()
    return "  ".join(out)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    with tempfile.TemporaryDirectory() as workdir:
        image = os.path.join(workdir, "mix.img")
        dataset.make_dataset(image, SIZE, dataset.DEFAULT_MIX, 1)
        for _ in range(rounds):
            for algorithm, workers in ROWS:
                print(f"{algorithm} workers={workers}: {copies(image, workdir, algorithm, workers)}", flush=True)


if __name__ == "__main__":
    main()
