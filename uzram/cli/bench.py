"""``uzram bench``: uzram against nbdkit memory, a bare Python plugin and kernel zram, in one run."""

import argparse
import os
import sys

from uzram.tools import bench
from uzram.core.config import default_workers, parse_int
from uzram.core.errors import ConfigError
from .common import size_arg

DESCRIPTION = """\
Write one page mix (zero, same-filled, compressible pages cut from real files on this
machine, random) into each target with nbdcopy, read it back and compare, time 4 KiB random
reads at queue depth 1, and record the memory each target holds.  Rows are interleaved
(round robin) and the report gives medians and the target ratios measured side by side.

Rows: uzram-CODEC-inline (workers=0), uzram-CODEC-wN (N kcompressd workers), either
with -plain (nbdkit started without --threads, as a user would),
nbdkit-memory, nbdkit-memory-zstd (allocator=zstd), bare-python (uzram/tools/bench/bare_plugin.py),
bare-python-pinned (the same with pin=1: one Python thread state per connection, as uzram),
kernel-zram-ALGORITHM (root and /sys/class/zram-control).

Then, per uzram row and round, a serialized writer (one connection, one 64 KiB request
in flight, a flush at the end) writes the first --serial-size bytes to a fresh server.

Writes OUT/bench.json, OUT/report.md (a Markdown table with the command line) and
OUT/write.png, serial.png, read_p50.png, memory.png: each with its unit, which
way is better, a legend, the data set, rounds and date, and n/a where a row has no figure."""

EPILOG = """\
examples:
  uzram bench                                    # 256M, 3 rounds, every row
  uzram bench --quick --out /tmp/b               # 16M, 1 round
  uzram bench --rows uzram-lz4-inline,nbdkit-memory-zstd,bare-python --repeat 5
  uzram bench --mix zero=0,same=0,text=100,random=0 --workers 0,1,2"""


def register(subparsers):
    p = subparsers.add_parser("bench", help="benchmark uzram against nbdkit memory, a bare plugin and kernel zram",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=size_arg, default=None, metavar="SIZE",
                   help=f"data set size, K/M/G suffixes (default: {bench.DEFAULT_SIZE >> 20}M; "
                        f"{bench.QUICK_SIZE >> 20}M with --quick)")
    p.add_argument("--mix", default=None, metavar="KIND=SHARE,...",
                   help="shares of page kinds zero, same, text, random (default: "
                        + ",".join(f"{k}={v}" for k, v in bench.DEFAULT_MIX.items()) + ")")
    p.add_argument("--seed", default="1", metavar="N", help="seed of the data set and offsets (default: 1)")
    p.add_argument("--repeat", default=None, metavar="N",
                   help=f"rounds; each row once per round (default: {bench.DEFAULT_REPEAT}; 1 with --quick)")
    p.add_argument("--workers", default=None, metavar="N,N,...",
                   help=f"uzram modes: 0 = inline, N = N kcompressd workers (default: 0..{default_workers()})")
    p.add_argument("--rows", default=None, metavar="NAME,...",
                   help="only these rows (see above; default: uzram lz4 and zstd per --workers, the peers, "
                        "kernel zram lz4)")
    p.add_argument("--latency-count", default=None, metavar="N",
                   help=f"4 KiB reads timed per row and round (default: {bench.DEFAULT_LATENCY_COUNT}; "
                        f"{bench.QUICK_LATENCY_COUNT} with --quick)")
    p.add_argument("--out", default="bench-results", metavar="DIR", help="report directory (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a short smoke run (small data set, one round)")
    p.add_argument("--swap", action="store_true",
                   help="also measure swap-out/in pages/s through a real swap area with uzram.tools.bench.swap, once per "
                        "row it supports (slow; root; no other swap may be on)")
    p.add_argument("--swap-pages", default=None, metavar="N",
                   help="pages the --swap eater writes and reads (default: the data set's pages)")
    p.add_argument("--serial-size", type=size_arg, default=None, metavar="SIZE",
                   help=f"bytes the serialized writer (one connection, one 64 KiB request in flight) writes "
                        f"per uzram row and round; 0 = none (default: {bench.DEFAULT_SERIAL_SIZE >> 20}M, "
                        f"at most the data set; 0 with --quick)")
    p.add_argument("--list-rows", action="store_true", help="print the rows that would run, then exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--timeout", default="600", metavar="SECONDS",
                   help="longest one copy may take before its row is marked failed (default: %(default)s)")
    p.add_argument("--readme", default=None, metavar="FILE[:SECTION]",
                   help="also put the report between the <!-- uzram-bench:SECTION begin/end --> markers "
                        "of FILE (section default: swap with --swap, else main)")
    p.set_defaults(func=run)


def options_from(args):
    if args.workers is not None and args.rows is not None:
        raise ConfigError("--workers and --rows: give one (--rows names the modes itself)")
    workers = bench.parse_int_list(args.workers, "--workers") if args.workers is not None else None
    rows = bench.select_rows(args.rows, workers)
    return bench.BenchOptions(
        size=args.size if args.size is not None else (bench.QUICK_SIZE if args.quick else bench.DEFAULT_SIZE),
        mix=bench.parse_mix(args.mix if args.mix is not None else
                            ",".join(f"{k}={v}" for k, v in bench.DEFAULT_MIX.items())),
        seed=parse_int(args.seed, "--seed"),
        repeat=parse_int(args.repeat, "--repeat", 1) if args.repeat is not None else (1 if args.quick else
                                                                                       bench.DEFAULT_REPEAT),
        rows=rows,
        latency_count=parse_int(args.latency_count, "--latency-count", 1) if args.latency_count is not None
        else (bench.QUICK_LATENCY_COUNT if args.quick else bench.DEFAULT_LATENCY_COUNT),
        swap=args.swap,
        swap_pages=parse_int(args.swap_pages, "--swap-pages", 1) if args.swap_pages is not None else None,
        serial_size=args.serial_size if args.serial_size is not None else (0 if args.quick else
                                                                           bench.DEFAULT_SERIAL_SIZE),
        timeout=parse_int(args.timeout, "--timeout", 1),
    )


def canonical_command(o, args):
    """The command that repeats this run, spelled out (when sys.argv is not ours)."""
    argv = ["bench", "--size", str(o.size), "--mix", bench.format_mix(o.mix), "--seed", str(o.seed),
            "--repeat", str(o.repeat), "--latency-count", str(o.latency_count), "--serial-size", str(o.serial_size),
            "--rows", ",".join(r.name for r in o.rows), "--out", args.out]
    return bench.command_line(argv + (["--swap"] if o.swap else []))


def run(args):
    o = options_from(args)
    if args.list_rows:
        for r in o.rows:
            print(f"{r.name:22s} {r.label}")
        return 0
    progress = bench.Progress(0, stream=sys.stderr, enabled=not args.no_progress)
    result = bench.run_bench(o, progress)
    command = bench.command_line() if sys.argv[1:2] == ["bench"] else canonical_command(o, args)
    paths = bench.write_report(result, args.out, command)
    if args.readme:
        readme, _, section = args.readme.partition(":")
        with open(os.path.join(args.out, "report.md")) as f:
            bench.update_readme(readme, section or ("swap" if o.swap else "main"), f.read())
    print(bench.format_table(result))
    if result["source"]["changed_during_run"]:
        print("warning: uzram's sources changed during the run; the uzram rows did not all run the same code")
    print()
    print("Targets (ratios of medians, measured side by side in this run):")
    print(bench.format_ratios(result))
    print()
    print("Wrote " + ", ".join(os.path.relpath(p) if not os.path.isabs(args.out) else p for p in paths))
    failed = [r for r in result["rows"] if r["status"] == "failed"]
    return 0 if not failed or any(r["status"] == "ok" for r in result["rows"]) else 1
