"""The kcompressd dispatcher: jobs out to worker processes, results in, flush and FUA waits.

Writers (nbdkit's request threads) stage their pages in the store's pending ring and
return (``PageStore.stage``); the device tells the dispatcher (``staged``).  One dispatcher
thread owns the ROUTER socket and talks to the workers, whose bookkeeping is the worker
pool's (uzram.pool):

- it cuts the ring's staged slots into jobs of at most ``batch_pages`` (a job is a range
  of slots, so several small requests share one message for free) and sends each to a
  worker with credit, with a window of that worker's lane in the arena to write into;
  a partly filled job waits up to MAX_DELAY for more pages unless a flush or FUA write
  is waiting, and a job whose pages were all cancelled is retired without a message;
- it checks each RESULT (``protocol.result_arrays``: sizes, IDs, the blobs' total inside
  the window; then the spot check below) and has the store install it, which keeps only
  pages still queued in their slot (so an older result never overwrites a newer write);
- a job that failed (a dead, silent or wrong worker) is sent again, to any worker, with
  a fresh window; after MAX_TRIES more failures, or while no worker is ready, the
  dispatcher compresses it itself, so writes and flushes always make progress.

The spot check: the first and the last page the RESULT compressed are decompressed from
the arena and compared with their slots (slots do not change while their job is out).  A
mismatch installs nothing and sends the job again (``bad_results``).  Two pages a job
catch a worker that is wrong about everything (a codec mix-up, blobs in the wrong places)
and any one wrong length (the blobs lie back to back, so it moves the last one) for about
2/``batch_pages`` of the compression cost.

Recompression (``recompress``, called by the device's maintenance thread) goes the same
way: a RECOMPRESS job names blobs in the arena and gets a window of a lane; its result is
checked (``protocol.recompressed_arrays``, then the first new blob decompressed and
compared with its source) and installed by ``postproc.install_worker_result``.  Staged
writes go first: a recompression job is sent only when no write job is due.  When no
worker runs, or the dispatcher stops, the maintenance thread does the batch itself.

The dispatcher holds the GIL while it checks and installs a RESULT and cuts the next
job: 0.3 to 0.5 ms a job on this 2-CPU machine, five to ten times what the same steps
cost in a warm loop (so each is few vectorized operations: a RESULT carries no offsets,
and where no slot of a job was cancelled its install trusts this process's copy of the
cancel bytes instead of comparing the page table).  A
request thread that arrives meanwhile waits for all of it, since each short release on
the way (ZeroMQ calls) is taken back before the waiting thread wakes.  So the dispatcher
sleeps YIELD between the steps (after a RESULT's check, and after the messages received
are handled, before the next job is cut), and a waiting request runs there.  These
stretches are what a serialized writer's slowest requests wait for (README, "Where the
slowest requests wait").

Malformed messages are counted and dropped.  All timing uses an injectable clock
(YIELD is a real sleep: it hands the GIL over, it measures nothing).
"""

import collections
import itertools
import os
import resource
import subprocess
import sys
import threading
import time

import numpy as np
import zmq

from . import pool as pool_mod
from . import protocol
from uzram.core import postproc, ratelog, shm
from uzram.core.codecs import KNOWN_IDS, compress_pages, decoder
from uzram.core.config import default_worker_nice
from uzram.core.constants import PAGE_SIZE
from uzram.core.errors import NoSpaceError, ProtocolError, UzramError
from uzram.core.stats import cpu_seconds, process_cpu_seconds

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds uzram/
WORKER_SILENCE = 10.0    # a worker that hears nothing from us this long leaves
MAX_TRIES = 3            # a job failed this many times more is compressed by the dispatcher
TICK = 0.1
MAX_DELAY = 0.003        # a partly filled job waits at most this long for more pages
GIVE_BACK_IDLE = 0.5     # an empty pending ring idle this long gives its memory back
YIELD = 100e-6           # the GIL handed to waiting request threads between the steps of a RESULT
RECEIVE_BATCH = 64       # messages handled before the loop watches, sends and polls again


class Job:
    __slots__ = ("id", "start", "count", "tries", "lane", "window", "capacity", "sent", "recompress")

    def __init__(self, job_id, start, count):
        self.id = job_id
        self.start = start       # ring position of its first slot
        self.count = count
        self.tries = 0           # times sent again after a failure
        self.lane = None
        self.window = 0
        self.capacity = 0
        self.sent = 0.0          # when it was last sent to a worker
        self.recompress = None   # a Recompression, for a RECOMPRESS job


class Recompression:
    """What a RECOMPRESS job carries, and how the maintenance thread learns its outcome."""

    __slots__ = ("batch", "codecs", "threshold", "auto", "mark", "done", "outcome", "abandoned")

    def __init__(self, batch, codecs, threshold, auto, mark):
        self.batch, self.codecs, self.threshold, self.auto, self.mark = batch, codecs, threshold, auto, mark
        self.done = threading.Event()
        self.outcome = None
        self.abandoned = False   # the maintenance thread did it itself


class Dispatcher:
    lanes_per_worker = pool_mod.CREDIT        # arena lanes a worker writes in (one per job it holds)

    def __init__(self, store, config, clock=time.monotonic, log=None):
        self.store = store
        self.ring = store.ring
        self.config = config
        self.clock = clock
        self.batch_pages = config.batch_pages
        self.worker_nice = (config.worker_nice if config.worker_nice is not None   # (a Config not completed)
                            else default_worker_nice(config.workers))
        self.endpoint = f"ipc://{os.path.join(config.runtime_dir, 'kcompressd.sock')}"
        self.python = config.python or sys.executable
        self.mlock = getattr(config, "mlock", False)
        self.log = log or ratelog.RateLimitedLog(getattr(config, "name", "uzram"))
        self.pool = pool_mod.WorkerPool(config.workers, self._launch, clock, log=self._pool_log)
        self._retry = []                         # jobs to send again
        self._urgent = 0                         # flushes and FUA writes waiting
        self._sleeping = False                   # in poll() with credit to send: a writer may wake it
        self._idle = False                       # ... and with nothing queued: the next write wakes it
        self._full_since = 0.0                   # when the arena last had no room for a job here
        self._since = None                       # when staged slots were first seen waiting
        self._idle_since = None
        self._cond = threading.Condition()
        self._job_ids = itertools.count(1)
        self._running = False
        self._crashed = False
        self._drain_lock = threading.Lock()
        self._thread = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._decoders = {}
        # statistics
        self.batches_sent = 0
        self.resent_jobs = 0
        self.bad_messages = 0
        self.bad_results = 0                     # RESULTs that failed their check
        self.compressed_here = 0                 # pages the dispatcher compressed itself
        self.recompress_sent = 0                 # RECOMPRESS jobs sent to workers
        self._recompress = collections.deque()   # RECOMPRESS jobs not yet sent (guarded by _cond)

    # ------------------------------------------------------------ writer side

    @property
    def accepting(self):
        """A worker is registered and running: staged pages will be compressed."""
        return self.pool.alive > 0

    def staged(self, end, fua):
        """A writer staged pages up to ring position ``end`` (0: none)."""
        if not end:
            return
        ring = self.ring
        if self._sleeping and (self._idle or ring.head - ring.sent >= self.batch_pages):
            self._wake()     # a full job, or the first pages after a pause: else it looks within MAX_DELAY
        if fua:
            self._wait(lambda: ring.tail >= end)

    def flush(self):
        """Return once every write staged before this call is installed (or superseded)."""
        ring = self.ring
        upto = ring.head
        self._wait(lambda: ring.tail >= upto)

    def recompress(self, batch, codecs, threshold, auto, mark):
        """Recompress ``batch`` (uzram.core.postproc.RecompressBatch) on a worker and return
        its outcome once installed.  Called from the device's maintenance thread, which
        does the batch itself (postproc.recompress_here) when no worker is alive or the
        dispatcher stops before the job is installed."""
        job = Job(next(self._job_ids), 0, len(batch))
        job.recompress = r = Recompression(batch, codecs, threshold, auto, mark)
        with self._cond:
            self._recompress.append(job)
        self._wake()
        while not r.done.wait(0.2):
            with self._cond:
                if r.done.is_set():
                    break
                queued = job in self._recompress
                if not self._running or (queued and not self.accepting):
                    if queued:
                        self._recompress.remove(job)
                    r.abandoned = True
                    break
        if r.abandoned:
            return postproc.recompress_here(self.store, batch, codecs, threshold, auto, mark)
        return r.outcome

    def _wait(self, done):
        if done():
            return
        with self._cond:
            self._urgent += 1
            self._wake()
            try:
                while not done():
                    if not self._running:
                        if self._crashed:
                            try:
                                self._drain_after_stop()   # a write staged as the dispatcher went
                            except UzramError:
                                pass                       # the error below says it
                            if done():
                                return
                        raise UzramError("kcompressd dispatcher stopped")
                    self._cond.wait(1.0)
            finally:
                self._urgent -= 1

    def _wake(self):
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, BrokenPipeError):
            pass       # already woken, or the thread is gone

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
        self.pool.stop()
        with self._cond:
            self._cond.notify_all()

    @property
    def workers_alive(self):
        return self.pool.alive

    def _launch(self, index):
        ring, arena = self.ring, self.store.arena
        ring_fd = ring.file.read_only_fd()        # a worker only reads the ring: it cannot map it writable
        argv = [self.python, "-m", "uzram.kcompressd.worker", "--endpoint", self.endpoint, "--index", str(index),
                "--parent", str(os.getpid()), "--ring-fd", str(ring_fd), "--ring-slots", str(ring.capacity),
                "--arena-fd", str(arena.file.fd), "--segment-bytes", str(arena.segment_bytes),
                "--silence", str(WORKER_SILENCE), "--nice", str(self.worker_nice)]
        if self.mlock:
            argv.append("--mlock")
        # The worker must run the same uzram as this process (a checkout, a worktree or an
        # installed wheel), whatever the interpreter would find first on its own path.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
        env["PYTHONPATH"] = _PACKAGE_ROOT
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, close_fds=True,
                                pass_fds=(ring_fd, arena.file.fd))

    def _pool_log(self, text):
        """The pool reports deaths (exited, silent, never ready) and failed spawns."""
        self.log.event("worker-spawn-failed" if "could not be started" in text else "worker-died", text)

    # ------------------------------------------------------------ the dispatcher thread

    def _run(self):
        shm.set_thread_name("uzram-dispatch")    # for top -H, perf and /proc/PID/task
        shm.set_timer_slack(1000)                # YIELD sleeps for YIELD, not 50 us more
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        self.pool.start()
        last_watch = 0.0
        try:
            while self._running:
                # With every worker at its credit there is nothing to do until a RESULT
                # arrives (the socket wakes the poll) or a worker needs watching; waking up
                # sooner only spins this thread and takes the GIL from the request threads.
                can_send = bool(self.pool.with_credit())
                self._sleeping = can_send
                timeout = TICK
                waiting = self._retry or self.ring.head > self.ring.sent
                if waiting and (can_send or not self.pool.any_ready()):
                    timeout = 0.0 if (self._urgent or self._retry) and not self._full_since else MAX_DELAY
                self._idle = timeout == TICK and can_send    # the next staged page must wake it
                events = dict(poller.poll(timeout * 1000))
                self._sleeping = self._idle = False
                if self._wake_r in events:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                if self._sock in events:
                    self._receive()
                    time.sleep(YIELD)   # ... and now, not after the next job is cut and sent
                now = self.clock()
                if now - last_watch >= TICK:
                    self._watch(now)
                    last_watch = now
                self._dispatch(now)
        except Exception as e:
            # A bug here must not strand what is queued: writes go inline from now on (no
            # worker is alive once the pool stops), and the queue is compressed here.
            self.log.event("dispatcher-failed", f"kcompressd dispatcher failed ({type(e).__name__}: {e}); "
                           "compressing inline from now on", level="error")
            self._crashed = True
        finally:
            try:
                orphans = [job for w in list(self.pool.workers.values()) for job in w.jobs.values()]
                self.pool.stop()
                self._sock.close(0)
                self._ctx.term()
                os.close(self._wake_r)
                if self._crashed:
                    self._retry.extend(orphans)
                    self._drain_after_stop()
            except Exception as e:
                self.log.event("dispatcher-failed", f"kcompressd dispatcher: queued pages could not be compressed "
                               f"after it failed ({type(e).__name__}: {e}); they stay readable, and a flush "
                               "reports an error", level="error")
            finally:
                self._running = False      # flush and FUA waiters stop waiting on this thread
                with self._cond:
                    self._cond.notify_all()

    def _drain_after_stop(self):
        """Compress every queued and orphaned job here (the dispatcher thread is gone)."""
        with self._drain_lock:
            retry, self._retry = self._retry, []
            for job in retry:
                self._compress_here(job)
            self._drain_here()

    def _receive(self):
        """Handle the messages waiting, at most RECEIVE_BATCH of them (a flood, from a
        stranger say, must not hold off watching the workers and sending jobs: the poll
        wakes again at once for the rest).  Asking the socket whether another message is
        there costs half of what a failed receive does."""
        sock = self._sock
        for _ in range(RECEIVE_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(frames)
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return

    def _handle(self, frames):
        """One message from a worker (or from a stranger: counted and dropped)."""
        pool = self.pool
        identity, body = frames[0], frames[1:]
        now = self.clock()
        try:
            msg = protocol.decode(body)
        except ProtocolError:
            self.bad_messages += 1
            w = pool.heard(identity, now)
            if w is not None and w.jobs and body:
                # a bad frame answering a job fails that job: send it again elsewhere
                job = pool.take(w, protocol.peek_job(body[0]))
                if job is not None:
                    self._failed(job)
            return
        if msg.command == protocol.READY:
            if not pool.register(identity, msg.count, msg.job, now):
                self.bad_messages += 1
            return
        w = pool.heard(identity, now)
        if w is None:
            self.bad_messages += 1        # not one of ours (or from before a restart)
            return
        if msg.command in (protocol.RESULT, protocol.RECOMPRESSED):
            job = pool.take(w, msg.job)
            if job is None:
                return                    # a late answer for a job already sent again
            if (job.recompress is None) != (msg.command == protocol.RESULT):
                self.bad_messages += 1    # the answer to another kind of job
                self._failed(job)
            elif job.recompress is None:
                self._on_result(job, msg)
            else:
                self._on_recompressed(job, msg)
        elif msg.command == protocol.FAILED:
            job = pool.take(w, msg.job)
            if job is not None:
                self.log.event("worker-failed", f"kcompressd/{w.index} failed a job: "
                               f"{bytes(msg.frames[1]).decode(errors='replace')}")
                self._failed(job)
        elif msg.command in (protocol.JOB, protocol.RECOMPRESS):
            self.bad_messages += 1

    def _on_result(self, job, msg):
        try:
            ids, lens, offs, used = protocol.result_arrays(msg, job.count, job.capacity, KNOWN_IDS)
        except ProtocolError:
            self.bad_messages += 1
            self._failed(job)
            return
        try:
            self._spot_check(job, ids, lens, offs)
            time.sleep(YIELD)       # a waiting request thread runs now, not after the install
            self.store.install(job.start, job.count, ids, lens, job.window + offs, job.lane, job.window + used)
        except ProtocolError:
            self.bad_results += 1
            self._failed(job)
            return
        self._complete()

    def _on_recompressed(self, job, msg):
        r = job.recompress
        try:
            ids, lens, offs, prios = protocol.recompressed_arrays(msg, job.count, job.capacity, r.batch.lens, KNOWN_IDS)
        except ProtocolError:
            self.bad_messages += 1
            self._failed(job)
            return
        words = (job.window + offs).astype("u8")
        end = job.window + protocol.window_end(offs, lens)
        with self._cond:
            if r.abandoned:
                self.store.abandon(job.lane)
                return
            try:
                r.outcome = postproc.install_worker_result(self.store, r.batch, r.mark, ids, lens, words, prios,
                                                           job.lane, end)
            except ProtocolError:
                self.bad_results += 1
                self._failed(job)
                return
            r.done.set()

    def _recompress_here(self, job):
        """A RECOMPRESS job no worker will do (it failed on every worker it went to, no
        window for it, or no worker can take jobs): handed back to the maintenance thread
        that asked, which does it itself; this thread goes on with the writes."""
        r = job.recompress
        with self._cond:
            if not r.done.is_set():
                r.abandoned = True
                r.done.set()

    def _spot_check(self, job, ids, lens, offs):
        """Raise ProtocolError unless the job's first and last compressed pages decode to
        their slots.  The blobs lie back to back, so the last one is where the lengths of
        all the others put it: one wrong length anywhere moves it."""
        n = len(lens)
        first, last = 0, n - 1
        if not (lens[0] and lens[-1]):           # (rare: a cancelled page at an end)
            done = np.flatnonzero(lens)
            if not len(done):
                return
            first, last = int(done[0]), int(done[-1])
        self._check_page(job, ids, lens, offs, first)
        if last != first:
            self._check_page(job, ids, lens, offs, last)

    def _check_page(self, job, ids, lens, offs, i):
        arena, ring = self.store.arena, self.ring
        blob = arena.load(job.window + int(offs[i]), int(lens[i]))
        cid = int(ids[i])
        try:
            page = blob if cid == 0 else self._decoder(cid)(blob)
        except UzramError as e:
            raise ProtocolError(f"RESULT page {i} of job {job.id} does not decompress: {e}") from None
        s = (job.start + i) % ring.capacity
        if page != ring.mv[s * PAGE_SIZE:(s + 1) * PAGE_SIZE].tobytes():
            raise ProtocolError(f"RESULT page {i} of job {job.id} decompresses to other data than its slot")

    def _decoder(self, cid):
        fn = self._decoders.get(cid)
        if fn is None:
            fn = self._decoders[cid] = decoder(cid).decompress
        return fn

    def _complete(self):
        if self._urgent:
            with self._cond:
                self._cond.notify_all()

    def _failed(self, job):
        if job.lane is not None:
            self.store.abandon(job.lane)
            job.lane = None
        job.tries += 1
        if job.tries > MAX_TRIES:
            # Failed on every worker it went to: compress it here, so one job that trips
            # a worker bug (or a worker that is always wrong) cannot stall flush.
            self._compress_here(job)
            return
        self.resent_jobs += 1
        self._retry.append(job)

    def _watch(self, now):
        restarts = self.pool.restarts
        for job in self.pool.watch(now):
            self._failed(job)
        if self.pool.restarts > restarts:
            self.log.event("worker-respawned", f"kcompressd: {self.pool.restarts - restarts} worker(s) respawned "
                           f"({self.pool.restarts} restarts since start)", level="info")
        for identity in self.pool.heartbeats(now):
            self._sock.send_multipart([identity] + protocol.heartbeat())
        ring = self.ring
        if ring.head != ring.tail or self._urgent:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now
        elif now - self._idle_since >= GIVE_BACK_IDLE:
            self.store.give_back_pending()

    def _next_job(self, now, eager=False):
        """A job from the retry list, or one cut from the ring's staged slots; None when
        none is due (``eager``: whatever is staged is due).  Jobs whose pages were all
        cancelled are retired here."""
        if self._retry:
            if self._full_since and now - self._full_since < TICK:
                return None            # the arena was full a moment ago
            return self._retry.pop(0)
        ring = self.ring
        while True:
            waiting = ring.head - ring.sent
            if waiting <= 0:
                self._since = None
                return None
            if waiting < self.batch_pages and not (self._urgent or eager):
                # A partly filled job waits for more pages while its oldest is young: full
                # jobs cost the request path far less per page than prompt small ones
                # (pwrite has long returned; a flush or FUA write makes it urgent).
                if self._since is None:
                    self._since = now
                if now - self._since < MAX_DELAY:
                    return None
            start, n = ring.take(self.batch_pages)
            self._since = now if ring.head > ring.sent else None
            if ring.any_live(start, n):
                return Job(next(self._job_ids), start, n)
            self.store.retire(start, n)
            self._complete()

    def _dispatch(self, now):
        pool = self.pool
        while True:
            ready = pool.with_credit()
            if not ready:
                if not pool.any_ready():
                    self._drain_here()   # every worker dead or starting: make progress here
                return
            job = self._next_job(now)
            if job is None:
                if not self._recompress:
                    return
                with self._cond:
                    if not self._recompress:
                        return
                    job = self._recompress.popleft()
            w = min(ready, key=lambda x: len(x.jobs))
            pool.assign(w, job, now)
            r = job.recompress
            try:
                job.window, job.capacity = self.store.window(
                    job.lane, job.count * PAGE_SIZE if r is None else postproc.max_window(r.batch))
            except NoSpaceError:
                # no arena segment for a window (the store holds everything it can): give the
                # lane back and compress here, into the head, which may still have room
                pool.take(w, job.id)
                job.lane = None
                self._compress_here(job)
                continue
            if r is None:
                frames = protocol.job(job.id, job.count, self.store.codec.codec_id, self.store.codec.level,
                                      job.start % self.ring.capacity, job.window, job.capacity)
                self.batches_sent += 1
            else:
                b = r.batch
                frames = protocol.recompress_job(
                    job.id, job.window, job.capacity, r.threshold, r.auto,
                    [(p, c.codec_id, c.level) for p, c in r.codecs], b.words, b.lens, b.ids, b.prios)
                self.recompress_sent += 1
            self._sock.send_multipart([w.identity] + frames)

    def _drain_here(self):
        """No worker can take jobs: compress what is queued here, so nothing waits forever."""
        while True:
            job = self._next_job(self.clock(), eager=True)
            if job is None:
                return
            self._compress_here(job)

    def _compress_here(self, job):
        """Compress a write job in this thread.  A RECOMPRESS job (it names no ring slots:
        its start and count are not the ring's) goes back to the maintenance thread."""
        if job.recompress is not None:
            self._recompress_here(job)
            return
        raw, live = self.store.queued(job.start, job.count)
        want = live.tolist()
        pages = [raw[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] for i in range(job.count) if want[i]]
        ids, blobs = compress_pages(self.store.codec, pages)
        it_ids, it_blobs = iter(ids), iter(blobs)
        all_ids = [next(it_ids) if w else 0 for w in want]
        all_blobs = [next(it_blobs) if w else b"" for w in want]
        try:
            self.store.install_local(job.start, job.count, all_ids, all_blobs)
        except NoSpaceError as e:
            # Nowhere to put it even in the head: it stays queued (and readable) and is
            # tried again a tick later; inline writers meanwhile get ENOSPC themselves.
            if not self._full_since:
                self.log.event("arena-full", f"kcompressd: {e}; queued pages wait until memory is freed")
            self._full_since = self.clock()
            self._retry.insert(0, job)
            return
        self._full_since = 0.0
        self.compressed_here += len(pages)
        self._complete()

    # ------------------------------------------------------------ statistics

    def worker_cpu_seconds(self):
        total = cpu_seconds(resource.RUSAGE_CHILDREN)   # workers already reaped
        for pid in [w.pid for w in list(self.pool.workers.values())]:
            try:
                total += process_cpu_seconds(pid)
            except (OSError, IndexError, ValueError):
                pass
        return total

    def counters(self):
        ring = self.ring
        return dict(
            workers_alive=self.pool.alive,
            batches_queued=len(self._retry) + -(-(ring.head - ring.sent) // self.batch_pages),
            batches_in_flight=self.pool.in_flight(),
            batches_sent=self.batches_sent,
            resent_jobs=self.resent_jobs,
            worker_restarts=self.pool.restarts,
            bad_messages=self.bad_messages,
            bad_results=self.bad_results,
            compressed_here=self.compressed_here,
            recompress_jobs_sent=self.recompress_sent,
            worker_cpu_seconds=round(self.worker_cpu_seconds(), 3),
        )

    def worker_pids(self):
        return self.pool.pids()


