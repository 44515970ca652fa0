"""``uzram plugin-path``: the script to give nbdkit, wherever uzram is installed.

    nbdkit python "$(uzram plugin-path)" size=64M
"""

from uzram.nbd.server import PLUGIN


def register(subparsers):
    p = subparsers.add_parser("plugin-path", help="print the path of the nbdkit plugin script",
                              description="Print the path of the script nbdkit loads for uzram: "
                                          'nbdkit python "$(uzram plugin-path)" size=64M ...')
    p.set_defaults(func=run)


def run(args):
    print(PLUGIN)
    return 0
