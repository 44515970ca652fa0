"""The kcompressd worker pool: spawning, registration, liveness, heartbeats, backoff, credit.

Bookkeeping only, on an injectable clock and an injectable launcher, so that every rule
is a unit test on a fake clock (tests/unit/test_pool.py).  The dispatcher owns the socket:
it tells the pool what it heard, asks it whom to send to, and sends what the pool says is
due.  The rules are the zguide's Paranoid Pirate:

- any message from a worker counts as a heartbeat; a worker silent for LIVENESS seconds
  is dead, busy or idle (workers say HEARTBEAT every second, during long jobs too);
- the dispatcher heartbeats every worker it has sent nothing to for HEARTBEAT_INTERVAL,
  so an idle worker hears from it and stays (it exits after 10 s of silence);
- a worker that holds a job unanswered for JOB_DEADLINE seconds is dead too, heartbeats
  or not (it lost the job: nothing else would ever send it again);
- a dead worker is killed and reaped, its jobs come back to the caller to send again
  (compression is idempotent), and it is respawned after a backoff that doubles from
  BACKOFF_MIN to BACKOFF_MAX and resets once a worker has lived STABLE_AFTER seconds;
- each registered worker holds at most CREDIT jobs, one per lane (its windows of the
  arena: uzram.arena).
"""

import subprocess

CREDIT = 2
LIVENESS = 3.0
JOB_DEADLINE = 10.0      # a job unanswered this long fails, and its worker with it
HEARTBEAT_INTERVAL = 1.0
READY_TIMEOUT = 9.0
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0
STABLE_AFTER = 10.0


class Worker:
    __slots__ = ("index", "proc", "pid", "identity", "ready", "jobs", "lanes", "last_heard", "last_sent", "started")

    def __init__(self, index, proc, now, credit):
        self.index = index
        self.proc = proc
        self.pid = proc.pid
        self.identity = None
        self.ready = False
        self.jobs = {}                            # job id -> job, in flight
        self.lanes = list(range(credit - 1, -1, -1))
        self.last_heard = now
        self.last_sent = now
        self.started = now

    def __repr__(self):
        return f"Worker({self.index}, pid={self.pid}, ready={self.ready}, jobs={len(self.jobs)})"


class WorkerPool:
    def __init__(self, size, launch, clock, credit=CREDIT, log=None):
        self.size = size
        self.launch = launch            # index -> a Popen-like object (pid, poll, kill, wait)
        self.clock = clock
        self.credit = credit
        self.log = log or (lambda text: None)
        self.workers = {}               # index -> Worker
        self._by_identity = {}
        self._respawn_at = {}           # index -> time
        self._backoff = {}
        self.restarts = 0               # respawns of workers that had been ready
        self.spawn_failures = 0         # launches that raised (a bad python=, say)
        self.start_failures = 0         # starts that never got to READY, launch failures included
        self.last_error = ""            # why the last start failed
        self._was_ready = {}            # index -> whether the worker that died there had been ready
        self._logged = None             # the start failure last logged (each kind is logged once)
        self.alive = 0                  # registered workers whose process runs, as of the last change

    # ------------------------------------------------------------ processes

    def start(self):
        now = self.clock()
        for index in range(self.size):
            self._spawn(index, now)

    def _spawn(self, index, now):
        try:
            proc = self.launch(index)
        except OSError as e:
            self.spawn_failures += 1
            self._start_failed(f"kcompressd/{index} could not be started: {e}")
            self._respawn_at[index] = now + self._next_backoff(index)
            return
        self.workers[index] = Worker(index, proc, now, self.credit)

    def _start_failed(self, why):
        """Count a start that did not get to READY; log it unless the last one logged was the
        same (a worker that can never start is reported once, not at every retry)."""
        self.start_failures += 1
        self.last_error = why
        if why != self._logged:
            self._logged = why
            self.log(f"{why} (retrying with backoff up to {BACKOFF_MAX:g} s; the device compresses "
                     "inline meanwhile; further failures like this one are counted, not logged)")

    def _next_backoff(self, index):
        b = self._backoff.get(index, BACKOFF_MIN / 2) * 2
        b = min(max(b, BACKOFF_MIN), BACKOFF_MAX)
        self._backoff[index] = b
        return b

    @staticmethod
    def _kill(w):
        try:
            w.proc.kill()
        except OSError:
            pass
        try:
            w.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def stop(self):
        for w in list(self.workers.values()):
            self._kill(w)
        self.workers.clear()
        self._by_identity.clear()
        self._respawn_at.clear()
        self.alive = 0

    # ------------------------------------------------------------ messages

    def register(self, identity, index, pid, now):
        """A READY from ``identity``; False when it is not one of ours."""
        w = self.workers.get(index)
        if w is None or w.pid != pid:
            return False
        if w.identity is not None:
            self._by_identity.pop(w.identity, None)
        w.identity = identity
        if not w.ready and self._logged is not None:
            self.log(f"kcompressd/{index} (pid {pid}) is ready, after {self.start_failures} failed starts")
            self._logged = None
        w.ready = True
        w.last_heard = now
        self._by_identity[identity] = w
        self._count()
        return True

    def heard(self, identity, now):
        """The registered worker that sent a message, or None (a stranger or a dead worker)."""
        w = self._by_identity.get(identity)
        if w is not None:
            w.last_heard = now
        return w

    def with_credit(self):
        return [w for w in self.workers.values() if w.ready and len(w.jobs) < self.credit]

    def any_ready(self):
        return any(w.ready for w in self.workers.values())

    def assign(self, w, job, now):
        """Give ``job`` to ``w``; sets ``job.lane`` to one of the worker's free lanes."""
        job.lane = (w.index, w.lanes.pop())
        job.sent = now
        w.jobs[job.id] = job
        w.last_sent = now

    def take(self, w, job_id):
        """The job ``w`` answered, no longer in flight; None if it has none by that ID."""
        job = w.jobs.pop(job_id, None)
        if job is not None:
            w.lanes.append(job.lane[1])
        return job

    # The two below are called from other threads (statistics): they walk a copy.

    def in_flight(self):
        return sum(len(w.jobs) for w in list(self.workers.values()))

    def pids(self):
        return [w.pid for w in list(self.workers.values()) if w.ready and w.proc.poll() is None]

    # ------------------------------------------------------------ time

    def heartbeats(self, now):
        """Identities of registered workers owed a HEARTBEAT now (the caller sends them)."""
        due = []
        for w in self.workers.values():
            if w.ready and now - w.last_sent >= HEARTBEAT_INTERVAL:
                w.last_sent = now
                due.append(w.identity)
        return due

    def watch(self, now):
        """Find dead, silent and never-ready workers, kill them, schedule their respawns and
        make the respawns that are due.  Returns the jobs they had in flight."""
        orphans = []
        for index, w in list(self.workers.items()):
            dead = w.proc.poll() is not None
            why = "exited" if dead else None
            oldest = min((job.sent for job in w.jobs.values()), default=now)
            if not dead and w.ready and now - w.last_heard > LIVENESS:
                why = f"silent for {now - w.last_heard:.1f} s"
            elif not dead and now - oldest > JOB_DEADLINE:
                why = f"did not answer a job in {now - oldest:.1f} s"
            elif not dead and not w.ready and now - w.started > READY_TIMEOUT:
                why = f"not ready after {now - w.started:.1f} s"
            if why is None:
                if now - w.started > STABLE_AFTER:
                    self._backoff.pop(index, None)
                continue
            code = w.proc.poll()
            self._kill(w)
            if w.ready:
                self.log(f"kcompressd/{index} (pid {w.pid}) {why}: {len(w.jobs)} jobs sent again")
            else:
                self._start_failed(f"kcompressd/{index} {why} before it was ready"
                                   + (f" (exit status {code})" if dead and code is not None else ""))
            self._was_ready[index] = w.ready
            orphans.extend(w.jobs.values())
            w.jobs.clear()
            if w.identity is not None:
                self._by_identity.pop(w.identity, None)
            del self.workers[index]
            if now - w.started > STABLE_AFTER:
                self._backoff.pop(index, None)
            self._respawn_at[index] = now + self._next_backoff(index)
        for index, when in list(self._respawn_at.items()):
            if now >= when:
                del self._respawn_at[index]
                if self._was_ready.pop(index, False):
                    self.restarts += 1
                self._spawn(index, now)
        self._count()
        return orphans

    def _count(self):
        self.alive = sum(1 for w in self.workers.values() if w.ready and w.proc.poll() is None)
