"""The device: the facade the plugin calls.  It owns the page store and (with ``workers``
> 0) the kcompressd dispatcher, and it is the one place that decides whether a write is
compressed inline or handed off.

The dispatcher is handed in (``offload``: uzram.kcompressd.dispatcher.Dispatcher, or a
class like it), so that the core imports nothing of the layers above it.

Life cycle under nbdkit (uzram.nbd.plugin): ``Device(config, offload)`` at config_complete
(the configuration is checked), ``start()`` at after_fork (the store's memory, threads and
worker processes), ``close()`` at cleanup.  ``control_handlers()`` are what the plugin's
control endpoint answers.

The store is made in ``start``: nbdkit --swap locks memory between get_ready and
after_fork, and mappings made before that would be faulted in and locked whole (the
arena's whole address range).  ``start`` first asks for locking page by page as memory
is touched (uzram.shm.lock_future_on_fault).  With ``mlock=1`` (what ``uzram swap on``
uses instead of --swap) ``start`` locks the process itself, on fault, current mappings
included (uzram.shm.lock_all_on_fault): nbdkit --swap would fault in and lock every
mapping it finds, nbdkit's own 192 MiB of static buffers among them.

The zram attributes (uzram.core.attrs, ``uzram ctl``) call the methods under "zram's
attributes" below.  Those that work through the stored pages (writeback, recompress,
compact, idle, reset, disksize) run one at a time (``maintenance``, a lock) and off the
request path: on the control endpoint's maintenance thread.
"""

import contextlib
import errno
import os
import resource
import sys
import threading

from . import attrs, postproc, ratelog, shm
from .backing import BackingFile
from .codecs import parse_algorithm
from .config import Config
from .errors import InvalidRequestError
from .stats import Stats, cpu_seconds
from .store import PageStore

CLEAN_TICK = 0.25       # a write-free stretch this long is an idle moment, for cleaning
CLEAN_PAUSE = 0.002     # between two steps of cleaning: the store's lock is free for requests


class ClientGate:
    """The device's NBD clients, and the attribute writes that need none connected (zram
    refuses reset, disksize and backing_dev while the disk is open).

    The plugin calls ``enter`` in open and ``leave`` in close.  ``exclusive(attr)`` checks
    that no client is connected and keeps new ones out until the write is done: a client
    that opens meanwhile waits in ``enter``, so no client sees a device half reset, and no
    write lands between the check and the reset."""

    def __init__(self):
        self._cond = threading.Condition()
        self.count = 0
        self.shut = False             # an exclusive write is running: clients wait

    def enter(self):
        with self._cond:
            while self.shut:
                self._cond.wait()
            self.count += 1

    def leave(self):
        with self._cond:
            self.count -= 1

    @contextlib.contextmanager
    def exclusive(self, attr):
        with self._cond:
            n = self.count
            if n:
                raise attrs.AttrError(attr, f"{n} client{'s' if n > 1 else ''} connected (disconnect first)",
                                      errno.EBUSY)
            self.shut = True
        try:
            yield
        finally:
            with self._cond:
                self.shut = False
                self._cond.notify_all()


class Device:
    def __init__(self, config: Config, offload=None):
        """``offload(store, config, log)`` makes the dispatcher (for ``workers`` > 0); it has
        ``lanes_per_worker`` (arena lanes each worker writes in) and start, stop, staged,
        flush, accepting, counters, worker_pids and pool."""
        if config.workers and offload is None:
            raise ValueError("workers > 0 needs an offload (the kcompressd dispatcher)")
        self.config = config
        self.offload = offload if config.workers else None
        self.codec = config.codec()
        self.store = None
        self.dispatcher = None
        self.reads = self.writes = 0
        self.activity = 0                 # requests that change pages, counted as they arrive (the cleaner's)
        self.bytes_read = self.bytes_written = 0
        self.failed_reads = self.failed_writes = self.invalid_io = 0
        self.writestall = 0
        self.locked_on_fault = False
        self.log = ratelog.RateLimitedLog(config.name)
        self._stalling = False
        self.clients = ClientGate()       # the plugin enters and leaves it in open and close
        self.thread_states = lambda: 0    # the plugin's count of pinned thread states
        self.on_new_store = None          # called after ``resize`` made a new store (the plugin's reader)
        self.maintenance = threading.Lock()
        self.writeback_limit = 0          # 4 KiB pages, as zram's bd_wb_limit
        self.writeback_limit_enable = False
        self._recomp = {i + 1: parse_algorithm(a) for i, a in enumerate(config.recomp_algorithm)}
        self._clock = None
        self._cleaner = None
        self._cleaner_stop = threading.Event()

    # -------------------------------------------------------------- life cycle

    def control_handlers(self):
        """What the control endpoint answers (uzram.nbd.control): command -> function of
        the rest of the line; and the commands that run on its maintenance thread."""
        handlers = {
            "stats": lambda arg: self.stats().to_dict(),
            "compact": lambda arg: self._compact_cmd(),
            "ping": lambda arg: {"ok": True, "pid": os.getpid()},
            "workers": lambda arg: {"pids": self.dispatcher.worker_pids() if self.dispatcher else []},
            "attrs": lambda arg: {"attrs": attrs.listing(self)},
            "get": lambda arg: {"value": attrs.get(self, arg.strip())},
            "set": self._set_cmd,
        }
        return handlers, {"compact", "set"}

    def _set_cmd(self, arg):
        name, _, value = arg.strip().partition(" ")
        return {"done": attrs.put(self, name, value)}

    def start(self):
        if self.config.mlock:
            # For swap: lock the process here rather than with nbdkit --swap, on fault (what
            # is used, as it is used), before the store's memory is mapped.
            self.locked_on_fault = shm.lock_all_on_fault()
            if not self.locked_on_fault:
                sys.stderr.write("uzram: warning: mlock=1: mlockall failed (needs CAP_IPC_LOCK or "
                                 "a large enough RLIMIT_MEMLOCK); nbdkit runs unlocked\n")
        elif shm.locked_in_memory():
            self.locked_on_fault = shm.lock_future_on_fault()
        self._build()
        self._cleaner = threading.Thread(target=self._clean_when_idle, name="uzram-clean", daemon=True)
        self._cleaner.start()

    def _clean_when_idle(self):
        """The cleaner thread: once a CLEAN_TICK passes without a write, trim or zero, the
        store cleans its dead bytes a pass at a time (PageStore.clean_idle_step), a step of
        a few segments under its lock, CLEAN_PAUSE between steps: a request that came
        meanwhile takes the lock there, so it waits for one step at most, and the pass
        stops for the next tick.  Each step takes the maintenance lock (never blocking on
        it), so a maintenance command (compact, writeback, recompress, ...) waits for one
        step at most, and none runs beside it."""
        shm.set_thread_name("uzram-clean")

        seen = self.activity
        while not self._cleaner_stop.wait(CLEAN_TICK):
            before, seen = seen, self.activity
            going = False
            while before == self.activity and self._clean_step(going):
                going = True
                if self._cleaner_stop.wait(CLEAN_PAUSE):
                    return

    def _clean_step(self, going):
        if not self.maintenance.acquire(blocking=False):
            return False
        try:
            return self.store is not None and self.store.clean_idle_step(going)
        except Exception as e:      # a bug here must not go unseen, nor stop the device
            self.log.event("clean-failed", f"cleaning dead bytes failed ({type(e).__name__}: {e})", level="error")
            return False
        finally:
            self.maintenance.release()

    def _build(self):
        """The store (with its backing file) and the dispatcher, for the configuration now."""
        c = self.config
        lanes = c.workers * self.offload.lanes_per_worker if self.offload else 0
        store = PageStore(c.size, self.codec, mem_limit=c.mem_limit,
                          max_pending=c.max_pending if c.workers else 0, lanes=lanes,
                          lock=self.locked_on_fault, clock=self._clock)
        if c.backing_dev:
            try:
                store.backing = BackingFile(c.backing_dev, c.size, log=self.log)
            except Exception:
                store.close()
                raise
        store.arena.file.log = self.log
        if store.ring is not None:
            store.ring.file.log = self.log
        self.store = store
        self._clock = store.clock
        if self.offload is not None:
            self.dispatcher = self.offload(self.store, c, log=self.log)
            self.dispatcher.start()

    def _teardown(self):
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None
        if self.store is not None:
            if self.store.backing is not None:
                self.store.backing.close()
            self.store.close()

    def close(self):
        self._cleaner_stop.set()
        if self._cleaner is not None:
            self._cleaner.join()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.store is not None and self.store.backing is not None:
            self.store.backing.close()
        self.log.flush()

    # -------------------------------------------------------------- requests

    def _failed(self, e, kind):
        if getattr(e, "errno", None) == errno.ENOSPC:
            self.log.event("enospc", f"a write was refused with ENOSPC: mem_limit {self.config.mem_limit} bytes "
                           "reached (it keeps serving; trim, or raise mem_limit)", level="error")
        if isinstance(e, InvalidRequestError):
            self.invalid_io += 1
        if kind == "read":
            self.failed_reads += 1
        else:
            self.failed_writes += 1

    def read(self, buf, offset):
        try:
            self.store.read(buf, offset)
        except Exception as e:
            self._failed(e, "read")
            raise
        self.reads += 1
        self.bytes_read += len(buf)

    def nbdkit_pread(self, general):
        """The plugin's ``pread``: the store's one-frame reader (PageStore.reader)."""
        return self.store.reader(general, self)

    def write(self, buf, offset, fua=False):
        """Hand the write to kcompressd when a worker runs and the pending ring has room,
        else compress it inline (with workers configured, counted as ``writestall``)."""
        self.activity += 1
        try:
            d = self.dispatcher
            if d is None:
                self.store.write(buf, offset)
            else:
                end = self.store.stage(buf, offset) if d.accepting else None
                if end is None:
                    self.writestall += 1
                    if not self._stalling:
                        self._stalling = True
                        why = self._stall_reason(d.accepting)
                        self.log.event("writestall", f"writestall: {why}; writers compress inline")
                    self.store.write(buf, offset)
                else:
                    self._stalling = False
                    d.staged(end, fua)
        except Exception as e:
            self._failed(e, "write")
            raise
        self.writes += 1
        self.bytes_written += len(buf)

    def _stall_reason(self, accepting):
        """Why a write was not queued (``PageStore.refused``), for the log."""
        if not accepting:
            return "no kcompressd worker is running"
        if self.store.refused == "mem_limit":
            return f"mem_limit {self.store.mem_limit} bytes leaves no room to queue pages"
        return f"the pending area is full (max_pending {self.config.max_pending} bytes)"

    def trim(self, offset, count, fua=False):
        self.activity += 1
        try:
            self.store.trim(offset, count)
        except Exception as e:
            self._failed(e, "write")
            raise

    def zero(self, offset, count, may_trim=False, fua=False):
        self.activity += 1
        try:
            self.store.zero(offset, count, may_trim=may_trim)
        except Exception as e:
            self._failed(e, "write")
            raise

    def flush(self):
        """Returns once every write completed before it is stored compressed."""
        if self.dispatcher is not None:
            self.dispatcher.flush()

    def extents(self, offset, count):
        return self.store.extents(offset, count)

    def compact(self):
        return self.store.compact()

    def _compact_now(self):
        """compact, one maintenance job at a time: (pages moved, bytes freed)."""
        with self.maintenance:
            return self.compact()

    def _compact_cmd(self):
        moved, freed = self._compact_now()
        return {"moved_pages": moved, "bytes_freed": freed}

    # -------------------------------------------------------------- zram's attributes

    def connections(self):
        return self.clients.count

    @contextlib.contextmanager
    def _idle_device(self, attr, empty=False):
        """Run the block with no client connected and none let in (``ClientGate``), and,
        with ``empty``, only while the device holds no data: else AttrError EBUSY, as zram
        refuses while the device is open or initialised.  Under the maintenance lock."""
        with self.maintenance, self.clients.exclusive(attr):
            if empty and self.store.n_stored:
                raise attrs.AttrError(attr, f"the device holds {self.store.n_stored} pages (write reset=1 first)",
                                      errno.EBUSY)
            yield

    def compact_cmd(self):
        moved, freed = self._compact_now()
        return f"{moved} pages moved, {freed} bytes freed"

    def resize(self, size):
        from .config import KEYS
        try:
            KEYS["size"].parse(size)
        except Exception as e:
            raise attrs.AttrError("disksize", str(e).partition(": ")[2]) from None
        with self._idle_device("disksize", empty=True):
            old, old_store = self.config.size, self.store
            self._teardown()
            self.config.size = size
            try:
                self._build()
            except Exception:
                # (a backing file that cannot take the new size, workers that do not
                # start): the device comes back as it was, empty, and the write fails
                if self.store is not old_store:
                    self._teardown()           # what was built of the new one
                self.config.size = old
                self._build()
                raise
            finally:
                if self.on_new_store is not None:
                    self.on_new_store()

    def set_algorithm(self, codec):
        self.codec = self.store.codec = codec
        self.config.algorithm = f"{codec.name}:{codec.level}" if codec.level is not None else codec.name
        self.config.level = None

    def recomp_codecs(self):
        return sorted(self._recomp.items())

    def set_recomp_algorithm(self, prio, codec):
        self._recomp[prio] = codec

    def set_mem_limit(self, limit):
        with self.maintenance:
            self.store.mem_limit = self.config.mem_limit = limit
            self.store.fit_limit()

    def reset_mem_used_max(self):
        with self.store.lock:
            self.store.mem_used_max = self.store.mem_used

    def mark_idle(self, age):
        with self.maintenance:
            n = postproc.mark_idle(self.store, age)
        return f"{n} pages idle"

    def backing_path(self):
        return self.store.backing.path if self.store.backing is not None else ""

    def set_backing_dev(self, path):
        with self._idle_device("backing_dev", empty=True):
            old = self.store.backing
            self.store.backing = BackingFile(path, self.config.size, log=self.log) if path and path != "none" else None
            if old is not None:
                old.close()
            self.config.backing_dev = self.store.backing.path if self.store.backing else None

    def writeback(self, mode, ranges):
        """Write back the pages ``mode`` selects in each of ``ranges`` ([(lo, hi)], hi None:
        to the end), within writeback_limit when it is enabled."""
        if self.store.backing is None:
            raise attrs.AttrError("writeback", "no backing_dev (set backing_dev=PATH first)", errno.ENODEV)
        with self.maintenance:
            held = self.store.mem_used
            limit = self.writeback_limit if self.writeback_limit_enable else None
            if limit == 0:
                raise attrs.AttrError("writeback", "writeback_limit is 0", errno.EIO)
            written, stopped, failed = 0, None, None
            try:
                for lo, hi in ranges:
                    n, stopped = postproc.writeback(self.store, mode, lo, hi,
                                                    None if limit is None else limit - written)
                    written += n
                    if stopped:
                        break
            except postproc.WritebackFailed as e:
                written += e.written
                failed = e
            finally:
                if self.writeback_limit_enable:
                    self.writeback_limit = max(0, self.writeback_limit - written)
                self.compact()                      # the blobs' memory goes back now
            now = self.store.mem_used
        done = f"{written} pages written back; mem_used_total {held} -> {now} after compaction"
        if failed is not None:
            raise attrs.AttrError("writeback", f"{failed}; {done}", errno.EIO)
        if stopped == "limit":
            raise attrs.AttrError("writeback", f"writeback_limit reached: {done}", errno.EIO)
        if stopped == "full":
            raise attrs.AttrError("writeback", f"the backing file is full: {done}", errno.ENOSPC)
        return done

    def recompress(self, mode, threshold, max_pages, algo, prio):
        configured = self.recomp_codecs()
        if not configured:
            raise attrs.AttrError("recompress", "no recomp_algorithm is set (recomp_algorithm=algo=zstd priority=1)")
        codecs = configured
        if algo is not None:
            name, _, level = algo.partition(":")
            codecs = [(p, c) for p, c in configured if c.name == name and (not level or str(c.level) == level)]
            if not codecs:
                raise attrs.AttrError("recompress", f"algo={algo} is not a recomp_algorithm")
            codecs = codecs[:1]
        if prio is not None:
            codecs = [(p, c) for p, c in codecs if p == prio]
            if not codecs:
                raise attrs.AttrError("recompress", f"priority={prio} has no recomp_algorithm")
        with self.maintenance:
            held = self.store.mem_used
            out = postproc.recompress(self.store, codecs, mode, threshold, max_pages,
                                      offload=self.dispatcher, highest=configured[-1][0])
            self.compact()
            now = self.store.mem_used
        return (f"{out['recompressed']} of {out['tried']} pages recompressed, {out['saved_bytes']} bytes saved, "
                f"{out['incompressible']} incompressible; mem_used_total {held} -> {now} after compaction"
                + ("; stopped at mem_limit (no room for the next batch's new blobs beside its old ones)"
                   if out["stopped"] else ""))

    def reset(self):
        with self._idle_device("reset"):
            self.flush()
            self.store.clear()
            self.reads = self.writes = self.bytes_read = self.bytes_written = 0
            self.failed_reads = self.failed_writes = self.invalid_io = self.writestall = 0

    # -------------------------------------------------------------- statistics

    def stats(self):
        d = self.store.counters()
        d["recomp_algorithm"] = ",".join(
            f"{c.name}:{c.level}" if c.level is not None else c.name for _, c in self.recomp_codecs())
        d.update(
            name=self.config.name,
            failed_reads=self.failed_reads, failed_writes=self.failed_writes, invalid_io=self.invalid_io,
            algorithm=f"{self.codec.name}:{self.codec.level}" if self.codec.level is not None else self.codec.name,
            reads=self.reads, writes=self.writes, bytes_read=self.bytes_read, bytes_written=self.bytes_written,
            workers=self.config.workers, connections=self.connections(), thread_states=self.thread_states(),
            writestall=self.writestall,
            request_cpu_seconds=round(cpu_seconds(resource.RUSAGE_SELF), 3),
            shared_bytes=self.store.arena.file.allocated() + (
                self.store.ring.file.allocated() if self.store.ring is not None else 0),
        )
        if self.dispatcher is not None:
            d.update(self.dispatcher.counters())
            pool = self.dispatcher.pool
            d.update(worker_start_failures=pool.start_failures, worker_error=pool.last_error)
        return Stats.from_dict(d)
