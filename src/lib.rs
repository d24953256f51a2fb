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
//! Imports run one way, from the top of this list to the bottom (`tests/layout.rs` checks
//! it): `server` wires everything; `http` serves requests and reaches the media workers
//! through the `handle`; `edge` speaks the `cluster` protocol to its origin; `io` drives the
//! engines; the `engine` imports no layer above it; the leaves below it are data.
//!
//! - [`server`]: wiring the above together.
//! - [`http`]: hyper: routing, CORS, pages, WHIP, WHEP, the API, `/metrics`.
//! - [`edge`]: edge mode, broadcasts pulled from an origin over WHEP and served here.
//! - [`selftest`]: the start-up check that media answers on the advertised UDP addresses.
//! - [`io`]: the tokio driver: the media socket (quinn-udp), the loop; with `--workers N`, a
//!   receive thread and N worker threads each driving its own `Engine`.
//! - [`handle`]: the [`handle::EngineHandle`] that sends each command to the worker that
//!   owns what it names (placing sessions and broadcasts), and what it shares with `io`.
//! - [`cluster`]: the origin–edge protocol: heartbeats and their replies, the book of live
//!   edges, who goes when a broadcast is over its viewer cap across the cluster.
//! - [`offer`]: SDP offer → str0m `Rtc` + answer, off the media loop.
//! - [`engine`]: the sans-IO core. Peers in a slab, a demux index, the router with its
//!   keyframe and GOP cache and retransmission ring, per-viewer rewriting, the viewers' SRTP
//!   egress into one outbox, one deadline index. No IO, no clock.
//! - [`record`]: `--record`, broadcasts written as fragmented MP4 by a thread of its own,
//!   fed from the media path through a bounded queue that never blocks it.
//! - [`registry`]: broadcasts, broadcast IDs (stored hashed) and view IDs, persistence.
//! - [`srtp`]: each session's DTLS-SRTP keys read through str0m's crypto-provider interface,
//!   and the AES-GCM seal whipcast does itself for forwarded media.
//! - [`tls`]: rustls for the HTTP port (`--tls-cert`) and an edge's origin (`--origin-ca`).
//! - [`config`]: every option, its default and why.
//! - [`h264`]: the SPS parser that tells what a publisher really sends.
//! - [`broadcast_key`]: the number the registry gives a broadcast, which the engine, HTTP
//!   and the recorder pass around (none of them owns it).
//! - [`client_key`]: one client for every per-address limit (an IPv4 address or an IPv6
//!   /64), used by HTTP's limits and the ICE-TCP connection cap.
//! - [`clock`]: the one place that reads the clock (`now`, `unix_now`), for every layer above
//!   the engine.
//!
//! # One packet's path
//!
//! OBS datagram → `io` batch receive → `Engine::handle_datagram` → demux (address, or STUN
//! ufrag) → a check of its transport-wide sequence number, which str0m 0.25 must not see
//! go back past 0 (`engine/twcc_guard.rs`) → publisher `Rtc` decrypts → `Event::RtpPacket` (payload `Arc<[u8]>`) → router:
//! the broadcast's viewers → per viewer: rewrite seq/timestamp/PT, queue an `Arc` clone (no
//! byte copy) → once per receive batch, each viewer's packets are sealed with its own SRTP
//! keys straight into the engine's outbox (no str0m send queue, no allocation) →
//! `poll_transmit` lends each datagram → `io` sends, GSO-batched per viewer. str0m keeps ICE
//! and DTLS for every session, and the whole send path (RTCP input and keyframe requests
//! included) for sessions whose SRTP profile is not AES-GCM; for the others, their NACKs,
//! PLIs and FIRs are read by the engine from their SRTCP.
//!
//! # Workers
//!
//! `--workers N` (default: one per core; N > 1) runs N engines, one per thread, on the one
//! UDP port. A receive thread reads the socket (GRO batches) and routes each datagram to its
//! worker: STUN by the ufrag in USERNAME (the HTTP handle tells it each session's ufrag
//! before the answer leaves), everything else by the source address learned from that STUN.
//! Datagrams go through one bounded FIFO per worker, in reused batches; a full queue loses
//! that worker's datagrams only (`whipcast_worker_queue_drops_total`). Each worker sends on
//! its own clone of the socket. A broadcast's publisher lives on one worker (its home; new
//! broadcasts go to the worker with the fewest, a resuming publisher to its home), and its
//! viewers on any: each new viewer goes to the worker with the fewest viewers, and the home
//! relays the publisher's packets (`Arc`s, no copy) to the other workers holding viewers of
//! it, which serve them from a mirror of the broadcast (`engine/span.rs`); the viewer cap is
//! one book shared by those engines (`engine/audience.rs`).

#![forbid(unsafe_code)]

pub mod broadcast_key;
pub mod client_key;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod edge;
pub mod engine;
pub mod h264;
pub mod handle;
pub mod http;
pub mod io;
pub mod offer;
pub mod record;
pub mod registry;
pub mod secret;
pub mod selftest;
pub mod server;
pub mod srtp;
pub mod tls;

pub use config::Config;
pub use server::{Server, StartError};
