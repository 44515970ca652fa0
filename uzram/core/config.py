"""Configuration: the keys the plugin (and ``uzram serve``) accept, parsed strictly.

An unknown key or a bad value raises ConfigError naming it.  ``KEYS`` is the one place
that documents every key; ``config_help()`` renders it for ``--dump-plugin`` and the CLI.
"""

import dataclasses
import os
import re

from .codecs import CODECS, parse_algorithm
from .constants import PAGE_SIZE
from .errors import ConfigError

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgtpe]?)(i?b?)\s*$", re.IGNORECASE)
_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


def parse_size(text, key="size"):
    """``4096``, ``64K``, ``1G``, ``2TiB`` -> bytes (binary suffixes, as nbdkit)."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ConfigError(f"{key}: {text!r} is not a size (a number with an optional K/M/G/T suffix)")
    return int(m.group(1)) << _SHIFT[m.group(2).lower()]


def parse_int(text, key, minimum=0):
    try:
        value = int(str(text).strip(), 10)
    except ValueError:
        raise ConfigError(f"{key}: {text!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{key}: {value} is below the minimum {minimum}")
    return value


def default_workers():
    return max(1, (os.cpu_count() or 2) - 1)


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




#: key -> (help text, default shown).  The single source of key documentation.
KEYS = {
    "size": ("Size of the device: bytes or with a K/M/G/T suffix (binary).", "required"),
    "algorithm": (
        f"Codec for new pages: {', '.join(CODECS)}; optionally NAME:LEVEL (zstd:9). "
        "Pages already stored keep their own codec.", "lz4"),
    "level": ("Compression level for the chosen codec (zstd -7..22, lz4hc 1..12, deflate 1..9).", "codec default"),
    "mem_limit": ("Most memory the stored pages may hold (mem_used_total); a write beyond it fails "
                  "with ENOSPC and stores nothing. 0 = no limit.", "0"),
    "workers": ("kcompressd worker processes compressing writes in the background; 0 = compress "
                "inline in the request path.", "CPUs - 1, at least 1"),
    "max_pending": ("Memory for pages queued for compression (the pending ring shared with the "
                    "workers); when it is full, writers compress inline (counted as writestall). "
                    "A request larger than a quarter of it is compressed inline.", "32M"),
    "batch_pages": ("Most pages in one job for a worker (at most 256).", "256"),
    "mlock": ("1 = lock the device in memory, for swapping on it: the nbdkit process locks itself "
              "at after_fork and the kcompressd workers lock themselves, on fault (mlockall "
              "MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT: pages as they are used). nbdkit --swap is not "
              "needed; it would fault in and lock every current mapping whole.", "0"),
    "name": ("Device name: names the runtime directory and appears in statistics.", "uzram0"),
    "runtime_dir": ("Private directory (mode 0700) for the control socket and worker sockets.",
                    "$XDG_RUNTIME_DIR/uzram/NAME, /run/uzram/NAME as root"),
    "python": ("Python interpreter that runs kcompressd workers (needs uzram importable).",
               "the venv the plugin loaded uzram from"),
}


@dataclasses.dataclass
class Config:
    size: int = 0
    algorithm: str = "lz4"
    level: int = None
    mem_limit: int = 0
    workers: int = dataclasses.field(default_factory=default_workers)
    max_pending: int = 32 << 20
    batch_pages: int = 256
    mlock: bool = False
    name: str = "uzram0"
    runtime_dir: str = None
    python: str = None

    _seen: set = dataclasses.field(default_factory=set, repr=False)

    def set(self, key, value):
        """Apply one ``key=value``; raises ConfigError naming the key."""
        if key not in KEYS:
            raise ConfigError(f"unknown key {key!r} (known keys: {', '.join(KEYS)})")
        if key in self._seen:
            raise ConfigError(f"{key}: given more than once")
        self._seen.add(key)
        if key in ("size", "mem_limit", "max_pending"):
            setattr(self, key, parse_size(value, key))
        elif key in ("workers", "batch_pages"):
            setattr(self, key, parse_int(value, key, minimum=0 if key == "workers" else 1))
        elif key == "level":
            self.level = parse_int(value, key, minimum=-1000)
        elif key == "mlock":
            if str(value).strip().lower() not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
                raise ConfigError(f"mlock: {value!r} is not a boolean (0 or 1)")
            self.mlock = str(value).strip().lower() in ("1", "true", "yes", "on")
        elif key == "algorithm":
            self.algorithm = str(value).strip().lower()
        elif key == "name":
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value) or value.startswith("."):
                raise ConfigError(f"name: {value!r} must be 1-64 letters, digits, '_', '-' or '.'")
            self.name = value
        else:
            setattr(self, key, value)

    def complete(self):
        """Check the whole configuration; returns self.  Raises ConfigError."""
        if "size" not in self._seen and not self.size:
            raise ConfigError("size: required (for example size=1G)")
        if self.size <= 0:
            raise ConfigError("size: must be more than 0")
        if self.size > (1 << 31) * PAGE_SIZE:
            raise ConfigError("size: at most 8T")
        self.codec()  # validates algorithm and level
        if self.batch_pages > 256:
            raise ConfigError("batch_pages: at most 256 (a job's window must fit one 1 MiB arena segment)")
        if self.workers > 256:
            raise ConfigError("workers: at most 256")
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
    return f"{key}=<{'SIZE' if key in ('size', 'mem_limit', 'max_pending') else 'VALUE'}>"


def config_help():
    lines = []
    for key, (text, default) in KEYS.items():
        lines.append(key_syntax(key))
        lines.append(f"    {text} Default: {default}.")
    return "\n".join(lines)
