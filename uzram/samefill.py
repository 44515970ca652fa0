"""Same-filled page detection: a page that is one 8-byte value repeated (zero included)
is stored as that value, with no compression and no blob.

Works on whole batches: a request's pages are viewed as an (n, 512) array of 64-bit words
and checked at once with numpy, so the cost per page is a few nanoseconds, not a Python call.
"""

import numpy as np

from .constants import PAGE_SIZE, WORDS_PER_PAGE


def as_words(buf):
    """View a bytes-like object holding whole pages as an (npages, 512) uint64 array (no copy)."""
    return np.frombuffer(buf, dtype=np.uint64).reshape(-1, WORDS_PER_PAGE)


def detect(words):
    """For an (n, 512) uint64 array: (mask of same-filled pages, their first words).

    Most pages that are not same-filled differ from their first word at one of a few
    probe positions, so only the pages passing the probes are compared in full."""
    first = words[:, 0]
    mask = (words[:, 1] == first) & (words[:, 255] == first) & (words[:, 511] == first)
    if mask.any():
        cand = np.flatnonzero(mask)
        sub = words[cand]
        mask[cand] = (sub == sub[:, :1]).all(axis=1)
    return mask, first


def fill(out, pattern):
    """Write the 8-byte pattern repeated into ``out`` (a writable buffer of whole words)."""
    np.frombuffer(out, dtype=np.uint64)[:] = pattern


assert PAGE_SIZE % 8 == 0


_ZERO = bytes(PAGE_SIZE)


def same_value(page):
    """The repeated 8-byte value (an int) if ``page`` (bytes or bytearray) is same-filled,
    else None.  Cheap probes first: most pages differ within the first 16 bytes."""
    if page[:8] != page[8:16] or page[:8] != page[-8:]:
        return None
    if page == _ZERO:
        return 0
    if page[8:] == page[:-8]:
        return int.from_bytes(page[:8], "little")
    return None
