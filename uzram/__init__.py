"""uzram: a userspace zram, a compressed RAM block device served over NBD.

The package in layers, each importing only the layers before it (tests/unit/test_layers.py
checks every import against this list, and that the README says the same):

    core         constants, errors -> codecs, samefill, shm, schema, ratelog -> config,
                 stats -> arena, pending, backing -> store -> postproc -> attrs -> device
    kcompressd   protocol, pool -> dispatcher, worker (the worker imports no store)
    nbd          threadstate, tls, control, rundir -> server -> plugin, nbdkit_plugin
    host         memcg, blockdev, swapconfig -> swap
    tools        probe, metrics, eater, storm -> exporter, vm -> bench (a package; its own order is in its docstring)
    api          api -> pytest_plugin
    cli          cli (nothing imports it)

Within core, the arrows give the order too.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # ``uzram.Server`` (uzram/api.py) is loaded on first use, so that the plugin inside
    # nbdkit and the kcompressd workers, which import this package, do not load it.
    if name == "Server":
        from .api import Server
        return Server
    raise AttributeError(f"module 'uzram' has no attribute {name!r}")
