//! Who goes when a broadcast has more viewers across the cluster than `--max-viewers`: the
//! longest connected (or with `--when-full reject`, the newest), wherever they watch. The
//! origin (http/cluster.rs) and an edge passing evictions down its chain (edge/beat.rs)
//! decide the same way.

use std::time::Duration;

/// Where a viewer watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holder {
    /// This server (the origin, or the edge passing an eviction down its chain).
    Origin,
    /// An index into the edges of one check.
    Edge(usize),
}

/// Who gives up how many places so that `max` viewers remain: the oldest (longest
/// connected) go, or with `newest` the most recently connected.
pub(crate) fn pick(
    viewers: &mut [(Duration, Holder)],
    max: usize,
    newest: bool,
) -> Vec<(Holder, usize)> {
    let excess = viewers.len().saturating_sub(max);
    if excess == 0 {
        return Vec::new();
    }
    viewers.sort_by_key(|v| std::cmp::Reverse(v.0));
    let going = if newest {
        &viewers[viewers.len() - excess..]
    } else {
        &viewers[..excess]
    };
    let mut counts: Vec<(Holder, usize)> = Vec::new();
    for (_, holder) in going {
        match counts.iter_mut().find(|(h, _)| h == holder) {
            Some((_, n)) => *n += 1,
            None => counts.push((*holder, 1)),
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_oldest_viewers_go_wherever_they_watch() {
        let mut v = vec![
            (secs(5), Holder::Origin),
            (secs(30), Holder::Edge(0)),
            (secs(20), Holder::Edge(1)),
            (secs(1), Holder::Edge(1)),
        ];
        assert_eq!(
            pick(&mut v, 2, false),
            vec![(Holder::Edge(0), 1), (Holder::Edge(1), 1)]
        );
        assert_eq!(pick(&mut v, 3, false), vec![(Holder::Edge(0), 1)]);
        assert_eq!(pick(&mut v, 4, false), vec![]);
    }

    #[test]
    fn with_reject_the_newest_viewers_go() {
        let mut v = vec![
            (secs(30), Holder::Edge(0)),
            (secs(1), Holder::Origin),
            (secs(20), Holder::Edge(1)),
        ];
        assert_eq!(pick(&mut v, 2, true), vec![(Holder::Origin, 1)]);
        assert_eq!(pick(&mut v, 0, true).len(), 3);
    }
}
