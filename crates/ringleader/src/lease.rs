//! Lease arithmetic. Pure: every function takes times as arguments.
//!
//! # The assumption
//!
//! Clocks are never compared across machines. Each node measures only
//! durations, on its own monotonic clock, and we assume that any two clocks
//! *run at rates* that differ from real time by at most `drift` (a fraction,
//! e.g. 0.01 for 1 %). Nothing is assumed about their offsets.
//!
//! # Holder side
//!
//! A node sends a heartbeat at its local time `sent`. When the leader's
//! acknowledgement comes back, the node may act as owner until
//!
//! ```text
//!   sent + lease - margin(lease)
//! ```
//!
//! on its own clock. The leader received the heartbeat after `sent`, so it
//! measures the lease from a later instant.
//!
//! # Leader side
//!
//! The leader takes a node's partitions away without its acknowledgement only
//! after `lease` has passed on the leader's clock since it last *received* a
//! heartbeat from that node (the session timeout is at least the lease). In
//! real time the holder stops after at most `(lease - margin) / (1 - drift)`
//! and the leader waits at least `lease / (1 + drift)`; the margin makes the
//! first no larger than the second:
//!
//! ```text
//!   margin(d) >= d * 2·drift / (1 + drift)
//! ```
//!
//! plus one millisecond for rounding. The same rule covers revocation
//! deadlines: the leader tells the holder how much time is left before it
//! will release the partition, measured from its answer, and the holder
//! stops `margin(remaining)` earlier, counting from its own send time.
//!
//! # New leaders
//!
//! A leader acknowledges heartbeats only while a quorum acknowledged it
//! within the minimum election timeout, and voters refuse to elect a
//! successor until the maximum election timeout has passed since they heard
//! from it (see `Core::raft_leads`). So every lease an old leader granted
//! was granted before its successor took office. The successor starts every
//! member's session afresh when it takes office, and so waits at least one
//! full lease before it takes anything away from a silent node.

use std::time::Duration;

/// Clock-rate bound in parts per million (10 000 = 1 %).
pub type DriftPpm = u32;

/// How much earlier than the leader a holder must stop, for a span `d`.
pub fn margin(d: Duration, drift_ppm: DriftPpm) -> Duration {
    let d_us = d.as_micros();
    let ppm = u128::from(drift_ppm);
    // d * 2ρ / (1 + ρ), ρ = ppm / 1e6, rounded up, plus 1 ms.
    let num = d_us * 2 * ppm;
    let den = 1_000_000 + ppm;
    let us = num.div_ceil(den) + 1_000;
    Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
}

/// How long after sending a heartbeat (that was then acknowledged) the
/// sender may act as owner.
pub fn holder_validity(lease: Duration, drift_ppm: DriftPpm) -> Duration {
    lease.saturating_sub(margin(lease, drift_ppm))
}

/// How long after sending a heartbeat the sender may keep working on a
/// partition the leader said it would release `remaining` after answering.
pub fn holder_revocation(remaining: Duration, drift_ppm: DriftPpm) -> Duration {
    remaining.saturating_sub(margin(remaining, drift_ppm))
}

/// How much earlier than its own start a new leader may date the session
/// of the previous epoch's leader.
///
/// The old leader's own lease starts when it asked for its last quorum
/// confirmation. The new leader's quorum of votes shares a voter with that
/// confirmation's quorum, and that voter refused every vote for
/// `leader_lease` (openraft's `election_timeout_max`) after the
/// confirmation: a follower because openraft refuses votes for that long
/// after it last heard from its leader, the old leader itself because its
/// [`crate::vote_gate::VoteGate`] does. So the new leader took office at
/// least `leader_lease` after the old leader's lease started, as measured
/// by that voter's clock: less the drift margin on the new leader's.
pub fn predecessor_head_start(leader_lease: Duration, drift_ppm: DriftPpm) -> Duration {
    leader_lease.saturating_sub(margin(leader_lease, drift_ppm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_predecessor_head_start_is_less_than_the_voters_lease() {
        let lease = Duration::from_millis(200);
        let head = predecessor_head_start(lease, 10_000);
        assert!(head < lease);
        assert!(head >= Duration::from_millis(190), "{head:?}");
        assert_eq!(
            predecessor_head_start(Duration::ZERO, 10_000),
            Duration::ZERO
        );
    }
    use proptest::prelude::*;

    #[test]
    fn default_margin_is_small() {
        // 1 s lease, 1 % drift: about 20 ms.
        let m = margin(Duration::from_secs(1), 10_000);
        assert!(
            m >= Duration::from_millis(20) && m <= Duration::from_millis(22),
            "{m:?}"
        );
        assert_eq!(margin(Duration::ZERO, 10_000), Duration::from_millis(1));
    }

    proptest! {
        /// The holder's last instant of validity, at the slowest real rate
        /// its clock may run, comes no later than the leader's first
        /// instant of reassignment at the fastest rate the leader's clock
        /// may run, even when the leader received the heartbeat the moment
        /// it was sent.
        #[test]
        fn holder_stops_before_leader_reassigns(
            lease_ms in 1u64..120_000,
            drift_ppm in 0u32..100_000,
        ) {
            let lease = Duration::from_millis(lease_ms);
            let rho = f64::from(drift_ppm) / 1e6;
            let holder = holder_validity(lease, drift_ppm).as_secs_f64() / (1.0 - rho);
            let leader = lease.as_secs_f64() / (1.0 + rho);
            prop_assert!(holder <= leader, "holder {holder} > leader {leader}");
        }

        #[test]
        fn margin_grows_with_span(a in 0u64..1_000_000, b in 0u64..1_000_000, drift in 0u32..100_000) {
            let (lo, hi) = (a.min(b), a.max(b));
            prop_assert!(margin(Duration::from_millis(lo), drift) <= margin(Duration::from_millis(hi), drift));
        }
    }
}
