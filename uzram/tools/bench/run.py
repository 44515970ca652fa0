"""The run: every row once per round, rows interleaved (round robin, the starting row
rotated each round), then the latency phase, the serialized writer and the swap runs;
medians, ratios, and where the figures come from (machine, sources).
"""

import dataclasses
import datetime
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import time

from uzram.core.constants import PAGE_SIZE
from uzram.core.errors import ConfigError, UzramError
from uzram.nbd.server import PACKAGE, REPO, clean_env
from .common import first_line, require_tool, walk_sorted
from .dataset import DEFAULT_MIX, format_mix, make_dataset, parse_mix
from .measure import (DEFAULT_SERIAL_SIZE, LATENCY_WARMUP, METHOD, interleaved_read_latency, measure, median_of,
                      percentile_ns, run_swap, serial_rows, serial_write)
from .ratios import compute_ratios
from .rows import default_rows
from .targets import kernel_zram_unavailable, start_target


DEFAULT_SIZE = 256 << 20
QUICK_SIZE = 16 << 20
DEFAULT_REPEAT = 3
DEFAULT_LATENCY_COUNT = 5000
QUICK_LATENCY_COUNT = 500


@dataclasses.dataclass
class BenchOptions:
    size: int = DEFAULT_SIZE
    mix: dict = dataclasses.field(default_factory=lambda: parse_mix(format_mix(
        {k: v / 100 for k, v in DEFAULT_MIX.items()})))
    seed: int = 1
    repeat: int = DEFAULT_REPEAT
    rows: list = None
    latency_count: int = DEFAULT_LATENCY_COUNT
    swap: bool = False
    swap_pages: int = None
    """Pages the swap benchmark's eater touches (default: the data set's pages)."""
    serial_size: int = DEFAULT_SERIAL_SIZE
    """Bytes the serialized writer writes per row and round (0: no serialized writer)."""
    timeout: float = 600.0
    workdir: str = None
    """Where the data set and read-back files go (a private temporary directory inside it)."""

    def __post_init__(self):
        if self.repeat < 1:
            raise ConfigError(f"--repeat: {self.repeat} is below the minimum 1")
        if self.latency_count < 1:
            raise ConfigError(f"--latency-count: {self.latency_count} is below the minimum 1")
        if self.size < PAGE_SIZE or self.size % PAGE_SIZE:
            raise ConfigError(f"--size: {self.size} must be a positive multiple of {PAGE_SIZE}")
        if self.rows is None:
            self.rows = default_rows()


class Progress:
    """A text progress bar on a stream: redrawn in place on a terminal, one line per step elsewhere."""

    def __init__(self, total, stream=None, enabled=True, width=30):
        self.total, self.done, self.width = total, 0, width
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.monotonic()
        self.label = ""

    def _bar(self, text):
        filled = int(self.width * self.done / self.total) if self.total else self.width
        elapsed = time.monotonic() - self.t0
        eta = ""
        if 0 < self.done < self.total:
            eta = f" eta {elapsed / self.done * (self.total - self.done):4.0f}s"
        return (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
                f"{elapsed:5.0f}s{eta} {text}")

    def start(self, label):
        self.label = label
        if self.enabled and not self.tty:
            self.stream.write(self._bar(label) + "\n")
            self.stream.flush()
        self.phase("")

    def phase(self, text):
        if self.tty:
            line = self._bar(f"{self.label} {text}".strip())
            self.stream.write("\r" + line[:150].ljust(150))
            self.stream.flush()

    def step(self):
        self.done += 1
        self.phase("")

    def close(self):
        if self.tty:
            self.stream.write("\r" + " " * 150 + "\r")
            self.stream.flush()

    def note(self, text):
        if self.enabled:
            self.stream.write(("\r" + " " * 150 + "\r" if self.tty else "") + text + "\n")
            self.stream.flush()
            self.phase("")


def run_bench(options, progress=None):
    """Run every row ``options.repeat`` times, interleaved, and return the result dict (see write_report)."""
    o = options
    for tool in ("nbdkit", "nbdcopy"):
        require_tool(tool)
    if any(r.kind == "kernel-zram" for r in o.rows):
        require_tool("dd")
    progress = progress or Progress(0, enabled=False)
    source_start, head = source_digest(), git_head()
    started = datetime.datetime.now(datetime.timezone.utc)
    results = {r.name: {"row": r, "status": "ok", "error": None, "runs": []} for r in o.rows}
    with tempfile.TemporaryDirectory(prefix="uzram-bench-", dir=o.workdir) as workdir:
        progress.note(f"uzram bench: writing the {o.size >> 20} MiB data set ({format_mix(o.mix)}, seed {o.seed})")
        dataset = make_dataset(os.path.join(workdir, "dataset.img"), o.size, o.mix, o.seed)
        for r in o.rows:
            if r.kind == "kernel-zram" and kernel_zram_unavailable():
                results[r.name].update(status="skipped", error=kernel_zram_unavailable())
        progress.total = len(o.rows) * o.repeat
        for rnd in range(o.repeat):
            k = rnd % len(o.rows)
            running = {}     # name -> (target, figures): kept up for the latency phase
            try:
                for row in o.rows[k:] + o.rows[:k]:
                    res = results[row.name]
                    progress.start(f"round {rnd + 1}/{o.repeat} {row.name}")
                    if res["status"] == "ok":
                        digest = source_digest() if row.kind == "uzram" else None
                        try:
                            fig, target = measure(row, dataset, workdir, o.timeout, phase=progress.phase)
                            running[row.name] = (target, fig)
                            fig["round"] = rnd + 1
                            if digest is not None:
                                after = source_digest()
                                fig["source_digest"] = digest if after == digest else f"{digest}->{after}"
                            res["runs"].append(fig)
                        except (UzramError, OSError) as e:
                            res.update(status="failed", error=first_line(e))
                            progress.note(f"  {row.name}: failed: {res['error']}")
                    progress.step()
                if running:
                    progress.start(f"round {rnd + 1}/{o.repeat} 4 KiB read latency, {len(running)} targets in turn")
                    try:
                        lat = interleaved_read_latency({n: t for n, (t, _) in running.items()}, o.size,
                                                       o.latency_count, o.seed + rnd)
                    except (UzramError, OSError) as e:
                        progress.note(f"  latency: failed: {first_line(e)}")
                    else:
                        for name, ns in lat.items():
                            fig = running[name][1]
                            fig["read4k_p50_us"] = percentile_ns(ns, 50) / 1000
                            fig["read4k_p99_us"] = percentile_ns(ns, 99) / 1000
            finally:
                for target, _ in running.values():
                    target.stop()
            if o.serial_size:
                for row in [r for r in o.rows[k:] + o.rows[:k] if r in serial_rows(o.rows)]:
                    if results[row.name]["status"] != "ok" or not results[row.name]["runs"]:
                        continue
                    progress.start(f"round {rnd + 1}/{o.repeat} {row.name} serialized writer")
                    try:
                        target = start_target(row, o.size, workdir)
                        try:
                            results[row.name]["runs"][-1].update(
                                serial_write(target, dataset.path, min(o.serial_size, o.size)))
                        finally:
                            target.stop()
                    except (UzramError, OSError) as e:
                        progress.note(f"  {row.name}: serialized writer failed: {first_line(e)}")
        swap = None
        if o.swap:
            swap = run_swap(o.rows, results, o.swap_pages or o.size // PAGE_SIZE, progress, o.repeat)
    progress.close()
    for res in results.values():
        res["median"] = median_of(res["runs"])
        if res["status"] == "ok" and not res["runs"]:
            res["status"] = "failed"
    ratios = compute_ratios(results)
    digests = sorted({f["source_digest"] for res in results.values() for f in res["runs"] if "source_digest" in f})
    source = {"git": head, "digest_start": source_start, "digest_end": source_digest(), "uzram_rows": digests,
              "changed_during_run": len(digests) > 1 or any("->" in d for d in digests)}
    if source["changed_during_run"]:
        progress.note("uzram bench: warning: uzram's sources changed during the run; rows ran different code "
                      "(see source in bench.json)")
    finished = datetime.datetime.now(datetime.timezone.utc)
    return {
        "version": 1,
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "duration_s": round((finished - started).total_seconds(), 1),
        "machine": machine_info(),
        "source": source,
        "options": {"size": o.size, "mix": format_mix(o.mix), "seed": o.seed, "repeat": o.repeat,
                    "serial_size": min(o.serial_size, o.size),
                    "latency_count": o.latency_count, "latency_warmup": LATENCY_WARMUP, "swap": o.swap,
                    "rows": [r.name for r in o.rows]},
        "dataset": dataset.to_dict(),
        "method": dict(METHOD),
        "rows": [{"name": n, "label": res["row"].label, "kind": res["row"].kind,
                  "algorithm": res["row"].algorithm, "workers": res["row"].workers, "status": res["status"],
                  "error": res["error"], "median": res["median"], "runs": res["runs"]}
                 for n, res in results.items()],
        "ratios": [dataclasses.asdict(r) for r in ratios],
        "swap": swap,
    }


def source_digest():
    """SHA-256 (first 12 hex digits) of uzram's and the plugin's Python sources as they are now.

    nbdkit loads the plugin afresh for every row, so an edit during a run would mix code
    versions; the report compares this digest from before and after each uzram row."""
    h = hashlib.sha256()
    for top in (PACKAGE, os.path.join(REPO, "plugin")):
        for path in walk_sorted(top, lambda p: p.endswith(".py")):
            h.update(os.path.relpath(path, REPO).encode() + b"\0")
            try:
                with open(path, "rb") as f:
                    h.update(f.read())
            except OSError:
                pass
    return h.hexdigest()[:12]


def git_head():
    try:
        p = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, timeout=10)
        head = p.stdout.decode().strip()
        p = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "uzram", "plugin"],
                           capture_output=True, timeout=10)
        return head + ("+changes" if p.stdout.strip() else "") if head else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_info():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory": mem, "kernel": platform.release(),
            "python": platform.python_version(), "nbdkit": _version(["nbdkit", "--version"]),
            "nbdcopy": _version(["nbdcopy", "--version"])}


def _version(argv):
    try:
        p = subprocess.run(argv, env=clean_env(), capture_output=True, timeout=10)
        return p.stdout.decode(errors="replace").splitlines()[0].strip()
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return ""
