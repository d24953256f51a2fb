//! The HTTP layer's handle to the media workers: each command goes to the worker that owns
//! what it names, and commands about the whole server are gathered from every worker.
//!
//! Placement: a broadcast's publisher lives on one worker (its *home*): a new live broadcast
//! goes to the worker with the fewest broadcasts holding a slot, and a publisher that resumes
//! or replaces goes where its broadcast already is. The live-broadcast limit is the
//! server's, so publishing is placed one at a time against every worker's count. A new
//! viewer goes to the worker with the fewest viewer sessions (its home on a tie); on another
//! worker than the home, the home is told first (`Command::Mirror`) and relays the broadcast
//! there (engine/span.rs), so one broadcast's audience uses every core.
//!
//! Receive routing follows from the same book-keeping: before a session's command leaves,
//! its ICE ufrag is given to the receive thread ([`RouteUpdate`]), so the first STUN check
//! from the peer (which can only come after the HTTP answer) already finds its worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

mod wiring;

pub(crate) use self::wiring::{ReceiveCounters, RelayDrops, RouteUpdate};
use crate::engine::{
    BroadcastKey, Command, CommandError, EngineEvent, LayerError, NewPeer, Outcome, PatchError,
    Patched, SessionId, Stats, ViewerTrack,
};

/// A command plus where its outcome goes.
pub struct Request {
    pub command: Command,
    pub reply: oneshot::Sender<Outcome>,
}

/// The engine task has stopped (shutdown in progress).
#[derive(Debug, thiserror::Error)]
#[error("the media engine is not running")]
pub struct EngineGone;

/// The HTTP layer's handle to the media workers. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<Inner>,
}

struct Inner {
    workers: Vec<mpsc::Sender<Request>>,
    /// Ufrags to the receive thread; `None` with one worker, which reads the socket itself.
    routes: Option<mpsc::UnboundedSender<RouteUpdate>>,
    /// What the receive thread dropped.
    received: Arc<ReceiveCounters>,
    /// What each worker lost of what other workers relayed it (empty with one worker).
    relay_drops: Vec<RelayDrops>,
    max_live_broadcasts: usize,
    /// Held while a publisher is placed, so two cannot both take the last free slot.
    placing: tokio::sync::Mutex<()>,
    books: Mutex<Books>,
    next_probe: AtomicUsize,
}

/// Who lives where. Bounded: sessions are forgotten when their `SessionClosed` event passes
/// by, broadcasts are few (one entry per broadcast ever published since start).
#[derive(Default)]
struct Books {
    broadcasts: HashMap<BroadcastKey, usize>,
    sessions: HashMap<SessionId, Booked>,
    /// Viewer sessions per worker, for placing the next viewer.
    viewers: Vec<usize>,
}

/// A session's worker and ICE ufrag, and whether it is a viewer.
struct Booked {
    worker: usize,
    ufrag: String,
    viewer: bool,
}

/// One worker's share of the load, for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerLoad {
    pub stats: Stats,
    pub queue_drops: u64,
    /// Packets relayed from another worker that this one was too far behind to take.
    pub relay_drops: u64,
}

impl EngineHandle {
    /// A handle to one engine task (the single-worker server, and tests).
    pub fn new(tx: mpsc::Sender<Request>) -> Self {
        Self::with_workers(
            vec![tx],
            None,
            ReceiveCounters::new(1),
            Vec::new(),
            usize::MAX,
        )
    }

    pub(crate) fn with_workers(
        workers: Vec<mpsc::Sender<Request>>,
        routes: Option<mpsc::UnboundedSender<RouteUpdate>>,
        received: Arc<ReceiveCounters>,
        relay_drops: Vec<RelayDrops>,
        max_live_broadcasts: usize,
    ) -> Self {
        debug_assert!(!workers.is_empty(), "at least one worker");
        let n = workers.len();
        Self {
            inner: Arc::new(Inner {
                workers,
                routes,
                received,
                relay_drops,
                max_live_broadcasts,
                placing: tokio::sync::Mutex::new(()),
                books: Mutex::new(Books {
                    viewers: vec![0; n],
                    ..Books::default()
                }),
                next_probe: AtomicUsize::new(0),
            }),
        }
    }

    pub async fn call(&self, command: Command) -> Result<Outcome, EngineGone> {
        if self.inner.workers.len() == 1 {
            return self.call_on(0, command).await;
        }
        match command {
            Command::Publish(peer, tracks) => self.publish(peer, tracks).await,
            Command::Subscribe(peer, tracks) => {
                self.start_viewer(Command::Subscribe, peer, tracks).await
            }
            // An edge's pull is a viewer of the broadcast here, outside its viewer cap.
            Command::Relay(peer, tracks) => self.start_viewer(Command::Relay, peer, tracks).await,
            command @ Command::Mirror(b, _) => self.call_on(self.worker_of(b), command).await,
            // An edge runs one worker (config.rs refuses --origin with --workers > 1): the
            // origin's STUN answers carry no ufrag the receive thread could route by.
            command @ Command::Pull(..) => self.call_on(0, command).await,
            Command::Probe(peer) => {
                let w = self.inner.next_probe.fetch_add(1, Ordering::Relaxed)
                    % self.inner.workers.len();
                self.start_session(w, &peer.session, &peer.ufrag, false);
                self.call_on(w, Command::Probe(peer)).await
            }
            Command::Describe(b) => self.call_on(self.worker_of(b), Command::Describe(b)).await,
            Command::Info(b) => self.info(b).await,
            // Every worker may hold viewers of it.
            Command::RevokeViewers(b) => {
                let mut n = 0;
                for w in 0..self.inner.workers.len() {
                    if let Outcome::Revoked(k) = self.call_on(w, Command::RevokeViewers(b)).await? {
                        n += k;
                    }
                }
                Ok(Outcome::Revoked(n))
            }
            Command::Evict(e) => {
                self.call_on(self.worker_of(e.broadcast), Command::Evict(e))
                    .await
            }
            Command::Close { session, publisher } => self.close(session, publisher).await,
            Command::Patch(patch) => self.patch(patch).await,
            Command::SetLayer { session, rid } => {
                let command = || Command::SetLayer {
                    session: session.clone(),
                    rid,
                };
                self.on_viewer(&session, command).await
            }
            Command::DescribeLayer(session) => {
                let command = || Command::DescribeLayer(session.clone());
                self.on_viewer(&session, command).await
            }
            Command::Stats => {
                let mut total = Stats::default();
                for load in self.worker_loads().await? {
                    total += load.stats;
                }
                // Dropped before any engine saw them: the receive thread found no route.
                total.datagrams_dropped += self.inner.received.unroutable();
                Ok(Outcome::Stats(total))
            }
            Command::Status => Ok(Outcome::Status(self.status().await?)),
            Command::Shutdown => {
                let mut n = 0;
                for w in 0..self.inner.workers.len() {
                    if let Outcome::ShutDown(k) = self.call_on(w, Command::Shutdown).await? {
                        n += k;
                    }
                }
                Ok(Outcome::ShutDown(n))
            }
        }
    }

    /// Every worker's counters, in worker order.
    pub async fn worker_loads(&self) -> Result<Vec<WorkerLoad>, EngineGone> {
        let mut loads = Vec::with_capacity(self.inner.workers.len());
        for w in 0..self.inner.workers.len() {
            let Outcome::Stats(stats) = self.call_on(w, Command::Stats).await? else {
                unreachable!("Stats is answered with Stats");
            };
            let queue_drops = self.inner.received.queue_drops(w);
            let relay_drops =
                (self.inner.relay_drops.get(w)).map_or(0, |d| d.load(Ordering::Relaxed));
            loads.push(WorkerLoad {
                stats,
                queue_drops,
                relay_drops,
            });
        }
        Ok(loads)
    }

    /// Keeps the books in step with the engines: a closed session no longer routes. Call
    /// with every [`EngineEvent`] before it is acted on.
    pub fn observe(&self, event: &EngineEvent) {
        if let EngineEvent::SessionClosed { session, .. } = event {
            self.end_session(session, None);
        }
    }

    async fn call_on(&self, worker: usize, command: Command) -> Result<Outcome, EngineGone> {
        let (reply, rx) = oneshot::channel();
        self.inner.workers[worker]
            .send(Request { command, reply })
            .await
            .map_err(|_| EngineGone)?;
        rx.await.map_err(|_| EngineGone)
    }

    /// Starts a viewer session (`Subscribe` or `Relay`) on the worker with the fewest
    /// viewers, mirroring the broadcast there first if its home is another; its ufrag is
    /// routed there before the engine has it, and forgotten again if the engine refuses it.
    async fn start_viewer(
        &self,
        command: fn(NewPeer, Vec<ViewerTrack>) -> Command,
        peer: NewPeer,
        tracks: Vec<ViewerTrack>,
    ) -> Result<Outcome, EngineGone> {
        let home = self.worker_of(peer.broadcast);
        let w = self.least_viewers(home);
        if w != home {
            let mirror = Command::Mirror(peer.broadcast, w);
            if !matches!(self.call_on(home, mirror).await?, Outcome::Mirrored(true)) {
                return Ok(Outcome::Subscribed(Err(CommandError::NotLive)));
            }
        }
        self.start_session(w, &peer.session, &peer.ufrag, true);
        let (session, ufrag) = (peer.session.clone(), peer.ufrag.clone());
        let outcome = self.call_on(w, command(peer, tracks)).await;
        if !matches!(outcome, Ok(Outcome::Subscribed(Ok(())))) {
            self.end_session(&session, Some(&ufrag));
        }
        outcome
    }

    async fn publish(
        &self,
        peer: crate::engine::NewPeer,
        tracks: Vec<crate::engine::IngestTrack>,
    ) -> Result<Outcome, EngineGone> {
        let _placing = self.inner.placing.lock().await;
        let b = peer.broadcast;
        let mut holders = vec![0usize; self.inner.workers.len()];
        let mut home = None;
        for (w, (key, _)) in self.status_by_worker().await? {
            holders[w] += 1;
            if key == b {
                home = Some(w);
            }
        }
        let w = match home {
            Some(w) => w,
            None if holders.iter().sum::<usize>() >= self.inner.max_live_broadcasts => {
                return Ok(Outcome::Published(Err(CommandError::NoFreeSlot)));
            }
            None => (0..holders.len())
                .min_by_key(|&w| holders[w])
                .expect("at least one worker"),
        };
        let (session, ufrag) = (peer.session.clone(), peer.ufrag.clone());
        self.start_session(w, &session, &ufrag, false);
        let outcome = self.call_on(w, Command::Publish(peer, tracks)).await;
        if matches!(outcome, Ok(Outcome::Published(Ok(())))) {
            self.books().broadcasts.insert(b, w);
        } else {
            self.end_session(&session, Some(&ufrag));
        }
        outcome
    }

    async fn close(&self, session: SessionId, publisher: bool) -> Result<Outcome, EngineGone> {
        for w in self.candidates_for(&session) {
            let command = Command::Close {
                session: session.clone(),
                publisher,
            };
            if let Outcome::Closed(true) = self.call_on(w, command).await? {
                return Ok(Outcome::Closed(true));
            }
        }
        Ok(Outcome::Closed(false))
    }

    /// A layer command about viewer `session`, on its worker (or, not booked, the first
    /// worker that knows it).
    async fn on_viewer(
        &self,
        session: &SessionId,
        command: impl Fn() -> Command,
    ) -> Result<Outcome, EngineGone> {
        let mut outcome = None;
        for w in self.candidates_for(session) {
            let answer = self.call_on(w, command()).await?;
            let unknown = matches!(
                answer,
                Outcome::LayerSet(Err(LayerError::UnknownSession))
                    | Outcome::LayerDescribed(Err(LayerError::UnknownSession))
            );
            outcome = Some(answer);
            if !unknown {
                break;
            }
        }
        Ok(outcome.expect("at least one worker is tried"))
    }

    /// A broadcast as its home sees it, with the slow viewers every worker holds: one
    /// broadcast's viewers spread over the workers.
    async fn info(&self, b: BroadcastKey) -> Result<Outcome, EngineGone> {
        let home = self.worker_of(b);
        let Outcome::Info(mut info) = self.call_on(home, Command::Info(b)).await? else {
            unreachable!("Info is answered with Info");
        };
        for w in (0..self.inner.workers.len()).filter(|&w| w != home) {
            if let Outcome::Info(mirror) = self.call_on(w, Command::Info(b)).await? {
                info.slow_viewers += mirror.slow_viewers;
            }
        }
        Ok(Outcome::Info(info))
    }

    async fn patch(&self, patch: crate::engine::Patch) -> Result<Outcome, EngineGone> {
        let candidates = self.candidates_for(&patch.session);
        let last = candidates.len() - 1;
        let mut patch = Some(patch);
        for (i, w) in candidates.into_iter().enumerate() {
            let p = patch.take().expect("one patch per try");
            let attempt = crate::engine::Patch {
                session: p.session.clone(),
                publisher: p.publisher,
                if_match: p.if_match.clone(),
                remote: p.remote.clone(),
                local: p.local.clone(),
            };
            let session = p.session.clone();
            patch = Some(p);
            let outcome = self.call_on(w, Command::Patch(attempt)).await?;
            match &outcome {
                Outcome::Patched(Err(PatchError::UnknownSession)) if i < last => continue,
                Outcome::Patched(Ok(Patched::Restarted { local, .. })) => {
                    // STUN now carries the new ufrag; the old one no longer reaches the peer,
                    // but its addresses still do until the new checks arrive.
                    let old =
                        self.books().sessions.get_mut(&session).map(|booked| {
                            std::mem::replace(&mut booked.ufrag, local.ufrag.clone())
                        });
                    if let Some(routes) = &self.inner.routes {
                        let (new, worker) = (local.ufrag.clone(), w);
                        let _ = routes.send(match old {
                            Some(old) => RouteUpdate::Rename { old, new, worker },
                            None => RouteUpdate::Add { ufrag: new, worker },
                        });
                    }
                }
                _ => {}
            }
            return Ok(outcome);
        }
        unreachable!("at least one worker is tried")
    }

    /// The session's worker first if it is known, then every other (a session that hung up
    /// still answers DELETE for a moment after its books entry is gone).
    fn candidates_for(&self, session: &SessionId) -> Vec<usize> {
        let known = self.books().sessions.get(session).map(|b| b.worker);
        let mut order: Vec<usize> = known.into_iter().collect();
        order.extend((0..self.inner.workers.len()).filter(|w| Some(*w) != known));
        order
    }

    async fn status(
        &self,
    ) -> Result<Vec<(BroadcastKey, crate::engine::BroadcastInfo)>, EngineGone> {
        Ok(self
            .status_by_worker()
            .await?
            .into_iter()
            .map(|(_, entry)| entry)
            .collect())
    }

    async fn status_by_worker(
        &self,
    ) -> Result<Vec<(usize, (BroadcastKey, crate::engine::BroadcastInfo))>, EngineGone> {
        let mut all = Vec::new();
        for w in 0..self.inner.workers.len() {
            let Outcome::Status(s) = self.call_on(w, Command::Status).await? else {
                unreachable!("Status is answered with Status");
            };
            all.extend(s.into_iter().map(|entry| (w, entry)));
        }
        Ok(all)
    }

    /// The worker holding broadcast `b`, or worker 0 for one never published (it answers
    /// "not live" like any worker would).
    fn worker_of(&self, b: BroadcastKey) -> usize {
        self.books().broadcasts.get(&b).copied().unwrap_or(0)
    }

    /// The worker with the fewest viewer sessions, `home` on a tie (it needs no relay).
    fn least_viewers(&self, home: usize) -> usize {
        let books = self.books();
        (0..books.viewers.len())
            .min_by_key(|&w| (books.viewers[w], w != home))
            .unwrap_or(home)
    }

    fn start_session(&self, worker: usize, session: &SessionId, ufrag: &str, viewer: bool) {
        let booked = Booked {
            worker,
            ufrag: ufrag.to_owned(),
            viewer,
        };
        let mut books = self.books();
        if viewer {
            books.viewers[worker] += 1;
        }
        if let Some(old) = books.sessions.insert(session.clone(), booked)
            && old.viewer
        {
            books.viewers[old.worker] -= 1;
        }
        drop(books);
        if let Some(routes) = &self.inner.routes {
            let _ = routes.send(RouteUpdate::Add {
                ufrag: ufrag.to_owned(),
                worker,
            });
        }
    }

    /// Forgets a session and its ufrag route (`ufrag` for one the books may no longer hold).
    fn end_session(&self, session: &SessionId, ufrag: Option<&str>) {
        let booked = {
            let mut books = self.books();
            let booked = books.sessions.remove(session);
            if let Some(b) = booked.as_ref().filter(|b| b.viewer) {
                books.viewers[b.worker] -= 1;
            }
            booked.map(|b| b.ufrag)
        };
        let Some(routes) = &self.inner.routes else {
            return;
        };
        for ufrag in booked.into_iter().chain(ufrag.map(str::to_owned)) {
            let _ = routes.send(RouteUpdate::Forget { ufrag });
        }
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.inner.books.lock().expect("books lock")
    }
}
