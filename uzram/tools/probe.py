"""``uzram probe``: an ioping/fio-like latency prober for any NBD export.

The prober talks to the server through libnbd's asynchronous API (``aio_pread`` /
``aio_pwrite`` into preallocated ``nbd.Buffer`` objects) and times every request with
``time.perf_counter_ns()``.  Everything a request needs (its offset, its kind, its buffer)
is prepared before the first one is sent, so the timed loop only submits, polls and
stores three integers.

Two latencies are recorded per request, with fio's names:

* ``latency`` (fio's ``lat``): from just before the request is submitted to just after
  its reply has been processed.  This is what the summary and the histogram report.
* ``clat`` (fio's completion latency): from the moment the submit call returned (the
  request was on the wire) to the reply.  ``compare_with_fio`` compares both.

Offsets are multiples of the request size inside ``--range``; ``--pattern random`` draws
them uniformly with replacement (fio's ``norandommap``), ``sequential`` walks the range
and wraps.  Warmup requests run first and are left out of every statistic.  One seed
drives offsets, mixed-op choices and write contents; without ``--seed`` one is drawn at
random and recorded in the result (``seed``), so any run can be repeated.

The summary follows ioping's two lines:

* "N requests completed in T": T is the *sum* of the measured requests' latencies (the
  time the export spent on them), and the iops and MiB/s on that line are N / T and
  bytes / T, as ioping computes them;
* "generated M requests in W": M counts every request sent, the warmup included, and W is
  the wall time of the whole run, pauses (``--interval``) included; its iops and MiB/s
  are M / W and M x size / W.

At queue depth 1 without pauses the two are close; with requests in flight at once, T
exceeds W (the latencies overlap), and the "generated" line gives the throughput.

The module sits above ``config`` and ``errors`` and below ``cli``: it imports ``nbd``
(python3-libnbd) and numpy; matplotlib only inside ``plot_histogram``.
"""

import array
import dataclasses
import json
import math
import os
import secrets
import shutil
import subprocess
import tempfile
import time

import numpy as np

from uzram.core import schema
from uzram.core.constants import MAX_REQUEST
from uzram.core.errors import ConfigError, UzramError

try:
    import nbd
except ImportError:  # pragma: no cover - python3-libnbd is a Debian package
    nbd = None

OPS = ("read", "write", "mixed")
CONTENTS = ("zero", "same", "text", "random")
PATTERNS = ("random", "sequential")

#: Request kinds, as stored per request.
READ = 0
WRITE = 1
OP_NAMES = ("read", "write")

#: The percentiles every summary reports (fio's default list, trimmed).
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9, 99.99)

#: The 8-byte value ``--content same`` repeats over each request (little-endian).
SAME_FILL_WORD = 0x00C0FFEE_DEADBEEF

#: Histogram resolution: the terminal one has 2 buckets per power of two, JSON 4.
TERMINAL_PER_OCTAVE = 2
JSON_PER_OCTAVE = 4

_WORDS = (
    "the a of to and in is it that for on was with as page swap memory block device "
    "compressed kernel request latency server client write read zero cache buffer "
    "store slot worker queue time data file system user process thread lock free "
    "size limit ratio value table entry offset length number count error state"
).split()


class ProbeError(UzramError):
    """The export cannot be probed: unreachable, read-only for writes, a request failed."""


@dataclasses.dataclass(frozen=True)
class ProbeOptions:
    """What to send.  Validated on construction (ConfigError names the option)."""

    op: str = "read"
    """``read``, ``write`` or ``mixed``."""
    read_share: float = 0.5
    """For ``mixed``: the fraction of requests that are reads, 0..1."""
    size: int = 4096
    """Bytes per request."""
    count: int = 1000
    """Requests measured (after the warmup)."""
    interval: float = 0.0
    """Seconds between requests (ioping's default is 1 s; ours is 0, for benchmarking)."""
    warmup: int = 1
    """Requests sent first and left out of the statistics (ioping discards one)."""
    queue_depth: int = 1
    """Requests in flight at once; 1 measures pure latency."""
    content: str = "random"
    """What writes carry: ``zero``, ``same`` (one 8-byte value repeated), ``text``, ``random``."""
    pattern: str = "random"
    """Offsets: ``random`` (uniform, with replacement) or ``sequential`` (wrapping)."""
    range_start: int = 0
    """First byte of the probed range."""
    range_length: int | None = None
    """Bytes in the probed range; None = to the end of the export."""
    seed: int | None = None
    """Seed for offsets, mixed-op choices and write contents; None = drawn at random (and
    recorded in the result, so the run can be repeated)."""

    def __post_init__(self):
        if self.op not in OPS:
            raise ConfigError(f"--op: {self.op!r} is not one of {', '.join(OPS)}")
        if self.content not in CONTENTS:
            raise ConfigError(f"--content: {self.content!r} is not one of {', '.join(CONTENTS)}")
        if self.pattern not in PATTERNS:
            raise ConfigError(f"--pattern: {self.pattern!r} is not one of {', '.join(PATTERNS)}")
        if not (isinstance(self.read_share, (int, float)) and 0.0 <= self.read_share <= 1.0):
            raise ConfigError(f"--read-share: {self.read_share!r} is not a fraction between 0 and 1")
        if not 1 <= self.size <= MAX_REQUEST:
            raise ConfigError(f"--size: {self.size} is outside 1 byte .. {MAX_REQUEST >> 20} MiB")
        if self.count < 1:
            raise ConfigError(f"--count: {self.count} is below the minimum 1")
        if self.warmup < 0:
            raise ConfigError(f"--warmup: {self.warmup} is below the minimum 0")
        if not 1 <= self.queue_depth <= 1024:
            raise ConfigError(f"--queue-depth: {self.queue_depth} is outside 1..1024")
        if not (math.isfinite(self.interval) and self.interval >= 0):
            raise ConfigError(f"--interval: {self.interval!r} is not a number of seconds >= 0")
        if self.range_start < 0 or (self.range_length is not None and self.range_length < 1):
            raise ConfigError("--range: START must be >= 0 and LENGTH > 0")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise ConfigError(f"--seed: {self.seed} is outside 0 .. 2^64-1")

    @property
    def total(self):
        """Requests sent: warmup plus measured."""
        return self.warmup + self.count


@dataclasses.dataclass(frozen=True)
class LatencySummary:
    """Statistics of one set of latencies, in nanoseconds."""

    count: int
    """Requests summarised."""
    min: int
    """Fastest request."""
    avg: float
    """Mean."""
    max: int
    """Slowest request."""
    mdev: float
    """Standard deviation (ioping's mdev)."""
    percentiles: dict
    """``{50.0: ns, 90.0: ns, ...}``: the smallest latency that at least p% of requests
    did not exceed (fio's definition), for each of PERCENTILES."""

    @classmethod
    def of(cls, lat_ns):
        lat = np.asarray(lat_ns, dtype=np.int64)
        if lat.size == 0:
            return cls(0, 0, 0.0, 0, 0.0, {p: 0 for p in PERCENTILES})
        pct = np.percentile(lat, PERCENTILES, method="inverted_cdf")
        return cls(int(lat.size), int(lat.min()), float(lat.mean()), int(lat.max()), float(lat.std()),
                   {p: int(v) for p, v in zip(PERCENTILES, pct)})

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["percentiles"] = {_pct_key(p): v for p, v in self.percentiles.items()}
        return d


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """One probe run.  The arrays hold the measured requests only (warmup excluded), in
    the order they were submitted."""

    uri: str
    options: ProbeOptions
    export_size: int
    """Size of the export in bytes."""
    ops: np.ndarray
    """READ or WRITE per request (uint8)."""
    offsets: np.ndarray
    """Byte offset per request (int64)."""
    latency_ns: np.ndarray
    """Submission to completion, per request (int64); fio's ``lat``."""
    clat_ns: np.ndarray
    """Submit call returned to completion, per request (int64); fio's ``clat``."""
    elapsed_ns: int
    """Wall time from the first measured submission to the last measured completion."""
    interrupted: bool
    """Stopped early by Ctrl-C; the arrays hold the requests that completed."""
    seed: int = 0
    """The seed the run used (given, or drawn at random when options.seed is None)."""
    generated: int = 0
    """Requests sent and completed, the warmup included (ioping's "generated")."""
    generated_ns: int = 0
    """Wall time of the whole run: the first submission (warmup included) to the last
    completion, pauses included."""

    @property
    def requests(self):
        return int(self.latency_ns.size)

    @property
    def bytes(self):
        return self.requests * self.options.size

    @property
    def time_ns(self):
        """The sum of the measured requests' latencies: ioping's "completed in" time."""
        return int(self.latency_ns.sum())

    @property
    def iops(self):
        """ioping's iops: requests / the sum of their latencies."""
        return self.requests / (self.time_ns / 1e9) if self.time_ns else 0.0

    @property
    def mib_s(self):
        """ioping's speed: bytes / the sum of the latencies, in MiB/s."""
        return self.bytes / (1 << 20) / (self.time_ns / 1e9) if self.time_ns else 0.0

    @property
    def wall_iops(self):
        """Measured requests / the wall time they took (``elapsed_ns``): fio's iops."""
        return self.requests / (self.elapsed_ns / 1e9) if self.elapsed_ns else 0.0

    @property
    def generated_iops(self):
        return self.generated / (self.generated_ns / 1e9) if self.generated_ns else 0.0

    @property
    def generated_mib_s(self):
        return self.generated * self.options.size / (1 << 20) / (self.generated_ns / 1e9) if self.generated_ns else 0.0

    def summary(self, op=None):
        """LatencySummary of all requests, or of one kind (READ / WRITE)."""
        lat = self.latency_ns if op is None else self.latency_ns[self.ops == op]
        return LatencySummary.of(lat)

    def to_dict(self):
        """The machine-readable form ``uzram probe --json`` prints."""
        o = self.options
        reads = int(np.count_nonzero(self.ops == READ))
        d = {
            "version": schema.PROBE,
            "uri": self.uri,
            "export_size": self.export_size,
            "seed": self.seed,
            "seed_given": o.seed is not None,
            "options": dict(dataclasses.asdict(o), seed=self.seed),
            "requests": self.requests,
            "reads": reads,
            "writes": self.requests - reads,
            "warmup": o.warmup,
            "bytes": self.bytes,
            "time_s": self.time_ns / 1e9,
            "iops": self.iops,
            "mib_s": self.mib_s,
            "generated": {"requests": self.generated, "time_s": self.generated_ns / 1e9,
                          "iops": self.generated_iops, "mib_s": self.generated_mib_s},
            "elapsed_s": self.elapsed_ns / 1e9,
            "wall_iops": self.wall_iops,
            "interrupted": self.interrupted,
            "latency_ns": self.summary().to_dict(),
            "clat_ns": LatencySummary.of(self.clat_ns).to_dict(),
        }
        if o.op == "mixed":
            d["read_latency_ns"] = self.summary(READ).to_dict()
            d["write_latency_ns"] = self.summary(WRITE).to_dict()
        d["histogram"] = {
            "per_octave": JSON_PER_OCTAVE,
            "buckets": [{"lo_ns": lo, "hi_ns": hi, "count": n}
                        for lo, hi, n in histogram(self.latency_ns, JSON_PER_OCTAVE)],
        }
        return d


def _pct_key(p):
    """50.0 -> 'p50', 99.9 -> 'p99.9'."""
    return "p" + f"{p:g}"


# --- sizes, ranges, contents -------------------------------------------------------------

def parse_range(text, parse_size):
    """``START:LENGTH`` (sizes with K/M/G suffixes; LENGTH may be empty = to the end)."""
    start, sep, length = str(text).partition(":")
    if not sep:
        raise ConfigError(f"--range: {text!r} is not START:LENGTH")
    start_b = parse_size(start or "0", key="--range START")
    length_b = parse_size(length, key="--range LENGTH") if length.strip() else None
    if length_b == 0:
        raise ConfigError("--range: LENGTH must be > 0 (leave it empty for 'to the end')")
    return start_b, length_b


def make_content(kind, size, rng):
    """The bytes each write of ``--content KIND`` carries."""
    if kind == "zero":
        return bytearray(size)
    if kind == "same":
        word = SAME_FILL_WORD.to_bytes(8, "little")
        return bytearray((word * (size // 8 + 1))[:size])
    if kind == "text":
        words = rng.choice(np.array(_WORDS), size=size // 3 + 8)
        lines, out, n = [], bytearray(), 0
        for i, w in enumerate(words.tolist()):
            lines.append(w)
            if i % 12 == 11:
                out += (" ".join(lines).capitalize() + f". {n}\n").encode()
                lines, n = [], n + 1
            if len(out) >= size:
                break
        return bytearray(out[:size].ljust(size, b" "))
    if kind == "random":
        return bytearray(rng.bytes(size))
    raise ConfigError(f"--content: {kind!r} is not one of {', '.join(CONTENTS)}")


def plan_requests(options, export_size, rng):
    """(offsets, ops) for every request, warmup first: an ``array('q')`` and a bytearray
    (8 + 1 bytes a request, and fast to index from Python)."""
    o = options
    length = export_size - o.range_start if o.range_length is None else o.range_length
    if o.range_start >= export_size or o.range_start + length > export_size:
        raise ConfigError(f"--range: {o.range_start}:{length} is outside the export ({export_size} bytes)")
    first = -(-o.range_start // o.size)
    end = (o.range_start + length) // o.size
    if end <= first:
        raise ConfigError(f"--range: {o.range_start}:{length} holds no {o.size}-byte request aligned to its size")
    n = o.total
    if o.pattern == "sequential":
        blocks = first + np.arange(n, dtype=np.int64) % (end - first)
    else:
        blocks = rng.integers(first, end, size=n, dtype=np.int64)
    offsets = array.array("q", (blocks * o.size).tobytes())
    if o.op == "read":
        ops = bytearray(n)
    elif o.op == "write":
        ops = bytearray(b"\x01") * n
    else:
        ops = bytearray((rng.random(n) >= o.read_share).astype(np.uint8).tobytes())
    return offsets, ops


# --- running -----------------------------------------------------------------------------

def _nbd_message(e):
    """'nbd_connect_uri: connect: No such file' -> 'connect: No such file'."""
    text = getattr(e, "string", None) or str(e)
    head, sep, rest = text.partition(": ")
    return rest if sep and head.startswith("nbd_") else text


def connect(uri):
    """An ``nbd.NBD`` handle connected to ``uri``, or ProbeError naming why not."""
    if nbd is None:
        raise ProbeError("the nbd module is missing: install python3-libnbd")
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)   # nbds://...?tls-psk-file=FILE: the user named the file
    try:
        h.connect_uri(uri)
    except nbd.Error as e:
        raise ProbeError(f"cannot connect to {uri}: {_nbd_message(e)}") from None
    return h


def disconnect(h):
    """Shut ``h`` down, ignoring a connection that is already gone."""
    try:
        h.shutdown()
    except nbd.Error:
        pass


def run_probe(uri, options=ProbeOptions(), report=None, on_start=None):
    """Probe ``uri`` and return a ProbeResult.

    ``on_start(export_size)`` is called once, connected and checked, before the first request.
    ``report(index, op, offset, latency_ns)`` is called after each request (warmup ones
    included: their index is below ``options.warmup``); leave it None for the least
    overhead.  Ctrl-C stops the run early and returns what completed.
    """
    o = options
    h = connect(uri)
    try:
        export_size = h.get_size()
        if o.op != "read" and h.is_read_only():
            raise ProbeError(f"{uri} is a read-only export: --op {o.op} needs a writable one")
        minimum = h.get_block_size(nbd.SIZE_MINIMUM)
        if minimum > 1 and o.size % minimum:
            raise ConfigError(f"--size: {o.size} is not a multiple of the export's minimum block size {minimum}")
        seed = o.seed if o.seed is not None else secrets.randbits(32)
        rng = np.random.default_rng(seed)
        offsets, ops = plan_requests(o, export_size, rng)
        h.set_pread_initialize(False)  # the buffers are ours; skip libnbd's memset per read
        wbuf = nbd.Buffer.from_buffer(make_content(o.content, o.size, rng)) if o.op != "read" else None
        rbufs = [nbd.Buffer(o.size) for _ in range(o.queue_depth)]
        n = o.total
        # Timestamps (perf_counter_ns) per request: submitted, submit returned, completed.
        start, sub, done = (array.array("q", bytes(8 * n)) for _ in range(3))
        if on_start is not None:
            on_start(export_size)
        interrupted = False
        try:
            if o.queue_depth == 1:
                _loop_qd1(h, offsets, ops, rbufs[0], wbuf, o.interval, report, start, sub, done)
            else:
                _loop_qd(h, offsets, ops, rbufs, wbuf, o.interval, report, start, sub, done)
        except KeyboardInterrupt:
            interrupted = True
    finally:
        disconnect(h)
    all_start, all_done = np.frombuffer(start, dtype=np.int64), np.frombuffer(done, dtype=np.int64)
    all_ok = all_done > 0
    start_a = all_start[o.warmup:]
    sub_a = np.frombuffer(sub, dtype=np.int64)[o.warmup:]
    done_a = all_done[o.warmup:]
    ok = done_a > 0
    if not ok.any():
        raise ProbeError("no measured request completed")
    start_a, sub_a, done_a = start_a[ok], sub_a[ok], done_a[ok]
    return ProbeResult(
        uri=uri, options=o, export_size=export_size,
        ops=np.frombuffer(ops, dtype=np.uint8)[o.warmup:][ok],
        offsets=np.frombuffer(offsets, dtype=np.int64)[o.warmup:][ok],
        latency_ns=done_a - start_a, clat_ns=done_a - sub_a,
        elapsed_ns=int(done_a.max() - start_a.min()), interrupted=interrupted, seed=seed,
        generated=int(np.count_nonzero(all_ok)),
        generated_ns=int(all_done[all_ok].max() - all_start[all_ok].min()))


def _failed(i, op, size, offset, e):
    return ProbeError(f"request {i + 1} ({OP_NAMES[op]} of {size} bytes at offset {offset}) failed: {_nbd_message(e)}")


def _loop_qd1(h, offsets, ops, rbuf, wbuf, interval, report, start, sub, done):
    """One request at a time.  The hot loop allocates no buffers: only the small ints of
    timestamps and cookies."""
    pc = time.perf_counter_ns
    poll = h.poll
    completed = h.aio_command_completed
    submit = (h.aio_pread, h.aio_pwrite)
    bufs = (rbuf, wbuf)
    sleep = time.sleep
    n = len(offsets)
    i = 0
    try:
        for i in range(n):
            op = ops[i]
            fn = submit[op]
            buf = bufs[op]
            off = offsets[i]
            t0 = pc()
            c = fn(buf, off)
            t1 = pc()
            poll(-1)
            while not completed(c):
                poll(-1)
            t2 = pc()
            start[i] = t0
            sub[i] = t1
            done[i] = t2
            if report is not None:
                report(i, op, off, t2 - t0)
            if interval and i + 1 < n:
                sleep(interval)
    except nbd.Error as e:
        raise _failed(i, ops[i], len(bufs[ops[i]]), offsets[i], e) from None


def _loop_qd(h, offsets, ops, rbufs, wbuf, interval, report, start, sub, done):
    """Up to len(rbufs) requests in flight; each read gets its own buffer (slot)."""
    pc = time.perf_counter_ns
    poll = h.poll
    completed = h.aio_command_completed
    peek = h.aio_peek_command_completed
    submit = (h.aio_pread, h.aio_pwrite)
    n = len(offsets)
    qd = len(rbufs)
    free = list(range(qd))
    slot_of = array.array("H", bytes(2 * n))
    pending = {}  # cookie -> request index
    nxt = 0
    finished = 0
    t_begin = pc()
    step = int(interval * 1e9)
    j = 0
    try:
        while finished < n:
            while nxt < n and free:
                if step and pc() < t_begin + nxt * step:
                    break
                slot = free.pop()
                j = nxt
                op = ops[nxt]
                buf = rbufs[slot] if op == READ else wbuf
                t0 = pc()
                c = submit[op](buf, offsets[nxt])
                t1 = pc()
                start[nxt] = t0
                sub[nxt] = t1
                slot_of[nxt] = slot
                pending[c] = nxt
                nxt += 1
            if pending:
                timeout = -1
                if step and nxt < n and free:
                    timeout = max(0, (t_begin + nxt * step - pc()) // 1_000_000)
                poll(timeout)
            else:
                time.sleep(max(0, t_begin + nxt * step - pc()) / 1e9)
                continue
            t2 = pc()
            while pending:
                c = peek()
                if c <= 0:
                    break
                j = pending.pop(c)
                free.append(slot_of[j])
                completed(c)  # raises nbd.Error if the request failed
                done[j] = t2
                finished += 1
                if report is not None:
                    report(j, ops[j], offsets[j], t2 - start[j])
    except nbd.Error as e:
        raise _failed(j, ops[j], len(rbufs[0]), offsets[j], e) from None


# --- rendering ---------------------------------------------------------------------------

def histogram(lat_ns, per_octave):
    """Log-scaled buckets: ``[(lo_ns, hi_ns, count), ...]`` with ``lo <= latency < hi``,
    ``per_octave`` buckets per power of two, from the fastest to the slowest non-empty one."""
    lat = np.maximum(np.asarray(lat_ns, dtype=np.int64), 1)
    if lat.size == 0:
        return []
    kmin = math.floor(math.log2(int(lat.min())) * per_octave) - 1
    kmax = math.floor(math.log2(int(lat.max())) * per_octave) + 2
    edges = np.unique(np.ceil(2.0 ** (np.arange(kmin, kmax + 1) / per_octave)).astype(np.int64))
    counts = np.bincount(np.searchsorted(edges, lat, side="right") - 1, minlength=edges.size - 1)
    nz = np.flatnonzero(counts)
    return [(int(edges[k]), int(edges[k + 1]), int(counts[k])) for k in range(nz[0], nz[-1] + 1)]


def format_ns(ns):
    """A latency the way ioping prints one: ``850 ns``, ``41.2 us``, ``1.23 ms``, ``2.5 s``."""
    ns = float(ns)
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if ns >= scale:
            v = ns / scale
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{ns:.0f} ns"


def format_rate(v):
    """24300.0 -> '24.3 k' (ioping's iops style)."""
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.3g}"


def format_bytes(n):
    """4096 -> '4 KiB', 1536 -> '1.5 KiB'."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.4g} {unit}"
    return f"{n} B"


def format_speed(bytes_per_s):
    """ioping's speed: 15.6 * 2**20 -> '15.6 MiB/s' (3 significant digits)."""
    v = float(bytes_per_s)
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if v >= 1 << shift:
            return f"{v / (1 << shift):.3g} {unit}/s"
    return f"{v:.3g} B/s"


def format_header(uri, export_size, options):
    o = options
    what = o.op if o.op != "mixed" else f"mixed ({o.read_share:.0%} reads)"
    extra = f", content {o.content}" if o.op != "read" else ""
    return (f"PROBE {uri} ({format_bytes(export_size)}): {what} {format_bytes(o.size)}, {o.pattern} offsets, "
            f"queue depth {o.queue_depth}{extra}, {o.warmup} warmup + {o.count} requests")


def format_request(index, op, offset, latency_ns, size_text, warmup):
    """One ioping-style line per request."""
    tail = " (warmup)" if index < warmup else ""
    return f"{size_text} {OP_NAMES[op]:5} request={index + 1} offset={offset} time={format_ns(latency_ns)}{tail}"


def _stats_line(s):
    return (f"min/avg/max/mdev = {format_ns(s.min)} / {format_ns(s.avg)} / "
            f"{format_ns(s.max)} / {format_ns(s.mdev)}")


def _pct_line(s):
    return ", ".join(f"{_pct_key(p)} = {format_ns(v)}" for p, v in s.percentiles.items())


def format_histogram(lat_ns, per_octave=TERMINAL_PER_OCTAVE, width=40):
    rows = histogram(lat_ns, per_octave)
    if not rows:
        return []
    total = sum(n for _, _, n in rows)
    top = max(n for _, _, n in rows)
    lines = []
    for lo, hi, n in rows:
        bar = "#" * (math.ceil(n * width / top) if n else 0)
        lines.append(f"  {format_ns(lo):>8} .. {format_ns(hi):>8} {n:>9} {100 * n / total:5.1f}% |{bar}")
    return lines


def format_summary(result):
    """The ioping-like summary with fio-like percentiles and a terminal histogram."""
    r, o = result, result.options
    reads = int(np.count_nonzero(r.ops == READ))
    kinds = f"({reads} reads, {r.requests - reads} writes)" if o.op == "mixed" else (
        "read" if o.op == "read" else "written")
    s = r.summary()
    lines = [
        f"--- {r.uri} ({format_bytes(r.export_size)}) probe statistics ---",
        f"{r.requests} requests completed in {format_ns(r.time_ns)}, {format_bytes(r.bytes)} {kinds}, "
        f"{format_rate(r.iops)} iops, {format_speed(r.mib_s * (1 << 20))}"
        + (" (interrupted)" if r.interrupted else ""),
        f"generated {r.generated} requests in {format_ns(r.generated_ns)}, "
        f"{format_bytes(r.generated * o.size)}, {format_rate(r.generated_iops)} iops, "
        f"{format_speed(r.generated_mib_s * (1 << 20))}",
        _stats_line(s),
        "percentiles: " + _pct_line(s),
    ]
    if o.op == "mixed":
        for op in (READ, WRITE):
            so = r.summary(op)
            if so.count:
                lines.append(f"{OP_NAMES[op]:5}: {so.count} requests, {_stats_line(so)}")
                lines.append(f"{OP_NAMES[op]:5}: {_pct_line(so)}")
    lines.append(f"latency histogram ({TERMINAL_PER_OCTAVE} buckets per power of two):")
    lines.extend(format_histogram(r.latency_ns))
    lines.append(f"seed {r.seed}" + ("" if o.seed is not None else " (drawn at random; --seed repeats the run)"))
    return "\n".join(lines)


def check_plot_path(path):
    """Fail before probing if the PNG cannot be written there."""
    parent = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(parent):
        raise ConfigError(f"--plot: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"--plot: directory {parent} is not writable")


#: The percentile curve's ticks: (percentile, label).  Its x axis is 1 / (1 - p) on a log
#: scale, so each further "nine" gets the same width and the tail is as wide as the middle.
_CURVE_TICKS = ((50.0, "50%"), (90.0, "90%"), (99.0, "99%"), (99.9, "99.9%"), (99.99, "99.99%"),
                (99.999, "99.999%"))


def _curve_x(p):
    return 1.0 / (1.0 - np.asarray(p, dtype=float) / 100.0)


def _us(ns):
    """format_ns with the micro sign, for the plot."""
    return format_ns(ns).replace(" us", " µs")


def plot_histogram(result, path):
    """Write the latency plot PNG (see ``latency_figure``)."""
    fig = latency_figure(result)
    try:
        fig.savefig(path, format="png")
    except OSError as e:
        raise ProbeError(f"cannot write {path}: {e.strerror or e}") from None


def latency_figure(result):
    """The latency plot: a histogram whose count axis is logarithmic (a bucket of one slow
    request stays visible beside thousands of fast ones), and beside it the percentile
    curve (latency at each percentile, one decade of width per nine, so the tail is as wide
    as the middle), in µs.  A matplotlib Figure on the Agg canvas, no pyplot state."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator
    except ImportError:
        raise ProbeError("--plot needs matplotlib (pip install 'uzram[plot]')") from None
    r, o = result, result.options
    lat_us = r.latency_ns / 1e3
    lo, hi = max(float(lat_us.min()), 1e-3), float(lat_us.max())
    bins = np.geomspace(lo, hi * 1.0001 if hi > lo else lo * 2, num=max(8, int(8 * math.log2(max(hi / lo, 2))) + 1))
    s = r.summary()
    marks = ((50.0, "-"), (95.0, "-."), (99.0, "--"), (99.9, ":"))
    us = FuncFormatter(lambda v, _: f"{v:g}")

    fig = Figure(figsize=(12, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax, cx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})

    # Left: the histogram, log count axis, so the tail's few requests stay visible.
    if o.op == "mixed":
        ax.hist([lat_us[r.ops == READ], lat_us[r.ops == WRITE]], bins=bins, stacked=True, label=["read", "write"],
                log=True)
    else:
        ax.hist(lat_us, bins=bins, color="tab:blue", log=True, label=o.op)
    for k, (p, style) in enumerate(marks):
        v = s.percentiles[p] / 1e3
        ax.axvline(v, color="tab:red", linestyle=style, linewidth=1)
        ax.annotate(f"{_pct_key(p)} {_us(s.percentiles[p])}", (v, 1), xycoords=("data", "axes fraction"),
                    xytext=(3, -12 - 12 * k), textcoords="offset points", fontsize=8, color="tab:red")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(us)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("latency (µs, log scale)")
    ax.set_ylabel("requests (log scale)")
    ax.set_ylim(bottom=0.7)
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}" if v >= 1 else ""))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("latency histogram", fontsize=10)

    # Right: latency by percentile; the last point is the slowest request.
    srt = np.sort(lat_us)
    n = srt.size
    pct = 100.0 * np.arange(n) / n        # each request at the share of requests faster than it
    cx.plot(_curve_x(pct), srt, color="tab:blue", drawstyle="steps-post", linewidth=1.2)
    for k, (p, style) in enumerate(marks):
        if _curve_x(p) <= _curve_x(pct[-1]):
            v = s.percentiles[p] / 1e3
            cx.plot([_curve_x(p)], [v], "o", color="tab:red", markersize=4)
            cx.annotate(f"{_pct_key(p)} {_us(s.percentiles[p])}", (_curve_x(p), v), xytext=(-4, 6),
                        textcoords="offset points", fontsize=8, color="tab:red", ha="right")
    cx.text(0.03, 0.96, f"max {_us(s.max)}, min {_us(s.min)}", transform=cx.transAxes, fontsize=8,
            color="tab:red", va="top")
    cx.set_xscale("log")
    cx.set_yscale("log")
    ticks = [(p, label) for p, label in _CURVE_TICKS if _curve_x(p) <= max(_curve_x(pct[-1]), 2.0)]
    cx.xaxis.set_major_locator(FixedLocator([_curve_x(p) for p, _ in ticks]))
    cx.xaxis.set_major_formatter(FuncFormatter(lambda v, i: ticks[i][1] if i is not None and i < len(ticks) else ""))
    cx.xaxis.set_minor_locator(NullLocator())
    cx.set_xlim(1.0, max(_curve_x(pct[-1]), 2.0) * 1.5)
    cx.set_ylim(top=hi * 1.3)
    cx.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    cx.yaxis.set_major_formatter(us)
    cx.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    cx.grid(True, which="major", linewidth=0.4, alpha=0.6)
    cx.set_xlabel("percentile (requests at or below the latency)")
    cx.set_ylabel("latency (µs, log scale)")
    cx.set_title("latency by percentile (the tail to the right)", fontsize=10)

    fig.suptitle(f"{o.op} {format_bytes(o.size)}, {o.pattern} offsets, queue depth {o.queue_depth}, "
                 f"{r.requests} requests (+{o.warmup} warmup), seed {r.seed}\n{r.uri}", fontsize=9)
    fig.tight_layout()
    return fig


# --- comparing with fio ------------------------------------------------------------------

def run_fio(uri, count, size, export_size, fio="fio"):
    """fio's nbd engine, 4 KiB-style random reads at queue depth 1.

    Returns ``{"clat_p50_ns", "lat_p50_ns", "iops", "requests"}`` from fio's JSON (fio's
    percentiles come from its own histogram, accurate to about 1.6%).
    """
    exe = shutil.which(fio)
    if exe is None:
        raise ProbeError(f"{fio} not found: install fio (Debian: apt-get install fio)")
    with tempfile.TemporaryDirectory(prefix="uzram-fio-") as tmp:
        out = os.path.join(tmp, "fio.json")
        cmd = [exe, "--name=uzram-probe-compare", "--ioengine=nbd", f"--uri={uri}", "--rw=randread",
               f"--bs={size}", "--iodepth=1", f"--number_ios={count}", f"--size={export_size // size * size}",
               "--norandommap", "--lat_percentiles=1", "--clat_percentiles=1",
               "--percentile_list=50:90:95:99:99.9:99.99", "--output-format=json", f"--output={out}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            why = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()[-1]
            raise ProbeError(f"fio failed: {why}")
        with open(out) as f:
            job = json.load(f)["jobs"][0]
    rd = job["read"]
    if job.get("error"):
        raise ProbeError(f"fio failed: error {job['error']}")
    return {
        "clat_p50_ns": int(rd["clat_ns"]["percentile"]["50.000000"]),
        "lat_p50_ns": int(rd["lat_ns"]["percentile"]["50.000000"]),
        "iops": float(rd["iops"]),
        "requests": int(rd["total_ios"]),
    }


def compare_with_fio(uri, count=10000, size=4096, rounds=3, warmup=100, fio="fio"):
    """Random reads at queue depth 1 from probe and from fio's nbd engine, alternately.

    Each of ``rounds`` rounds runs both (the order flips every round, so slow drift on a
    shared machine hits both alike); the figures are the medians over rounds:

    * ``probe_p50_ns`` / ``fio_p50_ns``: total latency p50 (probe's ``latency``, fio's
      ``lat``: submission to completion), and ``ratio`` = probe / fio;
    * ``probe_clat_p50_ns`` / ``fio_clat_p50_ns``: completion latency p50 (from the
      moment the request was submitted), and ``clat_ratio``.

    ``per_round`` holds every round's figures.
    """
    if rounds < 1:
        raise ConfigError(f"--rounds: {rounds} is below the minimum 1")
    options = ProbeOptions(op="read", size=size, count=count, warmup=warmup, pattern="random", queue_depth=1)
    h = connect(uri)
    try:
        export_size = h.get_size()
    finally:
        disconnect(h)
    per_round = []
    for k in range(rounds):
        figures = {}
        for tool in (("probe", "fio") if k % 2 == 0 else ("fio", "probe")):
            if tool == "probe":
                res = run_probe(uri, options)
                s, c = res.summary(), LatencySummary.of(res.clat_ns)
                figures.update(probe_p50_ns=s.percentiles[50.0], probe_clat_p50_ns=c.percentiles[50.0],
                               probe_iops=res.wall_iops)
            else:
                f = run_fio(uri, count, size, export_size, fio=fio)
                figures.update(fio_p50_ns=f["lat_p50_ns"], fio_clat_p50_ns=f["clat_p50_ns"], fio_iops=f["iops"])
        per_round.append(figures)

    def med(key):
        return float(np.median([r[key] for r in per_round]))

    out = {"version": schema.PROBE_COMPARE, "uri": uri, "count": count, "size": size, "rounds": rounds}
    for key in ("probe_p50_ns", "fio_p50_ns", "probe_clat_p50_ns", "fio_clat_p50_ns", "probe_iops", "fio_iops"):
        out[key] = med(key)
    out["ratio"] = out["probe_p50_ns"] / out["fio_p50_ns"]
    out["clat_ratio"] = out["probe_clat_p50_ns"] / out["fio_clat_p50_ns"]
    out["per_round"] = per_round
    return out


def format_comparison(c):
    lines = [f"probe vs fio (nbd engine): random {format_bytes(c['size'])} reads, queue depth 1, "
             f"{c['count']} requests x {c['rounds']} rounds, medians",
             f"  lat  p50: probe {format_ns(c['probe_p50_ns'])}, fio {format_ns(c['fio_p50_ns'])}, "
             f"ratio {c['ratio']:.3f}",
             f"  clat p50: probe {format_ns(c['probe_clat_p50_ns'])}, fio {format_ns(c['fio_clat_p50_ns'])}, "
             f"ratio {c['clat_ratio']:.3f}",
             f"  iops:     probe {format_rate(c['probe_iops'])}, fio {format_rate(c['fio_iops'])}"]
    for k, r in enumerate(c["per_round"]):
        lines.append(f"  round {k + 1}: lat p50 probe {format_ns(r['probe_p50_ns'])} fio {format_ns(r['fio_p50_ns'])}; "
                     f"clat p50 probe {format_ns(r['probe_clat_p50_ns'])} fio {format_ns(r['fio_clat_p50_ns'])}")
    return "\n".join(lines)
