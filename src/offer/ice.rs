//! Our side of ICE in every session: fresh credentials and the candidates we answer with.

use str0m::net::TcpType;
use str0m::{Candidate, IceCreds};

use super::SessionSetup;
use crate::secret;

impl SessionSetup {
    /// Our ICE candidates: one UDP host candidate per advertised address, and with `tcp` the
    /// passive ICE-TCP ones (viewers only). Also sent again after an ICE restart.
    pub fn local_candidates(&self, tcp: bool) -> Vec<Candidate> {
        let udp = self
            .candidates
            .iter()
            .filter_map(|a| Candidate::host(*a, "udp").ok());
        let tcp = self.tcp_candidates.iter().filter(|_| tcp).filter_map(|a| {
            Candidate::builder()
                .tcp()
                .host(*a)
                .tcptype(TcpType::Passive)
                .build()
                .ok()
        });
        udp.chain(tcp).collect()
    }
}

/// Fresh local ICE credentials for a session (or its ICE restart): 128-bit random ufrag and
/// 256-bit password, in ICE's character set (RFC 8839 §5.4: no `-` or `_`).
pub fn ice_credentials() -> IceCreds {
    IceCreds {
        ufrag: secret::random_token().replace(['-', '_'], "x"),
        pass: format!("{}{}", secret::random_token(), secret::random_token())
            .replace(['-', '_'], "y"),
    }
}
