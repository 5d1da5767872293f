//! Per-partition event-time watermarks, moved only by a quorum of recent
//! records.

use crate::EventTime;
use alloc::vec::Vec;

/// How many of a partition's recent records must agree before its
/// watermark moves: the partition's *frontier* `F_p` rises to `t` once at
/// least `quorum` of its last `history` samples (new clicks and
/// heartbeats) are at `t` or later. `W_p = F_p - out_of_orderness_ms`.
///
/// With `quorum` 1 the frontier is the largest event time seen, the
/// classic bounded-out-of-orderness watermark, which one record far ahead
/// of the others moves for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quorum {
    /// Samples that must be at `t` or later [5].
    pub quorum: u32,
    /// How many of the latest samples are looked at [32].
    pub history: u32,
}

/// `W_p = F_p - out_of_orderness`, or nothing before a quorum of samples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watermark {
    frontier: Option<EventTime>,
    out_of_orderness_ms: i64,
    rule: Quorum,
    /// Samples observed so far: the sequence number of the next one.
    samples: u64,
    /// The samples above the frontier among the last `history`, oldest
    /// first, as (sequence number, time); fewer than `quorum` between
    /// calls.
    ahead: Vec<(u64, EventTime)>,
}

impl Watermark {
    /// A watermark that has seen nothing yet.
    pub fn new(out_of_orderness_ms: i64, rule: Quorum) -> Watermark {
        Watermark {
            frontier: None,
            out_of_orderness_ms,
            rule,
            samples: 0,
            ahead: Vec::new(),
        }
    }

    /// The current watermark, once a quorum of samples agreed on a time.
    pub fn current(&self) -> Option<i64> {
        self.frontier
            .map(|t| t.0.saturating_sub(self.out_of_orderness_ms))
    }

    /// The frontier `F_p`: the latest time a quorum of recent samples
    /// reached.
    pub fn frontier(&self) -> Option<EventTime> {
        self.frontier
    }

    /// The samples above the frontier that are still within the history,
    /// oldest first, with how many samples ago each came (0: the latest).
    fn ahead(&self) -> impl Iterator<Item = (u64, EventTime)> + '_ {
        let last = self.samples.saturating_sub(1);
        self.ahead.iter().map(move |&(seq, t)| (last - seq, t))
    }

    /// Records the event time of a sample; returns true when the
    /// watermark moved.
    #[inline]
    pub fn observe(&mut self, t: EventTime) -> bool {
        let seq = self.samples;
        self.samples += 1;
        // Samples older than the last `history` (this one included) no
        // longer count towards a quorum.
        let oldest = (seq + 1).saturating_sub(self.rule.history.into());
        if self.ahead.first().is_some_and(|&(s, _)| s < oldest) {
            self.ahead.retain(|&(s, _)| s >= oldest);
        }
        if self.frontier.is_some_and(|f| t <= f) {
            return false;
        }
        // A quorum is of distinct times, so repeats of one record (or one
        // heartbeat) never make one: a time already ahead is only seen
        // again, later.
        if let Some(i) = self.ahead.iter().position(|&(_, x)| x == t) {
            self.ahead.remove(i);
            self.ahead.push((seq, t));
            return false;
        }
        self.ahead.push((seq, t));
        if self.ahead.len() < self.rule.quorum as usize {
            return false;
        }
        // Exactly `quorum` samples are above the frontier: the lowest of
        // them is the latest time a quorum reached.
        let f = self.ahead.iter().map(|&(_, t)| t).min().expect("not empty");
        self.ahead.retain(|&(_, x)| x > f);
        self.frontier = Some(f);
        true
    }

    /// The state to snapshot: (samples, frontier, the samples ahead as
    /// (how many samples ago, time)).
    pub(crate) fn to_parts(&self) -> (u64, Option<i64>, Vec<(u64, i64)>) {
        let ahead = self.ahead().map(|(ago, t)| (ago, t.0)).collect();
        (self.samples, self.frontier.map(|t| t.0), ahead)
    }

    /// A watermark from [`Watermark::to_parts`]; `None` when the parts
    /// are not a state this rule can be in.
    pub(crate) fn from_parts(
        out_of_orderness_ms: i64,
        rule: Quorum,
        samples: u64,
        frontier: Option<i64>,
        ahead: &[(u64, i64)],
    ) -> Option<Watermark> {
        let last = samples.checked_sub(1);
        let mut w = Watermark::new(out_of_orderness_ms, rule);
        w.samples = samples;
        w.frontier = frontier.map(EventTime);
        let mut prev: Option<u64> = None;
        for &(ago, t) in ahead {
            // Oldest first, within the history, above the frontier.
            let seq = last?.checked_sub(ago)?;
            let in_order = prev.is_none_or(|p| seq > p);
            let kept = ago < u64::from(rule.history) && frontier.is_none_or(|f| t > f);
            if !in_order || !kept {
                return None;
            }
            prev = Some(seq);
            w.ahead.push((seq, EventTime(t)));
        }
        (w.ahead.len() < rule.quorum as usize).then_some(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wm(quorum: u32, history: u32) -> Watermark {
        Watermark::new(0, Quorum { quorum, history })
    }

    #[test]
    fn quorum_one_is_the_maximum() {
        let mut w = wm(1, 1);
        assert!(w.observe(EventTime(5)));
        assert!(!w.observe(EventTime(3)));
        assert!(w.observe(EventTime(9)));
        assert_eq!(w.current(), Some(9));
    }

    #[test]
    fn one_record_far_ahead_never_moves_it() {
        let mut w = wm(3, 8);
        for t in 1..=3 {
            w.observe(EventTime(t));
        }
        assert_eq!(w.current(), Some(1));
        // A quorum of 3 is at 2 or later (2, 3 and the far one): no further.
        assert!(w.observe(EventTime(i64::MAX)));
        assert_eq!(w.current(), Some(2));
        for _ in 0..10 {
            assert!(!w.observe(EventTime(i64::MAX)), "repeats are no quorum");
        }
        for t in 4..100 {
            w.observe(EventTime(t));
        }
        assert_eq!(w.current(), Some(97), "the third latest of the stream");
    }

    #[test]
    fn distinct_times_make_a_quorum() {
        let mut w = wm(2, 4);
        w.observe(EventTime(7));
        assert!(!w.observe(EventTime(7)));
        assert_eq!(w.current(), None);
        assert!(w.observe(EventTime(8)));
        assert_eq!(w.current(), Some(7));
    }

    #[test]
    fn a_quorum_must_come_within_the_history() {
        let mut w = wm(2, 3);
        w.observe(EventTime(10));
        assert!(w.observe(EventTime(20)));
        assert_eq!(w.current(), Some(10), "20 is ahead, alone");
        w.observe(EventTime(5));
        w.observe(EventTime(6)); // 20 is now 3 samples ago: out of the history
        assert!(!w.observe(EventTime(600)), "20 no longer agrees");
        assert_eq!(w.current(), Some(10));
        assert!(w.observe(EventTime(700)), "600 and 700 agree on 600");
        assert_eq!(w.current(), Some(600));
    }

    #[test]
    fn parts_round_trip_and_refuse_what_cannot_be() {
        let rule = Quorum {
            quorum: 3,
            history: 8,
        };
        let mut w = Watermark::new(7, rule);
        for t in [5, 6, 7, 50, 1, 60] {
            w.observe(EventTime(t));
        }
        let (samples, frontier, ahead) = w.to_parts();
        assert_eq!(ahead, [(2, 50), (0, 60)]);
        let back = Watermark::from_parts(7, rule, samples, frontier, &ahead).unwrap();
        assert_eq!(back, w);
        let from = |ahead: &[(u64, i64)]| Watermark::from_parts(7, rule, samples, frontier, ahead);
        assert!(from(&[(0, 60), (2, 50)]).is_none(), "out of order");
        assert!(from(&[(8, 60)]).is_none(), "outside the history");
        assert!(from(&[(0, 5)]).is_none(), "not above the frontier");
        assert!(from(&[(9, 60)]).is_none(), "before the first sample");
        assert!(from(&[(2, 50), (1, 51), (0, 60)]).is_none(), "a quorum");
    }
}
