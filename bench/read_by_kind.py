"""4 KiB read latency by page kind: where the request path's time goes, beside the bare plugin.

    .venv/bin/python bench/read_by_kind.py [SIZE_MiB] [COUNT]

Writes the `uzram bench` data set (seed 1, default mix), copies it into the bench's
bare-python, bare-python-pinned, uzram-lz4-inline and uzram-zstd-inline targets (started as the bench starts
them), then times COUNT 4 KiB reads at random page offsets with the bench's interleaved loop
(the servers take turns, 100 reads each).  Prints p50 per kind of page read (zero,
same-filled, incompressible = stored raw, compressible) and overall, in microseconds.
"""

import os
import subprocess
import sys
import tempfile

import lz4.block
import numpy as np

from uzram.tools.bench import dataset, measure, rows, targets
from uzram.core.constants import HUGE_THRESHOLD, PAGE_SIZE
from uzram.core.samefill import same_value

ROWS = {"bare": "bare-python", "pinned": "bare-python-pinned", "lz4": "uzram-lz4-inline", "zstd": "uzram-zstd-inline"}


def kind_of(page):
    v = same_value(page)
    if v is not None:
        return "zero" if v == 0 else "same"
    return "raw" if len(lz4.block.compress(page, store_size=False)) >= HUGE_THRESHOLD else "compressed"


def main(size_mib=128, count=6000):
    size = size_mib << 20
    with tempfile.TemporaryDirectory() as wd:
        path = os.path.join(wd, "mix.img")
        dataset.make_dataset(path, size, dataset.DEFAULT_MIX, 1)
        servers = {}
        try:
            for label, row in ROWS.items():
                servers[label] = targets.start_target(rows.row_by_name(row), size, wd)
            for s in servers.values():
                subprocess.run(["nbdcopy", path, s.uri], check=True)
            seed = 3
            offsets = np.random.default_rng(seed).integers(0, size // PAGE_SIZE, measure.LATENCY_WARMUP + count)
            with open(path, "rb") as f:
                data = f.read()
            kinds = np.array([kind_of(data[o * PAGE_SIZE:(o + 1) * PAGE_SIZE])
                              for o in offsets[measure.LATENCY_WARMUP:].tolist()])
            lat = measure.interleaved_read_latency(servers, size, count, seed)
        finally:
            for s in servers.values():
                s.stop()
    print(f"4 KiB read p50 in us, {count} reads over {size_mib} MiB ({measure.METHOD['read4k']})")
    print(f"{'page kind':12s} {'share':>6s} " + " ".join(f"{n:>7s}" for n in lat))
    for k in ("zero", "same", "raw", "compressed"):
        sel = kinds == k
        p50s = " ".join(f"{np.percentile(v[sel], 50) / 1000:7.1f}" for v in lat.values())
        print(f"{k:12s} {sel.mean():6.1%} {p50s}")
    print(f"{'all':12s} {'':6s} " + " ".join(f"{np.percentile(v, 50) / 1000:7.1f}" for v in lat.values()))


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
