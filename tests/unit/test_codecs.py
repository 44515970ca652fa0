"""The codec contract, run against every codec (numcodecs-style shared contract test)."""

import os

import pytest
from helpers import page

from uzram.core import codecs
from uzram.core.constants import HUGE_THRESHOLD, PAGE_SIZE
from uzram.core.errors import ConfigError, CorruptPageError, UnknownCodecError
from uzram.core.codecs import compress_page

PAGES = {
    "zero": page(0, "zero"),
    "text": page(0, "text"),
    "random": page(0, "random"),
    "half": page(1, "random")[:PAGE_SIZE // 2] + bytes(PAGE_SIZE // 2),
}
ALL = sorted(codecs.CODECS)


@pytest.fixture(params=ALL)
def codec(request):
    return codecs.get_codec(request.param)


@pytest.mark.parametrize("kind", sorted(PAGES))
def test_round_trip(codec, kind):
    page = PAGES[kind]
    blob = codec.compress(page)
    assert codecs.decoder(codec.codec_id).decompress(blob, PAGE_SIZE) == page


@pytest.mark.parametrize("kind", sorted(PAGES))
def test_page_decoder_round_trip(codec, kind):
    page = PAGES[kind]
    assert codecs.decoder(codec.codec_id).page_decoder()(codec.compress(page)) == page


def test_page_decoder_gives_no_full_page_for_a_truncated_blob(codec):
    # the read path relies on this: anything but a full page is refused by its buffer
    blob = codec.compress(PAGES["text"])
    try:
        out = codec.page_decoder()(blob[: len(blob) // 2])
    except Exception:
        return
    assert len(out) != PAGE_SIZE


def test_accepts_memoryview(codec):
    page = PAGES["text"]
    assert codec.decompress(codec.compress(memoryview(page))) == page


def test_config_round_trip(codec):
    again = codecs.get_codec(**codec.config())
    assert type(again) is type(codec) and again.level == codec.level


@pytest.mark.parametrize("garbage", [b"", b"\x00", os.urandom(17), os.urandom(3000), b"\xff" * 64])
def test_garbage_raises_corrupt_page(codec, garbage):
    try:
        out = codec.decompress(garbage, PAGE_SIZE)
    except CorruptPageError:
        return
    # A few garbage inputs are valid streams by chance; then the result must still be a full page.
    assert len(out) == PAGE_SIZE


def test_truncated_blob_is_an_error(codec):
    blob = codec.compress(PAGES["text"])
    with pytest.raises(CorruptPageError):
        codec.decompress(blob[: len(blob) // 2], PAGE_SIZE)


def test_decode_uses_stored_id_not_configuration():
    blob = codecs.get_codec("zstd", 19).compress(PAGES["text"])
    # a device now configured for lz4 still reads the zstd page by its stored ID
    assert codecs.decoder(codecs.Zstd.codec_id).decompress(blob) == PAGES["text"]


def test_ids_are_unique_and_reserved():
    ids = [c.codec_id for c in codecs.CODECS.values()]
    assert len(set(ids)) == len(ids)
    assert codecs.RAW_ID not in ids and all(0 < i < 128 for i in ids)


def test_huge_pages_are_stored_raw(codec):
    cid, blob = compress_page(codec, PAGES["random"])
    assert cid == codecs.RAW_ID and blob == PAGES["random"]
    cid, blob = compress_page(codec, PAGES["text"])
    assert cid == codec.codec_id and len(blob) < HUGE_THRESHOLD


def test_unknown_codec_names_it():
    with pytest.raises(UnknownCodecError, match="'snappy'") as e:
        codecs.get_codec("snappy")
    assert isinstance(e.value, ValueError)
    with pytest.raises(UnknownCodecError, match="#200"):
        codecs.decoder(200)


@pytest.mark.parametrize("text, error", [("zstd:99", "outside"), ("zstd:x", "whole number"), ("lz4:3", "takes no level")])
def test_bad_levels(text, error):
    with pytest.raises(ConfigError, match=error):
        codecs.parse_algorithm(text)


def test_parse_algorithm_levels():
    assert codecs.parse_algorithm("zstd").level == 3
    assert codecs.parse_algorithm("zstd:9").level == 9
    assert codecs.parse_algorithm("LZ4HC:12").level == 12
