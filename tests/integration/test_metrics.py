"""uzram stats --prometheus and uzram exporter: OpenMetrics that prometheus_client parses,
with the values of uzram stats --json, for every device found by its runtime directory."""

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from helpers import need

UZRAM = [sys.executable, "-m", "uzram"]


@pytest.fixture
def parse():
    try:
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    except ImportError:
        need(False, "prometheus_client is not installed (pip install 'uzram[test]')")
    return lambda text: {f.name: f for f in text_string_to_metric_families(text)}


def stats_json(rt):
    r = subprocess.run(UZRAM + ["stats", "--runtime-dir", rt, "--json"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def fill(nbd, uri, seed):
    h = nbd.NBD()
    h.connect_uri(uri)
    text = (f"device {seed} " * 400).encode()[:4096]
    for i in range(20):
        h.pwrite(text, i * 4096)
    h.pwrite(os.urandom(4096), 40 * 4096)
    h.pwrite(bytes(4096), 41 * 4096)
    h.trim(4096, 0)
    h.flush()
    h.shutdown()


def value(families, key, labels):
    """The sample of family uzram_KEY for the device with ``labels``."""
    f = families["uzram_" + key]
    [sample] = [s for s in f.samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert sample.name == "uzram_" + key + ("_total" if f.type == "counter" else "")
    return sample.value


def check_equal(families, js, labels):
    from uzram.tools.metrics import NUMERIC
    assert set(NUMERIC) <= set(js)
    for key in NUMERIC:
        got = value(families, key, labels)
        if key.endswith("cpu_seconds"):   # the CPU clock runs on between the two reads
            assert abs(got - js[key]) <= 1.0, key
        else:
            assert got == js[key], key
    [info] = [s for s in families["uzram_device"].samples if s.labels["runtime_dir"] == labels["runtime_dir"]]
    assert info.name == "uzram_device_info" and info.labels["algorithm"] == js["algorithm"]


def test_stats_prometheus_parses_and_equals_stats_json(uzram_device_factory, nbd, parse):
    srv = uzram_device_factory(size="16M", algorithm="zstd", name="pm0", mem_limit="8M")
    fill(nbd, srv.uri, 1)
    r = subprocess.run(UZRAM + ["stats", "--runtime-dir", srv.runtime_dir, "--prometheus"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("# EOF\n")
    families = parse(r.stdout)
    js = stats_json(srv.runtime_dir)
    labels = {"device": "pm0", "runtime_dir": srv.runtime_dir}
    check_equal(families, js, labels)
    assert families["uzram_failed_writes"].type == "counter" and families["uzram_orig_data_size"].type == "gauge"
    assert value(families, "orig_data_size", labels) == 21 * 4096   # 20 text, 1 random, 1 zero, 1 trimmed and value(families, "mem_limit", labels) == 8 << 20
    assert value(families, "up", labels) == 1


@pytest.fixture
def exporter(tmp_path):
    """exporter(*args, env=...) -> its base URL; stopped at teardown."""
    procs = []

    def start(*args, env=None):
        p = subprocess.Popen(UZRAM + ["exporter", "--listen", "127.0.0.1:0", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
        procs.append(p)
        line = p.stdout.readline()
        assert line.startswith("uzram exporter: serving http://127.0.0.1:"), (line, p.stderr.read())
        return line.split()[-1].rpartition("/")[0]

    yield start
    for p in procs:
        p.terminate()
        try:
            p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.headers["Content-Type"], r.read().decode()


def test_exporter_serves_every_device_found_by_runtime_directory(uzram_device_factory, nbd, parse, exporter, tmp_path):
    # Two devices in this user's runtime base (found on their own), one elsewhere (named with
    # --runtime-dir), and a stale control socket nobody answers on.
    xdg = tmp_path / "xdg"
    base = xdg / "uzram"
    base.mkdir(parents=True, mode=0o700)
    devices = [uzram_device_factory(size="16M", name="alpha", runtime_dir=str(base / "alpha")),
               uzram_device_factory(size="8M", name="beta", algorithm="zstd", workers=1, runtime_dir=str(base / "beta")),
               uzram_device_factory(size="8M", name="gamma", runtime_dir=str(tmp_path / "elsewhere" / "gamma"))]
    for k, srv in enumerate(devices):
        fill(nbd, srv.uri, k)
    stale = base / "stale"
    stale.mkdir(mode=0o700)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale / "control.sock"))
    s.close()   # the socket file stays, nothing listens

    env = dict(os.environ, XDG_RUNTIME_DIR=str(xdg))
    url = exporter("--runtime-dir", devices[2].runtime_dir, env=env)
    ctype, text = get(url + "/metrics")
    assert ctype.startswith("application/openmetrics-text")
    families = parse(text)
    # (devices of other users of this machine may be listed too: as root the exporter sees them)
    up = {s.labels["runtime_dir"]: (s.labels["device"], s.value) for s in families["uzram_up"].samples}
    assert up[devices[0].runtime_dir] == ("alpha", 1) and up[devices[1].runtime_dir] == ("beta", 1)
    assert up[devices[2].runtime_dir] == ("gamma", 1) and up[str(stale)] == ("stale", 0)
    for srv in devices:
        check_equal(families, stats_json(srv.runtime_dir), {"runtime_dir": srv.runtime_dir})
    assert value(families, "workers", {"runtime_dir": devices[1].runtime_dir}) == 1

    # devices come and go between scrapes
    devices[0].stop()
    _, text = get(url + "/metrics")
    listed = {s.labels["runtime_dir"] for s in parse(text)["uzram_up"].samples}
    assert devices[0].runtime_dir not in listed and devices[1].runtime_dir in listed
    with pytest.raises(urllib.error.HTTPError) as e:
        get(url + "/nothing")
    e.value.close()
    assert e.value.code == 404


@pytest.mark.parametrize("listen, message", [("nope", "not HOST:PORT"), ("127.0.0.1:99999", "not a port"),
                                             ("127.0.0.1:x", "not a port")])
def test_exporter_bad_listen_is_one_line(listen, message):
    r = subprocess.run(UZRAM + ["exporter", "--listen", listen], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.splitlines()) == 1
