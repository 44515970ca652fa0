"""``uzram probe URI``: ioping/fio-like latency of any NBD export (see ``uzram.probe``)."""

import argparse
import json
import os
import sys

from uzram.tools import probe
from uzram.core.config import parse_int, parse_size
from uzram.core.errors import ConfigError

DESCRIPTION = """\
Send requests to an NBD export and time each one, like ioping; then print a summary with
fio-style percentiles and a latency histogram.

The summary's two lines mean what ioping's do: "N requests completed in T" sums the
measured requests' latencies (T), and its iops and speed are N / T and bytes / T;
"generated M requests in W" counts every request, the warmup included, against the wall
time of the run, pauses included.  Without --seed a seed is drawn at random; the summary
and the JSON give it, so --seed N repeats the run.

URI is any NBD URI: nbd+unix:///?socket=/run/uzram/swap0/nbd.sock, nbd://127.0.0.1:10809.
Unlike ioping, --interval defaults to 0 (back to back, for benchmarking); use
--interval 1 for ioping's pace.  Latency is measured from submitting a request to
processing its reply (fio's "lat").  --quiet leaves out the per-request lines, which
also keeps the probe's own work between requests smallest.

--compare-fio runs random reads at queue depth 1 with this probe and with fio's nbd
engine alternately and prints both p50s and their ratio."""

EPILOG = """\
examples:
  uzram probe nbd+unix:///?socket=/tmp/s --count 10 --interval 1
  uzram probe nbd://127.0.0.1:10809 --op write --content same --count 100000 --quiet
  uzram probe URI --op mixed --read-share 0.7 --queue-depth 16 --json
  uzram probe URI --range 0:64M --pattern sequential --size 64K --plot lat.png
  uzram probe --compare-fio URI --count 20000"""


def register(subparsers):
    p = subparsers.add_parser("probe", help="measure request latency of an NBD export (ioping/fio-like)",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("uri", metavar="URI", help="NBD URI of the export to probe")
    p.add_argument("--op", choices=probe.OPS, default="read", help="request kind (default: read)")
    p.add_argument("--read-share", default="0.5", metavar="FRACTION",
                   help="for --op mixed: fraction of reads, 0..1 (default: 0.5)")
    p.add_argument("--size", default="4K", metavar="BYTES", help="request size, K/M suffixes (default: 4K)")
    p.add_argument("--count", default=None, metavar="N",
                   help="requests measured, after the warmup (default: 1000; 10000 with --compare-fio)")
    p.add_argument("--interval", default="0", metavar="SECONDS",
                   help="pause between requests (default: 0; ioping's is 1)")
    p.add_argument("--warmup", default=None, metavar="N",
                   help="requests sent first and left out of the statistics (default: 1; 100 with --compare-fio)")
    p.add_argument("--queue-depth", default="1", metavar="N",
                   help="requests in flight at once; 1 = pure latency (default: 1)")
    p.add_argument("--content", choices=probe.CONTENTS, default="random",
                   help="what writes carry: all-zero pages, one 8-byte value repeated, compressible text, "
                        "random bytes (default: random)")
    p.add_argument("--pattern", choices=probe.PATTERNS, default="random",
                   help="offsets: uniform random or sequential, aligned to --size (default: random)")
    p.add_argument("--range", default=None, metavar="START:LENGTH",
                   help="probe only this byte range (K/M/G suffixes; empty LENGTH = to the end)")
    p.add_argument("--seed", default=None, metavar="N", help="seed for offsets and contents (repeatable runs)")
    p.add_argument("--quiet", action="store_true", help="no per-request lines, only the summary")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead (implies --quiet)")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="also write a PNG: the latency histogram (log count axis) beside the "
                        "percentile curve, in µs")
    p.add_argument("--compare-fio", action="store_true",
                   help="compare this probe's p50 for random reads at queue depth 1 with fio's nbd engine")
    p.add_argument("--rounds", default="3", metavar="N", help="with --compare-fio: alternating rounds (default: 3)")
    p.set_defaults(func=run)
    p.error = _one_line_error


def _one_line_error(message):
    """argparse's own errors (a bad choice, a missing URI) as one line, exit status 2."""
    print(f"uzram probe: {message}", file=sys.stderr)
    sys.exit(2)


def _parse_float(text, key):
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{key}: {text!r} is not a number") from None


def options_from_args(args, default_count=1000):
    """ProbeOptions from the parsed (string) arguments; ConfigError names a bad one."""
    start, length = probe.parse_range(args.range, parse_size) if args.range is not None else (0, None)
    return probe.ProbeOptions(
        op=args.op,
        read_share=_parse_float(args.read_share, "--read-share"),
        size=parse_size(args.size, key="--size"),
        count=parse_int(args.count, "--count", minimum=1) if args.count is not None else default_count,
        interval=_parse_float(args.interval, "--interval"),
        warmup=parse_int(args.warmup, "--warmup") if args.warmup is not None else 1,
        queue_depth=parse_int(args.queue_depth, "--queue-depth", minimum=1),
        content=args.content,
        pattern=args.pattern,
        range_start=start,
        range_length=length,
        seed=parse_int(args.seed, "--seed") if args.seed is not None else None,
    )


def run(args):
    try:
        return _compare(args) if args.compare_fio else _probe(args)
    except BrokenPipeError:
        # The reader went away (``uzram probe URI | head``): stop quietly, as a C tool would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _probe(args):
    options = options_from_args(args)
    if args.plot is not None:
        probe.check_plot_path(args.plot)
    out = sys.stdout
    report = None
    if not (args.quiet or args.json):
        report = _line_printer(out, options)
    result = probe.run_probe(args.uri, options, report=report,
                             on_start=None if report is None else _header_printer(out, args.uri, options))
    if args.plot is not None:
        probe.plot_histogram(result, args.plot)
    if args.json:
        d = result.to_dict()
        if args.plot is not None:
            d["plot"] = args.plot
        json.dump(d, out, indent=2)
        out.write("\n")
        return 0
    if report is not None:
        out.write("\n")
    out.write(probe.format_summary(result) + "\n")
    if args.plot is not None:
        out.write(f"histogram written to {args.plot}\n")
    return 0


def _line_printer(out, options):
    """The per-request reporter: one preformatted size string, one write per request."""
    size_text = probe.format_bytes(options.size)
    warmup = options.warmup
    fmt = probe.format_request
    write = out.write

    def report(index, op, offset, latency_ns):
        write(fmt(index, op, offset, latency_ns, size_text, warmup) + "\n")

    return report


def _header_printer(out, uri, options):
    def on_start(export_size):
        out.write(probe.format_header(uri, export_size, options) + "\n")
    return on_start


def _compare(args):
    count = parse_int(args.count, "--count", minimum=1) if args.count is not None else 10000
    size = parse_size(args.size, key="--size")
    rounds = parse_int(args.rounds, "--rounds", minimum=1)
    warmup = parse_int(args.warmup, "--warmup") if args.warmup is not None else 100
    c = probe.compare_with_fio(args.uri, count=count, size=size, rounds=rounds, warmup=warmup)
    if args.json:
        json.dump(c, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(probe.format_comparison(c) + "\n")
    return 0
