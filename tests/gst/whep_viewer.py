"""A GStreamer webrtcbin WHEP viewer: receives H.264 and Opus from a whipcast viewer URL,
decodes the video with avdec_h264 and the audio with opusdec, and counts decoded frames and
audio buffers; a `level` element after opusdec measures the audio's loudest 100 ms (RMS).
Prints one line, `decoded N frames WxH, A audio buffers, loudest L dBFS`, and exits 0 once N
frames and A audio buffers (0 unless given) are decoded and, when a minimum is given, the
audio reached it; exits 1 with the reason otherwise.
With --hold it plays on until its standard input closes instead (then exits 0 if N frames and
A audio buffers were decoded), printing `progress <unix ms> <frames> <audio buffers>` every
second: what a long session decoded, and when (tests/long_sessions.rs).
Usage: python3 whep_viewer.py [--hold] <WHEP URL> <frames> <deadline seconds> [<audio buffers> [<dBFS>]]"""

import sys
import time

from webrtc import GLib, Gst, GstWebRTC, Session, log

hold = "--hold" in sys.argv[1:]
args = [a for a in sys.argv[1:] if a != "--hold"]
url, wanted, deadline = args[0], int(args[1]), int(args[2])
wanted_audio = int(args[3]) if len(args) > 3 else 0
wanted_dbfs = float(args[4]) if len(args) > 4 else None

pipeline = Gst.Pipeline.new("viewer")
webrtc = Gst.ElementFactory.make("webrtcbin", "webrtc")
webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
pipeline.add(webrtc)
session = Session(pipeline, url, {}, deadline)
RECVONLY = GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY
for caps in [
    "application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000,"
    "packetization-mode=(string)1,profile-level-id=(string)42e01f",
    "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000,"
    "encoding-params=(string)2",
]:
    webrtc.emit("add-transceiver", RECVONLY, Gst.Caps.from_string(caps))

decoded = 0
audio = 0
loudest = -700.0  # GStreamer's level for digital silence
size = "?"


def summary():
    return "decoded %d frames %s, %d audio buffers, loudest %.1f dBFS" % (decoded, size, audio, loudest)


def heard():
    return wanted_dbfs is None or loudest >= wanted_dbfs


def reached():
    return decoded >= wanted and audio >= wanted_audio


def check_done():
    if reached() and heard() and not hold:
        session.finish(0, summary())


def on_message(_bus, msg):
    global loudest
    s = msg.get_structure()
    if s is not None and s.get_name() == "level":
        loudest = max([loudest] + list(s.get_value("rms")))
        check_done()


def on_progress():
    print("progress %d %d %d" % (time.time() * 1000, decoded, audio), flush=True)
    return True


def on_stdin(_source, _condition):
    session.finish(0 if reached() else 1, summary())
    return False


def on_frame(_sink, buffer, pad):
    global decoded, size
    decoded += 1
    if decoded == 1:
        caps = pad.get_current_caps()
        if caps is not None:
            s = caps.get_structure(0)
            size = "%dx%d" % (s.get_value("width"), s.get_value("height"))
        log("first decoded frame", size)
    check_done()


def on_audio(_sink, buffer, pad):
    global audio
    audio += 1
    if audio == 1:
        caps = pad.get_current_caps()
        log("first decoded audio", caps.to_string() if caps is not None else "?")
    check_done()


def media_of(pad):
    """The pad's media ("video" or "audio"): from its caps, which a slow host may not have set
    yet when the pad is added, else from its name (`src_<m-line>`: video was added first)."""
    caps = pad.get_current_caps() or pad.query_caps(None)
    if caps is not None and not caps.is_any() and caps.get_size() > 0:
        media = caps.get_structure(0).get_value("media")
        if media in ("video", "audio"):
            return media
    return "video" if pad.get_name() == "src_0" else "audio"


def on_pad(_webrtc, pad):
    if pad.direction != Gst.PadDirection.SRC:
        return
    media = media_of(pad)
    log("incoming", media)
    if media == "video":
        chain = "rtph264depay ! h264parse ! avdec_h264 ! fakesink name=frames signal-handoffs=true"
    else:
        chain = (
            "rtpopusdepay ! opusdec ! audioconvert ! level interval=100000000 post-messages=true "
            "! fakesink name=samples signal-handoffs=true"
        )
    bin = Gst.parse_bin_from_description(chain, True)
    pipeline.add(bin)
    bin.sync_state_with_parent()
    linked = pad.link(bin.get_static_pad("sink"))
    if linked != Gst.PadLinkReturn.OK:
        session.finish(1, "the incoming %s pad did not link to its decoder: %s" % (media, linked.value_nick))
        return
    for name, on_buffer in [("frames", on_frame), ("samples", on_audio)]:
        sink = bin.get_by_name(name)
        if sink:
            sink.connect("handoff", on_buffer)


webrtc.connect("pad-added", on_pad)
bus = pipeline.get_bus()
bus.add_signal_watch()
bus.connect("message::element", on_message)
if hold:
    GLib.timeout_add_seconds(1, on_progress)
    GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP, on_stdin)
code = session.run()
if decoded < wanted or audio < wanted_audio or not heard():
    print(summary(), flush=True)
sys.exit(code)
