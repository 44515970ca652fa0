"""The nbdkit plugin: a thin adapter.  Parse config, build a Device, forward calls, map
errors to errno with nbdkit.set_error.  It also owns what belongs to serving a name: the
name's lock and runtime directory (uzram.nbd.rundir) and the control endpoint
(uzram.nbd.control).

nbdkit loads a script, not a module of a package: ``uzram/nbd/nbdkit_plugin.py`` (the path
``uzram plugin-path`` prints) and ``plugin/uzram_plugin.py`` in a checkout find uzram and
then ``bind`` this module's callbacks into their own namespace, where nbdkit looks each
one up by name on every call.

    nbdkit python "$(uzram plugin-path)" size=1G algorithm=lz4 mem_limit=512M
    nbdkit python "$(uzram plugin-path)" --dump-plugin     # lists every key

nbdkit 1.32's Python plugin cannot extend ``--help`` (config_help is not supported for
Python plugins), so the keys are printed by ``--dump-plugin`` and by ``uzram serve --help``.
"""

import errno
import functools
import os
import sys

import nbdkit  # provided by the embedding nbdkit

from uzram.core.config import PLUGIN_KEYS, Config, config_help, key_syntax
from uzram.core.device import Device
from uzram.core.errors import UzramError
from uzram.kcompressd.dispatcher import Dispatcher
from uzram.nbd import rundir, threadstate
from uzram.nbd.control import ControlServer, ensure_private_dir

#: The interpreter that runs kcompressd workers when ``python=`` is not given (set by the
#: loader: the virtual environment's, when there is one).
DEFAULT_PYTHON = sys.executable
_namespaces = []          # the scripts' globals, where nbdkit looks the callbacks up

API_VERSION = 2
_config = Config()
_device = None
_owner = None
_control = None


def _fatal(message):
    """A user mistake in the configuration: one line, then exit (no traceback)."""
    sys.stderr.write(f"nbdkit: uzram: error: {message}\n")
    sys.stderr.flush()
    os._exit(1)


def dump_plugin():
    print("uzram_keys=" + " ".join(key_syntax(k) for k in PLUGIN_KEYS))
    print(config_help())


def config(key, value):
    try:
        _config.set(key, value)
    except UzramError as e:
        _fatal(e)


def config_complete():
    global _device
    if _config.python is None:
        _config.python = DEFAULT_PYTHON
    try:
        _config.complete()
        _device = Device(_config, offload=Dispatcher)
        _device.thread_states = lambda: threadstate.pinned
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
    # Before nbdkit binds its socket and forks, so that mistakes are reported at start:
    # the private runtime directory, the name's lock (one owner per name, for the server's
    # whole life: a second server stops here with the first one's pid), the control socket.
    global _owner, _control
    try:
        ensure_private_dir(_config.runtime_dir)
        _owner = rundir.Owner.acquire(_config.runtime_dir, _config.name)
        handlers, slow = _device.control_handlers()
        _control = ControlServer(_config.runtime_dir, handlers, slow)
        _control.bind()
    except UzramError as e:
        _fatal(e)


def after_fork():
    if _owner is not None:
        _owner.note_pid()          # nbdkit without -f forked after get_ready
    try:
        _device.start()
    except UzramError as e:
        _fatal(e)
    if _control is not None:
        _control.start()
    _install_reader()
    _device.on_new_store = _install_reader      # disksize= made a new store


def _install_reader():
    # reads are latency-bound: the store's one-frame reader (PageStore.reader), put where
    # nbdkit looks the callback up
    reader = _device.nbdkit_pread(functools.partial(_call, _device.read))
    for namespace in _namespaces:
        namespace["pread"] = reader


def cleanup():
    global _owner
    if _control is not None:
        _control.stop()
    if _device is not None:
        _device.close()
    if _owner is not None:
        _owner.release()           # removes the sockets and the lock
        _owner = None


def open(readonly):
    # A connection opening while ``uzram ctl NAME reset=1`` (or disksize=, backing_dev=)
    # runs waits here until it is done (Device.clients).  The connection's thread keeps one
    # Python thread state until close, instead of nbdkit making and destroying one per
    # request (see uzram/nbd/threadstate.py).
    _device.clients.enter()
    try:
        return threadstate.pin()
    except BaseException:
        _device.clients.leave()      # nbdkit calls no close for a failed open
        raise


def close(h):
    threadstate.unpin(h)
    _device.clients.leave()


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


#: What nbdkit calls, by name.
CALLBACKS = ("API_VERSION", "dump_plugin", "config", "config_complete", "thread_model", "get_ready",
             "after_fork", "cleanup", "open", "close", "get_size", "block_size", "is_rotational",
             "can_multi_conn", "can_write", "can_flush", "can_trim", "can_zero", "can_fast_zero", "can_fua",
             "can_extents", "pread", "pwrite", "flush", "trim", "zero", "extents")


def bind(namespace):
    """Put the callbacks into ``namespace`` (a script's globals, where nbdkit finds them)."""
    here = globals()
    for name in CALLBACKS:
        namespace[name] = here[name]
    _namespaces.append(namespace)
