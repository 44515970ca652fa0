"""Stats: attribute access and the read-only mapping of the same names."""

import json

import pytest

from uzram.core.stats import IO_STAT, KEYS, MM_STAT, Stats, describe


def sample():
    return Stats(orig_data_size=3 * 4096, compr_data_size=2048, same_pages=1, failed_writes=2,
                 name="uzram7", algorithm="zstd:3", request_cpu_seconds=3.0, worker_cpu_seconds=1.0)


def test_indexable_by_zram_names_and_attributes_still_work():
    s = sample()
    assert s["orig_data_size"] == s.orig_data_size == 12288
    assert s["failed_writes"] == 2 and s["name"] == "uzram7"
    assert s["compression_ratio"] == 4.0 and s["cpu_split"] == "75:25"
    with pytest.raises(KeyError):
        s["no_such_stat"]
    assert s.get("no_such_stat", 5) == 5


def test_keys_are_the_json_keys_in_order():
    s = sample()
    assert list(s.keys()) == list(KEYS) == list(s.to_dict())
    assert list(KEYS[:len(MM_STAT)]) == list(MM_STAT)
    assert list(KEYS[len(MM_STAT):len(MM_STAT) + len(IO_STAT)]) == list(IO_STAT)
    assert len(s) == len(KEYS) and "mem_used_total" in s and "nope" not in s
    assert dict(s) == s.to_dict() == dict(s.items())
    assert json.loads(json.dumps(dict(s))) == s.to_dict()


def test_round_trip_ignores_unknown_keys_and_every_key_is_documented():
    s = sample()
    assert Stats.from_dict(dict(s.to_dict(), version=1, future_field=9)) == s
    assert all(describe(k) for k in KEYS)


def test_frozen_and_hashable():
    s = sample()
    with pytest.raises(AttributeError):
        s.orig_data_size = 1
    assert hash(s) == hash(sample()) and s == sample()
