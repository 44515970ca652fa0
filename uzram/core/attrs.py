"""zram's sysfs attributes, for ``uzram ctl NAME [ATTR[=VALUE]]``.

Each attribute has zram's name (Documentation/admin-guide/blockdev/zram.rst).  A read
gives what ``cat /sys/block/zramN/ATTR`` would: the same fields, in the same order, in
zram's format, so scripts written for sysfs work on ``uzram ctl`` output.  A write takes
what ``echo VALUE > /sys/block/zramN/ATTR`` takes and either does it or raises AttrError:
one line naming the attribute, why, and the errno zram would give (EBUSY, EINVAL,
ENODEV, ENOSPC, EIO).

Where uzram differs from zram, on purpose:

- ``comp_algorithm`` and ``mem_limit`` may change while the device holds data (zram
  refuses ``comp_algorithm`` with EBUSY): new pages use the new codec, stored pages keep
  theirs.  ``disksize`` and ``backing_dev`` may change while the device is empty and no
  client is connected.
- ``reset`` empties the device and zeroes its statistics but keeps its configuration (an
  NBD export always has a size; zram's reset also forgets disksize, the codecs and the
  backing device).
- ``clock`` is uzram's: the device's clock for access times, in seconds; ``clock=+N``
  moves it on (for tests and demonstrations of ``idle=SECONDS``).

The device (uzram.core.device.Device) does the work; this module only parses, checks and
formats.  Writes that take long (``writeback``, ``recompress``, ``compact``) run on the
control endpoint's maintenance thread, one at a time, while reads are answered at once.
"""

import errno

from .codecs import CODECS, parse_algorithm
from .config import parse_size
from .constants import MAX_RECOMP, PAGE_SIZE
from .errors import ConfigError, UzramError
from .postproc import RECOMP_MODES, WB_MODES
from .stats import IO_STAT, MM_STAT


class AttrError(UzramError):
    """A refused attribute write (or read of a write-only one)."""

    def __init__(self, attr, why, code=errno.EINVAL):
        super().__init__(f"{attr}: {why} ({errno.errorcode[code]})")
        self.errno = code


def _fields(values):
    return " ".join(f"{v:8d}" for v in values)


def parse_args(attr, text, may_be_empty=False):
    """zram's ``key=value`` words: [(key, value or None)] in order."""
    out = []
    for word in str(text).split():
        key, eq, value = word.partition("=")
        if eq and not value:
            raise AttrError(attr, f"{key}= needs a value")
        out.append((key, value if eq else None))
    if not out and not may_be_empty:
        raise AttrError(attr, "needs a value")
    return out


U64_MAX = (1 << 64) - 1         # what zram's kstrtoull and memparse take at most


def _int(attr, text, minimum=0, maximum=U64_MAX):
    try:
        v = int(str(text).strip(), 10)
    except ValueError:
        raise AttrError(attr, f"{text!r} is not a whole number") from None
    if v < minimum:
        raise AttrError(attr, f"{v} is below {minimum}")
    if v > maximum:
        raise AttrError(attr, f"{v} is above {maximum}")
    return v


def _size(attr, text):
    try:
        v = parse_size(text, attr)
    except ConfigError as e:
        raise AttrError(attr, str(e).partition(": ")[2]) from None
    if v > U64_MAX:
        raise AttrError(attr, f"{v} is above {U64_MAX}")
    return v


def _codec(attr, text):
    try:
        return parse_algorithm(text)
    except ConfigError as e:
        raise AttrError(attr, str(e)) from None


def algorithms_line(selected):
    """zram's comp_algorithm format: every codec, the selected one in brackets."""
    return " ".join(f"[{name}]" if name == selected else name for name in CODECS)


# ---------------------------------------------------------------- reads

def show_mm_stat(dev):
    s = dev.stats()
    return _fields([s[k] for k in MM_STAT])


def show_io_stat(dev):
    s = dev.stats()
    return _fields([s[k] for k in IO_STAT])


def show_bd_stat(dev):
    s = dev.stats()
    return _fields([s.bd_count, s.bd_reads, s.bd_writes])     # 4 KiB units, as zram's FOUR_K


def show_debug_stat(dev):
    return "version: 1\n" + _fields([dev.stats().writestall, 0])      # writestall, miss_free


def show_recomp_algorithm(dev):
    return "\n".join(f"#{prio}: {algorithms_line(codec.name)}" for prio, codec in dev.recomp_codecs())


# ---------------------------------------------------------------- writes

def store_disksize(dev, value):
    dev.resize(_size("disksize", value))


def store_comp_algorithm(dev, value):
    dev.set_algorithm(_codec("comp_algorithm", value))


def store_recomp_algorithm(dev, value):
    algo, prio, level = None, 1, None
    for key, v in parse_args("recomp_algorithm", value):
        if key == "algo" and v:
            algo = v
        elif key == "priority" and v:
            prio = _int("recomp_algorithm", v, 1)
        elif key == "level" and v:
            level = v
        else:
            raise AttrError("recomp_algorithm", f"unknown parameter {key!r} (algo=, priority=, level=)")
    if algo is None:
        raise AttrError("recomp_algorithm", "algo= is required (algo=zstd priority=1)")
    if not 1 <= prio <= MAX_RECOMP:
        raise AttrError("recomp_algorithm", f"priority {prio} is outside 1..{MAX_RECOMP}")
    dev.set_recomp_algorithm(prio, _codec("recomp_algorithm", algo if level is None else f"{algo}:{level}"))


def store_mem_limit(dev, value):
    dev.set_mem_limit(_size("mem_limit", value))


def store_mem_used_max(dev, value):
    if str(value).strip() != "0":
        raise AttrError("mem_used_max", "only 0 may be written (it resets the maximum to the current use)")
    dev.reset_mem_used_max()


def store_idle(dev, value):
    v = str(value).strip()
    dev.mark_idle(None if v == "all" else _int("idle", v))


def store_writeback(dev, value):
    """zram's writeback: a type, or any number of page_index=N / page_indexes=A-B (not both)."""
    mode, ranges = 0, []
    npages = dev.store.npages
    for key, v in parse_args("writeback", value):
        if v is None and key in WB_MODES:        # the old form: writeback=idle
            mode = WB_MODES[key]
        elif key == "type" and v in WB_MODES:
            mode = WB_MODES[v]
        elif key == "page_index":
            lo = _int("writeback", v)
            ranges.append((lo, lo + 1))
        elif key == "page_indexes":
            a, dash, b = v.partition("-")
            if not dash:
                raise AttrError("writeback", f"page_indexes={v}: needs FIRST-LAST")
            lo, hi = _int("writeback", a), _int("writeback", b) + 1
            if hi <= lo:
                raise AttrError("writeback", f"page_indexes={v}: LAST is below FIRST", errno.ERANGE)
            ranges.append((lo, hi))
        else:
            raise AttrError("writeback", f"{key}{'=' + v if v else ''}: not a writeback type "
                            f"({', '.join(WB_MODES)}) or page_index=N / page_indexes=A-B")
        if ranges and ranges[-1][1] > npages:
            raise AttrError("writeback", f"page {ranges[-1][1] - 1} is outside the device ({npages} pages)",
                            errno.ERANGE)
    if mode and ranges:
        raise AttrError("writeback", "a type and page indexes together: give one or the other")
    if mode == 0 and not ranges:
        raise AttrError("writeback", "needs a type (idle, huge, huge_idle, incompressible) or a page_index")
    return dev.writeback(mode, ranges or [(0, None)])


def store_recompress(dev, value):
    mode, threshold, max_pages, algo, prio = 0, 0, None, None, None
    for key, v in parse_args("recompress", value, may_be_empty=True):   # nothing: every page
        if key == "type" and v in RECOMP_MODES:
            mode = RECOMP_MODES[v]
        elif key == "threshold" and v:
            threshold = _int("recompress", v)
            if threshold >= 3 * PAGE_SIZE // 4:
                raise AttrError("recompress", f"threshold {threshold} is not below a huge page ({3 * PAGE_SIZE // 4})")
        elif key == "max_pages" and v:
            max_pages = _int("recompress", v)
        elif key == "algo" and v:
            algo = v
        elif key == "priority" and v:
            prio = _int("recompress", v, 1)
        else:
            raise AttrError("recompress", f"unknown parameter {key}{'=' + v if v else ''} (type={'|'.join(RECOMP_MODES)}, "
                            "threshold=, max_pages=, algo=, priority=)")
    return dev.recompress(mode, threshold, max_pages, algo, prio)


def store_writeback_limit(dev, value):
    dev.writeback_limit = _int("writeback_limit", value)


def store_writeback_limit_enable(dev, value):
    dev.writeback_limit_enable = bool(_int("writeback_limit_enable", value))


def store_reset(dev, value):
    if not _int("reset", value):
        raise AttrError("reset", "write 1 to reset")
    dev.reset()


def store_backing_dev(dev, value):
    dev.set_backing_dev(str(value).strip())


def store_clock(dev, value):
    v = str(value).strip()
    if not v.startswith("+"):
        raise AttrError("clock", "write +SECONDS to move the clock on (it never goes back)")
    clock = dev.store.clock
    clock.skew += _int("clock", v[1:], maximum=clock.MAX - clock.now())


class Attr:
    __slots__ = ("name", "show", "store", "slow", "help")

    def __init__(self, name, show=None, store=None, slow=False, help=""):
        self.name, self.show, self.store, self.slow, self.help = name, show, store, slow, help


#: zram's attributes (and uzram's ``clock``), in the order ``uzram ctl NAME`` lists them.
ATTRS = {a.name: a for a in (
    Attr("disksize", lambda d: str(d.config.size), store_disksize, True, "device size in bytes"),
    Attr("initstate", lambda d: "1", help="1: the device is set up (always, for an NBD export)"),
    Attr("comp_algorithm", lambda d: algorithms_line(d.codec.name), store_comp_algorithm,
         help="codec for new pages (NAME or NAME:LEVEL)"),
    Attr("recomp_algorithm", show_recomp_algorithm, store_recomp_algorithm,
         help="secondary codecs: algo=NAME[:LEVEL] priority=1..3"),
    Attr("mem_limit", lambda d: str(d.store.mem_limit), store_mem_limit, True, "most memory for stored data"),
    Attr("mem_used_max", store=store_mem_used_max, help="write 0 to reset mm_stat's mem_used_max"),
    Attr("compact", store=lambda d, v: d.compact_cmd(), slow=True, help="write anything to clean the arena"),
    Attr("idle", store=store_idle, slow=True, help="all, or SECONDS: mark pages not accessed that long idle"),
    Attr("writeback", store=store_writeback, slow=True,
         help="type=idle|huge|huge_idle|incompressible, or page_index=N / page_indexes=A-B"),
    Attr("writeback_limit", lambda d: str(d.writeback_limit), store_writeback_limit,
         help="4 KiB pages writeback may still write, with writeback_limit_enable=1"),
    Attr("writeback_limit_enable", lambda d: str(int(d.writeback_limit_enable)), store_writeback_limit_enable,
         help="1: writeback stops when writeback_limit reaches 0"),
    Attr("recompress", store=store_recompress, slow=True,
         help="type=idle|huge|huge_idle|auto threshold=BYTES max_pages=N algo=NAME priority=N"),
    Attr("backing_dev", lambda d: d.backing_path() or "none", store_backing_dev, True,
         help="file or block device for writeback (set while empty)"),
    Attr("reset", store=store_reset, slow=True, help="write 1 to empty the device (no client may be connected)"),
    Attr("mm_stat", show_mm_stat, help=" ".join(("orig_data_size", "compr_data_size", "mem_used_total",
                                               "mem_limit", "mem_used_max", "same_pages", "pages_compacted",
                                               "huge_pages", "huge_pages_since"))),
    Attr("io_stat", show_io_stat, help="failed_reads failed_writes invalid_io notify_free"),
    Attr("bd_stat", show_bd_stat, help="bd_count bd_reads bd_writes (4 KiB pages)"),
    Attr("debug_stat", show_debug_stat, help="version: 1, then writestall miss_free"),
    Attr("clock", lambda d: str(d.store.clock.now()), store_clock,
         help="uzram's: the clock of access times, seconds; +N moves it on"),
)}


def get(dev, name):
    a = ATTRS.get(name)
    if a is None:
        raise AttrError(name, f"no such attribute (known: {', '.join(ATTRS)})", errno.ENOENT)
    if a.show is None:
        raise AttrError(name, "write-only", errno.EACCES)
    return a.show(dev)


def put(dev, name, value):
    """Write ``value`` to attribute ``name``; returns a line saying what was done (or "")."""
    a = ATTRS.get(name)
    if a is None:
        raise AttrError(name, f"no such attribute (known: {', '.join(ATTRS)})", errno.ENOENT)
    if a.store is None:
        raise AttrError(name, "read-only", errno.EACCES)
    return a.store(dev, value) or ""


def listing(dev):
    """[(name, value or None for write-only, help)] for every attribute."""
    return [(a.name, a.show(dev) if a.show else None, a.help) for a in ATTRS.values()]
