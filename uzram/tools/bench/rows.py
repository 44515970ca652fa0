"""The rows of the comparison: uzram per codec and mode, the peers (nbdkit memory, the
bare Python plugin) and kernel zram, by name.
"""

import dataclasses
import os
import re

from uzram.core.codecs import CODECS
from uzram.core.config import default_workers
from uzram.core.errors import ConfigError
from .common import ZRAM_CONTROL, BenchError, listdir


def parse_int_list(text, option):
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if not re.fullmatch(r"\d+", part):
            raise ConfigError(f"{option}: {part!r} is not a whole number >= 0")
        if int(part) > 256:
            raise ConfigError(f"{option}: {part} is above the maximum 256")
        if int(part) not in out:
            out.append(int(part))
    if not out:
        raise ConfigError(f"{option}: empty list")
    return out


@dataclasses.dataclass(frozen=True)
class Row:
    """One target of the comparison."""

    name: str
    """Short unique name (``uzram-lz4-inline``, ``nbdkit-memory-zstd``, ...)."""
    kind: str
    """``uzram``, ``nbdkit-memory``, ``bare`` or ``kernel-zram``."""
    algorithm: str = ""
    """Codec (uzram, kernel zram, nbdkit allocator=zstd), else empty."""
    workers: int = 0
    """uzram only: kcompressd workers (0 = inline)."""
    options: tuple = ()
    """Extra plugin keys (the bare plugin's ``pin=1``)."""
    plain: bool = False
    """uzram only: nbdkit started as a user would start it, without ``--threads``."""

    @property
    def label(self):
        if self.kind == "uzram":
            mode = "inline" if self.workers == 0 else f"kcompressd x{self.workers}"
            return f"uzram {self.algorithm} {mode}" + (" (plain nbdkit, no --threads)" if self.plain else "")
        if self.kind == "nbdkit-memory":
            return "nbdkit memory" + (" allocator=zstd" if self.algorithm else "")
        if self.kind == "bare":
            return "bare Python plugin" + (", thread state pinned" if "pin=1" in self.options else "")
        return f"kernel zram {self.algorithm}"


PEER_ROWS = {
    "nbdkit-memory": Row("nbdkit-memory", "nbdkit-memory"),
    "nbdkit-memory-zstd": Row("nbdkit-memory-zstd", "nbdkit-memory", "zstd"),
    "bare-python": Row("bare-python", "bare"),
    "bare-python-pinned": Row("bare-python-pinned", "bare", options=("pin=1",)),
}
UZRAM_ROW = re.compile(r"uzram-([a-z0-9]+)-(inline|w(\d+))(-plain)?")
_ZRAM_ROW = re.compile(r"kernel-zram-([a-z0-9-]+)")


def uzram_row(algorithm, workers, plain=False):
    name = f"uzram-{algorithm}-{'inline' if workers == 0 else f'w{workers}'}" + ("-plain" if plain else "")
    return Row(name, "uzram", algorithm, workers, plain=plain)


def row_by_name(name):
    """A Row from its name; BenchError names the bad one."""
    name = name.strip()
    if name in PEER_ROWS:
        return PEER_ROWS[name]
    m = UZRAM_ROW.fullmatch(name)
    if m:
        if m.group(1) not in CODECS:
            raise BenchError(f"--rows: {name!r}: unknown codec {m.group(1)!r} (codecs: {', '.join(CODECS)})")
        return uzram_row(m.group(1), 0 if m.group(2) == "inline" else int(m.group(3)), bool(m.group(4)))
    m = _ZRAM_ROW.fullmatch(name)
    if m:
        return Row(name, "kernel-zram", m.group(1))
    raise BenchError(f"--rows: unknown row {name!r} (rows are uzram-CODEC-inline, uzram-CODEC-wN, "
                     "either with -plain, "
                     f"{', '.join(PEER_ROWS)}, kernel-zram-ALGORITHM)")


def default_rows(workers=None, algorithms=("lz4", "zstd")):
    """uzram per codec and mode, then the peers, then kernel zram (lz4, and zstd if the kernel has it)."""
    if workers is None:
        workers = [0] + list(range(1, default_workers() + 1))
    rows = [uzram_row(a, w) for w in workers for a in algorithms]
    # the same server started as plain nbdkit, inline and with the fewest workers
    rows += [uzram_row(algorithms[0], w, plain=True) for w in sorted({min(workers), min(workers, key=lambda w: (w == 0, w))})]
    rows += list(PEER_ROWS.values())
    zram_algs = kernel_zram_algorithms()
    for alg in algorithms:
        if not zram_algs or alg in zram_algs:
            rows.append(Row(f"kernel-zram-{alg}", "kernel-zram", alg))
    return rows


def select_rows(names=None, workers=None):
    if not names:
        return default_rows(workers)
    rows = []
    for name in names.split(","):
        if name.strip():
            row = row_by_name(name)
            if row not in rows:
                rows.append(row)
    if not rows:
        raise BenchError("--rows: empty list")
    return rows


def kernel_zram_algorithms():
    """Codecs the kernel's zram offers (empty when there is no zram-control)."""
    if not os.path.isdir(ZRAM_CONTROL):
        return []
    for dev in sorted(listdir("/sys/block")):
        path = f"/sys/block/{dev}/comp_algorithm"
        if dev.startswith("zram") and os.path.exists(path):
            try:
                with open(path) as f:
                    return [a.strip("[]") for a in f.read().split()]
            except OSError:
                return []
    return []
