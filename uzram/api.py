"""The Python API for code that is not pytest: ``uzram.Server``.

    import nbd, uzram

    with uzram.Server(size="64M", algorithm="zstd", mem_limit="32M") as dev:
        h = nbd.NBD()
        h.connect_uri(dev.uri)              # or nbdcopy, nbdinfo, qemu on dev.socket
        h.pwrite(b"x" * 4096, 0)
        h.shutdown()
        print(dev.stats()["orig_data_size"])    # 4096: zram's names, as uzram stats --json
        block = dev.attach()                # /dev/loopN (root; nbdfuse + loop, or nbd-client)

Each Server runs its own nbdkit, a child of this process that exits with it, on a Unix
socket in a fresh private runtime directory; leaving the ``with`` block (or ``stop()``)
detaches the block device, stops nbdkit and its workers and removes the directory, also
when the block raised.  The pytest plugin (uzram/pytest_plugin.py) hands out the same
objects.
"""

import os
import shutil
import tempfile

from uzram.host import blockdev
from uzram.nbd import server as _server


class Server(_server.Server):
    """A uzram device served by a child nbdkit.

    Keyword arguments are ``uzram serve``'s: ``size`` (default 64M here), ``algorithm``
    (``lz4``, ``zstd:9``, ...), ``workers`` (default 0 here: compress inline; N starts N
    kcompressd workers), ``mem_limit``, ``max_pending``, ``batch_pages``, ``name``,
    ``runtime_dir`` (default: a fresh private directory under $TMPDIR, removed at stop),
    ``socket_path``, ``tcp_port``, ``host``, ``tls_psk``, and any other plugin key.

    Attributes and methods: ``uri`` (the NBD URI), ``socket`` (the Unix socket path),
    ``runtime_dir``, ``stats()`` (a Stats: ``s["orig_data_size"]``, ``s.keys()``,
    ``s.orig_data_size``), ``attach(how="auto")`` (a block device path; root), ``detach()``,
    ``start()``, ``stop()``; ``pid`` is nbdkit's process ID while it runs.
    """

    def __init__(self, size="64M", *, workers=0, runtime_dir=None, **keys):
        self._own_dir = None
        if runtime_dir is None:
            self._own_dir = runtime_dir = tempfile.mkdtemp(prefix="uzram-")
        super().__init__(size, workers=workers, runtime_dir=runtime_dir, **keys)
        self._attachments = []

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    @property
    def block_device(self):
        """The path of the block device ``attach`` made last, or None."""
        return self._attachments[-1].path if self._attachments else None

    def attach(self, how="auto", timeout=30):
        """Attach the device as a block device and return its path (/dev/loopN by nbdfuse +
        loop, or /dev/nbdN by nbd-client where the kernel has NBD; ``how`` = "loop" or
        "nbd" chooses).  Needs root; ``blockdev.unavailable(how)`` says why a host cannot.
        Raises blockdev.AttachError.  ``stop()`` detaches it."""
        if self.proc is None:
            raise blockdev.AttachError("the server is not running (start() it first)")
        workdir = os.path.join(self.runtime_dir, f"attach{len(self._attachments)}")
        os.makedirs(workdir, mode=0o700, exist_ok=True)
        a = blockdev.attach(self.uri, self.socket, workdir, how=how, timeout=timeout)
        self._attachments.append(a)
        return a.path

    def detach(self):
        """Detach every block device ``attach`` made (the last first)."""
        while self._attachments:
            self._attachments[-1].detach()
            self._attachments.pop()

    def stop(self, timeout=10):
        try:
            self.detach()
        finally:
            super().stop(timeout)
            if self._own_dir is not None and self.proc is None:
                shutil.rmtree(self._own_dir, ignore_errors=True)

    def __repr__(self):
        state = "running" if self.proc is not None else "stopped"
        return f"<uzram.Server {self.keys.get('name')} {self.uri} {state}>"
