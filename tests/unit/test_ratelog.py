"""The rate-limited log, on a fake clock."""

from uzram.core.ratelog import RateLimitedLog


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def make():
    lines, clock = [], Clock()
    return RateLimitedLog("uzram3", write=lines.append, interval=60, clock=clock), lines, clock


def test_each_kind_once_per_interval_with_the_count_of_the_rest():
    log, lines, clock = make()
    assert log.event("worker-died", "kcompressd/0 (pid 10) exited: 2 jobs sent again")
    for k in range(5):
        clock.t += 1
        assert not log.event("worker-died", f"kcompressd/0 (pid {11 + k}) exited: 0 jobs sent again")
    assert log.event("enospc", "a write was refused", level="error")    # another kind: logged at once
    assert lines == ["nbdkit: uzram[uzram3]: warning: kcompressd/0 (pid 10) exited: 2 jobs sent again\n",
                     "nbdkit: uzram[uzram3]: error: a write was refused\n"]
    clock.t = 1000.0 + 60
    assert log.event("worker-died", "kcompressd/0 (pid 20) exited: 1 jobs sent again")
    assert lines[-1] == ("nbdkit: uzram[uzram3]: warning: kcompressd/0 (pid 20) exited: 1 jobs sent again "
                         "(5 more like this in the 60 s before)\n")


def test_flush_says_what_was_held_back():
    log, lines, clock = make()
    log.event("writestall", "writers compress inline")
    clock.t += 10
    log.event("writestall", "writers compress inline again")
    log.event("writestall", "writers compress inline, third")
    log.flush()
    assert lines[-1] == ("nbdkit: uzram[uzram3]: warning: writers compress inline, third "
                         "(2 like this in the last 10 s, this the last)\n")
    n = len(lines)
    log.flush()
    assert len(lines) == n


def test_a_broken_stderr_does_not_raise():
    def closed(line):
        raise ValueError("I/O operation on closed file")
    RateLimitedLog("x", write=closed).event("k", "m")
