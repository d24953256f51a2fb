//! The edge's heartbeat: every [`HEARTBEAT`] it tells its origin where viewers reach it and
//! how many it has, so the origin can redirect viewers to it (http/edges.rs). An origin that
//! stops hearing it drops it after three missed beats.

use std::sync::Arc;

use tracing::{debug, info, warn};

use super::Edge;
use super::client;
use crate::engine::{Command, Outcome};
use crate::http::{Beat, HEARTBEAT};

impl Edge {
    /// Beats until the engine is gone; `url` is this edge's base URL for viewers and
    /// `capacity` how many viewers it takes in all.
    pub fn beat_forever(self: Arc<Self>, url: String, capacity: usize) {
        tokio::spawn(async move {
            let mut registered = false;
            loop {
                let viewers = match self.engine.call(Command::Stats).await {
                    Ok(Outcome::Stats(s)) => s.viewers,
                    Ok(_) => 0,
                    Err(_) => return, // shutting down
                };
                let beat = Beat {
                    url: url.clone(),
                    viewers,
                    capacity,
                };
                let body = serde_json::to_string(&beat).expect("a beat serialises");
                let headers = [
                    ("content-type", "application/json"),
                    (super::EDGE_SECRET_HEADER, self.secret.as_str()),
                ];
                let target = format!("{}/api/edges", self.origin);
                match client::request("POST", &target, &headers, body).await {
                    Ok(r) if r.status == 200 => {
                        if !registered {
                            info!(origin = %self.origin, %url, "registered with the origin");
                            registered = true;
                        }
                        debug!(viewers, "heartbeat");
                    }
                    Ok(r) => {
                        warn!(status = r.status, body = %r.body, "the origin refused our heartbeat");
                        registered = false;
                    }
                    Err(e) => {
                        warn!(error = %e, "heartbeat to the origin failed");
                        registered = false;
                    }
                }
                tokio::time::sleep(HEARTBEAT).await;
            }
        });
    }
}
