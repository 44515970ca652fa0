"""``uzram swap on|off|status|check``: swap on a uzram device on the host (root)."""

import argparse
import json

from uzram.core import schema
from uzram.core.config import KEYS
from uzram.core.errors import ConfigError
from uzram.core.stats import Stats
from uzram.host import swap, swapconfig

CONFIG = "/etc/uzram/uzram.conf"
CONFIG_HELP = (f"Config file ({CONFIG}; zram-generator's form: [NAME] sections, key = value lines, "
               "# comments):\n" + swapconfig.keys_help())
#: the options for the table's swap keys, and what their defaults are here
SWAP_DEFAULTS = {"size": "1G", "max_pending": f"{swapconfig.SWAP_MAX_PENDING >> 20}M"}


def register(sub):
    p = sub.add_parser("swap", help="swap on a uzram device on this host (root)",
                       description="Swap on a uzram device: nbdkit (locked in memory) -> nbdfuse + loop "
                                   "device (or nbd-client where the kernel has NBD) -> mkswap -> swapon. "
                                   f"Every step is recorded in {swap.STATE_DIR}/NAME.json so that 'off' "
                                   "undoes it.")
    ss = p.add_subparsers(dest="swap_command", required=True, metavar="{on,off,status,check}")

    on = ss.add_parser("on", help="start a device and swap on it", epilog=CONFIG_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    on.add_argument("--config", metavar="FILE", help=f"read settings from FILE (e.g. {CONFIG}); "
                                                     "options given here override it")
    for key in (k for k in KEYS.values() if k.swap):
        default = SWAP_DEFAULTS.get(key.name, key.default)
        flag = {"discard": {"action": "store_const", "const": True}}.get(key.name, {})
        on.add_argument(key.option, dest=key.name, default=None,
                        help=f"{key.help} (default: {default})".replace("%", "%%"), **flag)
    on.add_argument("--block", choices=("auto", "nbd", "loop"), default="auto",
                    help="block device: the kernel NBD client or nbdfuse + loop (default: auto)")
    on.set_defaults(func=run_on)

    off = ss.add_parser("off", help="turn the swap off and stop the device")
    off.add_argument("--config", metavar="FILE", help="take the name from FILE (its only device)")
    off.add_argument("--name", help="device name (default: uzram0)")
    off.set_defaults(func=run_off)

    st = ss.add_parser("status", help="show uzram swap devices, their swap use and statistics")
    st.add_argument("--name", help="only this device")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=run_status)

    ck = ss.add_parser("check", help="validate a config file without starting anything", epilog=CONFIG_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ck.add_argument("--config", metavar="FILE", default=CONFIG, help="the file (default: %(default)s)")
    ck.set_defaults(func=run_check)


def config_of(args):
    """The device to turn on: the file's (``--name`` picks a section) with the options over it."""
    if args.config:
        cfg = swapconfig.select(swapconfig.load(args.config), args.name, args.config)
    else:
        cfg = swapconfig.SwapConfig()
    for key in (k for k in KEYS.values() if k.swap):
        value = getattr(args, key.name, None)
        if value is not None:
            cfg.set(key.name, value)
    return cfg


def run_on(args):
    swap.require_root("uzram swap on")
    cfg = config_of(args).validate()
    state = swap.swap_on(cfg, block=args.block)
    device = state["steps"][-1]["device"]
    print(f"uzram swap: {cfg.name} on {device}: {cfg.size} bytes, {cfg.algorithm}, workers {cfg.workers}, "
          f"priority {cfg.priority}{', discard' if cfg.discard else ''}")
    for warning in state["warnings"]:
        print(f"uzram swap: warning: {warning}")
    return 0


def run_check(args):
    devices = swapconfig.load(args.config)
    names = [d.name for d in devices]
    print(f"{args.config}: {len(devices)} device{'s' if len(devices) != 1 else ''}")
    for d in devices:
        print(f"  {d.describe()}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{args.config}: a device name is given twice")
    return 0


def run_off(args):
    swap.require_root("uzram swap off")
    name = args.name or (swapconfig.select(swapconfig.load(args.config), None, args.config).name
                         if args.config else "uzram0")
    try:
        swap.swap_off(name)
    except swap.NotOnError:
        # Not an error for scripts and units: what was asked for (the swap off) is the case.
        print(f"uzram swap: {name} is not on (nothing to do)")
        return 0
    print(f"uzram swap: {name} off")
    return 0


def _mib(n):
    return f"{n / 2**20:.1f} MiB"


def run_status(args):
    swap.require_root("uzram swap status")
    entries = swap.swap_status(args.name)
    if args.json:
        print(json.dumps({"version": schema.SWAP_STATUS, "devices": entries}, indent=2))
        return 0
    if not entries:
        print("uzram swap: no uzram swap is on")
        return 0
    for e in entries:
        cfg = e["config"] or {}
        print(f"{e['name']}: {e['device'] or '(no device)'}"
              f"{'' if e['complete'] else ' (incomplete: steps ' + ', '.join(e['steps']) + ')'}")
        if e["swap"]:
            s = e["swap"]
            print(f"  swap:     {_mib(s['used'])} used of {_mib(s['size'])}, priority {s['priority']}")
        st = Stats.from_dict(e["stats"]) if e["stats"] else None
        workers = f"{st.workers} ({st.workers_alive} running)" if st else cfg.get("workers")
        print(f"  device:   {cfg.get('size')} bytes, {cfg.get('algorithm')}, workers {workers}, "
              f"mem_limit {cfg.get('mem_limit') or 'none'}")
        print(f"  nbdkit:   {'running' if e['server_alive'] else 'NOT RUNNING'}"
              + ("" if e["nbdfuse_alive"] is None else f"; nbdfuse: {'running' if e['nbdfuse_alive'] else 'NOT RUNNING'}"))
        fp = e["footprint"]
        if fp["processes"]:
            names = {}
            for proc in fp["processes"]:
                names[proc["name"]] = names.get(proc["name"], 0) + 1
            who = " + ".join(n if c == 1 else f"{c} {n}" for n, c in names.items())
            print(f"  memory:   {_mib(fp['rss'])} resident, {_mib(fp['locked'])} locked "
                  f"(VmLck {_mib(fp['vmlck'])}, address space locked on fault) in {who}")
        if st:
            print(f"  stored:   {_mib(st.orig_data_size)} in {_mib(st.mem_used_total)} "
                  f"(ratio {st.compression_ratio:.2f}), same_pages {st.same_pages}, huge_pages {st.huge_pages}")
            print(f"  requests: {st.reads} reads, {st.writes} writes, {st.failed_reads + st.failed_writes} failed, "
                  f"notify_free {st.notify_free}")
        for w in e["warnings"]:
            print(f"  warning:  {w}")
    return 0
