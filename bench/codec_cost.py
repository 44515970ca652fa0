"""Per-page cost of each codec on the bench page mix, in-process:

    .venv/bin/python bench/codec_cost.py [SIZE_MiB]

Writes the `uzram bench` data set (seed 1, default mix) to a temporary file and, for every
page that is not same-filled, times the codec's compress (all of them: what a kcompressd
worker pays a page, the huge ones included) and decompress (only the pages stored
compressed, below the huge threshold).
"""

import os
import sys
import tempfile
import time

import numpy as np

from uzram.tools import bench
from uzram.core.codecs import RAW_ID, compress_page, decoder, get_codec
from uzram.core.constants import PAGE_SIZE
from uzram.core.samefill import same_value


def main(size_mib=32):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mix.img")
        bench.make_dataset(path, size_mib << 20, bench.DEFAULT_MIX, 1)
        data = open(path, "rb").read()
    pages = [data[i:i + PAGE_SIZE] for i in range(0, len(data), PAGE_SIZE)]
    pages = [p for p in pages if same_value(p) is None]
    for name in ("lz4", "zstd"):
        codec = get_codec(name)
        cs = np.empty(len(pages))
        for i, p in enumerate(pages):
            t = time.perf_counter_ns()
            codec.compress(p)
            cs[i] = time.perf_counter_ns() - t
        print(f"{name}: {len(pages)} pages not same-filled, compress mean {cs.mean() / 1000:.1f} us, "
              f"p50 {np.percentile(cs, 50) / 1000:.1f} us")
        blobs = [(cid, b) for cid, b in (compress_page(codec, p) for p in pages) if cid != RAW_ID]
        dec = decoder(codec.codec_id)
        ns = np.empty(len(blobs))
        for i, (_, b) in enumerate(blobs):
            t = time.perf_counter_ns()
            dec.decompress(b)
            ns[i] = time.perf_counter_ns() - t
        p50, p90 = np.percentile(ns, [50, 90]) / 1000
        print(f"{name}: {len(blobs)} compressed pages, decompress p50 {p50:.1f} us, p90 {p90:.1f} us")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
