"""4 KiB read latency by page kind: where the request path's time goes, beside the bare plugin.

    .venv/bin/python bench/read_by_kind.py [SIZE_MiB] [COUNT]

Writes the `uzram bench` data set (seed 1, default mix), copies it into the bare plugin and
into uzram inline with lz4 and with zstd (one nbdkit each, `--threads 1`, as the bench runs
them), then times COUNT 4 KiB reads at random page offsets with the bench's interleaved loop
(the servers take turns, 100 reads each).  Prints p50 per kind of page read (zero,
same-filled, incompressible = stored raw, compressible) and overall, in microseconds.
"""

import os
import subprocess
import sys
import tempfile
import time

import lz4.block
import numpy as np

from uzram import bench
from uzram.constants import HUGE_THRESHOLD, PAGE_SIZE
from uzram.samefill import same_value
from uzram.server import DEFAULT_THREADS, PLUGIN, REPO, clean_env


class _Server:
    def __init__(self, workdir, name, args):
        self.sock = os.path.join(workdir, name + ".sock")
        argv = ["nbdkit", "-f", "--exit-with-parent", "-U", self.sock, "--threads", str(DEFAULT_THREADS)] + args
        self.proc = subprocess.Popen(argv, env=clean_env(UZRAM_VENV=os.path.join(REPO, ".venv")))
        self.uri, self.device = f"nbd+unix:///?socket={self.sock}", None
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name}: nbdkit did not start")
            time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def kind_of(page):
    v = same_value(page)
    if v is not None:
        return "zero" if v == 0 else "same"
    return "raw" if len(lz4.block.compress(page, store_size=False)) >= HUGE_THRESHOLD else "compressed"


def main(size_mib=128, count=6000):
    size = size_mib << 20
    with tempfile.TemporaryDirectory() as wd:
        path = os.path.join(wd, "mix.img")
        bench.make_dataset(path, size, bench.DEFAULT_MIX, 1)
        servers = {
            "bare": _Server(wd, "bare", ["python", bench.BARE_PLUGIN, f"size={size}"]),
            "lz4": _Server(wd, "lz4", ["python", PLUGIN, f"size={size}", "workers=0",
                                       f"runtime_dir={wd}/rt-lz4"]),
            "zstd": _Server(wd, "zstd", ["python", PLUGIN, f"size={size}", "workers=0", "algorithm=zstd",
                                         f"runtime_dir={wd}/rt-zstd"]),
        }
        try:
            for s in servers.values():
                subprocess.run(["nbdcopy", path, s.uri], check=True)
            seed = 3
            offsets = np.random.default_rng(seed).integers(0, size // PAGE_SIZE, bench.LATENCY_WARMUP + count)
            with open(path, "rb") as f:
                data = f.read()
            kinds = np.array([kind_of(data[o * PAGE_SIZE:(o + 1) * PAGE_SIZE])
                              for o in offsets[bench.LATENCY_WARMUP:].tolist()])
            lat = bench.interleaved_read_latency(servers, size, count, seed)
        finally:
            for s in servers.values():
                s.stop()
    print(f"4 KiB read p50 in us, {count} reads over {size_mib} MiB ({bench.LATENCY_SOURCE})")
    print(f"{'page kind':12s} {'share':>6s} " + " ".join(f"{n:>7s}" for n in lat))
    for k in ("zero", "same", "raw", "compressed"):
        sel = kinds == k
        p50s = " ".join(f"{np.percentile(v[sel], 50) / 1000:7.1f}" for v in lat.values())
        print(f"{k:12s} {sel.mean():6.1%} {p50s}")
    print(f"{'all':12s} {'':6s} " + " ".join(f"{np.percentile(v, 50) / 1000:7.1f}" for v in lat.values()))


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
