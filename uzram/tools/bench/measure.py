"""One measurement of one row (copy in, drain, copy out and compare), the interleaved 4 KiB
read latency, the serialized writer, the swap runs (through uzram.tools.bench.swap), the
medians, and the words that say how each figure is taken (METHOD).
"""

import os
import resource
import statistics
import subprocess
import time

import numpy as np

from uzram.tools import probe
from uzram.core.constants import PAGE_SIZE
from uzram.core.errors import UzramError
from uzram.core.stats import cpu_seconds, process_cpu_seconds
from uzram.nbd.server import clean_env
from .common import MB, BenchError, first_line, require_tool
from .dataset import files_equal
from .targets import KernelZramTarget, start_target


LATENCY_WARMUP = 100


class _NbdReader:
    """4 KiB reads from an NBD URI, one libnbd aio_pread at a time (queue depth 1)."""

    def __init__(self, uri):
        self._h = probe.connect(uri)       # ProbeError (a UzramError) names what went wrong
        self._h.set_pread_initialize(False)
        self._buf = probe.nbd.Buffer(PAGE_SIZE)
        aio, done, poll, buf = self._h.aio_pread, self._h.aio_command_completed, self._h.poll, self._buf

        def read(offset):
            c = aio(buf, offset)
            while not done(c):
                poll(-1)

        self.read = read

    def close(self):
        probe.disconnect(self._h)


class _DeviceReader:
    """4 KiB O_DIRECT preads from a block device (kernel zram)."""

    def __init__(self, device):
        import mmap
        self._buf = mmap.mmap(-1, PAGE_SIZE)  # page-aligned, as O_DIRECT needs
        self._fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
        fd, bufs, preadv = self._fd, [self._buf], os.preadv
        self.read = lambda offset: preadv(fd, bufs, offset)

    def close(self):
        os.close(self._fd)
        self._buf.close()


#: Reads each target does in a row before the next takes its turn: long enough for a
#: server's own code and data to be cached as under a stream of requests, short enough
#: (tens of milliseconds) that a burst of load on this shared machine hits every target.
LATENCY_BLOCK = 100


def interleaved_read_latency(targets, size, count, seed):
    """{name: latencies in ns (numpy int64)} of ``count`` 4 KiB reads per target at random page
    offsets, queue depth 1.  The targets take turns in blocks of LATENCY_BLOCK reads, so a
    burst of load on this shared machine falls on all of them alike rather than on
    whichever row was running."""
    offsets = (np.random.default_rng(seed).integers(0, size // PAGE_SIZE, LATENCY_WARMUP + count)
               * PAGE_SIZE).tolist()
    readers = []
    try:
        for name, target in targets.items():
            reader = _NbdReader(target.uri) if target.uri else _DeviceReader(target.device)
            readers.append((name, reader.read, reader))
        lat = {name: np.zeros(len(offsets), dtype=np.int64) for name, _, _ in readers}
        arrays = [lat[name] for name, _, _ in readers]
        fns = [read for _, read, _ in readers]
        n = len(fns)
        pc = time.perf_counter_ns
        for b, lo in enumerate(range(0, len(offsets), LATENCY_BLOCK)):
            block = list(enumerate(offsets[lo:lo + LATENCY_BLOCK], lo))
            for j in list(range(b % n, n)) + list(range(b % n)):
                read, out = fns[j], arrays[j]
                for i, off in block:
                    t0 = pc()
                    read(off)
                    out[i] = pc() - t0
    finally:
        for _, _, reader in readers:
            reader.close()
    return {name: a[LATENCY_WARMUP:] for name, a in lat.items()}


def percentile_ns(lat, p):
    return int(np.percentile(lat, p, method="inverted_cdf"))


# --- one serialized writer ---------------------------------------------------------------

SERIAL_REQUEST = 64 << 10
DEFAULT_SERIAL_SIZE = 128 << 20


def serial_write(target, path, nbytes):
    """One writer with one request in flight, as one reclaim thread: the first ``nbytes`` of
    the data set in 64 KiB writes through one libnbd connection, then a flush, timed whole.
    Returns the serial_* figures (MB/s with the flush, request latency p50 and p99)."""
    with open(path, "rb") as f:
        data = memoryview(f.read(nbytes))
    h = probe.connect(target.uri)
    try:
        offsets = range(0, len(data), SERIAL_REQUEST)
        lat = np.zeros(len(offsets), dtype=np.int64)
        pwrite, pc = h.pwrite, time.perf_counter_ns
        t0 = pc()
        for i, off in enumerate(offsets):
            t = pc()
            pwrite(data[off:off + SERIAL_REQUEST], off)
            lat[i] = pc() - t
        h.flush()
        total = pc() - t0
    finally:
        probe.disconnect(h)
    out = {"serial_mb_s": len(data) / (total / 1e9) / MB, "serial_p50_us": percentile_ns(lat, 50) / 1000,
           "serial_p99_us": percentile_ns(lat, 99) / 1000}
    s = target.stats()
    if s is not None:
        out["serial_writestall"] = s.writestall
        out["serial_writer_pages"] = s.writer_pages
    return out


def serial_rows(rows):
    """Rows the serialized writer runs on: uzram's (not the plain-nbdkit ones) and the
    C allocator=zstd for scale."""
    return [r for r in rows if (r.kind == "uzram" and not r.plain) or r.name == "nbdkit-memory-zstd"]


# --- swap (optional) -----------------------------------------------------------------------

def _swapbench():
    """uzram.tools.bench.swap when it offers what ``--swap`` needs, else None (imported
    here, when ``--swap`` asks for it: it loads the host's swap and cgroup tooling)."""
    try:
        from uzram.tools.bench import swap as swapbench
    except ImportError:
        return None
    needed = ("swap_throughput", "uzram_device", "nbdkit_memory_device", "kernel_zram_device")
    return swapbench if all(callable(getattr(swapbench, n, None)) for n in needed) else None


def swap_device_maker(swapbench, row, size):
    """swapbench's make_device for ``row``, or None where it has no such device."""
    if row.kind == "uzram":
        return swapbench.uzram_device(size=size, workers=row.workers, algorithm=row.algorithm)
    if row.kind == "nbdkit-memory" and not row.algorithm:
        return swapbench.nbdkit_memory_device(size=size)
    if row.kind == "kernel-zram":
        return swapbench.kernel_zram_device(size=size, algorithm=row.algorithm)
    return None


def run_swap(rows, results, pages, progress, rounds=1):
    """Swap-out/in pages/s per row through uzram.tools.bench.swap, after the rounds: ``rounds``
    runs of every row, interleaved (rows rotated each round, as in the copy rounds), since
    one swap-out phase lasts about a second and the machine's noise is as big as the
    differences measured.

    Round r's figures (swap_out_pages_s, swap_in_pages_s, swap_out_cpu_busy) go into the
    row's run r, so the medians and the per-round ratios come out as for every other
    figure; returns a summary, each row's rounds in it."""
    swapbench = _swapbench()
    if swapbench is None:
        progress.note("uzram bench: --swap: uzram.tools.bench.swap is not there (or lacks swap_throughput); "
                      "swap columns left empty")
        return {"status": "unavailable", "error": "uzram.tools.bench.swap with swap_throughput is not available"}
    size = max(1 << 30, pages * PAGE_SIZE * 2)
    makers = {}
    for row in rows:
        if results[row.name]["status"] != "skipped":
            make = swap_device_maker(swapbench, row, size)
            if make is not None:
                makers[row.name] = make
    done = {name: {"rounds": []} for name in makers}
    order = list(makers)
    for rnd in range(rounds):
        k = rnd % len(order) if order else 0
        for name in order[k:] + order[:k]:
            if "error" in done[name]:
                continue
            progress.start(f"swap round {rnd + 1}/{rounds} {name} ({pages} pages)")
            try:
                out = swapbench.swap_throughput(makers[name], pages)
            except (UzramError, OSError, KeyError) as e:
                done[name]["error"] = first_line(e)
                progress.note(f"  swap {name}: failed: {first_line(e)}")
                continue
            figures = {"swap_out_pages_s": out["swapout_pages_per_s"], "swap_in_pages_s": out["swapin_pages_per_s"],
                       "swap_out_cpu_busy": out.get("swapout_cpu_busy")}
            done[name]["rounds"].append({**figures, "detail": out})
            runs = results[name]["runs"]
            run = next((r for r in runs if r.get("round") == rnd + 1), None)
            if run is None:                     # its copy failed in this round (or did not run)
                runs.append({**figures, "round": rnd + 1})
            else:
                run.update(figures)
    for entry in done.values():
        entry.update(median_of(entry["rounds"]))
    return {"status": "ok", "pages": pages, "rounds": rounds, "rows": done,
            "method": "uzram.tools.bench.swap.swap_throughput: a memory eater in a memory cgroup swaps through the "
                      f"device; pages/s from pswpout/pswpin deltas; {rounds} interleaved run(s) per row, medians"}


# --- one measurement ---------------------------------------------------------------------

def _run(argv, timeout, what):
    try:
        p = subprocess.run(argv, env=clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what} did not finish within {timeout:.0f} s") from None
    if p.returncode != 0:
        err = p.stderr.decode(errors="replace").strip().splitlines()
        raise BenchError(f"{what} failed (status {p.returncode}): {err[-1] if err else 'no output'}")


def measure(row, dataset, workdir, timeout, phase=lambda text: None):
    """One repetition of one row: start, copy in, settle, copy out and compare.

    Returns (figures, target): a dict of figures (see ``FIELDS``) and the target, still
    running for the round's latency phase; the caller stops it.  Raises BenchError when
    the row fails (its target stopped)."""
    size = dataset.size
    out = os.path.join(workdir, "readback.img")
    phase("start")
    target = start_target(row, size, workdir)
    ok = False
    try:
        r = {}
        if target.pid:
            mem0, cpu0 = target.memory(), process_cpu_seconds(target.pid)
        s0 = target.stats()
        phase("write")
        if target.uri:
            argv = [require_tool("nbdcopy"), dataset.path, target.uri]
        else:
            argv = [require_tool("dd"), f"if={dataset.path}", f"of={target.device}", "bs=1M", "oflag=direct",
                    "status=none"]
        t0, c0 = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
        _run(argv, timeout, " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(argv)))
        r["copy_s"] = time.perf_counter() - t0
        r["client_cpu_s"] = cpu_seconds(resource.RUSAGE_CHILDREN) - c0
        r["drain_s"] = target.wait_idle(timeout)
        r["write_s"] = r["copy_s"] + r["drain_s"]        # until every page is stored compressed
        r["write_mb_s"] = size / r["write_s"] / MB
        if target.pid:
            r["server_cpu_s"] = process_cpu_seconds(target.pid) - cpu0
            r["server_cpu_us_page"] = r["server_cpu_s"] * 1e6 / (size // PAGE_SIZE)
            target.settle(10)
            mem1 = target.memory()
            r["rss_before"] = sum(mem0.values())
            r["rss_after"] = sum(mem1.values())
            r["rss_growth"] = r["rss_after"] - r["rss_before"]
            for part in mem1:
                r[f"{part}_growth"] = mem1[part] - mem0.get(part, 0)
        s1 = target.stats()
        if s1 is not None:
            r["mem_used_total"] = s1.mem_used_total
            r["compr_data_size"] = s1.compr_data_size
            r["orig_data_size"] = s1.orig_data_size
            r["pages_stored"] = s1.pages_stored
            r["same_pages"] = s1.same_pages
            r["huge_pages"] = s1.huge_pages
            r["compression_ratio"] = s1.compression_ratio
            req = s1.request_cpu_seconds - s0.request_cpu_seconds
            wkr = s1.worker_cpu_seconds - s0.worker_cpu_seconds
            r["request_cpu_s"], r["worker_cpu_s"] = req, wkr
            r["worker_cpu_us_page"] = wkr * 1e6 / (size // PAGE_SIZE)
            r["request_cpu_share"] = req / (req + wkr) if req + wkr > 0 else 1.0
            r["writestall"] = s1.writestall
            r["writer_pages"] = s1.writer_pages
            r["failed_writes"] = s1.failed_writes
        if isinstance(target, KernelZramTarget):
            mm = target.mm_stat()
            r["mem_used_total"] = mm["mem_used_total"]
            r["compr_data_size"] = mm["compr_data_size"]
            r["orig_data_size"] = mm["orig_data_size"]
            r["pages_stored"] = mm["orig_data_size"] // PAGE_SIZE
            r["same_pages"] = mm["same_pages"]
            r["huge_pages"] = mm["huge_pages"]
            stored = mm["orig_data_size"] - mm["same_pages"] * PAGE_SIZE
            r["compression_ratio"] = stored / mm["compr_data_size"] if mm["compr_data_size"] else 0.0
        phase("read")
        if target.uri:
            argv = [require_tool("nbdcopy"), target.uri, out]
        else:
            argv = [require_tool("dd"), f"if={target.device}", f"of={out}", "bs=1M", "iflag=direct", "status=none"]
        t0 = time.perf_counter()
        _run(argv, timeout, " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(argv)))
        r["read_s"] = time.perf_counter() - t0
        r["read_mb_s"] = size / r["read_s"] / MB
        phase("verify")
        same = files_equal(dataset.path, out)
        os.unlink(out)
        if not same:
            raise BenchError("read-back differs from the data written")
        ok = True
        return r, target
    finally:
        if not ok:
            phase("stop")
            target.stop()
        if os.path.exists(out):
            os.unlink(out)


#: Figures a measurement may hold; medians are taken over repetitions for the numeric ones.
FIELDS = ("write_mb_s", "copy_s", "server_cpu_us_page", "worker_cpu_us_page", "server_growth", "workers_growth",
          "shared_growth", "serial_mb_s", "serial_p50_us", "serial_p99_us", "serial_writestall",
          "serial_writer_pages", "read_mb_s", "read4k_p50_us", "read4k_p99_us", "rss_growth", "rss_before", "rss_after",
          "mem_used_total", "compr_data_size", "orig_data_size", "pages_stored", "same_pages", "huge_pages",
          "compression_ratio", "request_cpu_s", "worker_cpu_s", "request_cpu_share", "server_cpu_s", "client_cpu_s", "write_s", "read_s",
          "drain_s", "writestall", "writer_pages", "failed_writes", "swap_out_pages_s", "swap_in_pages_s", "swap_out_cpu_busy")


def median_of(runs):
    med = {}
    for key in FIELDS:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if values:
            med[key] = statistics.median(values)
    return med


METHOD = {
    "write": "nbdcopy DATASET URI (kernel zram: dd bs=1M oflag=direct); MB = 10^6 bytes; "
             "kcompressd rows: the copy and then the drain, until every page is stored compressed "
             "(write_s = copy_s + drain_s)",
    "serial": f"one writer, one request in flight: the first {DEFAULT_SERIAL_SIZE >> 20} MiB of the data set "
              f"(or all of a smaller one) in {SERIAL_REQUEST >> 10} KiB libnbd pwrites to a fresh server, then "
              "a flush, timed whole; p50/p99 of the requests",
    "read": "nbdcopy URI FILE (kernel zram: dd bs=1M iflag=direct), then compared with the data set; "
            "nbdcopy skips holes the server reports (uzram, nbdkit memory), the bare plugin has no extents",
    "read4k": "4 KiB reads at uniformly random page offsets over the data set, queue depth 1, after "
              f"{LATENCY_WARMUP} warmup reads, once every row of the round is written: the rows' servers "
              f"take turns in blocks of {LATENCY_BLOCK} reads (the same offsets for each), so they are "
              "timed under the same load; "
              "NBD rows through libnbd, kernel zram through O_DIRECT pread",
    "rss_growth": "memory held after the copy, the drain and the pending ring's give-back, minus before: "
                  "uzram: the nbdkit process's and its workers' own resident memory (VmRSS less RssShmem) "
                  "plus the shared files' allocated memory (shared_bytes), each counted once; others: VmRSS "
                  "of the server; the bare plugin's bytearray is resident from the start (rss_before)",
    "cpu_per_page": "CPU microseconds per page of the data set over the copy and drain: the nbdkit process "
                    "(nbdkit us/pg, /proc) and the kcompressd workers (wkr us/pg, uzram's stats)",
    "cpu_split": "request_cpu_seconds : worker_cpu_seconds of uzram's stats over the copy and drain",
    "ceiling": "kcompressd write targets: the best ratio these CPUs allow any implementation: the copy "
               "needs at least the bare plugin's CPU (nbdcopy's client_cpu_s plus nbdkit's server_cpu_s; "
               "the pinned bare plugin's when it ran) "
               "plus the row's worker_cpu_s, so it takes at least that sum divided by the CPUs",
    "ceiling_swap": "swap-out target: nbdkit memory's swap-out rate (C, no compression, the same nbdfuse + "
                    "loop path) over the inline row's: what the path allows a server",
    "rounds": "every row once per round, rows rotated each round; medians over rounds",
    "bare": "bare-python is uzram/tools/bench/bare_plugin.py as is; bare-python-pinned adds pin=1, the thread-state "
            "pin uzram's plugin uses (uzram/nbd/threadstate.py), so ratios to it show the page store's own cost",
}
