"""Decodes Opus packets (a file of 2-byte big-endian lengths, each followed by a 20 ms packet)
with opusdec and prints the loudest 100 ms `level` RMS in dBFS (-700 for digital silence).
Exits 1 with the reason when decoding fails. tests/common/opus.rs runs it.
Usage: python3 opus_level.py <packets file>"""

import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

Gst.init(None)

data = open(sys.argv[1], "rb").read()
packets = []
while data:
    n = int.from_bytes(data[:2], "big")
    packets.append(data[2 : 2 + n])
    data = data[2 + n :]

pipeline = Gst.parse_launch(
    "appsrc name=src format=time caps=audio/x-opus,rate=48000,channels=2,channel-mapping-family=0 "
    "! opusdec ! audioconvert ! level interval=100000000 post-messages=true ! fakesink sync=false"
)
src = pipeline.get_by_name("src")
pipeline.set_state(Gst.State.PLAYING)
FRAME = 20 * Gst.MSECOND
for i, p in enumerate(packets):
    buffer = Gst.Buffer.new_wrapped(p)
    buffer.pts, buffer.duration = i * FRAME, FRAME
    src.emit("push-buffer", buffer)
src.emit("end-of-stream")

loudest = -700.0
bus = pipeline.get_bus()
while True:
    msg = bus.timed_pop_filtered(
        30 * Gst.SECOND, Gst.MessageType.ELEMENT | Gst.MessageType.EOS | Gst.MessageType.ERROR
    )
    if msg is None:
        print("no end of stream within 30 s", file=sys.stderr)
        sys.exit(1)
    if msg.type == Gst.MessageType.ERROR:
        print("decoding failed:", msg.parse_error()[0].message, file=sys.stderr)
        sys.exit(1)
    if msg.type == Gst.MessageType.EOS:
        break
    s = msg.get_structure()
    if s.get_name() == "level":
        loudest = max([loudest] + list(s.get_value("rms")))
pipeline.set_state(Gst.State.NULL)
print("%.1f" % loudest)
