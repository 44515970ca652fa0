"""``uzram exporter``: serve every device's statistics on /metrics for Prometheus."""

import argparse
import signal
import sys

from uzram.tools import exporter

DESCRIPTION = """\
Serve /metrics (OpenMetrics text) for every uzram device this user can reach, found by
their runtime directories at every scrape: this user's, /run/uzram's and, as root, every
user's; --runtime-dir adds others.  Names are zram's, prefixed uzram_ (uzram_orig_data_size,
uzram_failed_writes_total), with device and runtime_dir labels; uzram_up is 0 for a device
that does not answer.  uzram stats --prometheus prints the same for one device."""


def register(sub):
    p = sub.add_parser("exporter", help="serve every device's statistics for Prometheus (/metrics)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default=exporter.DEFAULT_LISTEN, metavar="HOST:PORT",
                   help="address to serve on (default: %(default)s; port 0 = any free port, printed)")
    p.add_argument("--runtime-dir", action="append", default=[], metavar="DIR",
                   help="also report the device in DIR (may be given more than once)")
    p.set_defaults(func=run)


def run(args):
    host, port = exporter.parse_listen(args.listen)
    server = exporter.make_server(host, port, args.runtime_dir)
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    if not exporter.is_loopback(host):
        print(f"uzram exporter: warning: {shown} is not a loopback address: anyone who can reach it "
              "reads every device's statistics", file=sys.stderr)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    print(f"uzram exporter: serving http://{shown}:{port}/metrics", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
