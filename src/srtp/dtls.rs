//! DTLS 1.2 on OpenSSL, behind str0m's `DtlsInstance` interface.
//!
//! str0m's own DTLS (dimpl 0.9) accepts only ECDSA peer certificates. WebRTC allows RSA
//! (RFC 8827 asks endpoints to support ECDSA, not to refuse everything else), and native
//! stacks use it: GStreamer's `webrtcbin` presents a self-signed RSA certificate, so with
//! dimpl its handshake ends in `handshake_failure`. OpenSSL verifies RSA (PKCS#1 v1.5 and
//! PSS) and ECDSA signatures, as client or server. Our own certificate stays the ECDSA P-256
//! one str0m generates. str0m still checks the peer's certificate against the SDP
//! fingerprint (we hand it the DER in [`DtlsOutput::PeerCert`]), so OpenSSL accepts any
//! self-signed certificate here.
//!
//! OpenSSL runs over an in-memory datagram queue: every record it writes is one outgoing
//! datagram, every datagram we are given is one read. Its retransmission timer runs on the
//! real clock (OpenSSL reads it itself), so while the handshake is in flight we ask str0m to
//! call [`DtlsInstance::handle_timeout`] every [`HANDSHAKE_TICK`], and each call lets
//! OpenSSL resend a flight whose timer expired.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use openssl::error::ErrorStack;
use openssl::pkey::PKey;
use openssl::srtp::SrtpProfileId;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslMethod, SslOptions, SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::X509;
use str0m::crypto::CryptoError;
use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, KeyingMaterial,
    ProtocolVersion, SrtpProfile,
};
use tracing::{debug, info};

/// The DTLS factory str0m calls once per `Rtc`.
#[derive(Debug)]
pub struct OpensslDtls;

impl DtlsProvider for OpensslDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        // An ECDSA P-256 certificate, as every browser uses.
        str0m_aws_lc_rs::default_provider()
            .dtls_provider
            .generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        _version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let context = context_for(cert).map_err(|e| CryptoError::Other(e.to_string()))?;
        let mut ssl = Ssl::new(&context).map_err(|e| CryptoError::Other(e.to_string()))?;
        let mtu = mtu.unwrap_or(DEFAULT_MTU);
        ssl.set_mtu(mtu as u32)
            .map_err(|e| CryptoError::Other(e.to_string()))?;
        Ok(Box::new(Instance {
            state: Mutex::new(State {
                phase: Phase::Idle(Some(ssl)),
                mtu,
                events: VecDeque::new(),
                next_tick: None,
                now,
            }),
            active: None,
        }))
    }
}

/// SRTP profiles we offer and accept, best first. Both AEAD profiles are sealed by our own
/// egress (src/srtp/context.rs); the CM profile leaves sealing to str0m.
const SRTP_PROFILES: &str = "SRTP_AEAD_AES_128_GCM:SRTP_AEAD_AES_256_GCM:SRTP_AES128_CM_SHA1_80";
/// ECDHE only (forward secrecy), AEAD first; RSA suites for peers whose certificate is RSA
/// when we are the client. Browsers, OBS (libdatachannel) and GStreamer all offer the first.
const CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:\
ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA";
const GROUPS: &str = "X25519:P-256:P-384";
/// The record size str0m asks for when it gives none.
const DEFAULT_MTU: usize = 1150;
/// How often OpenSSL gets to look at its retransmission timer while a handshake is in
/// flight. Its first timeout is 1 s, so a tenth of that costs nothing and delays a resend
/// by at most 10 %.
const HANDSHAKE_TICK: Duration = Duration::from_millis(100);
/// When nothing is in flight: no timer of ours is due.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Contexts kept for reuse: one per certificate, and a server uses one certificate.
const CONTEXT_CACHE: usize = 4;

/// An `SslContext` per certificate: loading the key and certificate is the costly part of
/// setting one up, and every session of a server shares its certificate.
fn context_for(cert: &DtlsCert) -> Result<SslContext, ErrorStack> {
    /// (certificate DER, its context), newest last.
    type Cache = VecDeque<(Arc<[u8]>, SslContext)>;
    static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(|| Mutex::new(VecDeque::new()));
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, ctx)) = cache.iter().find(|(der, _)| **der == *cert.certificate) {
        return Ok(ctx.clone());
    }
    let ctx = build_context(cert)?;
    if cache.len() == CONTEXT_CACHE {
        cache.pop_front();
    }
    cache.push_back((cert.certificate.as_slice().into(), ctx.clone()));
    Ok(ctx)
}

fn build_context(cert: &DtlsCert) -> Result<SslContext, ErrorStack> {
    let mut b = SslContext::builder(SslMethod::dtls())?;
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
    let x509 = X509::from_der(&cert.certificate)?;
    b.set_certificate(&x509)?;
    let key = PKey::private_key_from_der(&cert.private_key)?;
    b.set_private_key(&key)?;
    b.check_private_key()?;
    b.set_cipher_list(CIPHERS)?;
    b.set_groups_list(GROUPS)?;
    b.set_tlsext_use_srtp(SRTP_PROFILES)?;
    // The MTU comes from str0m; OpenSSL must not ask the (in-memory) transport for one.
    b.set_options(SslOptions::NO_QUERY_MTU | SslOptions::NO_TICKET);
    // Self-signed certificates are the norm in WebRTC: the fingerprint in the SDP is the
    // check, and str0m makes it on the DER we hand out. A certificate is still required.
    b.set_verify_callback(
        SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        |_, _| true,
    );
    Ok(b.build())
}

/// One `Rtc`'s DTLS connection.
#[derive(Debug)]
struct Instance {
    // OpenSSL's stream is `Send` but not `Sync`; str0m wants both. It is only ever used
    // through `&mut self`, so the lock is never contended.
    state: Mutex<State>,
    active: Option<bool>,
}

struct State {
    phase: Phase,
    mtu: usize,
    /// What `poll_output` hands out after the queued datagrams, in order.
    events: VecDeque<Event>,
    /// When OpenSSL next gets to check its retransmission timer; `None` once connected.
    next_tick: Option<Instant>,
    /// The latest time str0m gave us (never the clock: tests run on a virtual one).
    now: Instant,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("phase", &self.phase.name())
            .finish_non_exhaustive()
    }
}

enum Phase {
    /// Built, waiting for str0m to say which side we are.
    Idle(Option<Ssl>),
    Handshaking(SslStream<Datagrams>),
    Connected(SslStream<Datagrams>),
    /// `close_notify` sent or received; what is queued still goes out.
    Closed(SslStream<Datagrams>),
    Failed,
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Idle(_) => "idle",
            Phase::Handshaking(_) => "handshaking",
            Phase::Connected(_) => "connected",
            Phase::Closed(_) => "closed",
            Phase::Failed => "failed",
        }
    }

    fn stream(&mut self) -> Option<&mut SslStream<Datagrams>> {
        match self {
            Phase::Handshaking(s) | Phase::Connected(s) | Phase::Closed(s) => Some(s),
            Phase::Idle(_) | Phase::Failed => None,
        }
    }
}

enum Event {
    PeerCert(Vec<u8>),
    Keys(KeyingMaterial, SrtpProfile),
    Connected,
    Data(Vec<u8>),
    CloseNotify,
}

/// The in-memory transport under OpenSSL: one datagram per read, one per write.
#[derive(Default)]
struct Datagrams {
    incoming: VecDeque<Vec<u8>>,
    outgoing: VecDeque<Vec<u8>>,
}

impl Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(d) = self.incoming.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        // A datagram larger than OpenSSL's buffer is truncated, as a socket would.
        let n = d.len().min(buf.len());
        buf[..n].copy_from_slice(&d[..n]);
        Ok(n)
    }
}

impl Write for Datagrams {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.push_back(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bounds what a peer can make us hold: a handshake flight is a handful of datagrams.
const MAX_INCOMING: usize = 64;

impl Instance {
    fn state(&mut self) -> &mut State {
        self.state.get_mut().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Lets OpenSSL act on what it has: advance the handshake, read application data or a
    /// `close_notify`.
    fn drive(&mut self) -> Result<(), DtlsImplError> {
        let now = self.now;
        match &mut self.phase {
            Phase::Handshaking(stream) => match stream.do_handshake() {
                Ok(()) => {
                    let events = connected(stream.ssl())?;
                    self.events.extend(events);
                    let Phase::Handshaking(stream) =
                        std::mem::replace(&mut self.phase, Phase::Failed)
                    else {
                        unreachable!("matched above")
                    };
                    self.phase = Phase::Connected(stream);
                    self.next_tick = None;
                    self.read_data()
                }
                Err(e) if would_block(&e) => {
                    self.next_tick = Some(now + HANDSHAKE_TICK);
                    Ok(())
                }
                Err(e) => Err(self.fail(&e)),
            },
            Phase::Connected(_) => self.read_data(),
            Phase::Idle(_) | Phase::Closed(_) | Phase::Failed => Ok(()),
        }
    }

    fn read_data(&mut self) -> Result<(), DtlsImplError> {
        let mut buf = vec![0; self.mtu.max(2048)];
        loop {
            let Phase::Connected(stream) = &mut self.phase else {
                return Ok(());
            };
            match stream.ssl_read(&mut buf) {
                Ok(n) => self.events.push_back(Event::Data(buf[..n].to_vec())),
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                    debug!("DTLS close_notify received");
                    self.events.push_back(Event::CloseNotify);
                    let Phase::Connected(stream) =
                        std::mem::replace(&mut self.phase, Phase::Failed)
                    else {
                        unreachable!("matched above")
                    };
                    self.phase = Phase::Closed(stream);
                    return Ok(());
                }
                Err(e) if would_block(&e) => return Ok(()),
                Err(e) => return Err(self.fail(&e)),
            }
        }
    }

    /// Logs why the connection failed, in OpenSSL's words (e.g. "sslv3 alert handshake
    /// failure", "no shared cipher"), and ends it.
    fn fail(&mut self, e: &openssl::ssl::Error) -> DtlsImplError {
        let reason = e
            .ssl_error()
            .map(|stack| {
                stack
                    .errors()
                    .iter()
                    .filter_map(|e| e.reason())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| e.to_string());
        let during = self.phase.name();
        info!(%reason, "DTLS failed while {during}");
        self.phase = Phase::Failed;
        self.next_tick = None;
        DtlsImplError::ConnectionClosed
    }
}

/// What a finished handshake hands str0m: the peer's certificate (str0m compares its
/// fingerprint with the SDP's), the SRTP keying material (RFC 5764 §4.2), then `Connected`.
fn connected(ssl: &openssl::ssl::SslRef) -> Result<Vec<Event>, DtlsImplError> {
    let cert = ssl
        .peer_certificate()
        .and_then(|c| c.to_der().ok())
        .ok_or(DtlsImplError::ConnectionClosed)?;
    let (profile, key_len, salt_len) = match ssl.selected_srtp_profile().map(|p| p.id()) {
        Some(SrtpProfileId::SRTP_AEAD_AES_128_GCM) => (SrtpProfile::AEAD_AES_128_GCM, 16, 12),
        Some(SrtpProfileId::SRTP_AEAD_AES_256_GCM) => (SrtpProfile::AEAD_AES_256_GCM, 32, 12),
        Some(SrtpProfileId::SRTP_AES128_CM_SHA1_80) => (SrtpProfile::AES128_CM_SHA1_80, 16, 14),
        _ => {
            info!("DTLS finished without an SRTP profile we support (use_srtp)");
            return Err(DtlsImplError::ConnectionClosed);
        }
    };
    let mut material = vec![0; 2 * (key_len + salt_len)];
    ssl.export_keying_material(&mut material, "EXTRACTOR-dtls_srtp", None)
        .map_err(|_| DtlsImplError::ConnectionClosed)?;
    debug!(?profile, version = ssl.version_str(), "DTLS connected");
    Ok(vec![
        Event::PeerCert(cert),
        Event::Keys(KeyingMaterial::new(&material), profile),
        Event::Connected,
    ])
}

fn would_block(e: &openssl::ssl::Error) -> bool {
    e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE
}

impl DtlsInstance for Instance {
    fn set_active(&mut self, active: bool) {
        self.active = Some(active);
        let state = self.state();
        let Phase::Idle(ssl) = &mut state.phase else {
            return;
        };
        let Some(mut ssl) = ssl.take() else {
            return;
        };
        if active {
            ssl.set_connect_state();
        } else {
            ssl.set_accept_state();
        }
        state.phase = match SslStream::new(ssl, Datagrams::default()) {
            Ok(stream) => Phase::Handshaking(stream),
            Err(e) => {
                info!(reason = %e, "DTLS could not start");
                Phase::Failed
            }
        };
        if active {
            // The client speaks first: its ClientHello is queued now. An error here is
            // reported again by the next `handle_timeout`.
            let _ = state.drive();
        }
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        let state = self.state();
        let Some(stream) = state.phase.stream() else {
            return Ok(());
        };
        if packet.is_empty() {
            // str0m's nudge to a new client ("send your ClientHello"), not a datagram: as a
            // zero-length read OpenSSL would take it for the end of the connection.
            return state.drive();
        }
        let incoming = &mut stream.get_mut().incoming;
        if incoming.len() >= MAX_INCOMING {
            return Err(DtlsImplError::ReceiveQueueFull);
        }
        incoming.push_back(packet.to_vec());
        state.drive()
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let state = self.state();
        if let Some(stream) = state.phase.stream()
            && let Some(d) = stream.get_mut().outgoing.pop_front()
        {
            if d.len() > buf.len() {
                let needed = d.len();
                stream.get_mut().outgoing.push_front(d);
                return DtlsOutput::BufferTooSmall { needed };
            }
            buf[..d.len()].copy_from_slice(&d);
            return DtlsOutput::Packet(&buf[..d.len()]);
        }
        match state.events.pop_front() {
            Some(Event::PeerCert(der)) | Some(Event::Data(der)) if der.len() > buf.len() => {
                DtlsOutput::BufferTooSmall { needed: der.len() }
            }
            Some(Event::PeerCert(der)) => {
                buf[..der.len()].copy_from_slice(&der);
                DtlsOutput::PeerCert(&buf[..der.len()])
            }
            Some(Event::Data(data)) => {
                buf[..data.len()].copy_from_slice(&data);
                DtlsOutput::ApplicationData(&buf[..data.len()])
            }
            Some(Event::Keys(km, profile)) => DtlsOutput::KeyingMaterial(km, profile),
            Some(Event::Connected) => DtlsOutput::Connected,
            Some(Event::CloseNotify) => DtlsOutput::CloseNotify,
            None => DtlsOutput::Timeout(state.next_tick.unwrap_or(state.now + IDLE_TIMEOUT)),
        }
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        let state = self.state();
        state.now = state.now.max(now);
        match state.next_tick {
            Some(t) if t <= now => state.drive(),
            _ => Ok(()),
        }
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        let state = self.state();
        let Phase::Connected(stream) = &mut state.phase else {
            return Ok(0);
        };
        if data.is_empty() {
            return Ok(0);
        }
        match stream.ssl_write(data) {
            Ok(n) => Ok(n),
            Err(e) if would_block(&e) => Ok(0),
            Err(e) => Err(state.fail(&e)),
        }
    }

    fn is_active(&self) -> bool {
        self.active.unwrap_or(false)
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        matches!(state.phase, Phase::Connected(_) | Phase::Closed(_))
            .then_some(ProtocolVersion::DTLS1_2)
    }

    fn is_closing(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        matches!(&state.phase, Phase::Closed(s) if !s.get_ref().outgoing.is_empty())
    }

    fn is_closed(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &state.phase {
            Phase::Closed(s) => s.get_ref().outgoing.is_empty(),
            Phase::Failed => true,
            _ => false,
        }
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        let state = self.state();
        let phase = std::mem::replace(&mut state.phase, Phase::Failed);
        state.phase = match phase {
            Phase::Connected(mut stream) | Phase::Handshaking(mut stream) => {
                // Queues our close_notify; the peer's answer is not awaited.
                let _ = stream.shutdown();
                Phase::Closed(stream)
            }
            other => other,
        };
        state.next_tick = None;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests pick their own start instant
mod tests;
