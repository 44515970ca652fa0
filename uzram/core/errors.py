"""The exception tree.  Every error a user can cause is a UzramError with a message
that names the problem; ``cli`` and ``plugin`` print it as one line."""

import errno


class UzramError(Exception):
    """Base class.  ``errno`` is what an NBD client is told."""

    errno = errno.EIO


class ConfigError(UzramError, ValueError):
    """A bad configuration key or value."""

    errno = errno.EINVAL


class UnknownCodecError(ConfigError):
    """No codec by that name or stored ID."""

    def __init__(self, name):
        super().__init__(f"unknown codec {name!r}")
        self.name = name


class InvalidRequestError(UzramError):
    """A request outside the device, or otherwise malformed."""

    errno = errno.EINVAL


class NoSpaceError(UzramError):
    """Storing the request would exceed mem_limit; nothing of it was stored."""

    errno = errno.ENOSPC


class CorruptPageError(UzramError):
    """A stored page failed to decompress (a bug or memory corruption)."""

    errno = errno.EIO


class ProtocolError(UzramError):
    """A malformed message between the server and a kcompressd worker."""
