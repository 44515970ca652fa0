"""Configuration parsing and message framing."""

import pytest

from uzram.kcompressd import protocol
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
    ("name", "../x", "must be"), ("batch_pages", "0", "below the minimum 1"), ("algorithm", "zstd:30", "outside"),
])
def test_bad_values(key, value, error):
    c = Config()
    if key != "size":
        c.set("size", "1M")
    with pytest.raises(ConfigError, match=error):
        c.set(key, value)
        c.complete()


def test_help_lists_every_key():
    assert all(f"{k}=" in config_help() for k in PLUGIN_KEYS)
    assert "priority=" not in config_help()          # a swap file key, not the plugin's


def test_job_and_result_round_trip():
    msg = protocol.decode(protocol.job(7, 3, 1, None, 12, 5 << 20, 3 * 4096))
    assert msg.command == protocol.JOB and msg.job == 7 and msg.count == 3
    p = protocol.job_params(msg)
    assert (p.codec_id, p.level, p.slot, p.window, p.capacity) == (1, 0, 12, 5 << 20, 3 * 4096)
    msg = protocol.decode(protocol.result(7, bytes([1, 0, 0]), [3, 4096, 0], [0, 3, 0]))
    ids, lens, offs = protocol.result_arrays(msg, 3, 3 * 4096, [0, 1])
    assert list(ids) == [1, 0, 0] and list(lens) == [3, 4096, 0] and list(offs) == [0, 3, 0]


def result(ids, lens, offs):
    return protocol.decode(protocol.result(1, bytes(ids), lens, offs))


@pytest.mark.parametrize("msg_args, count, capacity, error", [
    (([1], [5], [0]), 2, 8192, "answers a job of 2"),
    (([0], [5], [0]), 1, 8192, "impossible page length"),
    (([1], [3072], [0]), 1, 8192, "impossible page length"),
    (([9], [5], [0]), 1, 8192, "unknown codec"),
    (([1], [100], [8100]), 1, 8192, "past its window"),
    (([0, 1], [4096, 10], [0, 4090]), 2, 8192, "overlap"),
    (([1, 1], [10, 10], [20, 0]), 2, 8192, "out of order"),
])
def test_a_result_cannot_point_outside_its_window(msg_args, count, capacity, error):
    with pytest.raises(ProtocolError, match=error):
        protocol.result_arrays(result(*msg_args), count, capacity, [0, 1])


@pytest.mark.parametrize("frames, error", [
    ([], "empty"),
    ([b"short"], "header"),
    ([protocol.header(99)], "unknown command"),
    ([bytes([1]) + protocol.header(protocol.HEARTBEAT)[1:]], "version"),
    ([protocol.header(protocol.RESULT, 1, 1), b"\x01"], "frames"),
    ([protocol.header(protocol.RESULT, 1, 1), b"\x01", b"\x05\x00", b"\x00\x00"], "tables"),
    ([protocol.header(protocol.RESULT, 0, 1), b"", b"", b""], "RESULT for 0"),
    ([protocol.header(protocol.JOB, 2, 1), b"\x01\x00\x00"], "parameters"),
    ([protocol.header(protocol.JOB, 0, 1), protocol.PARAMS.pack(1, 0, 0, 0, 0)], "JOB for 0"),
])
def test_malformed_messages(frames, error):
    with pytest.raises(ProtocolError, match=error):
        protocol.decode(frames)


def test_a_skipped_entry_cannot_stretch_the_window():
    """Regression: a skipped page's offset was counted in how far a RESULT reached, so a
    worker could move a lane's fill (and mem_used_total) 4 GiB past a 1 MiB segment."""
    msg = result([1, 0], [100, 0], [0, 0xFFFFFFFF])
    ids, lens, offs = protocol.result_arrays(msg, 2, 8192, [0, 1])
    assert protocol.window_end(offs, lens) == 100
    assert protocol.window_end(offs, lens * 0) == 0
