"""Runtime directories: every component checked, nothing fixed silently; the name's lock."""

import os
import stat

import pytest

from uzram.nbd import rundir
from uzram.nbd.rundir import RuntimeDirError, secure_dir


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_missing_components_are_made_private(tmp_path):
    path = tmp_path / "a" / "b" / "rt"
    secure_dir(str(path))
    for p in (tmp_path / "a", tmp_path / "a" / "b", path):
        assert mode(p) == 0o700


def test_an_open_runtime_dir_is_refused_not_chmodded(tmp_path):
    path = tmp_path / "rt"
    path.mkdir()
    path.chmod(0o777)
    with pytest.raises(RuntimeDirError, match=r"mode 0777.*chmod 700"):
        secure_dir(str(path))
    assert mode(path) == 0o777


def test_a_group_readable_runtime_dir_is_refused(tmp_path):
    path = tmp_path / "rt"
    path.mkdir(mode=0o750)
    path.chmod(0o750)
    with pytest.raises(RuntimeDirError, match="must be private"):
        secure_dir(str(path))


def test_a_writable_parent_is_refused_a_sticky_one_is_not(tmp_path):
    parent = tmp_path / "shared"
    parent.mkdir()
    parent.chmod(0o777)
    with pytest.raises(RuntimeDirError, match=r"shared is writable by others \(mode 0777\)"):
        secure_dir(str(parent / "rt"))
    assert not (parent / "rt").exists()
    parent.chmod(0o1777)
    secure_dir(str(parent / "rt"))


def test_a_parent_owned_by_someone_else_is_refused(tmp_path, need_root):
    parent = tmp_path / "theirs"
    parent.mkdir()
    os.chown(parent, 65534, 65534)
    with pytest.raises(RuntimeDirError, match=r"theirs is owned by uid 65534"):
        secure_dir(str(parent / "rt"))


def test_a_runtime_dir_owned_by_someone_else_is_refused(tmp_path, need_root):
    path = tmp_path / "rt"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)
    with pytest.raises(RuntimeDirError, match="owned by uid 65534"):
        secure_dir(str(path))


def test_a_symlinked_runtime_dir_is_checked_where_it_points(tmp_path):
    real = tmp_path / "open"
    real.mkdir()
    real.chmod(0o777)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(RuntimeDirError, match="open has mode 0777"):
        secure_dir(str(tmp_path / "link"))


def test_check_does_not_create(tmp_path):
    with pytest.raises(FileNotFoundError):
        rundir.check_runtime_dir(str(tmp_path / "nothing"))
    assert not (tmp_path / "nothing").exists()


def test_default_components_made_by_uzram_must_be_yours(tmp_path, monkeypatch):
    base = tmp_path / "xdg"
    base.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    rt = rundir.default_runtime_dir("dev")
    assert rt == str(base / "uzram" / "dev")
    assert rundir.strict_from(rt) == str(base)
    rundir.ensure_runtime_dir(rt)
    (base / "uzram").chmod(0o1777)   # sticky is not enough for a directory uzram made
    with pytest.raises(RuntimeDirError, match=r"uzram is writable by others \(mode 1777\)"):
        rundir.ensure_runtime_dir(rt)


def test_a_foreign_lock_holder_is_seen_without_taking_the_lock(tmp_path):
    rt = secure_dir(str(tmp_path / "rt"))
    assert rundir.holder(rt) is None
    owner = rundir.Owner.acquire(rt, "dev")
    try:
        assert rundir.holder(rt) == os.getpid()
        with pytest.raises(rundir.NameBusyError, match=f"dev is already served by pid {os.getpid()}"):
            rundir.Owner.acquire(rt, "dev")
    finally:
        owner.release()
    assert not os.path.exists(os.path.join(rt, rundir.LOCK_NAME))
    assert rundir.holder(rt) is None


def test_taking_the_lock_removes_stale_sockets(tmp_path):
    rt = secure_dir(str(tmp_path / "rt"))
    for leaf in rundir.SOCKETS + (rundir.LOCK_NAME,):
        open(os.path.join(rt, leaf), "w").close()   # as left by a SIGKILL
    owner = rundir.Owner.acquire(rt, "dev")
    try:
        assert sorted(os.listdir(rt)) == [rundir.LOCK_NAME]
    finally:
        owner.release()
    assert os.listdir(rt) == []
