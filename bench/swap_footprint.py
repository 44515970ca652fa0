"""The memory a swap device's own processes hold: uzram beside `nbdkit memory --swap`.

    .venv/bin/python bench/swap_footprint.py [--size 1G] [--pages 65536] [--limit 48M] [--json]

Root; no other swap may be on.  For each row it turns a swap device on the way
`uzram swap on` does (`uzram swap on --size SIZE`, default workers; and nbdkit's C memory
plugin with `--swap` behind the same nbdfuse + loop path), waits 2 s and sums VmRSS, VmLck
and Locked (smaps_rollup) over nbdkit, its kcompressd workers and nbdfuse: the idle
footprint.  Then a memory eater in a memory cgroup (limit far below its data) swaps PAGES
pages through the device; every 0.5 s the footprint and uzram's mem_used_total are sampled,
and the row reports the sample nearest to (or furthest over) the budget

    growth of the summed VmRSS  <=  1.15 x mem_used_total + 16 MiB

and the last sample.  Then, on a fresh uzram device, a process holds 128 MiB in a 32 MiB
cgroup, and the arena file is compared with what nbdkit has mapped of it, and so locked.

VmLck counts the whole size of every locked mapping, locked on fault or not; Locked counts
the locked pages that are resident (shared ones divided among their
users).  Units: MiB.
"""

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uzram.nbd import control
from uzram.host import swap
from uzram.host.swapconfig import SwapConfig
from uzram.core.config import parse_size  # noqa: E402
from uzram.tools.bench.swap import run_eater  # noqa: E402

MIB = 1 << 20
SLACK, FACTOR = 16 * MIB, 1.15


def breakdown(pid):
    """{category: [VmLck bytes, Locked bytes]} of one process, from /proc/PID/smaps."""
    out, cur, prev = {}, None, ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and ":" not in fields[0]:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                path = fields[5] if len(fields) > 5 else ""
                if "uzram-arena" in path:
                    cat = "arena (memfd)"
                elif "uzram-pending" in path:
                    cat = "pending ring (memfd)"
                elif not path and os.path.basename(prev) == "nbdkit":
                    cat = "nbdkit's static buffers (.bss)"
                elif path.startswith("/"):
                    cat = "files (binaries, libraries, data)"
                else:
                    cat = "anonymous (heap, stacks, Python, page table)"
                prev = path
                cur = [cat, hi - lo, False]
                out.setdefault(cat, [0, 0])
            elif fields[0] == "Locked:":
                out[cur[0]][1] += int(fields[1]) << 10
            elif fields[0] == "VmFlags:" and ("lo" in fields[1:]):
                out[cur[0]][0] += cur[1]
    return out


HOLDER = r"""
import os, sys, time
n = int(sys.argv[1]) << 20
b = bytearray(n)
for off in range(0, n, 4096):
    b[off:off + 4096] = os.urandom(4096) if off // 4096 % 3 == 0 else (b"lorem %d ipsum " % off * 300)[:4096]
print("filled", flush=True)
time.sleep(600)
"""


def arena_mapping(pid):
    """{"rss", "swap"} in bytes of the arena memfd's mapping in process ``pid``."""
    out, cur = {"rss": 0, "swap": 0}, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and ":" not in fields[0]:
                cur = len(fields) > 5 and "uzram-arena" in fields[5]
            elif cur and fields[0] in ("Rss:", "Swap:"):
                out[fields[0][:-1].lower()] += int(fields[1]) << 10
    return out


def held_pages(state, rt, mib, limit, name):
    """Swapped-out pages that stay out (a process holding ``mib`` MiB in a cgroup of ``limit``):
    how much of the arena file nbdkit has mapped (so locked), and how much of it is in swap."""
    import subprocess
    from uzram.host.memcg import MemoryCgroup
    with MemoryCgroup.create(f"{name}-hold", limit) as cg:
        p = subprocess.Popen(cg.wrap([sys.executable, "-c", HOLDER, str(mib)]), stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "filled"
            time.sleep(2)
            st = control.query(rt, "stats")
            mapped = arena_mapping(state.step("server")["pid"])
            return {"held_mib": mib, "arena_file": st["shared_bytes"] - st.get("pending_held_bytes", 0),
                    "mem_used_total": st["mem_used_total"], "nbdkit_mapped": mapped["rss"],
                    "arena_swapped": mapped["swap"]}
        finally:
            p.kill()
            p.wait()
            p.stdout.close()


def hold_check(size, name):
    """held_pages on a fresh uzram swap device."""
    cfg = SwapConfig(name=name, size=size, priority=32000)
    swap.swap_on(cfg)
    try:
        state = swap.State.load(swap.STATE_DIR, name)
        return held_pages(state, state.step("server")["runtime_dir"], 128, 32 * MIB, name)
    finally:
        swap.swap_off(name)


def measure(plugin, size, pages, limit, name):
    if swap.proc_swaps():
        sys.exit(f"swap_footprint: other swap areas are on ({', '.join(swap.proc_swaps())})")
    cfg = SwapConfig(name=name, size=size, priority=32000)
    swap.swap_on(cfg, plugin=plugin)
    try:
        state = swap.State.load(swap.STATE_DIR, name)
        rt = state.step("server")["runtime_dir"]
        time.sleep(2)
        idle = swap.footprint(state)
        for proc in idle["processes"]:
            proc["breakdown"] = breakdown(proc["pid"])
        samples, done = [], threading.Event()

        def sample():
            while not done.is_set():
                fp = swap.footprint(state)
                used = control.query(rt, "stats")["mem_used_total"] if plugin == "uzram" else None
                samples.append((fp, used))
                done.wait(0.5)

        t = threading.Thread(target=sample)
        t.start()
        try:
            report = run_eater(pages, limit=limit, rounds=1, name=f"{name}-eater")
        finally:
            done.set()
            t.join()
        row = {"row": plugin, "size": size, "workers": cfg.workers if plugin == "uzram" else None,
               "idle": idle, "pswpout": report["phases"][0]["pswpout"], "pages": pages}

        def judged(fp, used):
            growth = fp["rss"] - idle["rss"]
            budget = FACTOR * used + SLACK if used is not None else None
            return {"rss": fp["rss"], "locked": fp["locked"], "vmlck": fp["vmlck"], "growth": growth,
                    "mem_used_total": used, "budget": budget,
                    "over_budget": None if budget is None else growth - budget}

        judged_samples = [judged(fp, used) for fp, used in samples]
        if plugin == "uzram":
            row["tightest"] = max(judged_samples, key=lambda s: s["over_budget"])
        row["last"] = judged_samples[-1]
        return row
    finally:
        swap.swap_off(name)


def mib(n):
    return "-" if n is None else f"{n / MIB:.1f}"


def main(argv=None):
    p = argparse.ArgumentParser(prog="swap_footprint.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="1G")
    p.add_argument("--pages", type=int, default=65536)
    p.add_argument("--limit", default="48M")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    swap.require_root("swap_footprint.py")
    size, limit = parse_size(a.size), parse_size(a.limit, "--limit")
    rows = [measure(plugin, size, a.pages, limit, f"fp{plugin[:3]}{os.getpid()}") for plugin in ("uzram", "memory")]
    rows[0]["held"] = hold_check(size, f"fphold{os.getpid()}")
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{a.pages} pages swapped through a {a.size} device in a memory cgroup of {a.limit}; MiB; "
          "sums over nbdkit, its workers and nbdfuse")
    print()
    print("| row | idle VmRSS | idle Locked | idle VmLck | swapped: growth | mem_used_total | "
          "budget 1.15 x used + 16 | growth - budget (tightest sample) | final VmRSS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        t = r.get("tightest") or r["last"]
        label = "uzram swap on" + (f" (workers {r['workers']})" if r["row"] == "uzram" else "")
        if r["row"] == "memory":
            label = "nbdkit memory --swap"
        print(f"| {label} | {mib(r['idle']['rss'])} | {mib(r['idle']['locked'])} | {mib(r['idle']['vmlck'])} "
              f"| {mib(r['last']['growth'])} | {mib(r['last']['mem_used_total'])} | {mib(r['last']['budget'])} "
              f"| {mib(t['over_budget'])} | {mib(r['last']['rss'])} |")
    h = rows[0].get("held")
    if h:
        print()
        print(f"A process holding {h['held_mib']} MiB in a 32 MiB memory cgroup: the arena file holds "
              f"{mib(h['arena_file'])} (mem_used_total {mib(h['mem_used_total'])}), nbdkit has "
              f"{mib(h['nbdkit_mapped'])} of it mapped (so locked: {mib(h['arena_file'] - h['nbdkit_mapped'])} "
              f"is not), {mib(h['arena_swapped'])} of it is in swap (the only swap is the uzram device)")
    print()
    print("Idle, per process and kind of mapping (VmLck / Locked, MiB):")
    for r in rows:
        for proc in r["idle"]["processes"]:
            print(f"  {r['row']:7s} {proc['name']:11s} VmRSS {mib(proc['rss']):>6s}  Locked "
                  f"{mib(proc['locked']):>6s}  VmLck {mib(proc['vmlck']):>7s}:  " + "; ".join(
                      f"{cat} {mib(v[0])} / {mib(v[1])}" for cat, v in
                      sorted(proc["breakdown"].items(), key=lambda kv: -kv[1][0]) if v[0] or v[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
