#!/usr/bin/env bash
# Profiles Janus under load (BENCHMARKS.md §6, "What limited Janus first"): the same set-up as
# run.sh (namespace, configuration, Janus on core 0, the generator on core 1), N viewers and
# a 20 s window; 4 s into it, `perf record -e cpu-clock -g` on Janus for 8 s, and each Janus
# thread's CPU ticks over the same 8 s. Prints the per-thread ticks, the generator's JSON line
# and perf's top entries by library and by symbol.
#
#   benches/peers/janus/profile.sh [N]        (default 150; run as root after run.sh built)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
# shellcheck source=config.sh
source "$here/config.sh"

n=${1:-150}
ns=wcprof$$
dev=wcp$$
tmp=$(mktemp -d /tmp/wc-janus-prof.XXXXXX)
janus_pid=

cleanup() {
    if [ -n "$janus_pid" ]; then
        kill "$janus_pid" 2>/dev/null || true
        wait "$janus_pid" 2>/dev/null || true
    fi
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bench_namespace "$ns" "$dev"
janus_config "$tmp/janus" "$dev"
ip netns exec "$ns" taskset -c 0 janus -F "$tmp/janus" -C "$tmp/janus/janus.jcfg" \
    >"$tmp/janus.out" 2>&1 &
janus_pid=$!
sleep 2
ip netns exec "$ns" taskset -c 1 "$root/target/release/whipcast-loadgen" --peer janus \
    --local-ip 127.0.0.2 --viewers "$n" --seconds 20 --probes 0 --server-pid "$janus_pid" \
    >"$tmp/line" 2>"$tmp/loadgen.log" &
loadgen=$!
for _ in $(seq 120); do
    grep -q "warming up" "$tmp/loadgen.log" && break
    sleep 1
done
sleep 7 # the 3 s warm-up and 4 s of the window

ticks() { # thread id, name and utime + stime in clock ticks
    for t in /proc/"$janus_pid"/task/*; do
        echo "$(basename "$t")_$(tr ' ' _ <"$t/comm") $(awk '{print $14 + $15}' "$t/stat")"
    done | sort
}
ticks >"$tmp/ticks0"
perf record -e cpu-clock -g -p "$janus_pid" -o "$tmp/perf.data" -- sleep 8 2>/dev/null
ticks >"$tmp/ticks1"
wait "$loadgen" || true

echo "== Janus threads: CPU ticks (1/100 s) during the 8 s profile"
join "$tmp/ticks0" "$tmp/ticks1" | awk '{print $1, $3 - $2}' | sort -k2 -n -r
echo "== the load generator's line"
cat "$tmp/line"
echo "== perf: self time by library"
perf report -i "$tmp/perf.data" --stdio --no-children --sort dso -g none 2>/dev/null |
    grep '%' | grep -v '^#' | sed -n 1,15p
echo "== perf: self time by symbol"
perf report -i "$tmp/perf.data" --stdio --no-children --sort dso,sym -g none 2>/dev/null |
    grep '%' | grep -v '^#' | sed -n 1,40p
