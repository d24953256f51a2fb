//! Accepting HTTP connections: the total and per-client connection caps, the answer to one
//! connection too many, and TLS; conn.rs serves each accepted connection with its limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

use super::{AppState, client, conn, handle};
use crate::client_key::ClientKey;

/// Accepts connections until `shutdown` changes: at most `--max-connections` at once, and
/// `--max-connections-per-ip` from one client (trusted proxies excepted).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let counts: Arc<Mutex<ConnectionCounts>> = Arc::default();
    let protocols = Arc::new(conn::Protocols::new(&state.config));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors (EMFILE/ENFILE) or memory: retrying at once
                    // spins. Pause, so connections that end can free what we need.
                    debug!(error = %e, "accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                        _ = shutdown.changed() => break,
                    }
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let proxied = state.config.trusted_proxies.contains(&peer.ip());
        let client = ClientKey::of(peer.ip());
        let refusal = counts.lock().expect("connection count lock").open(
            client,
            proxied,
            state.config.max_connections,
            state.config.max_connections_per_ip,
        );
        if let Err(answer) = refusal {
            debug!(%peer, "too many connections");
            refuse(stream, answer, state.tls.is_some());
            continue;
        }
        let state = state.clone();
        let counts = counts.clone();
        let protocols = protocols.clone();
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service_state = state.clone();
            let service = move |mut req: Request<Incoming>| {
                let state = service_state.clone();
                let ip = client::forwarded_client(
                    peer.ip(),
                    &state.config.trusted_proxies,
                    req.headers(),
                );
                req.extensions_mut().insert(client::ClientAddr(ip));
                async move { handle(&state, req).await }
            };
            match &state.tls {
                None => {
                    conn::serve(&protocols, stream, false, service, &mut conn_shutdown, peer).await
                }
                Some(tls) => {
                    // The handshake gets the same deadline as the headers (slowloris).
                    match tokio::time::timeout(state.config.http_header_timeout, tls.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                            conn::serve(&protocols, stream, h2, service, &mut conn_shutdown, peer)
                                .await
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "tls handshake failed"),
                        Err(_) => debug!(%peer, "tls handshake timed out"),
                    }
                }
            }
            counts
                .lock()
                .expect("connection count lock")
                .close(client, proxied);
        });
    }
    info!("http server stopped");
}

/// Open connections, in total and per client.
#[derive(Default)]
struct ConnectionCounts {
    total: usize,
    per_client: HashMap<ClientKey, usize>,
}

impl ConnectionCounts {
    /// Counts a new connection, or says which answer refuses it.
    fn open(
        &mut self,
        client: ClientKey,
        proxied: bool,
        max_total: usize,
        max_per_client: usize,
    ) -> Result<(), &'static [u8]> {
        if self.total >= max_total {
            return Err(SERVER_BUSY);
        }
        if !proxied {
            let n = self.per_client.entry(client).or_default();
            if *n >= max_per_client {
                return Err(TOO_MANY_CONNECTIONS);
            }
            *n += 1;
        }
        self.total += 1;
        Ok(())
    }

    fn close(&mut self, client: ClientKey, proxied: bool) {
        self.total -= 1;
        if proxied {
            return;
        }
        if let Some(n) = self.per_client.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&client);
            }
        }
    }
}

/// Refuses a connection over a limit. On plain HTTP it gets `answer`; on the TLS port it is
/// closed without a word, because plain text there is garbage to a TLS client (and a TLS
/// handshake costs the CPU the limit is there to save).
fn refuse(stream: tokio::net::TcpStream, answer: &'static [u8], tls: bool) {
    if tls {
        return; // dropping the stream closes it
    }
    let mut stream = stream;
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        let write = async {
            let _ = stream.write_all(answer).await;
            let _ = stream.shutdown().await;
        };
        // A client that does not read must not keep the socket.
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, write).await;
    });
}

/// How long the accept loop waits after a failed accept (EMFILE and the like).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How long a refused connection gets to take its answer.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// The answer to one connection too many in total (written raw: hyper never sees it).
const SERVER_BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: 117\r\n\r\n{\"type\":\"about:blank\",\"title\":\"Service Unavailable\",\"status\":503,\"detail\":\"the server has too many open connections\"}";
/// The answer to one connection too many from an address (written raw: hyper never sees it).
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/problem+json\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: 118\r\n\r\n{\"type\":\"about:blank\",\"title\":\"Too Many Requests\",\"status\":429,\"detail\":\"too many open connections from your address\"}";
