"""Keep one Python thread state per nbdkit connection thread, instead of one per request.

nbdkit's Python plugin wraps every callback in PyGILState_Ensure / PyGILState_Release.
nbdkit's threads are not Python threads, so each Ensure creates a thread state and each
Release destroys it, and with it the 16 KiB stack that Python 3.11 maps for the thread's
frames: an mmap, page faults and an munmap (with TLB shoot-down) on every request.
perf on a server under 4 KiB reads showed them in both uzram and the bare plugin.

``pin()`` calls PyGILState_Ensure once more from inside a callback, so nbdkit's own
Release leaves the count at one and the thread state lives on; ``unpin(token)`` gives
that count back, and nbdkit's next Release then destroys the state as before.  The
plugin pins in ``open`` and unpins in ``close``.  Its thread model is SERIALIZE_REQUESTS,
so nbdkit calls both, and every request between them, on the connection's own thread,
whatever ``--threads`` says.  A thread that exits pinned (nbdkit shutting down without
calling close) leaves its state to Py_Finalize.

PyGILState_Ensure and PyGILState_Release are CPython's public C API; ``ctypes.pythonapi``
calls them with the GIL held, as they require.
"""

import ctypes
import threading

_ensure = ctypes.pythonapi.PyGILState_Ensure
_ensure.restype = ctypes.c_int
_release = ctypes.pythonapi.PyGILState_Release
_release.argtypes = [ctypes.c_int]
_release.restype = None

_count_lock = threading.Lock()
pinned = 0   # thread states pinned now (the device's thread_states statistic)


class Pin:
    """What ``pin`` returns: the Ensure state to give back, and the thread it belongs to."""

    __slots__ = ("state", "thread")

    def __init__(self, state, thread):
        self.state = state
        self.thread = thread


def pin():
    global pinned
    token = Pin(_ensure(), threading.get_ident())
    with _count_lock:
        pinned += 1
    return token


def unpin(token):
    """Give back ``pin``'s count.  Only on the thread that pinned (else: nothing)."""
    global pinned
    if token is None or token.thread != threading.get_ident():
        return False
    _release(token.state)
    token.thread = None
    with _count_lock:
        pinned -= 1
    return True
