"""The ``uzram`` command.  Each subcommand is a module here with ``register(subparsers)``
that adds its parser and sets ``func``.  User mistakes (UzramError) print one line and exit 2."""

import argparse
import importlib
import sys

from uzram import __version__
from uzram.core.errors import UzramError

COMMANDS = ("serve", "stats", "ctl", "devices", "exporter", "swap", "probe", "bench", "vm", "plugin_path")


def build_parser():
    parser = argparse.ArgumentParser(prog="uzram", description="A userspace zram: a compressed RAM block device over NBD.")
    parser.add_argument("--version", action="version", version=f"uzram {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except UzramError as e:
        print(f"uzram {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def run():
    sys.exit(main())
