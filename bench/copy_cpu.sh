#!/bin/bash
# Copy an image into one nbdkit server with nbdcopy and print where the CPU went during the
# copy: the nbdkit process (all its threads), its children (uzram's kcompressd workers),
# nbdcopy itself, and the rest (CPUs x wall time, less the three: idle, or used by other
# processes on a shared machine).  Each is
# the difference over the copy alone, so the server's start-up (Python, imports) is not
# in it.  With workers, also how long they waited for a CPU while runnable (schedstat):
# a worker that waits is one the nbdkit process and nbdcopy leave no CPU to.  For comparing servers and settings by hand, interleaved, a few rounds each:
#   bench/copy_cpu.sh [-c CONNECTIONS] IMAGE LABEL [nbdkit options] PLUGIN [plugin keys]
#   bench/copy_cpu.sh mix.img w1   --threads 1 python plugin/uzram_plugin.py size=512M workers=1
#   bench/copy_cpu.sh mix.img bare --threads 1 python uzram/tools/bench/bare_plugin.py size=512M pin=1
#   bench/copy_cpu.sh -c 1 mix.img w1-c1 --threads 1 python plugin/uzram_plugin.py size=512M workers=1
# -c is nbdcopy's --connections (default: nbdcopy's own, 4 where the server allows
# multi-conn).  The bench's mix, 256 MiB:
#   .venv/bin/python -c 'from uzram.tools import bench; bench.make_dataset("mix.img", 256 << 20, bench.DEFAULT_MIX, 1)'
# nbdkit gets a clean environment, as uzram.server gives it; uzram's plugin a private
# runtime directory.
set -euo pipefail
copy_opts=()
if [ "${1:-}" = -c ]; then copy_opts=(--connections="$2"); shift 2; fi
image=$1 label=$2; shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
export LC_ALL=C                                 # (bash's time prints 0.12, not 0,12)
dir=$(mktemp -d) pid=; trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
keys=()
for a in "$@"; do [[ $a == *uzram_plugin.py ]] && keys=(runtime_dir="$dir/rt"); done
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin UZRAM_VENV="$root/.venv" \
    nbdkit -f -U "$dir/sock" "$@" "${keys[@]}" & pid=$!
for _ in $(seq 100); do [ -S "$dir/sock" ] && break; kill -0 $pid 2>/dev/null || exit 1; sleep 0.1; done
if [ ${#keys[@]} -gt 0 ]; then                  # uzram: until its workers have registered
    alive='import json, sys; s = json.load(sys.stdin); print(int(s["workers_alive"] >= s["workers"]))'
    for _ in $(seq 100); do
        [ "$("$root/.venv/bin/uzram" stats --runtime-dir "$dir/rt" --json 2>/dev/null |
             python3 -c "$alive" 2>/dev/null)" = 1 ] && break
        kill -0 $pid 2>/dev/null || exit 1; sleep 0.1
    done
fi
sleep 0.3                                       # (a started server settles)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
children() { local s=0 c; for c in $(pgrep -P "$pid"); do s=$((s + $(ticks "$c"))); done; echo $s; }
waited() {      # nanoseconds the children spent runnable on a run queue
    local s=0 c w; for c in $(pgrep -P "$pid"); do
        w=$(awk '{print $2}' "/proc/$c/schedstat" 2>/dev/null || echo 0); s=$((s + w)); done; echo $s; }
s0=$(ticks $pid) c0=$(children) q0=$(waited)
t0=$(date +%s.%N)
TIMEFORMAT='%U %S'
{ time nbdcopy "${copy_opts[@]}" "$image" "nbd+unix:///?socket=$dir/sock" 2>&3; } 3>&2 2>"$dir/time"
t1=$(date +%s.%N)
s1=$(ticks $pid) c1=$(children) q1=$(waited)
read -r cu cs < "$dir/time"
python3 - "$label" "$(stat -c %s "$image")" "$t0" "$t1" "$s0" "$s1" "$c0" "$c1" "$cu" "$cs" \
    "$(getconf CLK_TCK)" "$(nproc)" "$q0" "$q1" <<'PY'
import sys
label, size, t0, t1, s0, s1, c0, c1, cu, cs, tick, cpus, q0, q1 = sys.argv[1:]
wall = float(t1) - float(t0)
server, workers = (int(s1) - int(s0)) / int(tick), (int(c1) - int(c0)) / int(tick)
client = float(cu) + float(cs)
idle = int(cpus) * wall - server - workers - client
waits = f"; workers waited {(int(q1) - int(q0)) / 1e9:.2f} s for a CPU" if workers else ""
print(f"{label}: wall {wall:.2f} s, {int(size) / wall / 1e6:.0f} MB/s; CPU s: nbdkit {server:.2f}, "
      f"workers {workers:.2f}, nbdcopy {client:.2f}, idle or other {idle:.2f} (of {cpus} CPUs){waits}")
PY
