"""Started targets: uzram (uzram.nbd.server.Server), nbdkit with another plugin
(uzram.nbd.server.Nbdkit), a kernel zram device of our own; and the memory figures of
their processes.
"""

import os
import re
import tempfile
import time

from uzram.nbd.server import DEFAULT_THREADS, Nbdkit, Server, ServerError, nbdkit_binary
from .common import ZRAM_CONTROL, BenchError, first_line


BARE_PLUGIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bare_plugin.py")


def proc_status(pid, *keys):
    """Fields of /proc/PID/status in bytes (``VmRSS``, ``RssShmem``...); 0 for a missing one."""
    out = dict.fromkeys(keys, 0)
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in out:
                out[key] = int(value.split()[0]) * 1024
    return out


def wait_drained(server, timeout):
    """Wait until the kcompressd of ``server`` (a uzram.nbd.server.Server) has drained:
    nothing pending, in flight or queued.  Returns (seconds waited, the last Stats);
    BenchError after ``timeout`` seconds."""
    t0 = time.monotonic()
    while True:
        s = server.stats()
        if s.pending_pages == 0 and s.batches_in_flight == 0 and s.batches_queued == 0:
            return time.monotonic() - t0, s
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"kcompressd did not drain within {timeout:.0f} s ({s.pending_pages} pages pending)")
        time.sleep(0.002)


def vm_rss(pid):
    """VmRSS of ``pid`` in bytes."""
    return proc_status(pid, "VmRSS")["VmRSS"]


def private_rss(pid):
    """Resident memory of ``pid`` that is its own: VmRSS less shared memory (RssShmem)."""
    st = proc_status(pid, "VmRSS", "RssShmem")
    return st["VmRSS"] - st["RssShmem"]


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
            why = first_line(e) if isinstance(e, ServerError) else "nbdkit exited during start-up"
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
        return wait_drained(self.server, timeout)[0]

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
