import os, sys; sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # noqa
from uzram.nbd.nbdkit_plugin import load; load(globals())  # noqa: E702  (uzram/nbd/nbdkit_plugin.py)
