//! One accepted connection, served as HTTP/1.1 or, when TLS's ALPN chose it, HTTP/2, each with
//! its limits. Browsers put every tab of a server on one HTTP/2 connection; over HTTP/1.1 they
//! allow six connections per host, and a page that holds one for its events takes one of them.
//!
//! The HTTP/2 limits answer what one connection can ask of the server: streams at once, header
//! bytes, buffered body bytes, streams reset before they are served (rapid reset,
//! CVE-2023-44487), protocol errors, and time without a request in progress.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::{HttpService, service_fn};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;
use tracing::debug;

use crate::config::Config;

/// The connection builders of both protocols, configured once from `--http-header-timeout`.
pub struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// How long a connection may stay open with no request in progress.
    idle: Duration,
}

impl Protocols {
    pub fn new(config: &Config) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .max_buf_size(MAX_HEADER_BYTES)
            // hyper starts this timer whenever it waits for a request head, so it bounds an
            // idle keep-alive connection as well as a slow one.
            .header_read_timeout(config.http_header_timeout)
            .timer(TokioTimer::new());
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS)
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
            .keep_alive_interval(PING_INTERVAL)
            .keep_alive_timeout(PING_TIMEOUT);
        Self {
            http1,
            http2,
            idle: config.http_header_timeout,
        }
    }
}

/// Serves one connection (plain TCP or TLS) until it ends or the server shuts down; `h2` when
/// TLS negotiated HTTP/2. `service` gets each request.
pub async fn serve<I, F, Fut>(
    protocols: &Protocols,
    io: I,
    h2: bool,
    service: F,
    shutdown: &mut watch::Receiver<bool>,
    peer: std::net::SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<BoxBody<Bytes, Infallible>>> + Send + 'static,
{
    let io = TokioIo::new(io);
    if !h2 {
        let service = service_fn(move |req| {
            let answer = service(req);
            async move { Ok::<_, Infallible>(answer.await) }
        });
        let conn = protocols.http1.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => ended(result, peer),
            _ = shutdown.changed() => conn.as_mut().graceful_shutdown(),
        }
        return;
    }
    let activity = Arc::new(Activity::new());
    let tracked = activity.clone();
    let service = service_fn(move |req| {
        // Counted from the moment the request arrives until its response body is done or
        // dropped: an open event stream keeps its connection busy, not idle.
        let busy = Busy::new(tracked.clone());
        let answer = service(req);
        async move {
            let response = answer.await;
            Ok::<_, Infallible>(response.map(|body| Tracked { body, _busy: busy }.boxed()))
        }
    });
    serve_h2(protocols, io, service, &activity, shutdown, peer).await;
}

/// Serves HTTP/2 until the connection ends, the server shuts down, or the connection has had no
/// stream open for the idle time (then GOAWAY, and the streams in flight, none, finish).
async fn serve_h2<I, S>(
    protocols: &Protocols,
    io: TokioIo<I>,
    service: S,
    activity: &Activity,
    shutdown: &mut watch::Receiver<bool>,
    peer: std::net::SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = BoxBody<Bytes, Infallible>> + Send,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = protocols.http2.serve_connection(io, service);
    tokio::pin!(conn);
    loop {
        let idle_until = activity.idle_deadline(protocols.idle);
        tokio::select! {
            result = conn.as_mut() => return ended(result, peer),
            _ = shutdown.changed() => return conn.as_mut().graceful_shutdown(),
            _ = tokio::time::sleep_until(idle_until.into()) => {
                if activity.idle_deadline(protocols.idle) <= crate::clock::now() {
                    debug!(%peer, "idle http/2 connection closed");
                    break;
                }
            }
        }
    }
    // GOAWAY; with no stream open the connection ends at once, but a client that never reads
    // must not keep it.
    conn.as_mut().graceful_shutdown();
    if let Ok(result) = tokio::time::timeout(GOAWAY_GRACE, conn.as_mut()).await {
        ended(result, peer);
    }
}

fn ended(result: Result<(), hyper::Error>, peer: std::net::SocketAddr) {
    if let Err(e) = result {
        debug!(%peer, error = %e, "http connection ended");
    }
}

/// Requests in progress on one HTTP/2 connection, and when the last one ended.
struct Activity {
    open: AtomicUsize,
    since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            open: AtomicUsize::new(0),
            since: Mutex::new(crate::clock::now()),
        }
    }

    /// When the connection counts as idle if nothing changes: `idle` after the last request
    /// ended, or `idle` from now while one is in progress.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        let since = *self.since.lock().expect("activity lock");
        if self.open.load(Ordering::Acquire) > 0 {
            return crate::clock::now() + idle;
        }
        since + idle
    }
}

/// One request in progress; dropping it (response done, or the stream reset) ends it.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Self {
        activity.open.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.since.lock().expect("activity lock") = crate::clock::now();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in progress until it is done.
struct Tracked {
    body: BoxBody<Bytes, Infallible>,
    _busy: Busy,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Total header bytes per request (HTTP/1.1: hyper's read buffer, larger requests get 431;
/// HTTP/2: SETTINGS_MAX_HEADER_LIST_SIZE, larger get 431 or the stream refused).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Streams one HTTP/2 connection may have open at once: a browser's tabs of this server share
/// one connection, each with a page load or two, a WHEP request and an event stream at most,
/// so 64 is room for dozens of tabs; more streams are refused (REFUSED_STREAM). Over HTTP/1.1
/// a connection has one request at a time, so this also bounds what HTTP/2 multiplies.
pub const MAX_STREAMS: u32 = 64;
/// Body bytes a client may send on one stream before the handler reads them: RFC 9113's
/// default window, about one offer (`--max-body-bytes` is 64 KiB).
const STREAM_WINDOW: u32 = 65_535;
/// Body bytes buffered per connection across its streams (hyper's default is 1 MiB).
const CONNECTION_WINDOW: u32 = 256 * 1024;
/// Streams a client may open and reset before the server takes them up, per connection, before
/// it gets GOAWAY (ENHANCE_YOUR_CALM): the h2 crate's own default, chosen after rapid reset.
/// Browsers cancel a stream now and then (a tab closed mid-load), never dozens at once.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the server may reset for a client's protocol errors (e.g. streams over
/// [`MAX_STREAMS`]) before the connection gets GOAWAY; hyper allows 1024.
const MAX_LOCAL_ERROR_RESETS: usize = 64;
/// An HTTP/2 connection is pinged this often and closed when a ping goes unanswered for
/// [`PING_TIMEOUT`]: a peer that vanished without a FIN does not hold it (event streams write
/// only every 15 s).
const PING_INTERVAL: Duration = Duration::from_secs(20);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an idle connection gets to take its GOAWAY.
const GOAWAY_GRACE: Duration = Duration::from_secs(2);
