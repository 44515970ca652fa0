"""nbdkit plugin for uzram: a thin adapter.  Parse config, build a Device, forward calls,
map errors to errno with nbdkit.set_error.

    nbdkit python plugin/uzram_plugin.py size=1G algorithm=lz4 mem_limit=512M
    nbdkit python plugin/uzram_plugin.py --dump-plugin     # lists every key

nbdkit 1.32's Python plugin cannot extend ``--help`` (config_help is not supported for
Python plugins), so the keys are printed by ``--dump-plugin`` and by ``uzram serve --help``.

uzram and its wheels are found in the virtual environment named by $UZRAM_VENV, else in
the repository's .venv next to this file.
"""

import errno
import functools
import glob
import os
import site
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _add_venv():
    venv = os.environ.get("UZRAM_VENV") or os.path.join(_ROOT, ".venv")
    for sp in glob.glob(os.path.join(venv, "lib", "python3*", "site-packages")):
        site.addsitedir(sp)
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)
    return venv


_VENV = _add_venv()

import nbdkit  # noqa: E402  (provided by the embedding nbdkit)

from uzram import threadstate  # noqa: E402
from uzram.config import KEYS, Config, config_help, key_syntax  # noqa: E402
from uzram.device import Device  # noqa: E402
from uzram.errors import UzramError  # noqa: E402

API_VERSION = 2
_config = Config()
_device = None


def _fatal(message):
    """A user mistake in the configuration: one line, then exit (no traceback)."""
    sys.stderr.write(f"nbdkit: uzram: error: {message}\n")
    sys.stderr.flush()
    os._exit(1)


def dump_plugin():
    print("uzram_keys=" + " ".join(key_syntax(k) for k in KEYS))
    print(config_help())


def config(key, value):
    try:
        _config.set(key, value)
    except UzramError as e:
        _fatal(e)


def config_complete():
    global _device
    if _config.python is None:
        candidate = os.path.join(_VENV, "bin", "python")
        _config.python = candidate if os.path.exists(candidate) else sys.executable
    try:
        _config.complete()
        _device = Device(_config)
    except UzramError as e:
        _fatal(e)


def thread_model():
    # One request at a time per connection, on the connection's own thread, however nbdkit
    # is started: nbdkit runs PARALLEL plugins' requests on --threads worker threads (16 by
    # default), which are not Python threads, get no lasting thread state and take turns for
    # the GIL.  Connections still run in parallel, each on its own pinned thread (open), so
    # every connection reads and writes the one store at once, and can_multi_conn holds.
    return nbdkit.THREAD_MODEL_SERIALIZE_REQUESTS


def get_ready():
    try:
        _device.prepare()
    except UzramError as e:
        _fatal(e)


def after_fork():
    global pread
    try:
        _device.start()
    except UzramError as e:
        _fatal(e)
    # reads are latency-bound: the store's one-frame reader (PageStore.reader)
    pread = _device.nbdkit_pread(functools.partial(_call, _device.read))


def cleanup():
    if _device is not None:
        _device.close()


def open(readonly):
    # The connection's thread keeps one Python thread state until close, instead of
    # nbdkit making and destroying one per request (see uzram/threadstate.py).
    return threadstate.pin()


def close(h):
    threadstate.unpin(h)


def get_size(h):
    return _config.size


def block_size(h):
    return (1, 4096, 32 * 1024 * 1024)


def is_rotational(h):
    return False


def can_multi_conn(h):
    # Every connection reads the one shared store, and a completed write (pending or
    # compressed) is visible to all of them at once.
    return True


def can_write(h):
    return True


def can_flush(h):
    return True


def can_trim(h):
    return True


def can_zero(h):
    return True


def can_fast_zero(h):
    return True


def can_fua(h):
    return nbdkit.FUA_NATIVE


def can_extents(h):
    return True


def _set_error(e):
    """Tell nbdkit the errno for ``e`` (then the callback re-raises it)."""
    nbdkit.set_error(e.errno if isinstance(e, UzramError) else errno.ENOMEM)


def _call(fn, *args):
    try:
        return fn(*args)
    except (UzramError, MemoryError) as e:
        _set_error(e)
        raise


def pread(h, buf, offset, flags):
    # Only until after_fork replaces it with the store's one-frame reader (nbdkit looks
    # the callback up by name on every request).
    return _call(_device.read, buf, offset)


def pwrite(h, buf, offset, flags):
    return _call(_device.write, buf, offset, bool(flags & nbdkit.FLAG_FUA))


def flush(h, flags):
    return _call(_device.flush)


def trim(h, count, offset, flags):
    return _call(_device.trim, offset, count, bool(flags & nbdkit.FLAG_FUA))


def zero(h, count, offset, flags):
    return _call(_device.zero, offset, count, bool(flags & nbdkit.FLAG_MAY_TRIM), bool(flags & nbdkit.FLAG_FUA))


def extents(h, count, offset, flags):
    out = _call(_device.extents, offset, count)
    if flags & nbdkit.FLAG_REQ_ONE:
        return out[:1]
    return out
