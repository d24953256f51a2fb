# Shared by run.sh and profile.sh: the network namespace the benchmark runs in, and a
# production-like Janus 1.1 configuration.
# shellcheck shell=bash

# Creates namespace "$1" with loopback up and a veth interface "$2" holding 127.0.0.2 (run.sh
# says why Janus needs it); its peer end "$2p" stays in the namespace too, carrying nothing.
bench_namespace() {
    local ns=$1 dev=$2
    ip netns add "$ns"
    ip netns exec "$ns" ip link set lo up
    ip netns exec "$ns" ip link add "$dev" type veth peer name "${dev}p"
    ip netns exec "$ns" ip addr add 127.0.0.2/32 dev "$dev"
    ip netns exec "$ns" ip link set "$dev" up
    ip netns exec "$ns" ip link set "${dev}p" up
}

# Writes the Janus configuration into "$1"; ICE gathers on interface "$2" only.
# Every choice is explained next to it. Written from Janus's documented
# options (the sample files Debian installs in /etc/janus), not copied from them.

janus_config() {
    local dir=$1 iface=$2 lib=/usr/lib/x86_64-linux-gnu/janus
    mkdir -p "$dir"
    cat >"$dir/janus.jcfg" <<CFG
general: {
    configs_folder = "$dir"
    plugins_folder = "$lib/plugins"
    transports_folder = "$lib/transports"
    events_folder = "$lib/events"
    loggers_folder = "$lib/loggers"
    # Production logging: level 4 (warnings and info, Janus's default), to a file rather than
    # the terminal; no per-packet debug output.
    debug_level = 4
    log_to_stdout = false
    log_to_file = "$dir/janus.log"
    # The address Janus puts in its SDP: loopback, since every peer is on this machine.
    interface = "127.0.0.1"
    # Janus's default: the load generator keeps its sessions alive (keepalive every 20 s).
    session_timeout = 60
    # One event loop for every handle, so that all media work runs on one thread and the
    # whole server can be pinned to one core like whipcast (taskset -c 0). Janus's default
    # (a thread per handle) would only add context switches on a single core.
    event_loops = 1
    # Janus's Admin API is not used: no admin secret worth keeping.
    admin_secret = "$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
}
certificates: {
    # No files: Janus generates its own ECDSA DTLS certificate at start-up, as whipcast does.
}
media: {
    ipv6 = false
    # Ports for the viewers' PeerConnections and the mountpoint's RTP input.
    rtp_port_range = "20000-40000"
    # The NACK queue as shipped (200 ms minimum, growing with the RTT): retransmissions are
    # served from it, as whipcast serves them from its per-stream history.
    min_nack_queue = 200
    # Janus's default: a 'media stopped' event after 1 s without media.
    no_media_timer = 1
}
nat: {
    nice_debug = false
    # Half-trickle (Janus's default): Janus puts its candidates in its SDP offer.
    full_trickle = false
    # Full ICE (Janus's default; whipcast is ICE-lite): Janus also checks connectivity.
    ice_lite = false
    # Gather candidates on that one interface (127.0.0.2) only, so Janus never sends to any
    # other address.
    ice_enforce_list = "$iface"
    ignore_mdns = true
}
plugins: {
    # Only the streaming plugin is exercised; the others would only cost start-up time.
    disable = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_videoroom.so,libjanus_voicemail.so"
}
transports: {
    # HTTP only (below); every other transport is off.
    disable = "libjanus_websockets.so,libjanus_pfunix.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_rabbitmq.so"
}
loggers: {
    disable = "libjanus_jsonlog.so"
}
events: {
    # No event handlers: whipcast has none either.
    broadcast = false
}
CFG
    cat >"$dir/janus.transport.http.jcfg" <<CFG
general: {
    # Compact JSON: the indented default only costs bytes.
    json = "compact"
    base_path = "/janus"
    http = true
    port = 8088
    # The HTTP API on loopback only.
    ip = "127.0.0.1"
    https = false
}
admin: {
    admin_http = false
    admin_https = false
}
CFG
    cat >"$dir/janus.plugin.streaming.jcfg" <<CFG
general: {
    # The load generator creates its mountpoint through the API (port 0 = Janus picks from
    # this range), bound to 127.0.0.1 ('iface' in the request). No sample mountpoints.
    rtp_port_range = "40001-50000"
    events = false
}
CFG
}
