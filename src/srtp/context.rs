//! Session keys and the AEAD transforms: RTP and RTCP sealed towards one peer, its RTCP
//! opened, for the AEAD_AES_128_GCM and AEAD_AES_256_GCM profiles (RFC 7714), the ones
//! browsers offer and str0m's DTLS prefers. A session that negotiated AES_CM_HMAC_SHA1_80
//! gets no sealing context here and stays on str0m's send path; its RTCP can still be opened
//! (cm.rs), for what the engine reads from publishers (their BYE), and the tag of its RTP
//! checked, as for every profile ([`SrtpVerifier`]).

use super::capture::Captured;
use super::cm::{CmRtcp, CmRtpAuth};
use super::master::{
    LABEL_RTCP_KEY, LABEL_RTCP_SALT, LABEL_RTP_KEY, LABEL_RTP_SALT, Master, SALT_LEN,
    SRTCP_ENCRYPTED,
};
use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use str0m::crypto::dtls::SrtpProfile;

/// Sealing towards one peer: RTP for every media packet, RTCP for our sender reports.
pub struct SrtpSender {
    rtp: Aead,
    rtcp: Aead,
    /// The next SRTCP index (RFC 3711 §3.4: 31 bits, one counter for everything we send).
    srtcp_index: u32,
}

/// Opening the peer's SRTCP (a viewer's NACKs, which we answer ourselves; a publisher's BYE).
pub struct SrtcpReceiver {
    rtcp: Opener,
}

enum Opener {
    Aead(Aead),
    // Boxed: an AES key schedule is 1.7 KB, and most sessions are AEAD.
    Cm(Box<CmRtcp>),
}

/// Telling the peer's SRTP packets from forgeries without keeping what they decrypt to: for
/// the few packets the engine must judge before str0m opens them (engine/twcc_guard.rs).
pub struct SrtpVerifier {
    rtp: Verifier,
}

enum Verifier {
    Aead(Aead),
    // Boxed: an HMAC key holds two SHA-1 states, 1.2 KB.
    Cm(Box<CmRtpAuth>),
}

impl SrtpSender {
    /// Our outbound context, or `None` for a profile this module does not do.
    pub fn new(keys: &Captured) -> Option<Self> {
        // Outbound uses the client's half when we are the DTLS client (RFC 5764 §4.2).
        let master = Master::of(keys, keys.active)?;
        Some(Self {
            rtp: Aead::derive(&master, LABEL_RTP_KEY, LABEL_RTP_SALT)?,
            rtcp: Aead::derive(&master, LABEL_RTCP_KEY, LABEL_RTCP_SALT)?,
            srtcp_index: 0,
        })
    }

    /// Seals the RTP packet in `buf[start..]` (a header of `header_len` bytes, then the
    /// payload) in place and appends the tag. `index` is the 48-bit SRTP packet index:
    /// rollover counter and sequence number.
    pub fn seal_rtp(
        &self,
        buf: &mut Vec<u8>,
        start: usize,
        header_len: usize,
        ssrc: u32,
        index: u64,
    ) {
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[6..12].copy_from_slice(&index.to_be_bytes()[2..]);
        let (header, payload) = buf[start..].split_at_mut(header_len);
        let tag = self.rtp.seal(iv, header, payload);
        buf.extend_from_slice(&tag);
    }

    /// Seals the compound RTCP packet in `buf[start..]` (its first packet's SSRC is the
    /// sender) in place, appending the tag and the E flag with the SRTCP index.
    pub fn seal_rtcp(&mut self, buf: &mut Vec<u8>, start: usize) {
        let index = self.srtcp_index;
        self.srtcp_index = (self.srtcp_index + 1) & SRTCP_INDEX_MASK;
        let e_index = (index | SRTCP_ENCRYPTED).to_be_bytes();
        let packet = &mut buf[start..];
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&packet[4..8]);
        iv[8..12].copy_from_slice(&index.to_be_bytes());
        let mut aad = [0u8; 12];
        aad[..8].copy_from_slice(&packet[..8]);
        aad[8..].copy_from_slice(&e_index);
        let tag = self.rtcp.seal(iv, &aad, &mut packet[8..]);
        buf.extend_from_slice(&tag);
        buf.extend_from_slice(&e_index);
    }
}

impl SrtcpReceiver {
    /// The context for what the peer sends, or `None` for a profile this module does not do.
    pub fn new(keys: &Captured) -> Option<Self> {
        let rtcp = if keys.profile == SrtpProfile::AES128_CM_SHA1_80 {
            Opener::Cm(Box::new(CmRtcp::new(&Master::of_cm(keys, !keys.active)?)?))
        } else {
            Opener::Aead(Aead::derive(
                &Master::of(keys, !keys.active)?,
                LABEL_RTCP_KEY,
                LABEL_RTCP_SALT,
            )?)
        };
        Some(Self { rtcp })
    }

    /// Decrypts one SRTCP packet into `scratch` and returns the compound RTCP, or `None`
    /// when it does not authenticate (or is not encrypted, which WebRTC never does).
    pub fn open<'a>(&self, packet: &[u8], scratch: &'a mut Vec<u8>) -> Option<&'a [u8]> {
        let aead = match &self.rtcp {
            Opener::Aead(aead) => aead,
            Opener::Cm(cm) => return cm.open(packet, scratch),
        };
        if packet.len() < 8 + TAG_LEN + 4 {
            return None;
        }
        let (body, trailer) = packet.split_at(packet.len() - 4);
        let e_index = u32::from_be_bytes(trailer.try_into().ok()?);
        if e_index & SRTCP_ENCRYPTED == 0 {
            return None;
        }
        let index = e_index & SRTCP_INDEX_MASK;
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&body[4..8]);
        iv[8..12].copy_from_slice(&index.to_be_bytes());
        let mut aad = [0u8; 12];
        aad[..8].copy_from_slice(&body[..8]);
        aad[8..].copy_from_slice(trailer);
        scratch.clear();
        scratch.extend_from_slice(body);
        let plain_len = aead.open(iv, &aad, &mut scratch[8..])?;
        scratch.truncate(8 + plain_len);
        Some(&scratch[..])
    }
}

impl SrtpVerifier {
    /// The check for what the peer sends, or `None` for a profile this module does not do.
    pub fn new(keys: &Captured) -> Option<Self> {
        let rtp = if keys.profile == SrtpProfile::AES128_CM_SHA1_80 {
            Verifier::Cm(Box::new(CmRtpAuth::new(&Master::of_cm(
                keys,
                !keys.active,
            )?)?))
        } else {
            Verifier::Aead(Aead::derive(
                &Master::of(keys, !keys.active)?,
                LABEL_RTP_KEY,
                LABEL_RTP_SALT,
            )?)
        };
        Some(Self { rtp })
    }

    /// Whether `packet` (an RTP header of `header_len` bytes, the encrypted payload, the
    /// tag) was sealed by the peer with the rollover counter `roc`.
    pub fn is_authentic(&self, packet: &[u8], header_len: usize, roc: u32) -> bool {
        let aead = match &self.rtp {
            Verifier::Aead(aead) => aead,
            Verifier::Cm(cm) => return packet.len() >= header_len && cm.is_authentic(packet, roc),
        };
        if header_len < 12 || packet.len() < header_len + TAG_LEN {
            return false;
        }
        // RFC 7714 §8.1: 00 00, SSRC, ROC, SEQ; the header is the associated data.
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&packet[8..12]);
        iv[6..10].copy_from_slice(&roc.to_be_bytes());
        iv[10..12].copy_from_slice(&packet[2..4]);
        let (header, sealed) = packet.split_at(header_len);
        aead.open(iv, header, &mut sealed.to_vec()).is_some()
    }
}

/// An AES-GCM session key with its salt.
struct Aead {
    key: LessSafeKey,
    salt: [u8; SALT_LEN],
}

impl Aead {
    /// A session key and salt (RFC 3711 §4.3.1 with a key derivation rate of 0): the AES-CM
    /// keystream under the master key, started at (label XOR master salt) · 2^16. RFC 7714
    /// §11 keeps this PRF for GCM, with the 96-bit salt in the leftmost bytes.
    fn derive(master: &Master<'_>, key_label: u8, salt_label: u8) -> Option<Self> {
        let mut session_key = [0u8; 32];
        let session_key = &mut session_key[..master.key_len()];
        master.prf(key_label, session_key)?;
        let mut salt = [0u8; SALT_LEN];
        master.prf(salt_label, &mut salt)?;
        let algorithm = if master.key_len() == 16 {
            &AES_128_GCM
        } else {
            &AES_256_GCM
        };
        let key = LessSafeKey::new(UnboundKey::new(algorithm, session_key).ok()?);
        Some(Self { key, salt })
    }

    fn nonce(&self, mut iv: [u8; 12]) -> Nonce {
        for (b, s) in iv.iter_mut().zip(self.salt) {
            *b ^= s;
        }
        Nonce::assume_unique_for_key(iv)
    }

    fn seal(&self, iv: [u8; 12], aad: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .key
            .seal_in_place_separate_tag(self.nonce(iv), Aad::from(aad), in_out)
            .expect("AES-GCM seals any buffer shorter than 2^36 bytes");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Opens `in_out` (ciphertext, then tag) in place; the plaintext length.
    fn open(&self, iv: [u8; 12], aad: &[u8], in_out: &mut [u8]) -> Option<usize> {
        self.key
            .open_in_place(self.nonce(iv), Aad::from(aad), in_out)
            .ok()
            .map(|p| p.len())
    }
}

/// RFC 7714: 128-bit tags.
pub const TAG_LEN: usize = 16;
/// The length an SRTCP packet grows by: the tag, then the E flag and index.
pub const SRTCP_OVERHEAD: usize = TAG_LEN + 4;

const SRTCP_INDEX_MASK: u32 = SRTCP_ENCRYPTED - 1;

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(profile: SrtpProfile, key_len: usize, active: bool) -> Captured {
        Captured {
            profile,
            material: (0..(2 * key_len + 2 * SALT_LEN) as u8).collect(),
            active,
        }
    }

    #[test]
    fn rtcp_we_seal_is_opened_by_the_other_side() {
        for (profile, len) in [
            (SrtpProfile::AEAD_AES_128_GCM, 16),
            (SrtpProfile::AEAD_AES_256_GCM, 32),
        ] {
            // Our sender as DTLS server; the peer, the DTLS client, receives with the same
            // half (its receive side is our send side).
            let mut tx = SrtpSender::new(&keys(profile, len, false)).unwrap();
            let rx = SrtcpReceiver::new(&keys(profile, len, true)).unwrap();
            let plain: Vec<u8> = [0x81, 205, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8, 0, 9, 0, 0].to_vec();
            let mut buf = vec![0xEE; 3];
            buf.extend_from_slice(&plain);
            tx.seal_rtcp(&mut buf, 3);
            assert_eq!(buf.len(), 3 + plain.len() + SRTCP_OVERHEAD);
            assert_ne!(&buf[3 + 8..3 + 16], &plain[8..], "the body is encrypted");
            let mut scratch = Vec::new();
            assert_eq!(rx.open(&buf[3..], &mut scratch), Some(&plain[..]));
            buf[3 + 9] ^= 1;
            assert_eq!(
                rx.open(&buf[3..], &mut scratch),
                None,
                "tampering is caught"
            );
        }
    }

    /// Opens an SRTP packet as its receiver does (RFC 7714 §8.1): the IV is 00 00, SSRC,
    /// ROC, SEQ, XORed with the session salt; the header is the AAD.
    fn open_rtp(keys: &Captured, packet: &[u8], roc: u32) -> Option<Vec<u8>> {
        let rtp = Aead::derive(
            &Master::of(keys, keys.active)?,
            LABEL_RTP_KEY,
            LABEL_RTP_SALT,
        )?;
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&packet[8..12]);
        iv[6..10].copy_from_slice(&roc.to_be_bytes());
        iv[10..12].copy_from_slice(&packet[2..4]);
        let mut body = packet[12..].to_vec();
        let len = rtp.open(iv, &packet[..12], &mut body)?;
        body.truncate(len);
        Some(body)
    }

    #[test]
    fn rtp_sealed_across_the_16_bit_wrap_carries_the_rollover_counter() {
        let keys = keys(SrtpProfile::AEAD_AES_128_GCM, 16, false);
        let tx = SrtpSender::new(&keys).unwrap();
        let ssrc = 0x1234_5678u32;
        // Extended sequence numbers 65534, 65535, then 65536 and 65537: ROC 0, then 1.
        for (index, roc) in [(0xfffe_u64, 0), (0xffff, 0), (0x1_0000, 1), (0x1_0001, 1)] {
            let payload = [index as u8; 40];
            let mut buf = vec![0x80, 96];
            buf.extend_from_slice(&(index as u16).to_be_bytes());
            buf.extend_from_slice(&[0, 0, 0, 9]);
            buf.extend_from_slice(&ssrc.to_be_bytes());
            buf.extend_from_slice(&payload);
            tx.seal_rtp(&mut buf, 0, 12, ssrc, index);
            assert_eq!(buf.len(), 12 + 40 + TAG_LEN);
            assert_eq!(
                open_rtp(&keys, &buf, roc).as_deref(),
                Some(&payload[..]),
                "index {index:#x} opens with ROC {roc}"
            );
            assert_eq!(
                open_rtp(&keys, &buf, roc ^ 1),
                None,
                "and only with ROC {roc}"
            );
        }
    }

    #[test]
    fn rtp_the_peer_sealed_is_authentic_and_forgeries_are_not() {
        for (profile, len) in [
            (SrtpProfile::AEAD_AES_128_GCM, 16),
            (SrtpProfile::AEAD_AES_256_GCM, 32),
        ] {
            // We are the DTLS server; the peer seals with the client's half.
            let server = keys(profile, len, false);
            let peer = SrtpSender::new(&keys(profile, len, true)).unwrap();
            let verifier = SrtpVerifier::new(&server).unwrap();
            let ssrc = 0x0102_0304u32;
            // A header with a one-word extension (the associated data), then a payload.
            let mut buf = vec![0x90, 96, 0x12, 0x34, 0, 0, 0, 1];
            buf.extend_from_slice(&ssrc.to_be_bytes());
            buf.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x31, 0, 7, 0]);
            buf.extend_from_slice(&[9; 30]);
            peer.seal_rtp(&mut buf, 0, 20, ssrc, (3 << 16) | 0x1234);
            assert!(verifier.is_authentic(&buf, 20, 3));
            assert!(
                !verifier.is_authentic(&buf, 20, 2),
                "another rollover counter"
            );
            for i in [6, 18, 25, buf.len() - 1] {
                let mut forged = buf.clone();
                forged[i] ^= 1;
                assert!(!verifier.is_authentic(&forged, 20, 3), "byte {i} flipped");
            }
            assert!(!verifier.is_authentic(&buf[..20], 20, 3), "too short");
            let ours = SrtpVerifier::new(&keys(profile, len, true)).unwrap();
            assert!(
                !ours.is_authentic(&buf, 20, 3),
                "the other half of the keys"
            );
        }
    }

    #[test]
    fn cm_sha1_rtp_tags_are_checked() {
        use aws_lc_rs::hmac;
        let cm = |active| Captured {
            profile: SrtpProfile::AES128_CM_SHA1_80,
            material: (0..60).collect(),
            active,
        };
        let verifier = SrtpVerifier::new(&cm(false)).expect("CM sessions are checked too");
        // The peer's auth key (its half: the client's), as RFC 3711 §4.3 derives it.
        let peer = cm(true);
        let master = Master::of_cm(&peer, true).unwrap();
        let mut auth = [0u8; 20];
        master
            .prf(super::super::master::LABEL_RTP_AUTH, &mut auth)
            .unwrap();
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &auth);
        let mut packet = vec![0x80, 96, 0, 5, 0, 0, 0, 1, 1, 2, 3, 4];
        packet.extend_from_slice(&[7; 20]);
        let mut signed = packet.clone();
        signed.extend_from_slice(&5u32.to_be_bytes());
        let tag = hmac::sign(&key, &signed);
        packet.extend_from_slice(&tag.as_ref()[..10]);
        assert!(verifier.is_authentic(&packet, 12, 5));
        assert!(!verifier.is_authentic(&packet, 12, 4));
        packet[13] ^= 1;
        assert!(!verifier.is_authentic(&packet, 12, 5));
    }

    #[test]
    fn cm_sha1_sessions_get_no_context() {
        let k = keys(SrtpProfile::AES128_CM_SHA1_80, 16, false);
        assert!(SrtpSender::new(&k).is_none());
        assert!(SrtcpReceiver::new(&k).is_none());
    }
}
