"""The test VM: a small qemu guest (TCG, no KVM needed) that swaps onto an NBD export and
checks that every page comes back intact.

``build()`` makes, once, and caches:
  * Debian's kernel, from the package registry: ``apt-get download`` of the linux-image
    package that ``linux-image-amd64`` depends on, unpacked with ``dpkg-deb -x``.  When the
    kernel can boot the PVH way, its vmlinux is unpacked from the bzImage (qemu then skips
    the BIOS and the in-guest decompression: seconds under TCG);
  * the virtio modules a virtio-blk disk on virtio-pci needs (those the kernel has as modules,
    with their dependencies, in load order);
  * an initramfs (cpio newc, gzip): busybox-static, ``guest/init`` and ``guest/eater.c``
    compiled with ``gcc -static -O2``.
The cache lives in $UZRAM_VM_CACHE, else $XDG_CACHE_HOME/uzram-vm, else ~/.cache/uzram-vm.
A kernel is kept per package version; the initramfs is rebuilt when one of its inputs changes.

``run(socket)`` boots the guest with the export as /dev/vda (qemu's own NBD client: the guest
kernel sees a virtio disk; no relay, no guest network), and parses the result line the guest
prints (see ``guest/init``).
"""

import dataclasses
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import selectors
import shutil
import signal
import stat
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from uzram.core.errors import ConfigError, UzramError

GUEST_DIR = Path(__file__).resolve().parent / "guest"
KERNEL_META_PACKAGE = "linux-image-amd64"
# A virtio-blk disk on virtio-pci; dependencies are found in the modules themselves.
ROOT_MODULES = ("virtio_pci", "virtio_blk")
BUSYBOX = "/bin/busybox"
QEMU = "qemu-system-x86_64"
RESULT_MARK = "UZRAM-VM-RESULT"
EXIT_MARK = "UZRAM-VM-EATER-EXIT"
EAT_FACTOR = 1.6
LOG_TAIL = 40
# Seconds a guest has to power off after it printed its result.
POWEROFF_GRACE = 15
# Kernel command line: serial console, reboot (so qemu exits: -no-reboot) on panic, keep
# the initramfs on ramfs so busybox itself can't be swapped out, and no mitigations (TCG).
APPEND = "console=ttyS0 panic=-1 quiet rootfstype=ramfs mitigations=off"


class VmError(UzramError):
    """The VM could not be built or started."""


# ------------------------------------------------------------------------ the cache


def cache_dir():
    """Where built kernels and initramfs images are kept."""
    if os.environ.get("UZRAM_VM_CACHE"):
        return Path(os.environ["UZRAM_VM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "uzram-vm"


@dataclasses.dataclass(frozen=True)
class Artifacts:
    """What ``run`` boots."""

    kernel: Path
    """vmlinux (PVH boot) when the kernel supports it, else the bzImage."""
    initrd: Path
    """The gzip'd cpio initramfs."""
    kernel_package: str
    """The Debian package file the kernel came from."""
    modules: tuple
    """The modules the guest loads, in load order (file names)."""
    builtin: tuple
    """Of ROOT_MODULES and their dependencies, those built into the kernel."""


def _tool(name):
    path = shutil.which(name)
    if path is None:
        raise VmError(f"{name} is not installed")
    return path


def _check(argv, what, **kwargs):
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs).stdout
    except FileNotFoundError:
        raise VmError(f"{what}: {argv[0]} is not installed") from None
    except subprocess.CalledProcessError as e:
        lines = (e.stderr or e.stdout or "").strip().splitlines()
        raise VmError(f"{what} failed: {lines[-1] if lines else f'exit status {e.returncode}'}") from None


def kernel_package():
    """(package, version) of the kernel image that linux-image-amd64 depends on."""
    out = _check(["apt-cache", "show", "--no-all-versions", KERNEL_META_PACKAGE], "apt-cache show")
    m = re.search(r"^Depends:.*?\b(linux-image-[0-9]\S*) \(= ([^)\s]+)\)", out, re.M)
    if m is None:
        raise VmError(f"{KERNEL_META_PACKAGE} depends on no linux-image package of a given version"
                      " (run apt-get update?)")
    return m.group(1), m.group(2)


def _sha256(*parts):
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _file_hash(path):
    return _sha256(Path(path).read_bytes())


# ------------------------------------------------------------------------ kernel


def _fetch_kernel(kdir, package, version, log):
    """Download and unpack the kernel package into ``kdir`` (vmlinuz, modules, kernel.json)."""
    work = Path(tempfile.mkdtemp(prefix="kernel-", dir=kdir.parent))
    try:
        t0 = time.monotonic()
        argv = ["apt-get", "download", f"{package}={version}"]
        if os.geteuid() == 0:
            # apt's _apt sandbox user can't write into a root-owned private directory.
            argv[1:1] = ["-o", "APT::Sandbox::User=root"]
        _check(argv, f"apt-get download {package}", cwd=work)
        debs = list(work.glob("*.deb"))
        if len(debs) != 1:
            raise VmError(f"apt-get download {package} left {len(debs)} .deb files")
        log(f"downloaded {debs[0].name} in {time.monotonic() - t0:.1f} s")
        root = work / "root"
        _check([_tool("dpkg-deb"), "-x", str(debs[0]), str(root)], "dpkg-deb -x")
        vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
        mod_roots = sorted((root / "lib" / "modules").glob("*"))
        if len(vmlinuz) != 1 or len(mod_roots) != 1:
            raise VmError(f"{debs[0].name}: expected one vmlinuz and one module tree")
        kversion = mod_roots[0].name
        config = _read_config(root / "boot" / f"config-{kversion}")
        modules, builtin = _resolve_modules(mod_roots[0], ROOT_MODULES)
        staging = work / "kernel"
        (staging / "modules").mkdir(parents=True)
        shutil.copy2(vmlinuz[0], staging / "vmlinuz")
        names = []
        for path in modules:
            name = _copy_module(path, staging / "modules")
            names.append(name)
        kernel = "vmlinuz"
        if config.get("CONFIG_PVH") == "y":
            vmlinux = _extract_vmlinux((staging / "vmlinuz").read_bytes())
            if vmlinux is not None:
                (staging / "vmlinux").write_bytes(vmlinux)
                kernel = "vmlinux"
        meta = dict(package=debs[0].name, version=version, kernel_version=kversion, kernel=kernel,
                    modules=names, builtin=builtin)
        (staging / "kernel.json").write_text(json.dumps(meta, indent=1) + "\n")
        if kdir.exists():
            shutil.rmtree(kdir)
        staging.rename(kdir)
        log(f"kernel {kversion}: boots {kernel}; modules {' '.join(names) or '(none)'};"
            f" built in: {' '.join(builtin) or '(none)'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _read_config(path):
    config = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            config[key] = value
    return config


def _norm(name):
    return name.replace("-", "_")


def _module_name(path):
    return _norm(path.name.split(".ko")[0])


def _resolve_modules(mod_root, wanted):
    """(paths of the modules to load, in load order; names among them that are built in)."""
    builtin_file = mod_root / "modules.builtin"
    builtin_names = set()
    if builtin_file.exists():
        builtin_names = {_module_name(Path(line)) for line in builtin_file.read_text().split()}
    index = {_module_name(p): p for p in (mod_root / "kernel").rglob("*.ko*")}
    order, builtin, seen = [], [], set()

    def visit(name, chain):
        name = _norm(name)
        if name in seen:
            return
        if name in chain:
            raise VmError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
        if name in builtin_names:
            seen.add(name)
            builtin.append(name)
            return
        if name not in index:
            raise VmError(f"kernel has no module or built-in {name!r}")
        deps = _check(["modinfo", "-F", "depends", str(index[name])], f"modinfo {name}").strip()
        for dep in filter(None, deps.split(",")):
            visit(dep, chain + (name,))
        seen.add(name)
        order.append(index[name])

    for name in wanted:
        visit(name, ())
    return order, builtin


def _copy_module(path, dest_dir):
    """Copy a module, decompressed (busybox insmod takes plain .ko); returns its file name."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        data = lzma.decompress(data)
    elif path.name.endswith(".ko.gz"):
        data = gzip.decompress(data)
    elif path.name.endswith(".ko.zst"):
        import zstandard

        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    elif not path.name.endswith(".ko"):
        raise VmError(f"unknown module format: {path.name}")
    name = path.name.split(".ko")[0] + ".ko"
    (dest_dir / name).write_bytes(data)
    return name


def _extract_vmlinux(bzimage):
    """The ELF vmlinux inside a bzImage (xz, gzip or zstd payload), or None."""
    try:
        setup_sects = bzimage[0x1F1] or 4
        offset, length = struct.unpack_from("<II", bzimage, 0x248)
        start = (setup_sects + 1) * 512 + offset
        payload = bzimage[start:start + length]
        if payload.startswith(b"\xfd7zXZ\x00"):
            data = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
        elif payload.startswith(b"\x1f\x8b"):
            data = gzip.GzipFile(fileobj=io.BytesIO(payload)).read()
        elif payload.startswith(b"\x28\xb5\x2f\xfd"):
            import zstandard

            data = zstandard.ZstdDecompressor().decompressobj().decompress(payload)
        else:
            return None
    except (struct.error, IndexError, lzma.LZMAError, OSError, EOFError):
        return None
    return data if data.startswith(b"\x7fELF") else None


# ------------------------------------------------------------------------ initramfs


class Cpio:
    """A cpio archive in the "newc" format, as the kernel's initramfs unpacker reads it."""

    def __init__(self):
        self.out = io.BytesIO()
        self.ino = 1

    def _entry(self, name, mode, data=b"", rdev=(0, 0)):
        name_bytes = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_bytes), 0)
        self.ino += 1
        self.out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + name_bytes)
        self.out.write(b"\0" * (-self.out.tell() % 4))
        self.out.write(data)
        self.out.write(b"\0" * (-self.out.tell() % 4))

    def directory(self, name):
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name, data, mode=0o644):
        self._entry(name, stat.S_IFREG | mode, data)

    def chardev(self, name, major, minor):
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self):
        self._entry("TRAILER!!!", 0)
        return self.out.getvalue()


def _compile_eater(source, out):
    _check([_tool("gcc"), "-static", "-O2", "-Wall", "-o", str(out), str(source)], "gcc eater.c")


def _initrd_inputs(kdir):
    """The hash of everything the initramfs is made of."""
    gcc = _check([_tool("gcc"), "--version"], "gcc --version").splitlines()[0]
    return _sha256((kdir / "kernel.json").read_text(), _file_hash(GUEST_DIR / "init"),
                   _file_hash(GUEST_DIR / "eater.c"), _file_hash(BUSYBOX), gcc)


def _make_initrd(kdir, meta, path):
    with tempfile.TemporaryDirectory(prefix="eater-") as tmp:
        eater = Path(tmp) / "eater"
        _compile_eater(GUEST_DIR / "eater.c", eater)
        cpio = Cpio()
        for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules"):
            cpio.directory(d)
        cpio.chardev("dev/console", 5, 1)
        cpio.file("init", (GUEST_DIR / "init").read_bytes(), 0o755)
        cpio.file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
        cpio.file("bin/eater", eater.read_bytes(), 0o755)
        for name in meta["modules"]:
            cpio.file(f"lib/modules/{name}", (kdir / "modules" / name).read_bytes())
        cpio.file("lib/modules/load-order", "".join(f"{n}\n" for n in meta["modules"]).encode())
        data = gzip.compress(cpio.finish(), compresslevel=6, mtime=0)
    tmp_path = path.with_suffix(".tmp")
    tmp_path.write_bytes(data)
    tmp_path.rename(path)


# ------------------------------------------------------------------------ build


def build(cache=None, force=False, log=lambda message: None):
    """Build what the VM needs unless the cache has it already; return the Artifacts."""
    cache = Path(cache) if cache else cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    if not Path(BUSYBOX).exists():
        raise VmError(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            package, version = kernel_package()
        except VmError as e:
            kdir = _newest_kernel(cache)
            if kdir is None or force:
                raise
            log(f"{e}; using the cached {kdir.name}")
        else:
            kdir = cache / _safe(f"kernel-{package}_{version}")
            if force or not (kdir / "kernel.json").exists():
                log(f"fetching {package} {version}")
                _fetch_kernel(kdir, package, version, log)
        meta = json.loads((kdir / "kernel.json").read_text())
        initrd = cache / f"initrd-{_initrd_inputs(kdir)}.gz"
        if force or not initrd.exists():
            t0 = time.monotonic()
            _make_initrd(kdir, meta, initrd)
            log(f"built {initrd.name} ({initrd.stat().st_size // 1024} KiB) in {time.monotonic() - t0:.1f} s")
        _prune(cache, keep={kdir.name, initrd.name, "lock"})
    return Artifacts(kernel=kdir / meta["kernel"], initrd=initrd, kernel_package=meta["package"],
                     modules=tuple(meta["modules"]), builtin=tuple(meta["builtin"]))


def _safe(name):
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def _newest_kernel(cache):
    kernels = [p for p in cache.glob("kernel-*") if (p / "kernel.json").exists()]
    return max(kernels, key=lambda p: p.stat().st_mtime, default=None)


def _prune(cache, keep):
    """Remove older kernels and initramfs images."""
    for path in cache.iterdir():
        if path.name in keep or not path.name.startswith(("kernel-", "initrd-")):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


# ------------------------------------------------------------------------ run


@dataclasses.dataclass(frozen=True)
class VmResult:
    """What one VM run found."""

    passed: bool
    """The eater read every page back as written (and the guest said so)."""
    reason: str
    """Why not passed ("" when passed): the guest's FAIL line, a timeout, a crash..."""
    pswpin: int
    """Pages the guest swapped in during the eater's run (/proc/vmstat)."""
    pswpout: int
    """Pages the guest swapped out during the eater's run."""
    mismatches: int
    """Pages that came back different (-1 when the eater did not get to say)."""
    elapsed: float
    """Seconds from starting qemu until it exited."""
    fields: dict
    """Every key=value of the result line."""
    log_tail: tuple
    """The last lines of the console."""

    def summary(self):
        word = "PASS" if self.passed else "FAIL"
        extra = "" if self.passed else f" ({self.reason})"
        return (f"{word}{extra}: pswpin={self.pswpin} pswpout={self.pswpout}"
                f" mismatches={self.mismatches} elapsed={self.elapsed:.1f}s")


def parse_mib(text):
    """'128M', '1G', '96' (MiB) -> MiB."""
    m = re.fullmatch(r"\s*(\d+)\s*([MmGg]?)(?:i?[Bb])?\s*", str(text))
    if not m:
        raise ConfigError(f"bad size {text!r} (expected e.g. 128M or 1G)")
    value = int(m.group(1)) * (1024 if m.group(2).lower() == "g" else 1)
    if value <= 0:
        raise ConfigError(f"bad size {text!r}")
    return value


def parse_result(lines, exit_status=None, timed_out=False):
    """(passed, reason, fields) from the console lines."""
    result = exit_line = None
    for line in lines:
        if line.startswith(RESULT_MARK + " "):
            result = line
        elif line.startswith(EXIT_MARK + " "):
            exit_line = line
    if result is None:
        if timed_out:
            reason = "timed out before a result"
        elif exit_line is not None:
            reason = f"no result line; eater exit status {exit_line.split()[1]}"
        else:
            reason = f"no result line; qemu exit status {exit_status}"
        return False, reason, {}
    words = result.split()[1:]
    fields = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    if words[0] == "PASS":
        return True, "", fields
    return False, " ".join(words), fields


def qemu_argv(artifacts, socket, memory_mib, eat_mib, seed=1):
    """The qemu command line: no network, no display, the export as a virtio disk."""
    socket_opt = str(socket).replace(",", ",,")
    return [
        QEMU, "-machine", "accel=tcg", "-nodefaults", "-no-user-config", "-display", "none",
        "-no-reboot", "-m", f"{memory_mib}M",
        "-kernel", str(artifacts.kernel), "-initrd", str(artifacts.initrd),
        "-append", f"{APPEND} uzram.eat={eat_mib} uzram.seed={seed}",
        "-drive", f"driver=nbd,server.type=unix,server.path={socket_opt},if=virtio,cache=none",
        "-nic", "none",
        "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
    ]


def run(socket, memory="128M", eat=None, timeout=300, seed=1, artifacts=None, on_line=None, log=lambda m: None):
    """Boot the VM on the NBD export at Unix ``socket``; return a VmResult.

    ``eat`` (MiB) defaults to 1.6 x memory.  ``on_line`` gets each console line as it comes.
    """
    memory_mib = parse_mib(memory)
    eat_mib = parse_mib(eat) if eat is not None else int(memory_mib * EAT_FACTOR)
    if timeout <= 0:
        raise ConfigError(f"bad timeout {timeout!r}")
    try:
        if not stat.S_ISSOCK(os.stat(socket).st_mode):
            raise VmError(f"{socket} is not a socket")
    except FileNotFoundError:
        raise VmError(f"{socket}: no such socket (is the server running?)") from None
    _tool(QEMU)
    if artifacts is None:
        artifacts = build(log=log)
    argv = qemu_argv(artifacts, socket, memory_mib, eat_mib, seed)
    lines, timed_out = [], False
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = t0 + timeout
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        pending = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = not any(line.startswith(RESULT_MARK) for line in lines)
                break
            if not sel.select(min(left, 1.0)):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                line = raw.decode(errors="replace").rstrip("\r")
                lines.append(line)
                if on_line is not None:
                    on_line(line)
                if line.startswith(RESULT_MARK) and time.monotonic() + POWEROFF_GRACE < deadline:
                    deadline = time.monotonic() + POWEROFF_GRACE
        if pending:
            lines.append(pending.decode(errors="replace").rstrip("\r"))
        sel.close()
    finally:
        _stop(proc)
    elapsed = time.monotonic() - t0
    passed, reason, fields = parse_result(lines, proc.returncode, timed_out)
    return VmResult(passed=passed, reason=reason, pswpin=int(fields.get("pswpin", 0)),
                    pswpout=int(fields.get("pswpout", 0)), mismatches=int(fields.get("mismatches", -1)),
                    elapsed=elapsed, fields=fields, log_tail=tuple(lines[-LOG_TAIL:]))


def _stop(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    proc.stdout.close()
