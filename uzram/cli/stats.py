"""``uzram stats``: read a running device's statistics."""

import json

from uzram.nbd import control
from uzram.tools import metrics
from uzram.core import schema
from uzram.core.stats import IO_STAT, MM_STAT, Stats, describe
from .common import add_device_selector, runtime_dir_of


def register(sub):
    p = sub.add_parser("stats", help="show a running device's statistics")
    add_device_selector(p)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument("--zram", action="store_true", help="print zram-style mm_stat and io_stat lines")
    fmt.add_argument("--prometheus", action="store_true",
                     help="print OpenMetrics text (zram's names prefixed uzram_, a device label), as uzram exporter serves")
    p.add_argument("--compact", action="store_true", help="compact the arena first (zram's compact)")
    p.set_defaults(func=run)


def _human(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def render_table(s):
    lines = []
    d = s.to_dict()
    for key, value in d.items():
        shown = value
        if isinstance(value, int) and (key.endswith("_size") or key.endswith("bytes") or key.startswith("mem_")
                                       or key == "disksize" or key == "max_pending"):
            shown = f"{value}  ({_human(value)})"
        doc = describe(key)
        lines.append(f"{key:22s} {str(shown):28s} {doc}")
    return "\n".join(lines)


def run(args):
    rd = runtime_dir_of(args)
    if args.compact:
        control.query(rd, "compact")
    s = Stats.from_dict(control.query(rd, "stats"))
    if args.prometheus:
        print(metrics.openmetrics([(metrics.device_labels(s, rd), s)]), end="")
    elif args.json:
        print(json.dumps(schema.versioned(schema.STATS, s.to_dict()), indent=2))
    elif args.zram:
        print("mm_stat: " + s.mm_stat())
        print("io_stat: " + s.io_stat())
        print("# mm_stat: " + " ".join(MM_STAT))
        print("# io_stat: " + " ".join(IO_STAT))
    else:
        print(render_table(s))
    return 0
