"""``uzram probe`` against a real ``nbdkit memory`` server (no mocks)."""

import json
import re
import subprocess
import sys
import zlib

import numpy as np
import pytest

from helpers import connect_uri, import_nbd, need_tool, nbdkit_on_socket
from uzram.tools import probe
from uzram.cli import main
from uzram.tools.probe import ProbeOptions, run_probe

nbd = import_nbd()          # in CI a missing python3-libnbd fails, not skips

EXPORT = 64 << 20


def _serve(sock, *extra):
    return nbdkit_on_socket(sock, "memory", str(EXPORT), options=extra, timeout=10)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A writable and a read-only ``nbdkit memory 64M``, by URI."""
    d = tmp_path_factory.mktemp("nbd")
    rw = _serve(str(d / "rw.sock"))
    ro = _serve(str(d / "ro.sock"), "-r")
    yield {"rw": f"nbd+unix:///?socket={d / 'rw.sock'}", "ro": f"nbd+unix:///?socket={d / 'ro.sock'}"}
    for server in (rw, ro):
        server.stop()


@pytest.fixture(scope="module")
def uri(servers):
    return servers["rw"]


def uzram(*args):
    return subprocess.run([sys.executable, "-m", "uzram", "probe", *args], capture_output=True, text=True,
                          timeout=60)


# --- the command's output ----------------------------------------------------------------

def test_request_lines_and_summary(uri):
    r = uzram(uri, "--count", "5", "--warmup", "2", "--seed", "1")
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"PROBE {uri} (64 MiB): read 4 KiB, random offsets, queue depth 1")
    requests = [ln for ln in lines if "request=" in ln]
    assert len(requests) == 7
    for k, ln in enumerate(requests):
        m = re.fullmatch(r"4 KiB read  request=(\d+) offset=(\d+) time=[\d.]+ (ns|us|ms|s)( \(warmup\))?", ln)
        assert m, ln
        assert int(m.group(1)) == k + 1 and int(m.group(2)) % 4096 == 0
        assert bool(m.group(4)) == (k < 2)
    summary = lines[lines.index(f"--- {uri} (64 MiB) probe statistics ---"):]
    assert re.fullmatch(r"5 requests completed in [\d.]+ (us|ms|s), 20 KiB read, [\d.]+ k? ?iops, [\d.]+ [KM]iB/s",
                        summary[1]), summary[1]
    assert re.fullmatch(r"generated 7 requests in [\d.]+ (us|ms|s), 28 KiB, [\d.]+ k? ?iops, [\d.]+ [KM]iB/s",
                        summary[2]), summary[2]
    assert re.fullmatch(r"min/avg/max/mdev = (\S+ \S+ / ){3}\S+ \S+", summary[3])
    assert re.fullmatch(r"percentiles: p50 = \S+ \S+, p90 = \S+ \S+, p95 = \S+ \S+, p99 = \S+ \S+, "
                        r"p99.9 = \S+ \S+, p99.99 = \S+ \S+", summary[4])
    assert summary[5].startswith("latency histogram")
    assert summary[-1] == "seed 1"
    bars = [re.fullmatch(r"\s+\S+ \S+ \.\. \s*\S+ \S+\s+(\d+)\s+[\d.]+% \|#*", ln) for ln in summary[6:-1]]
    assert all(bars) and sum(int(m.group(1)) for m in bars) == 5


def test_quiet_prints_only_the_summary(uri):
    r = uzram(uri, "--count", "20", "--quiet")
    assert r.returncode == 0
    assert r.stdout.startswith(f"--- {uri}") and "request=" not in r.stdout


def test_json_counts_exclude_warmup(uri):
    r = uzram(uri, "--json", "--op", "mixed", "--read-share", "0.5", "--count", "60", "--warmup", "7",
              "--queue-depth", "4", "--content", "text", "--seed", "3")
    assert r.returncode == 0 and r.stderr == ""
    d = json.loads(r.stdout)
    assert d["version"] == 1 and d["seed"] == 3 and d["seed_given"] and d["options"]["seed"] == 3
    assert d["requests"] == 60 and d["warmup"] == 7 and d["reads"] + d["writes"] == 60
    assert d["generated"]["requests"] == 67 and d["generated"]["time_s"] > 0
    assert d["reads"] > 0 and d["writes"] > 0
    assert d["bytes"] == 60 * 4096 and d["export_size"] == EXPORT
    assert d["options"]["queue_depth"] == 4 and d["options"]["op"] == "mixed"
    assert d["elapsed_s"] > 0 and d["iops"] > 0 and d["mib_s"] > 0
    for key in ("latency_ns", "clat_ns", "read_latency_ns", "write_latency_ns"):
        s = d[key]
        assert set(s) == {"count", "min", "avg", "max", "mdev", "percentiles"}
        assert list(s["percentiles"]) == ["p50", "p90", "p95", "p99", "p99.9", "p99.99"]
        assert s["min"] <= s["percentiles"]["p50"] <= s["percentiles"]["p99.99"] <= s["max"]
    assert d["read_latency_ns"]["count"] + d["write_latency_ns"]["count"] == 60
    buckets = d["histogram"]["buckets"]
    assert sum(b["count"] for b in buckets) == 60
    assert all(b["lo_ns"] < b["hi_ns"] for b in buckets)
    assert all(a["hi_ns"] == b["lo_ns"] for a, b in zip(buckets, buckets[1:]))
    assert buckets[0]["lo_ns"] <= d["latency_ns"]["min"] and d["latency_ns"]["max"] < buckets[-1]["hi_ns"]


def test_plot_writes_a_png(uri, tmp_path):
    png = tmp_path / "lat.png"
    r = uzram(uri, "--count", "50", "--quiet", "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"histogram written to {png}" in r.stdout


def test_plot_shows_the_tail(uri):
    # the histogram counts on a log axis, the percentile curve beside it reaches the slowest request
    res = run_probe(uri, ProbeOptions(count=300, warmup=0, seed=1))
    hist, curve = probe.latency_figure(res).axes
    assert hist.get_yscale() == "log" and hist.get_xscale() == "log"
    assert "µs" in hist.get_xlabel() and "µs" in curve.get_ylabel()
    [line] = curve.get_lines()[:1]
    assert line.get_ydata().max() == pytest.approx(res.latency_ns.max() / 1e3)
    assert len(line.get_ydata()) == 300


# --- the library: queue depth, offsets, contents -----------------------------------------

def test_queue_depth_overlaps_requests(uri):
    res = run_probe(uri, ProbeOptions(count=300, warmup=10, queue_depth=8, seed=1))
    assert res.requests == 300 and (res.latency_ns > 0).all()
    assert (res.clat_ns <= res.latency_ns).all()
    # With 8 in flight the requests overlap: the wall time is well below their sum.
    assert res.elapsed_ns < res.latency_ns.sum() / 2


@pytest.mark.parametrize("qd", [1, 4])
def test_interval_paces_requests(uri, qd):
    res = run_probe(uri, ProbeOptions(count=5, warmup=0, interval=0.01, queue_depth=qd))
    assert res.requests == 5 and res.elapsed_ns >= 4 * 10_000_000


def test_sequential_range_offsets(uri):
    o = ProbeOptions(count=12, warmup=0, pattern="sequential", range_start=8192 + 100, range_length=5 * 4096)
    res = run_probe(uri, o)
    # Aligned to the request size inside the range: blocks 3..6 (the range ends mid-block 7), wrapping.
    assert res.offsets.tolist() == [4096 * b for b in [3, 4, 5, 6] * 3]


def test_random_offsets_stay_in_range(uri):
    res = run_probe(uri, ProbeOptions(count=200, warmup=0, size=8192, range_start=1 << 20, range_length=1 << 20))
    assert (res.offsets % 8192 == 0).all()
    assert res.offsets.min() >= 1 << 20 and res.offsets.max() + 8192 <= 2 << 20


@pytest.mark.parametrize("content", ["zero", "same"])
def test_write_content_reaches_the_server(uri, content):
    start = {"zero": 4 << 20, "same": 5 << 20}[content]
    h = connect_uri(uri)
    h.pwrite(b"\xff" * (64 << 10), start)
    r = uzram(uri, "--op", "write", "--content", content, "--pattern", "sequential", "--range",
              f"{start}:64K", "--count", "16", "--warmup", "0", "--quiet", "--size", "4K")
    assert r.returncode == 0, r.stderr
    words = np.frombuffer(h.pread(64 << 10, start), dtype="<u8")
    h.shutdown()
    expected = 0 if content == "zero" else probe.SAME_FILL_WORD
    assert (words == expected).all()


def test_text_compresses_and_random_does_not():
    rng = np.random.default_rng(0)
    text = bytes(probe.make_content("text", 4096, rng))
    rand = bytes(probe.make_content("random", 4096, rng))
    assert len(text) == len(rand) == 4096
    assert len(zlib.compress(text)) < 4096 // 2 < len(zlib.compress(rand))
    assert text.isascii() and len(set(text)) > 10


# --- user mistakes: one line, exit status 2 ----------------------------------------------

def _one_line_error(r, *words):
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("uzram probe: ")
    for w in words:
        assert w in r.stderr


@pytest.mark.parametrize("args, words", [
    (["--size", "3X"], ["--size", "3X"]),
    (["--size", "64M"], ["--size"]),
    (["--count", "0"], ["--count"]),
    (["--queue-depth", "zero"], ["--queue-depth"]),
    (["--read-share", "1.5"], ["--read-share"]),
    (["--interval", "-1"], ["--interval"]),
    (["--op", "erase"], ["--op", "erase"]),
    (["--range", "1G:4K"], ["--range", "outside the export"]),
    (["--range", "100"], ["--range"]),
    (["--plot", "/nonexistent/dir/lat.png"], ["--plot", "/nonexistent/dir"]),
])
def test_bad_option_is_one_line(uri, args, words, capsys):
    # In-process (fast); test_bad_value_as_a_command below checks the real command.
    try:
        rc = main(["probe", uri, "--count", "3", *args])
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    out, err = capsys.readouterr()
    _one_line_error(subprocess.CompletedProcess([], rc, out, err), *words)


def test_bad_value_as_a_command(uri):
    _one_line_error(uzram(uri, "--size", "4Q"), "--size", "4Q")
    _one_line_error(uzram(uri, "--pattern", "zigzag"), "--pattern", "zigzag")


def test_write_to_read_only_export(servers):
    _one_line_error(uzram(servers["ro"], "--op", "write", "--count", "3"), "read-only")
    r = uzram(servers["ro"], "--count", "3", "--quiet")
    assert r.returncode == 0, r.stderr


def test_unreachable_uri(tmp_path):
    _one_line_error(uzram(f"nbd+unix:///?socket={tmp_path}/nothing.sock", "--count", "3"), "cannot connect")
    _one_line_error(uzram("nbd://no such host", "--count", "3"), "cannot connect")


# --- against fio -------------------------------------------------------------------------

def test_compare_with_fio(uri):
    need_tool("fio")
    c = probe.compare_with_fio(uri, count=300, rounds=2, warmup=10)
    assert len(c["per_round"]) == 2
    for key in ("probe_p50_ns", "fio_p50_ns", "probe_clat_p50_ns", "fio_clat_p50_ns"):
        assert c[key] > 0
    assert c["ratio"] == pytest.approx(c["probe_p50_ns"] / c["fio_p50_ns"])
    # A sanity bound only (the real comparison needs many more requests on a quiet machine):
    # a mistake of units is a factor of 1000; a busy neighbour once made it 12.
    assert 0.02 < c["ratio"] < 50


# --- ioping's summary --------------------------------------------------------------------

def known_result(latencies_us, generated, generated_s, warmup=1, op="read"):
    lat = np.array(latencies_us, dtype=np.int64) * 1000
    n = lat.size
    return probe.ProbeResult(
        uri="nbd://127.0.0.1/", options=ProbeOptions(op=op, count=n, warmup=warmup, seed=7), export_size=EXPORT,
        ops=np.zeros(n, dtype=np.uint8), offsets=np.arange(n, dtype=np.int64) * 4096, latency_ns=lat,
        clat_ns=lat, elapsed_ns=int(lat.sum()) + 50_000, interrupted=False, seed=7, generated=generated,
        generated_ns=int(generated_s * 1e9))


def test_ioping_summary_of_known_timings():
    # Four 4 KiB reads taking 100, 200, 300 and 400 us (1 ms together), one warmup request
    # before them, the whole run 2 s of wall time (ioping -i 0.5 -c 5 would look like this):
    # ioping reports the sum of request times on the "completed" line and takes iops and
    # speed from it; the "generated" line counts every request against the wall time.
    r = known_result([100, 200, 300, 400], generated=5, generated_s=2.0)
    lines = probe.format_summary(r).splitlines()
    assert lines[1] == "4 requests completed in 1 ms, 16 KiB read, 4 k iops, 15.6 MiB/s"
    assert lines[2] == "generated 5 requests in 2 s, 20 KiB, 2.5 iops, 10 KiB/s"
    # population standard deviation, as ioping's mdev: sqrt((150^2 + 50^2 + 50^2 + 150^2) / 4)
    assert lines[3] == "min/avg/max/mdev = 100 us / 250 us / 400 us / 112 us"
    assert lines[4] == ("percentiles: p50 = 200 us, p90 = 400 us, p95 = 400 us, p99 = 400 us, "
                        "p99.9 = 400 us, p99.99 = 400 us")
    d = r.to_dict()
    assert d["time_s"] == pytest.approx(0.001) and d["iops"] == pytest.approx(4000)
    assert d["mib_s"] == pytest.approx(16 / 1024 / 0.001)
    assert d["generated"] == {"requests": 5, "time_s": 2.0, "iops": 2.5, "mib_s": pytest.approx(20 / 1024 / 2)}
    assert d["latency_ns"]["percentiles"]["p95"] == 400_000


def test_p95_is_the_smallest_latency_95_percent_did_not_exceed():
    # 100 requests of 1..100 us: fio's definition gives p95 = 95 us, p99 = 99 us
    r = known_result(range(1, 101), generated=101, generated_s=1.0)
    pct = r.summary().percentiles
    assert pct[95.0] == 95_000 and pct[99.0] == 99_000 and pct[50.0] == 50_000


def test_a_random_seed_is_recorded_and_repeats_the_run(uri):
    d = json.loads(uzram(uri, "--json", "--count", "50", "--warmup", "0", "--op", "mixed").stdout)
    assert d["seed_given"] is False and isinstance(d["seed"], int) and d["options"]["seed"] == d["seed"]
    first = run_probe(uri, ProbeOptions(count=50, warmup=0, op="mixed", seed=d["seed"]))
    again = run_probe(uri, ProbeOptions(count=50, warmup=0, op="mixed", seed=d["seed"]))
    assert first.seed == again.seed == d["seed"]
    assert first.offsets.tolist() == again.offsets.tolist() and first.ops.tolist() == again.ops.tolist()
    other = run_probe(uri, ProbeOptions(count=50, warmup=0))
    assert other.seed != d["seed"] or other.offsets.tolist() != first.offsets.tolist()


def test_a_real_run_sums_request_times_and_counts_the_warmup_as_generated(uri):
    res = run_probe(uri, ProbeOptions(count=200, warmup=5, queue_depth=4, seed=2))
    assert res.time_ns == int(res.latency_ns.sum()) and res.iops == pytest.approx(200 / (res.time_ns / 1e9))
    assert res.generated == 205 and res.generated_ns >= res.elapsed_ns
    # four in flight: the latencies overlap, so their sum exceeds the wall time
    assert res.time_ns > res.generated_ns
