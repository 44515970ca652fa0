"""Who may serve a name, and where: the runtime directory's checks against another local
user, and the one owner per name (real nbdkit, real processes)."""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading

import pytest

from helpers import env_i
from uzram.nbd import control
from uzram.nbd.server import nbdkit_argv

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def uzram_cli(*args, user=None, env=None, timeout=60):
    argv = [sys.executable, "-m", "uzram", *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] + argv
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=timeout, env=env)


def one_line(r, status, text):
    assert r.returncode == status, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], r.stderr
    return lines[0]


@pytest.fixture
def two_users(need_root):
    """Two fresh local users (victim, attacker) as (name, uid) pairs; both removed at
    teardown, with whatever /tmp/uzram-UID the test made, also when it fails."""
    made = []
    try:
        for role in ("v", "a"):
            name = f"uzt{role}{os.getpid() % 100000}"
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                           check=True, capture_output=True)
            made.append(name)
        yield [(n, pwd.getpwnam(n).pw_uid) for n in made]
    finally:
        for name in made:
            try:
                uid = pwd.getpwnam(name).pw_uid
            except KeyError:
                continue
            shutil.rmtree(f"/tmp/uzram-{uid}", ignore_errors=True)
            subprocess.run(["userdel", name], capture_output=True)
        for name in made:
            with pytest.raises(KeyError):
                pwd.getpwnam(name)


def fake_device(path, uid):
    """A control socket at ``path``, owned by ``uid``, answering every query with made-up
    statistics: what another user could put in a directory they own."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    os.chown(path, uid, uid)
    os.chmod(path, 0o777)
    s.listen(8)

    def serve():
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            with c:
                c.recv(256)
                c.sendall(b'{"orig_data_size": 666, "disksize": 666}\n')

    threading.Thread(target=serve, daemon=True).start()
    return s


def test_a_tmp_directory_made_by_another_user_is_refused(two_users, tmp_path):
    (victim, vuid), (attacker, auid) = two_users
    # The attacker makes the victim's default runtime directory first, with a device in it.
    rt = f"/tmp/uzram-{vuid}/uzram/uzram0"
    os.makedirs(rt)
    for p in (f"/tmp/uzram-{vuid}", f"/tmp/uzram-{vuid}/uzram", rt):
        os.chown(p, auid, auid)
        os.chmod(p, 0o755)
    fake = fake_device(os.path.join(rt, "control.sock"), auid)
    try:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/"}   # no XDG_RUNTIME_DIR
        why = f"/tmp/uzram-{vuid} is owned by uid {auid} ({attacker}), not by you (uid {vuid} ({victim}))"
        r = uzram_cli("stats", user=vuid, env=env)
        one_line(r, 2, why)
        assert "666" not in r.stdout + r.stderr
        one_line(uzram_cli("serve", "--size", "16M", "--workers", "0", user=vuid, env=env), 2, why)
    finally:
        fake.close()
    # nothing of the attacker's was changed or moved
    assert os.stat(f"/tmp/uzram-{vuid}").st_uid == auid


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Serve:
    """``uzram serve ARGS`` in the background, up once it has printed its URI."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, "-m", "uzram", "serve", *args], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = [self.proc.stdout.readline() for _ in range(2)]
        assert "URI:" in self.lines[1], (self.lines, self.proc.poll() is not None and self.proc.stderr.read())

    def nbdkit_pid(self):
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-x", "nbdkit"], capture_output=True, text=True)
        return int(out.stdout.split()[0])

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def serve():
    started = []

    def make(*args):
        s = Serve(*args)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def test_two_tcp_serves_of_one_name(serve, tmp_path, nbd):
    rt = str(tmp_path / "rt")
    first = serve("--size", "16M", "--workers", "0", "--runtime-dir", rt, "--tcp", str(free_port()))
    pid = first.nbdkit_pid()
    r = uzram_cli("serve", "--size", "16M", "--workers", "0", "--runtime-dir", rt, "--tcp", str(free_port()))
    one_line(r, 2, f"uzram0 is already served by pid {pid}")
    # the first one still owns its sockets and serves
    assert control.query(rt, "ping")["pid"] == pid
    h = nbd.NBD()
    h.connect_uri(first.lines[1].split()[-1])
    assert h.get_size() == 16 << 20
    h.shutdown()


def test_the_plugin_itself_refuses_a_name_in_use(server, tmp_path):
    first = server(size="16M")
    pid = control.query(first.runtime_dir, "ping")["pid"]
    argv = env_i(nbdkit_argv({"size": "16M", "workers": 0, "runtime_dir": first.runtime_dir},
                             socket_path=str(tmp_path / "other.sock")))
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"nbdkit: uzram: error: uzram0 is already served by pid {pid} (it holds {first.runtime_dir}/lock)"]
    assert control.query(first.runtime_dir, "ping")["pid"] == pid
    assert os.path.exists(first.socket)


def test_every_stop_leaves_an_empty_runtime_dir(serve, tmp_path, nbd):
    rt = tmp_path / "rt"
    s = serve("--size", "16M", "--workers", "1", "--runtime-dir", str(rt))
    assert sorted(os.listdir(rt)) == ["control.sock", "kcompressd.sock", "lock", "nbd.sock"]
    s.stop()
    assert os.listdir(rt) == []
    # SIGKILL: nothing can clean up, so the next server does, once it holds the lock
    s = serve("--size", "16M", "--workers", "1", "--runtime-dir", str(rt))
    pid = s.nbdkit_pid()
    os.kill(pid, signal.SIGKILL)
    s.proc.wait(30)
    assert set(os.listdir(rt)) >= {"control.sock", "kcompressd.sock", "lock"}
    s = serve("--size", "16M", "--workers", "1", "--runtime-dir", str(rt))
    h = nbd.NBD()
    h.connect_uri(s.lines[1].split()[-1])
    h.pwrite(b"x" * 4096, 0)
    h.shutdown()
    s.stop()
    assert os.listdir(rt) == []
