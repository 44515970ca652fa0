"""uzram: a userspace zram, a compressed RAM block device served over NBD.

Import direction (keep it): constants, errors -> codecs, samefill, protocol, config
-> arena -> store -> dispatcher/pool -> device -> control -> cli.  ``plugin/`` and
``uzram.cli`` sit on top and nothing imports them.  Worker code (``kcompressd``) imports
only the low layer (codecs, protocol), never the store.
"""

__version__ = "0.1.0"
