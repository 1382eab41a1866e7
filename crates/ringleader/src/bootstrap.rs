//! The bootstrap rule: who may create a cluster, and when.
//!
//! A node without a data directory keeps no state, and even one with a data
//! directory may be new, so "is there a cluster already?" has to be
//! answered by asking. The rule that guarantees nodes started from one seed
//! list form exactly one cluster:
//!
//! 1. A node with no seeds, or whose only seed is itself, creates a
//!    single-node cluster at once.
//! 2. Otherwise only the **bootstrap seed** (the lowest seed address, by
//!    byte order of the strings as written) may create the cluster, and only
//!    after a majority of the seed list (itself included) answered that it
//!    belongs to no cluster. Every other node waits until it finds a seed
//!    that belongs to a cluster and joins through it.
//! 3. A node that finds any seed already in a cluster joins it, even if it is
//!    the bootstrap seed (this is how a restarted bootstrap seed rejoins).
//!
//! Because exactly one address can be the bootstrap seed, two clusters can
//! only arise if the bootstrap seed restarts while a majority of the seeds is
//! unreachable *and* the old cluster survives on the others. Seed addresses
//! must be spelled the way nodes advertise themselves (`--listen`), and all
//! nodes should use the same seed list.

use std::collections::BTreeSet;

/// What a probe of one seed found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedState {
    /// No answer (not started, unreachable, refused us).
    Unreachable,
    /// It answered and belongs to no cluster yet.
    Unclustered,
    /// It answered and belongs to a cluster; `leader` is the leader's peer
    /// address when it knows one.
    Clustered {
        /// The leader's peer address, if known.
        leader: Option<String>,
    },
}

/// What the node should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Create the cluster now.
    Bootstrap,
    /// Ask these addresses, in order, to admit us.
    Join(Vec<String>),
    /// Probe again later.
    Wait,
}

/// The distinct seeds, excluding empty strings, in order.
pub fn normalize_seeds<S: AsRef<str>>(seeds: &[S]) -> BTreeSet<String> {
    seeds
        .iter()
        .map(|s| s.as_ref().trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The seeds other than `me` that must be probed.
pub fn peers_to_probe(me: &str, seeds: &BTreeSet<String>) -> Vec<String> {
    seeds.iter().filter(|s| s.as_str() != me).cloned().collect()
}

/// Applies the bootstrap rule to the probe results of every seed but `me`.
pub fn decide(me: &str, seeds: &BTreeSet<String>, probes: &[(String, SeedState)]) -> Decision {
    let others: Vec<&String> = seeds.iter().filter(|s| s.as_str() != me).collect();
    if others.is_empty() {
        return Decision::Bootstrap;
    }
    let mut targets = Vec::new();
    for (addr, state) in probes {
        if let SeedState::Clustered { leader } = state {
            if let Some(leader) = leader {
                if !targets.contains(leader) {
                    targets.push(leader.clone());
                }
            }
            if !targets.contains(addr) {
                targets.push(addr.clone());
            }
        }
    }
    if !targets.is_empty() {
        return Decision::Join(targets);
    }
    let i_am_bootstrap_seed = seeds.iter().next().is_some_and(|lowest| lowest == me);
    if !i_am_bootstrap_seed {
        return Decision::Wait;
    }
    let unclustered = probes
        .iter()
        .filter(|(addr, state)| seeds.contains(addr) && *state == SeedState::Unclustered)
        .count();
    // `me` counts as one unclustered seed.
    if (1 + unclustered) * 2 > seeds.len() {
        Decision::Bootstrap
    } else {
        Decision::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seeds(list: &[&str]) -> BTreeSet<String> {
        normalize_seeds(list)
    }

    #[test]
    fn alone_bootstraps() {
        assert_eq!(decide("a:1", &seeds(&[]), &[]), Decision::Bootstrap);
        assert_eq!(decide("a:1", &seeds(&["a:1"]), &[]), Decision::Bootstrap);
        assert_eq!(
            decide("a:1", &seeds(&[" a:1 ", ""]), &[]),
            Decision::Bootstrap
        );
    }

    #[test]
    fn only_lowest_seed_bootstraps_with_majority() {
        let s = seeds(&["h:3", "h:1", "h:2"]);
        let none = [
            ("h:2".to_string(), SeedState::Unreachable),
            ("h:3".to_string(), SeedState::Unreachable),
        ];
        assert_eq!(decide("h:1", &s, &none), Decision::Wait);
        let one = [
            ("h:2".to_string(), SeedState::Unclustered),
            ("h:3".to_string(), SeedState::Unreachable),
        ];
        assert_eq!(decide("h:1", &s, &one), Decision::Bootstrap);
        let probes = [
            ("h:1".to_string(), SeedState::Unclustered),
            ("h:3".to_string(), SeedState::Unclustered),
        ];
        assert_eq!(decide("h:2", &s, &probes), Decision::Wait);
    }

    #[test]
    fn clustered_seed_wins_over_bootstrapping() {
        let s = seeds(&["h:1", "h:2", "h:3"]);
        let probes = [
            (
                "h:2".to_string(),
                SeedState::Clustered {
                    leader: Some("h:3".into()),
                },
            ),
            ("h:3".to_string(), SeedState::Unclustered),
        ];
        assert_eq!(
            decide("h:1", &s, &probes),
            Decision::Join(vec!["h:3".into(), "h:2".into()])
        );
    }

    #[test]
    fn non_seed_never_bootstraps() {
        let s = seeds(&["h:1", "h:2"]);
        let probes = [
            ("h:1".to_string(), SeedState::Unclustered),
            ("h:2".to_string(), SeedState::Unclustered),
        ];
        assert_eq!(decide("h:0", &s, &probes), Decision::Wait);
    }

    proptest! {
        /// Whatever each node sees, at most one node of a seed list decides to
        /// bootstrap while no cluster exists yet.
        #[test]
        fn at_most_one_bootstrapper(
            n in 1usize..7,
            views in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 7), 7),
        ) {
            let addrs: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:7000")).collect();
            let s = normalize_seeds(&addrs);
            let mut bootstrappers = 0;
            for (i, me) in addrs.iter().enumerate() {
                let probes: Vec<(String, SeedState)> = addrs
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(j, a)| {
                        let state = if views[i][j] { SeedState::Unclustered } else { SeedState::Unreachable };
                        (a.clone(), state)
                    })
                    .collect();
                if decide(me, &s, &probes) == Decision::Bootstrap {
                    bootstrappers += 1;
                }
            }
            prop_assert!(bootstrappers <= 1);
        }
    }
}
