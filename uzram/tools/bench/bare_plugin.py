"""The baseline ``uzram bench`` compares against: the least a Python nbdkit plugin can do.

One bytearray, slice copies (through a memoryview, so no temporary) in pread/pwrite, nothing
else (no compression, no page table, no locking beyond the GIL).  uzram's speed targets are
ratios to this plugin.

    nbdkit -f -U SOCK python uzram/tools/bench/bare_plugin.py size=256M [pin=1]

With ``pin=1`` it also keeps one Python thread state per connection, as uzram's plugin
does (uzram/nbd/threadstate.py; the same few lines are copied here so that this file stays
on its own): the least a Python plugin can do once it avoids nbdkit making and
destroying a thread state for every request.
"""

import nbdkit

API_VERSION = 2

_size = 0
_pin = False
_disk = None
_view = None

_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}


def config(key, value):
    global _size, _pin
    if key == "pin":
        _pin = value == "1"
        return
    if key != "size":
        raise RuntimeError(f"unknown key {key!r} (the keys are size and pin)")
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
    if not _pin:
        return None
    import ctypes
    return ctypes.pythonapi.PyGILState_Ensure()   # nbdkit's Release now leaves the state alive


def close(h):
    if h is not None:
        import ctypes
        ctypes.pythonapi.PyGILState_Release(h)


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
