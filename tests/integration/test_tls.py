"""Far memory: uzram served over TCP with nbdkit's TLS and a pre-shared key, on loopback,
reached by libnbd over nbds://.  A wrong key and a client without TLS are refused; a
listener off loopback without TLS is refused unless --insecure."""

import os
import secrets
import signal
import socket
import subprocess
import sys

import pytest

from uzram.nbd import tls
from uzram.core.errors import ConfigError

UZRAM = [sys.executable, "-m", "uzram"]


def psk_file(path, user="alice"):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{user}:{secrets.token_hex(32)}\n")
    return str(path)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def handle(nbd):
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)
    return h


def test_data_round_trips_over_tls_and_a_wrong_key_is_refused(uzram_device_factory, nbd, tmp_path):
    good, wrong = psk_file(tmp_path / "good.psk"), psk_file(tmp_path / "wrong.psk")
    port = free_port()
    dev = uzram_device_factory(size="16M", algorithm="zstd", tcp_port=port, tls_psk=good)
    assert dev.uri == f"nbds://alice@127.0.0.1:{port}/?tls-psk-file={good}"

    h = handle(nbd)
    h.connect_uri(dev.uri)
    assert h.get_tls_negotiated()
    data = os.urandom(1 << 20) + (b"far memory " * 100000)[:1 << 20]
    h.pwrite(data, 4096)
    h.flush()
    assert h.pread(len(data), 4096) == data
    h.shutdown()
    assert dev.stats()["orig_data_size"] == 2 << 20

    # the same user with another key: the handshake fails
    h = handle(nbd)
    with pytest.raises(nbd.Error, match="gnutls_handshake|TLS"):
        h.connect_uri(f"nbds://alice@127.0.0.1:{port}/?tls-psk-file={wrong}")
    # no TLS at all: nbdkit --tls=require refuses before the export is offered
    h = handle(nbd)
    with pytest.raises(nbd.Error, match="requires TLS"):
        h.connect_uri(f"nbd://127.0.0.1:{port}/")
    # nothing got in through either
    assert dev.stats()["bytes_written"] == len(data)


def test_probe_over_tls(uzram_device_factory, tmp_path, nbd):
    good = psk_file(tmp_path / "k.psk", user="bob")
    dev = uzram_device_factory(size="16M", tcp_port=free_port(), tls_psk=good)
    r = subprocess.run(UZRAM + ["probe", dev.uri, "--count", "50", "--quiet", "--seed", "1"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "50 requests completed" in r.stdout


def test_uzram_serve_tcp_tls_psk(tmp_path, nbd):
    good = psk_file(tmp_path / "k.psk")
    port = free_port()
    proc = subprocess.Popen(UZRAM + ["serve", "--size", "8M", "--workers", "0", "--tcp", str(port), "--tls-psk", good,
                                     "--runtime-dir", str(tmp_path / "rt")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        uri = lines[1].split()[-1]
        assert uri == f"nbds://alice@127.0.0.1:{port}/?tls-psk-file={good}"
        assert lines[2].startswith("  TLS:      required")
        h = handle(nbd)
        h.connect_uri(uri)
        h.pwrite(b"z" * 8192, 0)
        assert h.pread(8192, 0) == b"z" * 8192
        h.shutdown()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def run(*args):
    return subprocess.run(UZRAM + list(args), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("extra, message", [
    (["--tcp", "10809", "--host", "0.0.0.0"], "needs --tls-psk FILE (or --insecure"),
    (["--tcp", "10809", "--tls-psk", "/nonexistent/k.psk"], "no such file"),
    (["--host", "127.0.0.2"], "--host: only with --tcp"),
    (["--insecure"], "--insecure: only with --tcp"),
])
def test_serve_refusals_are_one_line(extra, message):
    r = run("serve", "--size", "8M", *extra)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr


def test_psk_file_checks(tmp_path):
    good = psk_file(tmp_path / "good.psk", user="carol")
    assert tls.psk_users(good) == ["carol"]
    loose = tmp_path / "loose.psk"
    loose.write_text("dave:00ff\n")
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        tls.psk_users(str(loose))
    bad = tmp_path / "bad.psk"
    bad.write_text("erin:00ff\nnot a key line\n")
    bad.chmod(0o600)
    with pytest.raises(ConfigError, match=r"bad.psk:2: not USERNAME:HEXKEY"):
        tls.psk_users(str(bad))
    r = run("serve", "--size", "8M", "--tcp", "10809", "--tls-psk", str(loose))
    assert r.returncode == 2 and "chmod 600" in r.stderr and len(r.stderr.splitlines()) == 1


def test_which_listeners_need_tls():
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        tls.check_listener(host, tls=False, insecure=False)      # loopback: allowed in the clear
    with pytest.raises(ConfigError, match="needs --tls-psk"):
        tls.check_listener("0.0.0.0", tls=False, insecure=False)
    with pytest.raises(ConfigError, match="needs --tls-psk"):
        tls.check_listener("192.0.2.1", tls=False, insecure=False)
    tls.check_listener("0.0.0.0", tls=True, insecure=False)
    tls.check_listener("0.0.0.0", tls=False, insecure=True)
