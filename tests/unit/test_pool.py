"""The worker pool's rules on a fake clock, with fake processes: liveness, heartbeats both
ways, respawn backoff, credit.  (The pool only keeps books; tests/integration/test_kcompressd.py
runs it with real worker processes.)"""

import pytest

from uzram.kcompressd import pool as pool_mod
from uzram.kcompressd.pool import WorkerPool


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class FakeProc:
    pids = iter(range(100, 10 ** 6))

    def __init__(self):
        self.pid = next(self.pids)
        self.exitcode = None
        self.killed = False

    def poll(self):
        return self.exitcode

    def kill(self):
        self.killed = True
        self.exitcode = -9

    def wait(self, timeout=None):
        return self.exitcode


class Job:
    def __init__(self, job_id):
        self.id = job_id
        self.lane = None


def make(size=1):
    clock = Clock()
    procs = []

    def launch(index):
        procs.append(FakeProc())
        return procs[-1]

    pool = WorkerPool(size, launch, clock)
    pool.start()
    for i, w in pool.workers.items():
        assert pool.register(f"w{i}".encode(), i, w.pid, clock())
    return pool, clock, procs


def run(pool, clock, seconds, worker_beats=True, step=0.1):
    """Let ``seconds`` pass; registered workers send a heartbeat each second (as the real
    one does) unless ``worker_beats`` is False.  Returns (orphaned jobs, heartbeats sent)."""
    orphans, sent = [], []
    t_end = clock.now + seconds
    next_beat = clock.now + 1.0
    while clock.now < t_end:
        clock.now += step
        if worker_beats and clock.now >= next_beat:
            for w in list(pool.workers.values()):
                if w.ready:
                    pool.heard(w.identity, clock.now)
            next_beat += 1.0
        orphans += pool.watch(clock.now)
        sent += pool.heartbeats(clock.now)
    return orphans, sent


def test_the_pool_keeps_idle_workers_and_owes_each_a_heartbeat_a_second():
    """The dispatcher's half of the idle-restart regression is tested with real workers in
    tests/integration/test_dispatcher.py; this is the pool's bookkeeping for it."""
    pool, clock, procs = make(2)
    _, sent = run(pool, clock, 20 * 60, step=0.5)
    assert pool.restarts == 0 and len(procs) == 2 and not any(p.killed for p in procs)
    # the dispatcher owes each idle worker a heartbeat every second
    assert sent.count(b"w0") >= 20 * 60 - 2 and sent.count(b"w1") >= 20 * 60 - 2


def test_heartbeats_are_owed_only_after_a_second_of_silence():
    pool, clock, _ = make(1)
    w = pool.workers[0]
    clock.now += 0.5
    pool.assign(w, Job(1), clock.now)           # sending a job counts as hearing from us
    clock.now += 0.8
    assert pool.heartbeats(clock.now) == []
    clock.now += 0.3
    assert pool.heartbeats(clock.now) == [b"w0"]
    assert pool.heartbeats(clock.now) == []


def test_a_silent_worker_is_dead_even_when_idle():
    pool, clock, procs = make(1)
    job = Job(7)
    pool.assign(pool.workers[0], job, clock.now)
    orphans, _ = run(pool, clock, pool_mod.LIVENESS + 0.2, worker_beats=False)
    assert orphans == [job] and procs[0].killed
    assert 0 not in pool.workers or pool.workers[0].proc is not procs[0]
    # respawned after the first backoff step
    run(pool, clock, pool_mod.BACKOFF_MIN + 0.2, worker_beats=False)
    assert pool.restarts == 1 and len(procs) == 2
    assert pool.alive == 0                       # not registered yet


def test_a_worker_that_exits_hands_back_its_jobs_and_backoff_doubles():
    pool, clock, procs = make(1)
    delays = []
    for round_ in range(5):
        w = pool.workers[0]
        job = Job(round_)
        pool.assign(w, job, clock.now)
        w.proc.exitcode = 1
        assert pool.watch(clock.now) == [job]
        died = clock.now
        while 0 not in pool.workers:
            clock.now += 0.05
            pool.watch(clock.now)
        delays.append(round(clock.now - died, 1))
        pool.register(b"w0", 0, pool.workers[0].pid, clock.now)
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6]
    # a worker that lived STABLE_AFTER seconds resets the backoff
    run(pool, clock, pool_mod.STABLE_AFTER + 1)
    pool.workers[0].proc.exitcode = 1
    pool.watch(clock.now)
    died = clock.now
    while 0 not in pool.workers:
        clock.now += 0.05
        pool.watch(clock.now)
    assert round(clock.now - died, 1) == 0.1


def test_a_worker_that_never_says_ready_is_replaced():
    clock = Clock()
    procs = []
    pool = WorkerPool(1, lambda i: procs.append(FakeProc()) or procs[-1], clock)
    pool.start()
    run(pool, clock, pool_mod.READY_TIMEOUT + 0.5, worker_beats=False)
    assert procs[0].killed and len(procs) == 2


def test_launch_failures_are_retried_with_backoff():
    clock = Clock()
    calls = []

    def launch(index):
        calls.append(clock.now)
        raise OSError(2, "No such file or directory")

    pool = WorkerPool(1, launch, clock)
    pool.start()
    run(pool, clock, 10, worker_beats=False, step=0.05)
    assert pool.spawn_failures == len(calls) and 5 <= len(calls) <= 8
    gaps = [round(b - a, 2) for a, b in zip(calls, calls[1:])]
    assert gaps == sorted(gaps) and gaps[-1] <= pool_mod.BACKOFF_MAX + 0.05


def test_credit_and_lanes():
    pool, clock, _ = make(1)
    w = pool.workers[0]
    jobs = [Job(i) for i in range(pool_mod.CREDIT)]
    for job in jobs:
        assert pool.with_credit() == [w]
        pool.assign(w, job, clock.now)
    assert pool.with_credit() == []
    assert sorted(job.lane for job in jobs) == [(0, k) for k in range(pool_mod.CREDIT)]
    assert pool.take(w, jobs[0].id) is jobs[0] and pool.take(w, jobs[0].id) is None
    assert pool.with_credit() == [w]
    again = Job(99)
    pool.assign(w, again, clock.now)
    assert again.lane == jobs[0].lane               # the lane freed by the answer


@pytest.mark.parametrize("index, pid", [(0, 1), (5, None)])
def test_a_ready_from_a_stranger_is_refused(index, pid):
    pool, clock, _ = make(1)
    assert not pool.register(b"x", index, pid, clock.now)
    assert pool.heard(b"x", clock.now) is None


def test_a_job_never_answered_fails_its_worker():
    """A worker that keeps beating but lost a job (it dropped a JOB it could not read, say)
    would hold it, and every flush, forever."""
    pool, clock, procs = make(1)
    job = Job(3)
    pool.assign(pool.workers[0], job, clock.now)
    orphans, _ = run(pool, clock, pool_mod.JOB_DEADLINE - 1)
    assert orphans == [] and not procs[0].killed
    orphans, _ = run(pool, clock, 2)
    assert orphans == [job] and procs[0].killed
def test_a_worker_that_cannot_start_is_reported_once_and_is_no_restart():
    """Regression: python=/nonexistent logged at every retry and counted each retry as a
    worker restart, forever."""
    clock = Clock()
    logs = []

    def launch(index):
        raise FileNotFoundError(2, "No such file or directory", "/nonexistent")

    pool = WorkerPool(1, launch, clock, log=logs.append)
    pool.start()
    run(pool, clock, 60, worker_beats=False, step=0.05)
    assert pool.start_failures == pool.spawn_failures >= 10
    assert pool.restarts == 0 and pool.alive == 0
    assert len(logs) == 1 and "kcompressd/0 could not be started" in logs[0] and "/nonexistent" in logs[0]
    assert "/nonexistent" in pool.last_error


def test_workers_that_exit_before_ready_are_start_failures_until_one_registers():
    clock = Clock()
    procs, logs, failing = [], [], [True]

    def launch(index):
        procs.append(FakeProc())
        if failing[0]:
            procs[-1].exitcode = 1      # as a python that cannot import uzram
        return procs[-1]

    pool = WorkerPool(1, launch, clock, log=logs.append)
    pool.start()
    run(pool, clock, 20, worker_beats=False, step=0.05)
    while 0 not in pool.workers:        # up to the next start, not yet seen to fail
        clock.now += 0.05
        pool.watch(clock.now)
    assert pool.start_failures == len(procs) - 1 >= 3 and pool.restarts == 0
    assert logs == [f"kcompressd/0 exited before it was ready (exit status 1) (retrying with backoff up to "
                    f"{pool_mod.BACKOFF_MAX:g} s; the device compresses inline meanwhile; further failures like "
                    "this one are counted, not logged)"]
    procs[-1].exitcode = None           # this one starts fine
    failing[0] = False
    w = pool.workers[0]
    assert pool.register(b"w0", 0, w.pid, clock.now)
    assert "is ready, after" in logs[-1]
    w.proc.exitcode = 1                 # and dies later: a restart, logged
    pool.watch(clock.now)
    assert f"(pid {w.pid}) exited: 0 jobs sent again" in logs[-1]
    run(pool, clock, pool_mod.BACKOFF_MAX + 0.5, worker_beats=False, step=0.05)
    assert pool.restarts == 1 and len(pool.workers) == 1
