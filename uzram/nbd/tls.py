"""TLS with a pre-shared key for serving over TCP (``uzram serve --tcp PORT --tls-psk FILE``).

nbdkit does the TLS (``--tls=require --tls-psk=FILE``, GnuTLS); this module checks the key
file before nbdkit starts, so that a mistake is one line, and decides which listeners
need TLS.  The file is GnuTLS's PSK format, one ``USERNAME:HEXKEY`` per line, as
``psktool -u alice -p keys.psk`` (package gnutls-bin) writes it; nbdkit accepts any of its
users, and a client names one of them: ``nbds://alice@HOST:PORT/?tls-psk-file=keys.psk``.
"""

import ipaddress
import os
import re
import socket
import stat

from uzram.core.errors import ConfigError

_LINE = re.compile(r"^([^:\s]+):([0-9a-fA-F]+)$")


def psk_users(path, option="--tls-psk"):
    """The usernames in the PSK file ``path`` (first first); ConfigError names a problem."""
    try:
        st = os.stat(path)
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{option}: {path}: no such file (make one with: psktool -u USER -p {path})") from None
    except OSError as e:
        raise ConfigError(f"{option}: {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{option}: {path}: not a regular file")
    if st.st_mode & 0o077:
        raise ConfigError(f"{option}: {path}: readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                          f"chmod 600 {path}")
    users = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line.strip())
        if not m or len(m.group(2)) % 2:
            raise ConfigError(f"{option}: {path}:{n}: not USERNAME:HEXKEY (as psktool writes it)")
        users.append(m.group(1))
    if not users:
        raise ConfigError(f"{option}: {path}: holds no key (make one with: psktool -u USER -p {path})")
    return users


def is_loopback(host):
    """True when every address ``host`` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def check_listener(host, tls, insecure):
    """Refuse a TCP listener on a non-loopback address without TLS, unless ``insecure``:
    anyone who reaches it could read and write the device."""
    if tls or insecure or is_loopback(host):
        return
    raise ConfigError(f"--host {host}: a TCP listener that is not on loopback needs --tls-psk FILE "
                      "(or --insecure, if every machine that can reach it may read and write the device)")
