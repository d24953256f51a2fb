//! Two workers' engines as one server for the simulated network, placed and routed as the
//! io layer does it with `--workers 2` (io/handle.rs, io/route.rs): a broadcast's publisher
//! on the engine with the fewest broadcasts (its home), each viewer on the engine with the
//! fewest viewers (the home on a tie), mirrored there first; STUN routed by the ufrag the
//! session was given, other datagrams by the address its STUN came from; the messages
//! between the engines carried at once, in order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use whipcast::engine::{
    BroadcastKey, Command, Engine, EngineConfig, EngineEvent, Outcome, SessionId, Stats, Transmit,
    stun_local_ufrag,
};

use super::sim::Sfu;

pub struct Pair {
    pub engines: [Engine; 2],
    homes: HashMap<BroadcastKey, usize>,
    ufrags: HashMap<String, usize>,
    addrs: HashMap<SocketAddr, usize>,
    sessions: HashMap<SessionId, usize>,
    viewers: [usize; 2],
}

impl Pair {
    pub fn new(config: EngineConfig) -> Self {
        let engine = |worker| {
            Engine::new(EngineConfig {
                worker,
                ..config.clone()
            })
        };
        Self {
            engines: [engine(0), engine(1)],
            homes: HashMap::new(),
            ufrags: HashMap::new(),
            addrs: HashMap::new(),
            sessions: HashMap::new(),
            viewers: [0; 2],
        }
    }

    /// The engine `b`'s publisher was placed on.
    pub fn home(&self, b: BroadcastKey) -> Option<usize> {
        self.homes.get(&b).copied()
    }

    /// The engine a session was placed on.
    pub fn worker_of(&self, session: &SessionId) -> Option<usize> {
        self.sessions.get(session).copied()
    }

    /// Carries the engines' messages to each other until neither has any.
    pub fn pump(&mut self, now: Instant) {
        loop {
            let mut moved = false;
            for from in 0..2 {
                while let Some((to, m)) = self.engines[from].poll_span() {
                    self.engines[to].handle_span(now, m);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn book(&mut self, w: usize, session: &SessionId, ufrag: &str) {
        self.ufrags.insert(ufrag.to_owned(), w);
        self.sessions.insert(session.clone(), w);
    }
}

impl Sfu for Pair {
    fn handle_datagram(&mut self, now: Instant, src: SocketAddr, dst: SocketAddr, data: &[u8]) {
        let by_ufrag = stun_local_ufrag(data).and_then(|u| self.ufrags.get(u).copied());
        if let Some(w) = by_ufrag {
            self.addrs.insert(src, w);
        }
        let Some(w) = by_ufrag.or_else(|| self.addrs.get(&src).copied()) else {
            return;
        };
        self.engines[w].handle_datagram(now, src, dst, data);
        self.pump(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        for e in &mut self.engines {
            if e.poll_timeout().is_some_and(|t| t <= now) {
                e.handle_timeout(now);
            }
        }
        self.pump(now);
    }

    fn handle_command(&mut self, now: Instant, command: Command) -> Outcome {
        let outcome = match command {
            Command::Publish(peer, tracks) => {
                let b = peer.broadcast;
                let w = self.home(b).unwrap_or_else(|| {
                    let held = |w| self.homes.values().filter(|&&h| h == w).count();
                    if held(1) < held(0) { 1 } else { 0 }
                });
                self.homes.insert(b, w);
                self.book(w, &peer.session, &peer.ufrag);
                self.engines[w].handle_command(now, Command::Publish(peer, tracks))
            }
            Command::Subscribe(peer, tracks) => {
                let home = self.home(peer.broadcast).unwrap_or(0);
                let w = (0..2)
                    .min_by_key(|&w| (self.viewers[w], w != home))
                    .expect("two engines");
                if w != home {
                    let mirror = Command::Mirror(peer.broadcast, w);
                    if !matches!(
                        self.engines[home].handle_command(now, mirror),
                        Outcome::Mirrored(true)
                    ) {
                        return Outcome::Subscribed(Err(whipcast::engine::CommandError::NotLive));
                    }
                    self.pump(now);
                }
                self.book(w, &peer.session, &peer.ufrag);
                self.viewers[w] += 1;
                self.engines[w].handle_command(now, Command::Subscribe(peer, tracks))
            }
            Command::Describe(b) => {
                let home = self.home(b).unwrap_or(0);
                self.engines[home].handle_command(now, Command::Describe(b))
            }
            Command::Info(b) => {
                let home = self.home(b).unwrap_or(0);
                self.engines[home].handle_command(now, Command::Info(b))
            }
            Command::Close { session, publisher } => {
                let w = self.worker_of(&session).unwrap_or(0);
                self.engines[w].handle_command(now, Command::Close { session, publisher })
            }
            Command::Stats => Outcome::Stats(self.stats()),
            other => self.engines[0].handle_command(now, other),
        };
        self.pump(now);
        outcome
    }

    fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        let (a, b) = self.engines.split_at_mut(1);
        match a[0].poll_transmit() {
            Some(t) => Some(t),
            None => b[0].poll_transmit(),
        }
    }

    fn poll_event(&mut self) -> Option<EngineEvent> {
        let (a, b) = self.engines.split_at_mut(1);
        a[0].poll_event().or_else(|| b[0].poll_event())
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.engines.iter().filter_map(|e| e.poll_timeout()).min()
    }

    fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for e in &self.engines {
            total += e.stats();
        }
        total
    }
}
