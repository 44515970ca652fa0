"""The control endpoint: a Unix socket in the device's private runtime directory.

One request per connection: the client sends a command line (``stats``, ``compact`` or
``ping``) and reads one JSON object back.  The directory is mode 0700 and the socket 0600,
so only the owner can read statistics or talk to the device.
"""

import json
import os
import socket
import stat
import threading

from .errors import UzramError

CONTROL_NAME = "control.sock"


class ControlError(UzramError):
    """The control endpoint could not be reached or answered badly."""


def ensure_private_dir(path):
    """Create ``path`` (mode 0700) or check that an existing one is ours and private."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as e:
        raise UzramError(f"runtime directory {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UzramError(f"runtime directory {path}: not a directory")
    if st.st_uid != os.geteuid():
        raise UzramError(f"runtime directory {path}: owned by uid {st.st_uid}, not by us")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


class ControlServer:
    """Serves ``handlers`` (command -> callable returning a JSON-able object) on a thread."""

    def __init__(self, runtime_dir, handlers):
        self.path = os.path.join(runtime_dir, CONTROL_NAME)
        self.handlers = handlers
        self._sock = None
        self._thread = None
        self._stop = False

    def bind(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(self.path)
        finally:
            os.umask(old)
        s.listen(8)
        self._sock = s

    def start(self):
        if self._sock is None:
            self.bind()
        self._thread = threading.Thread(target=self._serve, name="uzram-control", daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(5)
                    line = conn.makefile("rb").readline(256).decode("ascii", "replace").strip()
                    handler = self.handlers.get(line)
                    if handler is None:
                        reply = {"error": f"unknown command {line!r} (known: {', '.join(self.handlers)})"}
                    else:
                        reply = handler()
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                except Exception as e:  # a client's mistake must not stop the endpoint
                    try:
                        conn.sendall(json.dumps({"error": str(e)}).encode() + b"\n")
                    except OSError:
                        pass

    def stop(self):
        self._stop = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def query(runtime_dir, command="stats", timeout=10):
    """Send ``command`` to the device whose runtime directory is ``runtime_dir``."""
    path = runtime_dir if runtime_dir.endswith(".sock") else os.path.join(runtime_dir, CONTROL_NAME)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(command.encode() + b"\n")
        data = s.makefile("rb").readline()
    except FileNotFoundError:
        raise ControlError(f"no uzram device at {path} (is it running? see --runtime-dir/--name)") from None
    except PermissionError:
        raise ControlError(f"{path}: permission denied (the control socket is private to its owner)") from None
    except OSError as e:
        raise ControlError(f"{path}: {e.strerror or e}") from None
    finally:
        s.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"{path}: malformed reply") from None
    if isinstance(reply, dict) and "error" in reply:
        raise ControlError(f"{path}: {reply['error']}")
    return reply
