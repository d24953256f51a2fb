//! The start-up connectivity self-test: a built-in str0m client completes ICE and DTLS with
//! the server over real UDP at each advertised address that is on this machine, so a broken
//! address is reported at start, not when OBS fails. Addresses that are not local (1:1 NAT,
//! `--public-ip`) cannot be checked from inside; the log says so and points at the
//! broadcaster page's test button.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, RtcConfig};
use tokio::net::UdpSocket;
use tracing::{info, warn};

use crate::clock::now;
use crate::engine::{Command, NewPeer, PROBE, SessionId};
use crate::handle::EngineHandle;
use crate::offer::SessionSetup;

/// Tests every advertised address; logs one line for each.
pub async fn run(setup: SessionSetup, engine: EngineHandle) {
    let local: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .collect();
    for addr in setup.candidates.clone() {
        if !addr.ip().is_loopback() && !local.contains(&addr.ip()) {
            warn!(%addr, "connectivity self-test: this address is not on this machine (NAT or --public-ip), so UDP reachability cannot be checked from here; use \"Test my connection\" on the broadcaster page");
            continue;
        }
        match probe(&setup, &engine, addr).await {
            Ok(took) => {
                info!(%addr, ms = took.as_millis() as u64, "connectivity self-test passed: ICE and DTLS over UDP")
            }
            Err(e) => {
                warn!(%addr, error = %e, "connectivity self-test FAILED: OBS and browsers will not reach media at this address (check --udp-listen, --public-ip and the firewall)")
            }
        }
    }
}

/// One ICE+DTLS handshake with the server at `addr`.
async fn probe(
    setup: &SessionSetup,
    engine: &EngineHandle,
    addr: SocketAddr,
) -> Result<Duration, String> {
    let start = now();
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let socket = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    let local = SocketAddr::new(
        addr.ip(),
        socket.local_addr().map_err(|e| e.to_string())?.port(),
    );
    let mut rtc = RtcConfig::new()
        .clear_codecs()
        .enable_opus(true, false)
        .build(start);
    rtc.add_local_candidate(Candidate::host(local, "udp").map_err(|e| e.to_string())?);
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().ok_or("no offer")?;
    let accepted = setup
        .accept_probe(start, &offer.to_sdp_string())
        .map_err(|e| e.to_string())?;
    let answer = SdpAnswer::from_sdp_string(&accepted.answer).map_err(|e| e.to_string())?;
    let peer = NewPeer {
        broadcast: PROBE,
        session: SessionId::random(),
        ufrag: accepted.ufrag,
        rtc: accepted.rtc,
        keys: accepted.keys,
        transport_cc: accepted.transport_cc,
    };
    engine
        .call(Command::Probe(peer))
        .await
        .map_err(|e| e.to_string())?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 2048];
    let deadline = start + TIMEOUT;
    loop {
        let mut wake = deadline;
        loop {
            match rtc.poll_output().map_err(|e| e.to_string())? {
                Output::Timeout(t) => {
                    wake = wake.min(t);
                    break;
                }
                Output::Transmit(t) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Output::Event(Event::Connected) => {
                    return Ok(now().saturating_duration_since(start));
                }
                Output::Event(_) => {}
            }
        }
        if now() >= deadline {
            return Err(format!("no ICE/DTLS answer within {TIMEOUT:?}"));
        }
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let (len, src) = r.map_err(|e| e.to_string())?;
                if let Ok(recv) = Receive::new(Protocol::Udp, src, local, &buf[..len]) {
                    rtc.handle_input(Input::Receive(now(), recv)).map_err(|e| e.to_string())?;
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                rtc.handle_input(Input::Timeout(now())).map_err(|e| e.to_string())?;
            }
        }
    }
}

/// ICE and DTLS on a working path take milliseconds; a second or two is a generous bound.
const TIMEOUT: Duration = Duration::from_secs(3);
