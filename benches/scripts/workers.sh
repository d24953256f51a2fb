#!/usr/bin/env bash
# One broadcast end to end on one and on two media workers (BENCHMARKS.md §8), or two builds
# side by side on the same number of workers.
#
#   benches/scripts/workers.sh                 # --workers 1 then 2 for each N, then 1,000 GRO
#   NS="1000" GRO_NS="1000 1000" benches/scripts/workers.sh
#   BEFORE=/path/to/old/whipcast WORKERS=2 benches/scripts/workers.sh    # A/B of two builds
#
# For each N (NS, default 500 1000 1500 2000, plain receivers) and then each N of GRO_NS
# (default 1000, `--receiver-gro`): a fresh server on an empty data directory, the load
# generator's 10 s window against it, the JSON line (prefixed by a `###` header naming the
# run), the server's per-worker queue counters from /metrics, and the server stopped.
# Nothing is pinned: with two workers on a 2-core machine the server needs both cores and the
# load generator shares them; its CPU is in every line (`loadgen_cpu_percent`).
#
# Without BEFORE, each N runs with `--workers 1`, then `--workers 2`. With BEFORE, each N runs
# BEFORE's binary, then this tree's, both with `--workers ${WORKERS:-2}`.
#
# Traffic stays on 127.0.0.1.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
(cd "$root" && cargo build --release --bin whipcast --bin whipcast-loadgen >&2)
wc=$root/target/release/whipcast
lg=$root/target/release/whipcast-loadgen
read -r -a plain <<<"${NS:-500 1000 1500 2000}"
read -r -a gro <<<"${GRO_NS:-1000}"
tmp=$(mktemp -d /tmp/wc-workers.XXXXXX)
pid=
cleanup() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

run() { # label binary workers N [loadgen flags...]
    local label=$1 bin=$2 workers=$3 n=$4
    shift 4
    local port=$((18000 + RANDOM % 1000))
    rm -rf "$tmp/data"
    "$bin" --http-listen 127.0.0.1:$port --udp-listen 127.0.0.1:$((port + 1000)) \
        --data-dir "$tmp/data" --max-viewers 5000 --max-pending-viewers-per-ip 5000 \
        --workers "$workers" >"$tmp/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 50); do
        curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break
        sleep 0.2
    done
    echo "### $label workers=$workers N=$n $* $(date -u +%H:%M:%S) UTC load=$(cut -d' ' -f1 /proc/loadavg)"
    "$lg" --base "http://127.0.0.1:$port" --viewers "$n" --seconds 10 --server-pid "$pid" "$@" \
        2>"$tmp/loadgen.log" | tail -1 || tail -5 "$tmp/loadgen.log" >&2
    curl -s "http://127.0.0.1:$port/metrics" | grep -E '^whipcast_worker_(viewers|queue_drops|relay_drops)' |
        tr '\n' ' '
    echo
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
}

pair() { # N [loadgen flags...]
    if [ -n "${BEFORE:-}" ]; then
        run before "$BEFORE" "${WORKERS:-2}" "$@"
        run after "$wc" "${WORKERS:-2}" "$@"
    else
        run this "$wc" 1 "$@"
        run this "$wc" 2 "$@"
    fi
}

echo "### machine: $(nproc) cores, $(uptime)"
for n in "${plain[@]}"; do pair "$n"; done
for n in "${gro[@]}"; do pair "$n" --receiver-gro; done
