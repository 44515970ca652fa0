"""Attach an NBD export as a block device, for tests and scripts (``Server.attach``).

Two ways, as ``uzram swap`` uses them:

- ``nbd``: the kernel's NBD client, ``nbd-client`` onto a free ``/dev/nbdN``.  Needs the
  nbd module and the nbd-client package.  Not exercised here: the development machine's
  kernel has no nbd module.
- ``loop``: ``nbdfuse`` exposes the export as the file ``MOUNTPOINT/nbd``, and
  ``losetup --direct-io=on`` makes a loop device of it.  Needs /dev/fuse, nbdfuse
  (libnbd-bin), fusermount3 (fuse3) and losetup (util-linux).

Both need root.  ``how="auto"`` takes ``nbd`` where the kernel has it, else ``loop``.
``unavailable(how)`` says why a host cannot attach (None when it can), so a test can skip
with that reason; ``attach`` raises AttachError with the same words.  ``Attachment.detach``
undoes exactly what was done, in reverse order, and is safe to call twice.
"""

import os
import shutil
import subprocess
import time

from uzram.core.errors import UzramError
from uzram.nbd.server import CLEAN_PATH, clean_env

HOWS = ("auto", "nbd", "loop")


class AttachError(UzramError):
    """The export could not be attached (or detached) as a block device."""


def _tool(name):
    return shutil.which(name, path=CLEAN_PATH)


def _nbd_available():
    return os.path.exists("/dev/nbd0") and _tool("nbd-client") is not None


def unavailable(how="auto"):
    """Why this host cannot attach a block device ``how``; None when it can."""
    if how not in HOWS:
        return f"how={how!r}: expected one of {', '.join(HOWS)}"
    if os.geteuid() != 0:
        return "attaching a block device needs root (losetup, nbd-client)"
    if how == "nbd" or (how == "auto" and _nbd_available()):
        if not os.path.exists("/dev/nbd0"):
            return "the kernel has no NBD devices (/dev/nbd0; modprobe nbd)"
        if _tool("nbd-client") is None:
            return "nbd-client is not installed (apt-get install nbd-client)"
        return None
    for tool, package in (("nbdfuse", "libnbd-bin"), ("fusermount3", "fuse3"), ("losetup", "util-linux")):
        if _tool(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (FUSE is not available here)"
    return None


def _run(argv, what, timeout=60):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, env=clean_env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AttachError(f"{what} did not finish within {timeout} s") from None
    if p.returncode != 0:
        why = (p.stderr.strip() or p.stdout.strip() or f"exit status {p.returncode}").splitlines()[-1]
        raise AttachError(f"{what} failed: {why}")
    return p.stdout


def _mounted(path):
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


def _wait(cond, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


class Attachment:
    """A block device made from an export; ``path`` is /dev/loopN or /dev/nbdN."""

    def __init__(self, how):
        self.how = how
        self.path = None
        self._undo = []          # callables, undone in reverse order

    def detach(self):
        """Undo every step, the last first.  Raises AttachError if one fails (the steps
        not yet undone stay, and calling detach again retries them)."""
        while self._undo:
            self._undo[-1]()
            self._undo.pop()
        self.path = None

    def __repr__(self):
        return f"Attachment({self.how}, {self.path})"


def attach(uri, socket_path=None, workdir=None, how="auto", timeout=30):
    """Attach the export at ``uri`` (``socket_path`` when it is a Unix socket) and return
    the Attachment.  ``workdir`` (a private directory) holds nbdfuse's mountpoint and log."""
    why = unavailable(how)
    if why:
        raise AttachError(why)
    if how == "auto":
        how = "nbd" if _nbd_available() else "loop"
    a = Attachment(how)
    try:
        if how == "nbd":
            _attach_nbd(a, uri, socket_path)
        else:
            _attach_loop(a, uri, socket_path, workdir, timeout)
    except BaseException:
        try:
            a.detach()
        except AttachError:
            pass
        raise
    return a


def _attach_nbd(a, uri, socket_path):
    """nbd-client onto the first free /dev/nbdN (untested here: no nbd module)."""
    if socket_path is None:
        raise AttachError("nbd-client attaches a Unix socket export here; use how='loop' for a URI")
    for n in range(1024):
        dev = f"/dev/nbd{n}"
        if not os.path.exists(dev):
            break
        if os.path.exists(f"/sys/block/nbd{n}/pid"):
            continue
        _run(["nbd-client", "-unix", socket_path, dev, "-b", "4096"], "nbd-client")
        a._undo.append(lambda: _run(["nbd-client", "-d", dev], "nbd-client -d"))
        a.path = dev
        return
    raise AttachError("no free /dev/nbdN device")


def _attach_loop(a, uri, socket_path, workdir, timeout):
    if workdir is None:
        raise AttachError("attach needs a working directory for nbdfuse's mountpoint")
    mnt = os.path.join(workdir, "mnt")
    os.makedirs(mnt, mode=0o700, exist_ok=False)
    a._undo.append(lambda: os.rmdir(mnt) if os.path.isdir(mnt) else None)
    pidfile, log = os.path.join(workdir, "nbdfuse.pid"), os.path.join(workdir, "nbdfuse.log")
    target = ["--unix", socket_path] if socket_path else [uri]
    with open(log, "ab") as err:
        proc = subprocess.Popen([_tool("nbdfuse"), "-P", pidfile, mnt] + target, env=clean_env(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)

    def stop_fuse():
        if _mounted(mnt):
            last = None
            for _ in range(50):   # the loop device may hold the file a moment after its detach
                try:
                    _run([_tool("fusermount3"), "-u", mnt], "fusermount3 -u")
                    break
                except AttachError as e:
                    last = e
                    if not _mounted(mnt):
                        break
                    time.sleep(0.1)
            else:
                raise AttachError(f"cannot unmount {mnt}: {last}")
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for leftover in (pidfile,):
            try:
                os.unlink(leftover)
            except OSError:
                pass

    a._undo.append(stop_fuse)
    if not _wait(lambda: proc.poll() is not None or (os.path.exists(pidfile) and _mounted(mnt)), timeout):
        raise AttachError(f"nbdfuse did not come up within {timeout} s")
    if proc.poll() is not None:
        with open(log, errors="replace") as f:
            tail = (f.read().strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise AttachError(f"nbdfuse exited: {tail}")
    file = os.path.join(mnt, "nbd")
    dev = _run([_tool("losetup"), "--find", "--show", "--direct-io=on", file], "losetup").strip()

    def detach_loop():
        _run([_tool("losetup"), "--detach", dev], "losetup --detach")
        _wait(lambda: not _loop_backing(dev), 5)

    a._undo.append(detach_loop)
    a.path = dev


def _loop_backing(dev):
    try:
        with open(f"/sys/block/{os.path.basename(dev)}/loop/backing_file") as f:
            return f.read().strip()
    except OSError:
        return None
