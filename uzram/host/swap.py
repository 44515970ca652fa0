"""Swap on a uzram device on the host: ``uzram swap on``, ``off`` and ``status``.

``on`` takes these steps, recording each in a state file (``/run/uzram/swap/NAME.json``)
*before* the next begins, so that ``off`` -- and a failed ``on`` -- undo exactly what was done,
in reverse order:

1. the runtime directory ``/run/uzram/NAME`` (mode 0700);
2. nbdkit serving uzram on a Unix socket there, detached from the caller, with ``--swap``
   (mlockall), oom_score_adj -1000 and nice -5;
3. a block device: the kernel's NBD client (``nbd-client``) where ``/dev/nbd0`` exists,
   otherwise ``nbdfuse`` (exposing the export as the file ``mnt/nbd``; detached, oom_score_adj
   -1000, nice -5, and locked in memory through a small LD_PRELOAD shim that calls
   ``mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT)`` when a C compiler is there to build it) plus
   a loop device over that file (``losetup --direct-io=on``, so pages are not cached twice);
4. ``mkswap`` and ``swapon [--priority N] [--discard]``.

Undo stops at the first step that fails and keeps the rest in the state file: when
``swapoff`` fails (the pages on the device do not fit in free memory) nothing else may go,
because the device still holds swapped-out pages.  Run ``off`` again once memory is free.

Deadlock under memory pressure: every process on the I/O path must not need swap itself.
nbdkit is locked (``--swap``), kcompressd workers lock themselves, nbdfuse is locked by the
shim.  Without a compiler nbdfuse runs unlocked -- ``status`` then warns -- and under heavy
pressure its own pages could be swapped out onto the device it serves.
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time

from uzram.nbd import control, rundir
from uzram.core.config import default_runtime_dir
from uzram.core.errors import ConfigError, UzramError
from uzram.nbd.server import (CLEAN_PATH, LOCKED_ENV, ServerError, clean_env, nbdkit_argv, uzram_serving,
                              wait_serving, wait_workers_ready)

STATE_DIR = "/run/uzram/swap"
DAEMON_NICE = -5
DAEMON_OOM_SCORE_ADJ = -1000

#: nbdfuse's environment: one malloc arena (see uzram.server.LOCKED_ENV)
NBDFUSE_ENV = {"MALLOC_ARENA_MAX": "1"}
#: nbdfuse's threads run C only (libfuse, libnbd): 512 KiB stacks
NBDFUSE_STACK_KIB = 512

#: tool -> Debian package that has it
TOOLS = {
    "nbdkit": "nbdkit nbdkit-plugin-python",
    "nbdfuse": "libnbd-bin",
    "fusermount3": "fuse3",
    "losetup": "mount",
    "mkswap": "util-linux",
    "swapon": "mount",
    "swapoff": "mount",
    "nbd-client": "nbd-client",
}

MLOCK_SHIM_C = r"""
#include <sys/mman.h>
#ifndef MCL_ONFAULT
#define MCL_ONFAULT 4
#endif
__attribute__((constructor)) static void uzram_mlockall(void)
{
    if (mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0)
        mlockall(MCL_CURRENT | MCL_FUTURE);
}
"""


class SwapError(UzramError):
    """A swap step failed, or swap cannot be turned on or off as asked."""


class NotRootError(SwapError):
    """Swap needs root."""


class SwapBusyError(SwapError):
    """The name is already in use."""


class NotOnError(SwapError):
    """No uzram swap by that name is on."""


class MissingToolError(SwapError):
    """A program uzram swap runs is not installed."""


class SwapOffError(SwapError):
    """swapoff failed; everything stays as it was."""


# --- small helpers -----------------------------------------------------------------------------

def require_root(what="uzram swap"):
    if os.geteuid() != 0:
        raise NotRootError(f"{what} needs root (swapon, loop devices and FUSE mounts are privileged)")


def tool(name):
    path = shutil.which(name, path=CLEAN_PATH)
    if path is None:
        raise MissingToolError(f"{name} is not installed (apt-get install {TOOLS.get(name, name)})")
    return path


def require_tools(names):
    missing = [n for n in names if shutil.which(n, path=CLEAN_PATH) is None]
    if missing:
        packages = sorted({p for n in missing for p in TOOLS.get(n, n).split()})
        raise MissingToolError(f"missing {', '.join(missing)} (apt-get install {' '.join(packages)})")


def run_tool(argv, what=None, timeout=60):
    """Run a tool; on failure raise SwapError with its last line of output."""
    argv = [tool(argv[0])] + list(argv[1:])
    try:
        p = subprocess.run(argv, env=clean_env(), stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SwapError(f"{what or argv[0]}: timed out after {timeout} s") from None
    if p.returncode != 0:
        text = (p.stderr.strip() or p.stdout.strip() or f"exit status {p.returncode}").splitlines()[-1]
        raise SwapError(f"{what or ' '.join(os.path.basename(a) for a in argv[:2])}: {text}")
    return p.stdout


def _stat_fields(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_start_time(pid):
    """The process's start time (clock ticks since boot), or None when it is gone or a zombie."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(pid, start_time):
    """``pid`` is still the very process we started (not a recycled pid) and has not exited."""
    return pid is not None and proc_start_time(pid) == start_time


def present(pid, start_time):
    """``pid`` is still in the process table, running or a zombie not yet reaped: what ps and
    pgrep still show."""
    fields = _stat_fields(pid) if pid is not None else None
    return fields is not None and int(fields[19]) == start_time


def children(pid):
    """(pid, start_time) of the processes whose parent is ``pid`` (kcompressd workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(entry)
            if fields is not None and fields[1] == str(pid) and fields[0] not in ("Z", "X"):
                out.append((int(entry), int(fields[19])))
    return out


def wait_gone(pid, start_time, timeout=10):
    """Wait until ``pid`` has left the process table (exited and been reaped); True if it did."""
    return _wait(lambda: not present(pid, start_time), timeout)


def stop_process(pid, start_time, timeout=10):
    """SIGTERM, then SIGKILL after ``timeout`` s; only if ``pid`` is still the process we started.
    Returns once the process has left the process table, so that nothing of it shows in ps
    afterwards (it is init's child, and init reaps it)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        if not alive(pid, start_time):
            break
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        if _wait(lambda: not alive(pid, start_time), wait):
            break
    else:
        raise SwapError(f"process {pid} did not exit after SIGKILL")
    if not wait_gone(pid, start_time):
        raise SwapError(f"process {pid} exited but was not reaped within 10 s (a zombie of {_parent(pid)})")


def _parent(pid):
    fields = _stat_fields(pid)
    return f"pid {fields[1]}" if fields else "its parent"


def spawn_daemon(argv, log_path, env, stack_kib=2048):
    """Start ``argv`` detached (its own session, reparented to init) with oom_score_adj -1000
    (best effort: ``oom_score_adj(pid)`` says whether the kernel took it) and nice -5; stdout to
    /dev/null, stderr appended to ``log_path``.  Returns (pid, start_time)."""
    # ulimit -s: thread stacks follow RLIMIT_STACK, and every locked thread's stack counts in
    # VmLck whole (8 MiB by default); 2 MiB is plenty for nbdkit's Python request path.
    script = (f'( (echo {DAEMON_OOM_SCORE_ADJ} > /proc/self/oom_score_adj) 2>/dev/null; ulimit -s {int(stack_kib)}; '
              f'exec nice -n {DAEMON_NICE} "$@" ) '
              '</dev/null >/dev/null 2>>"$0" & echo $!')
    p = subprocess.run(["/bin/sh", "-c", script, log_path] + list(argv), env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, start_new_session=True, timeout=30)
    if p.returncode != 0 or not p.stdout.strip().isdigit():
        raise SwapError(f"could not start {os.path.basename(argv[0])}: {p.stderr.strip() or p.stdout.strip()}")
    pid = int(p.stdout.strip())
    deadline = time.monotonic() + 5
    start = proc_start_time(pid)
    while start is None and time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.01)
        start = proc_start_time(pid)
    if start is None:
        raise SwapError(f"{os.path.basename(argv[0])} exited at once: {log_tail(log_path)}")
    return pid, start


def oom_score_adj(pid):
    try:
        with open(f"/proc/{pid}/oom_score_adj") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _check_protected(state, what, pid):
    if oom_score_adj(pid) != DAEMON_OOM_SCORE_ADJ:
        state.data["warnings"].append(f"{what}: the kernel refused oom_score_adj {DAEMON_OOM_SCORE_ADJ}; "
                                      "the OOM killer may pick it")


def log_tail(path, lines=3):
    try:
        with open(path, errors="replace") as f:
            text = f.read().strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) if text else "(no output)"


def proc_swaps():
    """Active swap areas: {filename: {"type", "size", "used", "priority"}} (sizes in bytes)."""
    out = {}
    with open("/proc/swaps") as f:
        for line in f.read().splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 5:
                out[parts[0]] = {"type": parts[1], "size": int(parts[2]) * 1024,
                                 "used": int(parts[3]) * 1024, "priority": int(parts[4])}
    return out


def mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def loop_backing_file(device):
    name = os.path.basename(device)
    try:
        with open(f"/sys/block/{name}/loop/backing_file") as f:
            return f.read().strip()
    except OSError:
        return None


def vm_locked_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmLck:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_memory(pid):
    """{"pid", "name", "rss", "vmlck", "locked"} of a process, in bytes: VmRSS and VmLck from
    /proc/PID/status, and Locked (the resident pages of locked mappings, shared ones divided
    among their users) from /proc/PID/smaps_rollup; None when it is gone.  VmLck counts the
    whole size of every locked mapping, also of mappings locked on fault that hold no memory."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        with open(f"/proc/{pid}/smaps_rollup") as f:
            rollup = dict(line.split(":", 1) for line in f.read().splitlines()[1:] if ":" in line)
    except OSError:
        return None
    kib = lambda table, key: int(table.get(key, "0 kB").split()[0]) << 10  # noqa: E731
    name = status.get("Name", "?").strip()
    if name.startswith("uzram-kcompres"):
        name = "kcompressd"             # its 15-byte comm is uzram-kcompress
    return {"pid": pid, "name": name, "rss": kib(status, "VmRSS"),
            "vmlck": kib(status, "VmLck"), "locked": kib(rollup, "Locked")}


def footprint(state):
    """The memory of the swap path's processes: nbdkit, its kcompressd workers and nbdfuse.
    Returns {"processes": [process_memory...], "rss", "vmlck", "locked"} (sums, bytes)."""
    pids = []
    server, fuse = state.step("server"), state.step("fuse")
    if server and alive(server["pid"], server["start_time"]):
        pids.append(server["pid"])
        pids += [pid for pid, _ in children(server["pid"])]
    if fuse and alive(fuse["pid"], fuse["start_time"]):
        pids.append(fuse["pid"])
    procs = [m for m in map(process_memory, pids) if m is not None]
    out = {"processes": procs}
    for key in ("rss", "vmlck", "locked"):
        out[key] = sum(p[key] for p in procs)
    return out


def _wait(condition, timeout, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def build_mlock_shim(directory):
    """Compile the mlockall LD_PRELOAD shim into ``directory``; None when no C compiler is there."""
    cc = shutil.which("cc", path=CLEAN_PATH) or shutil.which("gcc", path=CLEAN_PATH)
    if cc is None:
        return None
    src, lib = os.path.join(directory, "mlockall.c"), os.path.join(directory, "mlockall.so")
    with open(src, "w") as f:
        f.write(MLOCK_SHIM_C)
    p = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", lib, src], env=clean_env(),
                       capture_output=True, text=True)
    os.unlink(src)
    return lib if p.returncode == 0 else None


# --- the state file ------------------------------------------------------------------------------

class State:
    """The steps ``on`` took, in order; written atomically after every change."""

    def __init__(self, path, data):
        self.path = path
        self.data = data

    @property
    def steps(self):
        return self.data["steps"]

    @classmethod
    def claim(cls, state_dir, name, config):
        """Create the state file for ``name`` (exclusively: a second ``on`` is refused)."""
        path = os.path.join(state_dir, f"{name}.json")
        for _ in range(3):
            try:
                control.ensure_private_dir(state_dir)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:
                raise SwapBusyError(f"{name} is already on (state in {path}); "
                                    f"run 'uzram swap off --name {name}' first") from None
            except FileNotFoundError:
                continue    # an 'off' of the last other swap removed the emptied directory
        else:
            raise SwapError(f"{state_dir}: removed again and again while creating {path}")
        os.close(fd)
        state = cls(path, {"version": 1, "name": name, "started": time.time(),
                           "config": dataclasses.asdict(config), "warnings": [], "steps": []})
        state.save()
        return state

    @classmethod
    def load(cls, state_dir, name):
        path = os.path.join(state_dir, f"{name}.json")
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise NotOnError(f"no uzram swap named {name!r} is on (no {path})") from None
        except (OSError, ValueError) as e:
            raise SwapError(f"{path}: unreadable state: {e}") from None
        return cls(path, data)

    def save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def push(self, step):
        self.steps.append(step)
        self.save()
        return step

    def step(self, kind):
        return next((s for s in self.steps if s["step"] == kind), None)

    def remove(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


# --- turning swap on -----------------------------------------------------------------------------

def choose_block(block="auto"):
    """'nbd' where the kernel has an NBD device and nbd-client is installed, else 'loop'."""
    if block == "auto":
        has_nbd = os.path.exists("/dev/nbd0") and shutil.which("nbd-client", path=CLEAN_PATH)
        return "nbd" if has_nbd else "loop"
    if block not in ("nbd", "loop"):
        raise ConfigError(f"block: {block!r} is not auto, nbd or loop")
    return block


def swap_on(config, *, state_dir=STATE_DIR, block="auto", plugin="uzram", timeout=60):
    """Turn on swap on a new uzram device; returns the state dict.  On failure every step taken
    is undone before the error is raised.  ``plugin='memory'`` serves nbdkit's memory plugin
    instead (for comparisons) through the same path."""
    require_root()
    config.validate()
    block = choose_block(block)
    needed = ["nbdkit", "mkswap", "swapon", "swapoff"]
    needed += ["nbd-client"] if block == "nbd" else ["nbdfuse", "fusermount3", "losetup"]
    require_tools(needed)
    state = State.claim(state_dir, config.name, config)
    try:
        _swap_on_steps(state, config, block, plugin, timeout)
    except BaseException as e:
        try:
            undo(state)
            state.remove()
        except SwapError as undo_error:
            raise SwapError(f"{e}; undoing failed too: {undo_error} (state kept in {state.path})") from e
        raise
    return state.data


def _swap_on_steps(state, config, block, plugin, timeout):
    rt = default_runtime_dir(config.name)
    existed = os.path.isdir(rt)
    control.ensure_private_dir(rt)
    # One owner per name: a server that holds the name's lock (uzram serve, another swap,
    # plain nbdkit) is refused with its pid, whatever its control socket is doing.
    pid = rundir.holder(rt)
    if pid is not None:
        raise SwapBusyError(rundir.busy_message(config.name, rt, pid))
    state.push({"step": "dir", "path": rt, "existed": existed})
    sock = os.path.join(rt, "nbd.sock")
    if plugin != "uzram" and os.path.exists(sock):
        os.unlink(sock)     # (the uzram plugin removes stale sockets itself, holding the lock)

    # 2. the server
    if plugin == "uzram":
        keys = config.plugin_keys(runtime_dir=rt, mlock=1)
        argv = nbdkit_argv(keys, socket_path=sock, foreground=True)
        env = clean_env(**LOCKED_ENV)
    elif plugin == "memory":
        argv = [tool("nbdkit"), "-f", "--swap", "-U", sock, "memory", str(config.size)]
        env = clean_env()
    else:
        raise ConfigError(f"plugin: {plugin!r} is not uzram or memory")
    log = os.path.join(rt, "nbdkit.log")
    pid, start = spawn_daemon(argv, log, env)
    state.push({"step": "server", "pid": pid, "start_time": start, "socket": sock, "runtime_dir": rt,
                "plugin": plugin, "log": log})
    _check_protected(state, "nbdkit", pid)

    def server_ready():
        if not os.path.exists(sock):
            return False
        return plugin != "uzram" or uzram_serving(rt, sock, pid)

    try:
        wait_serving(server_ready, lambda: alive(pid, start), timeout, "nbdkit", lambda: log_tail(log))
    except ServerError as e:
        raise SwapError(str(e)) from None
    if plugin == "uzram":
        try:
            wait_workers_ready(rt, timeout)
        except ServerError as e:
            raise SwapError(str(e)) from None

    # 3. the block device
    if block == "nbd":
        device = _nbd_device(state, sock)
    else:
        device = _loop_device(state, config, rt, sock, timeout)

    # 4. mkswap, swapon
    run_tool(["mkswap", device], "mkswap")
    argv = ["swapon", "--priority", str(config.priority)]
    if config.discard:
        argv.append("--discard")
    run_tool(argv + [device], "swapon")
    state.push({"step": "swap", "device": device})


def _nbd_device(state, sock):
    """Connect the kernel's NBD client (untested on hosts without the nbd module)."""
    for n in range(64):
        dev = f"/dev/nbd{n}"
        if not os.path.exists(dev):
            break
        if os.path.exists(f"/sys/block/nbd{n}/pid"):
            continue  # connected already
        run_tool(["nbd-client", "-unix", sock, dev, "-b", "4096", "-swap"], "nbd-client")
        state.push({"step": "nbd", "device": dev})
        return dev
    raise SwapBusyError("no free /dev/nbdN device")


def _loop_device(state, config, rt, sock, timeout):
    mnt = os.path.join(rt, "mnt")
    os.makedirs(mnt, mode=0o700, exist_ok=True)
    state.push({"step": "dir", "path": mnt, "existed": False})
    shim = build_mlock_shim(rt)
    log, pidfile = os.path.join(rt, "nbdfuse.log"), os.path.join(rt, "nbdfuse.pid")
    argv = [tool("nbdfuse"), "-P", pidfile, mnt, "--unix", sock]
    if shim:
        argv = ["env", f"LD_PRELOAD={shim}"] + argv
    else:
        state.data["warnings"].append("nbdfuse is not locked in memory (no C compiler to build the "
                                      "mlockall shim: apt-get install gcc); under heavy memory pressure "
                                      "it could be swapped out onto its own device")
    pid, start = spawn_daemon(argv, log, clean_env(**NBDFUSE_ENV), stack_kib=NBDFUSE_STACK_KIB)
    file = os.path.join(mnt, "nbd")
    state.push({"step": "fuse", "pid": pid, "start_time": start, "mountpoint": mnt, "file": file, "log": log})
    _check_protected(state, "nbdfuse", pid)

    def fuse_ready():
        if not alive(pid, start):
            raise SwapError(f"nbdfuse exited: {log_tail(log)}")
        return os.path.exists(pidfile) and mounted(mnt)

    if not _wait(fuse_ready, timeout):
        raise SwapError(f"nbdfuse did not come up within {timeout} s: {log_tail(log)}")
    state.step("fuse")["locked_kib"] = vm_locked_kib(pid)
    state.save()
    device = run_tool(["losetup", "--find", "--show", "--direct-io=on", file], "losetup").strip()
    state.push({"step": "loop", "device": device, "file": file})
    return device


# --- turning swap off ----------------------------------------------------------------------------

def undo(state):
    """Undo the recorded steps in reverse order, saving after each.  Stops at the first failure
    (raising SwapError) and leaves the remaining steps in the state file."""
    while state.steps:
        step = state.steps[-1]
        UNDO[step["step"]](step)
        state.steps.pop()
        state.save()


def _undo_swap(step):
    dev = step["device"]
    if dev not in proc_swaps():
        return
    try:
        run_tool(["swapoff", dev], timeout=3600)
    except SwapError as e:
        raise SwapOffError(f"swapoff {dev} failed ({e.args[0].partition(': ')[2]}); the swap stays on "
                           "and nothing was changed -- the pages on it probably do not fit in free "
                           "memory: free some and run 'uzram swap off' again") from None


def _undo_loop(step):
    dev = step["device"]
    backing = loop_backing_file(dev)
    if backing is None or os.path.realpath(backing) != os.path.realpath(step["file"]):
        return  # detached already (a loop device someone else set up since is not ours)
    run_tool(["losetup", "--detach", dev])
    _wait(lambda: loop_backing_file(dev) is None, 5)


def _undo_nbd(step):
    dev = step["device"]
    if os.path.exists(f"/sys/block/{os.path.basename(dev)}/pid"):
        run_tool(["nbd-client", "-d", dev])


def _undo_fuse(step):
    mnt = step["mountpoint"]
    if mounted(mnt):
        last = None
        for _ in range(50):  # the loop device may hold the file a moment after its detach
            try:
                run_tool(["fusermount3", "-u", mnt])
                break
            except SwapError as e:
                last = e
                if not mounted(mnt):
                    break
                time.sleep(0.1)
        else:
            raise SwapError(f"cannot unmount {mnt}: {last}")
    if not _wait(lambda: not alive(step["pid"], step["start_time"]), 5):
        stop_process(step["pid"], step["start_time"])
    elif not wait_gone(step["pid"], step["start_time"]):
        raise SwapError(f"nbdfuse (pid {step['pid']}) exited but was not reaped within 10 s")


def _undo_server(step):
    workers = children(step["pid"]) if alive(step["pid"], step["start_time"]) else []
    stop_process(step["pid"], step["start_time"])
    # kcompressd workers die with the dispatcher (PR_SET_PDEATHSIG): wait until they are gone too
    for pid, start in workers:
        if not wait_gone(pid, start, 5):
            stop_process(pid, start, timeout=1)
    try:
        os.unlink(step["socket"])
    except OSError:
        pass


def _undo_dir(step):
    path = step["path"]
    if not os.path.isdir(path):
        return
    if mounted(path):
        raise SwapError(f"{path} is still a mount point")
    if step.get("existed"):
        for leaf in OUR_FILES:
            try:
                os.unlink(os.path.join(path, leaf))
            except OSError:
                pass
        return
    with open("/proc/self/mountinfo") as f:
        real = os.path.realpath(path) + "/"
        if any(line.split()[4].startswith(real) for line in f):
            raise SwapError(f"something is still mounted under {path}")
    shutil.rmtree(path)


#: files ``on`` leaves in a runtime directory that existed before
OUR_FILES = ("nbdkit.log", "nbdfuse.log", "nbdfuse.pid", "mlockall.so") + rundir.SOCKETS + (rundir.LOCK_NAME,)

UNDO = {"swap": _undo_swap, "loop": _undo_loop, "nbd": _undo_nbd, "fuse": _undo_fuse,
        "server": _undo_server, "dir": _undo_dir}


def swap_off(name, *, state_dir=STATE_DIR):
    """Turn off the swap ``name`` and undo every step of ``on``."""
    require_root()
    state = State.load(state_dir, name)
    undo(state)
    state.remove()
    try:
        os.rmdir(state_dir)     # the last swap's state directory goes with it
    except OSError:
        pass                    # another swap's state is in it


# --- status --------------------------------------------------------------------------------------

def names(state_dir=STATE_DIR):
    try:
        return sorted(f[:-5] for f in os.listdir(state_dir) if f.endswith(".json"))
    except FileNotFoundError:
        return []


def swap_mounts(state_dir=STATE_DIR):
    """{runtime directory of a uzram swap's server: its swap device}, for those in
    /proc/swaps (``uzram list``'s MOUNTPOINT).  State files the caller cannot read (they
    are root's) count as none."""
    out = {}
    try:
        swaps = proc_swaps()
    except OSError:
        return out
    for n in names(state_dir):
        try:
            state = State.load(state_dir, n)
        except (OSError, UzramError):
            continue
        server, swap = state.step("server"), state.step("swap")
        if server and swap and swap.get("device") in swaps:
            out[os.path.realpath(server["runtime_dir"])] = swap["device"]
    return out


def swap_status(name=None, *, state_dir=STATE_DIR):
    """A list of dicts, one per uzram swap (or only ``name``): device, /proc/swaps figures,
    processes, warnings and uzram's statistics (None when the control socket does not answer)."""
    require_root()
    out = []
    swaps = proc_swaps()
    for n in ([name] if name else names(state_dir)):
        state = State.load(state_dir, n)
        server = state.step("server") or {}
        fuse = state.step("fuse")
        swap = state.step("swap")
        block = state.step("loop") or state.step("nbd")
        entry = {
            "name": n,
            "config": state.data.get("config"),
            "device": (swap or block or {}).get("device"),
            "complete": swap is not None,
            "swap": swaps.get((swap or {}).get("device")),
            "server_alive": alive(server.get("pid"), server.get("start_time")),
            "server_locked_kib": vm_locked_kib(server["pid"]) if server else 0,
            "footprint": footprint(state),
            "nbdfuse_alive": alive(fuse["pid"], fuse["start_time"]) if fuse else None,
            "nbdfuse_locked_kib": vm_locked_kib(fuse["pid"]) if fuse else None,
            "warnings": list(state.data.get("warnings", [])),
            "steps": [s["step"] for s in state.steps],
            "stats": None,
        }
        if server.get("plugin", "uzram") == "uzram" and server:
            try:
                entry["stats"] = control.query(server["runtime_dir"], "stats", timeout=5)
            except control.ControlError as e:
                entry["warnings"].append(f"statistics unavailable: {e}")
        if swap and entry["swap"] is None:
            entry["warnings"].append(f"{swap['device']} is not in /proc/swaps (turned off by hand?)")
        out.append(entry)
    return out
