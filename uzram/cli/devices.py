"""``uzram list``: the running devices, one line each, as zramctl lists zram devices.

    $ uzram list
    NAME    DISKSIZE  DATA COMPR TOTAL ALGORITHM STREAMS ZERO-PAGES MOUNTPOINT
    uzram0        1G  312M 81.5M   84M lz4             1       1024 [SWAP]

Devices are found by their runtime directories: those under the caller's default base
($XDG_RUNTIME_DIR/uzram, /tmp/uzram-UID/uzram; /run/uzram as root) and any given with
--runtime-dir.  A device whose control socket the caller may not open is not listed
(they are private to their owner), so no root is needed to list one's own.  MOUNTPOINT is
[SWAP] for a device that ``uzram swap on`` made a swap area of.
"""

import json
import os

from uzram.core import schema
from uzram.core.config import default_base
from uzram.core.errors import UzramError
from uzram.core.stats import Stats
from uzram.host import swap
from uzram.nbd import control

#: zramctl's columns (and the one uzram adds, WORKERS): header -> (help, value of a Stats, size?)
COLUMNS = {
    "NAME": ("device name", lambda s: s.name, False),
    "DISKSIZE": ("limit on the uncompressed amount of data", lambda s: s.disksize, True),
    "DATA": ("uncompressed size of stored data", lambda s: s.orig_data_size, True),
    "COMPR": ("compressed size of stored data", lambda s: s.compr_data_size, True),
    "TOTAL": ("all memory including allocator fragmentation and metadata overhead", lambda s: s.mem_used_total, True),
    "ALGORITHM": ("the selected compression algorithm", lambda s: s.algorithm.partition(":")[0], False),
    "STREAMS": ("number of concurrent compress operations (kcompressd workers; 1 inline)",
                lambda s: s.workers or 1, False),
    "ZERO-PAGES": ("empty pages with no allocated memory (same-filled)", lambda s: s.same_pages, False),
    "MEM-LIMIT": ("memory limit used to store compressed data", lambda s: s.mem_limit, True),
    "MEM-USED": ("memory zram has consumed to store compressed data", lambda s: s.mem_used_max, True),
    "MIGRATED": ("number of objects migrated by compaction (pages given back)", lambda s: s.pages_compacted, False),
    "COMP-RATIO": ("compression ratio: DATA/TOTAL", lambda s: round(s.orig_data_size / s.mem_used_total, 2)
                   if s.mem_used_total else 0.0, False),
    "MOUNTPOINT": ("where the device is mounted ([SWAP] for swap)", None, False),
}
DEFAULT = ("NAME", "DISKSIZE", "DATA", "COMPR", "TOTAL", "ALGORITHM", "STREAMS", "ZERO-PAGES", "MOUNTPOINT")


def register(sub):
    help_cols = "; ".join(f"{c}: {h}" for c, (h, _, _) in COLUMNS.items())
    p = sub.add_parser("list", help="list the running devices (like zramctl)",
                       description="List the running uzram devices the caller may see, as zramctl lists zram "
                                   f"devices. Columns: {help_cols}.")
    p.add_argument("-o", "--output", help=f"columns to print, comma separated (default: {','.join(DEFAULT)})")
    p.add_argument("-b", "--bytes", action="store_true", help="print sizes in bytes rather than in a human-readable form")
    p.add_argument("-r", "--raw", action="store_true", help="use the raw output format (no alignment)")
    p.add_argument("-n", "--noheadings", action="store_true", help="do not print a header line")
    p.add_argument("-J", "--json", action="store_true", help="use the JSON output format")
    p.add_argument("--runtime-dir", action="append", default=[], metavar="DIR",
                   help="also list the device whose runtime directory this is, or the devices in its "
                        "subdirectories (as uzram serve --config --runtime-dir DIR makes them; repeatable)")
    p.set_defaults(func=run)


def human(n):
    """zramctl's sizes: 512B, 4K, 81.5M, 1G (one decimal, dropped when .0)."""
    for unit in ("B", "K", "M", "G", "T", "P"):
        if n < 1024 or unit == "P":
            text = f"{n:.1f}".rstrip("0").rstrip(".") if unit != "B" else str(int(n))
            return text + unit
        n /= 1024


def candidates(extra=()):
    """Runtime directories that may hold a device, each once."""
    bases = [os.path.join(default_base()[0], "uzram")]
    if os.geteuid() == 0:
        bases.append("/run/uzram")
    seen, out = set(), []
    asked = []
    for d in extra:
        asked.append(d)
        if not os.path.exists(os.path.join(d, control.CONTROL_NAME)) and os.path.isdir(d):
            asked += [os.path.join(d, e) for e in sorted(os.listdir(d))]
    for d in asked + [os.path.join(b, e) for b in bases if os.path.isdir(b) for e in sorted(os.listdir(b))]:
        real = os.path.realpath(d)
        if real not in seen and os.path.exists(os.path.join(d, control.CONTROL_NAME)):
            seen.add(real)
            out.append(d)
    return out


def devices(extra=()):
    """[(runtime directory, Stats)] of the devices that answer."""
    out = []
    for rd in candidates(extra):
        try:
            out.append((rd, Stats.from_dict(control.query(rd, "stats", timeout=5))))
        except UzramError:
            continue            # not ours, stale, or gone meanwhile
    return out


def run(args):
    cols = [c.strip().upper() for c in args.output.split(",")] if args.output else list(DEFAULT)
    unknown = [c for c in cols if c not in COLUMNS]
    if unknown:
        raise UzramError(f"unknown column {unknown[0]!r} (known: {', '.join(COLUMNS)})")
    mounts = swap.swap_mounts()
    rows = []
    for rd, s in devices(args.runtime_dir):
        row = []
        for c in cols:
            _, value, is_size = COLUMNS[c]
            if c == "MOUNTPOINT":
                v = "[SWAP]" if os.path.realpath(rd) in mounts else ""
            else:
                v = value(s)
                if is_size and not args.bytes:
                    v = human(v)
            row.append(v)
        rows.append(row)
    if args.json:
        print(json.dumps(schema.versioned(schema.LIST, {"zramdevices": [
            {c.lower(): (v if v != "" else None) for c, v in zip(cols, row)} for row in rows]}), indent=2))
        return 0
    table = ([] if args.noheadings else [cols]) + [[str(v) for v in row] for row in rows]
    if args.raw:
        for line in table:
            print(" ".join(line))
        return 0
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))] if table else []
    left = {"NAME", "ALGORITHM", "MOUNTPOINT"}
    for line in table:
        print(" ".join(v.ljust(w) if c in left else v.rjust(w) for c, v, w in zip(cols, line, widths)).rstrip())
    return 0
