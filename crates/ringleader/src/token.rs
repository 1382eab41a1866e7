//! Fencing tokens and leadership epochs.
//!
//! A token is a `u64` made of two halves:
//!
//! ```text
//!   token = (cluster_created_unix_secs << 32) | log_index
//! ```
//!
//! * `log_index` is the Raft log index of the committed entry that made the
//!   grant (or started the leadership epoch). Within one cluster life indices
//!   only rise, so tokens do too.
//! * `cluster_created_unix_secs` is the wall-clock second at which the
//!   cluster was created. With data directories a full restart resumes the
//!   same log, and the same life. Without them (ephemeral nodes), after
//!   *every* node restarts at once the log starts again at a low index; the
//!   creation component makes the new life's tokens larger than every token
//!   of the previous life. `ringleader recover` starts a new life the same
//!   way (`crate::raft::recover`). The bootstrapping node waits for the next whole second
//!   before it stamps the creation time, so two lives can never share a
//!   creation second (assumption: the bootstrapping node's wall clock does not
//!   step backwards across a full restart).
//!
//! The index half has 32 bits: about 4.3 billion log entries per cluster
//! life. Entries are written on membership and ownership changes only (never
//! on heartbeats), so this is centuries at realistic churn.

/// Number of bits reserved for the log index.
pub const INDEX_BITS: u32 = 32;

/// Builds the token for the entry at `index` of a cluster created at
/// `created_secs` (Unix seconds).
///
/// Indices beyond 32 bits saturate, so a token never wraps below an earlier
/// one (see the module docs for why this is unreachable in practice).
pub fn make_token(created_secs: u32, index: u64) -> u64 {
    let index = index.min(u64::from(u32::MAX));
    (u64::from(created_secs) << INDEX_BITS) | index
}

/// Splits a token into `(created_secs, index)`.
pub fn split_token(token: u64) -> (u32, u64) {
    // The shift leaves at most 32 significant bits, so the cast is lossless.
    let created = (token >> INDEX_BITS) as u32;
    (created, token & u64::from(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(created in any::<u32>(), index in 0u64..=u64::from(u32::MAX)) {
            prop_assert_eq!(split_token(make_token(created, index)), (created, index));
        }

        #[test]
        fn later_life_always_wins(created in 0u32..u32::MAX, a in any::<u64>(), b in any::<u64>()) {
            prop_assert!(make_token(created + 1, b) > make_token(created, a));
        }

        #[test]
        fn rises_with_index(created in any::<u32>(), a in 0u64..u64::from(u32::MAX)) {
            prop_assert!(make_token(created, a + 1) > make_token(created, a));
        }
    }
}
