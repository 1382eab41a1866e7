//! Disaster recovery when a majority of the voters is gone for good
//! (`ringleader recover --force-new-cluster`, the etcd model).
//!
//! Without a majority no entry can commit: the cluster cannot even replace
//! its dead voters. Recovery rewrites one survivor's store, offline, so
//! that it restarts as the only voter of the same cluster, from everything
//! its log holds:
//!
//! * the state is its snapshot plus every entry of its log, applied;
//! * the cluster starts a new life: its creation second moves past the old
//!   one (and to now, if later), so every token from now on, the tokens of
//!   every grant and epoch, is above every token of the old life, including
//!   any that the lost majority committed after this node last heard from
//!   it (see [`crate::token`]);
//! * every owned partition is revoked: its holder (if it still runs) gets
//!   the usual time to stop, and every grant after the recovery carries a
//!   new-life token;
//! * the vote moves to a new term, and the Raft membership is this node
//!   alone. The other members stay in the table: the live ones carry on
//!   with the new leader, the rest expire.
//!
//! The risk is the one etcd names: if the old majority is not really gone
//! and comes back with its data, two clusters claim the same name. Wipe the
//! data directories of the old voters before starting them again
//! (docs/operations.md).

use std::collections::{BTreeMap, BTreeSet};

use openraft::storage::SnapshotMeta;
use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership, StoredMembership, Vote};

use super::state_machine::{command_of, decode_snapshot, encode_snapshot};
use super::store::{DiskStore, StoreError};
use crate::partitions::{PartitionOp, SlotState};
use crate::state::{ClusterState, Command};
use crate::types::NodeId;

/// What a recovery finds in a store, and what it makes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// This node, the only voter after the recovery.
    pub node_id: NodeId,
    /// The cluster name.
    pub cluster: String,
    /// The voters of the last membership the store holds.
    pub old_voters: BTreeSet<NodeId>,
    /// The last log index the store holds.
    pub last_index: u64,
    /// Members in the table.
    pub members: usize,
    /// Partitions owned when the store was last written (all revoked).
    pub owned: usize,
    /// The creation second before and after: every later token is above
    /// every token of the old life.
    pub created: (u32, u32),
}

/// What [`force_new_cluster`] would do to `store`, without writing anything.
/// `now_secs`: the current Unix time.
pub fn plan(store: &DiskStore, now_secs: u64) -> Result<Recovery, StoreError> {
    prepare(store, now_secs).map(|p| p.recovery)
}

/// Rewrites `store` so that its node restarts as the only voter of a new
/// life of its cluster (see the module docs). Run it only on a store no
/// process has open (the store's lock ensures that), and only when the old
/// majority of voters is gone for good.
pub fn force_new_cluster(store: &DiskStore, now_secs: u64) -> Result<Recovery, StoreError> {
    let prepared = prepare(store, now_secs)?;
    store.replace_all(&prepared.snapshot, &prepared.vote, &prepared.last)?;
    Ok(prepared.recovery)
}

struct Prepared {
    recovery: Recovery,
    snapshot: super::store::StoredSnapshot,
    vote: Vote<NodeId>,
    last: LogId<NodeId>,
}

fn prepare(store: &DiskStore, now_secs: u64) -> Result<Prepared, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt {
        place: store.place().to_string(),
        what,
    };
    let refuse = |what: &str| StoreError::Mismatch {
        place: store.place().to_string(),
        what: what.to_string(),
    };
    let identity = store
        .identity()?
        .ok_or_else(|| refuse("holds no node: it was never used by `ringleader run`"))?;
    let me = identity.node_id;
    let restored = store.load()?;
    let (mut state, mut membership, mut last) = match &restored.snapshot {
        Some((meta, bytes)) => (
            decode_snapshot(bytes).map_err(|e| corrupt(format!("the snapshot: {e}")))?,
            meta.last_membership.clone(),
            meta.last_log_id,
        ),
        None => (ClusterState::default(), StoredMembership::default(), None),
    };
    for entry in restored.entries.values() {
        if last.is_some_and(|l| entry.log_id.index <= l.index) {
            continue;
        }
        state.apply(entry.log_id.index, &command_of(entry));
        if let EntryPayload::Membership(m) = &entry.payload {
            membership = StoredMembership::new(Some(entry.log_id), m.clone());
        }
        last = Some(entry.log_id);
    }
    let (Some(last), Some(old_identity)) = (last, state.identity.clone()) else {
        return Err(refuse("holds no cluster state to recover from"));
    };
    let info = membership
        .membership()
        .get_node(&me)
        .cloned()
        .or_else(|| state.members.get(&me).map(|m| m.info.clone()))
        .ok_or_else(|| refuse("holds no address for its own node"))?;
    let old_voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
    let owned: Vec<u32> = state
        .partitions
        .slots()
        .iter()
        .enumerate()
        .filter(|(_, s)| s.owner.is_some() && s.state == SlotState::Owned)
        .map(|(p, _)| u32::try_from(p).unwrap_or(u32::MAX))
        .collect();
    let held = state
        .partitions
        .slots()
        .iter()
        .filter(|s| s.owner.is_some())
        .count();
    // Two entries of the new life's first index range: this node the only
    // voter, every owned partition revoked.
    state.apply(last.index + 1, &Command::SetVoters(BTreeSet::from([me])));
    state.apply(
        last.index + 2,
        &Command::Partitions(PartitionOp::Revoke(owned)),
    );
    let old_created = old_identity.created_secs;
    let new_created = u32::try_from(now_secs)
        .unwrap_or(u32::MAX)
        .max(old_created.saturating_add(1));
    if let Some(identity) = &mut state.identity {
        identity.created_secs = new_created;
    }
    let term = restored
        .vote
        .map_or(0, |v| v.leader_id().get_term())
        .max(last.leader_id.term)
        + 1;
    let new_last = LogId::new(CommittedLeaderId::new(term, me), last.index + 2);
    let members = BTreeMap::from([(me, info)]);
    let meta = SnapshotMeta {
        last_log_id: Some(new_last),
        last_membership: StoredMembership::new(
            Some(new_last),
            Membership::new(vec![BTreeSet::from([me])], members),
        ),
        snapshot_id: format!("recovered-{}-{}", term, new_last.index),
    };
    let bytes = encode_snapshot(&state).map_err(|e| corrupt(format!("re-encoding: {e}")))?;
    Ok(Prepared {
        recovery: Recovery {
            node_id: me,
            cluster: identity.cluster,
            old_voters,
            last_index: last.index,
            members: state.members.len(),
            owned: held,
            created: (old_created, new_created),
        },
        snapshot: (meta, bytes),
        vote: Vote::new(term, me),
        last: new_last,
    })
}
