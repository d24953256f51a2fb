//! Session lifecycle on the simulated network: clients that hang up (DTLS close_notify) and
//! clients that move to another address with an ICE restart (RFC 9725 §4.3.2).

use std::net::SocketAddr;
use std::time::Duration;

use str0m::{Candidate, IceCreds};
use whipcast::engine::{BroadcastKey, Command, Outcome, Patch, PatchError, Patched};
use whipcast::srtp::SrtpSender;
use whipcast::srtp::capture::Captured;

use super::sim::{Sfu, Sim};

/// One frame period at 30 fps.
pub const FRAME: Duration = Duration::from_millis(33);

impl<S: Sfu> Sim<S> {
    /// A publisher that has completed ICE and DTLS.
    pub fn connected_publisher(&mut self, b: BroadcastKey) -> usize {
        let p = self.publish(b).expect("publish");
        self.run_for(Duration::from_millis(500));
        assert!(
            self.clients[p].connected,
            "publisher completes ICE and DTLS"
        );
        p
    }

    /// Streams frames `range` (keyframe every 30) from `publisher`, returning what was sent.
    pub fn stream(&mut self, publisher: usize, range: std::ops::Range<u64>) -> Vec<Vec<u8>> {
        let mut sent = Vec::new();
        for n in range {
            sent.push(self.send_frame(publisher, n, n % 30 == 0));
            self.run_for(FRAME);
        }
        sent
    }

    /// Viewer `v` tells the server its estimate, `bps`, in a REMB sealed with its own keys
    /// (whipcast seals the viewer's media and reads its RTCP itself).
    pub fn send_remb(&mut self, v: usize, bps: u64) {
        let keys = self.clients[v].server_keys.as_ref().unwrap().get().unwrap();
        let theirs = Captured {
            active: !keys.active,
            ..keys.clone()
        };
        let mut tx = SrtpSender::new(&theirs).expect("AES-GCM keys");
        let (mut exp, mut mantissa) = (0u32, bps);
        while mantissa > 0x3ffff {
            mantissa >>= 1;
            exp += 1;
        }
        let br = (exp << 18 | mantissa as u32).to_be_bytes();
        let mut rtcp = vec![0x8f, 206, 0, 5, 0, 0, 0, 1, 0, 0, 0, 0];
        rtcp.extend_from_slice(b"REMB");
        rtcp.extend_from_slice(&[1, br[1], br[2], br[3], 0, 0, 0, 7]);
        tx.seal_rtcp(&mut rtcp, 0);
        let from = self.clients[v].addr;
        self.inject(from, &rtcp);
    }

    /// The client closes its PeerConnection, as `pc.close()` does: DTLS close_notify goes
    /// out, no DELETE.
    pub fn hang_up(&mut self, client: usize) {
        self.clients[client].rtc.close().expect("close");
        self.run_for(Duration::from_millis(100));
    }

    /// The client moves to a new address and restarts ICE there: new local credentials sent
    /// in a PATCH with `If-Match: if_match`, the server's new ones applied on success.
    pub fn restart_ice(
        &mut self,
        client: usize,
        publisher: bool,
        if_match: Option<&str>,
    ) -> Result<Patched, PatchError> {
        let moved: SocketAddr = format!("10.0.0.3:{}", self.clients[client].addr.port())
            .parse()
            .unwrap();
        let creds = IceCreds::new();
        let patch = Patch {
            session: self.clients[client].session.clone().unwrap(),
            publisher,
            if_match: if_match.map(str::to_owned),
            remote: Some(creds.clone()),
            local: whipcast::offer::ice_credentials(),
        };
        let patched = match self.engine.handle_command(self.now, Command::Patch(patch)) {
            Outcome::Patched(r) => r,
            other => panic!("a PATCH is answered with Patched, not {other:?}"),
        };
        if let Ok(Patched::Restarted { local, .. }) = &patched {
            let c = &mut self.clients[client];
            let old = Candidate::host(c.addr, "udp").unwrap();
            let mut api = c.rtc.direct_api();
            api.set_local_ice_credentials(creds);
            api.set_remote_ice_credentials(local.clone());
            api.invalidate_candidate(&old);
            c.rtc
                .add_local_candidate(Candidate::host(moved, "udp").unwrap());
            c.addr = moved;
            c.server_ufrag = local.ufrag.clone();
        }
        patched
    }

    /// A trickle PATCH repeating the client's current credentials.
    pub fn trickle(&mut self, client: usize, publisher: bool) -> Result<Patched, PatchError> {
        let c = &mut self.clients[client];
        let patch = Patch {
            session: c.session.clone().unwrap(),
            publisher,
            if_match: None,
            remote: Some(c.rtc.direct_api().local_ice_credentials()),
            local: whipcast::offer::ice_credentials(),
        };
        match self.engine.handle_command(self.now, Command::Patch(patch)) {
            Outcome::Patched(r) => r,
            other => panic!("a PATCH is answered with Patched, not {other:?}"),
        }
    }
}
