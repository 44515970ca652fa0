"""The swap configuration: ``/etc/uzram/uzram.conf``, in zram-generator's form.

    [uzram0]
    zram-size = min(ram / 2, 4096)          # MiB, over ram (this machine's MiB); or 4G, or 50%
    compression-algorithm = zstd lz4hc      # for new pages, then the codecs to recompress with
    swap-priority = 100
    writeback-device = /var/lib/uzram/uzram0.img
    workers = 1                             # and every other swap key of uzram.core.config.KEYS
    discard = yes

    [uzram1]
    zram-size = 1G

Each section is a device named by its header.  A file without sections is one device, named
by its ``name`` key (default uzram0): the form of earlier versions.  Keys are zram-generator's
where it has one (``zram-size``, ``compression-algorithm``, ``swap-priority``,
``writeback-device``) and otherwise the table's swap keys (``size``, ``algorithm``,
``priority``, ``workers``, ``mem_limit``, ``max_pending``, ``discard``), ``-`` or ``_`` alike.
A key and its other name are one key: giving both is a repetition.

Everything wrong is one ConfigError naming ``FILE:LINE`` and the key: an unknown key, a key
given twice, a value its key refuses, a section given twice, a key before the first section
of a file that has sections.  ``uzram swap check --config FILE`` reports exactly that
without starting anything.
"""

import ast
import dataclasses
import re

from uzram.core.config import KEYS, Config, ram_bytes
from uzram.core.constants import PAGE_SIZE
from uzram.core.errors import ConfigError

DEFAULT_PRIORITY = 100
SWAP_MAX_PENDING = 8 << 20     # a small ring: it is locked, and counted in VmRSS of two processes
DEFAULT_SIZE = 1 << 30
MAX_FILE = 1 << 20

#: zram-generator's name -> the table's
ALIASES = {"zram-size": "size", "compression-algorithm": "algorithm", "swap-priority": "priority",
           "writeback-device": "writeback_device"}
#: keys of the swap file beyond the table's swap keys
EXTRA_KEYS = {"writeback_device": "A file or block device that idle or incompressible pages may be written back to."}
_SECTION = re.compile(r"^\[\s*([^\]]*?)\s*\]$")


@dataclasses.dataclass
class SwapConfig:
    name: str = "uzram0"
    size: int = DEFAULT_SIZE
    algorithm: str = "lz4"
    recompress: tuple = ()
    """Codecs to recompress with, after ``algorithm`` (zram-generator's list)."""
    workers: int = None
    mem_limit: int = None
    max_pending: int = SWAP_MAX_PENDING
    priority: int = DEFAULT_PRIORITY
    discard: bool = False
    writeback_device: str = None
    where: str = None
    """FILE:LINE of the section (or file) it came from."""

    def set(self, key, value):
        """Apply one key (text from a file, or a value of its type), by either of its names.
        ``zram-size`` is zram-generator's: a plain number there is MiB; ``size`` is the
        table's: a plain number is bytes."""
        spelled, key = str(key).strip(), canonical(key)
        if key == "size":
            self.size = parse_zram_size(value) if spelled == "zram-size" else KEYS["size"].parse(value)
        elif key == "algorithm":
            self.algorithm, self.recompress = parse_algorithms(value)
        elif key == "writeback_device":
            value = str(value).strip()
            if not value.startswith("/"):
                raise ConfigError(f"writeback-device: {value!r} is not an absolute path")
            self.writeback_device = value
        else:
            setattr(self, key, KEYS[key].parse(value))

    def validate(self):
        """Check every value with the device's own rules; returns self."""
        dev = Config()
        for key, value in self.plugin_keys().items():
            if value is not None:
                dev.set(key, value)
        dev.complete()
        if self.workers is None:
            self.workers = dev.workers      # the default, resolved: what the device will run
        if self.name == "swap":
            raise ConfigError("name: 'swap' is reserved (it is the state directory)")
        return self

    def plugin_keys(self, **more):
        """The plugin keys (uzram.core.config.KEYS) that serve this device, with ``more`` over them."""
        keys = dict(size=self.size, algorithm=self.algorithm, workers=self.workers, mem_limit=self.mem_limit,
                    max_pending=self.max_pending, name=self.name,
                    recomp_algorithm=self.recompress or None, backing_dev=self.writeback_device)
        keys.update(more)
        return keys

    def describe(self):
        codecs = " ".join((self.algorithm,) + tuple(self.recompress))
        return (f"{self.name}: {self.size >> 20} MiB, {codecs}, workers {self.workers}, priority {self.priority}"
                + (", discard" if self.discard else "") + (f", writeback {self.writeback_device}"
                                                          if self.writeback_device else ""))


def canonical(key):
    """The table's name for ``key`` (zram-generator's names and dashes accepted)."""
    key = str(key).strip()
    key = ALIASES.get(key, key).replace("-", "_")
    if key not in EXTRA_KEYS and not (key in KEYS and KEYS[key].swap):
        known = sorted({k for k in KEYS if KEYS[k].swap} | set(EXTRA_KEYS) | set(ALIASES))
        raise ConfigError(f"unknown key {key!r} (known keys: {', '.join(known)})")
    return key


# --- values --------------------------------------------------------------------------------

_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Call, ast.Load,
            ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.USub, ast.UAdd)


def parse_zram_size(text):
    """A size in bytes (whole pages) from zram-generator's ``zram-size``: an arithmetic
    expression in MiB over ``ram`` (the machine's memory in MiB) with ``min`` and ``max``,
    as in ``min(ram / 2, 4096)``; or a size with a suffix (``4G``); or a share of RAM (``50%``)."""
    text = str(text).strip()
    if re.fullmatch(r"\d+\s*[kmgtpe]i?b?|\d+(\.\d+)?\s*%", text, re.I):
        return KEYS["size"].parse(text)             # a size with a suffix, or a share of RAM
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ConfigError(f"size: {text!r} is not a size or an expression over ram (MiB)") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED) or (isinstance(node, ast.Name) and node.id not in ("ram", "min", "max")) \
                or (isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in ("min", "max")
                                                         and node.args and not node.keywords)) \
                or (isinstance(node, ast.Constant) and not isinstance(node.value, (int, float))):
            raise ConfigError(f"size: {text!r}: only numbers, ram, + - * / and min(), max() are allowed")
    ram = ram_bytes() / (1 << 20)
    try:
        mib = eval(compile(tree, "zram-size", "eval"), {"__builtins__": {}}, {"ram": ram, "min": min, "max": max})
    except ZeroDivisionError:
        raise ConfigError(f"size: {text!r} divides by zero") from None
    size = int(mib * (1 << 20)) // PAGE_SIZE * PAGE_SIZE
    return KEYS["size"].parse(size)


_CODEC = re.compile(r"([a-z0-9-]+(?::-?\d+)?)\s*(?:\(([^)]*)\))?", re.I)


def parse_algorithms(text):
    """(the codec for new pages, (codecs to recompress with, ...)) from zram-generator's
    ``compression-algorithm``: names with an optional ``:LEVEL`` or ``(level=N)``, the first
    for new pages."""
    text = str(text).strip()
    out, pos = [], 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        m = _CODEC.match(text, pos)
        if not m:
            raise ConfigError(f"algorithm: cannot read {text[pos:]!r} (NAME, NAME:LEVEL or NAME(level=N))")
        name = m.group(1).lower()
        for param in filter(None, (p.strip() for p in (m.group(2) or "").split(","))):
            k, _, v = param.partition("=")
            if k.strip() != "level" or not v.strip().lstrip("-").isdigit():
                raise ConfigError(f"algorithm: {param!r}: the only parameter is level=N")
            if ":" in name:
                raise ConfigError(f"algorithm: {m.group(0)!r} gives the level twice")
            name = f"{name}:{int(v)}"
        KEYS["algorithm"].parse(name)       # names the codec or level that is wrong
        out.append(name)
        pos = m.end()
    if not out:
        raise ConfigError("algorithm: empty")
    if len(out) > 4:
        raise ConfigError("algorithm: at most 3 codecs to recompress with, after the first")
    return out[0], tuple(out[1:])


# --- the file ------------------------------------------------------------------------------

def read_text(path):
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    if len(data) > MAX_FILE:
        raise ConfigError(f"{path}: larger than 1 MiB, not a config file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not a text file (byte 0x{data[e.start]:02x} at offset {e.start} "
                          "is not UTF-8)") from None
    if "\0" in text:
        raise ConfigError(f"{path}: not a text file (it holds NUL bytes)")
    return text


def load(path):
    """Every device of the file at ``path``, in its order: [SwapConfig], each validated."""
    text = read_text(path)
    devices, current, seen = [], None, set()
    has_sections = any(_SECTION.match(line.split("#", 1)[0].strip()) for line in text.splitlines())
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{path}:{number}"
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        m = _SECTION.match(body)
        if m:
            name = m.group(1)
            try:
                KEYS["name"].parse(name)
            except ConfigError as e:
                raise ConfigError(f"{where}: [{name}]: {str(e).partition(': ')[2]}") from None
            if any(d.name == name for d in devices):
                raise ConfigError(f"{where}: [{name}]: this section is given more than once")
            current, seen = SwapConfig(name=name, where=where), set()
            devices.append(current)
            continue
        key, sep, value = body.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ConfigError(f"{where}: expected key = value or [NAME], got {line.strip()!r}")
        if current is None:
            if has_sections:
                raise ConfigError(f"{where}: {key}: outside a section (put it under a [NAME] line)")
            current = SwapConfig(where=f"{path}:1")
            devices.append(current)
        try:
            ckey = canonical(key)
            if ckey in seen:
                raise ConfigError(f"{key}: given more than once")
            if ckey == "name" and has_sections:
                raise ConfigError("name: the section's header names the device")
            seen.add(ckey)
            current.set(key, value)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    if not devices:
        devices.append(SwapConfig(where=f"{path}:1"))
    for d in devices:
        try:
            d.validate()
        except ConfigError as e:
            raise ConfigError(f"{d.where}: [{d.name}]: {e}") from None
    return devices


def select(devices, name, path):
    """The device called ``name`` among those of a file (the only one when ``name`` is None)."""
    if name is None:
        if len(devices) > 1:
            raise ConfigError(f"{path} has {len(devices)} devices ({', '.join(d.name for d in devices)}): "
                              "name one with --name")
        return devices[0]
    for d in devices:
        if d.name == name:
            return d
    raise ConfigError(f"{path} has no device {name!r} (it has {', '.join(d.name for d in devices)})")


def keys_help():
    """The file's keys, for --help."""
    rows = [(ALIASES_INV.get(k, k), KEYS[k].help) for k in KEYS if KEYS[k].swap]
    rows += [("writeback-device", EXTRA_KEYS["writeback_device"])]
    return "\n".join(f"  {k:22s} {text}" for k, text in rows)


ALIASES_INV = {v: k for k, v in ALIASES.items()}
