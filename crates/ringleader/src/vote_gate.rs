//! When a node that has led may vote for someone else.
//!
//! A leader's own partitions rest on quorum confirmations: a confirmation
//! asked at instant `a` and answered by a quorum lets the leader keep its
//! grants until `a` plus one lease. Other voters protect that lease: openraft
//! makes a voter refuse every vote for `election_timeout_max` (its "leader
//! lease") after it last heard from its leader, and the leader's
//! confirmation quorum shares a voter with any quorum that elects a
//! successor. So a successor takes office at least `election_timeout_max`
//! after `a`, which lets it start the previous leader's session that much
//! earlier (`lease::predecessor_head_start`).
//!
//! openraft's refusal does not apply to the leader itself, and the leader is
//! one of the voters: it could confirm its quorum and a moment later vote
//! for its successor. [`VoteGate`] closes that gap. It remembers the start of
//! the last confirmation that counted and refuses to pass votes on to Raft
//! for `hold` after it. A confirmation whose round overlapped a vote that
//! was passed on does not count (the vote may have made Raft step down
//! while the round was in flight), so every confirmation that counts was
//! asked at least `hold` before any vote this node gave a successor.
//!
//! Pure bookkeeping over instants: the caller supplies the clock.

use std::time::Duration;

use crate::clock::Instant;

/// Confirmation rounds and votes of one node (see the module docs).
#[derive(Debug, Default)]
pub struct VoteGate {
    /// Start of the confirmation round in flight.
    asking: Option<Instant>,
    /// Start of the latest confirmation that counted (never forgotten).
    basis: Option<Instant>,
    /// Votes passed on to Raft and not yet answered.
    votes_in_flight: u32,
    /// When the latest vote passed on to Raft was answered.
    last_vote_done: Option<Instant>,
}

impl VoteGate {
    /// A confirmation round starts at `now`.
    pub fn begin_ask(&mut self, now: Instant) {
        self.asking = Some(now);
    }

    /// The round in flight ended; `confirmed` says whether a quorum
    /// answered. Returns the instant the confirmation counts from, or
    /// `None` when it does not count: it failed, or a vote was passed on
    /// while it was in flight.
    pub fn end_ask(&mut self, confirmed: bool) -> Option<Instant> {
        let asked = self.asking.take()?;
        let overlapped_a_vote =
            self.votes_in_flight > 0 || self.last_vote_done.is_some_and(|t| t >= asked);
        if !confirmed || overlapped_a_vote {
            return None;
        }
        if self.basis.is_none_or(|b| b < asked) {
            self.basis = Some(asked);
        }
        Some(asked)
    }

    /// Whether a vote request may go on to Raft at `now`: not within `hold`
    /// of the start of the last confirmation that counted. When it may, the
    /// vote is counted as in flight until [`VoteGate::vote_done`].
    pub fn try_pass_vote(&mut self, now: Instant, hold: Duration) -> bool {
        if self.basis.is_some_and(|b| now < b + hold) {
            return false;
        }
        self.votes_in_flight += 1;
        true
    }

    /// Raft answered a vote that [`VoteGate::try_pass_vote`] let through.
    pub fn vote_done(&mut self, now: Instant) {
        self.votes_in_flight = self.votes_in_flight.saturating_sub(1);
        if self.last_vote_done.is_none_or(|t| t < now) {
            self.last_vote_done = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOLD: Duration = Duration::from_millis(200);

    #[derive(Debug, Clone)]
    enum Step {
        Advance(u64),
        BeginAsk,
        EndAsk(bool),
        PassVote,
        VoteDone,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..120).prop_map(Step::Advance),
            Just(Step::BeginAsk),
            any::<bool>().prop_map(Step::EndAsk),
            Just(Step::PassVote),
            Just(Step::VoteDone),
        ]
    }

    #[test]
    fn refuses_votes_for_hold_after_a_confirmation() {
        let t0 = Instant::now();
        let mut g = VoteGate::default();
        assert!(g.try_pass_vote(t0, HOLD), "never led: votes freely");
        g.vote_done(t0);
        g.begin_ask(t0 + Duration::from_millis(10));
        assert_eq!(g.end_ask(true), Some(t0 + Duration::from_millis(10)));
        assert!(!g.try_pass_vote(t0 + Duration::from_millis(209), HOLD));
        assert!(g.try_pass_vote(t0 + Duration::from_millis(210), HOLD));
    }

    #[test]
    fn a_round_that_overlaps_a_vote_does_not_count() {
        let t0 = Instant::now();
        let mut g = VoteGate::default();
        g.begin_ask(t0);
        assert!(g.try_pass_vote(t0 + Duration::from_millis(1), HOLD));
        g.vote_done(t0 + Duration::from_millis(2));
        assert_eq!(g.end_ask(true), None);
        // A vote still in flight when the round started spoils it too.
        assert!(g.try_pass_vote(t0 + Duration::from_millis(3), HOLD));
        g.begin_ask(t0 + Duration::from_millis(4));
        assert_eq!(g.end_ask(true), None);
        g.vote_done(t0 + Duration::from_millis(5));
        // A round started after every vote was answered counts.
        g.begin_ask(t0 + Duration::from_millis(6));
        assert_eq!(g.end_ask(true), Some(t0 + Duration::from_millis(6)));
        assert_eq!(g.end_ask(true), None, "no round in flight");
    }

    proptest! {
        /// The property the head start rests on: every vote passed on to
        /// Raft comes at least `hold` after the start of every confirmation
        /// that counted, whichever came first.
        #[test]
        fn votes_and_counted_confirmations_are_hold_apart(
            steps in proptest::collection::vec(step(), 0..80)
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut g = VoteGate::default();
            let mut counted = Vec::new();
            // (passed at, answered at) of each vote let through.
            let mut votes: Vec<(Instant, Option<Instant>)> = Vec::new();
            for s in steps {
                match s {
                    Step::Advance(ms) => now += Duration::from_millis(ms),
                    Step::BeginAsk => g.begin_ask(now),
                    Step::EndAsk(ok) => counted.extend(g.end_ask(ok)),
                    Step::PassVote => {
                        if g.try_pass_vote(now, HOLD) {
                            votes.push((now, None));
                        }
                    }
                    Step::VoteDone => {
                        if let Some(v) = votes.iter_mut().find(|v| v.1.is_none()) {
                            v.1 = Some(now);
                            g.vote_done(now);
                        }
                    }
                }
            }
            for a in &counted {
                for (passed, answered) in &votes {
                    // Either Raft had answered the vote before the round
                    // started (so it could not confirm a stepped-down
                    // leader), or the vote came a full `hold` later.
                    let before = answered.is_some_and(|d| d < *a);
                    prop_assert!(
                        before || *passed >= *a + HOLD,
                        "vote {:?}..{:?} vs ask {:?}",
                        *passed - t0,
                        answered.map(|d| d - t0),
                        *a - t0
                    );
                }
            }
        }
    }
}
