"""The kcompressd dispatcher: hands staged pages to worker processes over ZeroMQ.

Writers (nbdkit's request threads) stage their pages in the store's pending area and
append the Batch to a queue; they return at once.  One dispatcher thread owns the ROUTER
socket and everything about workers:

- it packs queued batches into jobs of at most ``batch_pages`` pages (several small
  requests share one message), dropping pages overwritten or trimmed since staging
  (they are never compressed), and sends each job to a worker with credit;
- it installs each RESULT through the store, which drops pages whose generation moved on
  (so an older result never overwrites a newer write);
- it watches the workers (process exit, silence past LIVENESS): a dead or failing
  worker's in-flight jobs are sent again (compression is idempotent) and the worker is
  respawned with backoff; with no worker alive it compresses queued jobs itself, and
  writers compress inline, so writes always make progress.

Malformed messages are counted and dropped.  All timing uses an injectable clock.
"""

import collections
import itertools
import os
import resource
import subprocess
import threading
import time

import numpy as np
import zmq

from . import protocol
from .codecs import KNOWN_IDS, compress_pages
from .constants import PAGE_SIZE
from .errors import ProtocolError, UzramError
from .stats import cpu_seconds, process_cpu_seconds
from .store import Batch

MAX_TRIES = 3            # a job failed this many times more is compressed by the dispatcher
CREDIT = 2               # jobs in flight per worker
LIVENESS = 3.0           # seconds of silence (with jobs in flight) before a worker counts as dead
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0
STABLE_AFTER = 10.0      # a worker alive this long resets the backoff
TICK = 0.1
MAX_DELAY = 0.003        # a partly filled job waits at most this long for more pages


class _Job:
    __slots__ = ("id", "batch", "keys", "tries")

    def __init__(self, job_id, batch, keys):
        self.id = job_id
        self.batch = batch
        self.keys = keys
        self.tries = 0    # times sent again after a failure


class _Worker:
    __slots__ = ("index", "proc", "identity", "ready", "inflight", "last_heard", "started", "pid")

    def __init__(self, index, proc, now):
        self.index = index
        self.proc = proc
        self.pid = proc.pid
        self.identity = None
        self.ready = False
        self.inflight = {}
        self.last_heard = now
        self.started = now


class Dispatcher:
    def __init__(self, store, config, clock=time.monotonic):
        self.store = store
        self.config = config
        self.clock = clock
        self.codec = store.codec
        self.batch_pages = config.batch_pages
        self.endpoint = f"ipc://{os.path.join(config.runtime_dir, 'kcompressd.sock')}"
        self.python = config.python or "python3"
        self.nworkers = config.workers
        self.mlock = getattr(config, "mlock", False)
        self._queue = collections.deque()        # (key, Batch, time, pages) staged, not yet in a job
        self._queued_pages = 0
        self._urgent = 0                         # flushes and FUA writes waiting
        self._sleeping = False                   # the dispatcher is (about to be) in poll() and could send
        self._retry = collections.deque()        # jobs to send again
        self._cond = threading.Condition()
        self._outstanding = {}                   # key -> stage seq, until installed or dropped
        self._keys = itertools.count(1)
        self._job_ids = itertools.count(1)
        self._workers = {}                       # index -> _Worker
        self._by_identity = {}
        self._respawn_at = {}                    # index -> time
        self._backoff = {}
        self._running = False
        self._alive = 0
        self._thread = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        # statistics
        self.batches_sent = 0
        self.resent_jobs = 0
        self.worker_restarts = 0
        self.bad_messages = 0
        self.bad_results = 0                     # RESULTs whose spot check failed
        self.compressed_here = 0                 # pages the dispatcher compressed itself
        self.writestall = 0

    # ------------------------------------------------------------ writer side

    def write(self, buf, offset, fua=False):
        # The hand-off takes no lock: deque appends, dict stores and next() on a counter
        # are atomic in CPython, and a lock here made request threads queue for the GIL.
        if not self._alive:
            self.store.write(buf, offset)      # no worker to hand to: compress inline
            self.writestall += 1
            return
        batch, stalled = self.store.write(buf, offset, stage=True)
        if stalled:
            self.writestall += 1
        if batch is None:
            return
        now = self.clock()
        n = len(batch)
        step = self.batch_pages
        parts = [batch] if n <= step else [
            Batch(batch.pages[i:i + step], batch.gens[i:i + step], batch.slots[i:i + step], batch.seq)
            for i in range(0, n, step)]
        keys = []
        for part in parts:
            key = next(self._keys)
            self._outstanding[key] = batch.seq
            self._queue.append((key, part, now, len(part.pages)))
            keys.append(key)
        self._queued_pages += n      # a hint for batching; races only blur it
        if self._sleeping and self._queued_pages >= step:
            self._wake()    # otherwise the dispatcher looks again within MAX_DELAY
        if fua:
            outstanding = self._outstanding
            self._wait(lambda: not any(k in outstanding for k in keys))

    def flush(self):
        """Return once every write staged before this call is installed (or superseded)."""
        upto = self.store.stage_seq
        self._wait(lambda: not any(seq <= upto for seq in list(self._outstanding.values())))

    def _wait(self, done):
        with self._cond:
            if done():
                return
            self._urgent += 1
            self._wake()
            try:
                while not done():
                    if not self._running:
                        raise UzramError("kcompressd dispatcher stopped")
                    self._cond.wait(1.0)
            finally:
                self._urgent -= 1

    def _wake(self):
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass

    # ------------------------------------------------------------ life cycle

    def start(self):
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        path = self.endpoint[len("ipc://"):]
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            self._sock.bind(self.endpoint)
        finally:
            os.umask(old)
        self._running = True
        self._thread = threading.Thread(target=self._run, name="uzram-dispatcher", daemon=True)
        self._thread.start()

    def stop(self):
        self._running = False
        self._wake()
        if self._thread is not None:
            self._thread.join(10)
        for w in list(self._workers.values()):
            self._kill(w)
        with self._cond:
            self._cond.notify_all()

    @property
    def workers_alive(self):
        """Workers running and registered (READY received), as of the last check (every
        TICK, and at once when one registers or is found dead)."""
        return self._alive

    def _count_alive(self):
        self._alive = sum(1 for w in list(self._workers.values()) if w.ready and w.proc.poll() is None)

    # ------------------------------------------------------------ the dispatcher thread

    def _run(self):
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        for i in range(self.nworkers):
            self._spawn(i)
        last_check = 0.0
        try:
            while self._running:
                # With every worker at its credit there is nothing to do until a RESULT
                # arrives (the socket wakes the poll) or a worker needs watching; waking
                # up sooner (every MAX_DELAY, or at each writer's nudge) only spun this
                # thread and took the GIL from the request threads.
                can_send = bool(self._with_credit())
                self._sleeping = can_send
                timeout = TICK
                if (self._queue or self._retry) and (can_send or not self._any_ready()):
                    timeout = 0.0 if self._urgent or self._retry else min(TICK, MAX_DELAY)
                events = dict(poller.poll(timeout * 1000))
                self._sleeping = False
                if self._wake_r in events:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                if self._sock in events:
                    self._receive()
                now = self.clock()
                if now - last_check >= TICK:
                    self._watch(now)
                    last_check = now
                self._dispatch(now)
        finally:
            self._sock.close(0)
            self._ctx.term()
            for w in list(self._workers.values()):
                self._kill(w)
            os.close(self._wake_r)

    def _spawn(self, index):
        argv = [self.python, "-m", "uzram.kcompressd", "--endpoint", self.endpoint, "--index", str(index),
                "--parent", str(os.getpid())]
        if self.mlock:
            argv.append("--mlock")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
        try:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, close_fds=True)
        except OSError:
            self._respawn_at[index] = self.clock() + self._next_backoff(index)
            return
        self._workers[index] = _Worker(index, proc, self.clock())

    def _next_backoff(self, index):
        b = self._backoff.get(index, BACKOFF_MIN / 2) * 2
        b = min(max(b, BACKOFF_MIN), BACKOFF_MAX)
        self._backoff[index] = b
        return b

    def _kill(self, w):
        try:
            w.proc.kill()
        except OSError:
            pass
        try:
            w.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def _receive(self):
        sock = self._sock
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity, body = frames[0], frames[1:]
            try:
                msg = protocol.decode(body, KNOWN_IDS)
            except UzramError:
                self.bad_messages += 1
                w = self._by_identity.get(identity)
                if w is not None and w.inflight and len(body) >= 1:
                    # a bad frame answering a job fails that job: send it again elsewhere
                    job_id = _peek_job(body[0])
                    if job_id in w.inflight:
                        self._requeue(w.inflight.pop(job_id))
                continue
            now = self.clock()
            if msg.command == protocol.READY:
                self._on_ready(identity, msg, now)
                continue
            w = self._by_identity.get(identity)
            if w is None:
                self.bad_messages += 1        # not one of ours (or from before a restart)
                continue
            w.last_heard = now
            if msg.command == protocol.RESULT:
                self._on_result(w, msg)
            elif msg.command == protocol.FAILED:
                job = w.inflight.pop(msg.job, None)
                if job is not None:
                    self._requeue(job)
            elif msg.command == protocol.JOB:
                self.bad_messages += 1

    def _on_ready(self, identity, msg, now):
        w = self._workers.get(msg.count)
        if w is None or w.pid != msg.job:
            self.bad_messages += 1
            return
        if w.identity is not None:
            self._by_identity.pop(w.identity, None)
        w.identity = identity
        w.ready = True
        w.last_heard = now
        self._by_identity[identity] = w
        self._count_alive()

    def _on_result(self, w, msg):
        job = w.inflight.pop(msg.job, None)
        if job is None:
            return  # a late answer for a job already sent again: the retry installs it
        if msg.count != len(job.batch):
            self.bad_messages += 1
            self._requeue(job)
            return
        ids, lens, packed = protocol.result_arrays(msg)
        try:
            self.store.install_packed(job.batch, ids, lens, packed)
        except ProtocolError:        # the spot check failed: nothing was installed
            self.bad_results += 1
            self._requeue(job)
            return
        self._complete(job)

    def _complete(self, job):
        pop = self._outstanding.pop
        for key in job.keys:
            pop(key, None)
        if self._urgent:
            with self._cond:
                self._cond.notify_all()

    def _requeue(self, job):
        job.tries += 1
        if job.tries > MAX_TRIES:
            # Failed on every worker it went to: compress it here, so one job that
            # trips a worker bug (or a worker that is always wrong) cannot stall flush.
            self._compress_here(job)
            return
        self.resent_jobs += 1
        self._retry.append(job)

    def _watch(self, now):
        for index, w in list(self._workers.items()):
            dead = w.proc.poll() is not None
            silent = w.inflight and now - w.last_heard > LIVENESS
            if silent or (not w.ready and now - w.started > LIVENESS * 3):
                self._kill(w)
                dead = True
            if dead:
                for job in w.inflight.values():
                    self._requeue(job)
                w.inflight.clear()
                if w.identity is not None:
                    self._by_identity.pop(w.identity, None)
                del self._workers[index]
                if now - w.started > STABLE_AFTER:
                    self._backoff.pop(index, None)
                self._respawn_at[index] = now + self._next_backoff(index)
            elif now - w.started > STABLE_AFTER:
                self._backoff.pop(index, None)
        self._count_alive()
        for index, when in list(self._respawn_at.items()):
            if now >= when and self._running:
                del self._respawn_at[index]
                self.worker_restarts += 1
                self._spawn(index)

    def _next_job(self):
        """A job from the retry list, or one packed from queued batches.  The caller takes
        it through ``store.take_for_dispatch``, which drops pages gone stale meanwhile."""
        if self._retry:
            return self._retry.popleft()
        parts, keys, n = [], [], 0
        queue = self._queue
        limit = self.batch_pages
        while queue and n < limit:
            key, part, _, size = queue[0]
            if parts and n + size > limit:
                break
            queue.popleft()
            parts.append(part)
            keys.append(key)
            n += size
        self._queued_pages = self._queued_pages - n if queue else 0
        if not parts:
            return None
        batch = parts[0] if len(parts) == 1 else Batch(
            np.concatenate([p.pages for p in parts]), np.concatenate([p.gens for p in parts]),
            np.concatenate([p.slots for p in parts]), max(p.seq for p in parts))
        job = _Job(next(self._job_ids), batch, keys)
        return job

    def _with_credit(self):
        """Registered workers that can take another job."""
        return [w for w in self._workers.values() if w.ready and len(w.inflight) < CREDIT]

    def _any_ready(self):
        return any(w.ready for w in self._workers.values())

    def _dispatch(self, now):
        ready = self._with_credit()
        if not ready:
            if (self._queue or self._retry) and not self._any_ready():
                self._drain_inline()   # every worker dead or starting: make progress here
            return
        while ready:
            if not self._retry and not self._urgent and self._queued_pages < self.batch_pages:
                # A partly filled job waits for more pages while its oldest page is young:
                # full jobs cost the request path far less per page than prompt small ones
                # (pwrite has long returned; a flush or FUA write makes it urgent).
                if self._queue and now - self._queue[0][2] < MAX_DELAY:
                    return
            job = self._next_job()
            if job is None:
                return
            batch, raw = self.store.take_for_dispatch(job.batch)
            if not len(batch):
                self._complete(job)
                continue
            job.batch = batch
            w = min(ready, key=lambda x: len(x.inflight))
            w.inflight[job.id] = job
            self._sock.send_multipart([w.identity] + protocol.job(job.id, self.codec.codec_id, self.codec.level, raw),
                                      copy=len(raw) < 65536)
            self.batches_sent += 1
            if len(w.inflight) >= CREDIT:
                ready.remove(w)

    def _drain_inline(self):
        """No worker can take jobs: compress what is queued here, so nothing waits forever."""
        job = self._next_job()
        while job is not None:
            self._compress_here(job)
            job = self._next_job()

    def _compress_here(self, job):
        batch, raw = self.store.take_for_dispatch(job.batch)
        if len(batch):
            ids, blobs = compress_pages(self.codec, (raw[i:i + PAGE_SIZE] for i in range(0, len(raw), PAGE_SIZE)))
            self.store.install(batch, ids, blobs)
            self.compressed_here += len(batch)
        self._complete(job)

    # ------------------------------------------------------------ statistics

    def worker_cpu_seconds(self):
        total = cpu_seconds(resource.RUSAGE_CHILDREN)   # workers already reaped
        for w in list(self._workers.values()):
            try:
                total += process_cpu_seconds(w.pid)
            except (OSError, IndexError, ValueError):
                pass
        return total

    def counters(self):
        inflight = sum(len(w.inflight) for w in list(self._workers.values()))
        return dict(
            workers_alive=self.workers_alive,
            batches_queued=len(self._queue) + len(self._retry),
            batches_in_flight=inflight,
            batches_sent=self.batches_sent,
            resent_jobs=self.resent_jobs,
            worker_restarts=self.worker_restarts,
            bad_messages=self.bad_messages,
            bad_results=self.bad_results,
            compressed_here=self.compressed_here,
            writestall=self.writestall,
            worker_cpu_seconds=round(self.worker_cpu_seconds(), 3),
        )

    def worker_pids(self):
        return [w.pid for w in list(self._workers.values()) if w.ready and w.proc.poll() is None]


def _peek_job(head):
    try:
        return protocol.HEADER.unpack(bytes(head))[4]
    except Exception:
        return None
