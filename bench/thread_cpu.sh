#!/bin/bash
# CPU seconds of each nbdkit thread (and of the kcompressd worker) during one nbdcopy of an
# image into uzram, from /proc/PID/task/TID/stat sampled every 50 ms (request threads end
# with their connection, so the last sample of each counts).  Threads that were there before
# the copy (the dispatcher, ZeroMQ's I/O thread) have lower IDs than the request threads,
# which nbdkit starts per connection:
#   bench/thread_cpu.sh IMAGE [plugin keys]
#   bench/thread_cpu.sh mix.img size=256M algorithm=lz4 workers=1
# nbdkit gets a clean environment and --threads 1, as uzram.server gives it.
set -euo pipefail
image=$1; shift
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d) sampler= pid=
trap 'kill $sampler $pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin UZRAM_VENV="$root/.venv" \
    nbdkit -f -U "$dir/sock" --threads 1 python "$root/plugin/uzram_plugin.py" "$@" runtime_dir="$dir/rt" & pid=$!
for _ in $(seq 100); do [ -S "$dir/sock" ] && break; kill -0 $pid 2>/dev/null || exit 1; sleep 0.1; done; sleep 1
snap() { for t in /proc/$pid/task/*; do
    echo "$(basename "$t") $(tr ' ' _ < "$t/comm" 2>/dev/null) $(awk '{print $14, $15}' "$t/stat" 2>/dev/null)"; done; }
snap > "$dir/before"
(while kill -0 $pid 2>/dev/null; do snap; sleep 0.05; done) > "$dir/samples" 2>/dev/null & sampler=$!
worker=$(pgrep -P $pid | head -1 || true)     # the kcompressd worker, if any
w0=$([ -n "$worker" ] && awk '{print $14 + $15}' "/proc/$worker/stat" || echo 0)
nbdcopy "$image" "nbd+unix:///?socket=$dir/sock"
sleep 0.5
w1=$([ -n "$worker" ] && awk '{print $14 + $15}' "/proc/$worker/stat" || echo 0)
python3 - "$dir/before" "$dir/samples" "$w0" "$w1" "$(getconf CLK_TCK)" <<'PY'
import sys
before_path, samples_path, w0, w1, tick = sys.argv[1:]
tick = int(tick)
before = {f[0]: (int(f[2]), int(f[3])) for f in (l.split() for l in open(before_path)) if len(f) == 4}
last = {f[0]: (f[1], int(f[2]), int(f[3])) for f in (l.split() for l in open(samples_path)) if len(f) == 4}
for tid, (comm, u, s) in sorted(last.items()):
    u0, s0 = before.get(tid, (0, 0))
    if u - u0 + s - s0 > 0:
        when = "before the copy" if tid in before else "request"
        print(f"thread {tid:>8s} {comm:12s} {when:15s} user {(u - u0) / tick:5.2f} s  sys {(s - s0) / tick:5.2f} s")
if int(w1) > int(w0):
    print(f"kcompressd worker {'':30s} cpu {(int(w1) - int(w0)) / tick:5.2f} s")
PY
