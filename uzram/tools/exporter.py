"""``uzram exporter``: every uzram device this user can reach, as OpenMetrics on HTTP.

Devices are found by their runtime directories, afresh at every scrape: each directory
``BASE/NAME`` holding a ``control.sock``, for the bases uzram itself uses
(``uzram.core.config.default_runtime_dir``'s parent for this user, ``/run/uzram``; as root also
every user's ``/run/user/UID/uzram`` and ``/tmp/uzram-UID/uzram``), plus the directories
given with ``--runtime-dir``.  A device whose socket does not answer is reported with
``uzram_up 0`` and nothing else.  See uzram/tools/metrics.py for the names.
"""

import glob
import http.server
import os
import socket

from uzram.nbd import control
from uzram.core.config import default_runtime_dir
from uzram.core.errors import ConfigError
from .metrics import CONTENT_TYPE, device_labels, openmetrics
from uzram.core.stats import Stats
from uzram.nbd.tls import is_loopback  # noqa: F401  (uzram exporter warns about other addresses

DEFAULT_LISTEN = "127.0.0.1:9742"
QUERY_TIMEOUT = 2.0


def search_bases():
    """The directories whose subdirectories may be device runtime directories."""
    bases = [os.path.dirname(default_runtime_dir("uzram0")), "/run/uzram"]
    if os.geteuid() == 0:
        bases += sorted(glob.glob("/run/user/*/uzram")) + sorted(glob.glob("/tmp/uzram-*/uzram"))
    seen, out = set(), []
    for b in bases:
        r = os.path.realpath(b)
        if r not in seen:
            seen.add(r)
            out.append(b)
    return out


def discover(extra=()):
    """Runtime directories holding a control socket, in a stable order, each once."""
    found, seen = [], set()
    candidates = [os.path.dirname(p) for base in search_bases()
                  for p in sorted(glob.glob(os.path.join(glob.escape(base), "*", control.CONTROL_NAME)))]
    for d in list(extra) + candidates:
        r = os.path.realpath(d)
        if r in seen or not os.path.exists(os.path.join(d, control.CONTROL_NAME)):
            continue
        seen.add(r)
        found.append(d)
    return found


def collect(runtime_dirs):
    """``[(labels, Stats or None), ...]`` for ``runtime_dirs``."""
    out = []
    for rd in runtime_dirs:
        try:
            s = Stats.from_dict(control.query(rd, "stats", timeout=QUERY_TIMEOUT))
        except control.ControlError:
            s = None
        labels = device_labels(s, rd)
        if s is None:
            labels["device"] = os.path.basename(rd.rstrip("/"))
        out.append((labels, s))
    return out


def scrape(extra=()):
    return openmetrics(collect(discover(extra)))


def parse_listen(text):
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; PORT 0 = any free port) -> (host, port)."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host:
        raise ConfigError(f"--listen: {text!r} is not HOST:PORT (for example {DEFAULT_LISTEN})")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port_n = int(port)
    except ValueError:
        raise ConfigError(f"--listen: {port!r} is not a port number") from None
    if not 0 <= port_n < 65536:
        raise ConfigError(f"--listen: {port_n} is not a port number")
    return host, port_n


class _Handler(http.server.BaseHTTPRequestHandler):
    extra = ()
    server_version = "uzram-exporter"

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, ctype, code = scrape(self.extra).encode(), CONTENT_TYPE, 200
        elif path == "/":
            body, ctype, code = b'<html><body><a href="/metrics">/metrics</a></body></html>\n', "text/html", 200
        else:
            body, ctype, code = b"not found: try /metrics\n", "text/plain", 404
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):   # no line per scrape
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def make_server(host, port, extra=()):
    """An HTTP server for /metrics (call ``serve_forever``; ``server_address`` has the port)."""
    handler = type("Handler", (_Handler,), {"extra": tuple(extra)})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    cls = type("Server", (_Server,), {"address_family": family})
    try:
        return cls((host, port), handler)
    except OSError as e:
        raise ConfigError(f"--listen: cannot listen on {host}:{port}: {e.strerror or e}") from None
