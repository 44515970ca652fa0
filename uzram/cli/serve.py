"""``uzram serve``: start nbdkit with the uzram plugin, print how to use it, stop on Ctrl-C/SIGTERM."""

import os
import signal
import sys
import time

from uzram.core.config import KEYS, PLUGIN_KEYS, Config
from uzram.core.errors import ConfigError
from uzram.nbd.server import DEFAULT_THREADS, Server
from uzram.host import swapconfig
from uzram.nbd.tls import check_listener, psk_users
from .common import count_arg

EPILOG = "Plugin keys (nbdkit python \"$(uzram plugin-path)\" key=value ...; the options above are the same keys):\n" + \
    "\n".join(f"  {k:12s} {KEYS[k].help} (default: {KEYS[k].default})" for k in PLUGIN_KEYS)
#: uzram serve's defaults where they differ from the plugin's
SERVE_DEFAULTS = {"size": "1G"}     # applied in option_keys, so that --config can tell an option from none


def register(sub):
    p = sub.add_parser("serve", help="serve a uzram device over NBD", epilog=EPILOG,
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
                       description="Start a compressed RAM block device served by nbdkit on a Unix socket "
                                   "(TCP only with --tcp, bound to 127.0.0.1 unless --host says otherwise).")
    for key in (k for k in KEYS.values() if k.serve):      # the table's keys, as options
        default = SERVE_DEFAULTS.get(key.name)
        p.add_argument(key.option, dest=key.name, default=None, metavar=key.kind.upper() if key.kind in (
            "size", "count") else None, help=f"{key.help} (default: {default or key.default})".replace("%", "%%"))
    p.add_argument("--config", metavar="FILE",
                   help="serve every device of a swap config file (/etc/uzram/uzram.conf: [NAME] sections; not "
                        "as swap); the options above override the file's keys")
    p.add_argument("--socket", help="Unix socket path (default: RUNTIME_DIR/nbd.sock)")
    p.add_argument("--tcp", type=int, metavar="PORT", help="serve on TCP PORT instead of a Unix socket")
    p.add_argument("--host", default="127.0.0.1",
                   help="address for --tcp (default: %(default)s); any other than loopback needs --tls-psk or --insecure")
    p.add_argument("--tls-psk", metavar="FILE",
                   help="require TLS with the pre-shared keys in FILE (USERNAME:HEXKEY lines, as psktool -u USER -p FILE "
                        "writes them; mode 0600); clients connect to nbds://USER@HOST:PORT/?tls-psk-file=FILE")
    p.add_argument("--insecure", action="store_true",
                   help="allow a TCP listener on an address other than loopback without TLS "
                        "(anyone who reaches it can read and write the device)")
    p.add_argument("--threads", type=count_arg, default=DEFAULT_THREADS,
                   help="nbdkit threads per connection (default: %(default)s; Python runs one thread at a "
                        "time, more threads only contend for the GIL)")
    p.add_argument("--swap", action="store_true",
                   help="lock the device in memory, on fault (mlock=1), for swapping on it")
    p.set_defaults(func=run)


def run(args):
    if args.tcp is not None and not 0 < args.tcp < 65536:
        raise ConfigError(f"--tcp: {args.tcp} is not a port number")
    if args.tcp is None and (args.host != "127.0.0.1" or args.insecure):
        raise ConfigError(f"{'--host' if args.host != '127.0.0.1' else '--insecure'}: only with --tcp PORT")
    if args.tls_psk:
        psk_users(args.tls_psk)
    if args.tcp is not None:
        check_listener(args.host, bool(args.tls_psk), args.insecure)
    # Validate everything before starting nbdkit, so mistakes get one line here.
    if args.config:
        devices = [device_keys(d, args) for d in swapconfig.load(args.config)]
        if len(devices) > 1 and (args.socket or args.tcp is not None):
            raise ConfigError("--socket, --tcp: one device only (this config file has several)")
    else:
        devices = [option_keys(args)]
    servers = []
    for keys, workers in devices:
        servers.append((Server(**keys, socket_path=args.socket, tcp_port=args.tcp, host=args.host, swap=args.swap,
                               threads=args.threads, stderr=sys.stderr, tls_psk=args.tls_psk), keys, workers))

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        for server, keys, workers in servers:
            server.start()
            describe(server, keys, workers, args)
        print("  stop:     Ctrl-C", flush=True)
        while True:
            for server, keys, _ in servers:
                rc = server.proc.poll()
                if rc is not None:
                    print(f"uzram serve: {keys['name']}: nbdkit exited with status {rc}", file=sys.stderr)
                    return 1
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("uzram: stopping", file=sys.stderr)
    finally:
        for server, _, _ in servers:
            server.stop()
    return 0


def option_keys(args):
    """The device's keys from the options, checked (and its worker count, resolved)."""
    cfg = Config()
    keys = {}
    for key in (k for k in KEYS.values() if k.serve):
        value = getattr(args, key.name)
        if value is None:
            value = SERVE_DEFAULTS.get(key.name)
        if value is not None:
            keys[key.name] = key.parse(value)
            if key.name != "runtime_dir":
                cfg.set(key.name, keys[key.name])
    cfg.complete()
    keys.setdefault("name", "uzram0")
    return keys, cfg.workers


def device_keys(device, args):
    """A device of the config file, with the options over it; with --runtime-dir, its runtime
    directory is RUNTIME_DIR/NAME."""
    for key in (k for k in KEYS.values() if k.serve and k.swap):
        value = getattr(args, key.name)
        if value is not None and key.name != "name":
            device.set(key.name, value)
    device.validate()
    keys = device.plugin_keys(python=KEYS["python"].parse(args.python) if args.python else None)
    if args.runtime_dir:
        keys["runtime_dir"] = os.path.join(args.runtime_dir, device.name)
    return keys, device.workers


def describe(server, keys, workers, args):
    print(f"uzram: serving {keys['name']}: {keys['size']} bytes, {keys.get('algorithm') or 'lz4'}, "
          f"{'inline compression' if workers == 0 else f'{workers} kcompressd worker' + ('s' if workers > 1 else '')}")
    print(f"  URI:      {server.uri}")
    if args.tls_psk:
        print(f"  TLS:      required, pre-shared keys from {server.tls_psk} (nbdkit --tls=require)")
    elif args.tcp is not None and args.insecure:
        print(f"  warning:  TCP on {args.host} without TLS: anyone who reaches it can read and write the device")
    print(f"  stats:    uzram stats --runtime-dir {server.runtime_dir}")
    print(f"  copy in:  nbdcopy FILE '{server.uri}'")
    print(f"  swap:     nbdfuse DIR '{server.uri}', then losetup, mkswap, swapon on DIR/nbd")
    print("            (uzram swap on does all of it with a device of its own)", flush=True)
