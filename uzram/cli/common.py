"""Helpers shared by the subcommands: argument types that turn mistakes into one line."""

import argparse

from uzram.core.config import parse_size, parse_int, default_runtime_dir
from uzram.core.errors import ConfigError


def size_arg(text):
    try:
        return parse_size(text, "size")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).partition(": ")[2]) from None


def count_arg(text):
    try:
        return parse_int(text, "value")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).partition(": ")[2]) from None


def add_device_selector(parser):
    parser.add_argument("--name", default="uzram0", help="device name (default: %(default)s)")
    parser.add_argument("--runtime-dir", help="the device's runtime directory (default: from --name)")


def runtime_dir_of(args):
    return args.runtime_dir or default_runtime_dir(args.name)
