"""What the GStreamer clients of the tests share: a webrtcbin that gathers on loopback, the
WHIP/WHEP exchange (one offer with every candidate, no trickle), a deadline, and the reasons a
session failed. Run with Debian's /usr/bin/python3 (python3-gi); tests/gstreamer.rs does."""

import sys
import urllib.error
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice  # noqa: E402

Gst.init(None)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


class Session:
    """A webrtcbin in `pipeline` that offers to `url` once negotiation is needed, gathering
    only on 127.0.0.1 (libnice skips loopback interfaces unless told an address)."""

    def __init__(self, pipeline, url, headers, deadline_s):
        self.pipeline = pipeline
        self.url = url
        self.headers = headers
        self.location = None
        self.offered = False
        self.loop = GLib.MainLoop()
        self.outcome = None  # (exit code, what)
        self.webrtc = pipeline.get_by_name("webrtc")
        # webrtcbin never sinks its ICE object's floating reference: the Python wrapper takes
        # it, so the wrapper must live as long as webrtcbin does, or the object is freed.
        self.ice = self.webrtc.get_property("ice-agent")
        agent = self.ice.get_property("agent")
        address = Nice.Address.new()
        assert address.set_from_string("127.0.0.1")
        assert agent.add_local_address(address), "libnice took 127.0.0.1"
        self.webrtc.connect("on-negotiation-needed", self._on_negotiation_needed)
        self.webrtc.connect("notify::ice-connection-state", self._on_state)
        self.webrtc.connect("notify::connection-state", self._on_state)
        bus = pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_error)
        GLib.timeout_add_seconds(deadline_s, self._on_deadline)

    def run(self):
        """Plays until `finish` is called or the deadline passes; returns the exit code."""
        self.pipeline.set_state(Gst.State.PLAYING)
        self.loop.run()
        if self.location:
            self._http("DELETE", self.location, None)
        self.pipeline.set_state(Gst.State.NULL)
        code, what = self.outcome
        print(what, flush=True)
        return code

    def finish(self, code, what):
        if self.outcome is None:
            self.outcome = (code, what)
            self.loop.quit()

    def _on_negotiation_needed(self, webrtc):
        # One offer, one answer (WHIP/WHEP): later renegotiation requests are not followed.
        if self.offered:
            log("negotiation needed again: ignored")
            return
        self.offered = True
        promise = Gst.Promise.new_with_change_func(self._on_offer, webrtc, None)
        webrtc.emit("create-offer", None, promise)

    def _on_offer(self, promise, webrtc, _):
        promise.wait()
        reply = promise.get_reply()  # kept while the offer is used: the offer lives in it
        offer = reply.get_value("offer")
        if offer is None:
            self.finish(1, "webrtcbin made no offer")
            return
        webrtc.emit("set-local-description", offer, Gst.Promise.new())
        del reply
        webrtc.connect("notify::ice-gathering-state", self._on_gathering)

    def _on_gathering(self, webrtc, _):
        if webrtc.get_property("ice-gathering-state") != GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            return
        sdp = webrtc.get_property("local-description").sdp.as_text()
        GLib.idle_add(self._post, sdp)

    def _post(self, sdp):
        status, headers, body = self._http("POST", self.url, sdp)
        if status != 201:
            self.finish(1, "refused %d: %s" % (status, body))
            return False
        location = headers.get("Location", "")
        if location.startswith("/"):
            origin = self.url.split("/", 3)
            location = origin[0] + "//" + origin[2] + location
        self.location = location
        _, message = GstSdp.SDPMessage.new_from_text(body)
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        self.webrtc.emit("set-remote-description", answer, Gst.Promise.new())
        return False

    def _http(self, method, url, body):
        data = body.encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Content-Type", "application/sdp")
        for key, value in self.headers.items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode()

    def _on_state(self, webrtc, spec):
        state = webrtc.get_property(spec.name)
        log(spec.name, state.value_nick)
        if spec.name != "connection-state":
            return
        if state == GstWebRTC.WebRTCPeerConnectionState.CONNECTED:
            print("connected", flush=True)
        if state == GstWebRTC.WebRTCPeerConnectionState.FAILED:
            self.finish(1, "the peer connection failed (after ICE: DTLS)")

    def _on_error(self, _bus, message):
        error, debug = message.parse_error()
        self.finish(1, "error from %s: %s (%s)" % (message.src.get_name(), error.message, debug))

    def _on_deadline(self):
        ice = self.webrtc.get_property("ice-connection-state").value_nick
        pc = self.webrtc.get_property("connection-state").value_nick
        self.finish(1, "deadline passed: ICE %s, peer connection %s" % (ice, pc))
        return False
