//! The Raft state machine: applies committed entries to the
//! [`ClusterState`], keeps a window of recent entries so the leader can send
//! members just what they miss, and reports every change to the node.

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::TypeConfig;
use super::store::{DiskStore, StoreError, StoredSnapshot};
use crate::protocol::Update;
use crate::state::{ClusterState, Command};
use crate::types::{NodeId, NodeInfo};

/// How many recent entries the leader keeps for members' catch-up; a member
/// further behind gets a snapshot.
pub const RECENT_ENTRIES: usize = 1024;

/// What the state machine reports after it changed.
#[derive(Debug, Clone)]
pub enum Applied {
    /// These entries were applied, in log order.
    Entries(Vec<(u64, Command)>),
    /// The state was replaced by a snapshot.
    Snapshot(ClusterState),
}

/// Receives every change of the state machine, in order, synchronously.
pub type ApplySink = Arc<dyn Fn(Applied) + Send + Sync>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotBody {
    state: ClusterState,
}

#[derive(Default)]
struct Inner {
    state: ClusterState,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, NodeInfo>,
    recent: VecDeque<(u64, Command)>,
    snapshot: Option<(SnapshotMeta<NodeId, NodeInfo>, Vec<u8>)>,
    snapshot_seq: u64,
}

/// The state machine; clones share the same state.
///
/// With a data directory, every snapshot it builds or installs is saved
/// there before openraft may purge the log it covers; at start the state is
/// the saved snapshot's, and openraft replays the committed entries after it.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<Inner>>,
    sink: ApplySink,
    disk: Option<Arc<DiskStore>>,
}

impl StateMachine {
    /// Creates an empty state machine reporting to `sink`.
    pub fn new(sink: ApplySink) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner::default())),
            sink,
            disk: None,
        }
    }

    /// A state machine saving its snapshots to `disk`, starting from
    /// `snapshot` (the one saved there, if any). Reports the restored state
    /// to `sink` at once.
    pub fn durable(
        sink: ApplySink,
        disk: Arc<DiskStore>,
        snapshot: Option<StoredSnapshot>,
    ) -> Result<Self, StoreError> {
        let mut inner = Inner::default();
        if let Some((meta, bytes)) = snapshot {
            let body: SnapshotBody =
                postcard::from_bytes(&bytes).map_err(|e| StoreError::Corrupt {
                    place: disk.place().to_string(),
                    what: format!("the snapshot does not decode: {e}"),
                })?;
            inner.state = body.state;
            inner.last_applied = meta.last_log_id;
            inner.last_membership = meta.last_membership.clone();
            inner.snapshot = Some((meta, bytes));
            sink(Applied::Snapshot(inner.state.clone()));
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            sink,
            disk: Some(disk),
        })
    }

    /// Saves `snapshot` to the data directory, if there is one.
    // The error is openraft's own, as its storage traits return it.
    #[allow(clippy::result_large_err)]
    fn persist(&self, snapshot: &StoredSnapshot) -> Result<(), StorageError<NodeId>> {
        let Some(disk) = &self.disk else {
            return Ok(());
        };
        disk.save_snapshot(snapshot).map_err(|e| {
            tracing::error!(error = %e, "the data directory cannot be written; Raft stops");
            StorageIOError::write_snapshot(Some(snapshot.0.signature()), &e).into()
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the applied state.
    pub fn state(&self) -> ClusterState {
        self.lock().state.clone()
    }

    /// Reads the applied state without copying it (keep `f` short: it holds
    /// the state machine's lock).
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&self.lock().state)
    }

    /// What a member whose copy is at (`known_created`, `known_index`) is
    /// missing.
    pub fn update_since(&self, known_created: u32, known_index: u64) -> Update {
        let inner = self.lock();
        let state = &inner.state;
        if known_created != state.created_secs() || known_index > state.index {
            return Update::Snapshot(Box::new(state.clone()));
        }
        if known_index == state.index {
            return Update::UpToDate;
        }
        match inner.recent.front() {
            // The window holds every entry after `known_index`.
            Some((first, _)) if *first <= known_index + 1 => {
                let budget = crate::limits::delta_budget(state.partitions.len());
                delta_within(&inner.recent, known_index, budget)
                    .map_or_else(|| Update::Snapshot(Box::new(state.clone())), Update::Delta)
            }
            _ => Update::Snapshot(Box::new(state.clone())),
        }
    }
}

/// The entries of `recent` after `known_index`, if their encoding fits
/// `budget` bytes (a snapshot is bounded; a delta must be too).
fn delta_within(
    recent: &VecDeque<(u64, Command)>,
    known_index: u64,
    budget: usize,
) -> Option<Vec<(u64, Command)>> {
    let mut used = 0usize;
    let mut delta = Vec::new();
    for entry in recent.iter().filter(|(i, _)| *i > known_index) {
        used = used.saturating_add(postcard::experimental::serialized_size(entry).ok()?);
        if used > budget {
            return None;
        }
        delta.push(entry.clone());
    }
    Some(delta)
}

/// A snapshot's bytes: the encoded state.
pub(crate) fn encode_snapshot(state: &ClusterState) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(&SnapshotBody {
        state: state.clone(),
    })
}

/// The state a snapshot's bytes hold.
pub(crate) fn decode_snapshot(bytes: &[u8]) -> Result<ClusterState, postcard::Error> {
    postcard::from_bytes::<SnapshotBody>(bytes).map(|b| b.state)
}

/// The command an entry stands for.
pub(crate) fn command_of(entry: &Entry<TypeConfig>) -> Command {
    match &entry.payload {
        EntryPayload::Blank => Command::Noop,
        EntryPayload::Normal(command) => command.clone(),
        EntryPayload::Membership(membership) => {
            Command::SetVoters(membership.voter_ids().collect())
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeInfo>), StorageError<NodeId>>
    {
        let inner = self.lock();
        Ok((inner.last_applied, inner.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut applied = Vec::new();
        let mut responses = Vec::new();
        {
            let mut inner = self.lock();
            for entry in entries {
                let index = entry.log_id.index;
                let command = command_of(&entry);
                if let EntryPayload::Membership(membership) = &entry.payload {
                    inner.last_membership =
                        StoredMembership::new(Some(entry.log_id), membership.clone());
                }
                inner.last_applied = Some(entry.log_id);
                inner.state.apply(index, &command);
                inner.recent.push_back((index, command.clone()));
                if inner.recent.len() > RECENT_ENTRIES {
                    inner.recent.pop_front();
                }
                applied.push((index, command));
                responses.push(());
            }
            // Report while holding the lock so reports cannot overtake each other.
            if !applied.is_empty() {
                (self.sink)(Applied::Entries(applied));
            }
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let body: SnapshotBody = postcard::from_bytes(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let stored = (meta.clone(), bytes);
        self.persist(&stored)?;
        let bytes = stored.1;
        let mut inner = self.lock();
        inner.state = body.state.clone();
        inner.last_applied = meta.last_log_id;
        inner.last_membership = meta.last_membership.clone();
        inner.recent.clear();
        inner.snapshot = Some((meta.clone(), bytes));
        (self.sink)(Applied::Snapshot(body.state));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(inner.snapshot.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let mut inner = self.lock();
        let body = SnapshotBody {
            state: inner.state.clone(),
        };
        let bytes =
            postcard::to_stdvec(&body).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        inner.snapshot_seq += 1;
        let last = inner.last_applied;
        let snapshot_id = match last {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, inner.snapshot_seq),
            None => format!("empty-{}", inner.snapshot_seq),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: inner.last_membership.clone(),
            snapshot_id,
        };
        let stored = (meta.clone(), bytes.clone());
        self.persist(&stored)?;
        inner.snapshot = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partitions::PartitionOp;

    #[test]
    fn a_delta_over_its_budget_is_refused() {
        let grant = |p: u32| Command::Partitions(PartitionOp::Grant(vec![(p, u64::MAX)]));
        let recent: VecDeque<(u64, Command)> = (1..=10).map(|i| (i, grant(i as u32))).collect();
        let one = postcard::experimental::serialized_size(&recent[0]).unwrap();
        let all = delta_within(&recent, 0, 10 * one).expect("fits");
        assert_eq!(all.len(), 10);
        assert_eq!(delta_within(&recent, 5, 5 * one).map(|d| d.len()), Some(5));
        assert!(delta_within(&recent, 0, 10 * one - 1).is_none());
    }
}
