"""``uzram vm``: build the test VM, or boot it on an NBD export to check swap end to end."""

import sys
import time

from uzram.tools import vm


def register(subparsers):
    parser = subparsers.add_parser("vm", help="the qemu test VM that swaps onto an NBD export",
                                   description="Build the test VM, or boot it on an NBD export: it swaps there and"
                                   " checks that every page comes back intact.")
    sub = parser.add_subparsers(dest="vm_command", required=True, metavar="ACTION")

    p = sub.add_parser("build", help="fetch Debian's kernel, build the initramfs (cached)")
    p.add_argument("--force", action="store_true", help="rebuild even when the cache is current")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("run", help="boot the VM, swap onto the export, verify every page")
    p.add_argument("--socket", required=True, help="the NBD server's Unix socket")
    p.add_argument("--memory", default="128M", help="guest RAM (default 128M)")
    p.add_argument("--eat", help=f"MiB the guest allocates (default {vm.EAT_FACTOR} x --memory)")
    p.add_argument("--timeout", type=float, default=300, help="seconds before giving up (default 300)")
    p.add_argument("--seed", type=int, default=1, help="seed for the page contents (default 1)")
    p.add_argument("-v", "--verbose", action="store_true", help="stream the guest console")
    p.set_defaults(func=cmd_run)


def _log(message):
    print(f"uzram vm: {message}", file=sys.stderr)


def cmd_build(args):
    t0 = time.monotonic()
    artifacts = vm.build(force=args.force, log=_log)
    print(f"kernel:  {artifacts.kernel}  (from {artifacts.kernel_package})")
    print(f"initrd:  {artifacts.initrd}")
    print(f"modules: {' '.join(artifacts.modules) or '(none)'}")
    print(f"done in {time.monotonic() - t0:.1f} s")
    return 0


def cmd_run(args):
    on_line = (lambda line: print(line, flush=True)) if args.verbose else None
    result = vm.run(args.socket, memory=args.memory, eat=args.eat, timeout=args.timeout, seed=args.seed,
                    on_line=on_line, log=_log)
    if not result.passed and not args.verbose:
        for line in result.log_tail:
            print(f"  | {line}")
    print(result.summary())
    return 0 if result.passed else 1
