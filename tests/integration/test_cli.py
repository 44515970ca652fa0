"""The command line as a person uses it: uzram serve, uzram stats, and their mistakes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

UZRAM = [sys.executable, "-m", "uzram"]


def run(*args, **kw):
    return subprocess.run(UZRAM + list(args), capture_output=True, text=True, timeout=60, **kw)


def test_serve_prints_the_uri_serves_and_stops_on_sigterm(tmp_path, nbd):
    rt = tmp_path / "rt"
    proc = subprocess.Popen(UZRAM + ["serve", "--size", "16M", "--workers", "1", "--runtime-dir", str(rt)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert lines[0].startswith("uzram: serving uzram0: 16777216 bytes, lz4, 1 kcompressd worker")
        uri = lines[1].split()[-1]
        assert uri == f"nbd+unix:///?socket={rt}/nbd.sock"
        h = nbd.NBD()
        h.connect_uri(uri)
        h.pwrite(b"hello uzram" * 400, 4096)
        assert h.pread(4400, 4096) == b"hello uzram" * 400
        h.shutdown()
        stats = json.loads(run("stats", "--runtime-dir", str(rt), "--json").stdout)
        assert stats["disksize"] == 16 << 20 and stats["workers"] == 1
        assert list(stats)[0] == "version" and stats["version"] == 1 and stats["name"] == "uzram0"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "uzram: stopping" in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # nothing left: no socket, no control endpoint, no nbdkit or worker of this device
    assert not (rt / "nbd.sock").exists() and not (rt / "control.sock").exists()
    time.sleep(0.5)
    ps = subprocess.run(["pgrep", "-af", str(rt)], capture_output=True, text=True).stdout
    assert str(rt) not in ps


@pytest.mark.parametrize("args, message", [
    (["serve", "--size", "lots"], "'lots' is not a size"),
    (["serve", "--algorithm", "snappy"], "unknown codec 'snappy'"),
    (["serve", "--algorithm", "zstd:40"], "outside -7..22"),
    (["serve", "--tcp", "70000"], "not a port number"),
    (["serve", "--workers", "-2"], "workers: -2 is below the minimum 0"),
    (["stats", "--runtime-dir", "/nonexistent/uzram"], "no uzram device at /nonexistent/uzram"),
])
def test_mistakes_get_one_line_and_status_2(args, message):
    r = run(*args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert len([l for l in r.stderr.splitlines() if not l.startswith(("usage:", " "))]) == 1


@pytest.mark.parametrize("command", ["serve", "stats", "exporter", "probe", "bench", "swap", "vm"])
def test_every_command_has_help(command):
    r = run(command, "--help")
    assert r.returncode == 0 and "usage: uzram " + command in r.stdout


def test_swap_status_json_has_a_version(need_root):
    r = run("swap", "status", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["version"] == 1 and isinstance(d["devices"], list)


def test_compact_gives_memory_back(server, nbd):
    srv = server(size="64M")
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    # 3000 pages of ~2 KiB compressed, then every other page trimmed: half of each segment dies
    for i in range(0, 3000, 100):
        h.pwrite(b"".join(os.urandom(2048) + bytes(2048) for _ in range(100)), i * 4096)
    for i in range(0, 3000, 2):
        h.trim(4096, i * 4096)
    before = srv.stats()
    r = run("stats", "--runtime-dir", srv.runtime_dir, "--compact", "--json")
    after = json.loads(r.stdout)
    # half of what was held came back (the cleaner also cleans by itself once requests pause)
    assert after["mem_used_total"] < before.mem_used_max * 0.6
    assert after["pages_compacted"] > 0 and after["arena_dead_bytes"] < 64 * 1024
    assert after["mem_used_total"] <= after["compr_data_size"] * 1.02 + 64 * 1024
    for i in (1, 3, 2999):
        assert h.pread(4096, i * 4096)[2048:] == bytes(2048)
    assert h.pread(4096, 0) == bytes(4096)
    h.shutdown()


def test_serve_config_with_three_sections_serves_three_devices(tmp_path, nbd):
    conf = tmp_path / "uzram.conf"
    conf.write_text("[ta]\nzram-size = 16\ncompression-algorithm = zstd\nworkers = 0\n\n"
                    "[tb]\nzram-size = 32\nworkers = 1\nswap-priority = 5\n\n"
                    "[tc]\nsize = 8M\ncompression-algorithm = lz4hc(level=4)\nworkers = 0\n")
    rt = tmp_path / "rt"
    proc = subprocess.Popen(UZRAM + ["serve", "--config", str(conf), "--runtime-dir", str(rt)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        served = []
        while len(served) < 3:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            if line.startswith("uzram: serving"):
                served.append(line.split()[2].rstrip(":"))
        assert served == ["ta", "tb", "tc"]
        want = {"ta": (16 << 20, "zstd:3", 0), "tb": (32 << 20, "lz4", 1), "tc": (8 << 20, "lz4hc:4", 0)}
        for name, (size, algorithm, workers) in want.items():
            s = json.loads(run("stats", "--runtime-dir", str(rt / name), "--json").stdout)
            assert (s["name"], s["disksize"], s["algorithm"], s["workers"]) == (name, size, algorithm, workers)
            h = nbd.NBD()
            h.connect_uri(f"nbd+unix:///?socket={rt / name}/nbd.sock")
            h.pwrite(name.encode() * 2048, 0)
            assert h.pread(4096, 0) == name.encode() * 2048
            h.shutdown()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "Traceback" not in err, err
        assert all(os.listdir(rt / name) == [] for name in want)        # each stop cleaned up
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_size_as_a_share_of_ram(tmp_path):
    from uzram.core.config import ram_bytes
    rt = tmp_path / "rt"
    proc = subprocess.Popen(UZRAM + ["serve", "--size", "1%", "--workers", "0", "--runtime-dir", str(rt)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"uzram: serving uzram0: {ram_bytes() // 100 // 4096 * 4096} bytes"), \
            line + proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_a_config_mistake_is_one_line_with_file_and_line(tmp_path):
    conf = tmp_path / "uzram.conf"
    conf.write_text("[a]\nzram-size = 16\nworkers = many\n")
    r = run("serve", "--config", str(conf), "--runtime-dir", str(tmp_path / "rt"))
    assert r.returncode == 2 and r.stderr.strip() == f"uzram serve: {conf}:3: workers: 'many' is not a whole number"
