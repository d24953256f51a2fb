//! The one timer index: each peer has at most one deadline, the engine exposes the earliest.

use std::collections::BTreeSet;
use std::time::Instant;

use super::key::PeerKey;

/// Deadlines ordered by time. A peer's entry is replaced, never duplicated, so the set holds
/// at most one entry per peer and popping the due ones is O(due · log n).
#[derive(Default)]
pub(crate) struct Deadlines {
    set: BTreeSet<(Instant, PeerKey)>,
}

impl Deadlines {
    /// Moves `key`'s deadline from `old` (what the peer had) to `new`.
    pub(crate) fn update(&mut self, key: PeerKey, old: Option<Instant>, new: Option<Instant>) {
        if old == new {
            return;
        }
        if let Some(t) = old {
            self.set.remove(&(t, key));
        }
        if let Some(t) = new {
            self.set.insert((t, key));
        }
    }

    pub(crate) fn earliest(&self) -> Option<Instant> {
        self.set.first().map(|(t, _)| *t)
    }

    /// Removes and returns every peer due at `now`, into `out` (a reused buffer).
    pub(crate) fn pop_due(&mut self, now: Instant, out: &mut Vec<PeerKey>) {
        while let Some(&(t, key)) = self.set.first() {
            if t > now {
                break;
            }
            self.set.pop_first();
            out.push(key);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests pick their own start instant
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn earliest_deadline_wins_and_updates_replace() {
        let t0 = Instant::now();
        let a = PeerKey {
            index: 0,
            generation: 1,
        };
        let b = PeerKey {
            index: 1,
            generation: 2,
        };
        let mut d = Deadlines::default();
        d.update(a, None, Some(t0 + Duration::from_millis(50)));
        d.update(b, None, Some(t0 + Duration::from_millis(10)));
        assert_eq!(d.earliest(), Some(t0 + Duration::from_millis(10)));
        d.update(
            b,
            Some(t0 + Duration::from_millis(10)),
            Some(t0 + Duration::from_millis(90)),
        );
        assert_eq!(d.len(), 2);
        let mut due = Vec::new();
        d.pop_due(t0 + Duration::from_millis(60), &mut due);
        assert_eq!(due, vec![a]);
        assert_eq!(d.earliest(), Some(t0 + Duration::from_millis(90)));
    }
}
