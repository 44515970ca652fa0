"""Swap on uzram on this host (root): ``uzram swap on/off``, a memory cgroup forcing pages
through it, and the refusals.  Every fixture undoes its swap, loop device, FUSE mount,
cgroup and server, also when a test fails."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from uzram.nbd import control
from uzram.host import swap
from uzram.host.swapconfig import SwapConfig
from uzram.host.memcg import MemoryCgroup
from uzram.core.stats import Stats
from uzram.tools.bench.swap import run_eater

pytestmark = pytest.mark.root

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKERS = int(os.environ.get("UZRAM_TEST_SWAP_WORKERS", "0"))


def uzram_cli(*args, user=None):
    argv = [sys.executable, "-m", "uzram", *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] + argv
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120)


def leftovers(name):
    """Everything of ``name`` that is still on the machine (empty when clean)."""
    found = []
    rt = f"/run/uzram/{name}"
    if os.path.exists(os.path.join(swap.STATE_DIR, f"{name}.json")):
        found.append("state file")
    if os.path.exists(rt):
        found.append(rt)
    with open("/proc/mounts") as f:
        found += [line for line in f if rt in line]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    found += [line for line in loops.splitlines() if rt in line]
    with open("/proc/swaps") as f:
        for line in f.read().splitlines()[1:]:
            dev = line.split()[0]
            if swap.loop_backing_file(dev) and rt in swap.loop_backing_file(dev):
                found.append(line)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if rt in cmd and swap.proc_start_time(int(pid)) is not None:
                found.append(f"process {pid}: {cmd[:120]}")
    return found


@pytest.fixture
def swap_name(need_root):
    """A fresh name; whatever ``on`` leaves under it is turned off at teardown."""
    name = f"uzramtest{os.getpid()}"
    yield name
    try:
        swap.swap_off(name)
    except swap.NotOnError:
        pass
    assert leftovers(name) == []


@pytest.mark.slow
def test_host_swap_moves_pages_through_uzram(swap_name):
    swap.swap_on(SwapConfig(name=swap_name, size=1 << 30, workers=WORKERS, priority=32000))
    before = Stats.from_dict(swap.swap_status(swap_name)[0]["stats"])
    report = run_eater(65536, limit=48 << 20, rounds=2, name=f"{swap_name}-eater")
    after = Stats.from_dict(swap.swap_status(swap_name)[0]["stats"])

    assert report["bad_pages"] == 0  # every page verified, twice
    assert report["phases"][0]["pswpout"] >= 40000
    written = (after.bytes_written - before.bytes_written) // 4096
    assert written >= 40000, f"only {written} pages reached uzram"
    assert after.reads > before.reads  # pages came back from uzram
    assert after.same_pages > 0
    assert after.compression_ratio > 1
    assert after.failed_writes == after.failed_reads == 0


@pytest.mark.slow
def test_swapped_pages_survive_writeback_and_recompression(swap_name, tmp_path):
    """zram-generator's recompression list and writeback-device reach the device: pages the
    kernel swapped out are marked idle, written back to the file, recompressed, and every one
    reads back right."""
    conf = tmp_path / "swap.conf"
    backing = tmp_path / "backing.img"
    conf.write_text(f"[{swap_name}]\nzram-size = 256\ncompression-algorithm = lz4 zstd:3\n"
                    f"writeback-device = {backing}\nworkers = {WORKERS}\nswap-priority = 32000\n")
    r = uzram_cli("swap", "on", "--config", str(conf), "--name", swap_name)
    assert r.returncode == 0, r.stderr
    ctl = lambda *items: uzram_cli("ctl", "--json", swap_name, *items)
    seen = {}

    def between():
        for item in ("idle=all", "writeback=huge_idle", "recompress=type=idle"):
            r = ctl(item)
            assert r.returncode == 0, r.stderr
        got = ctl()
        assert got.returncode == 0, got.stderr
        seen.update(json.loads(got.stdout)["attrs"])

    report = run_eater(16384, limit=24 << 20, rounds=1, name=f"{swap_name}-eater", between=between)
    assert report["bad_pages"] == 0
    assert report["phases"][0]["pswpout"] >= 8000
    assert seen["backing_dev"] == str(backing)
    assert seen["recomp_algorithm"].startswith("#1: ") and "[zstd" in seen["recomp_algorithm"]
    st = Stats.from_dict(swap.swap_status(swap_name)[0]["stats"])
    assert st.bd_writes > 0 and st.bd_reads > 0       # random pages went to the file and came back
    assert st.num_recompressed > 0
    assert st.failed_writes == st.failed_reads == 0


def test_on_off_round_trip_leaves_nothing(swap_name):
    r = uzram_cli("swap", "on", "--name", swap_name, "--size", "64M", "--workers", str(WORKERS), "--discard")
    assert r.returncode == 0, r.stderr
    [entry] = swap.swap_status(swap_name)
    assert entry["complete"] and entry["swap"] is not None
    assert entry["server_alive"] and entry["nbdfuse_alive"]
    assert entry["server_locked_kib"] > 0  # the plugin locked nbdkit (mlock=1)
    fp = entry["footprint"]
    names = sorted(p["name"] for p in fp["processes"])
    assert names == sorted(["nbdkit", "nbdfuse"] + ["kcompressd"] * WORKERS)
    assert all(p["locked"] > 0 for p in fp["processes"])
    # locked on fault, not faulted in whole: nbdkit --swap made nbdkit alone 341 MiB resident
    # (its 192 MiB of static buffers among it); not a budget, a guard against that
    nbdkit = next(p for p in fp["processes"] if p["name"] == "nbdkit")
    assert nbdkit["rss"] < 128 << 20, fp
    status = uzram_cli("swap", "status", "--name", swap_name)
    assert status.returncode == 0 and entry["device"] in status.stdout
    assert " MiB resident, " in status.stdout and "in nbdkit + " in status.stdout
    r = uzram_cli("swap", "off", "--name", swap_name)
    assert r.returncode == 0, r.stderr
    assert leftovers(swap_name) == []
    assert entry["device"] not in swap.proc_swaps()
    if not swap.names():                  # the last swap: its state directory goes too
        assert not os.path.exists(swap.STATE_DIR)


def fail_tool(monkeypatch, tool, error):
    """Make swap.run_tool raise ``error`` for ``tool`` and run every other tool for real.
    Returns the real run_tool."""
    real = swap.run_tool

    def fail(argv, what=None, timeout=60):
        if os.path.basename(argv[0]) == tool:
            raise error
        return real(argv, what, timeout)

    monkeypatch.setattr(swap, "run_tool", fail)
    return real


def test_failed_on_undoes_its_steps(swap_name, monkeypatch):
    fail_tool(monkeypatch, "swapon", swap.SwapError("swapon: injected failure"))
    with pytest.raises(swap.SwapError, match="injected"):
        swap.swap_on(SwapConfig(name=swap_name, size=64 << 20, workers=WORKERS))
    assert leftovers(swap_name) == []


def _one_line_refusal(r, text):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], r.stderr


def test_refuses_without_root(need_root):
    _one_line_refusal(uzram_cli("swap", "on", "--name", "nobodys", user=65534), "needs root")
    _one_line_refusal(uzram_cli("swap", "off", "--name", "nobodys", user=65534), "needs root")


def test_refuses_a_busy_name(swap_name):
    swap.swap_on(SwapConfig(name=swap_name, size=64 << 20, workers=WORKERS))
    _one_line_refusal(uzram_cli("swap", "on", "--name", swap_name, "--size", "64M"), "already on")
    assert swap.swap_status(swap_name)[0]["complete"]  # the refusal changed nothing


def test_refuses_a_name_served_with_an_idle_control_client(swap_name):
    """The take-over: a running device whose control endpoint has an idle client."""
    rt = f"/run/uzram/{swap_name}"
    serve = subprocess.Popen([sys.executable, "-m", "uzram", "serve", "--name", swap_name, "--size", "16M",
                              "--workers", "0"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert "URI:" in [serve.stdout.readline() for _ in range(2)][1]
        pid = control.query(rt, "ping")["pid"]
        sock_before = os.stat(os.path.join(rt, "nbd.sock")).st_ino
        idle.connect(os.path.join(rt, "control.sock"))
        r = uzram_cli("swap", "on", "--name", swap_name, "--size", "64M", "--workers", str(WORKERS))
        _one_line_refusal(r, f"{swap_name} is already served by pid {pid}")
        assert swap_name not in swap.names() and not any(swap_name in (swap.loop_backing_file(d) or "")
                                                         for d in swap.proc_swaps())
        # the first server keeps its sockets and answers
        assert os.stat(os.path.join(rt, "nbd.sock")).st_ino == sock_before
        assert control.query(rt, "ping")["pid"] == pid
    finally:
        idle.close()
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=30)
        if os.path.isdir(rt):
            os.rmdir(rt)      # serve leaves its (empty) runtime directory


def test_off_of_a_name_that_is_off_says_so_and_succeeds(swap_name):
    r = uzram_cli("swap", "off", "--name", swap_name)
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.strip().splitlines() == [f"uzram swap: {swap_name} is not on (nothing to do)"]


def _pgrep(pattern):
    return subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout.strip()


def test_off_returns_once_nbdkit_workers_and_nbdfuse_are_gone(swap_name):
    r = uzram_cli("swap", "on", "--name", swap_name, "--size", "64M", "--workers", "1")
    assert r.returncode == 0, r.stderr
    state = swap.State.load(swap.STATE_DIR, swap_name)
    server, fuse = state.step("server"), state.step("fuse")
    workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(server["pid"])], capture_output=True,
                                              text=True).stdout.split()]
    assert len(workers) == 1
    rt = f"/run/uzram/{swap_name}"
    assert _pgrep(rt)
    r = uzram_cli("swap", "off", "--name", swap_name)
    gone_at_once = {pid: os.path.exists(f"/proc/{pid}") for pid in
                    [server["pid"], fuse["pid"]] + workers}
    left = _pgrep(rt)
    assert r.returncode == 0, r.stderr
    assert left == ""
    assert not any(gone_at_once.values()), gone_at_once   # not even as zombies


def test_refuses_unknown_config_key(need_root, tmp_path):
    conf = tmp_path / "uzram.conf"
    conf.write_text("size = 64M\ncolour = blue\n")
    _one_line_refusal(uzram_cli("swap", "on", "--config", str(conf)), "unknown key 'colour'")


def test_a_binary_config_file_gets_one_line(need_root, tmp_path):
    conf = tmp_path / "uzram.conf"
    conf.write_bytes(b"size = 64M\n\x7fELF\x02\x01\x01\x00\xff\xfe garbage\n")
    for action in ("on", "off"):
        r = uzram_cli("swap", action, "--config", str(conf))
        _one_line_refusal(r, f"{conf}:2: not a text file (byte 0xff at offset")
        assert "Traceback" not in r.stderr


def test_on_and_status_print_the_real_worker_count(swap_name):
    from uzram.core.config import default_workers
    r = uzram_cli("swap", "on", "--name", swap_name, "--size", "64M")
    assert r.returncode == 0, r.stderr
    n = default_workers()
    assert f", workers {n}, " in r.stdout.splitlines()[0]
    status = uzram_cli("swap", "status", "--name", swap_name)
    assert f"workers {n} ({n} running)" in status.stdout, status.stdout


def test_swap_check_names_file_and_line_and_starts_nothing(tmp_path):
    # the parser's cases are tests/unit/test_swapconfig.py; this is the command
    good = tmp_path / "good.conf"
    good.write_text("[a]\nzram-size = 64\n[b]\nzram-size = 1G\nswap-priority = 5\n")
    r = uzram_cli("swap", "check", "--config", str(good))
    assert r.returncode == 0 and r.stdout.splitlines()[0] == f"{good}: 2 devices"
    assert "a: 64 MiB" in r.stdout and "b: 1024 MiB" in r.stdout and "priority 5" in r.stdout
    bad = tmp_path / "bad.conf"
    bad.write_text("[a]\nzram-size = 64\nswap-priority = loud\n")
    _one_line_refusal(uzram_cli("swap", "check", "--config", str(bad)), f"{bad}:3: priority: 'loud'")
    assert not os.path.exists("/run/uzram/a")


def test_swapoff_failure_keeps_everything(swap_name, monkeypatch):
    swap.swap_on(SwapConfig(name=swap_name, size=64 << 20, workers=WORKERS))
    real = fail_tool(monkeypatch, "swapoff", swap.SwapError("swapoff: Cannot allocate memory"))
    with pytest.raises(swap.SwapOffError, match="stays on"):
        swap.swap_off(swap_name)
    [entry] = swap.swap_status(swap_name)
    assert entry["complete"] and entry["swap"] is not None and entry["server_alive"]
    monkeypatch.setattr(swap, "run_tool", real)  # the fixture turns it off for real


def test_memory_cgroup_is_removed(need_root):
    with MemoryCgroup.create(f"t{os.getpid()}", 32 << 20) as cg:
        assert os.path.isdir(cg.path)
        r = subprocess.run(cg.wrap(["cat", "/proc/self/cgroup"]), capture_output=True, text=True)
        assert os.path.basename(cg.path) in r.stdout
    assert not os.path.exists(cg.path)


@pytest.mark.slow
def test_the_bench_swaps_each_row_once_a_round_and_takes_medians(need_root):
    """``uzram bench --swap``'s phase, real swap: two rows, two interleaved rounds, each
    round's figures in that round's run, the medians from them, nothing left behind."""
    from uzram.tools import bench
    from uzram.tools.bench import measure
    rows = [bench.row_by_name("uzram-lz4-inline"), bench.row_by_name("nbdkit-memory")]
    results = {r.name: {"row": r, "status": "ok", "error": None, "runs": [{"round": 1}, {"round": 2}]}
               for r in rows}
    out = measure.run_swap(rows, results, 20480, bench.Progress(0, enabled=False), rounds=2)
    assert out["status"] == "ok" and out["rounds"] == 2
    for r in rows:
        entry = out["rows"][r.name]
        assert "error" not in entry, entry
        assert len(entry["rounds"]) == 2 and all(x["detail"]["bad_pages"] == 0 for x in entry["rounds"])
        per_round = [run["swap_out_pages_s"] for run in results[r.name]["runs"]]
        assert per_round == [x["swap_out_pages_s"] for x in entry["rounds"]] and min(per_round) > 0
        assert measure.median_of(results[r.name]["runs"])["swap_out_pages_s"] == entry["swap_out_pages_s"]
    assert not swap.proc_swaps()
    for name in (f"uzrambench{os.getpid()}", f"membench{os.getpid()}"):
        assert leftovers(name) == []
