"""What the processes on the swap path load: a kcompressd worker needs no numpy (its import
alone made the worker's resident memory 31 MiB instead of 19 MiB, locked for swap)."""

import subprocess
import sys


def test_the_worker_does_not_import_numpy():
    code = "import sys, uzram.kcompressd; print(sorted(m for m in ('numpy', 'uzram.store') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_result_frames_are_little_endian_tables():
    from uzram.kcompressd import protocol
    frames = protocol.result(7, bytes([1, 0]), [10, 4096])
    assert frames[1] == b"\x0a\x00\x00\x10" + b"\x01\x00"    # lengths (u16 LE), then codec IDs
    ids, lens, offs, _ = protocol.result_arrays(protocol.decode(frames), 2, 8192, (0, 1))
    assert lens.tolist() == [10, 4096] and offs.tolist() == [0, 10]
