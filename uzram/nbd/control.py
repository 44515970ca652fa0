"""The control endpoint: a Unix socket in the device's private runtime directory.

One request per connection: the client sends a command line (``stats``, ``compact``,
``ping``, ``workers``, ``attrs``, ``get ATTR`` or ``set ATTR VALUE``: the zram attributes
of uzram.core.attrs) and reads one JSON object back.  The directory is mode 0700 and the
socket 0600, so only the owner can read statistics or talk to the device.

Nobody can block it.  One thread serves every client at once through a selector
(epoll): it accepts whatever is waiting, reads each client's line as it arrives and
writes each reply without blocking.  A client gets CLIENT_DEADLINE seconds from its
connect to its last byte and is dropped after that, so a client that connects and says
nothing costs the others nothing; the listen backlog is the system's largest
(``SOMAXCONN``), and at most MAX_CLIENTS are open at once (more are closed at once).

Commands that take long (``slow``: writeback, recompression, compaction) run on a second
thread, the maintenance thread, one after another; the client waiting for one has no
deadline, and everyone else is still served meanwhile.
"""

import collections
import errno
import json
import os
import queue
import selectors
import socket
import threading
import time

from uzram.core.errors import UzramError
from .rundir import check_runtime_dir, ensure_runtime_dir

CONTROL_NAME = "control.sock"
CLIENT_DEADLINE = 2.0       # seconds a client has from connect to its last byte
MAX_CLIENTS = 512
MAX_LINE = 4352          # a command and a path of up to PATH_MAX


class ControlError(UzramError):
    """The control endpoint could not be reached or answered badly."""


def ensure_private_dir(path):
    """Create ``path`` (mode 0700) or check an existing one; see uzram.rundir."""
    return ensure_runtime_dir(path)


class _Client:
    __slots__ = ("sock", "deadline", "inbuf", "out", "waiting")

    def __init__(self, sock, deadline):
        self.sock = sock
        self.deadline = deadline
        self.inbuf = b""
        self.out = None           # the reply, once the command line is in
        self.waiting = False      # a slow command of it runs on the maintenance thread


class ControlServer:
    """Serves ``handlers`` (command -> callable of the rest of the line, returning a
    JSON-able object) on a thread; the commands in ``slow`` on the maintenance thread."""

    def __init__(self, runtime_dir, handlers, slow=(), clock=time.monotonic):
        self.path = os.path.join(runtime_dir, CONTROL_NAME)
        self.handlers = handlers
        self.slow = frozenset(slow)
        self.clock = clock
        self._jobs = queue.Queue()
        self._done = collections.deque()
        self._maint = None
        self._sock = None
        self._ino = None
        self._thread = None
        self._stop = False
        self._wake_r = self._wake_w = None
        self.clients_dropped = 0      # clients closed at their deadline or over MAX_CLIENTS

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
        s.listen(socket.SOMAXCONN)
        s.setblocking(False)
        self._ino = os.stat(self.path).st_ino
        self._sock = s

    def start(self):
        if self._sock is None:
            self.bind()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._serve, name="uzram-control", daemon=True)
        self._thread.start()
        self._maint = threading.Thread(target=self._maintain, name="uzram-maint", daemon=True)
        self._maint.start()

    def _maintain(self):
        while True:
            item = self._jobs.get()
            if item is None:
                return
            client, line = item
            self._done.append((client, self._reply(line)))
            self._poke()

    def _poke(self):
        try:
            os.write(self._wake_w, b"\0")
        except (OSError, TypeError):
            pass

    # ------------------------------------------------------------------ the thread

    def _serve(self):
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        clients = {}
        try:
            while not self._stop:
                now = self.clock()
                timeout = min((c.deadline for c in clients.values()), default=now + 1.0) - now
                for key, events in sel.select(max(0.0, min(timeout, 1.0))):
                    if key.data == "wake":
                        try:
                            os.read(self._wake_r, 4096)
                        except BlockingIOError:
                            pass
                        if self._stop:
                            return
                        self._answer_done(sel, clients)
                        continue
                    if key.data is None:
                        self._accept(sel, clients)
                    else:
                        self._service(sel, clients, key.data, events)
                now = self.clock()
                for c in [c for c in clients.values() if c.deadline <= now]:
                    self.clients_dropped += 1
                    self._close(sel, clients, c)
        finally:
            for c in list(clients.values()):
                self._close(sel, clients, c)
            sel.close()

    def _answer_done(self, sel, clients):
        while self._done:
            c, reply = self._done.popleft()
            if clients.get(c.sock.fileno()) is c:      # else it hung up meanwhile
                c.out = reply
                c.waiting = False
                sel.modify(c.sock, selectors.EVENT_WRITE, c)

    def _accept(self, sel, clients):
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return        # try again at the next event; the others are still served
                raise
            if len(clients) >= MAX_CLIENTS:
                self.clients_dropped += 1
                conn.close()
                continue
            conn.setblocking(False)
            c = _Client(conn, self.clock() + CLIENT_DEADLINE)
            clients[conn.fileno()] = c
            sel.register(conn, selectors.EVENT_READ, c)

    def _service(self, sel, clients, c, events):
        try:
            if c.waiting:
                if not c.sock.recv(4096):          # hung up while its command runs
                    self._close(sel, clients, c)
                return
            if c.out is None and events & selectors.EVENT_READ:
                data = c.sock.recv(MAX_LINE + 1)
                if not data:
                    if not c.inbuf:
                        self._close(sel, clients, c)
                        return
                    data = b"\n"         # a command without its newline, then EOF
                c.inbuf += data
                if b"\n" not in c.inbuf and len(c.inbuf) <= MAX_LINE:
                    return
                line = c.inbuf.split(b"\n", 1)[0][:MAX_LINE].decode("utf-8", "replace").strip()
                if line.partition(" ")[0] in self.slow:
                    c.waiting = True
                    c.deadline = float("inf")
                    self._jobs.put((c, line))
                    return
                c.out = self._reply(line)
                sel.modify(c.sock, selectors.EVENT_WRITE, c)
            if c.out is not None:
                sent = c.sock.send(c.out)
                c.out = c.out[sent:]
                if not c.out:
                    self._close(sel, clients, c)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(sel, clients, c)

    def _reply(self, line):
        command, _, arg = line.partition(" ")
        handler = self.handlers.get(command)
        try:
            if handler is None:
                reply = {"error": f"unknown command {command!r} (known: {', '.join(self.handlers)})"}
            else:
                reply = handler(arg)
        except UzramError as e:      # a refused attribute write and the like: its own line
            reply = {"error": str(e), "errno": getattr(e, "errno", None)}
        except Exception as e:  # a failing command must not stop the endpoint
            reply = {"error": f"{command}: {type(e).__name__}: {e}"}
        return json.dumps(reply).encode() + b"\n"

    @staticmethod
    def _close(sel, clients, c):
        clients.pop(c.sock.fileno(), None)
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    # ------------------------------------------------------------------ stopping

    def stop(self):
        self._stop = True
        if self._maint is not None:
            self._jobs.put(None)
        if self._wake_w is not None:
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                os.close(fd)
        self._wake_r = self._wake_w = None
        try:
            if os.stat(self.path).st_ino == self._ino:   # only our own socket
                os.unlink(self.path)
        except OSError:
            pass


class RefusedError(ControlError):
    """The device refused the command (an attribute write zram would refuse too)."""

    def __init__(self, message, code):
        super().__init__(message)
        if code:
            self.errno = code


def query(runtime_dir, command="stats", timeout=10):
    """Send ``command`` to the device whose runtime directory is ``runtime_dir`` and return
    its reply; wait at most ``timeout`` seconds for it (None: as long as it takes, for
    writeback and the like; the connection still has 10 s)."""
    wait = timeout
    path = runtime_dir if runtime_dir.endswith(".sock") else os.path.join(runtime_dir, CONTROL_NAME)
    try:
        # whoever could replace the directory could answer in the device's place
        check_runtime_dir(os.path.dirname(path))
    except FileNotFoundError:
        raise ControlError(f"no uzram device at {path} (is it running? see --runtime-dir/--name)") from None
    if timeout is None:
        timeout = 10
    deadline = time.monotonic() + timeout
    s = None
    try:
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                s.connect(path)
                break
            except (BlockingIOError, InterruptedError):
                # the listen backlog is full (a Unix socket says EAGAIN): try again
                s.close()
                if time.monotonic() >= deadline:
                    raise ControlError(f"{path}: the device did not accept within {timeout} s") from None
                time.sleep(0.005)
        s.sendall(command.encode() + b"\n")
        if wait is None:
            s.settimeout(None)
        data = s.makefile("rb").readline()
    except FileNotFoundError:
        raise ControlError(f"no uzram device at {path} (is it running? see --runtime-dir/--name)") from None
    except ConnectionRefusedError:
        raise ControlError(f"no uzram device at {path} (a stale socket: nothing listens there)") from None
    except PermissionError:
        raise ControlError(f"{path}: permission denied (the control socket is private to its owner)") from None
    except socket.timeout:
        raise ControlError(f"{path}: no answer within {timeout} s") from None
    except OSError as e:
        raise ControlError(f"{path}: {e.strerror or e}") from None
    finally:
        if s is not None:
            s.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"{path}: malformed reply") from None
    if isinstance(reply, dict) and "error" in reply:
        if "errno" in reply:
            raise RefusedError(reply["error"], reply["errno"])
        raise ControlError(f"{path}: {reply['error']}")
    return reply
