"""Does mem_limit hold?  Random overwrites of half-compressible pages from one and from four
connections against a 32 MiB device with ``mem_limit=8M`` (one kcompressd worker, a 2 MiB ring).

    .venv/bin/python bench/mem_limit_storm.py [REQUESTS]          (default 3000)

Each connection writes its own quarter (or all) of the device, 1..16 pages a request, each
page 1..3 KiB of random bytes and zeros after them.  Prints, per connection count:
requests refused with ENOSPC, mem_used_max and mem_used_total at rest as shares of the limit,
and mem_used_total after ``compact=1`` against the live bytes (compr_data_size).  Then reads
the whole device back and compares it with what the accepted writes wrote.  Saves
bench-results/mem_limit_storm.json.
"""

import json
import os
import sys
import tempfile

import nbd

from uzram.nbd.server import Server
from uzram.tools.storm import mem_limit_storm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, LIMIT = 32 << 20, 8 << 20


def main(requests=3000):
    rows = []
    for clients in (1, 4):
        with tempfile.TemporaryDirectory(prefix="uzram-storm-") as tmp, \
                Server(SIZE, workers=1, mem_limit=LIMIT, max_pending=2 << 20, name="storm",
                       runtime_dir=os.path.join(tmp, "rt")) as srv:
            model, accepted, refused = mem_limit_storm(srv.uri, SIZE, clients, requests)
            rest = srv.stats()
            srv.control("set compact 1")
            after = srv.stats()
            h = nbd.NBD()
            h.connect_uri(srv.uri)
            exact = h.pread(SIZE, 0) == bytes(model)
            h.shutdown()
        row = {"clients": clients, "accepted": accepted, "refused": refused,
               "mem_used_max_share": round(rest.mem_used_max / LIMIT, 3),
               "mem_used_total_share": round(rest.mem_used_total / LIMIT, 3),
               "compacted_mem_used_total": after.mem_used_total, "compr_data_size": after.compr_data_size,
               "read_back_exact": exact}
        rows.append(row)
        print(f"{clients} connection{'s' if clients > 1 else ' '}: {accepted} writes, {refused} refused (ENOSPC); "
              f"mem_used_max {row['mem_used_max_share']:.3f}x the limit, at rest {row['mem_used_total_share']:.3f}x; "
              f"after compact=1 {after.mem_used_total} bytes held for {after.compr_data_size} live "
              f"(+{(after.mem_used_total - after.compr_data_size) / 2**20:.2f} MiB); "
              f"read back {'exact' if exact else 'WRONG'}")
    os.makedirs(os.path.join(ROOT, "bench-results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench-results", "mem_limit_storm.json"), "w") as f:
        json.dump({"limit": LIMIT, "size": SIZE, "requests": requests, "rows": rows}, f, indent=2)
    return 0 if all(r["read_back_exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(*(int(a) for a in sys.argv[1:2])))
