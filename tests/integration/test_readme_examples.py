"""The README's examples, run as a user would: the pytest example through the installed
plugin (its pytest11 entry point, in a directory with no conftest and no uzram config),
the Python API example as a script.  And the plugin's promise that nothing is left behind
when a test fails."""

import os
import re
import subprocess
import sys

import pytest

from helpers import IN_CI

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def example(name):
    """The fenced Python block between the README's uzram-example:NAME markers."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    m = re.search(rf"<!-- uzram-example:{name} begin -->\n```python\n(.*?)```\n<!-- uzram-example:{name} end -->",
                  text, re.S)
    assert m, f"README.md has no uzram-example:{name} block"
    return m.group(1)


def pytest_in(tmp_path, *args):
    """pytest run the way a user's project runs it: elsewhere, with only the installed plugins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_the_readme_pytest_example_runs_through_the_installed_plugin(tmp_path, nbd):
    (tmp_path / "test_with_uzram.py").write_text(example("pytest"))
    r = pytest_in(tmp_path, "test_with_uzram.py")
    if os.geteuid() == 0 or IN_CI:
        assert re.search(r"\b3 passed\b", r.stdout), r.stdout + r.stderr
    else:   # attach() skips without root, naming why
        assert re.search(r"\b2 passed, 1 skipped\b", r.stdout) and "needs root" in r.stdout, r.stdout
    # without the plugin the fixtures do not exist: it is the plugin that provides them
    r = pytest_in(tmp_path, "-p", "no:uzram", "test_with_uzram.py")
    assert r.returncode != 0 and "fixture 'uzram_device' not found" in r.stdout


def test_the_readme_api_example_prints_what_the_readme_says(tmp_path, nbd):
    (tmp_path / "example.py").write_text(example("api"))
    r = subprocess.run([sys.executable, str(tmp_path / "example.py")], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    said = re.search(r"<!-- uzram-example:api end -->\n\nThis prints `([^`]*)`", readme).group(1)
    assert r.stdout.strip() == said


FAILING = '''
import os, pytest

def test_fails_with_devices_up(uzram_device, uzram_device_factory, record):
    other = uzram_device_factory(size="8M", workers=1)
    record(uzram_device, other)
    if os.geteuid() == 0:
        record.block(uzram_device.attach())
    assert False, "this test fails on purpose"

@pytest.fixture
def record():
    out = open(os.environ["RECORD"], "w")
    class R:
        def __call__(self, *devs):
            for d in devs:
                out.write(f"dir {d.runtime_dir}\\npid {d.pid}\\n")
            out.flush()
        def block(self, path):
            out.write(f"block {path}\\n")
            out.flush()
    yield R()
    out.close()
'''


def test_devices_are_torn_down_when_the_test_fails(tmp_path, nbd):
    (tmp_path / "test_fails.py").write_text(FAILING)
    record = tmp_path / "record"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_fails.py"],
                       cwd=tmp_path, env=dict(os.environ, RECORD=str(record)), capture_output=True, text=True,
                       timeout=300)
    assert "1 failed" in r.stdout and "this test fails on purpose" in r.stdout, r.stdout
    lines = [line.split(" ", 1) for line in record.read_text().splitlines()]
    dirs = [v for k, v in lines if k == "dir"]
    pids = [int(v) for k, v in lines if k == "pid"]
    assert len(dirs) == 2 and len(pids) == 2
    for d in dirs:
        assert not os.path.exists(d), f"{d} left behind"
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"nbdkit {pid} left running"
    for k, v in lines:
        if k == "block":
            loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
            assert v + ":" not in loops, f"{v} left attached"
    with open("/proc/mounts") as f:
        mounts = f.read()
    assert not any(d in mounts for d in dirs)
    # the workers of the second device are gone too
    ps = subprocess.run(["pgrep", "-af", "uzram-kcompressd"], capture_output=True, text=True).stdout
    assert not any(d in ps for d in dirs)


@pytest.mark.root
def test_attach_makes_a_block_device_that_reaches_the_device(need_root, uzram_device_factory):
    dev = uzram_device_factory(size="16M", algorithm="zstd")
    path = dev.attach()
    assert path.startswith(("/dev/loop", "/dev/nbd")) and dev.block_device == path
    data = (b"block device page " * 228)[:4096]
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    try:
        import mmap
        buf = mmap.mmap(-1, 64 * 4096)
        buf.write(data * 64)
        assert os.pwritev(fd, [buf], 4096 * 10) == 64 * 4096
        os.fsync(fd)
        with open(path, "rb") as f:
            f.seek(4096 * 10)
            assert f.read(4096) == data
    finally:
        os.close(fd)
    s = dev.stats()
    assert s["orig_data_size"] == 64 * 4096 and s["compressed_pages"] == 64
    size = subprocess.run(["blockdev", "--getsize64", path], capture_output=True, text=True).stdout.strip()
    assert int(size) == 16 << 20
    dev.detach()
    assert dev.block_device is None
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert path + ":" not in loops
