"""A deliberately broken NBD disk for the VM test's negative control (nbdkit python plugin).

    nbdkit -U SOCK -f python corrupting_plugin.py [size=256M] [after=64]

A bytearray-backed disk that, once it has served ``after`` write requests, flips one byte
(offset 123) of every 4 KiB block it returns from a read.  ``after`` lets mkswap's header and
swapon's read of it through intact; every page swapped in afterwards comes back damaged.
"""

import nbdkit

API_VERSION = 2
BLOCK = 4096
FLIP_AT = 123
SIZES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

size = 256 << 20
after = 64
disk = None
writes = 0


def config(key, value):
    global size, after
    if key == "size":
        unit = value[-1:].upper() if value[-1:].upper() in SIZES and not value[-1:].isdigit() else ""
        size = int(value[:len(value) - len(unit)]) * SIZES[unit]
    elif key == "after":
        after = int(value)
    else:
        raise RuntimeError(f"unknown key {key!r}")


def config_complete():
    global disk
    disk = bytearray(size)


def open(readonly):
    return 1


def get_size(h):
    return size


def pread(h, buf, offset, flags):
    buf[:] = disk[offset:offset + len(buf)]
    if writes >= after:
        for i in range(-offset % BLOCK + FLIP_AT, len(buf), BLOCK):
            buf[i] ^= 0x5A


def pwrite(h, buf, offset, flags):
    global writes
    disk[offset:offset + len(buf)] = buf
    writes += 1
