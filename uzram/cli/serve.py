"""``uzram serve``: start nbdkit with the uzram plugin, print how to use it, stop on Ctrl-C/SIGTERM."""

import signal
import sys

from uzram.core.config import KEYS, Config, default_workers
from uzram.core.errors import ConfigError
from uzram.nbd.server import DEFAULT_THREADS, Server
from uzram.nbd.tls import check_listener, psk_users
from .common import count_arg, size_arg

EPILOG = "Plugin keys (the same options, as nbdkit key=value):\n" + "\n".join(
    f"  {k:12s} {text} (default: {default})" for k, (text, default) in KEYS.items())


def register(sub):
    p = sub.add_parser("serve", help="serve a uzram device over NBD", epilog=EPILOG,
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
                       description="Start a compressed RAM block device served by nbdkit on a Unix socket "
                                   "(TCP only with --tcp, bound to 127.0.0.1 unless --host says otherwise).")
    p.add_argument("--size", type=size_arg, default="1G", help="device size, K/M/G/T suffixes (default: 1G)")
    p.add_argument("--algorithm", default="lz4", help="lz4, lz4hc, zstd or deflate, optionally NAME:LEVEL (default: lz4)")
    p.add_argument("--workers", type=count_arg, default=None,
                   help=f"kcompressd worker processes; 0 = compress inline (default: {default_workers()})")
    p.add_argument("--mem-limit", type=size_arg, default=None, help="limit on memory held; writes beyond it fail with ENOSPC (default: none)")
    p.add_argument("--max-pending", type=size_arg, default=None, help=f"memory for pages queued for compression (default: {KEYS['max_pending'][1]})")
    p.add_argument("--name", default="uzram0", help="device name (default: %(default)s)")
    p.add_argument("--runtime-dir", help="private directory for sockets (default: from --name)")
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
    p.add_argument("--python", metavar="PATH", help="interpreter that runs the kcompressd workers "
                                                    f"(default: {KEYS['python'][1]})")
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
    cfg = Config()
    for key, value in (("size", args.size), ("algorithm", args.algorithm), ("workers", args.workers),
                       ("mem_limit", args.mem_limit), ("max_pending", args.max_pending), ("name", args.name),
                       ("python", args.python)):
        if value is not None:
            cfg.set(key, value)
    cfg.complete()
    server = Server(args.size, algorithm=args.algorithm, workers=args.workers, mem_limit=args.mem_limit,
                    max_pending=args.max_pending, name=args.name, runtime_dir=args.runtime_dir,
                    socket_path=args.socket, tcp_port=args.tcp, host=args.host, swap=args.swap,
                    threads=args.threads, stderr=sys.stderr, tls_psk=args.tls_psk, python=args.python)
    stop = []

    def on_signal(signum, frame):
        stop.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    server.start()
    try:
        workers = cfg.workers
        print(f"uzram: serving {args.name}: {args.size} bytes, {args.algorithm}, "
              f"{'inline compression' if workers == 0 else f'{workers} kcompressd worker' + ('s' if workers > 1 else '')}")
        print(f"  URI:      {server.uri}")
        if args.tls_psk:
            print(f"  TLS:      required, pre-shared keys from {server.tls_psk} (nbdkit --tls=require)")
        elif args.tcp is not None and args.insecure:
            print(f"  warning:  TCP on {args.host} without TLS: anyone who reaches it can read and write the device")
        print(f"  stats:    uzram stats --runtime-dir {server.runtime_dir}")
        print(f"  copy in:  nbdcopy FILE '{server.uri}'")
        print(f"  swap:     nbdfuse DIR '{server.uri}', then losetup, mkswap, swapon on DIR/nbd")
        print("            (uzram swap on does all of it with a device of its own)")
        print("  stop:     Ctrl-C", flush=True)
        rc = server.wait()
        if rc:
            print(f"uzram serve: nbdkit exited with status {rc}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print("uzram: stopping", file=sys.stderr)
    finally:
        server.stop()
    return 0
