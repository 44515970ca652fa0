"""Same-filled page detection: a page that is one 8-byte value repeated (zero included)
is stored as that value, with no compression and no blob.
"""

from .constants import PAGE_SIZE

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
