//! The Janus peer (`--peer janus`, BENCHMARKS.md §6): a client of Janus 1.1's HTTP API for
//! the side-by-side run. The broadcast is a streaming-plugin RTP mountpoint on 127.0.0.1
//! (H.264 PT 96 + Opus PT 111, [`create_mountpoint`]) that [`crate::rtp`] feeds with the
//! same frames the WHIP publisher sends whipcast; a viewer is a Janus session with one
//! streaming handle: `watch` → Janus's offer (its candidates inside: half-trickle) → str0m
//! answers → `start` ([`watch`]).
//!
//! Sessions time out after 60 s without a request: [`keep_alive`] sends every open one a
//! `keepalive` every 20 s. A session's `Location` is its path (`/janus/<id>`); closing it is
//! a `destroy` request ([`crate::peer::Sessions`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use str0m::RtcConfig;

use crate::http::{self, Base};
use crate::peer::{self, Negotiated, Sessions};

/// Well under Janus's default 60 s session timeout, and rare enough to cost nothing.
const KEEPALIVE: Duration = Duration::from_secs(20);
/// Long polls for a viewer's offer before giving up (each returns within Janus's 30 s, or at
/// an event; the offer is normally the first event).
const POLLS: usize = 8;

/// A mountpoint the load generator created, and where its RTP goes.
#[derive(Debug, PartialEq)]
pub struct Mountpoint {
    pub id: u64,
    pub video: SocketAddr,
    pub audio: SocketAddr,
}

/// What Janus said, when it was not what we asked for.
fn janus_error(v: &Value) -> Option<String> {
    if v["janus"] == "error" {
        let e = &v["error"];
        return Some(format!("Janus error {}: {}", e["code"], e["reason"]));
    }
    let data = &v["plugindata"]["data"];
    if !data["error"].is_null() || !data["error_code"].is_null() {
        return Some(format!(
            "streaming plugin error {}: {}",
            data["error_code"], data["error"]
        ));
    }
    None
}

/// Parses one reply and checks it is neither a Janus nor a plugin error.
pub fn parse_reply(body: &str) -> Result<Value, String> {
    let v: Value =
        serde_json::from_str(body).map_err(|e| format!("Janus reply is not JSON ({e}): {body}"))?;
    match janus_error(&v) {
        Some(e) => Err(e),
        None => Ok(v),
    }
}

/// `data.id` of a `create` or `attach` success.
fn new_id(v: &Value) -> Result<u64, String> {
    v["data"]["id"]
        .as_u64()
        .ok_or_else(|| format!("no data.id in {v}"))
}

/// The mountpoint of a streaming `create` reply: its id and the ports Janus bound.
pub fn parse_mountpoint(v: &Value) -> Result<Mountpoint, String> {
    let stream = &v["plugindata"]["data"]["stream"];
    let id = stream["id"].as_u64().ok_or("no stream.id in the reply")?;
    let host: std::net::IpAddr = stream["host"]
        .as_str()
        .unwrap_or("127.0.0.1")
        .parse()
        .map_err(|e| format!("stream.host: {e}"))?;
    if !host.is_loopback() {
        return Err(format!("the mountpoint listens on {host}, not on loopback"));
    }
    let port = |kind: &str| {
        let ports = stream["ports"].as_array()?;
        let p = ports.iter().find(|p| p["type"] == kind)?;
        u16::try_from(p["port"].as_u64()?).ok()
    };
    let (Some(video), Some(audio)) = (port("video"), port("audio")) else {
        return Err(format!("no video and audio ports in {stream}"));
    };
    Ok(Mountpoint {
        id,
        video: SocketAddr::new(host, video),
        audio: SocketAddr::new(host, audio),
    })
}

/// The SDP of a JSEP offer in an event, if it carries one.
pub fn offer_of(event: &Value) -> Option<&str> {
    (event["jsep"]["type"] == "offer")
        .then(|| event["jsep"]["sdp"].as_str())
        .flatten()
}

/// A fresh transaction id (Janus echoes it; replies here come on the same connection).
fn transaction() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("lg{}", NEXT.fetch_add(1, Relaxed))
}

/// POSTs one Janus request (`body` gets its transaction) and parses the reply.
pub async fn call(base: &Base, path: &str, mut body: Value) -> Result<Value, String> {
    body["transaction"] = transaction().into();
    let res = http::request(
        base,
        "POST",
        path,
        Some("application/json"),
        &body.to_string(),
    )
    .await?;
    if res.status != 200 {
        return Err(format!("POST {path}: HTTP {} {}", res.status, res.body));
    }
    parse_reply(&res.body)
}

/// Creates a session with a streaming handle; returns the session's and the handle's paths.
/// The session is registered for its `destroy`.
async fn session_with_handle(base: &Base, sessions: &Sessions) -> Result<(String, String), String> {
    let root = base.path("");
    let session = format!(
        "{root}/{}",
        new_id(&call(base, &root, json!({"janus": "create"})).await?)?
    );
    sessions.add(&session);
    let attach = json!({"janus": "attach", "plugin": "janus.plugin.streaming"});
    let handle = format!(
        "{session}/{}",
        new_id(&call(base, &session, attach).await?)?
    );
    Ok((session, handle))
}

/// Creates the broadcast: an RTP mountpoint bound to 127.0.0.1 on ports Janus picks.
/// Returns it and the handle path that manages it.
pub async fn create_mountpoint(
    base: &Base,
    sessions: &Sessions,
) -> Result<(Mountpoint, String), String> {
    let (_, handle) = session_with_handle(base, sessions).await?;
    let media = json!([
        {"type": "video", "mid": "v", "port": 0, "pt": 96, "codec": "h264",
         "fmtp": "profile-level-id=42e01f;packetization-mode=1", "iface": "127.0.0.1"},
        {"type": "audio", "mid": "a", "port": 0, "pt": 111, "codec": "opus",
         "iface": "127.0.0.1"},
    ]);
    let body = json!({"janus": "message",
        "body": {"request": "create", "type": "rtp", "description": "whipcast-loadgen",
                 "media": media}});
    let reply = call(base, &handle, body).await?;
    Ok((parse_mountpoint(&reply)?, handle))
}

/// Removes the mountpoint (its viewers' sessions are closed separately).
pub async fn destroy_mountpoint(base: &Base, handle: &str, id: u64) -> Result<(), String> {
    let body = json!({"janus": "message", "body": {"request": "destroy", "id": id}});
    call(base, handle, body).await.map(|_| ())
}

/// One viewer: session, handle, `watch`, Janus's offer (long poll), str0m's answer, `start`.
/// The time to first frame starts before the session's `create`, as whipcast's starts
/// before its socket and offer (`peer::negotiate`): when the viewer's join starts.
pub async fn watch(
    base: &Base,
    mountpoint: u64,
    cfg: RtcConfig,
    sessions: &Sessions,
) -> Result<Negotiated, String> {
    let started = Instant::now();
    let (session, handle) = session_with_handle(base, sessions).await?;
    let body = json!({"janus": "message", "body": {"request": "watch", "id": mountpoint}});
    let mut reply = call(base, &handle, body).await?;
    let mut polls = 0;
    let offer = loop {
        if let Some(sdp) = offer_of(&reply) {
            break sdp.to_owned();
        }
        if polls == POLLS {
            return Err(format!("{handle}: no offer after {POLLS} polls"));
        }
        polls += 1;
        let res = http::request(base, "GET", &format!("{session}?maxev=1"), None, "").await?;
        reply = parse_reply(&res.body)?;
    };
    let answered = Instant::now();
    let (mut n, answer) = peer::answer(&offer, cfg, base.local).await?;
    let body = json!({"janus": "message", "body": {"request": "start"},
        "jsep": {"type": "answer", "sdp": answer}});
    call(base, &handle, body).await?;
    // Our one candidate is in the answer; tell Janus there are no more.
    let done = json!({"janus": "trickle", "candidate": {"completed": true}});
    call(base, &handle, done).await?;
    (n.location, n.started, n.answered) = (session, started, answered);
    Ok(n)
}

/// Keeps every open session alive until the runtime ends.
pub fn keep_alive(base: &Base, sessions: &Sessions) {
    let (base, sessions) = (base.clone(), sessions.clone());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(KEEPALIVE).await;
            for s in sessions.open() {
                if let Err(e) = call(&base, &s, json!({"janus": "keepalive"})).await {
                    peer::log_limited(format_args!("keepalive {s}: {e}"));
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_parsed_and_errors_named() {
        let created = r#"{"janus":"success","transaction":"a","data":{"id":2124213455785150}}"#;
        assert_eq!(new_id(&parse_reply(created).unwrap()), Ok(2124213455785150));

        let mp = r#"{"janus":"success","plugindata":{"plugin":"janus.plugin.streaming","data":{
            "streaming":"created","stream":{"id":5652666072893699,"type":"live",
            "host":"127.0.0.1","ports":[{"type":"video","mid":"v","port":40002},
            {"type":"audio","mid":"a","port":40003}]}}}}"#;
        assert_eq!(
            parse_mountpoint(&parse_reply(mp).unwrap()),
            Ok(Mountpoint {
                id: 5652666072893699,
                video: "127.0.0.1:40002".parse().unwrap(),
                audio: "127.0.0.1:40003".parse().unwrap(),
            })
        );
        let elsewhere = mp.replace("127.0.0.1", "192.0.2.7");
        assert!(parse_mountpoint(&parse_reply(&elsewhere).unwrap()).is_err());

        let err = r#"{"janus":"error","error":{"code":458,"reason":"No such session 5"}}"#;
        assert_eq!(
            parse_reply(err).unwrap_err(),
            "Janus error 458: \"No such session 5\""
        );
        let plugin = r#"{"janus":"success","plugindata":{"data":{"error_code":455,
            "error":"No such mountpoint/stream 9"}}}"#;
        assert!(parse_reply(plugin).unwrap_err().contains("455"));
        assert!(parse_reply("<html>").is_err());

        let event = r#"{"janus":"event","sender":1,"plugindata":{"data":{"streaming":"event"}},
            "jsep":{"type":"offer","sdp":"v=0\r\n"}}"#;
        assert_eq!(offer_of(&parse_reply(event).unwrap()), Some("v=0\r\n"));
        assert_eq!(offer_of(&parse_reply(created).unwrap()), None);
    }
}
