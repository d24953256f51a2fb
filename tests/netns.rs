//! Across real (virtual) networks, in network namespaces the test makes: whipcast behind a 1:1
//! NAT advertising its public address, and a browser whose UDP is blocked playing over ICE-TCP.
//! Needs root, iproute2, nftables and Chromium (`.ci/run` installs them).

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::chromium::Browser;
use common::netns::{Netns, link};
use common::server::{create, temp_dir};
use common::udp_client::Client;
use serde_json::json;

/// A whipcast process, killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts whipcast (`command` is the program or `ip netns exec … program`) and waits until its
/// HTTP answers at `http`.
fn whipcast(mut command: Command, args: &[&str], http: &str) -> Process {
    let dir = temp_dir("netns");
    let child = command
        .args(args)
        .arg("--data-dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("whipcast starts");
    let process = Process(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(http).is_err() {
        assert!(
            Instant::now() < deadline,
            "whipcast never answered on {http}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    process
}

fn udp_candidates(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter(|l| l.starts_with("a=candidate:") && l.contains(" udp "))
        .map(|l| {
            l.split_whitespace()
                .skip(4)
                .take(2)
                .collect::<Vec<_>>()
                .join(":")
        })
        .collect()
}

/// client (root namespace, 10.231.2.2) ── nat (10.231.2.1 public │ 10.231.1.1 private) ──
/// srv (10.231.1.2). The router maps the public address 1:1 onto the server.
#[test]
fn behind_1_to_1_nat_the_public_ip_is_advertised_and_media_flows() {
    let nat = Netns::new();
    let srv = Netns::new();
    link(None, "10.231.2.2/24", Some(&nat), "10.231.2.1/24");
    link(Some(&nat), "10.231.1.1/24", Some(&srv), "10.231.1.2/24");
    srv.ip(&["route", "add", "default", "via", "10.231.1.1"]);
    nat.forward();
    nat.nft(
        "table ip nat {
            chain pre { type nat hook prerouting priority dstnat; ip daddr 10.231.2.1 dnat to 10.231.1.2; }
            chain post { type nat hook postrouting priority srcnat; ip saddr 10.231.1.2 snat to 10.231.2.1; }
        }",
    );
    let bin = env!("CARGO_BIN_EXE_whipcast");
    let listen = [
        "--http-listen",
        "0.0.0.0:8080",
        "--udp-listen",
        "0.0.0.0:8189",
    ];
    let mut with_public_ip = listen.to_vec();
    with_public_ip.extend(["--public-ip", "10.231.2.1"]);
    let _server = whipcast(srv.command(bin), &with_public_ip, "10.231.2.1:8080");
    let base = "http://10.231.2.1:8080";

    let (id, view) = create(base);
    let publisher = Client::publish(base, &id).expect("WHIP through the NAT");
    assert_eq!(udp_candidates(&publisher.answer), ["10.231.2.1:8189"]);
    let viewer = Client::view(base, &view).expect("WHEP through the NAT");
    assert_eq!(udp_candidates(&viewer.answer), ["10.231.2.1:8189"]);
    viewer.wait_for("30 frames through the NAT", |s| s.frames.len() >= 30);
    assert!(viewer.frames()[0].keyframe);
    assert_eq!(viewer.stop(), 200);
    assert_eq!(publisher.stop(), 200);

    // Without --public-ip the server can only advertise what it sees: the private address,
    // which a client outside would try in vain.
    let _plain = whipcast(
        srv.command(bin),
        &[
            "--http-listen",
            "0.0.0.0:8081",
            "--udp-listen",
            "0.0.0.0:8190",
        ],
        "10.231.2.1:8081",
    );
    let base = "http://10.231.2.1:8081";
    let (id, _) = create(base);
    let publisher = Client::publish(base, &id).expect("WHIP accepted");
    assert_eq!(udp_candidates(&publisher.answer), ["10.231.1.2:8190"]);
}

/// viewer namespace (10.232.0.2, every UDP datagram it sends dropped by nftables) ── root
/// (10.232.0.1, whipcast). Chromium in the viewer namespace plays over ICE-TCP.
#[test]
fn a_browser_whose_udp_is_blocked_plays_over_ice_tcp() {
    let viewer_ns = Netns::new();
    link(None, "10.232.0.1/24", Some(&viewer_ns), "10.232.0.2/24");
    viewer_ns.nft(
        "table inet blockudp {
            chain out { type filter hook output priority 0; meta l4proto udp drop; }
        }",
    );
    let _server = whipcast(
        Command::new(env!("CARGO_BIN_EXE_whipcast")),
        &[
            "--http-listen",
            "10.232.0.1:8080",
            "--udp-listen",
            "10.232.0.1:8189",
            "--ice-tcp-listen",
            "10.232.0.1:8443",
        ],
        "10.232.0.1:8080",
    );
    let base = "http://10.232.0.1:8080";
    let (id, view) = create(base);
    let _obs = Client::publish(base, &id).expect("WHIP accepted");

    let browser = Browser::start_in(Some((&viewer_ns.name, [10, 232, 0, 2].into())));
    browser.goto(&format!("{base}/stream?id={view}"));
    browser.wait("the viewer page says live", |b| {
        (b.player_state() == "live").then_some(())
    });
    browser.wait_decoding("frames decoded over TCP");
    let protocol = browser.js_async(
        "const done = arguments[arguments.length - 1];
         window.whipcast.pc.getStats().then((stats) => {
           let pair = null;
           stats.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
           const local = pair && stats.get(pair.localCandidateId);
           const remote = pair && stats.get(pair.remoteCandidateId);
           done(local ? [local.protocol, remote.port] : null);
         });",
        json!([]),
    );
    assert_eq!(protocol, json!(["tcp", 8443]), "the media path is ICE-TCP");
    browser.screenshot("viewer-over-ice-tcp");
}
