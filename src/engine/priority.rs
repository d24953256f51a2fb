//! Binding requests without PRIORITY, as FFmpeg 8.0's WHIP muxer sends them (USERNAME,
//! USE-CANDIDATE, MESSAGE-INTEGRITY and FINGERPRINT only; `libavformat/whip.c`).
//!
//! RFC 8445 §7.1.1 makes PRIORITY mandatory and str0m refuses such a request before it looks
//! at it, so FFmpeg could never connect. An ICE-lite agent needs the peer's priority only to
//! rank the peer-reflexive candidate the request creates. So a request that lacks it is first
//! checked with the session's own password (MESSAGE-INTEGRITY, RFC 8489 §14.5), then rebuilt
//! with the priority such a candidate gets (RFC 8445 §5.1.2.1) and signed again, and that is
//! what str0m reads. Anything that does not authenticate is left as it came (str0m drops it):
//! only the holder of the session's password can have a request rewritten.

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use str0m::Rtc;

use super::demux::{STUN_BINDING_REQUEST, STUN_HEADER_LEN, STUN_MAGIC_COOKIE};

/// The request with PRIORITY added and signed again, when `datagram` is a Binding request
/// for `rtc`'s session without one; `None` for anything else.
pub(super) fn add_if_missing(rtc: &mut Rtc, datagram: &[u8]) -> Option<Vec<u8>> {
    if datagram.get(..2)? != STUN_BINDING_REQUEST {
        return None;
    }
    let integrity_at = integrity_without_priority(datagram)?;
    let password = rtc.direct_api().local_ice_credentials().pass;
    resign(datagram, integrity_at, password.as_bytes())
}

/// Where MESSAGE-INTEGRITY starts in a well-framed request that has no PRIORITY; only a
/// FINGERPRINT may follow it.
fn integrity_without_priority(datagram: &[u8]) -> Option<usize> {
    if datagram.len() < STUN_HEADER_LEN || datagram[4..8] != STUN_MAGIC_COOKIE {
        return None;
    }
    let body_len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if STUN_HEADER_LEN + body_len != datagram.len() {
        return None;
    }
    let mut at = STUN_HEADER_LEN;
    let mut integrity = None;
    while at + 4 <= datagram.len() {
        let typ = u16::from_be_bytes([datagram[at], datagram[at + 1]]);
        let len = usize::from(u16::from_be_bytes([datagram[at + 2], datagram[at + 3]]));
        let next = at + 4 + ((len + 3) & !3);
        if next > datagram.len() {
            return None;
        }
        match (typ, integrity) {
            (ATTR_PRIORITY, _) => return None,
            (ATTR_MESSAGE_INTEGRITY, None) if len == INTEGRITY_LEN => integrity = Some(at),
            (ATTR_FINGERPRINT, Some(_)) => {}
            (_, Some(_)) => return None,
            _ => {}
        }
        at = next;
    }
    integrity
}

/// Checks MESSAGE-INTEGRITY at `integrity_at` under `password`, then builds the request again:
/// the attributes before it, PRIORITY, MESSAGE-INTEGRITY and FINGERPRINT.
fn resign(datagram: &[u8], integrity_at: usize, password: &[u8]) -> Option<Vec<u8>> {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, password);
    // The HMAC covers the header, with the length as if the message ended after the
    // integrity attribute, and every attribute before it.
    let mut signed = datagram[..integrity_at].to_vec();
    set_length(&mut signed, integrity_at + 4 + INTEGRITY_LEN);
    let given = &datagram[integrity_at + 4..integrity_at + 4 + INTEGRITY_LEN];
    verify_slices_are_equal(hmac::sign(&key, &signed).as_ref(), given).ok()?;

    let mut out = signed;
    out.extend_from_slice(&ATTR_PRIORITY.to_be_bytes());
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&PEER_REFLEXIVE_PRIORITY.to_be_bytes());
    let end = out.len() + 4 + INTEGRITY_LEN;
    set_length(&mut out, end);
    let tag = hmac::sign(&key, &out);
    out.extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
    out.extend_from_slice(&(INTEGRITY_LEN as u16).to_be_bytes());
    out.extend_from_slice(tag.as_ref());
    let end = out.len() + 8;
    set_length(&mut out, end);
    let fingerprint = crc32(&out) ^ FINGERPRINT_XOR;
    out.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&fingerprint.to_be_bytes());
    Some(out)
}

/// Sets the header's length field for a message that will be `total` bytes long.
fn set_length(message: &mut [u8], total: usize) {
    let body = (total - STUN_HEADER_LEN) as u16;
    message[2..4].copy_from_slice(&body.to_be_bytes());
}

/// CRC-32 (ISO-HDLC, as RFC 8489 §14.7 names it), bit by bit: a rare message, a few dozen
/// bytes.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

const ATTR_PRIORITY: u16 = 0x0024;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_FINGERPRINT: u16 = 0x8028;
const INTEGRITY_LEN: usize = 20;
const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// RFC 8445 §5.1.2.1 for a peer-reflexive candidate of component 1: type preference 110,
/// the highest local preference.
const PEER_REFLEXIVE_PRIORITY: u32 = (110 << 24) | (65_535 << 8) | (256 - 1);

#[cfg(test)]
mod tests {
    use super::*;

    /// A request as FFmpeg 8.0 builds one: USERNAME, USE-CANDIDATE, MESSAGE-INTEGRITY,
    /// FINGERPRINT (`ice_create_request`).
    pub(crate) fn ffmpeg_request(username: &str, password: &str) -> Vec<u8> {
        let mut m = vec![0x00, 0x01, 0, 0];
        m.extend_from_slice(&STUN_MAGIC_COOKIE);
        m.extend_from_slice(&[9; 12]);
        m.extend_from_slice(&0x0006u16.to_be_bytes());
        m.extend_from_slice(&(username.len() as u16).to_be_bytes());
        m.extend_from_slice(username.as_bytes());
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m.extend_from_slice(&[0x00, 0x25, 0, 0]);
        let end = m.len() + 24;
        set_length(&mut m, end);
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, password.as_bytes());
        let tag = hmac::sign(&key, &m);
        m.extend_from_slice(&[0x00, 0x08, 0, 20]);
        m.extend_from_slice(tag.as_ref());
        let end = m.len() + 8;
        set_length(&mut m, end);
        let fp = crc32(&m) ^ FINGERPRINT_XOR;
        m.extend_from_slice(&[0x80, 0x28, 0, 4]);
        m.extend_from_slice(&fp.to_be_bytes());
        m
    }

    #[test]
    fn crc32_matches_the_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn a_request_without_priority_is_signed_again_with_one() {
        let req = ffmpeg_request("ours:theirs", "secret");
        let at = integrity_without_priority(&req).expect("no PRIORITY, one MESSAGE-INTEGRITY");
        let out = resign(&req, at, b"secret").expect("it authenticates");
        // What str0m checks: PRIORITY there, then integrity and fingerprint over the new bytes.
        assert_eq!(integrity_without_priority(&out), None, "PRIORITY added");
        let msg = str0m::ice::StunMessage::parse(&out).expect("str0m parses it");
        assert!(msg.verify(b"secret", |k, parts| {
            let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, k);
            let mut ctx = hmac::Context::with_key(&key);
            for p in parts {
                ctx.update(p);
            }
            ctx.sign().as_ref().try_into().unwrap()
        }));
        let n = out.len();
        assert_eq!(
            u32::from_be_bytes(out[n - 4..].try_into().unwrap()),
            crc32(&out[..n - 8]) ^ FINGERPRINT_XOR
        );
    }

    #[test]
    fn requests_that_do_not_authenticate_or_already_have_priority_are_left_alone() {
        let req = ffmpeg_request("ours:theirs", "secret");
        let at = integrity_without_priority(&req).unwrap();
        assert_eq!(resign(&req, at, b"wrong"), None);
        let mut tampered = req.clone();
        tampered[25] ^= 1; // a byte of USERNAME
        assert_eq!(resign(&tampered, at, b"secret"), None);
        let with_priority = resign(&req, at, b"secret").unwrap();
        assert_eq!(integrity_without_priority(&with_priority), None);
        for cut in 0..req.len() {
            let _ = integrity_without_priority(&req[..cut]); // never panics
        }
    }
}
