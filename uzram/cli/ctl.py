"""``uzram ctl NAME [ATTR[=VALUE] ...]``: zram's sysfs attributes of a running device.

    uzram ctl uzram0                       # every attribute and its value
    uzram ctl uzram0 mm_stat               # one, as cat /sys/block/zram0/mm_stat prints it
    uzram ctl uzram0 idle=all writeback=idle   # writes, in order, as echo ... > sysfs

Names, formats and refusals are zram's (uzram.core.attrs); a refused write prints one
line naming the attribute, why and zram's errno, and exits 2.
"""

import json

from uzram.core import schema
from uzram.core.config import default_runtime_dir
from uzram.nbd import control


def register(sub):
    p = sub.add_parser("ctl", help="read and write a device's zram attributes (disksize, writeback, recompress, ...)",
                       description="Read and write a running device's zram attributes, as in /sys/block/zramN/. "
                                   "With only NAME, list them all.")
    p.add_argument("name", metavar="NAME", help="the device's name")
    p.add_argument("attrs", nargs="*", metavar="ATTR[=VALUE]", help="an attribute to print, or to write with =VALUE")
    p.add_argument("--runtime-dir", help="the device's runtime directory (default: from NAME)")
    p.add_argument("--json", action="store_true", help="list the attributes as JSON")
    p.add_argument("--timeout", type=float, default=None,
                   help="give up on a write after this many seconds (default: wait until it is done)")
    p.set_defaults(func=run)


def run(args):
    rd = args.runtime_dir or default_runtime_dir(args.name)
    if not args.attrs:
        rows = control.query(rd, "attrs")["attrs"]
        if args.json:
            doc = {name: value for name, value, _ in rows}
            print(json.dumps(schema.versioned(schema.ATTRS, {"name": args.name, "attrs": doc}), indent=2))
            return 0
        width = max(len(name) for name, _, _ in rows)
        for name, value, help in rows:
            if value is None:
                print(f"{name:{width}}  (write-only: {help})")
            else:
                lines = value.split("\n")
                print(f"{name:{width}}  {lines[0]}")
                for more in lines[1:]:
                    print(f"{'':{width}}  {more}")
        return 0
    for item in args.attrs:
        name, eq, value = item.partition("=")
        if eq:
            done = control.query(rd, f"set {name} {value}", timeout=args.timeout)["done"]
            if done:
                print(f"{name}: {done}")
        else:
            print(control.query(rd, f"get {name}")["value"])
    return 0
