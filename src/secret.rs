//! Random tokens (broadcast IDs, view IDs, session IDs) and how secrets are compared.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A URL-safe token of [`TOKEN_BYTES`] random bytes from the OS CSPRNG.
pub fn random_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).expect("the OS random number generator is available");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `s` has the shape of a token we issued (length and alphabet), so that garbage
/// is rejected before any lookup.
pub fn is_token(s: &str) -> bool {
    s.len() == TOKEN_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// SHA-256 of a secret, as stored at rest and used as a map key. Looking a secret up by its
/// hash leaks nothing useful through timing: the attacker controls the input, not the hash.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Constant-time equality for secrets of equal length.
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// A short, non-reversible label for logs: the first bytes of the hash, never the secret.
pub fn log_label(secret: &str) -> String {
    let d = digest(secret);
    format!("{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
}

/// 16 bytes = 128 bits, the minimum DESIGN.md asks for an unguessable capability.
const TOKEN_BYTES: usize = 16;
/// Length of [`TOKEN_BYTES`] in unpadded base64url.
const TOKEN_LEN: usize = 22;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_well_formed() {
        let a = random_token();
        let b = random_token();
        assert_ne!(a, b);
        assert!(is_token(&a), "{a}");
        assert!(!is_token("short"));
        assert!(!is_token(&format!("{}!", &a[..21])));
    }

    #[test]
    fn equal_compares_contents() {
        assert!(equal(b"abc", b"abc"));
        assert!(!equal(b"abc", b"abd"));
        assert!(!equal(b"abc", b"ab"));
    }
}
