//! A voter's record of its leader's beats, the quorum rounds that also keep
//! its member session (see `node/quorum.rs`).
//!
//! A member's lease must end before the leader could expire its session.
//! With its own heartbeat a member counts the lease from before it sent the
//! heartbeat; the leader renews the session when the heartbeat arrives,
//! which is later. A voter gets the same guarantee from the leader's beats
//! without sending anything of its own:
//!
//! 1. beat `r` arrives at instant `a` (voter's clock) and the voter answers
//!    it; the leader renews the voter's session when the answer arrives,
//!    after `a`;
//! 2. the next beat says "round `r` renewed you", and the voter's lease
//!    then runs from `a`, never from when it heard so.
//!
//! A confirmation naming any other round, or coming from another leader
//! (another vote), renews nothing. The caller (`node/server.rs`) also
//! passes no confirmation on while its own table is older than the one
//! the beat names: a heartbeat's answer brings the member's table up to
//! the leader's before the lease counts, and a renewal on an older table
//! could keep a partition the leader has already taken back. Pure
//! bookkeeping over instants: the caller supplies the clock.

use std::time::Duration;

use openraft::Vote;

use crate::clock::Instant;
use crate::types::NodeId;

/// How recent a beat renewal must be for a voter to skip its own heartbeat
/// (see [`BeatLedger::covers`]): one heartbeat interval, but at least two
/// beats (a renewal runs from the round before the confirming one), and
/// at most half the lease, so that a voter whose beats stopped still has
/// half a lease left to renew by heartbeat.
pub fn skip_window(heartbeat: Duration, raft_heartbeat: Duration, lease: Duration) -> Duration {
    heartbeat.max(raft_heartbeat * 2).min(lease / 2)
}

/// The beat a voter answered last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answered {
    vote: Vote<NodeId>,
    round: u64,
    at: Instant,
}

/// A voter's beats (see the module docs).
#[derive(Debug, Default)]
pub struct BeatLedger {
    last: Option<Answered>,
    /// The instant the lease last ran from, when a beat renewed it.
    renewed_from: Option<Instant>,
}

impl BeatLedger {
    /// Records that the voter accepted beat `round` from the holder of
    /// `vote`, which arrived at `at`. `renewed` is the round whose answer
    /// renewed this voter's session in the leader's table, as the beat
    /// says. Returns the instant the voter's lease now runs from, when the
    /// beat renews it.
    pub fn accepted(
        &mut self,
        vote: Vote<NodeId>,
        round: u64,
        renewed: Option<u64>,
        at: Instant,
    ) -> Option<Instant> {
        let from = match (self.last, renewed) {
            (Some(last), Some(r)) if last.vote == vote && last.round == r => Some(last.at),
            _ => None,
        };
        self.last = Some(Answered { vote, round, at });
        if let Some(from) = from {
            if self.renewed_from.is_none_or(|t| t < from) {
                self.renewed_from = Some(from);
            }
        }
        from
    }

    /// Whether beats renewed the lease from an instant within `within`
    /// before `now`: the voter's own heartbeat would add nothing.
    pub fn covers(&self, now: Instant, within: Duration) -> bool {
        self.renewed_from
            .is_some_and(|from| now.saturating_duration_since(from) < within)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::Vote;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn vote(term: u64, leader: NodeId) -> Vote<NodeId> {
        Vote::new_committed(term, leader)
    }

    #[test]
    fn renews_from_the_answer_not_the_confirmation() {
        let t0 = Instant::now();
        let mut l = BeatLedger::default();
        assert_eq!(l.accepted(vote(2, 1), 7, None, t0), None);
        assert!(!l.covers(t0, 200 * MS));
        // Round 8 confirms round 7: the lease runs from round 7's arrival.
        assert_eq!(l.accepted(vote(2, 1), 8, Some(7), t0 + 50 * MS), Some(t0));
        assert!(l.covers(t0 + 199 * MS, 200 * MS));
        assert!(!l.covers(t0 + 200 * MS, 200 * MS));
    }

    #[test]
    fn other_rounds_and_leaders_renew_nothing() {
        let t0 = Instant::now();
        let mut l = BeatLedger::default();
        l.accepted(vote(2, 1), 7, None, t0);
        // A confirmation of an older round (its answer was lost or late).
        assert_eq!(l.accepted(vote(2, 1), 9, Some(6), t0 + 50 * MS), None);
        // Another leader's round numbers mean nothing here.
        assert_eq!(l.accepted(vote(3, 2), 10, Some(9), t0 + 60 * MS), None);
        assert_eq!(
            l.accepted(vote(3, 2), 11, Some(10), t0 + 70 * MS),
            Some(t0 + 60 * MS)
        );
        // Nothing without a previous answer.
        assert_eq!(
            BeatLedger::default().accepted(vote(2, 1), 1, Some(0), t0),
            None
        );
    }

    #[test]
    fn skip_window_for_the_profiles() {
        // Defaults, the fast profile, the economy profile.
        assert_eq!(skip_window(200 * MS, 50 * MS, 1000 * MS), 200 * MS);
        assert_eq!(skip_window(50 * MS, 50 * MS, 300 * MS), 100 * MS);
        assert_eq!(skip_window(1000 * MS, 150 * MS, 3000 * MS), 1000 * MS);
        assert_eq!(skip_window(500 * MS, 50 * MS, 600 * MS), 300 * MS);
    }

    proptest! {
        /// Whatever arrives, a renewal runs from the arrival of the beat it
        /// names, answered for the same vote and never later than now.
        #[test]
        fn a_renewal_runs_from_an_earlier_answer_of_that_round(
            beats in prop::collection::vec((0u64..3, 0u64..6, prop::option::of(0u64..6), 0u64..40), 1..40),
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut l = BeatLedger::default();
            let mut answered: Vec<(Vote<NodeId>, u64, Instant)> = Vec::new();
            for (term, round, renewed, gap) in beats {
                now += Duration::from_millis(gap);
                let v = vote(term, term);
                let prev = answered.last().copied();
                if let Some(from) = l.accepted(v, round, renewed, now) {
                    let (pv, pr, pat) = prev.expect("a renewal needs an earlier answer");
                    prop_assert_eq!(pv, v);
                    prop_assert_eq!(Some(pr), renewed);
                    prop_assert_eq!(pat, from);
                    prop_assert!(from <= now);
                }
                answered.push((v, round, now));
            }
        }
    }
}
