//! Wiring: bind the sockets, start the media thread and the HTTP server, stop them.

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::config::Config;
use crate::engine::{Command, Engine, EngineConfig, EngineEvent, Outcome, Stats};
use crate::handle::EngineHandle;
use crate::http::{self, AppState, Hub};
use crate::io;
use crate::offer::SessionSetup;
use crate::registry::{Registry, RegistryError};

/// A running whipcast: HTTP on `http_addr`, media on `udp_addr`.
pub struct Server {
    pub http_addr: SocketAddr,
    pub udp_addr: SocketAddr,
    /// Where ICE-TCP listens, unless it is off.
    pub ice_tcp_addr: Option<SocketAddr>,
    /// The addresses in our ICE candidates.
    pub advertised: Vec<SocketAddr>,
    media: Option<io::Media>,
    stop_http: watch::Sender<bool>,
    http_task: tokio::task::JoinHandle<()>,
    engine: Option<EngineHandle>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {what} to {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("cannot start the media threads: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The receive thread routes by our ufrag in STUN requests, and an edge's pull hears
    /// only STUN answers from its origin: edges keep to the single media loop for now.
    #[error("an edge (--origin) runs one media worker for now: drop --workers {0}")]
    EdgeWithWorkers(usize),
}

impl Server {
    /// Binds and starts everything. Call from inside a tokio runtime.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        if let (Some(_), Some(n @ 2..)) = (&config.origin, config.workers) {
            return Err(StartError::EdgeWithWorkers(n));
        }
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
            _ => None,
        };
        let mut registry = Registry::open(&config.data_dir)?;
        let expired = registry.expire(
            crate::clock::unix_now(),
            config.id_ttl,
            config.unpublished_ttl,
        );
        if expired > 0 || registry.replayed_journal() {
            // Also folds the journal into the snapshot (dropping a line a crash cut short).
            registry.save()?;
        }
        if expired > 0 {
            info!(expired, "forgot broadcasts unused for longer than --id-ttl");
        }
        let (udp, udp_addr) = bind_udp(config.udp_listen)?;
        let advertised = config.advertised_addrs(udp_addr);
        let ice_tcp = bind_ice_tcp(&config)?;
        let ice_tcp_addr = ice_tcp.as_ref().map(|(_, addr)| *addr);
        let advertised_tcp = ice_tcp_addr
            .map(|a| config.advertised_addrs(a))
            .unwrap_or_default();
        let sockets = io::MediaSockets {
            udp,
            tcp: ice_tcp.map(|(listener, _)| listener),
        };
        let listener = TcpListener::bind(config.http_listen)
            .await
            .map_err(|source| StartError::Bind {
                what: "HTTP",
                addr: config.http_listen,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| StartError::Bind {
            what: "HTTP",
            addr: config.http_listen,
            source,
        })?;

        let engine_config = EngineConfig {
            candidates: advertised.clone(),
            tcp_candidates: advertised_tcp.clone(),
            max_live_broadcasts: config.max_live_broadcasts,
            max_viewers: config.max_viewers,
            when_full: config.when_full,
            resume_grace: config.resume_grace,
            handshake_timeout: config.handshake_timeout,
            test_seq_start: config.test_seq_start,
            worker: 0,
        };
        let record_board = Arc::new(crate::record::Board::with_off(registry.not_recorded()));
        let registry = Arc::new(Mutex::new(registry));
        let recorder = match config.record {
            true => Some(
                crate::record::start(
                    crate::record::Settings {
                        dir: config.record_dir.clone(),
                        segment: config.record_segment,
                        max_bytes: config.record_max_bytes,
                        min_free: config.record_min_free,
                        board: record_board.clone(),
                        // A publisher back within the grace continues its recording.
                        idle: config.resume_grace + Duration::from_secs(5),
                    },
                    registry.clone(),
                )
                .map_err(StartError::Thread)?,
            ),
            false => None,
        };
        let engines = (0..config.media_workers())
            .map(|worker| {
                let mut engine = Engine::new(EngineConfig {
                    worker,
                    ..engine_config.clone()
                });
                if let Some(tap) = &recorder {
                    engine.set_recorder(tap.clone());
                }
                engine
            })
            .collect();
        let (event_tx, mut event_rx) = mpsc::unbounded_channel::<EngineEvent>();
        let (media, engine_handle) =
            io::start(engines, sockets, event_tx, config.max_live_broadcasts)
                .map_err(StartError::Thread)?;
        let setup = SessionSetup::new(advertised.clone()).with_tcp(advertised_tcp);
        // The edges registered here: an origin's, or an edge's own in a chain of edges.
        let edges = Arc::new(crate::cluster::EdgeBook::default());
        let edge = match (&config.origin, &config.edge_secret) {
            (Some(origin), Some(secret)) => Some(crate::edge::Edge::new(
                origin.clone(),
                config.origin_ca.as_deref(),
                secret.clone(),
                setup.clone(),
                engine_handle.clone(),
                config.resume_grace,
                edges.clone(),
            )?),
            _ => None,
        };
        if let (Some(edge), Some(url)) = (&edge, &config.edge_url) {
            let capacity = config.max_live_broadcasts * config.max_viewers;
            edge.clone().beat_forever(url.clone(), capacity);
        }
        let state = Arc::new(AppState {
            setup,
            registry,
            recorder,
            record_board,
            download_links: Default::default(),
            saver: Arc::default(),
            limits: http::limits::Limits::new(&config),
            engine: engine_handle.clone(),
            hub: Hub::default(),
            tls,
            agents: Default::default(),
            edge,
            edges,
            config,
        });
        let events_state = state.clone();
        tokio::spawn(async move {
            while let Some(event) = event_rx.recv().await {
                tracing::debug!(?event, "engine event");
                events_state.engine.observe(&event);
                if let EngineEvent::ViewerConnected(session)
                | EngineEvent::SessionClosed { session, .. } = &event
                {
                    events_state.limits.pending_viewers.settled(session);
                }
                events_state
                    .hub
                    .apply(&event, events_state.config.max_viewers);
                if let Some(edge) = &events_state.edge {
                    edge.on_event(&event);
                }
                http::cluster_event(&events_state, &event);
            }
        });
        tokio::spawn(crate::selftest::run(
            state.setup.clone(),
            state.engine.clone(),
        ));
        let (stop_http, stop_http_rx) = watch::channel(false);
        let http_task = tokio::spawn(http::serve(listener, state, stop_http_rx));
        info!(%http_addr, %udp_addr, ?ice_tcp_addr, ?advertised, "whipcast listening");
        Ok(Self {
            http_addr,
            udp_addr,
            ice_tcp_addr,
            advertised,
            media: Some(media),
            stop_http,
            http_task,
            engine: Some(engine_handle),
        })
    }

    /// [`Server::start`] as a task of the current runtime. A crate that awaits `start`
    /// itself compiles the whole HTTP stack again (async bodies are instantiated where they
    /// are polled); this one polls it here. The test binaries start servers through it.
    #[inline(never)]
    pub fn spawn(config: Config) -> tokio::task::JoinHandle<Result<Self, StartError>> {
        tokio::spawn(Self::start(config))
    }

    /// The engine's counters (peers, indices, timers, traffic).
    pub async fn stats(&self) -> Option<Stats> {
        match self.engine.as_ref()?.call(Command::Stats).await.ok()? {
            Outcome::Stats(s) => Some(s),
            _ => None,
        }
    }

    /// Graceful stop: every session is closed (viewers get `inactive`, peers a DTLS
    /// close_notify), then HTTP stops accepting and the media loop ends. The state file is
    /// already on disk: every change was saved when it happened.
    pub async fn shutdown(mut self) {
        if let Some(engine) = &self.engine {
            let _ = engine.call(Command::Shutdown).await;
            // Let the SSE streams carry `inactive` before the connections go.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = self.stop_http.send(true);
        let _ = (&mut self.http_task).await;
        if let Some(media) = self.media.take() {
            let _ = tokio::task::spawn_blocking(move || media.join()).await;
        }
    }
}

/// What `--check-config` verifies: the state file parses, the TLS files load, both ports can
/// be bound. Returns a human summary of what the server would do.
pub fn check(config: &Config) -> Result<String, StartError> {
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        crate::tls::acceptor(cert, key)?;
    }
    if config
        .origin
        .as_deref()
        .is_some_and(|o| o.starts_with("https://"))
    {
        crate::edge::Edge::check_tls(config.origin_ca.as_deref())?;
    }
    let registry = Registry::open(&config.data_dir)?;
    let (udp, udp_addr) = bind_udp(config.udp_listen)?;
    let tcp =
        std::net::TcpListener::bind(config.http_listen).map_err(|source| StartError::Bind {
            what: "HTTP",
            addr: config.http_listen,
            source,
        })?;
    let ice_tcp = bind_ice_tcp(config)?;
    let ice_tcp_line = match &ice_tcp {
        Some((_, addr)) => format!(
            "ICE-TCP for viewers on {addr}, advertised as {:?}",
            config.advertised_addrs(*addr)
        ),
        None => "ICE-TCP off".to_string(),
    };
    drop((udp, tcp, ice_tcp));
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    Ok(format!(
        "configuration ok\n  {scheme} on {}\n  media on UDP {udp_addr}, advertised as {:?}\n  {ice_tcp_line}\n  {} broadcasts in {}\n  {} live broadcasts × {} viewers ({:?} when full)\n",
        config.http_listen,
        config.advertised_addrs(udp_addr),
        registry.len(),
        config.data_dir.display(),
        config.max_live_broadcasts,
        config.max_viewers,
        config.when_full,
    ))
}

/// Binds the media socket; errors name the address.
/// The ICE-TCP listener, if --ice-tcp-listen is not `off`.
fn bind_ice_tcp(
    config: &Config,
) -> Result<Option<(std::net::TcpListener, SocketAddr)>, StartError> {
    let Some(addr) = config.ice_tcp_addr() else {
        return Ok(None);
    };
    let bind_err = |source| StartError::Bind {
        what: "ICE-TCP",
        addr,
        source,
    };
    let tcp = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    let local = tcp.local_addr().map_err(bind_err)?;
    Ok(Some((tcp, local)))
}

fn bind_udp(addr: SocketAddr) -> Result<(UdpSocket, SocketAddr), StartError> {
    let bind_err = |source| StartError::Bind {
        what: "UDP media",
        addr,
        source,
    };
    let udp = UdpSocket::bind(addr).map_err(bind_err)?;
    let local = udp.local_addr().map_err(bind_err)?;
    Ok((udp, local))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop_http.send(true);
        if let Some(media) = self.media.as_mut() {
            media.stop();
        }
    }
}
