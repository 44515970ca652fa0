"""Configuration parsing and message framing."""

import numpy as np
import pytest

from uzram.kcompressd import protocol
from uzram.core import config as config_mod
from uzram.core.config import PLUGIN_KEYS, Config, config_help, parse_bool, parse_size
from uzram.core.errors import ConfigError, ProtocolError


@pytest.mark.parametrize("text, value", [("4096", 4096), ("64K", 65536), ("1G", 1 << 30), ("2TiB", 2 << 40), ("1m", 1 << 20)])
def test_sizes(text, value):
    assert parse_size(text) == value


def test_sizes_in_percent_of_ram():
    from uzram.core.config import ram_bytes
    assert parse_size("50%") == ram_bytes() // 2 // 4096 * 4096
    with pytest.raises(ConfigError, match="not a size"):
        parse_size("fifty%")


@pytest.mark.parametrize("text, value", [("yes", True), ("On", True), ("1", True), ("no", False), ("0", False)])
def test_one_boolean_parser(text, value):
    assert parse_bool(text, "discard") is value


def test_unknown_key_names_it():
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        Config().set("colour", "blue")


def test_repeated_key():
    c = Config()
    c.set("size", "1M")
    with pytest.raises(ConfigError, match="size: given more than once"):
        c.set("size", "2M")


@pytest.mark.parametrize("key, value, error", [
    ("size", "0", "below the minimum 1"), ("size", "9T", "above the maximum"), ("workers", "x", "not a whole number"), ("mlock", "maybe", "not yes or no"),
    ("name", "../x", "must be"), ("batch_pages", "0", "below the minimum 1"), ("worker_nice", "20", "above the maximum 19"),
    ("worker_nice", "-1", "below the minimum 0"), ("algorithm", "zstd:30", "outside"),
])
def test_bad_values(key, value, error):
    c = Config()
    if key != "size":
        c.set("size", "1M")
    with pytest.raises(ConfigError, match=error):
        c.set(key, value)
        c.complete()


@pytest.mark.parametrize("key, value", [("workers", -1), ("batch_pages", 0), ("worker_nice", -3), ("worker_nice", 20)])
def test_bad_values_set_as_attributes(key, value):
    """uzram.Server and the tests set fields directly: complete() checks them too (a
    negative worker_nice would have the workers ask for a higher priority)."""
    c = Config()
    c.set("size", "1M")
    setattr(c, key, value)
    with pytest.raises(ConfigError, match=key):
        c.complete()


@pytest.mark.parametrize("cpus, workers, nice", [(2, 1, 0), (2, 2, 5), (2, 3, 5), (1, 1, 5), (16, 4, 0), (16, 16, 5)])
def test_workers_are_nicer_by_default_only_when_they_can_hold_every_cpu(monkeypatch, cpus, workers, nice):
    monkeypatch.setattr(config_mod, "cpu_count", lambda: cpus)
    c = Config(workers=workers)
    c.set("size", "1M")
    assert c.complete().worker_nice == nice
    c = Config(workers=workers)
    c.set("size", "1M")
    c.set("worker_nice", "7")            # given: kept, whatever the CPUs
    assert c.complete().worker_nice == 7


def test_the_cpu_count_is_the_affinity(monkeypatch):
    monkeypatch.setattr(config_mod.os, "sched_getaffinity", lambda pid: {3})
    monkeypatch.setattr(config_mod.os, "cpu_count", lambda: 16)
    assert config_mod.cpu_count() == 1 and config_mod.default_worker_nice(1) == 5


def test_complete_keeps_the_checked_values():
    """Fields set as text (as attributes) are stored parsed, so that what follows compares numbers."""
    c = Config(workers="2", batch_pages="16")
    c.set("size", "1M")
    c.complete()
    assert (c.workers, c.batch_pages) == (2, 16) and c.worker_nice in (0, 5)


def test_help_lists_every_key():
    assert all(f"{k}=" in config_help() for k in PLUGIN_KEYS)
    assert "priority=" not in config_help()          # a swap file key, not the plugin's


def test_job_and_result_round_trip():
    msg = protocol.decode(protocol.job(7, 3, 1, None, 12, 5 << 20, 3 * 4096))
    assert msg.command == protocol.JOB and msg.job == 7 and msg.count == 3
    p = protocol.job_params(msg)
    assert (p.codec_id, p.level, p.slot, p.window, p.capacity) == (1, 0, 12, 5 << 20, 3 * 4096)
    msg = protocol.decode(protocol.result(7, bytes([1, 0, 255]), [3, 4096, 0]))
    ids, lens, offs, used = protocol.result_arrays(msg, 3, 3 * 4096, [0, 1])
    assert list(ids) == [1, 0, 255] and list(lens) == [3, 4096, 0] and list(offs) == [0, 3, 4099]
    assert used == 4099


def result(ids, lens):
    return protocol.decode(protocol.result(1, bytes(ids), lens))


@pytest.mark.parametrize("msg_args, count, capacity, error", [
    (([1], [5]), 2, 8192, "answers a job of 2"),
    (([0], [5]), 1, 8192, "impossible page length 5 for codec ID 0"),
    (([1], [3072]), 1, 8192, "impossible page length"),
    (([1], [0]), 1, 8192, "impossible page length 0"),
    (([0], [0]), 1, 8192, "impossible page length 0"),
    (([9], [5]), 1, 8192, "unknown codec ID 9"),
    (([9], [0]), 1, 8192, "unknown codec ID 9"),
    (([255], [10]), 1, 8192, "skipped but has 10 bytes"),
    (([0, 1], [4096, 3000]), 2, 6000, "take 7096 bytes, past its window of 6000"),
])
def test_a_result_cannot_point_outside_its_window(msg_args, count, capacity, error):
    with pytest.raises(ProtocolError, match=error):
        protocol.result_arrays(result(*msg_args), count, capacity, [0, 1])


def test_a_results_blobs_lie_back_to_back():
    """No offsets travel: each blob starts where the one before it ends, so blobs are in
    order and cannot overlap whatever a worker answers."""
    ids, lens, offs, used = protocol.result_arrays(result([1, 255, 0, 1], [10, 0, 4096, 7]), 4, 4 * 4096, [0, 1])
    assert offs.tolist() == [0, 10, 10, 4106] and used == 4113


@pytest.mark.parametrize("frames, error", [
    ([], "empty"),
    ([b"short"], "header"),
    ([protocol.header(99)], "unknown command"),
    ([bytes([1]) + protocol.header(protocol.HEARTBEAT)[1:]], "version"),
    ([protocol.header(protocol.RESULT, 1, 1)], "frames"),
    ([protocol.header(protocol.RESULT, 1, 1), b"\x05\x00", b"\x01"], "frames"),
    ([protocol.header(protocol.RESULT, 1, 1), b"\x05\x00"], "tables"),
    ([protocol.header(protocol.RESULT, 0, 1), b""], "RESULT for 0"),
    ([protocol.header(protocol.JOB, 2, 1), b"\x01\x00\x00"], "parameters"),
    ([protocol.header(protocol.JOB, 0, 1), protocol.PARAMS.pack(1, 0, 0, 0, 0)], "JOB for 0"),
])
def test_malformed_messages(frames, error):
    with pytest.raises(ProtocolError, match=error):
        protocol.decode(frames)


def test_a_skipped_entry_cannot_stretch_the_window():
    """Regression: a skipped page's offset was counted in how far a RESULT reached, so a
    worker could move a lane's fill (and mem_used_total) 4 GiB past a 1 MiB segment.  A
    RESULT carries no offsets now; a RECOMPRESSED still does."""
    ids, lens, offs, used = protocol.result_arrays(result([1, 255], [100, 0]), 2, 8192, [0, 1])
    assert used == 100
    assert protocol.window_end(np.array([0, 0xFFFFFFFF]), np.array([100, 0])) == 100
    assert protocol.window_end(np.array([0, 0xFFFFFFFF]), np.array([0, 0])) == 0
