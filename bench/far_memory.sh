#!/bin/bash
# What TLS costs a request: one uzram device per transport (a Unix socket, TCP on
# 127.0.0.1, TCP on 127.0.0.1 with TLS and a pre-shared key), each 64M, inline lz4,
# filled with 64 MiB of text pages; then 4 KiB random reads and writes at queue depth 1,
# 20000 requests each, the transports taking turns for ROUNDS rounds:
#   bench/far_memory.sh [ROUNDS]        (default 5; ports 10811 and 10812 on 127.0.0.1)
# Prints the p50 and p99 of every round and their ranges.
set -euo pipefail
rounds=${1:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
U="$root/.venv/bin/uzram"
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait; rm -rf "$dir"' EXIT
(umask 077; "$root/.venv/bin/python" -c "import secrets; print('alice:' + secrets.token_hex(32))" > "$dir/keys.psk")
"$U" serve --size 64M --workers 0 --runtime-dir "$dir/unix" >/dev/null & pids+=($!)
"$U" serve --size 64M --workers 0 --runtime-dir "$dir/tcp" --tcp 10811 >/dev/null & pids+=($!)
"$U" serve --size 64M --workers 0 --runtime-dir "$dir/tls" --tcp 10812 --tls-psk "$dir/keys.psk" >/dev/null & pids+=($!)
declare -A uri=([unix]="nbd+unix:///?socket=$dir/unix/nbd.sock" [tcp]="nbd://127.0.0.1:10811/"
                [tls]="nbds://alice@127.0.0.1:10812/?tls-psk-file=$dir/keys.psk")
for t in unix tcp tls; do
    for _ in $(seq 100); do "$U" stats --runtime-dir "$dir/$t" --json >/dev/null 2>&1 && break; sleep 0.1; done
    "$U" probe "${uri[$t]}" --op write --content text --pattern sequential --count 16384 --warmup 0 --seed 1 \
        --quiet >/dev/null
done
for round in $(seq "$rounds"); do
    for t in unix tcp tls; do
        for op in read write; do
            "$U" probe "${uri[$t]}" --op $op --content text --count 20000 --warmup 100 --seed "$round" --json \
                > "$dir/$t-$op-$round.json"
        done
    done
done
"$root/.venv/bin/python" - "$dir" "$rounds" <<'PY'
import json, sys
d, rounds = sys.argv[1], int(sys.argv[2])
names = {"unix": "Unix socket", "tcp": "TCP 127.0.0.1", "tls": "TCP 127.0.0.1 + TLS (PSK)"}
for op in ("read", "write"):
    for t in ("unix", "tcp", "tls"):
        rs = [json.load(open(f"{d}/{t}-{op}-{r}.json"))["latency_ns"]["percentiles"] for r in range(1, rounds + 1)]
        p50 = [r["p50"] / 1e3 for r in rs]
        p99 = [r["p99"] / 1e3 for r in rs]
        print(f"{op:5} {names[t]:27} p50 {min(p50):6.1f}-{max(p50):6.1f} us  p99 {min(p99):5.0f}-{max(p99):5.0f} us  "
              f"rounds: " + " ".join(f"{v:.1f}" for v in p50))
PY
