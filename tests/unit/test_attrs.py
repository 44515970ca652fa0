"""zram's attributes written to a Device in this process (inline, no nbdkit): the cases a
review found, each with the real store, codecs and backing file."""

import errno
import resource
import signal
import threading

import pytest
from helpers import PAGE as P
from helpers import read

from uzram.core import attrs
from uzram.core.attrs import AttrError
from uzram.core.config import Config
from uzram.core.constants import BACKED, COMPRESSED
from uzram.core.device import Device


@pytest.fixture
def device(tmp_path):
    made = []

    def make(**keys):
        c = Config(**{"size": 64 * P, "workers": 0, "backing_dev": str(tmp_path / "backing"), **keys}).complete()
        d = Device(c)
        d.start()
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def text(i):
    return (f"{i} the quick brown fox jumps over the lazy dog " * 100).encode()[:P]


def test_writeback_takes_every_page_index_given(device):
    d = device()
    for i in range(8):
        d.store.write(text(i), i * P)
    done = attrs.put(d, "writeback", "page_index=1 page_index=5 page_indexes=6-7")
    assert done.startswith("4 pages written back")
    assert [int(k) for k in d.store.kind[:8]] == [COMPRESSED, BACKED, COMPRESSED, COMPRESSED, COMPRESSED,
                                                   BACKED, BACKED, BACKED]
    assert all(read(d.store, i * P, P) == text(i) for i in range(8))
    with pytest.raises(AttrError, match="a type and page indexes together"):
        attrs.put(d, "writeback", "type=idle page_index=2")


def test_a_backing_file_that_fails_part_way_keeps_the_count_and_the_limit(device, tmp_path):
    d = device(size=2048 * P)
    for i in range(2048):
        d.store.write(text(i), i * P)
    attrs.put(d, "writeback_limit_enable", "1")
    attrs.put(d, "writeback_limit", "1000")
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, old[1]))     # the file fails at 2 MiB
    try:
        with pytest.raises(AttrError) as e:
            attrs.put(d, "writeback", "page_indexes=0-2047")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)
    moved = int((d.store.kind == BACKED).sum())
    assert 0 < moved < 1000 and e.value.errno == errno.EIO
    assert f"{moved} pages written back" in str(e.value)
    assert d.writeback_limit == 1000 - moved            # what moved counts, and only that
    assert attrs.get(d, "bd_stat").split()[0] == str(moved)
    assert all(read(d.store, i * P, P) == text(i) for i in range(2048))


def test_the_clock_cannot_be_moved_past_what_access_times_hold(device):
    d = device()
    with pytest.raises(AttrError, match="is above"):
        attrs.put(d, "clock", f"+{1 << 31}")
    attrs.put(d, "clock", f"+{(1 << 31) - 1 - d.store.clock.now()}")   # to the last second it holds
    d.store.write(text(2), P)
    assert read(d.store, P, P) == text(2)
    assert d.stats().idle_pages == 0                  # a page just written is not idle
    attrs.put(d, "idle", "all")
    assert d.stats().idle_pages == 1


def test_huge_numbers_are_refused(device):
    d = device()
    for attr, value in (("writeback_limit", str(10 ** 30)), ("mem_limit", str(10 ** 26))):
        with pytest.raises(AttrError, match="is above"):
            attrs.put(d, attr, value)


def test_recompress_algo_with_a_level_picks_that_codec(device, monkeypatch):
    from uzram.core import postproc
    d = device(recomp_algorithm=("zstd:3", "zstd:19"))
    seen = []
    real = postproc.recompress

    def spy(store, codecs, *a, **k):          # the real recompression, its codecs noted
        seen.append([(p, c.name, c.level) for p, c in codecs])
        return real(store, codecs, *a, **k)

    monkeypatch.setattr(postproc, "recompress", spy)
    d.store.write(text(0), 0)
    attrs.put(d, "recompress", "algo=zstd:19")
    assert seen == [[(2, "zstd", 19)]]
    with pytest.raises(AttrError, match="is not a recomp_algorithm"):
        attrs.put(d, "recompress", "algo=zstd:7")


def test_a_client_opening_while_the_device_resets_waits_until_it_is_done(device):
    """The check that no client is connected and the reset are one step: a client that
    opens meanwhile (the plugin's open calls clients.enter) waits, and sees the device
    only once the reset is over."""
    d = device()
    d.store.write(text(1), 0)
    seen = []
    real_clear = d.store.clear
    d.store.clear = lambda: (seen.append(d.clients.shut), real_clear())
    attrs.put(d, "reset", "1")
    assert seen == [True]               # reset cleared the store with clients kept out
    entered = threading.Event()
    with d.clients.exclusive("reset"):  # what reset, disksize= and backing_dev= hold
        t = threading.Thread(target=lambda: (d.clients.enter(), entered.set()))
        t.start()
        assert not entered.wait(0.3)    # kept out while it runs
    assert entered.wait(5)
    t.join()
    assert d.connections() == 1
    for attr, value in (("reset", "1"), ("disksize", "1M"), ("backing_dev", "none")):
        with pytest.raises(AttrError, match="1 client connected") as e:
            attrs.put(d, attr, value)
        assert e.value.errno == errno.EBUSY
    d.clients.leave()
    attrs.put(d, "reset", "1")
    assert d.connections() == 0


def test_a_disksize_that_cannot_be_built_leaves_the_device_as_it_was(device, monkeypatch):
    # The new size's store cannot be built (here its backing file refuses it: a fake,
    # because a real file that refuses one size and takes another on demand needs root
    # and a block device); the device comes back with its old size, empty and usable.
    from uzram.core import device as device_mod
    from uzram.core.errors import ConfigError
    d = device()
    old = d.config.size
    real = device_mod.BackingFile

    def backing(path, size, log=None):
        if size != old:
            raise ConfigError(f"backing_dev: {path}: cannot take {size} bytes")
        return real(path, size, log)

    monkeypatch.setattr(device_mod, "BackingFile", backing)
    with pytest.raises(ConfigError, match="cannot take"):
        attrs.put(d, "disksize", str(2 * old))
    assert d.config.size == old and d.store.size == old and d.store.backing is not None
    d.store.write(text(3), 5 * P)
    assert read(d.store, 5 * P, P) == text(3)
    assert not d.clients.shut and d.connections() == 0
