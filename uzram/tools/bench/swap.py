"""Swap throughput through a real swap device: a memory eater in a memory cgroup whose limit is
far below its data writes pages (swap-out) and reads them back (swap-in); pages/s come from the
pswpout/pswpin deltas in /proc/vmstat over each phase.  Root only.

``swap_throughput(make_device, pages=...)`` measures one device; ``make_device`` is a context
manager factory that sets the swap area up and tears it down.  Ready-made ones:
``uzram_device(workers=0)``, ``nbdkit_memory_device()`` (the same nbdfuse + loop path with nbdkit's
C memory plugin) and ``kernel_zram_device()`` (where /sys/class/zram-control exists).
``compare()`` runs them all in one run and returns plain dicts.

pswpout/pswpin are system-wide: another swap user at the same time would be counted too.
"""

import contextlib
import json
import os
import subprocess
import sys
import time

from uzram.host import swap as swapmod
from uzram.host.swapconfig import SwapConfig
from uzram.host.memcg import MemoryCgroup
from uzram.nbd.server import REPO, clean_env, venv_dir
from uzram.core.errors import UzramError
from .common import BenchError

ZRAM_CONTROL = "/sys/class/zram-control"
PRIORITY = 32000


def _python():
    candidate = os.path.join(venv_dir(), "bin", "python")
    return candidate if os.path.exists(candidate) else sys.executable


def run_eater(pages, *, limit, rounds=2, name=None, timeout=600, between=None):
    """Run uzram.eater for ``pages`` pages in a new memory cgroup limited to ``limit`` bytes;
    ``between()``, when given, runs once every page is written and before any is verified.
    Returns the eater's report; raises BenchError when it fails or any page was wrong."""
    name = name or f"eater-{os.getpid()}-{time.monotonic_ns()}"
    with MemoryCgroup.create(name, limit) as cg:
        argv = cg.wrap([_python(), "-m", "uzram.tools.eater", "--pages", str(pages), "--rounds", str(rounds)]
                       + (["--pause"] if between else []))
        env = clean_env(PYTHONPATH=REPO)          # the directory that holds uzram/
        p = subprocess.Popen(argv, env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            if between:
                said = p.stderr.readline()
                if said.strip() != "written":
                    p.kill()
                    raise BenchError(f"the eater failed while writing: {(said + p.stderr.read()).strip()[-500:]}")
                between()
            out, err = p.communicate("\n" if between else None, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"the eater did not finish within {timeout} s") from None
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        try:
            report = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BenchError(f"the eater failed (status {p.returncode}): {err.strip()[-500:]}") from None
        report["cgroup_version"] = cg.version
        report["limit"] = limit
    if report["bad_pages"]:
        raise BenchError(f"{report['bad_pages']} pages read back wrong: {report}")
    return report


def _rates(report):
    write = report["phases"][0]
    reads = report["phases"][1:]
    read_s = sum(p["seconds"] for p in reads)
    swapin = sum(p["pswpin"] for p in reads)
    return {
        "pages": report["pages"],
        "write_seconds": round(write["seconds"], 3),
        "swapout_pages": write["pswpout"],
        "swapout_pages_per_s": round(write["pswpout"] / write["seconds"]) if write["seconds"] else 0,
        "swapout_cpu_busy": write.get("cpu_busy"),
        "read_seconds": round(read_s, 3),
        "swapin_pages": swapin,
        "swapin_pages_per_s": round(swapin / read_s) if read_s else 0,
        "read_swapout_pages": sum(p["pswpout"] for p in reads),
        "bad_pages": report["bad_pages"],
    }


def swap_throughput(make_device, pages=65536, *, limit=64 << 20, rounds=2):
    """Swap-out and swap-in pages/s through the device ``make_device()`` sets up.

    Returns a dict: pages, write_seconds, swapout_pages, swapout_pages_per_s, read_seconds
    (all verify rounds), swapin_pages, swapin_pages_per_s, read_swapout_pages, bad_pages, plus
    ``device`` (what make_device yielded: a dict, e.g. its statistics callable removed)."""
    with make_device() as device:
        result = _rates(run_eater(pages, limit=limit, rounds=rounds))
        info = dict(device or {})
        stats = info.pop("stats", None)
        if stats is not None:
            info["stats"] = stats()
        result["device"] = info
    return result


def eater_ceiling(pages=65536, rounds=2):
    """The eater's own speed with no swapping (a generous cgroup limit): an upper bound for the rates."""
    report = run_eater(pages, limit=pages * 4096 * 2 + (256 << 20), rounds=rounds)
    write = report["phases"][0]
    reads = report["phases"][1:]
    return {"pages": pages, "write_pages_per_s": round(pages / write["seconds"]),
            "read_pages_per_s": round(pages * len(reads) / sum(p["seconds"] for p in reads))}


# --- devices -------------------------------------------------------------------------------------

def _no_other_swap():
    others = swapmod.proc_swaps()
    if others:
        raise BenchError(f"other swap areas are on ({', '.join(others)}): the figures would mix them in")


@contextlib.contextmanager
def _via_swap_on(name, size, plugin, **config):
    _no_other_swap()
    cfg = SwapConfig(name=name, size=size, priority=PRIORITY, **config)
    state = swapmod.swap_on(cfg, plugin=plugin)
    try:
        info = {"kind": plugin, "device": state["steps"][-1]["device"], "config": state["config"]}
        if plugin == "uzram":
            rt = next(s for s in state["steps"] if s["step"] == "server")["runtime_dir"]
            from uzram.nbd import control
            info["stats"] = lambda: control.query(rt, "stats")
        yield info
    finally:
        swapmod.swap_off(name)


def uzram_device(size=1 << 30, workers=0, algorithm="lz4", name=None):
    """make_device for uzram (nbdkit --swap + nbdfuse + loop), ``workers`` kcompressd workers."""
    return lambda: _via_swap_on(name or f"uzrambench{os.getpid()}", size, "uzram",
                                workers=workers, algorithm=algorithm)


def nbdkit_memory_device(size=1 << 30, name=None):
    """make_device for nbdkit's C memory plugin behind the same nbdfuse + loop path."""
    return lambda: _via_swap_on(name or f"membench{os.getpid()}", size, "memory")


def _write(path, value):
    with open(path, "w") as f:
        f.write(str(value))


@contextlib.contextmanager
def _zram(size, algorithm):
    _no_other_swap()
    if not os.path.isdir(ZRAM_CONTROL):
        raise BenchError(f"no kernel zram ({ZRAM_CONTROL} is missing; modprobe zram)")
    with open(os.path.join(ZRAM_CONTROL, "hot_add")) as f:
        number = int(f.read())
    dev, sysdir = f"/dev/zram{number}", f"/sys/block/zram{number}"
    swapped = False
    try:
        _write(f"{sysdir}/comp_algorithm", algorithm)
        _write(f"{sysdir}/disksize", size)
        swapmod.run_tool(["mkswap", dev], "mkswap")
        swapmod.run_tool(["swapon", "--priority", str(PRIORITY), dev], "swapon")
        swapped = True

        def stats():
            with open(f"{sysdir}/mm_stat") as f:
                values = [int(v) for v in f.read().split()]
            return dict(zip(("orig_data_size", "compr_data_size", "mem_used_total", "mem_limit",
                             "mem_used_max", "same_pages", "pages_compacted", "huge_pages"), values))

        yield {"kind": "zram", "device": dev, "algorithm": algorithm, "stats": stats}
    finally:
        if swapped:
            swapmod.run_tool(["swapoff", dev], "swapoff")
        _write(f"{sysdir}/reset", 1)
        _write(os.path.join(ZRAM_CONTROL, "hot_remove"), number)


def kernel_zram_device(size=1 << 30, algorithm="lz4"):
    """make_device for a new kernel zram device (hot_add; removed again with hot_remove)."""
    return lambda: _zram(size, algorithm)


def compare(pages=65536, *, limit=64 << 20, workers=(0,), rounds=2):
    """All devices in one run: {"eater": ceiling, "uzram-inline": ..., "uzram-workers-N": ...,
    "nbdkit-memory": ..., "zram": ...}; a device that cannot run gets {"error": message}."""
    swapmod.require_root("the swap benchmark")
    out = {"eater": eater_ceiling(pages, rounds)}
    makers = [(("uzram-inline" if w == 0 else f"uzram-workers-{w}"), uzram_device(workers=w)) for w in workers]
    makers += [("nbdkit-memory", nbdkit_memory_device())]
    if os.path.isdir(ZRAM_CONTROL):
        makers.append(("zram", kernel_zram_device()))
    for label, make in makers:
        try:
            out[label] = swap_throughput(make, pages, limit=limit, rounds=rounds)
        except UzramError as e:
            out[label] = {"error": str(e)}
    return out


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(prog="python -m uzram.tools.bench.swap")
    ap.add_argument("--pages", type=int, default=65536)
    ap.add_argument("--workers", default="0", help="comma-separated worker counts for uzram (default 0)")
    args = ap.parse_args()
    print(json.dumps(compare(args.pages, workers=[int(w) for w in args.workers.split(",")]), indent=1))
