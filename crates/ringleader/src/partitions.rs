//! The replicated partition table: who owns each partition, in what state,
//! under which fencing token. Pure; applied from committed log entries.
//!
//! A partition moves only through `Owned -> Revoking -> Unassigned -> Owned`
//! (revoke before assign): a grant applies only to an unassigned partition,
//! so a committed table never names two owners for one partition, and every
//! grant's token (derived from its log index) exceeds every earlier one.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// The lifecycle state of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    /// Nobody owns it; the leader may grant it.
    Unassigned,
    /// Its owner may work on it.
    Owned,
    /// Its owner has been asked to stop; it may work until it acknowledges
    /// or its deadline passes.
    Revoking,
}

/// One partition's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// The owner while `Owned` or `Revoking`.
    pub owner: Option<NodeId>,
    /// The lifecycle state.
    pub state: SlotState,
    /// The token of the latest grant (kept after release, so the next grant
    /// can be checked to exceed it).
    pub token: u64,
}

impl Slot {
    const EMPTY: Slot = Slot {
        owner: None,
        state: SlotState::Unassigned,
        token: 0,
    };
}

/// A change to the partition table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionOp {
    /// Give each listed partition to the node; applies only to unassigned
    /// partitions and to current members.
    Grant(Vec<(u32, NodeId)>),
    /// Ask the owners of these owned partitions to stop.
    Revoke(Vec<u32>),
    /// Mark these partitions unassigned (their owner acknowledged, or can no
    /// longer hold them).
    Release(Vec<u32>),
}

impl PartitionOp {
    /// This op as ops of at most `max` partitions each (at least one op,
    /// `max` at least 1), in order: each fits a log entry of bounded size
    /// (see [`crate::limits::MAX_OP_PARTITIONS`]).
    pub fn split(self, max: usize) -> Vec<PartitionOp> {
        fn chunks<T: Clone>(
            items: Vec<T>,
            max: usize,
            make: fn(Vec<T>) -> PartitionOp,
        ) -> Vec<PartitionOp> {
            if items.len() <= max {
                return vec![make(items)];
            }
            items.chunks(max.max(1)).map(|c| make(c.to_vec())).collect()
        }
        match self {
            PartitionOp::Grant(g) => chunks(g, max, PartitionOp::Grant),
            PartitionOp::Revoke(r) => chunks(r, max, PartitionOp::Revoke),
            PartitionOp::Release(r) => chunks(r, max, PartitionOp::Release),
        }
    }
}

/// What one applied op changed, for event derivation and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Partitions granted, with owner and token.
    pub granted: Vec<(u32, NodeId, u64)>,
    /// Partitions that entered `Revoking`, with their owner.
    pub revoking: Vec<(u32, NodeId)>,
    /// Partitions released, with their former owner.
    pub released: Vec<(u32, NodeId)>,
}

/// The table of `P` partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionTable {
    slots: Vec<Slot>,
}

impl PartitionTable {
    /// A table of `n` unassigned partitions.
    pub fn new(n: u32) -> Self {
        Self {
            slots: vec![Slot::EMPTY; n as usize],
        }
    }

    /// Number of partitions.
    pub fn len(&self) -> u32 {
        u32::try_from(self.slots.len()).unwrap_or(u32::MAX)
    }

    /// Whether the table has no partitions (before the cluster is initialised).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The row of partition `p`.
    pub fn slot(&self, p: u32) -> Option<&Slot> {
        self.slots.get(p as usize)
    }

    /// All rows, indexed by partition.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The owner column (owned or revoking), for the assignment function.
    pub fn owners(&self) -> Vec<Option<NodeId>> {
        self.slots.iter().map(|s| s.owner).collect()
    }

    /// Partitions (owned or revoking) held by `node`, with their tokens.
    pub fn held_by(&self, node: NodeId) -> Vec<(u32, u64)> {
        self.rows()
            .filter(|(_, s)| s.owner == Some(node))
            .map(|(p, s)| (p, s.token))
            .collect()
    }

    fn rows(&self) -> impl Iterator<Item = (u32, &Slot)> {
        self.slots
            .iter()
            .enumerate()
            .map(|(p, s)| (u32::try_from(p).unwrap_or(u32::MAX), s))
    }

    /// Applies `op`, committed with grant token `token`, given the current
    /// members. Entries that do not fit the slot's state are skipped, so a
    /// stale or duplicated op can never create a second owner.
    pub fn apply(&mut self, token: u64, op: &PartitionOp, members: &BTreeSet<NodeId>) -> Applied {
        let mut out = Applied::default();
        match op {
            PartitionOp::Grant(grants) => {
                for (p, node) in grants {
                    let Some(slot) = self.slots.get_mut(*p as usize) else {
                        continue;
                    };
                    if slot.state != SlotState::Unassigned
                        || !members.contains(node)
                        || token <= slot.token
                    {
                        continue;
                    }
                    *slot = Slot {
                        owner: Some(*node),
                        state: SlotState::Owned,
                        token,
                    };
                    out.granted.push((*p, *node, token));
                }
            }
            PartitionOp::Revoke(parts) => {
                for p in parts {
                    if let Some(slot) = self.slots.get_mut(*p as usize) {
                        if let (SlotState::Owned, Some(owner)) = (slot.state, slot.owner) {
                            slot.state = SlotState::Revoking;
                            out.revoking.push((*p, owner));
                        }
                    }
                }
            }
            PartitionOp::Release(parts) => {
                for p in parts {
                    if let Some(slot) = self.slots.get_mut(*p as usize) {
                        if let Some(owner) = slot.owner.take() {
                            slot.state = SlotState::Unassigned;
                            out.released.push((*p, owner));
                        }
                    }
                }
            }
        }
        out
    }

    /// Releases everything `node` holds (it left the member table; the
    /// leader commits that only once the node can no longer act on them).
    pub fn release_node(&mut self, node: NodeId) -> Vec<u32> {
        let parts: Vec<u32> = self.held_by(node).into_iter().map(|(p, _)| p).collect();
        let members = BTreeSet::new();
        self.apply(0, &PartitionOp::Release(parts.clone()), &members);
        parts
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn split_keeps_order_and_bounds_each_op() {
        let grant = PartitionOp::Grant((0..10).map(|p| (p, 1)).collect());
        let parts = grant.clone().split(4);
        assert_eq!(parts.len(), 3);
        let rejoined: Vec<(u32, NodeId)> = parts
            .into_iter()
            .flat_map(|op| match op {
                PartitionOp::Grant(g) => {
                    assert!(g.len() <= 4);
                    g
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(PartitionOp::Grant(rejoined), grant);
        assert_eq!(
            PartitionOp::Revoke(vec![]).split(4),
            vec![PartitionOp::Revoke(vec![])]
        );
        assert_eq!(PartitionOp::Release(vec![1, 2]).split(0).len(), 2);
    }

    use super::*;
    use proptest::prelude::*;

    fn members(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn grant_needs_unassigned_slot_and_a_member() {
        let mut t = PartitionTable::new(4);
        let m = members(&[1, 2]);
        let a = t.apply(10, &PartitionOp::Grant(vec![(0, 1), (1, 9), (7, 1)]), &m);
        assert_eq!(a.granted, vec![(0, 1, 10)]);
        // A second grant of an owned partition is ignored.
        let a = t.apply(11, &PartitionOp::Grant(vec![(0, 2)]), &m);
        assert!(a.granted.is_empty());
        assert_eq!(t.slot(0).unwrap().owner, Some(1));
    }

    #[test]
    fn revoke_then_release_then_grant_elsewhere() {
        let mut t = PartitionTable::new(2);
        let m = members(&[1, 2]);
        t.apply(10, &PartitionOp::Grant(vec![(0, 1)]), &m);
        assert_eq!(
            t.apply(11, &PartitionOp::Revoke(vec![0, 1]), &m).revoking,
            vec![(0, 1)]
        );
        assert!(
            t.apply(12, &PartitionOp::Grant(vec![(0, 2)]), &m)
                .granted
                .is_empty()
        );
        assert_eq!(
            t.apply(13, &PartitionOp::Release(vec![0]), &m).released,
            vec![(0, 1)]
        );
        assert_eq!(
            t.apply(14, &PartitionOp::Grant(vec![(0, 2)]), &m).granted,
            vec![(0, 2, 14)]
        );
    }

    #[test]
    fn release_node_frees_what_it_held() {
        let mut t = PartitionTable::new(3);
        let m = members(&[1, 2]);
        t.apply(10, &PartitionOp::Grant(vec![(0, 1), (1, 2), (2, 1)]), &m);
        assert_eq!(t.release_node(1), vec![0, 2]);
        assert_eq!(t.owners(), vec![None, Some(2), None]);
    }

    fn arb_op() -> impl Strategy<Value = PartitionOp> {
        let part = 0u32..6;
        let node = 0u64..4;
        prop_oneof![
            proptest::collection::vec((part.clone(), node), 0..4).prop_map(PartitionOp::Grant),
            proptest::collection::vec(part.clone(), 0..4).prop_map(PartitionOp::Revoke),
            proptest::collection::vec(part, 0..4).prop_map(PartitionOp::Release),
        ]
    }

    proptest! {
        /// Whatever ops arrive, in whatever order: a grant only ever lands on
        /// an unassigned partition, tokens of successive grants of a
        /// partition strictly rise, and revoking/owned slots always have an owner.
        #[test]
        fn grants_never_overlap_and_tokens_rise(ops in proptest::collection::vec(arb_op(), 0..60)) {
            let mut t = PartitionTable::new(5);
            let m = members(&[0, 1, 2]);
            let mut last_token = [0u64; 5];
            for (i, op) in ops.iter().enumerate() {
                let before = t.clone();
                let applied = t.apply(100 + i as u64, op, &m);
                for (p, node, token) in applied.granted {
                    let was = before.slot(p).unwrap();
                    prop_assert_eq!(was.state, SlotState::Unassigned);
                    prop_assert!(token > last_token[p as usize]);
                    prop_assert!(m.contains(&node));
                    last_token[p as usize] = token;
                }
                for s in t.slots() {
                    prop_assert_eq!(s.owner.is_some(), s.state != SlotState::Unassigned);
                }
            }
        }
    }
}
