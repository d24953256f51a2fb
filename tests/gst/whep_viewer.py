"""A GStreamer webrtcbin WHEP viewer: receives H.264 and Opus from a whipcast viewer URL,
decodes the video with avdec_h264 and counts the decoded frames. Prints one line,
`decoded N frames WxH`, and exits 0 once N frames are decoded; exits 1 with the reason
otherwise. Usage: python3 whep_viewer.py <WHEP URL> <frames> <deadline seconds>"""

import sys

from webrtc import Gst, GstWebRTC, Session, log

url, wanted, deadline = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

pipeline = Gst.Pipeline.new("viewer")
webrtc = Gst.ElementFactory.make("webrtcbin", "webrtc")
webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
pipeline.add(webrtc)
session = Session(pipeline, url, {}, deadline)
RECVONLY = GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY
for caps in [
    "application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000,"
    "packetization-mode=(string)1,profile-level-id=(string)42e01f",
    "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000",
]:
    webrtc.emit("add-transceiver", RECVONLY, Gst.Caps.from_string(caps))

decoded = 0
size = "?"


def on_frame(_sink, buffer, pad):
    global decoded, size
    decoded += 1
    if decoded == 1:
        s = pad.get_current_caps().get_structure(0)
        size = "%dx%d" % (s.get_value("width"), s.get_value("height"))
        log("first decoded frame", size)
    if decoded >= wanted:
        session.finish(0, "decoded %d frames %s" % (decoded, size))


def on_pad(_webrtc, pad):
    if pad.direction != Gst.PadDirection.SRC:
        return
    media = pad.get_current_caps().get_structure(0).get_value("media")
    log("incoming", media)
    if media == "video":
        chain = "rtph264depay ! h264parse ! avdec_h264 ! fakesink name=frames signal-handoffs=true"
    else:
        chain = "fakesink"
    bin = Gst.parse_bin_from_description(chain, True)
    pipeline.add(bin)
    bin.sync_state_with_parent()
    pad.link(bin.get_static_pad("sink"))
    sink = bin.get_by_name("frames")
    if sink:
        sink.connect("handoff", on_frame)


webrtc.connect("pad-added", on_pad)
code = session.run()
if decoded < wanted:
    print("decoded %d frames %s" % (decoded, size), flush=True)
sys.exit(code)
