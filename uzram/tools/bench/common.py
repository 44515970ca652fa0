"""What every part of the bench shares: its one error, and small helpers (tools on the clean
PATH, the first line of an error, sorted directory walks).
"""

import os
import shutil

from uzram.core.errors import UzramError
from uzram.nbd.server import CLEAN_PATH


ZRAM_CONTROL = "/sys/class/zram-control"
MB = 1e6


class BenchError(UzramError):
    """The benchmark cannot run as asked (a bad option, a missing tool)."""


def walk_sorted(root, accept, max_file=4 << 20):
    """Regular files under ``root`` (symlinks skipped), in sorted path order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            path = os.path.join(dirpath, fn)
            if not accept(path) or os.path.islink(path):
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            if 0 < st.st_size <= max_file:
                yield path


def listdir(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def require_tool(name):
    path = shutil.which(name, path=CLEAN_PATH)
    if path is None:
        raise BenchError(f"{name} is not installed")
    return path


def first_line(e):
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
