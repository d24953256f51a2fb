//! One direction's master key and salt, as DTLS-SRTP exports them, and the session keys
//! derived from them (RFC 3711 §4.3): what both transforms start from, the AEAD one
//! (context.rs) and the AES-CM one (cm.rs).

use aws_lc_rs::cipher::{AES_128, AES_256, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;
use str0m::crypto::dtls::SrtpProfile;

use super::capture::Captured;

/// One direction's master key and salt, from the DTLS-SRTP keying material: client key,
/// server key, client salt, server salt (RFC 5764 §4.2).
pub(super) struct Master<'a> {
    key: &'a [u8],
    pub(super) salt: &'a [u8],
}

impl<'a> Master<'a> {
    /// An AEAD profile's master key and salt.
    pub(super) fn of(keys: &'a Captured, client_half: bool) -> Option<Self> {
        let key_len = match keys.profile {
            SrtpProfile::AEAD_AES_128_GCM => 16,
            SrtpProfile::AEAD_AES_256_GCM => 32,
            _ => return None,
        };
        Self::split(&keys.material, client_half, key_len, SALT_LEN)
    }

    /// AES_CM_128_HMAC_SHA1_80's master key and salt (RFC 3711: 112-bit salts).
    pub(super) fn of_cm(keys: &'a Captured, client_half: bool) -> Option<Self> {
        if keys.profile != SrtpProfile::AES128_CM_SHA1_80 {
            return None;
        }
        Self::split(&keys.material, client_half, 16, CM_SALT_LEN)
    }

    fn split(m: &'a [u8], client_half: bool, key_len: usize, salt_len: usize) -> Option<Self> {
        if m.len() != 2 * key_len + 2 * salt_len {
            return None;
        }
        let (k, s) = if client_half {
            (0, 0)
        } else {
            (key_len, salt_len)
        };
        Some(Self {
            key: &m[k..k + key_len],
            salt: &m[2 * key_len + s..2 * key_len + s + salt_len],
        })
    }

    /// The master key's length in bytes (16 or 32).
    pub(super) fn key_len(&self) -> usize {
        self.key.len()
    }

    pub(super) fn prf(&self, label: u8, out: &mut [u8]) -> Option<()> {
        let mut iv = [0u8; 16];
        iv[..self.salt.len()].copy_from_slice(self.salt);
        iv[7] ^= label;
        let cipher = if self.key.len() == 16 {
            &AES_128
        } else {
            &AES_256
        };
        let ctr = EncryptingKey::ctr(UnboundCipherKey::new(cipher, self.key).ok()?).ok()?;
        out.fill(0);
        ctr.less_safe_encrypt(out, EncryptionContext::Iv128(FixedLength::from(iv)))
            .ok()?;
        Some(())
    }
}

/// RFC 3711 §4.3.2 key derivation labels.
pub(super) const LABEL_RTP_KEY: u8 = 0x00;
pub(super) const LABEL_RTP_AUTH: u8 = 0x01;
pub(super) const LABEL_RTP_SALT: u8 = 0x02;
pub(super) const LABEL_RTCP_KEY: u8 = 0x03;
pub(super) const LABEL_RTCP_AUTH: u8 = 0x04;
pub(super) const LABEL_RTCP_SALT: u8 = 0x05;
/// RFC 3711's 112-bit salts (AES-CM).
pub(super) const CM_SALT_LEN: usize = 14;

/// RFC 7714: 96-bit salts (AES-GCM).
pub(super) const SALT_LEN: usize = 12;
/// The E flag of an SRTCP index word: the packet is encrypted.
pub(super) const SRTCP_ENCRYPTED: u32 = 1 << 31;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prf_matches_rfc_3711_appendix_b3() {
        // RFC 3711 B.3 (AES-CM PRF, 112-bit salt; GCM uses the same PRF with 96 bits).
        let key = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
        let salt = hex("0EC675AD498AFEEBB6960B3AABE6");
        let m = Master {
            key: &key,
            salt: &salt,
        };
        let mut cipher_key = [0u8; 16];
        m.prf(LABEL_RTP_KEY, &mut cipher_key).unwrap();
        assert_eq!(cipher_key[..], hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut cipher_salt = [0u8; 14];
        m.prf(LABEL_RTP_SALT, &mut cipher_salt).unwrap();
        assert_eq!(cipher_salt[..], hex("30CBBC08863D8C85D49DB34A9AE1"));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
