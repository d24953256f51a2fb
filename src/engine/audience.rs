//! One broadcast's audience across every worker: how many viewer sessions it has, how many of
//! them are still connecting, and which viewers hold a place, in the order they connected.
//!
//! With `--workers N` a broadcast's viewers live on several engines (span.rs), but the viewer
//! cap is the broadcast's: the n+1th viewer to connect evicts the oldest one, whichever
//! worker holds it. Every engine with viewers of the broadcast shares this book (one `Arc`,
//! created by the engine of its publisher). It is locked when a viewer session starts,
//! connects or ends, never per packet, so the lock is uncontended in practice.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use super::key::PeerKey;

/// A viewer anywhere: the worker holding it and its key there.
pub(crate) type Seat = (usize, PeerKey);

#[derive(Default)]
pub(crate) struct Audience {
    book: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    /// Viewer sessions (edge pulls included), connected or not.
    sessions: usize,
    /// Of those, the ones that have not connected yet (their own bound: `Engine::pending_cap`).
    connecting: usize,
    /// Connected viewers holding a place (edge pulls hold none), with when they connected,
    /// oldest first.
    seated: VecDeque<(Seat, Instant)>,
}

/// Whether a viewer that just connected keeps its place.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// It is seated; `evict` (the oldest viewer) must go to make room.
    Seated { evict: Option<Seat> },
    /// The broadcast is full and refuses newcomers (`--when-full reject`).
    Refused,
}

impl Audience {
    /// A viewer session started (connecting); returns the number of sessions.
    pub(crate) fn joined(&self) -> usize {
        let mut book = self.book();
        book.sessions += 1;
        book.connecting += 1;
        book.sessions
    }

    /// A viewer session connected (once per session).
    pub(crate) fn connected(&self) {
        let mut book = self.book();
        book.connecting = book.connecting.saturating_sub(1);
    }

    /// A viewer session ended (seated or not, `connected` or still connecting); returns the
    /// number of sessions left.
    pub(crate) fn left(&self, seat: Seat, connected: bool) -> usize {
        let mut book = self.book();
        book.sessions = book.sessions.saturating_sub(1);
        if !connected {
            book.connecting = book.connecting.saturating_sub(1);
        }
        if let Some(i) = book.seated.iter().position(|s| s.0 == seat) {
            book.seated.remove(i);
        }
        book.sessions
    }

    pub(crate) fn sessions(&self) -> usize {
        self.book().sessions
    }

    /// Viewer sessions on every worker that have not connected yet.
    pub(crate) fn connecting(&self) -> usize {
        self.book().connecting
    }

    /// Connected viewers holding a place.
    pub(crate) fn seated(&self) -> usize {
        self.book().seated.len()
    }

    /// Every seated viewer with when it connected, oldest first.
    pub(crate) fn seats(&self) -> Vec<(Seat, Instant)> {
        self.book().seated.iter().copied().collect()
    }

    /// Seats a viewer that connected at `now`, at most `cap` seated in all: when full, the
    /// oldest makes room, or with `reject` the newcomer is refused.
    pub(crate) fn admit(&self, seat: Seat, now: Instant, cap: usize, reject: bool) -> Admission {
        let mut book = self.book();
        if book.seated.iter().any(|s| s.0 == seat) {
            return Admission::Seated { evict: None };
        }
        if book.seated.len() >= cap && reject {
            return Admission::Refused;
        }
        let evict = if book.seated.len() >= cap {
            book.seated.pop_front().map(|s| s.0)
        } else {
            None
        };
        book.seated.push_back((seat, now));
        Admission::Seated { evict }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        // A panic while holding it cannot leave the counts half-written: recover them.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Instant {
        crate::clock::now()
    }

    fn seat(w: usize, i: u32) -> Seat {
        (
            w,
            PeerKey {
                index: i,
                generation: 1,
            },
        )
    }

    #[test]
    fn the_oldest_seated_viewer_makes_room_whatever_its_worker() {
        let a = Audience::default();
        for _ in 0..3 {
            a.joined();
        }
        assert_eq!(
            a.admit(seat(1, 0), now(), 2, false),
            Admission::Seated { evict: None }
        );
        assert_eq!(
            a.admit(seat(0, 0), now(), 2, false),
            Admission::Seated { evict: None }
        );
        assert_eq!(
            a.admit(seat(0, 1), now(), 2, false),
            Admission::Seated {
                evict: Some(seat(1, 0))
            }
        );
        assert_eq!(a.seated(), 2);
        assert_eq!(a.left(seat(1, 0), true), 2, "the evicted session ends");
    }

    #[test]
    fn reject_refuses_the_newcomer_and_leaving_frees_a_seat() {
        let a = Audience::default();
        a.joined();
        a.joined();
        assert_eq!(
            a.admit(seat(0, 0), now(), 1, true),
            Admission::Seated { evict: None }
        );
        assert_eq!(a.admit(seat(1, 0), now(), 1, true), Admission::Refused);
        assert_eq!(a.left(seat(1, 0), true), 1);
        assert_eq!(a.left(seat(0, 0), true), 0);
        assert_eq!(a.seated(), 0);
        assert_eq!(a.left(seat(0, 0), true), 0, "never below zero");
    }

    #[test]
    fn sessions_are_connecting_until_they_connect_or_leave() {
        let a = Audience::default();
        for _ in 0..3 {
            a.joined();
        }
        assert_eq!(a.connecting(), 3);
        a.connected();
        assert_eq!(a.connecting(), 2, "a connected session no longer counts");
        a.left(seat(1, 4), false);
        assert_eq!(a.connecting(), 1, "nor one that gave up connecting");
        a.left(seat(0, 2), true);
        assert_eq!(a.connecting(), 1, "a connected one leaving changes nothing");
        assert_eq!(a.sessions(), 1);
    }
}
