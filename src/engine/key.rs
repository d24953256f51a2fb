//! Typed handles: `*Key` is a local slab index with a generation, `*Id` is a value on the wire.

use std::fmt;

pub use crate::broadcast_key::BroadcastKey;

/// A peer (one str0m `Rtc`) in the engine's slab.
///
/// The generation makes a key that outlives its peer (a late DELETE, a queued fan-out) miss
/// instead of hitting the next occupant of the same slab slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.index, self.generation)
    }
}

/// The broadcast key of connectivity tests: the registry numbers broadcasts from 1, so no
/// broadcast and no route ever has it.
pub const PROBE: BroadcastKey = BroadcastKey(0);

/// The random ID in a session URL (`/broadcast/session/<id>`, `/stream/session/<id>`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    /// A fresh 128-bit random session ID.
    pub fn random() -> Self {
        Self(crate::secret::random_token())
    }

    /// Wraps an ID taken from a URL. Only well-formed IDs are accepted, so a hostile path can
    /// never reach a map lookup with an unbounded string.
    pub fn parse(s: &str) -> Option<Self> {
        crate::secret::is_token(s).then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Session IDs are capabilities (DELETE needs only the URL): log a prefix only.
        write!(f, "{}…", &self.0[..6.min(self.0.len())])
    }
}
