"""The ratios uzram promises, computed from the rows' medians measured side by side, with
the ceiling this machine's CPUs allow.
"""

import dataclasses
import os

from .rows import UZRAM_ROW


@dataclasses.dataclass
class Ratio:
    name: str
    """What is compared."""
    numerator: str
    denominator: str
    value: float | None
    """The ratio of the two rows' medians; None when a row is missing or failed."""
    target: str
    """``>= 1``, ``<= 1.15``..."""
    status: str
    """PASS, MISS or n/a."""
    per_round: list
    """The same ratio within each round (rows measured minutes apart at most)."""
    ceiling: float | None = None
    """kcompressd write targets: the best ratio this machine's CPUs allow any implementation
    (see ``cpu_ceiling``); None elsewhere."""


def _check(value, op, bound):
    if value is None:
        return "n/a"
    return "PASS" if (value >= bound if op == ">=" else value <= bound) else "MISS"


def compute_ratios(results):
    """The target ratios from ``results`` ({row name: {"median": {...}, "runs": [...], "status": ...}})."""
    ok = {n: r for n, r in results.items() if r["status"] == "ok"}
    ratios = []

    def field_ratio(name, num, den, field, op, bound):
        if num not in results or den not in results:
            return
        value = None
        per_round = []
        if num in ok and den in ok:
            a, b = ok[num]["median"].get(field), ok[den]["median"].get(field)
            value = a / b if a is not None and b else None
            for ra, rb in zip(ok[num]["runs"], ok[den]["runs"]):
                if ra.get(field) is not None and rb.get(field):
                    per_round.append(ra[field] / rb[field])
        ratios.append(Ratio(name, num, den, value, f"{op} {bound:g}", _check(value, op, bound), per_round))

    for alg in ("lz4", "zstd"):
        field_ratio(f"uzram {alg} inline write / nbdkit allocator=zstd write", f"uzram-{alg}-inline",
                    "nbdkit-memory-zstd", "write_mb_s", ">=", 1)
    for alg in ("lz4", "zstd"):
        field_ratio(f"uzram {alg} inline 4K read p50 / bare plugin p50", f"uzram-{alg}-inline", "bare-python",
                    "read4k_p50_us", "<=", 1.15)
    # The same goal against a bare plugin that also pins its thread state (uzram/nbd/threadstate.py),
    # so that the ratio shows the page store's cost alone, not the pin's gain.
    for alg in ("lz4", "zstd"):
        field_ratio(f"uzram {alg} inline 4K read p50 / bare plugin (thread state pinned) p50", f"uzram-{alg}-inline",
                    "bare-python-pinned", "read4k_p50_us", "<=", 1.15)
    for name, r in results.items():
        m = UZRAM_ROW.fullmatch(name)
        if not m or m.group(1) not in ("lz4", "zstd"):
            continue
        value, per_round = None, []
        if name in ok:
            def budget(x):
                return 1.10 * x["compr_data_size"] + 32 * x["pages_stored"]
            med = ok[name]["median"]
            if med.get("compr_data_size") is not None and "rss_growth" in med:
                value = med["rss_growth"] / budget(med) if budget(med) else None
            per_round = [x["rss_growth"] / budget(x) for x in ok[name]["runs"] if budget(x)]
        ratios.append(Ratio(f"{name}: memory growth / (1.10 x compr_data_size + 32 x pages_stored)", name,
                            "its own stats", value, "<= 1", _check(value, "<=", 1), per_round))
    workers = sorted({int(m.group(3)) for m in map(UZRAM_ROW.fullmatch, results)
                      if m and m.group(3) and not m.group(4)})
    # kcompressd, the issue of the zero-copy hand-off: offloading must make writes faster
    for alg in ("lz4", "zstd"):
        for w in workers:
            field_ratio(f"uzram {alg} kcompressd x{w} write / uzram {alg} inline write", f"uzram-{alg}-w{w}",
                        f"uzram-{alg}-inline", "write_mb_s", ">=", 1)
    for alg, den, bound in (("lz4", "bare-python-pinned", 0.55), ("zstd", "nbdkit-memory-zstd", 2.5)):
        for w in workers:
            num = f"uzram-{alg}-w{w}"
            peer = "bare plugin (thread state pinned)" if den == "bare-python-pinned" else "nbdkit allocator=zstd"
            field_ratio(f"uzram {alg} kcompressd x{w} write / {peer} write", num, den, "write_mb_s", ">=", bound)
            # the least CPU a Python plugin's copy needs: the pinned bare plugin's, when it ran
            least = next((ok[b] for b in ("bare-python-pinned", "bare-python") if b in ok), None)
            if num in ok and den in ok and least is not None:
                ratios[-1].ceiling = cpu_ceiling(ok[num]["median"], least["median"],
                                                 ok[den]["median"], os.cpu_count() or 1)
    serial = any("serial_mb_s" in run for r in results.values() for run in r["runs"])
    for alg, bound in (("lz4", 1.5), ("zstd", 2)) if serial else ():
        for w in workers:
            num, den = f"uzram-{alg}-w{w}", f"uzram-{alg}-inline"
            field_ratio(f"uzram {alg} kcompressd x{w} serialized writer MB/s / inline", num, den,
                        "serial_mb_s", ">=", bound)
            field_ratio(f"uzram {alg} kcompressd x{w} serialized writer request p99 / inline p99", num, den,
                        "serial_p99_us", "<=", 1)
    # plain nbdkit (no --threads), as anyone would start the plugin, against uzram serve's way
    for name in results:
        m = UZRAM_ROW.fullmatch(name)
        if m and m.group(4):
            base = name[:-len("-plain")]
            for field, what in (("write_mb_s", "write"), ("read_mb_s", "read")):
                field_ratio(f"{name} {what} / {base} (--threads 1) {what}", name, base, field, ">=", 0.9)
    for w in workers:
        if "swap_out_pages_s" in ok.get(f"uzram-zstd-w{w}", {}).get("median", {}):
            field_ratio(f"uzram zstd kcompressd x{w} swap-out / uzram zstd inline swap-out", f"uzram-zstd-w{w}",
                        "uzram-zstd-inline", "swap_out_pages_s", ">=", 1.3)
            # nbdkit's C memory plugin, uncompressed, behind the same nbdfuse + loop path: what
            # that path lets any server reach
            peer = ok.get("nbdkit-memory", {}).get("median", {}).get("swap_out_pages_s")
            base = ok.get("uzram-zstd-inline", {}).get("median", {}).get("swap_out_pages_s")
            if ratios and ratios[-1].numerator == f"uzram-zstd-w{w}" and peer and base:
                ratios[-1].ceiling = peer / base
    return ratios


def cpu_ceiling(row, bare, den, ncpus):
    """The best write ratio ``row`` / ``den`` that ``ncpus`` CPUs allow, whatever uzram's code.

    Any copy through a kcompressd row needs at least the CPU the bare plugin's copy needed
    (nbdcopy, and an nbdkit that only receives and stores the data; ``bare`` is the pinned
    bare plugin's row when it ran, the cheapest) plus what the row's
    workers spent compressing; with every CPU busy all the time it cannot take less than
    that sum divided by the CPUs.  None when a figure is missing."""
    need = [bare.get("client_cpu_s"), bare.get("server_cpu_s"), row.get("worker_cpu_s"), den.get("write_mb_s"),
            row.get("write_mb_s"), row.get("write_s")]
    if any(x is None for x in need) or not den["write_mb_s"]:
        return None
    floor_s = (bare["client_cpu_s"] + bare["server_cpu_s"] + row["worker_cpu_s"]) / ncpus
    if floor_s <= 0:
        return None
    best_mb_s = row["write_mb_s"] * row["write_s"] / floor_s
    return best_mb_s / den["write_mb_s"]
