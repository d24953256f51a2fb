#!/usr/bin/env bash
# whipcast and Janus 1.1 side by side (BENCHMARKS.md §6): the same load generator, the same
# N sequence, one server after the other, each pinned to core 0 and the generator to core 1.
#
#   benches/peers/janus/run.sh [N ...]        (default N: 100 150 200 400 800 1000, as in §6; as root)
#
# SERVERS="janus" (or "whipcast") runs one of them only, e.g. to narrow down Janus's limit;
# SECS sets the measured window (default 10 s).
#
# Prints one JSON line per server and N (the load generator's line, whose "server" field says
# which), then one summary line per server: the largest N with < 0.1 % loss and its viewers
# per core. Installs Janus (and curl, python3, iproute2) with apt when missing. Stops
# everything it started on exit.
#
# Traffic stays in a network namespace this script creates, on loopback addresses. Janus's
# ICE agent (libnice) never gathers on a loopback *interface* and pins each socket to the
# interface it gathered on (IP_UNICAST_IF), so it cannot reach 127.0.0.1 from there. The
# namespace therefore gives 127.0.0.2 to a veth interface of its own: Janus gathers there
# (`ice_enforce_list`), and the viewers of both servers bind 127.0.0.2 too
# (`--local-ip`), which the kernel delivers locally on that interface. Nothing leaves the
# namespace; the veth's peer end is in it too and carries nothing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
# shellcheck source=config.sh
source "$here/config.sh"

sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(100 150 200 400 800 1000)
secs=${SECS:-10}
read -r -a servers <<<"${SERVERS:-whipcast janus}"
ns=wcpeer$$
dev=wcj$$
local_ip=127.0.0.2
tmp=$(mktemp -d /tmp/wc-janus.XXXXXX)
server_pid=

cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { ip netns exec "$ns" "$@"; }
log() { echo "run.sh: $*" >&2; }

# What a fresh Debian machine may lack: Janus itself, and the tools this script uses.
missing=()
for tool in janus:janus curl:curl python3:python3 ip:iproute2 ss:iproute2; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
log "$(janus --version 2>/dev/null | head -1)"

log "building whipcast and the load generator (release)"
(cd "$root" && cargo build --release --bin whipcast --bin whipcast-loadgen >&2)
wc=$root/target/release/whipcast
lg=$root/target/release/whipcast-loadgen

bench_namespace "$ns" "$dev"

janus_config "$tmp/janus" "$dev"

# Polls a URL inside the namespace until it answers (at most 10 s).
wait_http() {
    for _ in $(seq 50); do
        if in_ns curl -s -o /dev/null "$1"; then return 0; fi
        sleep 0.2
    done
    log "no answer from $1"
    return 1
}

# Not through in_ns: $! must be the server's PID (ip and taskset exec it), not a subshell's.
start_server() { # server N
    case $1 in
    whipcast)
        ip netns exec "$ns" taskset -c 0 "$wc" --http-listen 127.0.0.1:8080 --udp-listen 127.0.0.1:8189 \
            --data-dir "$tmp/wc-$2" --max-viewers 5000 --max-pending-viewers-per-ip 5000 \
            >"$tmp/whipcast-$2.log" 2>&1 &
        server_pid=$!
        wait_http http://127.0.0.1:8080/
        ;;
    janus)
        ip netns exec "$ns" taskset -c 0 janus -F "$tmp/janus" -C "$tmp/janus/janus.jcfg" \
            >"$tmp/janus-stdout-$2.log" 2>&1 &
        server_pid=$!
        wait_http http://127.0.0.1:8088/janus/info
        ;;
    esac
}

stop_server() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}

log "machine load before: $(uptime)"
for server in "${servers[@]}"; do
    case $server in
    whipcast) target=(--base http://127.0.0.1:8080) ;;
    janus) target=(--peer janus --janus-url http://127.0.0.1:8088/janus) ;;
    esac
    for n in "${sizes[@]}"; do
        log "$server, $n viewers ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1-3 /proc/loadavg))"
        start_server "$server" "$n"
        if in_ns taskset -c 1 "$lg" "${target[@]}" --local-ip "$local_ip" --viewers "$n" \
            --seconds "$secs" --server-pid "$server_pid" \
            >"$tmp/line" 2>"$tmp/loadgen-$server-$n.log"; then
            cat "$tmp/line"
            cat "$tmp/line" >>"$tmp/lines"
        else
            log "$server at $n viewers failed:"
            tail -5 "$tmp/loadgen-$server-$n.log" >&2
        fi
        if [ "$server" = janus ]; then
            # Janus must send only to loopback: every UDP socket it has is on 127.x.
            if in_ns ss -uanp | grep '"janus"' | awk '{print $4, $5}' | grep -v '^127\.' >&2; then
                log "Janus has a socket outside loopback"
                exit 1
            fi
        fi
        stop_server
    done
done
log "machine load after: $(uptime)"

# The largest N each server carried with < 0.1 % loss, and its viewers per core there.
python3 - "$tmp/lines" <<'PY'
import json, sys
best = {}
for line in open(sys.argv[1]) if len(sys.argv) > 1 else []:
    r = json.loads(line)
    loss = r.get("loss_ratio")
    if loss is None or loss >= 0.001 or r["viewers_played_whole_window"] < r["viewers_requested"]:
        continue
    s = r["server"]
    if s not in best or r["viewers_requested"] > best[s]["viewers_requested"]:
        best[s] = r
for s, r in best.items():
    print(json.dumps({"server": s, "summary": "largest N with < 0.1 % loss",
                      "viewers": r["viewers_requested"], "viewers_per_core": r["viewers_per_core"],
                      "server_cpu_percent": r["server_cpu_percent"]}))
PY
