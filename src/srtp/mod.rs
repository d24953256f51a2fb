//! SRTP for forwarded media, done by us instead of str0m.
//!
//! str0m encrypts every packet it sends through its own send queue, RTX cache and pacer, and
//! hands each one out in a freshly allocated buffer: about 12 k instructions and one
//! allocation per viewer-packet (BENCHMARKS.md §1). The forwarding path needs only the seal
//! itself. str0m keeps ICE and DTLS (the engine reads these viewers' RTCP itself, see
//! `engine/feedback.rs`); what it negotiates is read back here:
//!
//! - [`capture`]: str0m's DTLS runs through a crypto provider we wrap, so the DTLS-SRTP
//!   keying material (RFC 5764) of each `Rtc` is copied out when the handshake exports it.
//! - [`dtls`]: the DTLS handshake itself, on OpenSSL, so that peers with RSA certificates
//!   (GStreamer) connect too; str0m's own DTLS takes only ECDSA.
//! - [`context`]: session keys from that material (RFC 3711 §4.3) and the AEAD seal of
//!   RTP and RTCP (RFC 7714), in place, into the caller's buffer; the peer's RTCP opened and
//!   its RTP's tag checked.

pub mod capture;
mod cm;
pub mod context;
pub mod dtls;
mod master;

pub use capture::{KeySlot, build_rtc};
pub use context::{SrtcpReceiver, SrtpSender, SrtpVerifier};
