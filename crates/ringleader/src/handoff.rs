//! The leader's rebalancing step, as a pure function.
//!
//! Given the committed partition table, the nodes that may own partitions,
//! and what the leader knows about revocations in flight, [`plan`] says what
//! to commit next, in this order: releases, revocations, grants. Grants only
//! name partitions that are unassigned once the releases apply, so the
//! sequence is always revoke -> release -> grant, never a second owner.

use std::collections::{BTreeMap, BTreeSet};

use crate::assignment;
use crate::partitions::{PartitionTable, SlotState};
use crate::types::NodeId;

/// What to commit next (each list becomes one log entry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Revoking partitions whose owner acknowledged or whose deadline passed.
    pub release: Vec<u32>,
    /// Owned partitions that must move.
    pub revoke: Vec<u32>,
    /// Unassigned partitions and their new owners.
    pub grant: Vec<(u32, NodeId)>,
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.release.is_empty() && self.revoke.is_empty() && self.grant.is_empty()
    }
}

/// Computes the next step.
///
/// * `eligible`: nodes that may own partitions (live members that are not
///   leaving).
/// * `deadlines`: for each revoking partition, the leader-clock instant after
///   which it may release the partition without an acknowledgement (a
///   revoking partition missing here is not released on time grounds).
/// * `acked`: revoking partitions whose owner said it stopped.
/// * `now`: the leader's clock, in the same unit as `deadlines`.
pub fn plan<T: Ord + Copy>(
    table: &PartitionTable,
    eligible: &BTreeSet<NodeId>,
    deadlines: &BTreeMap<u32, T>,
    acked: &BTreeSet<u32>,
    now: T,
) -> Plan {
    let mut out = Plan::default();
    if eligible.is_empty() {
        // Nobody could take anything over (the last node is leaving): keep
        // every partition where it is rather than revoke it into the void.
        return out;
    }
    let mut free: BTreeSet<u32> = BTreeSet::new();
    for (p, slot) in table.slots().iter().enumerate() {
        let p = u32::try_from(p).unwrap_or(u32::MAX);
        match slot.state {
            SlotState::Unassigned => {
                free.insert(p);
            }
            SlotState::Revoking => {
                if acked.contains(&p) || deadlines.get(&p).is_some_and(|d| *d <= now) {
                    out.release.push(p);
                    free.insert(p);
                }
            }
            SlotState::Owned => {}
        }
    }
    // The target: partitions stay with eligible owners up to quota.
    // Revoking partitions are on their way out and count for nobody.
    let current: Vec<Option<NodeId>> = table
        .slots()
        .iter()
        .map(|s| match s.state {
            SlotState::Owned => s.owner.filter(|o| eligible.contains(o)),
            _ => None,
        })
        .collect();
    let target = assignment::assign(eligible, &current);
    for (p, slot) in table.slots().iter().enumerate() {
        if slot.state == SlotState::Owned && target.get(p).copied().flatten() != slot.owner {
            out.revoke.push(u32::try_from(p).unwrap_or(u32::MAX));
        }
    }
    for p in free {
        if let Some(Some(node)) = target.get(p as usize) {
            out.grant.push((p, *node));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partitions::PartitionOp;
    use proptest::prelude::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    /// Runs plan/apply rounds with every owner acknowledging at once, until
    /// nothing is left to do.
    fn settle(table: &mut PartitionTable, eligible: &BTreeSet<u64>, index: &mut u64) -> usize {
        let mut rounds = 0;
        loop {
            let acked: BTreeSet<u32> = table
                .slots()
                .iter()
                .enumerate()
                .filter(|(_, s)| s.state == SlotState::Revoking)
                .map(|(p, _)| p as u32)
                .collect();
            let plan = plan(table, eligible, &BTreeMap::<u32, u64>::new(), &acked, 0);
            if plan.is_empty() {
                return rounds;
            }
            rounds += 1;
            assert!(rounds < 10, "does not settle");
            let members: BTreeSet<u64> = eligible.clone();
            for op in [
                PartitionOp::Release(plan.release),
                PartitionOp::Revoke(plan.revoke),
                PartitionOp::Grant(plan.grant),
            ] {
                *index += 1;
                table.apply(*index, &op, &members);
            }
        }
    }

    #[test]
    fn fresh_table_is_granted_in_one_step() {
        let mut t = PartitionTable::new(10);
        let mut i = 0;
        assert_eq!(settle(&mut t, &set(&[1, 2, 3]), &mut i), 1);
        let counts = assignment::counts(&t.owners());
        assert_eq!(
            counts
                .values()
                .copied()
                .collect::<Vec<_>>()
                .iter()
                .sum::<u32>(),
            10
        );
    }

    #[test]
    fn no_release_without_ack_or_deadline() {
        let mut t = PartitionTable::new(2);
        let m = set(&[1, 2]);
        t.apply(1, &PartitionOp::Grant(vec![(0, 1), (1, 1)]), &m);
        t.apply(2, &PartitionOp::Revoke(vec![0]), &m);
        let deadlines = BTreeMap::from([(0u32, 50u64)]);
        let p = plan(&t, &m, &deadlines, &BTreeSet::new(), 10);
        assert!(p.release.is_empty());
        assert!(p.grant.is_empty(), "{p:?}");
        let p = plan(&t, &m, &deadlines, &BTreeSet::new(), 50);
        assert_eq!(p.release, vec![0]);
        assert_eq!(p.grant, vec![(0, 2)]);
    }

    #[test]
    fn nothing_moves_when_nobody_could_take_it() {
        let mut t = PartitionTable::new(3);
        let m = set(&[1]);
        t.apply(1, &PartitionOp::Grant(vec![(0, 1), (1, 1), (2, 1)]), &m);
        let p = plan(
            &t,
            &BTreeSet::new(),
            &BTreeMap::<u32, u64>::new(),
            &BTreeSet::new(),
            0,
        );
        assert!(p.is_empty(), "{p:?}");
    }

    proptest! {
        /// Over random membership histories: settling always reaches a full,
        /// balanced table, grants land only on unassigned partitions, and a
        /// join moves at most ceil(P/(n+1)) partitions.
        #[test]
        fn settles_balanced(p in 1u32..200, history in proptest::collection::vec((any::<bool>(), 0u64..12), 1..12)) {
            let mut t = PartitionTable::new(p);
            let mut live: BTreeSet<u64> = set(&[0]);
            let mut index = 0;
            settle(&mut t, &live, &mut index);
            for (join, node) in history {
                let before = t.owners();
                let n_before = live.len();
                let joined = join && live.insert(node);
                if !join && live.len() > 1 {
                    live.remove(&node);
                }
                settle(&mut t, &live, &mut index);
                let counts = assignment::counts(&t.owners());
                prop_assert!(t.owners().iter().all(|o| o.is_some_and(|o| live.contains(&o))));
                let lo = counts.values().min().copied().unwrap_or(0);
                let hi = counts.values().max().copied().unwrap_or(0);
                if live.len() as u32 <= p {
                    prop_assert_eq!(counts.len(), live.len());
                }
                prop_assert!(hi - lo <= 1 || (counts.len() < live.len() && hi <= 1));
                if joined {
                    let moved = before.iter().zip(t.owners()).filter(|(a, b)| **a != *b).count() as u32;
                    prop_assert!(moved <= p.div_ceil(n_before as u32 + 1), "moved {moved}");
                }
            }
        }
    }
}
