"""A write storm that drives a device into its mem_limit: random overwrites of
half-compressible pages from several connections at once, with a model of what the
accepted writes wrote.  ``tests/integration/test_zram_parity.py`` checks mem_limit with it,
and ``bench/mem_limit_storm.py`` measures it.
"""

import random
import threading
import time

PAGE = 4096


def mem_limit_storm(uri, size, clients, requests, timeout=300):
    """``requests`` writes, split among ``clients`` connections to ``uri``, each on its own
    part of the ``size``-byte device: 1..16 pages a request, each page 1..3 KiB of random
    bytes (seeded by the connection's number) and zeros after them.  A write refused with
    ENOSPC is counted; any other error is raised.  Returns (model, accepted, refused): the
    device's expected content (a bytearray; refused writes change nothing) and the counts.
    Raises TimeoutError when the storm takes longer than ``timeout`` seconds in all."""
    import nbd      # libnbd's bindings, here so that importing this module needs none
    model = bytearray(size)
    npages = size // PAGE
    accepted, refused, errors = [0] * clients, [0] * clients, []

    def one(c):
        try:
            h = nbd.NBD()
            h.connect_uri(uri)
            r = random.Random(c)
            lo, hi = c * npages // clients, (c + 1) * npages // clients
            for _ in range(requests // clients):
                n = r.randint(1, 16)
                p = r.randrange(lo, hi - n)
                data = b"".join(r.randbytes(k) + bytes(PAGE - k) for k in (r.randrange(1024, 3072) for _ in range(n)))
                try:
                    h.pwrite(data, p * PAGE)
                except nbd.Error as e:
                    if e.errno != "ENOSPC":
                        raise
                    refused[c] += 1
                else:
                    model[p * PAGE:(p + n) * PAGE] = data
                    accepted[c] += 1
            h.flush()
            h.shutdown()
        except Exception as e:          # raised in the caller's thread below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if errors:
        raise errors[0]
    if any(t.is_alive() for t in threads):
        raise TimeoutError(f"the storm did not end within {timeout} s")
    return model, sum(accepted), sum(refused)
