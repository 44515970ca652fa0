"""The swap config file (zram-generator's form) and the one table of keys behind it.
(Turning swap on is tests/system/test_swap.py; here only the files, read for real.)"""

import os

import pytest

from uzram.core.config import KEYS, ram_bytes
from uzram.core.errors import ConfigError
from uzram.host import swapconfig
from uzram.host.swapconfig import SwapConfig, load, parse_algorithms, parse_zram_size
from uzram.nbd.server import plugin_keys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MiB = 1 << 20


def write(tmp_path, text, name="uzram.conf"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_example_reads_as_documented(tmp_path):
    [d] = load(os.path.join(REPO, "deploy", "uzram.conf.example"))
    assert (d.name, d.size, d.algorithm, d.priority, d.discard) == (
        "uzram0", min(ram_bytes() // 2, 4096 * MiB) // 4096 * 4096, "lz4", 100, True)


def test_three_sections_are_three_devices_with_zram_generators_keys(tmp_path):
    path = write(tmp_path, "[a]\nzram-size = 64\ncompression-algorithm = zstd(level=5) lz4hc\n"
                           "swap-priority = 10\n\n[b]\nsize = 32M\nalgorithm = lz4\nworkers = 0\n"
                           "[c]\nzram-size = max(ram / 1000, 16)\nwriteback-device = /var/lib/uzram/c.img\n")
    a, b, c = load(path)
    assert (a.name, a.size, a.algorithm, a.recompress, a.priority) == ("a", 64 * MiB, "zstd:5", ("lz4hc",), 10)
    assert (b.name, b.size, b.workers) == ("b", 32 * MiB, 0)
    assert c.size == max(ram_bytes() / MiB / 1000, 16) * MiB // 4096 * 4096
    assert c.writeback_device == "/var/lib/uzram/c.img"
    # the plugin gets them as its keys (nbdkit's command line joins the codec list with commas)
    assert a.plugin_keys()["recomp_algorithm"] == ("lz4hc",) and a.plugin_keys()["backing_dev"] is None
    assert c.plugin_keys()["backing_dev"] == "/var/lib/uzram/c.img"
    assert "recomp_algorithm=lz4hc" in plugin_keys(**a.plugin_keys())


def test_a_file_without_sections_is_one_device_as_before(tmp_path):
    [d] = load(write(tmp_path, "name = small\nsize = 64M\npriority = 5\ndiscard = no\n"))
    assert (d.name, d.size, d.priority, d.discard) == ("small", 64 * MiB, 5, False)


@pytest.mark.parametrize("text, where, message", [
    ("[a]\ncolour = blue\n", 2, "unknown key 'colour'"),
    ("[a]\nsize = 1G\nzram-size = 2G\n", 3, "zram-size: given more than once"),
    ("[a]\nsize = 1G\n[a]\n", 3, "[a]: this section is given more than once"),
    ("size = 1G\n[a]\n", 1, "size: outside a section"),
    ("[a]\nzram-size = ram * 2 + os\n", 2, "only numbers, ram"),
    ("[a]\nzram-size = __import__('os')\n", 2, "only numbers, ram"),
    ("[a]\nzram-size = ram / 0\n", 2, "divides by zero"),
    ("[a]\ncompression-algorithm = zstd lz5\n", 2, "unknown codec 'lz5'"),
    ("[a]\ncompression-algorithm = zstd(speed=3)\n", 2, "the only parameter is level=N"),
    ("[a]\nswap-priority = 40000\n", 2, "above the maximum 32767"),
    ("[a]\ndiscard = perhaps\n", 2, "discard: 'perhaps' is not yes or no"),
    ("[a]\nwriteback-device = relative/path\n", 2, "not an absolute path"),
    ("[a b]\n", 1, "must be 1-64 letters"),
    ("[a]\njust words\n", 2, "expected key = value"),
    ("[a]\nworkers = 1000\n", 2, "workers: 1000 is above the maximum 256"),
    ("[swap]\n", 1, "'swap' is reserved"),
])
def test_every_mistake_is_one_line_naming_file_and_line(tmp_path, text, where, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert str(e.value).startswith(f"{path}:{where}: ") and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_a_binary_file_is_named_with_the_line_and_byte(tmp_path):
    path = tmp_path / "uzram.conf"
    path.write_bytes(b"[a]\nsize = 64M\n\x7fELF\xff\xfe\n")
    with pytest.raises(ConfigError, match=r":3: not a text file \(byte 0xff at offset"):
        load(str(path))


@pytest.mark.parametrize("text, mib", [("4096", 4096), ("ram / 2", None), ("min(ram / 2, 4096)", None),
                                       ("2G", 2048), ("25%", None), ("512 + 512", 1024)])
def test_zram_size_expressions(text, mib):
    got = parse_zram_size(text)
    ram = ram_bytes() / MiB
    expect = {"ram / 2": ram / 2, "min(ram / 2, 4096)": min(ram / 2, 4096), "25%": ram / 4}.get(text, mib)
    assert abs(got / MiB - expect) < 0.01 + 4096 / MiB and got % 4096 == 0


def test_compression_algorithm_lists():
    assert parse_algorithms("lz4") == ("lz4", ())
    assert parse_algorithms("zstd:9 lz4hc(level=12) deflate") == ("zstd:9", ("lz4hc:12", "deflate"))
    with pytest.raises(ConfigError, match="at most 3"):
        parse_algorithms("lz4 zstd lz4hc deflate zstd")


def test_options_go_through_the_same_table():
    cfg = SwapConfig()
    cfg.set("mem-limit", "1G")                        # the option's spelling, or the file's
    cfg.set("max_pending", 4 << 20)                   # an already parsed value
    assert (cfg.mem_limit, cfg.max_pending) == (1 << 30, 4 << 20)
    assert all(k in swapconfig.keys_help() for k in ("zram-size", "swap-priority", "workers", "discard"))
    assert {k for k in KEYS if KEYS[k].swap} >= {"size", "algorithm", "priority", "discard", "workers"}


def test_the_install_step_puts_the_units_documentation_where_it_points(tmp_path):
    import re
    import shutil
    import subprocess
    r = subprocess.run([os.path.join(REPO, "deploy", "install-units")], env=dict(os.environ, DESTDIR=str(tmp_path)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    unit = (tmp_path / "etc/systemd/system/uzram-swap@.service").read_text()
    doc = re.search(r"^Documentation=file://(\S+)$", unit, re.M).group(1)
    with open(os.path.join(REPO, "deploy", "SWAP.md")) as f:
        assert (tmp_path / doc.lstrip("/")).read_text() == f.read()
    [d] = load(str(tmp_path / "etc/uzram/uzram.conf"))          # the example, installed
    assert d.name == "uzram0" and "--name %i" in unit
    if shutil.which("systemd-analyze"):
        # the unit as systemd reads it, with the command where this checkout has it
        local = tmp_path / "uzram-swap@.service"
        local.write_text(unit.replace("/usr/local/bin/uzram", os.path.join(REPO, ".venv", "bin", "uzram")))
        v = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60)
        assert v.returncode == 0, v.stderr
