"""zram's post-processing on the bench's page mix: idle marking, recompression of huge pages and
writeback of idle ones, with the memory each step frees.

    .venv/bin/python bench/zram_parity.py [SIZE_MiB] [WORKERS] [CODEC]     (default 128, 1, zstd:19)

Writes the `uzram bench` data set (seed 1, default mix) into a uzram device served with
``backing_dev`` (a sparse file) and ``recomp_algorithm=zstd``; marks every page idle, then
writes the first quarter again (those pages are no longer idle); then runs, through the real
CLI, ``uzram ctl NAME recompress=type=huge`` and ``uzram ctl NAME writeback=idle``.  After each
step it prints the page mix, mem_used_total, what nbdkit's shared memory (memfds) really holds,
its anonymous RSS and the backing file's allocated bytes; at the end it reads the whole device back and compares it with the data set.
Then ``recompress=type=auto`` against ``recompress=type=idle`` after ``idle=all`` (every
stored page tried) with CODEC as recomp_algorithm, each on a fresh device holding the same data, in turn for two
rounds: wall time of the command, the workers' CPU seconds, pages recompressed, bytes saved.
Saves the figures as bench-results/zram_parity.json.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import nbd

from uzram.core.stats import Stats
from uzram.nbd.server import Server
from uzram.tools.bench import dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UZRAM = [sys.executable, "-m", "uzram"]
CHUNK = 1 << 20


def memory(pid):
    """(RssAnon, the bytes its uzram memfds hold) of ``pid``.  The arena and the ring are
    shared memory that workers fill through the descriptor, so VmRSS (pages this process has
    mapped in) does not show them: the memfds' allocated blocks do."""
    with open(f"/proc/{pid}/status") as f:
        anon = next(int(line.split()[1]) << 10 for line in f if line.startswith("RssAnon:"))
    held = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:uzram"):
                st = os.stat(f"/proc/{pid}/fd/{fd}")
                held[st.st_ino] = st.st_blocks * 512      # (one memfd may be open twice)
        except OSError:
            pass            # (closed meanwhile)
    return anon, sum(held.values())


def mib(n):
    return f"{n / 2**20:7.1f} MiB"


def snapshot(srv, backing, step):
    s = srv.stats()
    row = {"step": step, "pages_stored": s.pages_stored, "same_pages": s.same_pages, "huge_pages": s.huge_pages,
           "idle_pages": s.idle_pages, "incompressible_pages": s.incompressible_pages, "bd_count": s.bd_count,
           "orig_data_size": s.orig_data_size, "compr_data_size": s.compr_data_size,
           "mem_used_total": s.mem_used_total, **dict(zip(("rss_anon", "memfd_bytes"), memory(srv.proc.pid))),
           "backing_allocated": os.stat(backing).st_blocks * 512 if os.path.exists(backing) else 0,
           "num_recompressed": s.num_recompressed, "recompressed_saved_bytes": s.recompressed_saved_bytes}
    print(f"{step:24} pages {s.pages_stored:6} same {s.same_pages:6} huge {s.huge_pages:6} idle {s.idle_pages:6} "
          f"on file {s.bd_count:6}\n{'':24} | compr {mib(s.compr_data_size)} mem_used {mib(s.mem_used_total)} "
          f"memfds {mib(row['memfd_bytes'])} anon {mib(row['rss_anon'])} file {mib(row['backing_allocated'])}")
    return row


def ctl(srv, item, echo=True):
    argv = UZRAM + ["ctl", "--runtime-dir", srv.runtime_dir, srv.name, item]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if echo or r.returncode:
        print(f"$ uzram ctl {srv.name} {item}\n{(r.stdout + r.stderr).strip()}")
    if r.returncode:
        sys.exit(1)
    return r.stdout.strip()


def fill(srv, data, size):
    h = nbd.NBD()
    h.connect_uri(srv.uri)
    with open(data, "rb") as f:
        for off in range(0, size, CHUNK):
            h.pwrite(f.read(CHUNK), off)
    h.flush()
    h.shutdown()


def auto_vs_all(tmp, data, size, workers, codec, rounds=2):
    """recompress=type=auto against type=idle after idle=all, fresh devices, in turns."""
    out = {"auto": [], "all": []}
    for r in range(rounds):
        for mode in ("auto", "all"):
            with Server(size, workers=workers, recomp_algorithm=codec, name=f"parity-{mode}",
                        runtime_dir=os.path.join(tmp, f"rt-{mode}-{r}")) as srv:
                fill(srv, data, size)
                before = srv.stats()
                if mode == "all":
                    ctl(srv, "idle=all", echo=False)
                t0 = time.monotonic()
                ctl(srv, "recompress=type=" + ("auto" if mode == "auto" else "idle"), echo=False)
                seconds = time.monotonic() - t0
                after = srv.stats()
                out[mode].append({"seconds": round(seconds, 3),
                                  "cpu_seconds": round(after.worker_cpu_seconds + after.request_cpu_seconds
                                                       - before.worker_cpu_seconds - before.request_cpu_seconds, 3),
                                  "recompressed": after.num_recompressed,
                                  "saved_bytes": after.recompressed_saved_bytes,
                                  "compr_before": before.compr_data_size})
    for mode, label in (("auto", "recompress=type=auto"), ("all", "idle=all, recompress=type=idle")):
        rs = out[mode]
        print(f"{label:32} {min(r['seconds'] for r in rs):6.2f}-{max(r['seconds'] for r in rs):.2f} s, "
              f"CPU {min(r['cpu_seconds'] for r in rs):.2f}-{max(r['cpu_seconds'] for r in rs):.2f} s, "
              f"{rs[0]['recompressed']} pages recompressed, {rs[0]['saved_bytes']} bytes saved "
              f"({rs[0]['saved_bytes'] / rs[0]['compr_before']:.1%} of compr_data_size)")
    a, b = out["auto"], out["all"]
    print(f"auto/all: time {sorted(x['seconds'] for x in a)[0] / sorted(x['seconds'] for x in b)[0]:.2f}x, "
          f"saved {a[0]['saved_bytes'] / b[0]['saved_bytes']:.2f}x")
    return out


def main(size_mib=128, workers=1, codec="zstd:19"):
    size = size_mib << 20
    with tempfile.TemporaryDirectory(prefix="uzram-parity-") as tmp:
        data, backing = os.path.join(tmp, "mix.img"), os.path.join(tmp, "backing.img")
        dataset.make_dataset(data, size, dataset.DEFAULT_MIX, 1)
        srv = Server(size, workers=workers, backing_dev=backing, recomp_algorithm="zstd",
                     runtime_dir=os.path.join(tmp, "rt"), name="parity")
        rows = []
        with srv, open(data, "rb") as f:
            h = nbd.NBD()
            h.connect_uri(srv.uri)
            for off in range(0, size, CHUNK):
                h.pwrite(f.read(CHUNK), off)
            h.flush()
            rows.append(snapshot(srv, backing, "written"))
            ctl(srv, "idle=all")
            f.seek(0)
            for off in range(0, size // 4, CHUNK):
                h.pwrite(f.read(CHUNK), off)
            h.flush()
            rows.append(snapshot(srv, backing, "idle=all, 1/4 rewritten"))
            ctl(srv, "recompress=type=huge")
            rows.append(snapshot(srv, backing, "recompress=type=huge"))
            ctl(srv, "writeback=idle")
            rows.append(snapshot(srv, backing, "writeback=idle"))
            f.seek(0)
            bad = sum(h.pread(CHUNK, off) != f.read(CHUNK) for off in range(0, size, CHUNK))
            print(f"read back: {'every byte as written' if not bad else f'{bad} MiB differ'}; "
                  f"bd_stat {srv.control('get bd_stat')['value']}")
            h.shutdown()
            final = Stats.from_dict(srv.control("stats"))
        out = {"size": size, "workers": workers, "mix": dataset.format_mix(dataset.DEFAULT_MIX), "steps": rows,
               "bd_reads": final.bd_reads, "bd_writes": final.bd_writes, "mismatched_mib": bad,
               "auto_codec": codec, "auto_vs_all": auto_vs_all(tmp, data, size, workers, codec)}
    os.makedirs(os.path.join(ROOT, "bench-results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench-results", "zram_parity.json"), "w") as f:
        json.dump(out, f, indent=2)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*(int(a) for a in sys.argv[1:3]), *sys.argv[3:4]))
