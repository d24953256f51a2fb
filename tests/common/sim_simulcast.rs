//! A simulcast publisher and its viewers on the simulated network, and what the viewers
//! decoded: which layer each frame came from, and whether the stream went on without a gap.

use super::sim::{Frame, Sim};
use whipcast::engine::{BroadcastKey, SessionId};

use std::time::Duration;

/// A simulcast publisher and a viewer of it, both connected; the viewer's session ID.
pub fn publisher_and_viewer(sim: &mut Sim, b: BroadcastKey) -> (usize, usize, SessionId) {
    let p = sim.publish_simulcast(b).expect("simulcast publish");
    sim.run_for(Duration::from_millis(500));
    assert!(sim.clients[p].connected);
    let v = sim.view(b).expect("viewer");
    sim.run_for(Duration::from_millis(500));
    assert!(sim.clients[v].connected);
    let session = sim.clients[v].session.clone().expect("a session");
    (p, v, session)
}

/// Which layer each frame the viewer decoded is, by its bytes (`sent[n][layer]`).
pub fn layers_of(got: &[Frame], sent: &[Vec<Vec<u8>>]) -> Vec<usize> {
    got.iter()
        .map(|f| {
            (sent.iter())
                .find_map(|layers| layers.iter().position(|l| *l == f.data))
                .unwrap_or_else(|| panic!("a frame that no layer sent: {} bytes", f.data.len()))
        })
        .collect()
}

/// Each frame starts right after the one before, and its RTP time is later.
pub fn assert_continuous(got: &[Frame]) {
    for pair in got.windows(2) {
        assert_eq!(
            pair[1].seq_start,
            pair[0].seq_end + 1,
            "a gap in the viewer's numbering between frames at RTP time {} and {}",
            pair[0].rtp_time,
            pair[1].rtp_time
        );
        assert!(
            pair[1].rtp_time > pair[0].rtp_time,
            "RTP time goes back: {} then {}",
            pair[0].rtp_time,
            pair[1].rtp_time
        );
    }
}
