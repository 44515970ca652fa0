"""uzram installed, not run from the checkout: a wheel built from the tree, installed with pip
(not editable) into a new virtual environment made from Debian's python3 with
--system-site-packages, then used from a directory outside the checkout: ``uzram
--version``, plain nbdkit on ``uzram plugin-path`` with an nbdcopy round trip, and ``uzram
serve``, each with a kcompressd worker that runs on that environment's python (Debian's
python3 alone has no pyzmq: a worker on it would never become ready).

Offline: the wheel is built without build isolation (setuptools and wheel from Debian's
python3) and installed with --no-index --no-deps; the new environment gets the packages
uzram needs (numpy, pyzmq, lz4, zstandard, setproctitle) from the environment that runs
the tests, through a .pth file, so that the test needs no package index.  About 20 s.
"""

import json
import os
import shutil
import signal
import subprocess
import sysconfig

import pytest

from helpers import need_tool, page
from uzram import __version__
from uzram.nbd.server import CLEAN_PATH

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYSTEM_PYTHON = "/usr/bin/python3"      # the interpreter nbdkit embeds


def run(argv, cwd, env, timeout=120):
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{argv}: status {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, env, elsewhere): uzram installed from a wheel into venv; env has no trace of
    the checkout or of the test's environment; elsewhere is an empty directory to run in."""
    need_tool("nbdkit")
    need_tool("nbdcopy")
    tmp = tmp_path_factory.mktemp("install")
    # build from a copy, so that the build leaves nothing in the checkout
    src = tmp / "src"
    os.makedirs(src)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src)
    shutil.copytree(os.path.join(REPO, "uzram"), src / "uzram", ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PATH": CLEAN_PATH, "HOME": str(tmp), "LANG": "C.UTF-8", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    run([SYSTEM_PYTHON, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp / "dist"), str(src)], tmp, env, timeout=300)
    [wheel] = os.listdir(tmp / "dist")
    venv = tmp / "venv"
    run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(venv)], tmp, env)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index", "--no-deps", "-q",
         str(tmp / "dist" / wheel)], tmp, env, timeout=300)
    # uzram's own packages from the tests' environment (appended to sys.path: the installed
    # uzram comes first, and that environment's .pth files, an editable uzram's among them,
    # are not read)
    site = run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               tmp, env).strip()
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    with open(os.path.join(site, "uzram-test-deps.pth"), "w") as f:
        f.write("".join(p + "\n" for p in sorted(here)))
    elsewhere = tmp / "elsewhere"
    os.makedirs(elsewhere)
    return venv, dict(env, PATH=f"{venv}/bin:{CLEAN_PATH}"), elsewhere


def test_the_installed_uzram_is_the_one_that_runs(installed):
    venv, env, elsewhere = installed
    assert run(["uzram", "--version"], elsewhere, env).strip() == f"uzram {__version__}"
    plugin = run(["uzram", "plugin-path"], elsewhere, env).strip()
    assert plugin.startswith(f"{venv}/lib/") and plugin.endswith("/site-packages/uzram/nbd/nbdkit_plugin.py")
    where = run(["python", "-c", "import uzram; print(uzram.__file__)"], elsewhere, env).strip()
    assert where.startswith(f"{venv}/lib/") and not where.startswith(REPO)
    # the package data: the bench's bare plugin and the VM's guest files
    for rel in ("tools/bench/bare_plugin.py", "tools/vm/guest/init", "tools/vm/guest/eater.c"):
        assert os.path.exists(os.path.join(os.path.dirname(where), rel)), rel


def test_plain_nbdkit_serves_the_installed_plugin(installed, tmp_path):
    venv, env, elsewhere = installed
    plugin = run(["uzram", "plugin-path"], elsewhere, env).strip()
    data = tmp_path / "in.img"
    data.write_bytes(b"".join(page(i) for i in range(4096)))         # 16 MiB of every kind
    out, rt = tmp_path / "out.img", tmp_path / "rt"
    script = (f"{venv}/bin/python -c 'from uzram.nbd.server import wait_workers_ready as w; w(\"{rt}\", 30)' && "
              f'nbdcopy {data} "$uri" && nbdcopy "$uri" {out} && '
              f"{venv}/bin/uzram stats --json --runtime-dir {rt} > {tmp_path}/stats.json")
    # as the README says to start it: a clean environment, no UZRAM_VENV; the plugin finds
    # the environment from where it is installed
    run(["nbdkit", "-U", "-", "--exit-with-parent", "python", plugin, "size=64M", "workers=1",
         f"runtime_dir={rt}", "--run", script], elsewhere, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert out.read_bytes()[:data.stat().st_size] == data.read_bytes()
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["workers_alive"] == 1 and stats["batches_sent"] > 0 and stats["compressed_pages"] > 0


def test_uzram_serve_runs_from_the_installed_environment(installed, tmp_path):
    venv, env, elsewhere = installed
    rt = tmp_path / "rt"
    proc = subprocess.Popen(["uzram", "serve", "--size", "64M", "--workers", "1", "--runtime-dir", str(rt)],
                            cwd=elsewhere, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with proc:
        try:
            first = proc.stdout.readline()
            assert first.startswith("uzram: serving uzram0: 67108864 bytes, lz4, 1 kcompressd worker"), first
            uri = proc.stdout.readline().split()[-1]
            data = tmp_path / "in.img"
            data.write_bytes(b"".join(page(i, "text") for i in range(2048)))
            run(["nbdcopy", str(data), uri], elsewhere, env)
            run(["nbdcopy", uri, str(tmp_path / "out.img")], elsewhere, env)
            assert (tmp_path / "out.img").read_bytes()[:data.stat().st_size] == data.read_bytes()
            stats = json.loads(run(["uzram", "stats", "--json", "--runtime-dir", str(rt)], elsewhere, env))
            assert stats["workers_alive"] == 1 and stats["batches_sent"] > 0 and stats["compressed_pages"] > 0
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert not os.listdir(rt)
