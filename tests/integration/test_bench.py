"""``uzram bench`` end to end: a quick run over two rows writes a well-formed report.

Only the shape of the report is checked, never a speed: speed targets are checked by the
benchmark itself (printed and saved as JSON), not by timed tests."""

import json
import os
import subprocess
import sys

import pytest

from uzram.tools import bench
from uzram.core.errors import ConfigError
from uzram.nbd.server import REPO

ROWS = ("uzram-lz4-inline", "nbdkit-memory")
KC_ROWS = ("uzram-lz4-inline", "uzram-lz4-w1", "uzram-lz4-w1-plain")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_bench(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "uzram", "bench", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_quick_run_writes_json_charts_and_markdown(tools, nbd, tmp_path):
    out = tmp_path / "report"
    p = run_bench("--quick", "--size", "4M", "--latency-count", "200", "--rows", ",".join(ROWS),
                  "--out", str(out), "--no-progress")
    assert p.returncode == 0, p.stderr
    assert "write MB/s" in p.stdout and "Targets" in p.stdout

    result = json.loads((out / "bench.json").read_text())
    assert list(result)[0] == "version" and result["version"] == 1
    for key in ("command", "started", "machine", "source", "options", "dataset", "method", "rows", "ratios"):
        assert key in result
    assert result["command"].startswith("uzram bench --quick")
    assert [r["name"] for r in result["rows"]] == list(ROWS)
    for row in result["rows"]:
        assert row["status"] == "ok", row["error"]
        assert len(row["runs"]) == 1
        for key in ("write_mb_s", "read_mb_s", "read4k_p50_us", "read4k_p99_us", "rss_growth"):
            assert row["median"][key] > 0 or key == "rss_growth"
    uz = result["rows"][0]["median"]
    for key in ("mem_used_total", "compr_data_size", "compression_ratio", "request_cpu_share"):
        assert key in uz
    assert uz["request_cpu_share"] == 1.0  # workers=0: all compression in the request path
    assert result["dataset"]["size"] == 4 << 20
    assert sum(result["dataset"]["pages"].values()) == 1024
    rss_ratio = [r for r in result["ratios"] if r["numerator"] == "uzram-lz4-inline" and "memory" in r["name"]]
    assert rss_ratio and rss_ratio[0]["status"] in ("PASS", "MISS")
    # Rows a ratio needs but that did not run leave that ratio out.
    assert not any(r["denominator"] == "bare-python" for r in result["ratios"])

    for name in ("write.png", "read_p50.png", "memory.png"):   # serial.png only with --serial-size
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name

    md = (out / "report.md").read_text()
    lines = md.splitlines()
    assert "`uzram bench --quick --size 4M" in md
    header = next(i for i, ln in enumerate(lines) if ln.startswith("| row |"))
    assert set(lines[header + 1].replace("|", "")) <= set("-: ")
    columns = lines[header].count("|")
    body = lines[header + 2:header + 2 + len(ROWS)]
    assert [ln.split("|")[1].strip() for ln in body] == list(ROWS)
    assert all(ln.count("|") == columns for ln in body)
    assert "| target | ratio | goal | result | per round |" in md


def test_kcompressd_rows_report_the_hand_off_and_the_serialized_writer(tools, nbd, tmp_path):
    out = tmp_path / "report"
    p = run_bench("--quick", "--size", "16M", "--serial-size", "1M", "--latency-count", "100",
                  "--rows", ",".join(KC_ROWS), "--out", str(out), "--no-progress")
    assert p.returncode == 0, p.stderr
    result = json.loads((out / "bench.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert all(r["status"] == "ok" for r in rows.values()), [r["error"] for r in rows.values()]
    w1 = rows["uzram-lz4-w1"]["median"]
    # per page of the data set: the nbdkit process's CPU beside the workers' (the hand-off's cost;
    # 16 MiB, so that the workers' CPU spans a few of the kernel's 10 ms ticks)
    assert w1["server_cpu_us_page"] > 0 and w1["worker_cpu_us_page"] > 0
    assert rows["uzram-lz4-inline"]["median"]["worker_cpu_us_page"] == 0
    # memory counts the shared files and the workers' own memory too
    assert w1["shared_growth"] > 0 and "workers_growth" in w1
    assert w1["write_s"] >= w1["copy_s"]                   # the drain is part of a kcompressd write
    for name in ("uzram-lz4-inline", "uzram-lz4-w1"):      # the serialized writer ran on both ...
        assert rows[name]["median"]["serial_mb_s"] > 0 and rows[name]["median"]["serial_p99_us"] > 0
    assert "serial_mb_s" not in rows["uzram-lz4-w1-plain"]["median"]    # ... not on the plain row
    names = {r["name"]: r for r in result["ratios"]}
    for name in ("uzram lz4 kcompressd x1 write / uzram lz4 inline write",
                 "uzram lz4 kcompressd x1 serialized writer MB/s / inline",
                 "uzram lz4 kcompressd x1 serialized writer request p99 / inline p99",
                 "uzram-lz4-w1-plain write / uzram-lz4-w1 (--threads 1) write",
                 "uzram-lz4-w1-plain read / uzram-lz4-w1 (--threads 1) read"):
        assert names[name]["status"] in ("PASS", "MISS") and names[name]["value"] > 0, name
    assert "serial MB/s" in p.stdout and "wkr us/pg" in p.stdout
    assert (out / "serial.png").read_bytes()[:8] == PNG_MAGIC


def test_a_row_that_cannot_start_is_recorded_and_the_run_goes_on(tools, nbd, tmp_path):
    """A row whose server fails to start (here: a missing plugin file, as kcompressd rows did
    before workers existed) is reported failed with nbdkit's error; the other rows still run."""
    env = dict(os.environ, UZRAM_PLUGIN=str(tmp_path / "no_such_plugin.py"))
    out = tmp_path / "report"
    p = run_bench("--quick", "--size", "1M", "--latency-count", "50", "--rows", ",".join(ROWS),
                  "--out", str(out), "--no-progress", env=env)
    assert p.returncode == 0, p.stderr
    rows = {r["name"]: r for r in json.loads((out / "bench.json").read_text())["rows"]}
    assert rows["uzram-lz4-inline"]["status"] == "failed"
    assert "did not start" in rows["uzram-lz4-inline"]["error"]
    assert rows["nbdkit-memory"]["status"] == "ok"
    assert "uzram-lz4-inline  failed" in p.stdout


def test_unknown_row_is_one_line_error(tmp_path):
    p = run_bench("--rows", "uzram-lz4-inline,nbdkit-disk", "--out", str(tmp_path))
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0
    assert "nbdkit-disk" in p.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("text, message", [
    ("zero=25,bogus=3", "unknown page kind 'bogus'"),
    ("zero", "not KIND=SHARE"),
    ("zero=-1", "must be a number >= 0"),
    ("zero=0,text=0", "add up to 0"),
    ("zero=1,zero=2", "more than once"),
])
def test_parse_mix_rejects(text, message):
    with pytest.raises(ConfigError, match=message):
        bench.parse_mix(text)


def test_parse_mix_normalises():
    mix = bench.parse_mix("zero=25,same=10,text=45,random=20")
    assert mix == pytest.approx({"zero": 0.25, "same": 0.10, "text": 0.45, "random": 0.20})
    assert bench.parse_mix("text=1") == {"zero": 0.0, "same": 0.0, "text": 1.0, "random": 0.0}


def test_row_names():
    assert bench.row_by_name("uzram-zstd-w2") == bench.Row("uzram-zstd-w2", "uzram", "zstd", 2)
    assert bench.row_by_name("uzram-lz4-inline").workers == 0
    with pytest.raises(bench.BenchError, match="unknown codec 'gzip'"):
        bench.row_by_name("uzram-gzip-inline")


def test_dataset_is_deterministic_and_has_the_mix(tmp_path):
    mix = bench.parse_mix("zero=25,same=25,text=25,random=25")
    a = bench.make_dataset(str(tmp_path / "a"), 1 << 20, mix, seed=7)
    b = bench.make_dataset(str(tmp_path / "b"), 1 << 20, mix, seed=7)
    c = bench.make_dataset(str(tmp_path / "c"), 1 << 20, mix, seed=8)
    assert a.sha256 == b.sha256 != c.sha256
    assert sum(a.pages.values()) == 256 and all(n > 30 for n in a.pages.values())
    data = (tmp_path / "a").read_bytes()
    pages = [data[i:i + 4096] for i in range(0, len(data), 4096)]
    zero = sum(p == bytes(4096) for p in pages)
    same = sum(p != bytes(4096) and p == p[:8] * 512 for p in pages)
    assert zero == a.pages["zero"] and same == a.pages["same"]


def test_swap_without_the_swap_bench_leaves_the_columns_empty(monkeypatch):
    from uzram.tools.bench import measure
    monkeypatch.setattr(measure, "_swapbench", lambda: None)
    row = bench.row_by_name("uzram-lz4-inline")
    results = {row.name: {"row": row, "status": "ok", "error": None, "runs": []}}
    out = bench.run_swap([row], results, 16, bench.Progress(0, enabled=False))
    assert out["status"] == "unavailable"


def test_update_readme_replaces_only_the_marked_section(tmp_path):
    from uzram.tools import bench
    from uzram.core.errors import UzramError
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- uzram-bench:main begin -->\nold\n<!-- uzram-bench:main end -->\noutro\n")
    bench.update_readme(str(readme), "main", "# uzram bench\n\nCommand: `uzram bench`\n\n## Targets\n| a |\n")
    text = readme.read_text()
    assert "old" not in text and "Command: `uzram bench`" in text and "#### Targets" in text
    assert text.startswith("intro\n") and text.endswith("outro\n")
    with pytest.raises(UzramError, match="no '<!-- uzram-bench:swap begin -->'"):
        bench.update_readme(str(readme), "swap", "x")


def test_the_swap_bench_raises_the_bench_s_one_error():
    from uzram.tools.bench import swap
    assert swap.BenchError is bench.BenchError
