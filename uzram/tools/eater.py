"""A memory eater: writes a deterministic mix of pages into a large buffer, then verifies every
page (``--rounds`` times).  Run inside a memory cgroup whose limit is far below the buffer, the
kernel must push most pages out to swap while writing and bring them back while verifying.

    python -m uzram.eater --pages 65536 --rounds 2

Prints one JSON object: pages, seconds, /proc/vmstat pswpout/pswpin deltas and ``cpu_busy``
(the share of all CPUs' time that was busy, from /proc/stat) for the write phase and for each
verify round, and ``bad_pages`` (exit status 1 when any page was wrong).

The mix, by page number modulo 16: 2 zero pages, 2 same-filled pages (one 8-byte value
repeated), 2 random pages (incompressible) and 10 text pages (compressible, each stamped with
its page number so no two are alike).
"""

import argparse
import json
import mmap
import sys
import time

import numpy as np

PAGE = 4096
CHUNK = 256                   # pages generated and checked at a time (1 MiB)
ZERO, SAME, TEXT, RANDOM = range(4)
KINDS = np.array([ZERO, TEXT, SAME, TEXT, TEXT, RANDOM, TEXT, TEXT,
                  ZERO, TEXT, TEXT, SAME, TEXT, RANDOM, TEXT, TEXT], dtype=np.uint8)
WORDS = (b"the a of to and in is it that for on was with as page swap memory block device compressed "
         b"kernel zram userspace server worker batch pending slot arena table request reply queue").split()


def text_template(seed=7, size=1 << 20):
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(WORDS), size=size // 4)
    text = b" ".join(WORDS[i] for i in picks)
    return np.frombuffer(text[:size], dtype=np.uint8)


class Pattern:
    """expected(first, n) -> the (n, 4096) uint8 pages that page numbers first..first+n-1 hold."""

    def __init__(self, seed=1):
        self.seed = seed
        self.template = text_template(seed + 6)
        self.span = len(self.template) - PAGE
        self.windows = np.lib.stride_tricks.sliding_window_view(self.template, PAGE)

    def expected(self, first, n):
        out = np.empty((n, PAGE), dtype=np.uint8)
        words = out.view(np.uint64)
        idx = np.arange(first, first + n, dtype=np.uint64)
        kind = KINDS[idx % len(KINDS)]
        out[kind == ZERO] = 0
        same = kind == SAME
        words[same] = ((idx[same] * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1))[:, None]
        text = np.nonzero(kind == TEXT)[0]
        offs = (idx[text] * np.uint64(2654435761)) % np.uint64(self.span) & ~np.uint64(7)
        out[text] = self.windows[offs.astype(np.intp)]
        words[text, 0] = idx[text]
        rand = np.nonzero(kind == RANDOM)[0]
        if len(rand):
            rng = np.random.default_rng([self.seed, first])
            out[rand] = np.frombuffer(rng.bytes(len(rand) * PAGE), dtype=np.uint8).reshape(-1, PAGE)
        return out


def vmstat(keys=("pswpin", "pswpout")):
    """The ``keys`` of /proc/vmstat, and "cpu": cpu_times() at the same moment."""
    out = {"cpu": cpu_times()}
    with open("/proc/vmstat") as f:
        for line in f:
            key, _, value = line.partition(" ")
            if key in keys:
                out[key] = int(value)
    return out


def cpu_times():
    """(busy, total) jiffies of all CPUs together, from /proc/stat (idle and iowait are not busy)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    total = sum(fields[:8])          # user nice system idle iowait irq softirq steal
    return total - fields[3] - fields[4], total


def _delta(before, after):
    out = {k: after[k] - before[k] for k in before if k != "cpu"}
    busy, total = after["cpu"][0] - before["cpu"][0], after["cpu"][1] - before["cpu"][1]
    out["cpu_busy"] = round(busy / total, 3) if total else None
    return out


def eat(pages, rounds=2, seed=1, pause=False):
    """Write ``pages`` pages, verify them ``rounds`` times; returns the report dict.  ``pause``:
    between writing and verifying, say ``written`` on stderr and wait for a line on stdin."""
    pattern = Pattern(seed)
    region = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf = np.frombuffer(region, dtype=np.uint8).reshape(pages, PAGE)
    report = {"pages": pages, "rounds": rounds, "bad_pages": 0, "phases": []}
    v0, t0 = vmstat(), time.monotonic()
    for first in range(0, pages, CHUNK):
        n = min(CHUNK, pages - first)
        buf[first:first + n] = pattern.expected(first, n)
    v1, t1 = vmstat(), time.monotonic()
    report["phases"].append({"phase": "write", "seconds": t1 - t0, **_delta(v0, v1)})
    if pause:
        print("written", file=sys.stderr, flush=True)
        sys.stdin.readline()
    for r in range(rounds):
        bad = 0
        v0, t0 = vmstat(), time.monotonic()
        for first in range(0, pages, CHUNK):
            n = min(CHUNK, pages - first)
            bad += int((buf[first:first + n] != pattern.expected(first, n)).any(axis=1).sum())
        v1, t1 = vmstat(), time.monotonic()
        report["phases"].append({"phase": f"verify{r + 1}", "seconds": t1 - t0, "bad_pages": bad, **_delta(v0, v1)})
        report["bad_pages"] += bad
    del buf
    region.close()
    return report


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m uzram.eater", description=__doc__.split("\n\n")[0])
    p.add_argument("--pages", type=int, required=True, help="pages (4 KiB) to write and verify")
    p.add_argument("--rounds", type=int, default=2, help="verify rounds (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--pause", action="store_true",
                   help="after writing, print 'written' on stderr and wait for a line on stdin")
    args = p.parse_args(argv)
    report = eat(args.pages, args.rounds, args.seed, args.pause)
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    return 1 if report["bad_pages"] else 0


if __name__ == "__main__":
    sys.exit(main())
