//! Server-sent events for viewers (the WHEP "core extensions" SSE extension): `active`,
//! `inactive`, `viewercount`, `layers` (a simulcast broadcast's layers, to choose from), plus
//! our `reconnecting`, `evicted` and `revoked`.
//!
//! Engine events arrive on one channel; the [`Hub`] turns them into per-session event streams,
//! or into a shared stream (a "channel") that carries the events of several sessions, each
//! tagged with its session ID: a browser's viewer tabs share one (www/events-worker.js), so
//! they hold one connection for their events, not one each.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::sync::mpsc;

use crate::engine::{
    BroadcastKey, BroadcastState, CloseReason, EngineEvent, LayerState, SessionId,
};

/// Event names a player may ask for, in the order of the `Link` header.
pub const EVENTS: &[&str] = &[
    "active",
    "inactive",
    "viewercount",
    "reconnect",
    "reconnecting",
    "evicted",
    "revoked",
    "layers",
];

/// One event on the wire.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub name: &'static str,
    pub data: String,
}

/// Per-session event streams, fed from engine events.
#[derive(Default)]
pub struct Hub {
    state: Mutex<HubState>,
}

#[derive(Default)]
struct HubState {
    sessions: HashMap<SessionId, Watcher>,
    broadcasts: HashMap<BroadcastKey, (BroadcastState, usize)>,
    /// The last `layers` event of each simulcast broadcast, for viewers that watch later.
    layers: HashMap<BroadcastKey, String>,
    /// Recent sessions the engine closed while no watcher was registered for them, oldest
    /// first. WHEP registers before the engine has a session, but engine events come on a
    /// task of their own: this keeps a registration that comes late anyway from creating a
    /// watcher that no `SessionClosed` would ever remove.
    closed: ClosedSessions,
    /// Shared event streams by their random name; closed ones are dropped when the map fills.
    channels: HashMap<String, mpsc::UnboundedSender<SseEvent>>,
}

/// A bounded set of closed session IDs that forgets the oldest first.
#[derive(Default)]
struct ClosedSessions {
    order: VecDeque<SessionId>,
    set: HashSet<SessionId>,
}

impl ClosedSessions {
    fn insert(&mut self, session: SessionId) {
        if !self.set.insert(session.clone()) {
            return;
        }
        self.order.push_back(session);
        if self.order.len() > MAX_CLOSED_REMEMBERED
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
    }
}

struct Watcher {
    broadcast: BroadcastKey,
    tx: Option<Target>,
}

/// Where a session's events go: its own stream, or a shared one with the session's ID on each.
struct Target {
    tx: mpsc::UnboundedSender<SseEvent>,
    tag: Option<SessionId>,
}

impl Target {
    fn send(&self, mut e: SseEvent) {
        if let Some(session) = &self.tag {
            // The whole ID (its Display shows a prefix only, for logs).
            let id = session.as_str();
            e.data = format!("{{\"session\":\"{id}\",\"data\":{}}}", e.data);
        }
        let _ = self.tx.send(e);
    }
}

impl Hub {
    /// A viewer session was created (WHEP 201).
    pub fn register(&self, session: SessionId, broadcast: BroadcastKey) {
        let mut s = self.state.lock().expect("hub lock");
        if s.closed.set.contains(&session) {
            return; // closed already: nothing will come for it
        }
        if s.sessions.len() < MAX_WATCHERS {
            s.sessions.insert(
                session,
                Watcher {
                    broadcast,
                    tx: None,
                },
            );
        }
    }

    /// A session that was registered but never started.
    pub fn forget(&self, session: &SessionId) {
        self.state
            .lock()
            .expect("hub lock")
            .sessions
            .remove(session);
    }

    pub fn knows(&self, session: &SessionId) -> bool {
        self.state
            .lock()
            .expect("hub lock")
            .sessions
            .contains_key(session)
    }

    /// Opens the event stream of a session, starting with the current state. `None` for a
    /// session that does not exist (any more).
    pub fn open(&self, session: &SessionId) -> Option<SseBody> {
        let mut s = self.state.lock().expect("hub lock");
        let (tx, rx) = mpsc::unbounded_channel();
        s.watch(session, Target { tx, tag: None })?;
        Some(SseBody::new(rx))
    }

    /// Opens a shared event stream: its first event, `channel`, names it for
    /// [`attach`](Self::attach). `None` when too many are open.
    pub fn open_channel(&self) -> Option<SseBody> {
        let mut s = self.state.lock().expect("hub lock");
        if s.channels.len() >= MAX_CHANNELS {
            s.channels.retain(|_, tx| !tx.is_closed());
            if s.channels.len() >= MAX_CHANNELS {
                return None;
            }
        }
        let channel = crate::secret::random_token();
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(SseEvent {
            name: "channel",
            data: format!("{{\"channel\":\"{channel}\"}}"),
        });
        s.channels.insert(channel, tx);
        Some(SseBody::new(rx))
    }

    /// Sends a session's events to a shared stream from now on, starting with its current
    /// state. False if the stream is closed or unknown, or the session is.
    pub fn attach(&self, channel: &str, session: &SessionId) -> bool {
        let mut s = self.state.lock().expect("hub lock");
        let Some(tx) = s
            .channels
            .get(channel)
            .filter(|tx| !tx.is_closed())
            .cloned()
        else {
            return false;
        };
        let tag = Some(session.clone());
        s.watch(session, Target { tx, tag }).is_some()
    }

    /// Applies one engine event. `max_viewers` goes into `evicted` so the page can say why.
    pub fn apply(&self, event: &EngineEvent, max_viewers: usize) {
        let mut s = self.state.lock().expect("hub lock");
        match event {
            EngineEvent::BroadcastLive(b) => {
                s.broadcasts
                    .entry(*b)
                    .or_insert((BroadcastState::Live, 0))
                    .0 = BroadcastState::Live;
                s.send_to_broadcast(*b, || SseEvent {
                    name: "active",
                    data: "{}".into(),
                });
            }
            EngineEvent::BroadcastReconnecting(b) => {
                s.broadcasts
                    .entry(*b)
                    .or_insert((BroadcastState::Reconnecting, 0))
                    .0 = BroadcastState::Reconnecting;
                s.send_to_broadcast(*b, || SseEvent {
                    name: "reconnecting",
                    data: "{}".into(),
                });
            }
            EngineEvent::BroadcastEnded(b) => {
                s.broadcasts.remove(b);
                s.layers.remove(b);
                s.send_to_broadcast(*b, || SseEvent {
                    name: "inactive",
                    data: "{}".into(),
                });
            }
            EngineEvent::ViewerCountChanged { broadcast, viewers } => {
                s.broadcasts
                    .entry(*broadcast)
                    .or_insert((BroadcastState::Live, 0))
                    .1 = *viewers;
                s.send_to_broadcast(*broadcast, || viewercount(*viewers));
            }
            EngineEvent::LayersChanged { broadcast, layers } => {
                let data = layers_json(layers);
                s.layers.insert(*broadcast, data.clone());
                s.send_to_broadcast(*broadcast, || SseEvent {
                    name: "layers",
                    data: data.clone(),
                });
            }
            EngineEvent::ProbeConnected(_) | EngineEvent::ViewerConnected(_) => {}
            EngineEvent::SessionClosed { session, reason } => {
                let Some(w) = s.sessions.remove(session) else {
                    // Publishers and probes have no watcher; a viewer whose registration
                    // is late must not get one now.
                    s.closed.insert(session.clone());
                    return;
                };
                let last = match reason {
                    CloseReason::Evicted => Some(SseEvent {
                        name: "evicted",
                        data: format!("{{\"max_viewers\":{max_viewers}}}"),
                    }),
                    CloseReason::BroadcastEnded => Some(SseEvent {
                        name: "inactive",
                        data: "{}".into(),
                    }),
                    CloseReason::Revoked => Some(SseEvent {
                        name: "revoked",
                        data: "{}".into(),
                    }),
                    // The WHEP draft's way to have the player make a new session: it gets
                    // an answer for the new codec (or a 422 saying it cannot decode it).
                    CloseReason::CodecChanged => Some(SseEvent {
                        name: "reconnect",
                        data: "{\"reason\":\"codec-changed\"}".into(),
                    }),
                    _ => None,
                };
                if let (Some(tx), Some(e)) = (w.tx, last) {
                    tx.send(e);
                }
            }
        }
    }
}

impl HubState {
    fn send_to_broadcast(&mut self, b: BroadcastKey, event: impl Fn() -> SseEvent) {
        for w in self.sessions.values().filter(|w| w.broadcast == b) {
            if let Some(tx) = &w.tx {
                tx.send(event());
            }
        }
    }

    /// Points a session's events at `target`, starting with the broadcast's current state.
    fn watch(&mut self, session: &SessionId, target: Target) -> Option<()> {
        let b = self.sessions.get(session)?.broadcast;
        let (state, viewers) = self
            .broadcasts
            .get(&b)
            .copied()
            .unwrap_or((BroadcastState::Live, 0));
        let first = match state {
            BroadcastState::Live => "active",
            BroadcastState::Reconnecting => "reconnecting",
            BroadcastState::Idle => "inactive",
        };
        target.send(SseEvent {
            name: first,
            data: "{}".into(),
        });
        target.send(viewercount(viewers));
        if let Some(data) = self.layers.get(&b) {
            target.send(SseEvent {
                name: "layers",
                data: data.clone(),
            });
        }
        self.sessions.get_mut(session)?.tx = Some(target);
        Some(())
    }
}

/// The WHEP draft's `layers` event data: the layers of the first video m-line ("0"), the
/// full-size one first; a layer with bitrate 0 does not arrive now.
fn layers_json(layers: &[LayerState]) -> String {
    let list: Vec<serde_json::Value> = (layers.iter())
        .map(|l| {
            let mut v = serde_json::json!({ "rid": l.rid, "bitrate": l.bitrate_bps });
            if let Some((w, h)) = l.size {
                v["width"] = w.into();
                v["height"] = h.into();
            }
            v
        })
        .collect();
    serde_json::json!({ "0": list }).to_string()
}

fn viewercount(n: usize) -> SseEvent {
    SseEvent {
        name: "viewercount",
        data: format!("{{\"viewercount\":{n}}}"),
    }
}

/// A `text/event-stream` body: events as they come, a comment every [`KEEPALIVE`] so proxies
/// keep the connection, and the end of the stream when the session ends.
pub struct SseBody {
    rx: mpsc::UnboundedReceiver<SseEvent>,
    keepalive: tokio::time::Interval,
}

impl SseBody {
    fn new(rx: mpsc::UnboundedReceiver<SseEvent>) -> Self {
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.reset();
        Self { rx, keepalive }
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(e)) => {
                let text = format!("event: {}\ndata: {}\n\n", e.name, e.data);
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(text)))));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if self.keepalive.poll_tick(cx).is_ready() {
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                b": keepalive\n\n",
            )))));
        }
        Poll::Pending
    }
}

/// Proxies commonly drop idle connections after 30–60 s.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Bounds the map by the number of sessions the engine can hold anyway, with room.
const MAX_WATCHERS: usize = 100_000;
/// Shared event streams at once: one per browser (or per tab without SharedWorker) watching.
const MAX_CHANNELS: usize = 16_384;
/// Closed sessions remembered without a watcher: a registration comes at most one HTTP
/// handler step after its session's close, so a few thousand sessions closing meanwhile is
/// far more than can happen.
const MAX_CLOSED_REMEMBERED: usize = 4_096;

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(session: &SessionId) -> EngineEvent {
        EngineEvent::SessionClosed {
            session: session.clone(),
            reason: CloseReason::Deleted,
        }
    }

    #[test]
    fn a_closed_session_leaves_no_watcher() {
        let hub = Hub::default();
        let session = SessionId::random();
        hub.register(session.clone(), BroadcastKey(1));
        assert!(hub.knows(&session));
        hub.apply(&closed(&session), 3);
        assert!(!hub.knows(&session), "the watcher went with its session");
    }

    #[test]
    fn a_session_closed_before_it_was_registered_gets_no_watcher() {
        let hub = Hub::default();
        let session = SessionId::random();
        hub.apply(&closed(&session), 3);
        hub.register(session.clone(), BroadcastKey(1));
        assert!(
            !hub.knows(&session),
            "a watcher nothing would ever remove was created"
        );
    }

    #[test]
    fn closed_sessions_are_remembered_in_a_bounded_set() {
        let hub = Hub::default();
        let first = SessionId::random();
        hub.apply(&closed(&first), 3);
        for _ in 0..MAX_CLOSED_REMEMBERED {
            hub.apply(&closed(&SessionId::random()), 3);
        }
        let s = hub.state.lock().unwrap();
        assert_eq!(s.closed.order.len(), MAX_CLOSED_REMEMBERED);
        assert_eq!(s.closed.set.len(), MAX_CLOSED_REMEMBERED);
        assert!(!s.closed.set.contains(&first), "the oldest was forgotten");
    }
}
