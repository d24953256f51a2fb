//! Opening a peer's SRTCP under AES_CM_128_HMAC_SHA1_80 (RFC 3711 §3.4, §4.1.1, §4.2.1),
//! and checking the tag of its SRTP (§4.2).
//!
//! Sessions fall back to this profile when the peer offers no AEAD one (FFmpeg's WHIP muxer,
//! some GStreamer builds). Forwarded media to such peers stays sealed by str0m; this is only
//! for what the engine reads itself from a publisher's RTCP (its BYE, see engine/bye.rs) and
//! the few RTP packets it must judge before str0m opens them (engine/twcc_guard.rs).

use aws_lc_rs::cipher::{AES_128, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;

use super::master::{
    CM_SALT_LEN, LABEL_RTCP_AUTH, LABEL_RTCP_KEY, LABEL_RTCP_SALT, LABEL_RTP_AUTH, Master,
    SRTCP_ENCRYPTED,
};

/// One direction's SRTP authentication key: enough to tell the peer's packets from forgeries.
pub(super) struct CmRtpAuth {
    auth: hmac::Key,
}

impl CmRtpAuth {
    pub(super) fn new(master: &Master<'_>) -> Option<Self> {
        let mut auth = [0u8; AUTH_KEY_LEN];
        master.prf(LABEL_RTP_AUTH, &mut auth)?;
        Some(Self {
            auth: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &auth),
        })
    }

    /// Whether the packet's tag is right: HMAC-SHA1 over the header, the encrypted payload
    /// and the rollover counter `roc`, cut to 80 bits (RFC 3711 §4.2).
    pub(super) fn is_authentic(&self, packet: &[u8], roc: u32) -> bool {
        let Some(split) = packet.len().checked_sub(TAG_LEN) else {
            return false;
        };
        let (authenticated, tag) = packet.split_at(split);
        let mut ctx = hmac::Context::with_key(&self.auth);
        ctx.update(authenticated);
        ctx.update(&roc.to_be_bytes());
        verify_slices_are_equal(&ctx.sign().as_ref()[..TAG_LEN], tag).is_ok()
    }
}

/// One direction's SRTCP session keys.
pub(super) struct CmRtcp {
    cipher: EncryptingKey,
    salt: [u8; CM_SALT_LEN],
    auth: hmac::Key,
}

impl CmRtcp {
    pub(super) fn new(master: &Master<'_>) -> Option<Self> {
        let mut key = [0u8; 16];
        master.prf(LABEL_RTCP_KEY, &mut key)?;
        let mut salt = [0u8; CM_SALT_LEN];
        master.prf(LABEL_RTCP_SALT, &mut salt)?;
        let mut auth = [0u8; AUTH_KEY_LEN];
        master.prf(LABEL_RTCP_AUTH, &mut auth)?;
        Some(Self {
            cipher: EncryptingKey::ctr(UnboundCipherKey::new(&AES_128, &key).ok()?).ok()?,
            salt,
            auth: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &auth),
        })
    }

    /// Checks the tag, then decrypts one SRTCP packet into `scratch`: the compound RTCP, or
    /// `None` when it does not authenticate or is not encrypted.
    pub(super) fn open<'a>(&self, packet: &[u8], scratch: &'a mut Vec<u8>) -> Option<&'a [u8]> {
        if packet.len() < 8 + 4 + TAG_LEN {
            return None;
        }
        let (authenticated, tag) = packet.split_at(packet.len() - TAG_LEN);
        let expected = hmac::sign(&self.auth, authenticated);
        verify_slices_are_equal(&expected.as_ref()[..TAG_LEN], tag).ok()?;
        let (body, trailer) = authenticated.split_at(authenticated.len() - 4);
        let e_index = u32::from_be_bytes(trailer.try_into().ok()?);
        if e_index & SRTCP_ENCRYPTED == 0 {
            return None;
        }
        scratch.clear();
        scratch.extend_from_slice(body);
        let iv = self.iv(&body[4..8], e_index & !SRTCP_ENCRYPTED);
        self.cipher
            .less_safe_encrypt(&mut scratch[8..], EncryptionContext::Iv128(iv))
            .ok()?;
        Some(&scratch[..])
    }

    /// The counter block: (salt · 2^16) XOR (SSRC · 2^64) XOR (index · 2^16) (RFC 3711 §4.1.1).
    fn iv(&self, ssrc: &[u8], index: u32) -> FixedLength<16> {
        let mut iv = [0u8; 16];
        iv[..CM_SALT_LEN].copy_from_slice(&self.salt);
        for (b, s) in iv[4..8].iter_mut().zip(ssrc) {
            *b ^= s;
        }
        for (b, i) in iv[10..14].iter_mut().zip(index.to_be_bytes()) {
            *b ^= i;
        }
        FixedLength::from(iv)
    }

    /// Seals as the peer does (for tests: the other side of `open`).
    #[cfg(test)]
    pub(super) fn seal(&self, rtcp: &[u8], index: u32) -> Vec<u8> {
        let mut out = rtcp.to_vec();
        let iv = self.iv(&rtcp[4..8], index);
        self.cipher
            .less_safe_encrypt(&mut out[8..], EncryptionContext::Iv128(iv))
            .unwrap();
        out.extend_from_slice(&(index | SRTCP_ENCRYPTED).to_be_bytes());
        let tag = hmac::sign(&self.auth, &out);
        out.extend_from_slice(&tag.as_ref()[..TAG_LEN]);
        out
    }
}

/// HMAC-SHA1's 160-bit key.
const AUTH_KEY_LEN: usize = 20;
/// The 80-bit tag of AES_CM_128_HMAC_SHA1_80.
const TAG_LEN: usize = 10;

#[cfg(test)]
mod tests {
    use str0m::crypto::dtls::SrtpProfile;

    use super::super::capture::Captured;
    use super::super::context::SrtcpReceiver;
    use super::*;

    fn keys(active: bool) -> Captured {
        Captured {
            profile: SrtpProfile::AES128_CM_SHA1_80,
            material: (0..60).collect(),
            active,
        }
    }

    /// An RTCP BYE for SSRC 0x01020304 (RFC 3550 §6.6), with a reason.
    const BYE: [u8; 16] = [0x81, 203, 0, 3, 1, 2, 3, 4, 3, b'b', b'y', b'e', 0, 0, 0, 0];

    #[test]
    fn srtcp_sealed_by_the_peer_opens_and_tampering_does_not() {
        // The peer seals with its own half (it is the DTLS client when we are not).
        let peer = CmRtcp::new(&Master::of_cm(&keys(false), true).unwrap()).unwrap();
        let sealed = peer.seal(&BYE, 7);
        assert_ne!(&sealed[8..16], &BYE[8..], "the body is encrypted");
        let rx = SrtcpReceiver::new(&keys(false)).expect("a CM session has an opener");
        let mut scratch = Vec::new();
        assert_eq!(rx.open(&sealed, &mut scratch), Some(&BYE[..]));
        for i in [0, 9, sealed.len() - 12, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(rx.open(&bad, &mut scratch), None, "byte {i} flipped");
        }
        // The other half of the keys does not open it.
        let wrong = SrtcpReceiver::new(&keys(true)).unwrap();
        assert_eq!(wrong.open(&sealed, &mut scratch), None);
    }
}
