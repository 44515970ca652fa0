"""The baseline ``uzram bench`` compares against: the least a Python nbdkit plugin can do.

One bytearray, slice copies (through a memoryview, so no temporary) in pread/pwrite, nothing
else (no compression, no page table, no locking beyond the GIL).  uzram's speed targets are
ratios to this plugin.

    nbdkit -f -U SOCK python bench/bare_plugin.py size=256M
"""

import nbdkit

API_VERSION = 2

_size = 0
_disk = None
_view = None

_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}


def config(key, value):
    global _size
    if key != "size":
        raise RuntimeError(f"unknown key {key!r} (the only key is size)")
    text = value.strip().lower().rstrip("b").rstrip("i")
    unit = text[-1] if text and text[-1] in _SHIFT else ""
    _size = int(text[:len(text) - len(unit)]) << _SHIFT[unit]


def config_complete():
    global _disk, _view
    if _size <= 0:
        raise RuntimeError("size: required (for example size=256M)")
    _disk = bytearray(_size)
    _view = memoryview(_disk)


def thread_model():
    return nbdkit.THREAD_MODEL_PARALLEL


def open(readonly):
    return 1


def get_size(h):
    return _size


def can_write(h):
    return True


def can_multi_conn(h):
    # One bytearray shared by every connection: a completed write is seen by all.
    return True


def pread(h, buf, offset, flags):
    buf[:] = _view[offset:offset + len(buf)]


def pwrite(h, buf, offset, flags):
    _view[offset:offset + len(buf)] = buf
