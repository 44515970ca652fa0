"""uzram: a userspace zram, a compressed RAM block device served over NBD.

Import direction (keep it): constants, errors -> codecs, samefill, protocol, config
-> arena -> store -> dispatcher/pool -> device -> control -> cli.  ``plugin/`` and
``uzram.cli`` sit on top and nothing imports them.  Worker code (``kcompressd``) imports
only the low layer (codecs, protocol), never the store.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # ``uzram.Server`` (uzram/api.py) is loaded on first use, so that the plugin inside
    # nbdkit and the kcompressd workers, which import this package, do not load it.
    if name == "Server":
        from .api import Server
        return Server
    raise AttributeError(f"module 'uzram' has no attribute {name!r}")
