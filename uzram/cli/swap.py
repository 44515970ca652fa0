"""``uzram swap on|off|status``: swap on a uzram device on the host (root)."""

import argparse
import json

from uzram.core import schema
from uzram.host import swap
from uzram.core.stats import Stats
from .common import count_arg, size_arg

CONFIG_HELP = "Config file keys (key = value lines, # comments):\n" + "\n".join(
    f"  {k:10s} {text}" for k, text in swap.CONFIG_KEYS.items())


def register(sub):
    p = sub.add_parser("swap", help="swap on a uzram device on this host (root)",
                       description="Swap on a uzram device: nbdkit (locked in memory) -> nbdfuse + loop "
                                   "device (or nbd-client where the kernel has NBD) -> mkswap -> swapon. "
                                   f"Every step is recorded in {swap.STATE_DIR}/NAME.json so that 'off' "
                                   "undoes it.")
    ss = p.add_subparsers(dest="swap_command", required=True, metavar="{on,off,status}")

    on = ss.add_parser("on", help="start a device and swap on it", epilog=CONFIG_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    on.add_argument("--config", metavar="FILE", help="read settings from FILE (e.g. /etc/uzram/uzram.conf); "
                                                     "options given here override it")
    on.add_argument("--name", help="device name (default: uzram0)")
    on.add_argument("--size", type=size_arg, help="device size, K/M/G/T suffixes (default: 1G)")
    on.add_argument("--algorithm", help="lz4, lz4hc, zstd or deflate, optionally NAME:LEVEL (default: lz4)")
    on.add_argument("--workers", type=count_arg, help="kcompressd workers; 0 = compress inline")
    on.add_argument("--mem-limit", type=size_arg, help="limit on memory the device holds (default: none)")
    on.add_argument("--max-pending", type=size_arg, help="memory for pages queued for the workers "
                                                          f"(default: {swap.SWAP_MAX_PENDING >> 20}M)")
    on.add_argument("--priority", type=int, help=f"swap priority (default: {swap.DEFAULT_PRIORITY})")
    on.add_argument("--discard", action="store_true", default=None, help="swapon --discard")
    on.add_argument("--block", choices=("auto", "nbd", "loop"), default="auto",
                    help="block device: the kernel NBD client or nbdfuse + loop (default: auto)")
    on.set_defaults(func=run_on)

    off = ss.add_parser("off", help="turn the swap off and stop the device")
    off.add_argument("--config", metavar="FILE", help="take the name from FILE")
    off.add_argument("--name", help="device name (default: uzram0)")
    off.set_defaults(func=run_off)

    st = ss.add_parser("status", help="show uzram swap devices, their swap use and statistics")
    st.add_argument("--name", help="only this device")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=run_status)


def config_of(args):
    cfg = swap.SwapConfig.from_file(args.config) if args.config else swap.SwapConfig()
    for key in swap.CONFIG_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            cfg.set(key, value)
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


def run_off(args):
    swap.require_root("uzram swap off")
    name = args.name or (swap.SwapConfig.from_file(args.config).name if args.config else "uzram0")
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
