//! Real server, real loopback UDP: str0m clients shaped like OBS and like a browser, the H.264
//! fixture streamed through whipcast and compared on the way out.

#![allow(clippy::disallowed_methods)] // tests are drivers: they own the clock

mod common;

use std::io::Write;
use std::time::Instant;

use common::annexb::{AccessUnit, fixture, nal_units, same_nal_units};
use common::as_sent::viewer_got_as_sent;
use common::server::create;
use common::udp_client::Client;
use whipcast::Server;

struct Running {
    server: Server,
    base: String,
}

async fn start(extra: &[&str]) -> Running {
    let (server, base) = common::server::start_in(&common::server::temp_dir("loop"), extra).await;
    Running { server, base }
}

/// Runs blocking client code off the runtime the server lives on.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn obs_shaped_publisher_frames_reach_viewers_unchanged() {
    let r = start(&[]).await;
    let base = r.base.clone();
    blocking(move || {
        let (id, view) = create(&base);
        let publisher = Client::publish(&base, &id).expect("WHIP accepted");
        let v1 = Client::view(&base, &view).expect("WHEP accepted");
        let v2 = Client::view(&base, &view).expect("WHEP accepted");
        for v in [&v1, &v2] {
            v.wait_for("40 frames decoded", |s| s.frames.len() >= 40);
            v.wait_for("audio", |s| s.audio.len() > 10);
        }
        for v in [&v1, &v2] {
            // The first frame may be the cached keyframe; from the next keyframe on, none is
            // lost or reordered, and the tone arrives as sent.
            if let Err(e) = viewer_got_as_sent(&publisher.shared, v, 40, 10) {
                panic!("frames and audio reach the viewer unchanged, in order: {e}");
            }
        }
        assert_eq!(publisher.stop(), 200);
    })
    .await;
    r.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn viewer_is_refused_with_409_before_the_broadcast_is_live_and_404_for_a_bad_link() {
    let r = start(&[]).await;
    let base = r.base.clone();
    blocking(move || {
        let (_, view) = create(&base);
        assert_eq!(
            Client::view(&base, &view).err().map(|e| e.status),
            Some(409)
        );
        assert_eq!(
            Client::view(&base, "AAAAAAAAAAAAAAAAAAAAAA")
                .err()
                .map(|e| e.status),
            Some(404)
        );
    })
    .await;
    r.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn late_viewer_gets_the_cached_keyframe_first() {
    let r = start(&[]).await;
    let base = r.base.clone();
    blocking(move || {
        let (id, view) = create(&base);
        let publisher = Client::publish(&base, &id).unwrap();
        // Join in the middle of a GOP, just after its keyframe (frame 30 of a 30-frame GOP):
        // ~0.9 s before the next one, so the server cannot have a newer keyframe to give.
        publisher.wait_for("33 frames sent", |s| s.frames.len() >= 33);
        let joining = Instant::now();
        let v = Client::view(&base, &view).unwrap();
        v.wait_for("a frame", |s| !s.frames.is_empty());
        let first = &v.frames()[0];
        assert!(
            first.keyframe,
            "the first frame a late viewer gets is a keyframe"
        );
        // It is the cached keyframe: the last one the publisher sent before the viewer asked
        // to join (the fixture's keyframes all differ), not a newer one.
        let sent = publisher.frames();
        let cached = sent
            .iter()
            .rposition(|s| s.keyframe && s.at < joining)
            .expect("a keyframe was sent before the join");
        assert!(
            same_nal_units(&sent[cached].data, &first.data),
            "the first frame should be keyframe #{cached}, the last sent before the join \
             ({} frames sent since)",
            sent.len() - cached - 1
        );
        v.wait_for("playback continues", |s| s.frames.len() >= 10);
    })
    .await;
    r.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn publisher_delete_ends_the_broadcast_and_the_same_id_publishes_again() {
    let r = start(&[]).await;
    let base = r.base.clone();
    blocking(move || {
        let (id, view) = create(&base);
        let publisher = Client::publish(&base, &id).unwrap();
        let v = Client::view(&base, &view).unwrap();
        v.wait_for("frames", |s| s.frames.len() >= 5);
        assert_eq!(publisher.stop(), 200, "OBS needs 200 for DELETE");
        assert_eq!(
            Client::view(&base, &view).err().map(|e| e.status),
            Some(409),
            "not live any more"
        );
        let again = Client::publish(&base, &id).expect("the broadcast ID stays valid");
        let v2 = Client::view(&base, &view).unwrap();
        v2.wait_for("frames from the new publisher", |s| s.frames.len() >= 5);
        assert_eq!(again.stop(), 200);
    })
    .await;
    r.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn obs_reconnect_replaces_the_publisher_and_viewers_keep_their_session() {
    let r = start(&[]).await;
    let base = r.base.clone();
    blocking(move || {
        let (id, view) = create(&base);
        let first = Client::publish(&base, &id).unwrap();
        let v = Client::view(&base, &view).unwrap();
        v.wait_for("frames", |s| s.frames.len() >= 20);
        first.vanish(); // OBS crashed: no DELETE
        let before = v.frames().len();
        // The same pictures with bytes the first publisher never sent, to tell them apart.
        let second = Client::publish_script(&base, &id, marked_fixture())
            .expect("a new POST replaces the stale publisher at once");
        v.wait_for("frames from the new publisher in the same session", |s| {
            s.frames.len() >= before + 30
        });
        let got = v.frames();
        let resumed = &got[before..];
        assert!(resumed.iter().any(|f| f.keyframe));
        let sent = second.frames();
        let last = resumed.last().unwrap();
        assert!(
            sent.iter().any(|s| same_nal_units(&s.data, &last.data)),
            "the new publisher's frames, unchanged"
        );
        assert!(
            nal_units(&last.data).iter().any(|n| n[0] & 0x1f == 12),
            "carries the new publisher's mark"
        );
        assert_eq!(second.stop(), 200);
    })
    .await;
    r.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bounded_udp_flood_neither_stops_media_nor_grows_state() {
    let r = start(&[]).await;
    let base = r.base.clone();
    let udp = r.server.udp_addr;
    let (publisher, viewer) = blocking(move || {
        let (id, view) = create(&base);
        let publisher = Client::publish(&base, &id).unwrap();
        let viewer = Client::view(&base, &view).unwrap();
        viewer.wait_for("playing", |s| s.frames.len() >= 10);
        (publisher, viewer)
    })
    .await;
    // Both peers settled: the addresses they use are indexed, nothing else may be.
    let before = r.server.stats().await.unwrap();
    let (publisher, viewer) = blocking(move || {
        // 20 sources × 2,500 datagrams: garbage, RTP-looking, DTLS-looking and STUN naming
        // nobody. Bounded in count; loopback only.
        let sockets: Vec<std::net::UdpSocket> = (0..20)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let playing = viewer.frames().len();
        for i in 0..2_500u32 {
            for (k, s) in sockets.iter().enumerate() {
                let junk: Vec<u8> = match (i + k as u32) % 4 {
                    0 => vec![
                        0x80,
                        0x60,
                        (i >> 8) as u8,
                        i as u8,
                        0,
                        0,
                        0,
                        1,
                        0,
                        0,
                        0,
                        9,
                        1,
                        2,
                        3,
                    ],
                    1 => vec![0x16, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 1, 0, 3, 1, 2, 3],
                    2 => {
                        let mut m = vec![0, 1, 0, 12, 0x21, 0x12, 0xa4, 0x42];
                        m.extend_from_slice(&[5; 12]);
                        m.extend_from_slice(&[0, 6, 0, 8]);
                        m.extend_from_slice(b"nobody:x");
                        m
                    }
                    _ => (0..64).map(|b| (b * 7 + i) as u8).collect(),
                };
                let _ = s.send_to(&junk, udp);
            }
        }
        viewer.wait_for("media keeps flowing through the flood", |s| {
            s.frames.len() >= playing + 30
        });
        (publisher, viewer)
    })
    .await;
    let after = r.server.stats().await.unwrap();
    assert_eq!(after.peers, 2);
    assert_eq!(
        after.demux_addrs, before.demux_addrs,
        "no flood address was indexed: {after:?}"
    );
    // What the kernel did not drop for a full buffer reached the engine and was dropped there.
    let dropped = after.datagrams_dropped - before.datagrams_dropped;
    assert!(
        dropped > 1_000,
        "the flood reached the engine and was dropped: {after:?}"
    );
    eprintln!("flood: 50000 sent, {dropped} reached the engine and were dropped");
    blocking(move || {
        assert_eq!(viewer.stop(), 200, "a viewer leaves with DELETE");
        assert_eq!(publisher.stop(), 200);
    })
    .await;
    r.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_that_vanishes_is_freed_when_its_consent_expires() {
    let r = start(&[]).await;
    let base = r.base.clone();
    let publisher = blocking(move || {
        let (id, view) = create(&base);
        let publisher = Client::publish(&base, &id).unwrap();
        let viewer = Client::view(&base, &view).unwrap();
        viewer.wait_for("playing", |s| s.frames.len() >= 5);
        viewer.vanish(); // a closed laptop: no DELETE, no more STUN
        publisher
    })
    .await;
    let mut freed = false;
    // A viewer silent for 30 s (the consent lifetime, engine/peer.rs VIEWER_SILENCE) is gone.
    for _ in 0..400 {
        let s = r.server.stats().await.unwrap();
        if s.viewers == 0 {
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(freed, "the vanished viewer was never freed");
    let s = r.server.stats().await.unwrap();
    assert_eq!(
        (s.peers, s.publishers),
        (1, 1),
        "only the publisher is left: {s:?}"
    );
    blocking(move || assert_eq!(publisher.stop(), 200)).await;
    let s = r.server.stats().await.unwrap();
    assert_eq!(
        (
            s.peers,
            s.demux_addrs,
            s.demux_ufrags,
            s.deadlines,
            s.live_broadcasts
        ),
        (0, 0, 0, 0, 0),
        "{s:?}"
    );
    r.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_without_udp_plays_over_ice_tcp() {
    let r = start(&[]).await;
    let tcp = r.server.ice_tcp_addr.expect("ICE-TCP is on by default");
    let base = r.base.clone();
    blocking(move || {
        let (id, view) = create(&base);
        let publisher = Client::publish(&base, &id).expect("WHIP accepted");
        // Junk on the ICE-TCP port first: framed garbage, then a frame length no ICE packet
        // has. The server drops it and closes that connection; nothing else is affected.
        let mut junk = std::net::TcpStream::connect(tcp).unwrap();
        junk.write_all(&[0, 4, 1, 2, 3, 4, 0xff, 0xff, 9]).unwrap();
        let v = Client::view_over_tcp(&base, &view).expect("WHEP accepted over TCP");
        v.wait_for("30 frames decoded over TCP", |s| s.frames.len() >= 30);
        v.wait_for("audio over TCP", |s| s.audio_frames > 10);
        let sent = publisher.frames();
        let got = v.frames();
        assert!(got[0].keyframe, "the TCP viewer starts on a keyframe");
        assert!(
            got.iter()
                .all(|g| sent.iter().any(|s| same_nal_units(&s.data, &g.data))),
            "every frame that came over TCP is a sent frame, unchanged"
        );
        assert_eq!(v.stop(), 200);
        assert_eq!(publisher.stop(), 200);
    })
    .await;
    assert_eq!(tcp.ip().to_string(), "127.0.0.1", "it follows --udp-listen");
    r.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ice_tcp_is_offered_to_viewers_only_and_can_be_turned_off() {
    let on = start(&[]).await;
    let off = start(&["--ice-tcp-listen", "off"]).await;
    assert!(off.server.ice_tcp_addr.is_none());
    let (b_on, b_off) = (on.base.clone(), off.base.clone());
    let tcp = on.server.ice_tcp_addr.unwrap();
    blocking(move || {
        let (id, view) = create(&b_on);
        let publisher = Client::publish(&b_on, &id).expect("WHIP accepted");
        // The publisher's answer (OBS is UDP only) has no TCP candidate: the viewer's has.
        assert_eq!(common::udp_client::tcp_candidate(&publisher.answer), None);
        let v = Client::view(&b_on, &view).expect("WHEP accepted");
        assert_eq!(common::udp_client::tcp_candidate(&v.answer), Some(tcp));
        let (id, view) = create(&b_off);
        let _publisher = Client::publish(&b_off, &id).expect("WHIP accepted");
        let refused = Client::view_over_tcp(&b_off, &view)
            .err()
            .expect("no TCP candidate");
        assert!(
            refused.body.contains("no passive TCP candidate"),
            "{}",
            refused.body
        );
    })
    .await;
    on.server.shutdown().await;
    off.server.shutdown().await;
}

/// The fixture with a filler-data NAL unit (type 12) after each frame: the same pictures, in
/// bytes that a publisher of the plain fixture never sends.
fn marked_fixture() -> Vec<(AccessUnit, u64)> {
    fixture()
        .into_iter()
        .enumerate()
        .map(|(i, mut u)| {
            u.data
                .extend_from_slice(&[0, 0, 0, 1, 0x0c, 0xff, 0xff, 0x80]);
            (u, i as u64)
        })
        .collect()
}
