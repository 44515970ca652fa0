#!/bin/bash
# Copy an image into one nbdkit server with nbdcopy and print the wall time and the CPU
# seconds the nbdkit process used (user + system), for comparing server settings by hand:
#   bench/copy_cpu.sh IMAGE LABEL [nbdkit options] PLUGIN [plugin keys]
#   bench/copy_cpu.sh mix.img t16 --threads 16 python plugin/uzram_plugin.py size=256M workers=0
#   bench/copy_cpu.sh mix.img t2  --threads 2  python plugin/uzram_plugin.py size=256M workers=0
# nbdkit gets a clean environment, as uzram.server gives it.
set -euo pipefail
image=$1 label=$2; shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d); trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin UZRAM_VENV="$root/.venv" \
    nbdkit -f -U "$dir/sock" "$@" runtime_dir="$dir/rt" & pid=$!
for _ in $(seq 100); do [ -S "$dir/sock" ] && break; sleep 0.1; done; sleep 0.5
t0=$(date +%s.%N)
nbdcopy "$image" "nbd+unix:///?socket=$dir/sock"
t1=$(date +%s.%N)
read -r ut st < <(awk '{print $14, $15}' "/proc/$pid/stat")
tick=$(getconf CLK_TCK)
python3 -c "print(f'$label: wall {$t1 - $t0:.2f} s, nbdkit cpu {($ut + $st) / $tick:.2f} s')"
