//! Reading each `Rtc`'s DTLS-SRTP keying material through str0m's public crypto-provider
//! interface.
//!
//! str0m builds its DTLS instance inside `RtcConfig::build` through the provider's
//! [`DtlsProvider::new_dtls`], and takes the exported keying material from that instance's
//! `poll_output`. Our provider is str0m's own aws-lc-rs provider with the DTLS factory
//! replaced by our OpenSSL one ([`super::dtls`]) and wrapped: the instance it returns passes
//! everything through and keeps a copy of the keying material in the [`KeySlot`] of the
//! `Rtc` being built. Providers are `&'static`, so
//! the slot reaches the factory through a thread-local set only for the duration of
//! [`build_rtc`].

use std::cell::RefCell;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Instant;

use str0m::crypto::CryptoProvider;
use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
    SrtpProfile,
};
use str0m::{Rtc, RtcConfig};

use super::dtls::OpensslDtls;

/// What the DTLS handshake exported for SRTP.
#[derive(Clone)]
pub struct Captured {
    pub profile: SrtpProfile,
    /// Client key, server key, client salt, server salt (RFC 5764 §4.2).
    pub material: Vec<u8>,
    /// We are the DTLS client.
    pub active: bool,
}

impl std::fmt::Debug for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key bytes.
        f.debug_struct("Captured")
            .field("profile", &self.profile)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// Where one `Rtc`'s keying material lands once its handshake exports it.
#[derive(Clone, Default, Debug)]
pub struct KeySlot(Arc<OnceLock<Captured>>);

impl KeySlot {
    pub fn get(&self) -> Option<&Captured> {
        self.0.get()
    }

    /// A slot that already holds `keys`: for tests that make their own.
    pub fn holding(keys: Captured) -> Self {
        Self(Arc::new(OnceLock::from(keys)))
    }
}

/// Builds the `Rtc` with the capturing provider and returns the slot its keys will land in.
pub fn build_rtc(config: RtcConfig, now: Instant) -> (Rtc, KeySlot) {
    let slot = KeySlot::default();
    BUILDING.with(|b| *b.borrow_mut() = Some(slot.clone()));
    let rtc = config.set_crypto_provider(PROVIDER.clone()).build(now);
    BUILDING.with(|b| *b.borrow_mut() = None);
    (rtc, slot)
}

thread_local! {
    /// The slot of the `Rtc` this thread is building, for [`Capturing::new_dtls`].
    static BUILDING: RefCell<Option<KeySlot>> = const { RefCell::new(None) };
}

static PROVIDER: LazyLock<Arc<CryptoProvider>> = LazyLock::new(|| {
    static CAPTURING: Capturing = Capturing;
    let mut p = str0m_aws_lc_rs::default_provider();
    p.dtls_provider = &CAPTURING;
    Arc::new(p)
});

/// Our OpenSSL DTLS factory, wrapped.
#[derive(Debug)]
struct Capturing;

impl Capturing {
    fn inner() -> &'static dyn DtlsProvider {
        static INNER: OpensslDtls = OpensslDtls;
        &INNER
    }
}

impl DtlsProvider for Capturing {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        Self::inner().generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, str0m::crypto::CryptoError> {
        let inner = Self::inner().new_dtls(cert, now, dtls_version, mtu)?;
        let slot = BUILDING.with(|b| b.borrow().clone());
        Ok(Box::new(CapturingInstance { inner, slot }))
    }
}

#[derive(Debug)]
struct CapturingInstance {
    inner: Box<dyn DtlsInstance>,
    /// `None` for an `Rtc` built outside [`build_rtc`].
    slot: Option<KeySlot>,
}

impl DtlsInstance for CapturingInstance {
    fn set_active(&mut self, active: bool) {
        self.inner.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.inner.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let out = self.inner.poll_output(buf);
        if let (DtlsOutput::KeyingMaterial(material, profile), Some(slot)) = (&out, &self.slot) {
            let _ = slot.0.set(Captured {
                profile: *profile,
                material: material.to_vec(),
                active: self.inner.is_active(),
            });
        }
        out
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.inner.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.inner.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.inner.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.inner.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.inner.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.inner.close()
    }
}
