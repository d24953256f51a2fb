//! whipcast: a self-hosted live broadcast server. OBS publishes over WHIP (RFC 9725),
//! browsers watch over WHEP, with sub-second latency, through a sans-IO engine on str0m.
//!
//! ```text
//!              HTTP (hyper)                         UDP (one socket)
//!   OBS/browser ──► http/ ── Command ──► engine/ ◄── datagrams ── io/
//!                       ◄── Outcome ───     │  ──── transmits ───►
//!                                           └─ poll_timeout (earliest deadline)
//! ```
//!
//! # Layout
//!
//! - [`config`]: every option, its default and why.
//! - [`registry`]: broadcasts, broadcast IDs (stored hashed) and view IDs, persistence.
//! - [`offer`]: SDP offer → str0m `Rtc` + answer, off the media loop.
//! - [`h264`]: the SPS parser that tells what a publisher really sends.
//! - [`engine`]: the sans-IO core. Peers in a slab, a demux index, the router with its
//!   keyframe cache and retransmission ring, per-viewer rewriting, the viewers' SRTP egress
//!   into one outbox, one deadline index. No IO, no clock.
//! - [`srtp`]: each session's DTLS-SRTP keys read through str0m's crypto-provider interface,
//!   and the AES-GCM seal whipcast does itself for forwarded media.
//! - [`io`]: the tokio driver: the media socket (quinn-udp), the clock, the loop.
//! - [`http`]: hyper: routing, CORS, pages, WHIP, WHEP, the API.
//! - [`selftest`]: the start-up check that media answers on the advertised UDP addresses.
//! - [`edge`]: edge mode, broadcasts pulled from an origin over WHEP and served here.
//! - [`server`]: wiring the above together.
//!
//! # One packet's path
//!
//! OBS datagram → `io` batch receive → `Engine::handle_datagram` → demux (address, or STUN
//! ufrag) → publisher `Rtc` decrypts → `Event::RtpPacket` (payload `Arc<[u8]>`) → router:
//! the broadcast's viewers → per viewer: rewrite seq/timestamp/PT, queue an `Arc` clone (no
//! byte copy) → once per receive batch, each viewer's packets are sealed with its own SRTP
//! keys straight into the engine's outbox (no str0m send queue, no allocation) →
//! `poll_transmit` lends each datagram → `io` sends, GSO-batched per viewer. str0m keeps ICE
//! and DTLS for every session, and the whole send path (RTCP input and keyframe requests
//! included) for sessions whose SRTP profile is not AES-GCM; for the others, their NACKs,
//! PLIs and FIRs are read by the engine from their SRTCP.

#![forbid(unsafe_code)]

pub mod config;
pub mod edge;
pub mod engine;
pub mod h264;
pub mod http;
pub mod io;
pub mod offer;
pub mod registry;
pub mod secret;
pub mod selftest;
pub mod server;
pub mod srtp;

pub use config::Config;
pub use server::{Server, StartError};
