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
"""

import errno
import os
import resource
import sys

from . import ratelog, shm
from .config import Config
from .errors import InvalidRequestError
from .stats import Stats, cpu_seconds
from .store import PageStore


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
        self.bytes_read = self.bytes_written = 0
        self.failed_reads = self.failed_writes = self.invalid_io = 0
        self.writestall = 0
        self.locked_on_fault = False
        self.log = ratelog.RateLimitedLog(config.name)
        self._stalling = False
        self.connections = lambda: 0      # the plugin's count of pinned connections

    # -------------------------------------------------------------- life cycle

    def control_handlers(self):
        """What the control endpoint answers (uzram.nbd.control)."""
        return {
            "stats": lambda: self.stats().to_dict(),
            "compact": self._compact_cmd,
            "ping": lambda: {"ok": True, "pid": os.getpid()},
            "workers": lambda: {"pids": self.dispatcher.worker_pids() if self.dispatcher else []},
        }

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
        c = self.config
        lanes = c.workers * self.offload.lanes_per_worker if self.offload else 0
        self.store = PageStore(c.size, self.codec, mem_limit=c.mem_limit,
                               max_pending=c.max_pending if c.workers else 0, lanes=lanes,
                               lock=self.locked_on_fault)
        if self.offload is not None:
            self.dispatcher = self.offload(self.store, c, log=self.log)
            self.dispatcher.start()

    def close(self):
        if self.dispatcher is not None:
            self.dispatcher.stop()
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
                        self.log.event("writestall", "writestall: " + (
                            f"the pending area is full (max_pending {self.config.max_pending} bytes)"
                            if d.accepting else "no kcompressd worker is running") + "; writers compress inline")
                    self.store.write(buf, offset)
                else:
                    self._stalling = False
                    d.staged(end, fua)
        except Exception as e:
            self._failed(e, "write")
            raise
        self.writes += 1
        self.bytes_written += len(buf)

    def trim(self, offset, count, fua=False):
        try:
            self.store.trim(offset, count)
        except Exception as e:
            self._failed(e, "write")
            raise

    def zero(self, offset, count, may_trim=False, fua=False):
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

    def _compact_cmd(self):
        moved, freed = self.compact()
        return {"moved_pages": moved, "bytes_freed": freed}

    # -------------------------------------------------------------- statistics

    def stats(self):
        d = self.store.counters()
        d.update(
            name=self.config.name,
            failed_reads=self.failed_reads, failed_writes=self.failed_writes, invalid_io=self.invalid_io,
            algorithm=f"{self.codec.name}:{self.codec.level}" if self.codec.level is not None else self.codec.name,
            reads=self.reads, writes=self.writes, bytes_read=self.bytes_read, bytes_written=self.bytes_written,
            workers=self.config.workers, connections=self.connections(), writestall=self.writestall,
            request_cpu_seconds=round(cpu_seconds(resource.RUSAGE_SELF), 3),
            shared_bytes=self.store.arena.file.allocated() + (
                self.store.ring.file.allocated() if self.store.ring is not None else 0),
        )
        if self.dispatcher is not None:
            d.update(self.dispatcher.counters())
            pool = self.dispatcher.pool
            d.update(worker_start_failures=pool.start_failures, worker_error=pool.last_error)
        return Stats.from_dict(d)
