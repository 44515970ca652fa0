"""Configuration parsing and message framing."""

import pytest

from uzram import protocol
from uzram.config import Config, config_help, parse_size, KEYS
from uzram.errors import ConfigError, ProtocolError


@pytest.mark.parametrize("text, value", [("4096", 4096), ("64K", 65536), ("1G", 1 << 30), ("2TiB", 2 << 40), ("1m", 1 << 20)])
def test_sizes(text, value):
    assert parse_size(text) == value


def test_unknown_key_names_it():
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        Config().set("colour", "blue")


def test_repeated_key():
    c = Config()
    c.set("size", "1M")
    with pytest.raises(ConfigError, match="size: given more than once"):
        c.set("size", "2M")


@pytest.mark.parametrize("key, value, error", [
    ("size", "0", "more than 0"), ("workers", "x", "not a whole number"), ("mlock", "maybe", "not a boolean"),
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
    assert all(f"{k}=" in config_help() for k in KEYS)


def test_message_round_trip():
    frames = protocol.result(7, [1, 0], [b"abc", b"x" * 4096])
    msg = protocol.decode(frames, [0, 1])
    assert msg.command == protocol.RESULT and msg.job == 7 and msg.count == 2
    ids, lens, packed = protocol.result_arrays(msg)
    assert list(ids) == [1, 0] and list(lens) == [3, 4096] and bytes(packed[:3]) == b"abc"


@pytest.mark.parametrize("frames, error", [
    ([], "empty"),
    ([b"short"], "header"),
    ([protocol.header(99)], "unknown command"),
    ([bytes([2]) + protocol.header(protocol.HEARTBEAT)[1:]], "version"),
    ([protocol.header(protocol.RESULT, 1, 1), b"\x01"], "frames"),
    ([protocol.header(protocol.RESULT, 1, 1), b"\x01", b"\x05\x00", b"abcd"], "add up"),
    ([protocol.header(protocol.RESULT, 1, 1), b"\x00", b"\x05\x00", b"abcde"], "impossible"),
    ([protocol.header(protocol.RESULT, 1, 1), b"\x09", b"\x05\x00", b"abcde"], "unknown codec"),
    ([protocol.header(protocol.JOB, 2, 1), b"\x01\x00\x00", b"x" * 4096], "JOB of"),
])
def test_malformed_messages(frames, error):
    with pytest.raises(ProtocolError, match=error):
        protocol.decode(frames, [0, 1, 2, 3, 4])
