//! The DTLS handshake against peers with RSA and ECDSA certificates, as client and server,
//! next to what str0m's own DTLS refuses.

use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::rsa::Rsa;
use openssl::x509::X509Name;

use super::*;

/// A self-signed RSA certificate, as GStreamer's webrtcbin makes.
fn rsa_cert() -> DtlsCert {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509Name::builder().unwrap();
    name.append_entry_by_text("CN", "webrtcbin").unwrap();
    let name = name.build();
    let mut x = X509::builder().unwrap();
    x.set_version(2).unwrap();
    x.set_subject_name(&name).unwrap();
    x.set_issuer_name(&name).unwrap();
    x.set_pubkey(&key).unwrap();
    x.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    x.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    x.sign(&key, MessageDigest::sha256()).unwrap();
    DtlsCert {
        certificate: x.build().to_der().unwrap(),
        private_key: key.private_key_to_pkcs8().unwrap(),
    }
}

/// A peer with `cert` (made client or server by `set_active`) whose signatures use
/// exactly `sigalgs` (OpenSSL syntax).
fn client_with_sigalgs(cert: &DtlsCert, sigalgs: &str, now: Instant) -> Box<dyn DtlsInstance> {
    let mut b = SslContext::builder(SslMethod::dtls()).unwrap();
    b.set_certificate(&X509::from_der(&cert.certificate).unwrap())
        .unwrap();
    b.set_private_key(&PKey::private_key_from_der(&cert.private_key).unwrap())
        .unwrap();
    b.set_tlsext_use_srtp(SRTP_PROFILES).unwrap();
    b.set_sigalgs_list(sigalgs).unwrap();
    b.set_options(SslOptions::NO_QUERY_MTU);
    b.set_verify_callback(SslVerifyMode::PEER, |_, _| true);
    let mut ssl = Ssl::new(&b.build()).unwrap();
    ssl.set_mtu(DEFAULT_MTU as u32).unwrap();
    Box::new(Instance {
        state: Mutex::new(State {
            phase: Phase::Idle(Some(ssl)),
            mtu: DEFAULT_MTU,
            events: VecDeque::new(),
            next_tick: None,
            now,
        }),
        active: None,
    })
}

#[derive(Default, Debug)]
struct Seen {
    connected: bool,
    peer_cert: Option<Vec<u8>>,
    keys: Option<(Vec<u8>, SrtpProfile)>,
}

/// Moves every datagram between the two until neither has anything to say.
fn handshake(
    client: &mut dyn DtlsInstance,
    server: &mut dyn DtlsInstance,
) -> Result<(Seen, Seen), DtlsImplError> {
    let (mut c, mut s) = (Seen::default(), Seen::default());
    for _ in 0..50 {
        let to_server = drain(client, &mut c);
        let to_client = drain(server, &mut s);
        if to_server.is_empty() && to_client.is_empty() {
            break;
        }
        for d in to_server {
            server.handle_packet(&d)?;
        }
        for d in to_client {
            client.handle_packet(&d)?;
        }
    }
    Ok((c, s))
}

fn drain(from: &mut dyn DtlsInstance, seen: &mut Seen) -> Vec<Vec<u8>> {
    let mut buf = vec![0; 4096];
    let mut datagrams = Vec::new();
    loop {
        match from.poll_output(&mut buf) {
            DtlsOutput::Packet(p) => datagrams.push(p.to_vec()),
            DtlsOutput::Connected => seen.connected = true,
            DtlsOutput::PeerCert(der) => seen.peer_cert = Some(der.to_vec()),
            DtlsOutput::KeyingMaterial(km, p) => seen.keys = Some((km.to_vec(), p)),
            DtlsOutput::Timeout(_) => return datagrams,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn ours() -> DtlsCert {
    OpensslDtls.generate_certificate().unwrap()
}

fn server(cert: &DtlsCert, now: Instant) -> Box<dyn DtlsInstance> {
    let mut s = OpensslDtls
        .new_dtls(cert, now, DtlsVersion::Dtls12, None)
        .unwrap();
    s.set_active(false);
    s
}

#[test]
fn peers_with_rsa_certificates_connect_with_pkcs1_and_pss_signatures() {
    let now = Instant::now();
    let (rsa, ecdsa) = (rsa_cert(), ours());
    // Each list also lets the client accept our ECDSA signature.
    for sigalgs in ["RSA+SHA256:ECDSA+SHA256", "RSA-PSS+SHA256:ECDSA+SHA256"] {
        let mut client = client_with_sigalgs(&rsa, sigalgs, now);
        client.set_active(true);
        let mut server = server(&ecdsa, now);
        let (c, s) = handshake(&mut *client, &mut *server).expect(sigalgs);
        assert!(c.connected && s.connected, "{sigalgs}: {c:?} {s:?}");
        assert_eq!(
            s.peer_cert.as_deref(),
            Some(&rsa.certificate[..]),
            "{sigalgs}"
        );
        assert_eq!(
            c.peer_cert.as_deref(),
            Some(&ecdsa.certificate[..]),
            "{sigalgs}"
        );
        let (ck, sk) = (c.keys.unwrap(), s.keys.unwrap());
        assert_eq!(ck, sk, "{sigalgs}: both ends export the same SRTP keys");
        assert_eq!(ck.1, SrtpProfile::AEAD_AES_128_GCM, "{sigalgs}");
        assert_eq!(ck.0.len(), 56, "AEAD_AES_128_GCM: 2 × (16 + 12)");
    }
}

#[test]
fn str0m_default_dtls_refuses_the_rsa_peer_ours_accepts() {
    // The failure this module exists for: dimpl as the server, GStreamer-like client.
    let now = Instant::now();
    let rsa = rsa_cert();
    let dimpl = str0m_aws_lc_rs::default_provider().dtls_provider;
    let mut refusing = dimpl
        .new_dtls(
            &dimpl.generate_certificate().unwrap(),
            now,
            DtlsVersion::Dtls12,
            None,
        )
        .unwrap();
    refusing.set_active(false);
    let mut client = client_with_sigalgs(&rsa, "RSA+SHA256:ECDSA+SHA256", now);
    client.set_active(true);
    // dimpl 0.9 even panics on it (an unwrap in its server's CertificateVerify path).
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handshake(&mut *client, &mut *refusing)
    }));
    let refused = match outcome {
        Err(_) | Ok(Err(_)) => true,
        Ok(Ok((c, s))) => !(c.connected && s.connected),
    };
    assert!(
        refused,
        "dimpl 0.9 took an RSA peer: is this module still needed?"
    );
}

#[test]
fn ecdsa_peers_as_client_or_server_connect() {
    let now = Instant::now();
    let (a, b) = (ours(), ours());
    let mut client = OpensslDtls
        .new_dtls(&a, now, DtlsVersion::Dtls12, None)
        .unwrap();
    client.set_active(true);
    let mut server = server(&b, now);
    let (c, s) = handshake(&mut *client, &mut *server).unwrap();
    assert!(c.connected && s.connected);
    assert_eq!(c.keys, s.keys);
}

#[test]
fn as_client_we_connect_to_a_server_whose_certificate_is_rsa() {
    // The edge's WHEP client, or any session where we end up active, against an RSA
    // server (signing its key exchange with PKCS#1 v1.5 or PSS).
    let now = Instant::now();
    let rsa = rsa_cert();
    for sigalgs in ["RSA+SHA256:ECDSA+SHA256", "RSA-PSS+SHA256:ECDSA+SHA256"] {
        let mut server = client_with_sigalgs(&rsa, sigalgs, now);
        server.set_active(false);
        let mut client = OpensslDtls
            .new_dtls(&ours(), now, DtlsVersion::Dtls12, None)
            .unwrap();
        client.set_active(true);
        let (c, s) = handshake(&mut *client, &mut *server).expect(sigalgs);
        assert!(c.connected && s.connected, "{sigalgs}: {c:?} {s:?}");
        assert_eq!(
            c.peer_cert.as_deref(),
            Some(&rsa.certificate[..]),
            "{sigalgs}"
        );
        assert_eq!(c.keys, s.keys, "{sigalgs}");
    }
}
