//! The number that names a broadcast inside this server: data the registry assigns and every
//! layer passes around (the engine's routes, HTTP's sessions, the recorder), owned by none.

use std::fmt;

/// A broadcast as the engine knows it. Assigned by the registry; opaque to the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BroadcastKey(pub u64);

impl fmt::Display for BroadcastKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}", self.0)
    }
}
