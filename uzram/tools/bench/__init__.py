"""``uzram bench``: the whole comparison in one run, written up as a report.

One data set (a page mix written to a file) is copied into every target with
``nbdcopy FILE URI``, read back with ``nbdcopy URI FILE2`` and compared; then 4 KiB random
reads at queue depth 1 time the read path.  The targets, side by side in the same run:

* uzram, per codec and mode: inline compression (``workers=0``) and kcompressd
  (``workers=1..N``);
* ``nbdkit memory`` (sparse array, no compression) and ``nbdkit memory allocator=zstd``;
* ``uzram/tools/bench/bare_plugin.py``: one bytearray in a Python plugin, the least a Python plugin
  can do (the baseline of uzram's speed targets);
* kernel zram (``/sys/class/zram-control``), written and read with ``dd`` and O_DIRECT.

The machine is shared and noisy, so each measurement is repeated with the rows
interleaved (round robin, the starting row rotated each round) and the report gives
medians and ratios measured in the same run, never absolute figures alone.

Data set: ``zero`` pages, ``same`` pages (one random 8-byte value repeated), ``text`` pages
(4 KiB cut from real files on this machine: documentation, licences, Python sources,
binaries; never synthetic) and ``random`` pages.  Page kinds, the cut positions and the
random bytes all come from one seed; the corpus is read in sorted path order, so the same
seed on the same machine gives the same file (its SHA-256 is in the report).

Import direction: this module sits beside ``probe`` and ``swap`` (both optional, imported
lazily and guarded) and below ``cli``.  numpy is required; matplotlib only for charts.
"""

import dataclasses
import datetime
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from uzram.tools import probe
from uzram.core.codecs import CODECS
from uzram.core.config import default_workers
from uzram.core.constants import PAGE_SIZE
from uzram.core.errors import ConfigError, UzramError
from uzram.nbd.server import DEFAULT_THREADS, CLEAN_PATH, PACKAGE, REPO, Nbdkit, Server, ServerError, clean_env, nbdkit_binary
from uzram.core.stats import cpu_seconds, process_cpu_seconds

KINDS = ("zero", "same", "text", "random")
DEFAULT_MIX = {"zero": 25, "same": 10, "text": 45, "random": 20}
DEFAULT_SIZE = 256 << 20
QUICK_SIZE = 16 << 20
DEFAULT_REPEAT = 3
DEFAULT_LATENCY_COUNT = 5000
QUICK_LATENCY_COUNT = 500
LATENCY_WARMUP = 100
BARE_PLUGIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bare_plugin.py")
ZRAM_CONTROL = "/sys/class/zram-control"
MB = 1e6

class BenchError(UzramError):
    """The benchmark cannot run as asked (a bad option, a missing tool)."""


# --- options -----------------------------------------------------------------------------

def parse_mix(text):
    """``zero=25,same=10,text=45,random=20`` -> {kind: fraction} summing to 1.

    Kinds left out get 0.  Raises ConfigError naming the bad part."""
    shares = dict.fromkeys(KINDS, 0.0)
    seen = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        kind, sep, value = part.partition("=")
        kind = kind.strip().lower()
        if not sep:
            raise ConfigError(f"--mix: {part!r} is not KIND=SHARE (kinds: {', '.join(KINDS)})")
        if kind not in shares:
            raise ConfigError(f"--mix: unknown page kind {kind!r} (kinds: {', '.join(KINDS)})")
        if kind in seen:
            raise ConfigError(f"--mix: {kind} given more than once")
        seen.add(kind)
        try:
            share = float(value)
        except ValueError:
            raise ConfigError(f"--mix: {kind}={value!r} is not a number") from None
        if not (share >= 0 and share != float("inf")):
            raise ConfigError(f"--mix: {kind}={value} must be a number >= 0")
        shares[kind] = share
    total = sum(shares.values())
    if total <= 0:
        raise ConfigError("--mix: the shares add up to 0")
    return {k: v / total for k, v in shares.items()}


def format_mix(mix):
    return ",".join(f"{k}={round(mix[k] * 100, 2):g}" for k in KINDS)


def parse_int_list(text, option):
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if not re.fullmatch(r"\d+", part):
            raise ConfigError(f"{option}: {part!r} is not a whole number >= 0")
        if int(part) > 256:
            raise ConfigError(f"{option}: {part} is above the maximum 256")
        if int(part) not in out:
            out.append(int(part))
    if not out:
        raise ConfigError(f"{option}: empty list")
    return out


# --- rows --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Row:
    """One target of the comparison."""

    name: str
    """Short unique name (``uzram-lz4-inline``, ``nbdkit-memory-zstd``, ...)."""
    kind: str
    """``uzram``, ``nbdkit-memory``, ``bare`` or ``kernel-zram``."""
    algorithm: str = ""
    """Codec (uzram, kernel zram, nbdkit allocator=zstd), else empty."""
    workers: int = 0
    """uzram only: kcompressd workers (0 = inline)."""
    options: tuple = ()
    """Extra plugin keys (the bare plugin's ``pin=1``)."""
    plain: bool = False
    """uzram only: nbdkit started as a user would start it, without ``--threads``."""

    @property
    def label(self):
        if self.kind == "uzram":
            mode = "inline" if self.workers == 0 else f"kcompressd x{self.workers}"
            return f"uzram {self.algorithm} {mode}" + (" (plain nbdkit, no --threads)" if self.plain else "")
        if self.kind == "nbdkit-memory":
            return "nbdkit memory" + (" allocator=zstd" if self.algorithm else "")
        if self.kind == "bare":
            return "bare Python plugin" + (", thread state pinned" if "pin=1" in self.options else "")
        return f"kernel zram {self.algorithm}"


PEER_ROWS = {
    "nbdkit-memory": Row("nbdkit-memory", "nbdkit-memory"),
    "nbdkit-memory-zstd": Row("nbdkit-memory-zstd", "nbdkit-memory", "zstd"),
    "bare-python": Row("bare-python", "bare"),
    "bare-python-pinned": Row("bare-python-pinned", "bare", options=("pin=1",)),
}
_UZRAM_ROW = re.compile(r"uzram-([a-z0-9]+)-(inline|w(\d+))(-plain)?")
_ZRAM_ROW = re.compile(r"kernel-zram-([a-z0-9-]+)")


def uzram_row(algorithm, workers, plain=False):
    name = f"uzram-{algorithm}-{'inline' if workers == 0 else f'w{workers}'}" + ("-plain" if plain else "")
    return Row(name, "uzram", algorithm, workers, plain=plain)


def row_by_name(name):
    """A Row from its name; BenchError names the bad one."""
    name = name.strip()
    if name in PEER_ROWS:
        return PEER_ROWS[name]
    m = _UZRAM_ROW.fullmatch(name)
    if m:
        if m.group(1) not in CODECS:
            raise BenchError(f"--rows: {name!r}: unknown codec {m.group(1)!r} (codecs: {', '.join(CODECS)})")
        return uzram_row(m.group(1), 0 if m.group(2) == "inline" else int(m.group(3)), bool(m.group(4)))
    m = _ZRAM_ROW.fullmatch(name)
    if m:
        return Row(name, "kernel-zram", m.group(1))
    raise BenchError(f"--rows: unknown row {name!r} (rows are uzram-CODEC-inline, uzram-CODEC-wN, "
                     "either with -plain, "
                     f"{', '.join(PEER_ROWS)}, kernel-zram-ALGORITHM)")


def default_rows(workers=None, algorithms=("lz4", "zstd")):
    """uzram per codec and mode, then the peers, then kernel zram (lz4, and zstd if the kernel has it)."""
    if workers is None:
        workers = [0] + list(range(1, default_workers() + 1))
    rows = [uzram_row(a, w) for w in workers for a in algorithms]
    # the same server started as plain nbdkit, inline and with the fewest workers
    rows += [uzram_row(algorithms[0], w, plain=True) for w in sorted({min(workers), min(workers, key=lambda w: (w == 0, w))})]
    rows += list(PEER_ROWS.values())
    zram_algs = kernel_zram_algorithms()
    for alg in algorithms:
        if not zram_algs or alg in zram_algs:
            rows.append(Row(f"kernel-zram-{alg}", "kernel-zram", alg))
    return rows


def select_rows(names=None, workers=None):
    if not names:
        return default_rows(workers)
    rows = []
    for name in names.split(","):
        if name.strip():
            row = row_by_name(name)
            if row not in rows:
                rows.append(row)
    if not rows:
        raise BenchError("--rows: empty list")
    return rows


# --- the data set ------------------------------------------------------------------------

def _walk_sorted(root, accept, max_file=4 << 20):
    """Regular files under ``root`` (symlinks skipped), in sorted path order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            path = os.path.join(dirpath, fn)
            if not accept(path) or os.path.islink(path):
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            if 0 < st.st_size <= max_file:
                yield path


def _is_elf(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def corpus_sources():
    """(group, share, [roots], accept) for the compressible pages: real files on this machine."""
    pythons = sorted(d for d in (os.path.join("/usr/lib", n) for n in _listdir("/usr/lib"))
                     if re.fullmatch(r"python3(\.\d+)?", os.path.basename(d)) and os.path.isdir(d))
    no_archives = lambda p: not p.endswith((".gz", ".xz", ".bz2", ".zst", ".zip", ".png", ".jpg", ".svg"))  # noqa: E731
    return (
        ("docs", 0.25, ["/usr/share/doc"], no_archives),
        ("licenses", 0.05, ["/usr/share/common-licenses"], no_archives),
        ("python", 0.35, pythons, lambda p: p.endswith(".py")),
        ("binaries", 0.35, ["/usr/bin"], _is_elf),
    )


def _listdir(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def build_corpus(limit):
    """Up to ``limit`` bytes of real files, each group filling its share, concatenated.

    Returns (bytes, {group: {"files": n, "bytes": n}}).  BenchError if nothing is readable."""
    parts, summary = [], {}
    for group, share, roots, accept in corpus_sources():
        quota = int(limit * share)
        got, files = 0, 0
        for root in roots:
            for path in _walk_sorted(root, accept):
                if got >= quota:
                    break
                try:
                    with open(path, "rb") as f:
                        data = f.read(quota - got)
                except OSError:
                    continue
                parts.append(data)
                got += len(data)
                files += 1
        summary[group] = {"files": files, "bytes": got, "roots": roots}
    corpus = b"".join(parts)
    if len(corpus) < PAGE_SIZE:
        raise BenchError("no readable files for compressible pages (looked in /usr/share/doc, "
                         "/usr/share/common-licenses, /usr/lib/python3*, /usr/bin)")
    return corpus, summary


@dataclasses.dataclass(frozen=True)
class Dataset:
    path: str
    size: int
    seed: int
    mix: dict
    pages: dict
    """Pages of each kind actually drawn."""
    sha256: str
    corpus_bytes: int
    corpus: dict

    def to_dict(self):
        d = dataclasses.asdict(self)
        d.pop("path")
        d["mix"] = format_mix(self.mix)
        return d


def make_dataset(path, size, mix, seed, corpus_limit=32 << 20, chunk_pages=4096):
    """Write the page mix to ``path``: ``size`` bytes (whole pages), deterministic given ``seed``."""
    if size < PAGE_SIZE or size % PAGE_SIZE:
        raise ConfigError(f"--size: {size} must be a positive multiple of {PAGE_SIZE}")
    npages = size // PAGE_SIZE
    rng = np.random.default_rng(seed)
    probs = np.array([mix[k] for k in KINDS], dtype=np.float64)
    kinds = rng.choice(len(KINDS), size=npages, p=probs / probs.sum()).astype(np.uint8)
    corpus, corpus_summary = (b"", {})
    if mix["text"] > 0:
        corpus, corpus_summary = build_corpus(min(corpus_limit, max(size, 1 << 20)))
    cpages = np.frombuffer(corpus[:len(corpus) // PAGE_SIZE * PAGE_SIZE], dtype=np.uint8).reshape(-1, PAGE_SIZE) \
        if corpus else None
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for first in range(0, npages, chunk_pages):
            k = kinds[first:first + chunk_pages]
            buf = np.zeros((len(k), PAGE_SIZE), dtype=np.uint8)
            same = np.flatnonzero(k == 1)
            if same.size:
                words = rng.integers(1, 1 << 64, size=same.size, dtype=np.uint64)
                buf.view(np.uint64)[same] = words[:, None]
            text = np.flatnonzero(k == 2)
            if text.size:
                buf[text] = cpages[rng.integers(0, len(cpages), size=text.size)]
            rand = np.flatnonzero(k == 3)
            if rand.size:
                buf[rand] = rng.integers(0, 256, size=(rand.size, PAGE_SIZE), dtype=np.uint8)
            data = buf.tobytes()
            h.update(data)
            f.write(data)
    counts = {name: int(np.count_nonzero(kinds == i)) for i, name in enumerate(KINDS)}
    return Dataset(path=path, size=size, seed=seed, mix=mix, pages=counts, sha256=h.hexdigest(),
                   corpus_bytes=len(corpus), corpus=corpus_summary)


def files_equal(a, b, chunk=8 << 20):
    """Byte-for-byte comparison; a shorter file is padded with zeros (sparse outputs)."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if not x and not y:
                return True
            if len(x) != len(y):
                n = max(len(x), len(y))
                x, y = x.ljust(n, b"\0"), y.ljust(n, b"\0")
            if x != y:
                return False


# --- process figures ---------------------------------------------------------------------

def proc_status(pid, *keys):
    """Fields of /proc/PID/status in bytes (``VmRSS``, ``RssShmem``...); 0 for a missing one."""
    out = dict.fromkeys(keys, 0)
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in out:
                out[key] = int(value.split()[0]) * 1024
    return out


def vm_rss(pid):
    """VmRSS of ``pid`` in bytes."""
    return proc_status(pid, "VmRSS")["VmRSS"]


def private_rss(pid):
    """Resident memory of ``pid`` that is its own: VmRSS less shared memory (RssShmem)."""
    st = proc_status(pid, "VmRSS", "RssShmem")
    return st["VmRSS"] - st["RssShmem"]


def _tool(name):
    path = shutil.which(name, path=CLEAN_PATH)
    if path is None:
        raise BenchError(f"{name} is not installed")
    return path


# --- targets -----------------------------------------------------------------------------

class Target:
    """A started target: ``uri`` (NBD) or ``device`` (a block device), ``pid`` of the server."""

    uri = None
    device = None
    pid = None

    def stats(self):
        """uzram's Stats, else None."""
        return None

    def wait_idle(self, timeout):
        """Wait until background work (kcompressd) has drained; returns seconds waited."""
        return 0.0

    def settle(self, timeout):
        """Wait until transient memory (kcompressd's pending ring) has been given back."""

    def memory(self):
        """{part: bytes} of the memory the target holds now: the server's resident memory."""
        return {"server": vm_rss(self.pid)} if self.pid else {}

    def stop(self):
        pass


class UzramTarget(Target):
    def __init__(self, row, size, workdir):
        self._err = tempfile.TemporaryFile(dir=workdir)
        # one runtime directory per row: a round keeps every row's server up for its latency phase
        self.server = Server(size, algorithm=row.algorithm, workers=row.workers, name=f"bench-{os.getpid()}",
                             runtime_dir=os.path.join(workdir, f"rt-{row.name}"), stderr=self._err,
                             threads=None if row.plain else DEFAULT_THREADS)
        try:
            self.server.start()
        except Exception as e:  # a mode that does not work yet (kcompressd): the row fails, the run goes on
            why = _first_line(e) if isinstance(e, ServerError) else "nbdkit exited during start-up"
            text = _read_all(self._err)
            self._err.close()
            raise BenchError(f"uzram did not start: {why}{_stderr_reason(text)}") from None
        self.uri = self.server.uri
        self.pid = self.server.proc.pid
        # measure from the moment the workers can take jobs (their start-up is no part of a copy)
        deadline = time.monotonic() + 30
        while row.workers and self.stats().workers_alive < row.workers:
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"uzram's {row.workers} kcompressd workers did not start within 30 s")
            time.sleep(0.02)

    def stats(self):
        return self.server.stats()

    def wait_idle(self, timeout):
        t0 = time.monotonic()
        while True:
            s = self.stats()
            if s.pending_pages == 0 and s.batches_in_flight == 0 and s.batches_queued == 0:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise BenchError(f"kcompressd did not drain within {timeout:.0f} s "
                                 f"({s.pending_pages} pages pending)")
            time.sleep(0.002)

    def settle(self, timeout):
        deadline = time.monotonic() + timeout
        while self.stats().pending_held_bytes and time.monotonic() < deadline:
            time.sleep(0.05)

    def memory(self):
        """The nbdkit process's and its workers' own resident memory, and the shared
        memory (arena and pending ring) counted once, as the kernel allocated it."""
        workers = self.server.worker_pids()
        return {"server": private_rss(self.pid), "workers": sum(private_rss(p) for p in workers),
                "shared": self.stats().shared_bytes}

    def stop(self):
        try:
            self.server.stop()
        finally:
            self._err.close()


class NbdkitTarget(Target):
    """nbdkit with a non-uzram plugin on a Unix socket (uzram.nbd.server.Nbdkit)."""

    def __init__(self, row, size, workdir):
        sock = os.path.join(workdir, f"{row.name}.sock")
        argv = [nbdkit_binary(), "-f", "--exit-with-parent", "-U", sock]
        if row.kind == "bare":
            # the same nbdkit settings as uzram's Python plugin gets from uzram.nbd.server
            argv += ["--threads", str(DEFAULT_THREADS), "python", BARE_PLUGIN, f"size={size}", *row.options]
        else:
            argv += ["memory", str(size)] + ([f"allocator={row.algorithm}"] if row.algorithm else [])
        self.argv = argv
        self._err = tempfile.TemporaryFile(dir=workdir)
        self._sock = sock
        self._nbdkit = Nbdkit(argv, stderr=self._err, socket_path=sock)
        try:
            self._nbdkit.start(30)
        except ServerError:
            text = _read_all(self._err)
            self._err.close()
            raise BenchError(f"{' '.join(argv[5:])}: nbdkit did not start{_stderr_reason(text)}") from None
        self.proc = self._nbdkit.proc
        self.uri = f"nbd+unix:///?socket={sock}"
        self.pid = self.proc.pid

    def stop(self):
        nbdkit, self._nbdkit = self._nbdkit, None
        if nbdkit is not None:
            nbdkit.stop()
            try:
                os.unlink(self._sock)
            except OSError:
                pass
            self._err.close()


def _read_all(f):
    try:
        f.seek(0)
        return f.read().decode(errors="replace")
    except (OSError, ValueError):
        return ""


_EXC_LINE = re.compile(r"\b[A-Za-z_]\w*(Error|Exception|Exit)\b:?")


def _stderr_reason(text):
    """' (nbdkit: REASON)' from a server's stderr: the last Python exception line if there is
    one (nbdkit's own last line is often just 'error running this script'), else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ""
    exc = [ln for ln in lines if _EXC_LINE.search(ln) and "error running this script" not in ln]
    return f" (nbdkit: {(exc or lines)[-1][:300]})"


def kernel_zram_algorithms():
    """Codecs the kernel's zram offers (empty when there is no zram-control)."""
    if not os.path.isdir(ZRAM_CONTROL):
        return []
    for dev in sorted(_listdir("/sys/block")):
        path = f"/sys/block/{dev}/comp_algorithm"
        if dev.startswith("zram") and os.path.exists(path):
            try:
                with open(path) as f:
                    return [a.strip("[]") for a in f.read().split()]
            except OSError:
                return []
    return []


def kernel_zram_unavailable():
    """Why kernel zram cannot be benchmarked here, or None."""
    if not os.path.isdir(ZRAM_CONTROL):
        return f"{ZRAM_CONTROL} does not exist (no zram module)"
    if os.geteuid() != 0:
        return "kernel zram needs root"
    return None


def _write_sys(path, value):
    with open(path, "w") as f:
        f.write(str(value))


class KernelZramTarget(Target):
    """A zram device of our own (hot_add), reset and hot_removed at stop."""

    def __init__(self, row, size, workdir):
        why = kernel_zram_unavailable()
        if why:
            raise BenchError(why)
        with open(f"{ZRAM_CONTROL}/hot_add") as f:
            self.index = int(f.read().strip())
        self.sys = f"/sys/block/zram{self.index}"
        self.device = f"/dev/zram{self.index}"
        try:
            try:
                _write_sys(f"{self.sys}/comp_algorithm", row.algorithm)
            except OSError as e:
                raise BenchError(f"kernel zram has no {row.algorithm!r} ({e.strerror})") from None
            _write_sys(f"{self.sys}/disksize", size)
            deadline = time.monotonic() + 10
            while not os.path.exists(self.device):
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.device} did not appear")
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise

    def mm_stat(self):
        with open(f"{self.sys}/mm_stat") as f:
            values = [int(v) for v in f.read().split()]
        names = ("orig_data_size", "compr_data_size", "mem_used_total", "mem_limit", "mem_used_max",
                 "same_pages", "pages_compacted", "huge_pages")
        return dict(zip(names, values))

    def stop(self):
        if self.index is None:
            return
        index, self.index = self.index, None
        for attempt in range(50):
            try:
                _write_sys(f"{self.sys}/reset", 1)
                _write_sys(f"{ZRAM_CONTROL}/hot_remove", index)
                return
            except OSError:  # busy for a moment after the last close
                time.sleep(0.1)
        raise BenchError(f"could not remove zram{index}: remove it with "
                         f"'echo 1 > {self.sys}/reset; echo {index} > {ZRAM_CONTROL}/hot_remove'")


def start_target(row, size, workdir):
    if row.kind == "uzram":
        return UzramTarget(row, size, workdir)
    if row.kind in ("nbdkit-memory", "bare"):
        return NbdkitTarget(row, size, workdir)
    return KernelZramTarget(row, size, workdir)


def _first_line(e):
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


# --- latency -----------------------------------------------------------------------------

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


def run_swap(rows, results, pages, progress):
    """Swap-out/in pages/s per row through uzram.tools.bench.swap (one run per row, after the rounds).

    Adds swap_out_pages_s / swap_in_pages_s to each row's ``swap`` entry; returns a summary."""
    swapbench = _swapbench()
    if swapbench is None:
        progress.note("uzram bench: --swap: uzram.tools.bench.swap is not there (or lacks swap_throughput); "
                      "swap columns left empty")
        return {"status": "unavailable", "error": "uzram.tools.bench.swap with swap_throughput is not available"}
    size = max(1 << 30, pages * PAGE_SIZE * 2)
    done = {}
    for row in rows:
        if results[row.name]["status"] == "skipped":
            continue
        make = swap_device_maker(swapbench, row, size)
        if make is None:
            continue
        progress.start(f"swap {row.name} ({pages} pages)")
        try:
            out = swapbench.swap_throughput(make, pages)
            done[row.name] = {"swap_out_pages_s": out["swapout_pages_per_s"],
                              "swap_in_pages_s": out["swapin_pages_per_s"],
                              "swap_out_cpu_busy": out.get("swapout_cpu_busy"), "detail": out}
        except (UzramError, OSError, KeyError) as e:
            done[row.name] = {"error": _first_line(e)}
            progress.note(f"  swap {row.name}: failed: {_first_line(e)}")
    return {"status": "ok", "pages": pages, "rows": done,
            "method": "uzram.tools.bench.swap.swap_throughput: a memory eater in a memory cgroup swaps through the "
                      "device; pages/s from pswpout/pswpin deltas; one run per row"}


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
            argv = [_tool("nbdcopy"), dataset.path, target.uri]
        else:
            argv = [_tool("dd"), f"if={dataset.path}", f"of={target.device}", "bs=1M", "oflag=direct",
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
            argv = [_tool("nbdcopy"), target.uri, out]
        else:
            argv = [_tool("dd"), f"if={target.device}", f"of={out}", "bs=1M", "iflag=direct", "status=none"]
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
          "read_mb_s", "read4k_p50_us", "read4k_p99_us", "rss_growth", "rss_before", "rss_after",
          "mem_used_total", "compr_data_size", "orig_data_size", "pages_stored", "same_pages", "huge_pages",
          "compression_ratio", "request_cpu_s", "worker_cpu_s", "request_cpu_share", "server_cpu_s", "client_cpu_s", "write_s", "read_s",
          "drain_s", "writestall", "failed_writes", "swap_out_pages_s", "swap_in_pages_s", "swap_out_cpu_busy")


def median_of(runs):
    med = {}
    for key in FIELDS:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if values:
            med[key] = statistics.median(values)
    return med


# --- targets (the ratios uzram promises) -------------------------------------------------

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
        m = _UZRAM_ROW.fullmatch(name)
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
    workers = sorted({int(m.group(3)) for m in map(_UZRAM_ROW.fullmatch, results)
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
        m = _UZRAM_ROW.fullmatch(name)
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


# --- the run -----------------------------------------------------------------------------

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
        _tool(tool)
    if any(r.kind == "kernel-zram" for r in o.rows):
        _tool("dd")
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
                            res.update(status="failed", error=_first_line(e))
                            progress.note(f"  {row.name}: failed: {res['error']}")
                    progress.step()
                if running:
                    progress.start(f"round {rnd + 1}/{o.repeat} 4 KiB read latency, {len(running)} targets in turn")
                    try:
                        lat = interleaved_read_latency({n: t for n, (t, _) in running.items()}, o.size,
                                                       o.latency_count, o.seed + rnd)
                    except (UzramError, OSError) as e:
                        progress.note(f"  latency: failed: {_first_line(e)}")
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
                        progress.note(f"  {row.name}: serialized writer failed: {_first_line(e)}")
        swap = None
        if o.swap:
            swap = run_swap(o.rows, results, o.swap_pages or o.size // PAGE_SIZE, progress)
    progress.close()
    for res in results.values():
        res["median"] = median_of(res["runs"])
        if res["status"] == "ok" and not res["runs"]:
            res["status"] = "failed"
    for name, figures in (swap or {}).get("rows", {}).items():
        for key in ("swap_out_pages_s", "swap_in_pages_s", "swap_out_cpu_busy"):
            if figures.get(key) is not None:
                results[name]["median"][key] = figures[key]
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


def source_digest():
    """SHA-256 (first 12 hex digits) of uzram's and the plugin's Python sources as they are now.

    nbdkit loads the plugin afresh for every row, so an edit during a run would mix code
    versions; the report compares this digest from before and after each uzram row."""
    h = hashlib.sha256()
    for top in (PACKAGE, os.path.join(REPO, "plugin")):
        for path in _walk_sorted(top, lambda p: p.endswith(".py")):
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


# --- rendering ---------------------------------------------------------------------------

COLUMNS = (
    # header, key, format
    ("row", None, None),
    ("write MB/s", "write_mb_s", "{:.0f}"),
    ("read MB/s", "read_mb_s", "{:.0f}"),
    ("4K p50 us", "read4k_p50_us", "{:.1f}"),
    ("4K p99 us", "read4k_p99_us", "{:.1f}"),
    ("serial MB/s", "serial_mb_s", "{:.0f}"),
    ("serial p99 us", "serial_p99_us", "{:.0f}"),
    ("nbdkit us/pg", "server_cpu_us_page", "{:.1f}"),
    ("wkr us/pg", "worker_cpu_us_page", "{:.1f}"),
    ("mem growth MiB", "rss_growth", "mib"),
    ("mem_used MiB", "mem_used_total", "mib"),
    ("compr MiB", "compr_data_size", "mib"),
    ("ratio", "compression_ratio", "{:.2f}"),
    ("req:wkr CPU", "request_cpu_share", "split"),
    ("swap out/in pg/s (CPUs busy)", "swap_out_pages_s", "swap"),
)


def _cell(med, key, fmt):
    v = med.get(key)
    if fmt == "swap":
        a, b, busy = med.get("swap_out_pages_s"), med.get("swap_in_pages_s"), med.get("swap_out_cpu_busy")
        if a is None or b is None:
            return ""
        return f"{a:.0f}/{b:.0f}" + (f" ({busy:.0%} busy)" if busy is not None else "")
    if v is None:
        return "-"
    if fmt == "mib":
        return f"{v / (1 << 20):.1f}"
    if fmt == "split":
        return f"{round(v * 100):d}:{100 - round(v * 100):d}"
    return fmt.format(v)


def table_rows(result):
    out = []
    for row in result["rows"]:
        if row["status"] != "ok":
            out.append([row["name"]] + [f"{row['status']}: {row['error']}"] + [""] * (len(COLUMNS) - 2))
            continue
        out.append([row["name"]] + [_cell(row["median"], key, fmt) for _, key, fmt in COLUMNS[1:]])
    return out


def format_table(result):
    headers = [c[0] for c in COLUMNS]
    rows = table_rows(result)
    ok_rows = [r for r in rows if len(r) == len(headers) and not r[1].startswith(("failed", "skipped"))]
    widths = [max([len(h)] + [len(r[i]) for r in ok_rows]) for i, h in enumerate(headers)]
    widths[0] = max([len(headers[0])] + [len(r[0]) for r in rows])
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    for r in rows:
        if r in ok_rows:
            lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        else:
            lines.append(r[0].ljust(widths[0]) + "  " + r[1])
    return "\n".join(lines)


def format_ratios(result):
    lines = []
    for r in result["ratios"]:
        value = "-" if r["value"] is None else f"{r['value']:.2f}"
        spread = ""
        if len(r["per_round"]) > 1:
            spread = f"  (per round {min(r['per_round']):.2f}..{max(r['per_round']):.2f})"
        ceiling = "" if r.get("ceiling") is None else f"  [ceiling on {os.cpu_count()} CPUs: {r['ceiling']:.2f}]"
        lines.append(f"{r['status']:4s}  {value:>6s}  target {r['target']:7s}  {r['name']}{spread}{ceiling}")
    return "\n".join(lines)


def format_markdown(result, command):
    o, d, m = result["options"], result["dataset"], result["machine"]
    headers = [c[0] for c in COLUMNS]
    lines = [
        "# uzram bench",
        "",
        f"Command: `{command}`",
        "",
        f"Run {result['started']} ({result['duration_s']:.0f} s) on {m['cpus']} CPUs ({m['cpu_model']}), "
        f"kernel {m['kernel']}, {m['nbdkit']}. Data set: {d['size'] >> 20} MiB, mix {d['mix']} "
        f"(pages: {', '.join(f'{k} {v}' for k, v in d['pages'].items())}), seed {d['seed']}, "
        f"sha256 `{d['sha256'][:16]}`. Medians of {o['repeat']} interleaved round(s). "
        f"uzram {result['source']['git']} (sources {result['source']['digest_start']}).",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    for r in table_rows(result):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    if result["source"]["changed_during_run"]:
        lines += ["", "**Warning: uzram's sources changed during this run** (digests "
                  f"{', '.join(result['source']['uzram_rows'])}): the uzram rows did not all run the same code."]
    lines += ["", "## Targets (ratios measured side by side in this run)", "",
              f"| target | ratio | goal | result | per round | ceiling on {m['cpus']} CPUs |",
              "|---|---:|---:|---|---:|---:|"]
    for r in result["ratios"]:
        value = "-" if r["value"] is None else f"{r['value']:.2f}"
        per_round = " ".join(f"{v:.2f}" for v in r["per_round"])
        ceiling = "" if r.get("ceiling") is None else f"{r['ceiling']:.2f}"
        lines.append(f"| {r['name']} | {value} | {r['target']} | {r['status']} | {per_round} | {ceiling} |")
    lines += ["", "Method:", ""]
    lines += [f"- {k}: {v}" for k, v in result["method"].items()]
    swap = result.get("swap")
    if swap is None:
        lines.append("- swap: not measured (run with --swap)")
    elif swap.get("status") != "ok":
        lines.append(f"- swap: {swap['status']}: {swap.get('error')}")
    else:
        lines.append(f"- swap: {swap['method']}; {swap['pages']} pages")
        lines += [f"  - {n}: failed: {v['error']}" for n, v in swap["rows"].items() if "error" in v]
    return "\n".join(lines) + "\n"


#: The chart's colour per kind of row, with the legend's words for it.
KIND_COLOURS = {
    "uzram": ("tab:blue", "uzram (this project)"),
    "nbdkit-memory": ("tab:orange", "nbdkit memory plugin (C)"),
    "bare": ("tab:green", "bare Python plugin (no compression)"),
    "kernel-zram": ("tab:gray", "kernel zram (dd, O_DIRECT)"),
}


def chart_label(row):
    """A row's name on a chart; kernel zram's says how it was measured (not through nbdcopy)."""
    return row["name"] + (" (dd/O_DIRECT)" if row["kind"] == "kernel-zram" else "")


def chart_caption(result):
    o, d = result["options"], result["dataset"]
    return (f"data set {d['size'] >> 20} MiB, mix {d['mix']}, seed {d['seed']}; medians of {o['repeat']} "
            f"interleaved round(s); {result['started'][:16].replace('T', ' ')} UTC, {result['machine']['cpus']} CPUs")


def write_charts(result, outdir):
    """write.png, serial.png, read_p50.png, memory.png; returns the paths written (none
    without matplotlib).  Each says its unit, which way is better, the data set, the rounds
    and the date; a legend names the colours; a row without the figure says n/a instead of
    showing a bar of zero."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        return []
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    labels = [chart_label(r) for r in rows]
    caption = chart_caption(result)
    paths = []

    def legend(ax, kinds):
        ax.legend(handles=[Patch(color=KIND_COLOURS[k][0], label=KIND_COLOURS[k][1]) for k in KIND_COLOURS
                           if k in kinds], fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    def save(fig, filename):
        fig.text(0.01, 0.005, caption, fontsize=7, color="0.3", ha="left", va="bottom")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        path = os.path.join(outdir, filename)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)

    def bars(filename, key, unit, better, title, only=None, fmt="{:.0f}"):
        shown = [(r, lab) for r, lab in zip(rows, labels) if only is None or only(r)]
        if not shown:
            return
        fig, ax = plt.subplots(figsize=(11, 0.42 * max(len(shown), 2) + 1.6))
        values = [r["median"].get(key) for r, _ in shown]
        top = max([v for v in values if v is not None] or [1])
        for i, ((r, _), v) in enumerate(zip(shown, values)):
            if v is None:
                ax.text(0, i, " n/a", va="center", fontsize=8, color="0.4")
            else:
                ax.barh(i, v, color=KIND_COLOURS.get(r["kind"], ("tab:gray",))[0])
                ax.text(v, i, " " + fmt.format(v), va="center", fontsize=8)
        ax.set_yticks(range(len(shown)))
        ax.set_yticklabels([lab for _, lab in shown], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, top * 1.18)
        ax.set_xlabel(f"{unit} ({better} is better)")
        ax.set_title(title, fontsize=10)
        legend(ax, {r["kind"] for r, _ in shown})
        save(fig, filename)

    bars("write.png", "write_mb_s", "MB/s, median", "higher",
         "Write: nbdcopy FILE into the device (kcompressd rows until every page is compressed)")
    bars("serial.png", "serial_mb_s", "MB/s, median", "higher",
         f"One writer, one 64 KiB request in flight, flush included ({result['options'].get('serial_size', 0) >> 20} MiB)",
         only=lambda r: r["name"] in {x.name for x in serial_rows([row_by_name(y["name"]) for y in rows])})
    bars("read_p50.png", "read4k_p50_us", "microseconds, median of each round's p50", "lower",
         "4 KiB random reads at queue depth 1: p50 latency", fmt="{:.1f}")

    fig, ax = plt.subplots(figsize=(11, 0.6 * max(len(rows), 2) + 1.6))
    keys = (("rss_growth", "memory growth (own RSS of server and workers + shared files)", "tab:purple"),
            ("mem_used_total", "mem_used_total (uzram, kernel zram)", "tab:cyan"),
            ("compr_data_size", "compr_data_size (uzram, kernel zram)", "tab:olive"))
    h = 0.27
    for j, (key, label, colour) in enumerate(keys):
        for i, r in enumerate(rows):
            v = r["median"].get(key)
            y = i + (j - 1) * h
            if v is None:
                ax.text(0, y, " n/a", va="center", fontsize=6, color="0.4")
            else:
                ax.barh(y, v / (1 << 20), height=h, color=colour, label=label if i == 0 or
                        all(x["median"].get(key) is None for x in rows[:i]) else None)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("MiB, median (lower is better)")
    ax.set_title(f"Memory held for the {result['dataset']['size'] >> 20} MiB data set", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save(fig, "memory.png")
    return paths


def write_report(result, outdir, command):
    """bench.json, report.md and the charts into ``outdir``; returns the paths written."""
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as e:
        raise BenchError(f"--out: cannot create {outdir}: {e.strerror}") from None
    from uzram.core.schema import BENCH
    result = {"version": BENCH, **result, "command": command}
    paths = []
    path = os.path.join(outdir, "bench.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    paths.append(path)
    path = os.path.join(outdir, "report.md")
    with open(path, "w") as f:
        f.write(format_markdown(result, command))
    paths.append(path)
    paths += write_charts(result, outdir)
    return paths


def readme_block(report_md):
    """report.md as a README section: the title dropped, headings moved under the README's."""
    lines = report_md.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join("#### " + l[3:] if l.startswith("## ") else l for l in lines).strip() + "\n"


def update_readme(path, section, report_md):
    """Replace the text between ``<!-- uzram-bench:SECTION begin -->`` and ``... end -->``
    in ``path`` with this run's report, so the README's figures come from a real run."""
    begin, end = f"<!-- uzram-bench:{section} begin -->", f"<!-- uzram-bench:{section} end -->"
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise BenchError(f"--readme: cannot read {path}: {e.strerror}") from None
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise BenchError(f"--readme: {path} has no '{begin}' ... '{end}' markers")
    text = text[:i + len(begin)] + "\n" + readme_block(report_md) + text[j:]
    with open(path, "w") as f:
        f.write(text)


def command_line(argv=None):
    """The command as typed, quoted for a shell."""
    argv = sys.argv[1:] if argv is None else argv
    return shlex.join(["uzram"] + list(argv))
