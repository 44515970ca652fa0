"""Starting and stopping an nbdkit process that serves a uzram device.

nbdkit embeds Debian's /usr/bin/python3.  Started from a process whose PATH (or PYTHONHOME,
PYTHONPATH) points at another Python, the embedded interpreter loaded that Python's
standard library; so nbdkit always gets a clean environment built here.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from . import control, rundir
from uzram.core.config import PLUGIN_KEYS, default_runtime_dir
from uzram.core.errors import UzramError
from uzram.core.stats import Stats
from .tls import psk_users

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))     # the uzram package
REPO = os.path.dirname(PACKAGE)         # a checkout's root (or site-packages, when installed)
#: The script nbdkit loads (uzram plugin-path prints it); $UZRAM_PLUGIN overrides it.
PLUGIN = os.environ.get("UZRAM_PLUGIN") or os.path.join(PACKAGE, "nbd", "nbdkit_plugin.py")
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: nbdkit threads per connection.  The plugin's thread model (SERIALIZE_REQUESTS) serves a
#: connection's requests one at a time on its own thread whatever this says; the bare
#: plugin the bench compares with is PARALLEL and needs it (GIL hand-overs between 16
#: worker threads made copies slower than one thread).
DEFAULT_THREADS = 1

#: Environment of an nbdkit that locks itself (mlock=1: uzram swap on, uzram serve --swap),
#: for a small footprint (see "Footprint" in the README): one malloc arena (glibc reserves
#: 64 MiB of address space for each thread's arena, and every reservation counts in VmLck
#: once the process is locked), and OpenBLAS, which numpy loads, with one thread and one
#: 32 MiB buffer instead of one of each per CPU.
LOCKED_ENV = {"MALLOC_ARENA_MAX": "1", "OPENBLAS_NUM_THREADS": "1"}


class ServerError(UzramError):
    """nbdkit could not be started or stopped."""


def venv_dir():
    """The virtual environment uzram runs from (the plugin loads uzram from it)."""
    if os.environ.get("UZRAM_VENV"):
        return os.environ["UZRAM_VENV"]
    if sys.prefix != sys.base_prefix:
        return sys.prefix
    return os.path.join(REPO, ".venv")


def clean_env(**extra):
    """The environment nbdkit runs in: no PYTHONHOME/PYTHONPATH, a system PATH."""
    env = {"PATH": CLEAN_PATH, "LANG": os.environ.get("LANG", "C.UTF-8"), "UZRAM_VENV": venv_dir()}
    for key in ("HOME", "XDG_RUNTIME_DIR", "TMPDIR"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update({k: str(v) for k, v in extra.items()})
    return env


def nbdkit_binary():
    path = shutil.which("nbdkit", path=CLEAN_PATH)
    if path is None:
        raise ServerError("nbdkit is not installed (apt-get install nbdkit nbdkit-plugin-python)")
    return path


def plugin_keys(**keys):
    """``key=value`` arguments for the plugin; None values are left out.  Unknown keys raise."""
    out = []
    for key, value in keys.items():
        if value is None:
            continue
        if key not in PLUGIN_KEYS:
            raise ServerError(f"unknown key {key!r}")
        if isinstance(value, (tuple, list)):
            value = ",".join(value)         # (the "algorithms" kind)
        out.append(f"{key}={value}")
    return out


def nbdkit_argv(keys, *, socket_path=None, tcp_port=None, host="127.0.0.1", swap=False,
                foreground=True, single=False, exit_with_parent=False, pidfile=None, verbose=False,
                threads=DEFAULT_THREADS, tls_psk=None):
    """The nbdkit command line that serves uzram with ``keys`` (a dict); ``tls_psk`` (a PSK
    file) makes nbdkit require TLS (see uzram/nbd/tls.py)."""
    argv = [nbdkit_binary()]
    if threads:
        argv += ["--threads", str(threads)]
    if single:
        argv.append("-s")
    elif foreground:
        argv.append("-f")
    if exit_with_parent:
        argv.append("--exit-with-parent")
    if swap:
        argv.append("--swap")
    if verbose:
        argv.append("-v")
    if pidfile:
        argv += ["-P", pidfile]
    if tls_psk:
        argv += ["--tls=require", f"--tls-psk={os.path.abspath(tls_psk)}"]
    if socket_path:
        argv += ["-U", socket_path]
    elif tcp_port is not None:
        argv += ["-i", host, "-p", str(tcp_port)]
    argv += ["python", PLUGIN] + plugin_keys(**keys)
    return argv


def wait_serving(ready, alive, timeout, what, why=lambda: ""):
    """Poll ``ready()`` until it is true; ServerError when ``alive()`` turns false (``what``
    exited) or ``timeout`` seconds pass, naming ``why()`` (its last line of stderr)."""
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise ServerError(f"{what} exited: {why()}")
        if ready():
            return
        if time.monotonic() >= deadline:
            raise ServerError(f"{what} did not come up within {timeout:g} s: {why()}")
        time.sleep(0.02)


def uzram_serving(runtime_dir, socket_path, pid):
    """The uzram server ``pid`` listens (its socket is there) and has run after_fork (its
    control endpoint answers, as that pid: not another server's)."""
    if socket_path and not os.path.exists(socket_path):
        return False
    try:
        return control.query(runtime_dir, "ping", timeout=1).get("pid") == pid
    except control.ControlError:
        return False


class Nbdkit:
    """One nbdkit child process: ``argv`` started in a clean environment and a session of its
    own, waited for until ``ready()`` says it serves (default: its Unix socket accepts), and
    stopped (SIGTERM, then SIGKILL of its group after ``timeout``).  Every piece of code that
    starts nbdkit as a child starts it here: uzram's Server, the bench's other servers, the
    tests' ones; ``uzram swap on``, whose nbdkit must outlive it, waits with ``wait_serving``.

    ``stderr`` is a file to write to, or None for a private one whose last line goes into
    the error when nbdkit fails to start."""

    def __init__(self, argv, *, env=None, stderr=None, socket_path=None, ready=None, what="nbdkit"):
        self.argv = list(argv)
        self.env = env if env is not None else clean_env()
        self.stderr = stderr
        self.socket = socket_path
        self.ready = ready or (lambda: connectable(socket_path))
        self.what = what
        self.proc = None
        self._errlog = None

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout=30):
        self._errlog = self.stderr if self.stderr is not None else tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._errlog, start_new_session=True)
        try:
            wait_serving(self.ready, lambda: self.proc.poll() is None, timeout, self.what, self.stderr_line)
        except ServerError:
            self.stop()
            raise
        return self

    def stderr_line(self):
        """The last line nbdkit wrote to a private stderr."""
        f = self._errlog
        if f is not None and f is not self.stderr and hasattr(f, "seek"):
            try:
                f.seek(0)
                text = f.read().decode(errors="replace").strip()
                return text.splitlines()[-1] if text else "(no output)"
            except (OSError, ValueError):
                pass
        return "(see its stderr)"

    def stop(self, timeout=10):
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._errlog is not None and self._errlog is not self.stderr:
            self._errlog.close()
        self._errlog = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Server:
    """A uzram device served by a child nbdkit on a Unix socket (or TCP, when asked)."""

    def __init__(self, size="1G", *, algorithm=None, workers=None, mem_limit=None, max_pending=None,
                 batch_pages=None, name="uzram0", runtime_dir=None, socket_path=None, tcp_port=None,
                 host="127.0.0.1", swap=False, exit_with_parent=True, stderr=None, threads=DEFAULT_THREADS,
                 tls_psk=None, require_workers=True, **extra_keys):
        self.name = name
        self.runtime_dir = runtime_dir or default_runtime_dir(name)
        self.socket = None if tcp_port is not None else (socket_path or os.path.join(self.runtime_dir, "nbd.sock"))
        self.tcp_port = tcp_port
        self.host = host
        self.tls_psk = os.path.abspath(tls_psk) if tls_psk else None
        self.tls_user = psk_users(tls_psk)[0] if tls_psk else None
        self.keys = dict(size=size, algorithm=algorithm, workers=workers, mem_limit=mem_limit,
                         max_pending=max_pending, batch_pages=batch_pages, name=name,
                         runtime_dir=self.runtime_dir, **extra_keys)
        self.swap = swap
        if swap:
            # The plugin locks itself on fault (mlock=1) instead of nbdkit --swap, which
            # faults in and locks every mapping whole (nbdkit's 192 MiB of static buffers).
            self.keys["mlock"] = 1
        self.threads = threads
        self.require_workers = require_workers
        self.exit_with_parent = exit_with_parent
        self.stderr = stderr
        self.proc = None
        self._nbdkit = None
        self._sock_id = None             # (dev, inode) of the socket our nbdkit bound

    @property
    def uri(self):
        if self.tls_psk:
            if self.socket:
                return f"nbds+unix://{self.tls_user}@/?socket={self.socket}&tls-psk-file={self.tls_psk}"
            return f"nbds://{self.tls_user}@{_uri_host(self.host)}:{self.tcp_port}/?tls-psk-file={self.tls_psk}"
        if self.socket:
            return f"nbd+unix:///?socket={self.socket}"
        return f"nbd://{_uri_host(self.host)}:{self.tcp_port}/"

    def argv(self):
        return nbdkit_argv(self.keys, socket_path=self.socket, tcp_port=self.tcp_port, host=self.host,
                           exit_with_parent=self.exit_with_parent, threads=self.threads,
                           tls_psk=self.tls_psk)

    def start(self, timeout=30):
        control.ensure_private_dir(self.runtime_dir)
        rundir.refuse_if_held(self.name, self.runtime_dir)
        in_dir = self.socket and os.path.dirname(os.path.abspath(self.socket)) == os.path.abspath(self.runtime_dir)
        if self.socket and not in_dir and os.path.exists(self.socket):
            # (a stale socket in the runtime directory is the plugin's to remove, once it
            # holds the name's lock)
            if connectable(self.socket):
                raise ServerError(f"{self.socket}: a server is already listening there")
            os.unlink(self.socket)
        env = clean_env(**LOCKED_ENV) if self.swap else clean_env()
        self._nbdkit = Nbdkit(self.argv(), env=env, stderr=self.stderr, socket_path=self.socket,
                              ready=lambda: uzram_serving(self.runtime_dir, self.socket, self._nbdkit.pid),
                              what="nbdkit")
        self._nbdkit.start(timeout)
        self.proc = self._nbdkit.proc
        if self.socket:
            st = os.stat(self.socket)
            self._sock_id = (st.st_dev, st.st_ino)
        if self.require_workers:
            try:
                wait_workers_ready(self.runtime_dir, timeout)
            except ServerError:
                self.stop()
                raise
        return self

    def stats(self):
        return Stats.from_dict(control.query(self.runtime_dir, "stats"))

    def control(self, command):
        return control.query(self.runtime_dir, command)

    def worker_pids(self):
        """PIDs of the kcompressd workers running now."""
        return control.query(self.runtime_dir, "workers")["pids"]

    def wait(self):
        return self.proc.wait()

    def stop(self, timeout=10):
        nbdkit, self._nbdkit, self.proc = self._nbdkit, None, None
        if nbdkit is None:
            return
        nbdkit.stop(timeout)
        if self.socket and self._sock_id is not None:
            try:
                st = os.stat(self.socket)
                if (st.st_dev, st.st_ino) == self._sock_id:   # never another server's socket
                    os.unlink(self.socket)
            except OSError:
                pass
        self._sock_id = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _uri_host(host):
    return f"[{host}]" if ":" in host else host
def wait_workers_ready(runtime_dir, timeout=30):
    """Return once a kcompressd worker of the device is ready (at once for workers=0).
    Raises ServerError with the reason when none ever becomes ready: two starts failed
    while none ran (a bad python=, say), or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        st = control.query(runtime_dir, "stats")
        if not st.get("workers") or st.get("workers_alive"):
            return st
        failures, why = st.get("worker_start_failures", 0), st.get("worker_error")
        if failures >= 2:
            raise ServerError(f"no kcompressd worker became ready ({failures} failed starts): {why}")
        if time.monotonic() >= deadline:
            raise ServerError(f"no kcompressd worker became ready within {timeout:.0f} s"
                              + (f": {why}" if why else ""))
        time.sleep(0.05)


def connectable(path):
    """True when something listens on the Unix socket ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()
