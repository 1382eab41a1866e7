//! The Raft log: in memory, and written through to a [`DiskStore`] when the
//! node has a data directory.
//!
//! Without one (ephemeral mode) a node that restarts joins as a new
//! incarnation, so there is nothing to recover. With one, every append,
//! truncation, purge and vote reaches the disk before openraft hears it
//! done, and a restarted node starts from what it stored. Either way the
//! log is trimmed by openraft's snapshot/purge policy, and reads are served
//! from memory.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote};

use super::TypeConfig;
use super::store::{DiskStore, Restored, StoreError};
use crate::types::NodeId;

#[derive(Debug, Default)]
struct Inner {
    last_purged: Option<LogId<NodeId>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

/// The log store; clones share the same log.
#[derive(Debug, Clone, Default)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    disk: Option<Arc<DiskStore>>,
}

/// A failed write to the store, as openraft takes it (it then stops Raft:
/// a voter that cannot keep its promises must not go on voting).
fn write_error(e: StoreError) -> StorageError<NodeId> {
    tracing::error!(error = %e, "the data directory cannot be written; Raft stops");
    StorageIOError::write(&e).into()
}

impl LogStore {
    /// A log written through to `disk`, starting from what it `restored`.
    pub fn durable(disk: Arc<DiskStore>, restored: &Restored) -> Self {
        let inner = Inner {
            last_purged: restored.purged,
            entries: restored.entries.clone(),
            vote: restored.vote,
            committed: restored.committed,
        };
        Self {
            inner: Arc::new(Mutex::new(inner)),
            disk: Some(disk),
        }
    }

    /// Runs `f` on the disk store, if there is one.
    // The error is openraft's own, as its storage traits return it.
    #[allow(clippy::result_large_err)]
    fn on_disk(
        &self,
        f: impl FnOnce(&DiskStore) -> Result<(), StoreError>,
    ) -> Result<(), StorageError<NodeId>> {
        match &self.disk {
            Some(disk) => f(disk).map_err(write_error),
            None => Ok(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock would already have stopped Raft;
        // the data itself is never left half-written.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| *e.get_log_id())
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.on_disk(|d| d.save_vote(vote))?;
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.on_disk(|d| d.save_committed(&committed))?;
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        // Synced before openraft hears the entries are flushed (or, with
        // no data directory, memory is the medium).
        if let Err(e) = self.on_disk(|d| d.append(&entries)) {
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(e);
        }
        {
            let mut inner = self.lock();
            for entry in entries {
                inner.entries.insert(entry.get_log_id().index, entry);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.on_disk(|d| d.truncate_from(log_id.index))?;
        let mut inner = self.lock();
        let _ = inner.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.on_disk(|d| d.purge(&log_id))?;
        let mut inner = self.lock();
        let keep = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = keep;
        if inner.last_purged.is_none_or(|p| p < log_id) {
            inner.last_purged = Some(log_id);
        }
        Ok(())
    }
}
