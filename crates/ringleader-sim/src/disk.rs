//! A simulated disk: one per host, outliving the host's crashes, under the
//! node's redb store (`ringleader::raft::store::DiskStore::open_backend`).
//!
//! Writes land in the disk's cache; only a sync makes them durable. A
//! crash is a power loss: every write since the last sync is gone, and the
//! crashed process's store can never write again (its handle is fenced by
//! a generation number), as a dead process cannot. So a node that forgets
//! to sync before it acts loses that state in the simulation too.

use std::collections::BTreeSet;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// Page size of the dirty-page tracking (only what a sync copies).
const PAGE: u64 = 4096;

#[derive(Debug, Default)]
struct State {
    /// What the running process sees: every write.
    cache: Vec<u8>,
    /// What survives a crash: the cache as of the last sync.
    synced: Vec<u8>,
    /// Pages of `cache` written since the last sync.
    dirty: BTreeSet<u64>,
    /// Bumped by every crash; handles of older generations are fenced.
    generation: u64,
    syncs: u64,
    bytes_written: u64,
}

/// One host's disk.
#[derive(Debug, Default, Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl SimDisk {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handle for a newly started process.
    pub fn open(&self) -> SimDiskHandle {
        SimDiskHandle {
            disk: self.clone(),
            generation: self.lock().generation,
        }
    }

    /// Power loss: unsynced writes are gone, and the running process's
    /// handle writes nothing more.
    pub fn crash(&self) {
        let mut s = self.lock();
        s.generation += 1;
        s.cache = s.synced.clone();
        s.dirty.clear();
    }

    /// (syncs, bytes written) so far.
    pub fn usage(&self) -> (u64, u64) {
        let s = self.lock();
        (s.syncs, s.bytes_written)
    }
}

/// A process's view of a [`SimDisk`]: redb's storage backend.
#[derive(Debug)]
pub struct SimDiskHandle {
    disk: SimDisk,
    generation: u64,
}

impl SimDiskHandle {
    /// The disk, if this handle's process is still the running one.
    fn live(&self) -> io::Result<MutexGuard<'_, State>> {
        let s = self.disk.lock();
        if s.generation != self.generation {
            return Err(io::Error::other(
                "the process that opened this disk crashed",
            ));
        }
        Ok(s)
    }
}

impl redb::StorageBackend for SimDiskHandle {
    fn len(&self) -> io::Result<u64> {
        Ok(self.live()?.cache.len() as u64)
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let s = self.live()?;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start
            .checked_add(len)
            .filter(|end| *end <= s.cache.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        Ok(s.cache[start..end].to_vec())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.live()?;
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let old = s.cache.len() as u64;
        s.cache.resize(len, 0);
        let (lo, hi) = (old.min(len as u64), old.max(len as u64));
        for page in lo / PAGE..=hi / PAGE {
            s.dirty.insert(page);
        }
        Ok(())
    }

    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        let mut s = self.live()?;
        let s = &mut *s;
        let len = s.cache.len();
        s.synced.resize(len, 0);
        for page in std::mem::take(&mut s.dirty) {
            let start = (page * PAGE) as usize;
            if start >= len {
                continue;
            }
            let end = (start + PAGE as usize).min(len);
            s.synced[start..end].copy_from_slice(&s.cache[start..end]);
        }
        s.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut s = self.live()?;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start
            .checked_add(data.len())
            .filter(|end| *end <= s.cache.len())
            .ok_or_else(|| io::Error::other("write past the end"))?;
        s.cache[start..end].copy_from_slice(data);
        if !data.is_empty() {
            for page in offset / PAGE..=(end as u64 - 1) / PAGE {
                s.dirty.insert(page);
            }
        }
        s.bytes_written += data.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend;

    #[test]
    fn a_crash_keeps_what_was_synced_only_and_fences_the_old_process() {
        let disk = SimDisk::default();
        let old = disk.open();
        old.set_len(3 * PAGE).unwrap();
        old.write(10, b"synced").unwrap();
        old.sync_data(false).unwrap();
        old.write(PAGE * 2 + 5, b"lost").unwrap();
        disk.crash();
        assert!(
            old.write(0, b"x").is_err(),
            "a crashed process writes nothing"
        );
        let new = disk.open();
        assert_eq!(new.read(10, 6).unwrap(), b"synced");
        assert_eq!(new.read(PAGE * 2 + 5, 4).unwrap(), vec![0; 4]);
    }
}
