"""A GStreamer webrtcbin WHIP publisher: x264 (constrained baseline, a keyframe a second) and
Opus test signals to a whipcast broadcast. Prints `connected` once the peer connection is up
and publishes until its standard input closes (then DELETEs its session and exits 0) or the
deadline passes (exits 1 with the reason).
Usage: python3 whip_publisher.py <WHIP URL> <broadcast ID> <deadline seconds>"""

import sys

from webrtc import GLib, Gst, GstWebRTC, Session

url, broadcast_id, deadline = sys.argv[1], sys.argv[2], int(sys.argv[3])

pipeline = Gst.parse_launch(
    "webrtcbin name=webrtc bundle-policy=max-bundle "
    "videotestsrc is-live=true pattern=smpte ! video/x-raw,width=320,height=240,framerate=30/1 "
    "! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bframes=0 "
    "! video/x-h264,profile=constrained-baseline ! rtph264pay config-interval=-1 pt=96 "
    "! application/x-rtp,media=video,encoding-name=H264,payload=96 ! webrtc. "
    "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! opusenc "
    "! rtpopuspay pt=111 ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111 "
    "! webrtc."
)
webrtc = pipeline.get_by_name("webrtc")
for index in range(2):
    webrtc.emit("get-transceiver", index).set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
session = Session(pipeline, url, {"Authorization": "Bearer " + broadcast_id}, deadline)


def on_stdin(_source, _condition):
    session.finish(0, "stopped")
    return False


GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP, on_stdin)
sys.exit(session.run())
