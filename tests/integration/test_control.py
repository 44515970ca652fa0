"""The control endpoint of a real device under nbdkit: silent clients cost nobody time,
and many clients at once are all answered."""

import socket
import time

from uzram.nbd import control

DEADLINE = getattr(control, "CLIENT_DEADLINE", 2.0)


def silent_clients(runtime_dir, n):
    """``n`` clients connected to the control socket that never send anything."""
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(f"{runtime_dir}/{control.CONTROL_NAME}")
        out.append(s)
    return out


def test_a_silent_client_costs_nobody_time(server):
    srv = server()
    idle = silent_clients(srv.runtime_dir, 1)
    try:
        t0 = time.monotonic()
        assert control.query(srv.runtime_dir, "ping", timeout=3)["ok"]
        assert time.monotonic() - t0 < 1.0
    finally:
        for s in idle:
            s.close()


def test_200_concurrent_queries_with_ten_silent_clients(server, in_threads):
    srv = server()
    idle = silent_clients(srv.runtime_dir, 10)
    errors, times = [], []

    def one(i):
        t0 = time.monotonic()
        try:
            reply = control.query(srv.runtime_dir, "stats" if i % 2 else "ping", timeout=10)
            assert "error" not in reply
        except Exception as e:
            errors.append(repr(e))
        times.append(time.monotonic() - t0)

    try:
        in_threads(one, 200)
    finally:
        for s in idle:
            s.close()
    assert errors == []
    assert len(times) == 200
    # the ten silent clients are dropped only after their deadline (2 s); nobody waited for them
    assert max(times) < DEADLINE, sorted(times)[-5:]


def test_a_silent_client_is_dropped_at_its_deadline(server):
    srv = server()
    [s] = silent_clients(srv.runtime_dir, 1)
    try:
        s.settimeout(DEADLINE + 3)
        t0 = time.monotonic()
        assert s.recv(1) == b""          # closed by the device
        assert time.monotonic() - t0 < DEADLINE + 1.5
    finally:
        s.close()
    assert control.query(srv.runtime_dir, "ping")["ok"]
