//! A forwarded packet as every part of the media path keeps it: the publisher's numbering and
//! a shared payload (the router's caches, a viewer's egress, the GOP burst, relays to other
//! workers).

use std::sync::Arc;

use str0m::media::Pt;
use str0m::rtp::{RtpPacket, VideoOrientation};

/// A forwarded packet kept by reference (the payload is shared, never copied).
#[derive(Clone, Debug)]
pub(crate) struct CachedPacket {
    pub(crate) seq: u64,
    pub(crate) ts: u32,
    pub(crate) pt: Pt,
    pub(crate) marker: bool,
    /// The publisher's video orientation (urn:3gpp:video-orientation), passed on to viewers
    /// so a phone's rotation survives. One byte with its `None`; the struct stays 32.
    pub(crate) orientation: Option<VideoOrientation>,
    pub(crate) payload: Arc<[u8]>,
}

impl CachedPacket {
    pub(crate) fn from_rtp(pkt: &RtpPacket) -> Self {
        Self {
            seq: *pkt.seq_no,
            ts: pkt.header.timestamp,
            pt: pkt.header.payload_type,
            marker: pkt.header.marker,
            orientation: pkt.header.ext_vals.video_orientation,
            payload: pkt.payload.clone(),
        }
    }
}
