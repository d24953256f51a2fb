//! The origin–edge protocol, which both sides use: the heartbeat and its reply, the edge
//! secret's header, the book of live edges an origin keeps, and who goes when the cluster is
//! over its viewer cap. HTTP serves it (http/edges.rs, http/cluster.rs) and edges speak it
//! (edge/); it imports neither.

mod book;
mod cap;
mod wire;

pub use self::book::{EdgeBook, EdgeLoad};
pub(crate) use self::cap::{Holder, pick};
pub use self::wire::{
    Beat, BeatReply, EDGE_SECRET_HEADER, EvictOrder, HEARTBEAT, MAX_LISTED, Watching,
};
