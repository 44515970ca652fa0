"""A device's runtime directory: whether it can be trusted, and who owns the name.

Trust.  The runtime directory holds the device's sockets (``control.sock``, ``nbd.sock``,
``kcompressd.sock``), so whoever can rename or replace it, or any directory above it, can
put their own server in its place.  ``secure_dir`` therefore checks every component of the
path, from ``/`` down, and refuses (never fixes) with one line naming the component and
why:

- a directory above the ones uzram creates must be owned by root or by you, and writable
  by nobody else unless it is sticky (``/tmp``);
- a directory uzram creates (the last ones of a default runtime directory, see
  ``default_base``) must be owned by you, or by root, and writable by nobody else;
- the runtime directory itself must be yours and private (no permission bits for group
  or others).

Ownership.  ``Owner.acquire`` takes an exclusive flock on ``RUNTIME_DIR/lock`` and keeps it
for the server's whole life (the plugin takes it at get_ready, before nbdkit binds any
socket); a second server for the same name is refused with the running pid, whatever its
sockets are doing.  The owner removes stale sockets when it starts (after a SIGKILL, say)
and removes its sockets and the lock when it stops.  ``holder`` says who holds a lock
without touching it (from /proc/locks), so that checking never makes a starting server
fail.

Imports nothing from uzram but errors.
"""

import errno
import fcntl
import os
import pwd
import stat

from uzram.core.config import default_base, default_runtime_dir  # noqa: F401  (the naming rule)
from uzram.core.errors import UzramError

LOCK_NAME = "lock"
#: files a running device makes in its runtime directory; an owner removes them
SOCKETS = ("control.sock", "kcompressd.sock", "nbd.sock")


class RuntimeDirError(UzramError):
    """The runtime directory (or a directory above it) cannot be trusted."""


class NameBusyError(UzramError):
    """Another running server owns the name (its runtime directory's lock is held)."""


def _who(uid):
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def strict_from(path):
    """For a default runtime directory, the first component that must be strictly yours:
    ``/run/uzram`` as root, ``$XDG_RUNTIME_DIR`` when set, else ``/tmp/uzram-UID``.  None
    for any other directory (only its last component must be yours)."""
    if os.path.dirname(os.path.normpath(path)) != os.path.dirname(default_runtime_dir("x")):
        return None
    base, _ = default_base()
    return "/run/uzram" if base.rstrip("/") == "/run" else base


def _check(path, component, st, strict, what):
    euid = os.geteuid()
    if stat.S_ISLNK(st.st_mode):
        raise RuntimeDirError(f"{what} {path}: {component} is a symbolic link (it was replaced while being checked)")
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"{what} {path}: {component} is not a directory")
    if st.st_uid not in (0, euid):
        raise RuntimeDirError(f"{what} {path}: {component} is owned by {_who(st.st_uid)}, not by you ({_who(euid)}), "
                              "so it could be moved or replaced; remove it or choose another directory")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022 and (strict or not mode & stat.S_ISVTX):
        raise RuntimeDirError(f"{what} {path}: {component} is writable by others (mode {mode:04o}), so they could "
                              f"replace what is in it; chmod go-w {component} or choose another directory")


def _check_final(path, st, what):
    euid = os.geteuid()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"{what} {path} is not a directory")
    if st.st_uid != euid:
        raise RuntimeDirError(f"{what} {path} is owned by {_who(st.st_uid)}, not by you ({_who(euid)}); "
                              "remove it or choose another directory")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise RuntimeDirError(f"{what} {path} has mode {mode:04o}; it holds the device's sockets and must "
                              f"be private to you (chmod 700 {path}, or choose another directory)")


def secure_dir(path, *, create=True, strict_below=None, what="runtime directory"):
    """Check (and with ``create``, make missing components of, mode 0700) the directory
    ``path``; returns its absolute path.  ``strict_below``: the first component that must be
    strictly ours (``strict_from(path)`` for a default directory).  Raises RuntimeDirError
    with one line; a missing directory without ``create`` raises FileNotFoundError."""
    path = os.path.abspath(path)
    real = os.path.realpath(path)
    strict_at = os.path.realpath(strict_below) if strict_below else None
    parts = real.strip("/").split("/") if real != "/" else []
    current = "/"
    strict = False
    for i, part in enumerate(parts):
        current = os.path.join(current, part)
        if strict_at is not None and current == strict_at:
            strict = True
        last = i == len(parts) - 1
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(current, 0o700)
            except FileExistsError:
                pass
            except OSError as e:
                raise RuntimeDirError(f"{what} {path}: cannot create {current}: {e.strerror}") from None
            st = os.lstat(current)
            strict = True          # made by uzram: must stay ours
        except OSError as e:
            raise RuntimeDirError(f"{what} {path}: {current}: {e.strerror}") from None
        if last:
            _check_final(current, st, what)
        else:
            _check(path, current, st, strict, what)
    return path


def ensure_runtime_dir(path):
    """Make or check a runtime directory (see the module docstring)."""
    return secure_dir(path, strict_below=strict_from(path))


def check_runtime_dir(path):
    """Check an existing runtime directory before talking to what is in it (FileNotFoundError
    when it does not exist)."""
    return secure_dir(path, create=False, strict_below=strict_from(path))


# --------------------------------------------------------------------------------- ownership

def _locked_inodes():
    """{(major, minor, inode): pid} of the FLOCK write locks in /proc/locks."""
    out = {}
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if "->" in fields:          # a waiter, not a holder
            continue
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "WRITE":
            try:
                major, minor, ino = fields[5].split(":")
                out[(int(major, 16), int(minor, 16), int(ino))] = int(fields[4])
            except ValueError:
                continue
    return out


def _read_pid(path):
    try:
        with open(path, "rb") as f:
            text = f.read(64).decode("ascii", "replace").split()
        return int(text[0]) if text else None
    except (OSError, ValueError):
        return None


def holder(runtime_dir):
    """The pid of the server that holds ``runtime_dir``'s lock, or None when none does.
    Reads /proc/locks: it never takes the lock, so it cannot make a starting server fail."""
    path = os.path.join(runtime_dir, LOCK_NAME)
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    locker = _locked_inodes().get(key)
    if locker is None:
        return None
    return _read_pid(path) or locker


def busy_message(name, runtime_dir, pid):
    return f"{name} is already served by pid {pid} (it holds {os.path.join(runtime_dir, LOCK_NAME)})"


def refuse_if_held(name, runtime_dir):
    pid = holder(runtime_dir)
    if pid is not None:
        raise NameBusyError(busy_message(name, runtime_dir, pid))


def remove_stale(runtime_dir, names=SOCKETS):
    for leaf in names:
        try:
            os.unlink(os.path.join(runtime_dir, leaf))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise RuntimeDirError(f"cannot remove the stale {leaf} in {runtime_dir}: {e.strerror}") from None


class Owner:
    """The exclusive lock on a name's runtime directory, held until ``release``."""

    def __init__(self, runtime_dir, fd, ino):
        self.runtime_dir = runtime_dir
        self.path = os.path.join(runtime_dir, LOCK_NAME)
        self._fd = fd
        self._ino = ino

    @classmethod
    def acquire(cls, runtime_dir, name):
        """Take the lock, note our pid in it and remove stale sockets.  Raises NameBusyError
        naming the pid that holds it."""
        path = os.path.join(runtime_dir, LOCK_NAME)
        for _ in range(100):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise RuntimeDirError(f"{path}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise RuntimeDirError(f"{path}: flock: {e.strerror}") from None
                pid = _read_pid(path) or holder(runtime_dir) or "unknown"
                raise NameBusyError(busy_message(name, runtime_dir, pid)) from None
            # The previous owner unlinks the file while it still holds it: a lock taken on
            # a file that is no longer at ``path`` protects nothing, so try again.
            st = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                owner = cls(runtime_dir, fd, st.st_ino)
                owner.note_pid()
                remove_stale(runtime_dir)
                return owner
            os.close(fd)
        raise RuntimeDirError(f"{path}: could not take the lock (it kept being replaced)")

    def note_pid(self, pid=None):
        """Write ``pid`` (default: ours) into the lock file; nbdkit without -f forks after
        the lock is taken, and the pid that serves is the child's."""
        data = f"{pid or os.getpid()}\n".encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self, sockets=SOCKETS):
        """Remove our sockets and the lock file, then let the lock go."""
        if self._fd is None:
            return
        for leaf in sockets:
            try:
                os.unlink(os.path.join(self.runtime_dir, leaf))
            except OSError:
                pass
        try:
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
