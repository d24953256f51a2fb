//! The clock: the one place that reads it. The engine takes `now` as an argument; the layers
//! above it (the driver, HTTP, edges) read it here.

use std::time::Instant;

/// The single clock read of the media path: the engine itself takes `now` as an argument.
#[allow(clippy::disallowed_methods)] // this is the one place allowed to read the clock
pub fn now() -> Instant {
    Instant::now()
}

/// Wall-clock seconds since the Unix epoch, for dates in the state file (never media timing).
#[allow(clippy::disallowed_methods)] // the one wall-clock read
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
