"""Page codecs: one contract, one registry, stored one-byte IDs.

Every stored page records the ID of the codec that compressed it, and decompression
looks the codec up by that stored ID, never by today's configuration: a device may
change algorithm (or be recompressed) without breaking the pages it already holds.

ID space (reserved on day one, never reused):
    0          raw (a "huge" page stored uncompressed)
    1..127     codecs shipped with uzram (1 lz4, 2 lz4hc, 3 zstd, 4 deflate)
    128..255   reserved for experiments outside the tree

The contract every codec keeps (checked by ``tests/unit/test_codecs.py`` for all):
- ``compress(data)`` takes any bytes-like object and returns bytes;
- ``decompress(blob, size)`` returns exactly ``size`` bytes or raises
  CorruptPageError (never another exception, never a short result);
- ``page_decoder()`` gives a ``blob -> page`` function for the read path: the same
  result as ``decompress`` for a good blob, anything but a full page (or an exception)
  for a bad one;
- ``config()`` round-trips through ``get_codec(**config)``;
- instances may be used from several threads at once.
"""

import functools
import threading
import zlib

import lz4.block
import zstandard

from .constants import HUGE_THRESHOLD, PAGE_SIZE
from .errors import ConfigError, CorruptPageError, UnknownCodecError

RAW_ID = 0


class Codec:
    """Base class: subclasses set ``codec_id``, ``name``, the level range, and the two methods."""

    codec_id = None
    name = None
    default_level = None
    min_level = None
    max_level = None

    def __init__(self, level=None):
        if level is None:
            level = self.default_level
        elif self.default_level is None:
            raise ConfigError(f"codec {self.name!r} takes no level")
        else:
            try:
                level = int(level)
            except (TypeError, ValueError):
                raise ConfigError(f"codec {self.name!r}: level {level!r} is not a whole number") from None
            if not self.min_level <= level <= self.max_level:
                raise ConfigError(
                    f"codec {self.name!r}: level {level} is outside {self.min_level}..{self.max_level}"
                )
        self.level = level

    def config(self):
        return {"name": self.name, "level": self.level}

    def compress(self, data):
        raise NotImplementedError

    def decompress(self, blob, size=PAGE_SIZE):
        raise NotImplementedError

    def page_decoder(self):
        """A function ``blob -> page`` for the read path (uzram.readpath): as fast as the
        codec allows, and free to skip the checks of ``decompress``: the caller copies
        the result into a page-sized buffer, which refuses any other length, and sends
        every failure to ``decompress`` to be named."""
        return self.decompress

    def __repr__(self):
        return f"{type(self).__name__}(level={self.level})" if self.level is not None else f"{type(self).__name__}()"


def _check(out, size, name):
    if len(out) != size:
        raise CorruptPageError(f"{name}: page decompressed to {len(out)} bytes, expected {size}")
    return out


class Raw(Codec):
    """Identity: how huge pages are stored."""

    codec_id = RAW_ID
    name = "raw"

    def compress(self, data):
        return bytes(data)

    def decompress(self, blob, size=PAGE_SIZE):
        return _check(bytes(blob), size, self.name)


class Lz4(Codec):
    codec_id = 1
    name = "lz4"

    def compress(self, data):
        return lz4.block.compress(data, store_size=False)

    def decompress(self, blob, size=PAGE_SIZE):
        try:
            out = lz4.block.decompress(blob, uncompressed_size=size)
        except lz4.block.LZ4BlockError as e:
            raise CorruptPageError(f"lz4: {e}") from None
        return _check(out, size, self.name)

    def page_decoder(self):
        return functools.partial(lz4.block.decompress, uncompressed_size=PAGE_SIZE)


class Lz4hc(Lz4):
    codec_id = 2
    name = "lz4hc"
    default_level = 9
    min_level = 1
    max_level = 12

    def compress(self, data):
        return lz4.block.compress(data, mode="high_compression", compression=self.level, store_size=False)


class Zstd(Codec):
    """zstd frames without checksum or content size (the page size is known)."""

    codec_id = 3
    name = "zstd"
    default_level = 3
    min_level = -7
    max_level = 22

    def __init__(self, level=None):
        super().__init__(level)
        # zstandard contexts are not thread-safe, and building one costs more than
        # compressing a page.  They are kept in a pool, not in threading.local: nbdkit's
        # Python plugin gives every callback on an unpinned thread (uzram/nbd/threadstate.py)
        # a fresh thread state, so thread-local contexts would be rebuilt on every such
        # request (seen before pinning: it made zstd reads slower).
        self._pool = []

    def _new_contexts(self):
        params = zstandard.ZstdCompressionParameters.from_level(
            self.level, source_size=PAGE_SIZE, format=zstandard.FORMAT_ZSTD1_MAGICLESS,
            write_content_size=False, write_checksum=False, write_dict_id=False,
        )
        return (zstandard.ZstdCompressor(compression_params=params),
                zstandard.ZstdDecompressor(format=zstandard.FORMAT_ZSTD1_MAGICLESS))

    def _take(self):
        try:
            return self._pool.pop()       # list.pop and append are atomic under the GIL
        except IndexError:
            return self._new_contexts()

    def compress(self, data):
        ctx = self._take()
        try:
            return ctx[0].compress(data)
        finally:
            self._pool.append(ctx)

    def decompress(self, blob, size=PAGE_SIZE):
        ctx = self._take()
        try:
            out = ctx[1].decompress(blob, max_output_size=size)
        except (zstandard.ZstdError, MemoryError) as e:  # garbage can claim a huge window
            raise CorruptPageError(f"zstd: {e or type(e).__name__}") from None
        finally:
            self._pool.append(ctx)
        return _check(out, size, self.name)

    def page_decoder(self):
        # decompress without _take and _check: one frame on the read path instead of three
        pool, new = self._pool, self._new_contexts

        def decode(blob):
            try:
                ctx = pool.pop()
            except IndexError:
                ctx = new()
            try:
                return ctx[1].decompress(blob, max_output_size=PAGE_SIZE)
            finally:
                pool.append(ctx)

        return decode


class Deflate(Codec):
    """Raw deflate (no zlib header or checksum)."""

    codec_id = 4
    name = "deflate"
    default_level = 6
    min_level = 1
    max_level = 9

    def compress(self, data):
        c = zlib.compressobj(self.level, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush()

    def decompress(self, blob, size=PAGE_SIZE):
        d = zlib.decompressobj(-15)
        try:
            out = d.decompress(blob, size)
        except zlib.error as e:
            raise CorruptPageError(f"deflate: {e}") from None
        if d.unconsumed_tail or not d.eof:
            raise CorruptPageError("deflate: page does not decompress to exactly one page")
        return _check(out, size, self.name)


#: The one table: name -> class.  Add a codec here and give it a fresh ID.
CODECS = {cls.name: cls for cls in (Lz4, Lz4hc, Zstd, Deflate)}
_BY_ID = {cls.codec_id: cls for cls in (Raw, *CODECS.values())}
_decoders = {}
_decoders_lock = threading.Lock()


def get_codec(name, level=None):
    """The codec called ``name`` at ``level`` (its default when None)."""
    try:
        cls = CODECS[name]
    except (KeyError, TypeError):
        raise UnknownCodecError(name) from None
    return cls(level)


def decoder(codec_id):
    """A shared instance able to decompress pages stored with ``codec_id``."""
    try:
        return _decoders[codec_id]
    except KeyError:
        pass
    try:
        cls = _BY_ID[codec_id]
    except KeyError:
        raise UnknownCodecError(f"#{codec_id}") from None
    with _decoders_lock:
        return _decoders.setdefault(codec_id, cls())


def parse_algorithm(text):
    """``lz4``, ``zstd``, ``zstd:9``, ``lz4hc:12``, ``deflate:1`` -> a codec."""
    name, _, level = str(text).partition(":")
    return get_codec(name.strip().lower(), level.strip() or None)


def encoder(codec_id, level=None):
    """A codec instance for compressing with stored ID ``codec_id`` (what workers use)."""
    try:
        cls = _BY_ID[codec_id]
    except KeyError:
        raise UnknownCodecError(f"#{codec_id}") from None
    return cls(level if cls.default_level is not None else None)


KNOWN_IDS = sorted(_BY_ID)


def compress_page(codec, page):
    """(codec ID, blob) for one page: the codec's output, or the raw page when that is not
    below HUGE_THRESHOLD (never store a page bigger than it came)."""
    blob = codec.compress(page)
    if len(blob) >= HUGE_THRESHOLD:
        return RAW_ID, bytes(page)
    return codec.codec_id, blob


def compress_pages(codec, pages):
    """compress_page over an iterable of pages: (list of IDs, list of blobs)."""
    compress = codec.compress
    cid = codec.codec_id
    ids, blobs = [], []
    for page in pages:
        blob = compress(page)
        if len(blob) >= HUGE_THRESHOLD:
            ids.append(RAW_ID)
            blobs.append(bytes(page))
        else:
            ids.append(cid)
            blobs.append(blob)
    return ids, blobs


# ------------------------------------------------------------------ recompression
# Here (not in uzram.core.postproc) because kcompressd workers run it, and they load
# nothing that needs numpy.

#: A recompression outcome: not tried (type=auto's estimate said it would not pay).
SKIPPED = 255
AUTO_ESTIMATE = "zstd:1"   # type=auto's predictor: a fast entropy coder on the whole page
AUTO_GAIN = 0.95           # ... must come under this share of the stored size (or the huge limit)

_auto_estimator = []


def source_page(blob, codec_id):
    """The page a blob stored with ``codec_id`` holds."""
    return bytes(blob) if codec_id == RAW_ID else decoder(codec_id).decompress(blob)


def recompress_page(page, old_len, start_prio, codecs, threshold=0, auto=False):
    """Compress ``page`` again with the codecs of ``codecs`` ([(priority, codec)], in
    priority order) above ``start_prio``: (priority, codec ID, blob) of the first result
    smaller than ``old_len`` (and than ``threshold`` when given, and than a huge page),
    (0, 0, None) when none is, (SKIPPED, 0, None) when ``auto`` and a cheap estimate says
    none would be worth it.  The estimate is borg's ``auto`` compressor's idea (a fast codec
    predicts whether the slow one pays): zstd at level 1 on the page must come out under
    AUTO_GAIN of what the page holds now (at most the huge limit); when even a fast
    entropy coder cannot, the stronger codecs are not tried.  It costs a fast compression
    (about 7 us a random page here), so it pays before slow codecs (zstd:19 took 228 us a
    random page) and not before fast ones.  kcompressd workers and the device's maintenance
    thread both run this."""
    todo = [(p, c) for p, c in codecs if p > start_prio]
    if auto and todo:
        if not _auto_estimator:
            _auto_estimator.append(parse_algorithm(AUTO_ESTIMATE))
        if len(_auto_estimator[0].compress(page)) >= AUTO_GAIN * min(old_len, HUGE_THRESHOLD):
            return SKIPPED, 0, None
    for prio, codec in todo:
        blob = codec.compress(page)
        n = len(blob)
        if n < old_len and n < HUGE_THRESHOLD and (not threshold or n < threshold):
            return prio, codec.codec_id, blob
    return 0, 0, None
