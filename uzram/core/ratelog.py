"""Rate-limited events in nbdkit's log: worker deaths and respawns, writestall onsets,
ENOSPC, the reasons of FAILED answers.

The plugin writes to its stderr, which is nbdkit's: the terminal or the journal under
``uzram serve`` (in a systemd unit, the journal), the log file nbdkit's caller gave it
otherwise (``uzram swap on``: RUNTIME_DIR/nbdkit.log).  nbdkit 1.32's Python plugin offers
no call into nbdkit's own error log (``nbdkit.debug`` prints only with ``-v``), so lines
carry nbdkit's form themselves::

    nbdkit: uzram[uzram0]: warning: kcompressd/0 (pid 4242) exited: 2 jobs sent again

Each kind of event is logged when it first happens; the same kind again within
``interval`` seconds is counted, not logged, and the next line of that kind (or
``flush`` at shutdown) says how many there were, so a worker that dies in a loop or a
client that writes into a full device cannot flood the log.
"""

import sys
import threading
import time

INTERVAL = 60.0


class RateLimitedLog:
    def __init__(self, name, write=None, interval=INTERVAL, clock=time.monotonic):
        self.name = name
        self.interval = interval
        self.clock = clock
        self._write = write or _stderr
        self._lock = threading.Lock()
        self._kinds = {}            # kind -> [time logged, suppressed since, last message]
        self.lines = 0

    def event(self, kind, message, level="warning"):
        """Log ``message`` unless ``kind`` was logged less than ``interval`` seconds ago."""
        now = self.clock()
        with self._lock:
            st = self._kinds.get(kind)
            if st is not None and now - st[0] < self.interval:
                st[1] += 1
                st[2] = (message, level)
                return False
            extra = ""
            if st is not None and st[1]:
                extra = f" ({st[1]} more like this in the {now - st[0]:.0f} s before)"
            self._kinds[kind] = [now, 0, None]
            self._emit(level, message + extra)
            return True

    def flush(self):
        """Log what was counted and not yet said (at shutdown)."""
        with self._lock:
            for kind, st in self._kinds.items():
                if st[1]:
                    message, level = st[2]
                    self._emit(level, f"{message} ({st[1]} like this in the last {self.clock() - st[0]:.0f} s, "
                               "this the last)")
                    st[1] = 0

    def _emit(self, level, message):
        self.lines += 1
        try:
            self._write(f"nbdkit: uzram[{self.name}]: {level}: {message}\n")
        except (OSError, ValueError):
            pass    # a closed stderr must not fail a request


def _stderr(line):
    sys.stderr.write(line)
    sys.stderr.flush()
