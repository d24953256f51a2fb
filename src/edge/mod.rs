//! Edge mode (`--origin URL --edge-secret S`): broadcasts pulled from an origin and served
//! here as if they were local.
//!
//! A WHEP POST for a view ID this server does not know asks [`Edge::resolve`] for a local
//! broadcast key. The first viewer of a view ID makes one pull (pull.rs: our own WHEP client
//! towards the origin); every later viewer joins the same local broadcast, so the origin sees
//! one session per broadcast per edge. The engine drives the pull as that broadcast's
//! publisher (engine/upstream.rs), so keyframe cache, retransmissions, PLI throttling, the
//! viewer cap and the SSE events work as for a local publisher.
//!
//! Life of a pull, driven by the engine's events ([`Edge::on_event`]):
//! - the last viewer leaves → after [`LINGER`] without a new one, the pull ends;
//! - the origin closes it (broadcast ended, view ID rotated) → the engine ends the local
//!   broadcast at once, and the next viewer POST pulls again (409/404 from the origin are
//!   passed on);
//! - the pull goes silent (the origin's publisher dropped; the origin says "reconnecting")
//!   → the engine shows "reconnecting" to the edge's viewers and the edge pulls again every
//!   [`RETRY`] while they wait; the new pull is spliced into their sessions like an OBS
//!   resume.

mod beat;
mod client;
mod pull;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use self::client::ClientError;
use self::pull::PullError;
use crate::cluster::EdgeBook;
use crate::engine::{BroadcastKey, CloseReason, Command, EngineEvent, Outcome, SessionId};
use crate::handle::EngineHandle;
use crate::offer::SessionSetup;
use crate::tls::TlsError;

/// This server's role as an edge: its origin and the broadcasts it pulls from there.
pub struct Edge {
    origin: String,
    /// HTTP or HTTPS to the origin.
    client: client::OriginClient,
    secret: String,
    setup: SessionSetup,
    engine: EngineHandle,
    resume_grace: Duration,
    pulls: Mutex<Pulls>,
    /// Brings the next heartbeat forward: a viewer connected or left (beat.rs).
    wake: tokio::sync::Notify,
    /// Edges of this edge (a chain): their viewers count in our heartbeat, and evictions
    /// our origin names for them pass down (beat.rs).
    children: Arc<EdgeBook>,
}

#[derive(Default)]
struct Pulls {
    by_view: HashMap<String, Pull>,
    by_key: HashMap<BroadcastKey, String>,
    next: u64,
}

/// One view ID this edge has pulled (or tried to). Its broadcast key stays the same for the
/// life of the process, so a new pull is spliced into the viewers of the old one.
struct Pull {
    key: BroadcastKey,
    /// Our session in the engine while a pull is in place.
    session: Option<SessionId>,
    /// Its session URL at the origin (for the DELETE when this edge ends it).
    location: Option<String>,
    /// One attempt at a time: viewers arriving together wait for the first one's pull.
    attempt: Arc<tokio::sync::Mutex<()>>,
    /// The origin's last refusal and until when it is repeated without asking again (a
    /// player polls on 409; the origin hears from this edge at most once per [`RETRY`]).
    refused: Option<(Instant, Refusal)>,
    viewers: usize,
    /// Bumped whenever the viewer count changes: a linger timer that finds another value
    /// knows a viewer came (or left) since it started.
    epoch: u64,
}

/// Why an edge cannot serve a view ID (HTTP answers each with its own problem).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a view ID, or the origin knows no broadcast by it.
    UnknownView,
    /// The origin's broadcast has no publisher now.
    NotLive,
    /// The origin did not answer, or not usably.
    Unavailable,
    /// The origin is `https://` and its certificate is not trusted (see `--origin-ca`).
    Untrusted,
    /// This edge already pulls as many broadcasts as it may.
    NoFreeSlot,
}

impl Edge {
    /// An edge of `origin`; an `https://` origin's certificate must chain to the platform's
    /// roots or to one in the PEM file `origin_ca`.
    pub fn new(
        origin: String,
        origin_ca: Option<&Path>,
        secret: String,
        setup: SessionSetup,
        engine: EngineHandle,
        resume_grace: Duration,
        children: Arc<EdgeBook>,
    ) -> Result<Arc<Self>, TlsError> {
        let tls = match origin.starts_with("https://") {
            true => Some(crate::tls::connector(origin_ca)?),
            false => None,
        };
        Ok(Arc::new(Self {
            origin,
            client: client::OriginClient::new(tls),
            secret,
            setup,
            engine,
            resume_grace,
            pulls: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            children,
        }))
    }

    /// Whether the roots for an `https://` origin load (`--check-config`).
    pub fn check_tls(origin_ca: Option<&Path>) -> Result<(), TlsError> {
        crate::tls::connector(origin_ca).map(|_| ())
    }

    /// The local broadcast for `view_id`, pulled from the origin if it is not here yet.
    pub async fn resolve(self: &Arc<Self>, view_id: &str) -> Result<BroadcastKey, Refusal> {
        if !plausible_view_id(view_id) {
            return Err(Refusal::UnknownView);
        }
        let (key, attempt) = {
            let mut pulls = self.pulls.lock().expect("pulls lock");
            if pulls.by_view.len() >= MAX_PULLS && !pulls.by_view.contains_key(view_id) {
                pulls.forget_idle();
                if pulls.by_view.len() >= MAX_PULLS {
                    return Err(Refusal::NoFreeSlot);
                }
            }
            let pull = pulls.entry(view_id);
            (pull.key, pull.attempt.clone())
        };
        let _one_at_a_time = attempt.lock().await;
        {
            let pulls = self.pulls.lock().expect("pulls lock");
            let pull = &pulls.by_view[view_id];
            if pull.session.is_some() {
                return Ok(key);
            }
            if let Some((until, refusal)) = pull.refused
                && crate::clock::now() < until
            {
                return Err(refusal);
            }
        }
        self.start(view_id, key).await.map(|()| key)
    }

    /// Pulls `view_id` into `key` (the caller holds the view's attempt lock).
    async fn start(self: &Arc<Self>, view_id: &str, key: BroadcastKey) -> Result<(), Refusal> {
        let origin = (&self.client, self.origin.as_str());
        let result = pull::pull(&self.setup, origin, &self.secret, view_id, key).await;
        let refusal = match result {
            Ok(answered) => {
                let session = answered.peer.session.clone();
                let command = Command::Pull(answered.peer, answered.tracks, answered.origin);
                match self.engine.call(command).await {
                    Ok(Outcome::Published(Ok(()))) => {
                        info!(broadcast = %key, "pulled from the origin");
                        let epoch = {
                            let mut pulls = self.pulls.lock().expect("pulls lock");
                            let pull = pulls.entry(view_id);
                            pull.session = Some(session);
                            pull.location = answered.location;
                            pull.refused = None;
                            pull.epoch
                        };
                        // Ends the pull should no viewer ever join it.
                        self.linger(view_id.to_owned(), epoch);
                        return Ok(());
                    }
                    Ok(Outcome::Published(Err(e))) => {
                        warn!(error = %e, "the engine refused a pull");
                        Refusal::Unavailable
                    }
                    _ => Refusal::Unavailable,
                }
            }
            Err(PullError::UnknownView) => Refusal::UnknownView,
            Err(PullError::NotLive) => Refusal::NotLive,
            Err(PullError::Unreachable(ClientError::Untrusted(reason))) => {
                warn!(%reason, "the origin's TLS certificate is not trusted: see --origin-ca");
                Refusal::Untrusted
            }
            Err(e) => {
                warn!(error = %e, "pull from the origin failed");
                Refusal::Unavailable
            }
        };
        let mut pulls = self.pulls.lock().expect("pulls lock");
        pulls.entry(view_id).refused = Some((crate::clock::now() + RETRY, refusal));
        Err(refusal)
    }

    /// Follows the engine's events for the pulled broadcasts (called for every event).
    pub fn on_event(self: &Arc<Self>, event: &EngineEvent) {
        match event {
            // The origin counts our viewers against the cluster's cap: tell it now.
            EngineEvent::ViewerConnected(_) => self.wake.notify_one(),
            EngineEvent::ViewerCountChanged { broadcast, viewers } => {
                self.wake.notify_one();
                let mut pulls = self.pulls.lock().expect("pulls lock");
                let Some(view) = pulls.by_key.get(broadcast).cloned() else {
                    return;
                };
                let pull = pulls.entry(&view);
                pull.viewers = *viewers;
                pull.epoch += 1;
                let epoch = pull.epoch;
                drop(pulls);
                if *viewers == 0 {
                    self.linger(view, epoch);
                }
            }
            EngineEvent::SessionClosed { session, reason } => {
                let mut pulls = self.pulls.lock().expect("pulls lock");
                let Some(view) = pulls
                    .by_view
                    .iter()
                    .find(|(_, p)| p.session.as_ref() == Some(session))
                    .map(|(v, _)| v.clone())
                else {
                    return;
                };
                let pull = pulls.entry(&view);
                pull.session = None;
                let lost = matches!(reason, CloseReason::TimedOut | CloseReason::PeerFailed);
                let waiting = pull.viewers > 0;
                drop(pulls);
                debug!(?reason, "pull closed");
                if lost && waiting {
                    self.clone().pull_again(view);
                }
            }
            _ => {}
        }
    }

    /// After [`LINGER`], ends the pull of `view` if its viewer count has not changed since
    /// `epoch` and is still zero.
    fn linger(self: &Arc<Self>, view: String, epoch: u64) {
        let edge = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LINGER).await;
            let (session, location) = {
                let mut pulls = edge.pulls.lock().expect("pulls lock");
                let Some(pull) = pulls.by_view.get_mut(&view) else {
                    return;
                };
                if pull.epoch != epoch || pull.viewers > 0 {
                    return;
                }
                (pull.session.clone(), pull.location.take())
            };
            let Some(session) = session else {
                return;
            };
            info!("no viewer for a while: the pull ends");
            let close = Command::Close {
                session,
                publisher: true,
            };
            let _ = edge.engine.call(close).await;
            if let Some(location) = location.filter(|l| l.starts_with('/')) {
                // The origin also learns it from our DTLS close; the DELETE is the WHEP way.
                let url = format!("{}{location}", edge.origin);
                let _ = edge
                    .client
                    .request("DELETE", &url, &[], String::new())
                    .await;
            }
        });
    }

    /// The pull was lost while viewers wait: pulls again every [`RETRY`] until it works,
    /// they are gone, or the resume grace is over.
    fn pull_again(self: Arc<Self>, view: String) {
        tokio::spawn(async move {
            let give_up = crate::clock::now() + self.resume_grace;
            while crate::clock::now() < give_up {
                tokio::time::sleep(RETRY).await;
                let (key, attempt) = {
                    let pulls = self.pulls.lock().expect("pulls lock");
                    let Some(pull) = pulls.by_view.get(&view) else {
                        return;
                    };
                    if pull.viewers == 0 || pull.session.is_some() {
                        return;
                    }
                    (pull.key, pull.attempt.clone())
                };
                let _one_at_a_time = attempt.lock().await;
                if self.start(&view, key).await.is_ok() {
                    info!(broadcast = %key, "pulled again after a loss");
                    return;
                }
            }
        });
    }

    /// How many broadcasts this edge is pulling now (for `/api/status`).
    pub fn pulling(&self) -> usize {
        let pulls = self.pulls.lock().expect("pulls lock");
        pulls
            .by_view
            .values()
            .filter(|p| p.session.is_some())
            .count()
    }
}

impl Pulls {
    fn entry(&mut self, view: &str) -> &mut Pull {
        if !self.by_view.contains_key(view) {
            self.next += 1;
            let key = BroadcastKey(EDGE_KEYS + self.next);
            self.by_key.insert(key, view.to_owned());
            self.by_view.insert(
                view.to_owned(),
                Pull {
                    key,
                    session: None,
                    location: None,
                    attempt: Arc::default(),
                    refused: None,
                    viewers: 0,
                    epoch: 0,
                },
            );
        }
        self.by_view.get_mut(view).expect("inserted above")
    }

    /// Forgets view IDs with no pull, no viewer and no attempt under way.
    fn forget_idle(&mut self) {
        let by_key = &mut self.by_key;
        self.by_view.retain(|_, p| {
            let idle = p.session.is_none() && p.viewers == 0 && p.attempt.try_lock().is_ok();
            if idle {
                by_key.remove(&p.key);
            }
            !idle
        });
    }
}

/// View IDs are URL-safe tokens; anything else is not sent on to the origin.
fn plausible_view_id(id: &str) -> bool {
    (1..=MAX_VIEW_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Pulled broadcasts get keys from here up; the registry numbers its own from 1.
const EDGE_KEYS: u64 = 1 << 62;
/// How long a pull outlives its last viewer: a viewer reloading the page, or the next one
/// of a small audience, finds it still in place.
pub const LINGER: Duration = Duration::from_secs(10);
/// Between pull attempts for one view ID (a player polls on 409 with backoff; a lost pull is
/// retried this often while its viewers wait).
const RETRY: Duration = Duration::from_millis(500);
/// View IDs remembered at once (each costs a few hundred bytes).
const MAX_PULLS: usize = 4096;
/// Longer than any view ID the registry makes.
const MAX_VIEW_ID: usize = 64;
