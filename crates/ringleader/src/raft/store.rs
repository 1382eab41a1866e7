//! The durable Raft store behind `--data-dir`: the node's identity, the
//! Raft vote, the log, the last purged and committed log ids and the
//! current state-machine snapshot, in one redb file.
//!
//! Raft's safety rests on three writes reaching the disk before they are
//! acted on: the vote (a voter must never vote twice in a term), appended
//! entries (an acknowledged entry must survive a crash) and the snapshot
//! (the log before it is purged). Those commits are `Durability::Immediate`
//! (fsync). The committed log id is only a hint for replaying entries at
//! start, so it is written without a sync.
//!
//! Every value is stored as `xxh64(body) || body`, with `body` the postcard
//! encoding: a value damaged on disk is refused, never decoded into a wrong
//! vote or entry. redb itself checksums its pages and repairs a file left
//! by a crash; [`DiskStore::open_dir`] also runs its full integrity check.
//! One process at a time: redb locks the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use openraft::storage::SnapshotMeta;
use openraft::{Entry, LogId, Vote};
use redb::{Database, Durability, ReadableTable, StorageBackend, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh64::xxh64;

use super::TypeConfig;
use crate::types::{NodeId, NodeInfo};

/// The store's file inside the data directory.
pub const FILE_NAME: &str = "ringleader.redb";
/// The layout version written in [`StoredIdentity::format`].
pub const FORMAT: u32 = 1;
/// Seed of the value checksums (any fixed value; this spells "ringlead").
const CHECKSUM_SEED: u64 = 0x7269_6e67_6c65_6164;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

const IDENTITY: &str = "identity";
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";
const SNAPSHOT: &str = "snapshot";
const INCARNATION: &str = "incarnation";

/// Why the store cannot be used. Each message names the store's place (the
/// file, for a data directory).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Another process has the store open.
    #[error(
        "{0} is in use by another process (each node needs its own data directory; is an old one still running?)"
    )]
    Locked(String),
    /// The store is damaged: a checksum failed or a value does not decode.
    #[error(
        "{place} is damaged ({what}); the node will not start on it: move the directory aside and start the node without it, to rejoin as a new node (an old copy of a voter's directory is no backup: it may have forgotten votes it cast); see docs/operations.md"
    )]
    Corrupt {
        /// The store.
        place: String,
        /// What failed.
        what: String,
    },
    /// The store belongs to another cluster or another configuration.
    #[error("{place} {what}")]
    Mismatch {
        /// The store.
        place: String,
        /// What differs.
        what: String,
    },
    /// Reading or writing failed (permissions, a full disk, an I/O error).
    #[error("cannot use {place}: {reason}")]
    Io {
        /// The store.
        place: String,
        /// The underlying error.
        reason: String,
    },
}

/// Who the store belongs to: written once, when the node first starts on
/// an empty data directory, and checked at every start after that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredIdentity {
    /// [`FORMAT`] when written.
    pub format: u32,
    /// The node's id, kept across restarts.
    pub node_id: NodeId,
    /// The cluster name the node was started with.
    pub cluster: String,
    /// The partition count it was started with.
    pub num_partitions: u32,
}

/// A snapshot as stored: its meta and its bytes.
pub type StoredSnapshot = (SnapshotMeta<NodeId, NodeInfo>, Vec<u8>);

/// Everything Raft needs back at start.
#[derive(Debug, Default)]
pub struct Restored {
    /// The last vote saved.
    pub vote: Option<Vote<NodeId>>,
    /// The last committed log id saved (a hint: it may lag).
    pub committed: Option<LogId<NodeId>>,
    /// The last purged log id.
    pub purged: Option<LogId<NodeId>>,
    /// The log entries kept, by index.
    pub entries: BTreeMap<u64, Entry<TypeConfig>>,
    /// The current snapshot.
    pub snapshot: Option<StoredSnapshot>,
}

/// An open store. Every method writes through to the file before it
/// returns.
pub struct DiskStore {
    db: Database,
    place: String,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore")
            .field("place", &self.place)
            .finish()
    }
}

/// `xxh64(body) || body`.
fn seal<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let body = postcard::to_stdvec(value).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&xxh64(&body, CHECKSUM_SEED).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The value [`seal`] stored, if its checksum holds and it decodes.
fn unseal<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (sum, body) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| format!("a {}-byte value is shorter than its checksum", bytes.len()))?;
    if u64::from_le_bytes(*sum) != xxh64(body, CHECKSUM_SEED) {
        return Err("a value fails its checksum".into());
    }
    postcard::from_bytes(body).map_err(|e| format!("a value does not decode: {e}"))
}

impl DiskStore {
    /// Opens (creating if need be) the store in data directory `dir`, with
    /// a full integrity check.
    pub fn open_dir(dir: &Path) -> Result<Self, StoreError> {
        let place = dir.join(FILE_NAME).display().to_string();
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
            place: dir.display().to_string(),
            reason: format!("cannot create the directory: {e}"),
        })?;
        let path: PathBuf = dir.join(FILE_NAME);
        let open = || Database::builder().create(&path);
        let mut db = guarded(&place, open)?.map_err(|e| database_error(&place, e))?;
        let checked = guarded(&place, || db.check_integrity())?;
        match checked {
            Ok(_) => {}
            Err(e) => return Err(database_error(&place, e)),
        }
        Self::ready(db, place)
    }

    /// Opens (creating if need be) a store on `backend`, named `place` in
    /// errors. For simulation: a backend that outlives the node is a disk
    /// that survives its crash.
    pub fn open_backend(backend: impl StorageBackend, place: String) -> Result<Self, StoreError> {
        let db = guarded(&place, || Database::builder().create_with_backend(backend))?
            .map_err(|e| database_error(&place, e))?;
        Self::ready(db, place)
    }

    fn ready(db: Database, place: String) -> Result<Self, StoreError> {
        let store = Self { db, place };
        // Opening both tables in a write creates them: reads never meet a
        // missing one.
        store.write(Durability::Immediate, |_, _| Ok(()))?;
        Ok(store)
    }

    /// Where the store is, for messages.
    pub fn place(&self) -> &str {
        &self.place
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            place: self.place.clone(),
            reason: e.to_string(),
        }
    }

    fn corrupt(&self, what: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            place: self.place.clone(),
            what: what.into(),
        }
    }

    /// Runs `f` in one write transaction committed with `durability`.
    fn write(
        &self,
        durability: Durability,
        f: impl FnOnce(
            &mut redb::Table<&str, &[u8]>,
            &mut redb::Table<u64, &[u8]>,
        ) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(|e| self.io(e))?;
        tx.set_durability(durability);
        {
            let mut meta = tx.open_table(META).map_err(|e| self.io(e))?;
            let mut log = tx.open_table(LOG).map_err(|e| self.io(e))?;
            f(&mut meta, &mut log)?;
        }
        tx.commit().map_err(|e| self.io(e))
    }

    fn put_meta<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let bytes = seal(value).map_err(|e| self.io(e))?;
        self.write(durability, |meta, _| {
            meta.insert(key, bytes.as_slice()).map_err(|e| self.io(e))?;
            Ok(())
        })
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let meta = tx.open_table(META).map_err(|e| self.io(e))?;
        let Some(value) = meta.get(key).map_err(|e| self.io(e))? else {
            return Ok(None);
        };
        unseal(value.value())
            .map(Some)
            .map_err(|e| self.corrupt(format!("{key}: {e}")))
    }

    /// The identity written at first start, if any.
    pub fn identity(&self) -> Result<Option<StoredIdentity>, StoreError> {
        self.get_meta(IDENTITY)
    }

    /// Writes the identity (first start only).
    pub fn set_identity(&self, identity: &StoredIdentity) -> Result<(), StoreError> {
        self.put_meta(IDENTITY, identity, Durability::Immediate)
    }

    /// Counts this start: the number of starts on this store so far,
    /// this one included (synced, so no two starts share one).
    pub fn next_incarnation(&self) -> Result<u64, StoreError> {
        let last: u64 = self.get_meta(INCARNATION)?.unwrap_or(0);
        let next = last.saturating_add(1);
        self.put_meta(INCARNATION, &next, Durability::Immediate)?;
        Ok(next)
    }

    /// Everything Raft stored.
    pub fn load(&self) -> Result<Restored, StoreError> {
        let mut restored = Restored {
            vote: self.get_meta(VOTE)?,
            committed: self.get_meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten(),
            purged: self.get_meta(PURGED)?,
            snapshot: self.get_meta(SNAPSHOT)?,
            entries: BTreeMap::new(),
        };
        let tx = self.db.begin_read().map_err(|e| self.io(e))?;
        let log = tx.open_table(LOG).map_err(|e| self.io(e))?;
        for row in log.iter().map_err(|e| self.io(e))? {
            let (index, value) = row.map_err(|e| self.io(e))?;
            let index = index.value();
            let entry: Entry<TypeConfig> = unseal(value.value())
                .map_err(|e| self.corrupt(format!("log entry {index}: {e}")))?;
            if entry.log_id.index != index {
                return Err(self.corrupt(format!(
                    "log entry {index} holds index {}",
                    entry.log_id.index
                )));
            }
            restored.entries.insert(index, entry);
        }
        Ok(restored)
    }

    /// Saves the vote, synced.
    pub fn save_vote(&self, vote: &Vote<NodeId>) -> Result<(), StoreError> {
        self.put_meta(VOTE, vote, Durability::Immediate)
    }

    /// Saves the committed log id, unsynced (a hint for the replay at start).
    pub fn save_committed(&self, committed: &Option<LogId<NodeId>>) -> Result<(), StoreError> {
        self.put_meta(COMMITTED, committed, Durability::None)
    }

    /// Appends entries, synced.
    pub fn append(&self, entries: &[Entry<TypeConfig>]) -> Result<(), StoreError> {
        let sealed: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|e| seal(e).map(|b| (e.log_id.index, b)))
            .collect::<Result<_, _>>()
            .map_err(|e| self.io(e))?;
        self.write(Durability::Immediate, |_, log| {
            for (index, bytes) in &sealed {
                log.insert(*index, bytes.as_slice())
                    .map_err(|e| self.io(e))?;
            }
            Ok(())
        })
    }

    /// Deletes the entries from `index` on, synced.
    pub fn truncate_from(&self, index: u64) -> Result<(), StoreError> {
        self.write(Durability::Immediate, |_, log| {
            log.retain_in(index.., |_, _| false).map_err(|e| self.io(e))
        })
    }

    /// Deletes the entries up to `upto` and records it as the last purged,
    /// in one synced commit.
    pub fn purge(&self, upto: &LogId<NodeId>) -> Result<(), StoreError> {
        let bytes = seal(upto).map_err(|e| self.io(e))?;
        self.write(Durability::Immediate, |meta, log| {
            meta.insert(PURGED, bytes.as_slice())
                .map_err(|e| self.io(e))?;
            log.retain_in(..=upto.index, |_, _| false)
                .map_err(|e| self.io(e))
        })
    }

    /// Replaces everything Raft stored with `snapshot` and `vote`, the log
    /// emptied up to and including `last` (the snapshot's last log id), in
    /// one synced commit (a crash leaves the old state or the new one).
    pub fn replace_all(
        &self,
        snapshot: &StoredSnapshot,
        vote: &Vote<NodeId>,
        last: &LogId<NodeId>,
    ) -> Result<(), StoreError> {
        let snapshot = seal(snapshot).map_err(|e| self.io(e))?;
        let vote = seal(vote).map_err(|e| self.io(e))?;
        let purged = seal(last).map_err(|e| self.io(e))?;
        let committed = seal(&Some(*last)).map_err(|e| self.io(e))?;
        self.write(Durability::Immediate, |meta, log| {
            for (key, value) in [
                (SNAPSHOT, &snapshot),
                (VOTE, &vote),
                (PURGED, &purged),
                (COMMITTED, &committed),
            ] {
                meta.insert(key, value.as_slice()).map_err(|e| self.io(e))?;
            }
            log.retain(|_, _| false).map_err(|e| self.io(e))
        })
    }

    /// Saves the current snapshot, synced.
    pub fn save_snapshot(&self, snapshot: &StoredSnapshot) -> Result<(), StoreError> {
        self.put_meta(SNAPSHOT, snapshot, Durability::Immediate)
    }
}

/// Turns a panic inside redb on a damaged file into an error naming it.
fn guarded<T>(place: &str, f: impl FnOnce() -> T) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| StoreError::Corrupt {
        place: place.to_string(),
        what: "the database engine could not read it".into(),
    })
}

fn database_error(place: &str, e: redb::DatabaseError) -> StoreError {
    let place = place.to_string();
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(place),
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(what)) => {
            StoreError::Corrupt { place, what }
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(e)) => match e.kind() {
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
                StoreError::Corrupt {
                    place,
                    what: e.to_string(),
                }
            }
            _ => StoreError::Io {
                place,
                reason: e.to_string(),
            },
        },
        other => StoreError::Corrupt {
            place,
            what: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_round_trips_and_damage_is_refused() {
        let sealed = seal(&(7u64, "seven".to_string())).unwrap();
        assert_eq!(
            unseal::<(u64, String)>(&sealed).unwrap(),
            (7, "seven".into())
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            assert!(unseal::<(u64, String)>(&bad).is_err(), "byte {i}");
        }
        assert!(unseal::<u64>(&sealed[..5]).is_err());
    }
}
