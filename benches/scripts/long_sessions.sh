#!/usr/bin/env bash
# The long-session soak (BENCHMARKS.md §10): every client of tests/long_sessions.rs connected
# for SECS seconds (default 1800) side by side, each against its own whipcast process. The
# tests themselves check that nothing was cut; this keeps the full output in LOG and prints
# the reports the table is made from (per client: frames per minute, looks with no new
# frame, freezes; per server: RSS and open fds at the first and last look).
#
#   benches/scripts/long_sessions.sh                # 30 minutes
#   SECS=300 benches/scripts/long_sessions.sh       # 5 minutes
#
# Needs what the test suite needs (Chromium, Firefox with `(cd tests/js && npm ci)`,
# GStreamer). Traffic stays on 127.0.0.1.
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
secs=${SECS:-1800}
log=${LOG:-/tmp/whipcast-long-sessions-$secs.log}
echo "### long sessions of $secs s, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(git -C "$root" rev-parse --short HEAD), load $(cut -d' ' -f1 /proc/loadavg)"
(cd "$root" && WHIPCAST_LONG_SESSION_SECS=$secs cargo test --release --test long_sessions -- --nocapture) >"$log" 2>&1
status=$?
grep -E '^(long session|  [^ ].*(frames per minute|RSS))' "$log"
grep -E '^test result' "$log"
echo "### ended $(date -u +%Y-%m-%dT%H:%M:%SZ); full output in $log"
exit $status
