"""Configuration: one table of keys for the plugin, ``uzram serve`` and the swap config file,
parsed strictly.

``KEYS`` is that table: each key says what it is (its kind, which parses it), what it does,
its default, and where it may be given (nbdkit's plugin keys, ``uzram serve``'s options,
the swap config file).  An unknown key or a bad value raises ConfigError naming it.
``config_help()`` renders the plugin's keys for ``--dump-plugin``.
"""

import dataclasses
import os
import re

from .codecs import CODECS, parse_algorithm
from .constants import PAGE_SIZE
from .errors import ConfigError

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgtpe]?)(i?b?)\s*$", re.IGNORECASE)
_PERCENT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


def ram_bytes():
    """The machine's memory (MemTotal)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise ConfigError("cannot read MemTotal from /proc/meminfo")


def parse_size(text, key="size"):
    """``4096``, ``64K``, ``1G``, ``2TiB`` -> bytes (binary suffixes, as nbdkit); ``50%`` is
    that share of the machine's memory, in whole pages."""
    m = _SIZE_RE.match(str(text))
    if m:
        return int(m.group(1)) << _SHIFT[m.group(2).lower()]
    m = _PERCENT_RE.match(str(text))
    if m:
        return int(ram_bytes() * float(m.group(1)) / 100) // PAGE_SIZE * PAGE_SIZE
    raise ConfigError(f"{key}: {text!r} is not a size (a number with an optional K/M/G/T suffix, "
                      "or a percentage of RAM)")


_TRUE, _FALSE = ("1", "yes", "true", "on"), ("0", "no", "false", "off")


def parse_bool(text, key):
    """``1``/``yes``/``true``/``on`` or ``0``/``no``/``false``/``off`` (any case)."""
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{key}: {text!r} is not yes or no (1 or 0)")


def parse_int(text, key, minimum=0):
    try:
        value = int(str(text).strip(), 10)
    except ValueError:
        raise ConfigError(f"{key}: {text!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{key}: {value} is below the minimum {minimum}")
    return value


def cpu_count():
    """The CPUs this process may run on (its affinity, as nproc counts them)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except OSError:
        return os.cpu_count() or 2


def default_workers():
    return max(1, cpu_count() - 1)


def default_worker_nice(workers):
    """5 when the workers can hold every CPU (as many workers as CPUs, or more), else 0.
    The nice is there so that a request thread waking on a CPU a worker holds wins it; with
    a CPU that no worker can hold, a nicer worker only loses CPU to the nbdkit process and
    the client, falls behind, and leaves its compression to the writers (``writer_pages``):
    on two CPUs with one worker, nice 5 cost the bench's copy of the mix 4-7 % with lz4 and
    12-15 % with zstd (README, "Workers run nicer when they can hold every CPU")."""
    return 5 if workers >= cpu_count() else 0


def default_base():
    """The directory under which default runtime directories live, and whether uzram
    creates it too: (``/run``, False) as root, (``$XDG_RUNTIME_DIR``, False) when set,
    else (``/tmp/uzram-UID``, True)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return xdg, False
    if os.geteuid() == 0:
        return "/run", False
    return f"/tmp/uzram-{os.geteuid()}", True


def default_runtime_dir(name):
    """``/run/uzram/NAME`` as root, ``$XDG_RUNTIME_DIR/uzram/NAME`` when set, else
    ``/tmp/uzram-UID/uzram/NAME`` (uzram.nbd.rundir checks every component it creates)."""
    base, _ = default_base()
    if base.rstrip("/") == "/run":
        return os.path.join("/run/uzram", name)
    return os.path.join(base, "uzram", name)




NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


@dataclasses.dataclass(frozen=True)
class Key:
    """One configuration key."""

    name: str
    kind: str
    """size, count (a whole number >= minimum), int, bool, algorithm, algorithms (a list), name or path."""
    help: str
    default: str
    """As shown in the documentation."""
    plugin: bool = True
    """An nbdkit plugin key (``key=value``)."""
    serve: bool = False
    """``uzram serve`` has ``--KEY`` (dashes for underscores)."""
    swap: bool = False
    """Allowed in the swap config file."""
    minimum: int = None
    maximum: int = None

    @property
    def option(self):
        return "--" + self.name.replace("_", "-")

    def parse(self, value):
        """The value of this key from ``value`` (text, or a value of its type already)."""
        k = self.kind
        if k == "size":
            v = value if isinstance(value, int) else parse_size(value, self.name)
        elif k in ("count", "int"):
            v = value if isinstance(value, int) and not isinstance(value, bool) else parse_int(
                value, self.name, minimum=self.minimum if self.minimum is not None else (0 if k == "count" else -(1 << 62)))
        elif k == "bool":
            return parse_bool(value, self.name)
        elif k == "algorithm":
            v = str(value).strip().lower()
            try:
                parse_algorithm(v)
            except ConfigError as e:
                raise ConfigError(f"{self.name}: {e}") from None
            return v
        elif k == "algorithms":
            v = tuple(a.strip().lower() for a in str(value).split(",") if a.strip()) if isinstance(value, str) else tuple(value)
            if len(v) > 3:
                raise ConfigError(f"{self.name}: at most 3 codecs (priorities 1..3)")
            for a in v:
                try:
                    parse_algorithm(a)
                except ConfigError as e:
                    raise ConfigError(f"{self.name}: {e}") from None
            return v
        elif k == "name":
            v = str(value).strip()
            if not NAME_RE.fullmatch(v):
                raise ConfigError(f"{self.name}: {value!r} must be 1-64 letters, digits, '_', '-' or '.' "
                                  "(not starting with '.' or '-')")
            return v
        else:
            return str(value)
        low = self.minimum if self.minimum is not None else (0 if k == "count" else None)
        if low is not None and v < low:          # (a value of its type skipped parse_int's check)
            raise ConfigError(f"{self.name}: {v} is below the minimum {low}")
        if self.maximum is not None and v > self.maximum:
            raise ConfigError(f"{self.name}: {v} is above the maximum {self.maximum}")
        return v


#: The one table of keys: the plugin's, ``uzram serve``'s options and the swap config file's.
KEYS = {k.name: k for k in (
    Key("size", "size", "Size of the device: bytes or with a K/M/G/T suffix (binary), or a percentage of "
        "RAM (50%).", "required (uzram serve and swap: 1G)", serve=True, swap=True, minimum=1, maximum=8 << 40),
    Key("algorithm", "algorithm", f"Codec for new pages: {', '.join(CODECS)}; optionally NAME:LEVEL (zstd:9). "
        "Pages already stored keep their own codec.", "lz4", serve=True, swap=True),
    Key("level", "int", "Compression level for the chosen codec (zstd -7..22, lz4hc 1..12, deflate 1..9).",
        "codec default"),
    Key("mem_limit", "size", "Most memory the stored pages may hold (mem_used_total); a write beyond it fails "
        "with ENOSPC and stores nothing. 0 = no limit.", "0", serve=True, swap=True),
    Key("workers", "count", "kcompressd worker processes compressing writes in the background; 0 = compress "
        "inline in the request path.", "CPUs - 1, at least 1", serve=True, swap=True, maximum=256),
    Key("max_pending", "size", "Memory for pages queued for compression (the pending ring shared with the "
        "workers); past half full, writers compress a growing share of their own pages (writer_pages); "
        "when it is full, whole requests inline (counted as writestall). A request queues at "
        "most a quarter of it, and no more than it has room for; its writer compresses the rest.", "8M",
        serve=True, swap=True),
    Key("batch_pages", "count", "Most pages in one job for a worker.", "256", minimum=1, maximum=256),
    Key("worker_nice", "count", "How much nicer than the nbdkit process the kcompressd workers run (nice(2) "
        "increment): a request thread waking on a CPU a worker holds gets it sooner, so the workers' "
        "compression shows less in request latency (0 = the same priority). With a CPU that no worker "
        "can hold, a nicer worker only falls behind.", "5 with as many workers as CPUs or more, else 0",
        maximum=19),
    Key("mlock", "bool", "1 = lock the device in memory, for swapping on it: the nbdkit process locks itself "
        "at after_fork and the kcompressd workers lock themselves, on fault (mlockall "
        "MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT: pages as they are used), and the arena locks each segment "
        "as it takes it. nbdkit --swap is not needed; it would fault in and lock every current mapping "
        "whole.", "0"),
    Key("name", "name", "Device name: names the runtime directory and appears in statistics.", "uzram0",
        serve=True, swap=True),
    Key("runtime_dir", "path", "Private directory (mode 0700) for the sockets and the name's lock.",
        "/run/uzram/NAME as root, else $XDG_RUNTIME_DIR/uzram/NAME, else /tmp/uzram-UID/uzram/NAME", serve=True),
    Key("backing_dev", "path", "File or block device that writeback moves pages to (zram's backing_dev); a "
        "file that does not exist is created sparse, as big as the device.", "none", serve=True),
    Key("recomp_algorithm", "algorithms", "Codecs to recompress with, priorities 1..3 in order, comma "
        "separated (zstd:19,deflate); uzram ctl NAME recompress=... uses them.", "none", serve=True),
    Key("python", "path", "Python interpreter that runs kcompressd workers (needs uzram importable).",
        "the environment's python", serve=True),
    Key("priority", "int", "Swap priority, -1..32767; higher is used first.", "100", plugin=False, swap=True,
        minimum=-1, maximum=32767),
    Key("discard", "bool", "yes: swapon --discard, so freed swap slots free their pages in uzram.", "no",
        plugin=False, swap=True),
)}
PLUGIN_KEYS = tuple(k for k in KEYS if KEYS[k].plugin)


@dataclasses.dataclass
class Config:
    size: int = 0
    algorithm: str = "lz4"
    level: int = None
    mem_limit: int = 0
    workers: int = dataclasses.field(default_factory=default_workers)
    max_pending: int = 8 << 20
    batch_pages: int = 256
    worker_nice: int = None         # default_worker_nice(workers), once complete
    mlock: bool = False
    name: str = "uzram0"
    runtime_dir: str = None
    backing_dev: str = None
    recomp_algorithm: tuple = ()
    python: str = None

    _seen: set = dataclasses.field(default_factory=set, repr=False)

    def set(self, key, value):
        """Apply one plugin key (text, or a value of its type); raises ConfigError naming it."""
        k = KEYS.get(key)
        if k is None or not k.plugin:
            raise ConfigError(f"unknown key {key!r} (known keys: {', '.join(PLUGIN_KEYS)})")
        if key in self._seen:
            raise ConfigError(f"{key}: given more than once")
        self._seen.add(key)
        setattr(self, key, k.parse(value))

    def complete(self):
        """Check the whole configuration; returns self.  Raises ConfigError."""
        if "size" not in self._seen and not self.size:
            raise ConfigError("size: required (for example size=1G)")
        self.workers = KEYS["workers"].parse(self.workers)
        if self.worker_nice is None:
            self.worker_nice = default_worker_nice(self.workers)
        for key in ("size", "batch_pages", "worker_nice"):     # also when set as attributes
            setattr(self, key, KEYS[key].parse(getattr(self, key)))
        self.codec()  # validates algorithm and level
        if self.max_pending < 16 * PAGE_SIZE and self.workers:
            raise ConfigError(f"max_pending: at least 16 pages ({16 * PAGE_SIZE} bytes) with workers")
        if self.runtime_dir is None:
            self.runtime_dir = default_runtime_dir(self.name)
        return self

    def codec(self):
        name, _, level = self.algorithm.partition(":")
        if level and self.level is not None:
            raise ConfigError("level: given both in algorithm= and level=")
        return parse_algorithm(f"{name}:{level or ('' if self.level is None else self.level)}")

    @property
    def npages(self):
        return -(-self.size // PAGE_SIZE)


def key_syntax(key):
    """``size=<SIZE>``, ``workers=<VALUE>``: how a key is written."""
    return f"{key}=<{'SIZE' if KEYS[key].kind == 'size' else 'VALUE'}>"


def config_help():
    lines = []
    for key in PLUGIN_KEYS:
        lines.append(key_syntax(key))
        lines.append(f"    {KEYS[key].help} Default: {KEYS[key].default}.")
    return "\n".join(lines)
