//! The durable store behind `--data-dir`: openraft's own storage suite,
//! what survives a reopen, and damage refused loudly.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, StorageError, Vote};
use ringleader::raft::TypeConfig;
use ringleader::raft::log_store::LogStore;
use ringleader::raft::state_machine::StateMachine;
use ringleader::raft::store::{DiskStore, FILE_NAME, StoreError};
use ringleader::state::Command;

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ringleader-store-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn stores(dir: &Path) -> (LogStore, StateMachine) {
    let disk = Arc::new(DiskStore::open_dir(dir).expect("open"));
    let restored = disk.load().expect("load");
    let log = LogStore::durable(disk.clone(), &restored);
    let sm = StateMachine::durable(Arc::new(|_| {}), disk, restored.snapshot).expect("sm");
    (log, sm)
}

struct OnDisk;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for OnDisk {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = TempDir::new("suite");
        let (log, sm) = stores(&dir.0);
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_disk() {
    Suite::test_all(OnDisk).expect("openraft's storage suite");
}

fn entry(term: u64, index: u64, command: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

/// Appends through the store itself (openraft's flush callback cannot be
/// made outside openraft; its suite covers `LogStore::append`).
fn append(dir_store: &DiskStore, entries: Vec<Entry<TypeConfig>>) {
    dir_store.append(&entries).expect("append");
}

fn stores_and_disk(dir: &Path) -> (LogStore, StateMachine, Arc<DiskStore>) {
    let disk = Arc::new(DiskStore::open_dir(dir).expect("open"));
    let restored = disk.load().expect("load");
    let log = LogStore::durable(disk.clone(), &restored);
    let sm = StateMachine::durable(Arc::new(|_| {}), disk.clone(), restored.snapshot).expect("sm");
    (log, sm, disk)
}

#[tokio::test]
async fn what_was_written_is_there_after_a_reopen() {
    let dir = TempDir::new("reopen");
    {
        let (mut log, mut sm, disk) = stores_and_disk(&dir.0);
        log.save_vote(&Vote::new(3, 7)).await.unwrap();
        let entries: Vec<_> = (1..=20).map(|i| entry(3, i, Command::Noop)).collect();
        append(&disk, entries.clone());
        sm.apply(entries).await.unwrap();
        let mut builder = sm.get_snapshot_builder().await;
        openraft::RaftSnapshotBuilder::build_snapshot(&mut builder)
            .await
            .unwrap();
        log.purge(LogId::new(CommittedLeaderId::new(3, 1), 10))
            .await
            .unwrap();
        log.truncate(LogId::new(CommittedLeaderId::new(3, 1), 18))
            .await
            .unwrap();
    }
    let (mut log, mut sm) = stores(&dir.0);
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 7)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(10));
    assert_eq!(state.last_log_id.map(|l| l.index), Some(17));
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(
        applied.map(|l| l.index),
        Some(20),
        "restored from the snapshot"
    );
    assert!(sm.get_current_snapshot().await.unwrap().is_some());
    assert_eq!(sm.state().index, 20);
}

#[test]
fn a_second_process_on_one_directory_is_refused() {
    let dir = TempDir::new("lock");
    let _first = DiskStore::open_dir(&dir.0).unwrap();
    let e = DiskStore::open_dir(&dir.0).unwrap_err();
    assert!(matches!(e, StoreError::Locked(_)), "{e}");
    assert!(e.to_string().contains(FILE_NAME), "{e}");
}

/// Writes a store with some entries and returns its file's bytes.
fn written(dir: &Path) -> Vec<u8> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut log, _sm, disk) = stores_and_disk(dir);
        log.save_vote(&Vote::new(2, 1)).await.unwrap();
        let big = Command::AddMember {
            id: 9,
            info: ringleader::NodeInfo {
                name: "n".repeat(200),
                addr: "127.0.0.1:1".into(),
                http_addr: None,
            },
            incarnation: 0,
        };
        append(&disk, (1..=50).map(|i| entry(2, i, big.clone())).collect());
    });
    std::fs::read(dir.join(FILE_NAME)).unwrap()
}

#[test]
fn a_damaged_or_truncated_store_is_refused_with_its_name() {
    let dir = TempDir::new("damage");
    let good = written(&dir.0);
    let path = dir.0.join(FILE_NAME);
    // Truncated: half the file is gone.
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let e = DiskStore::open_dir(&dir.0)
        .and_then(|s| s.load().map(|_| ()))
        .expect_err("a truncated store must be refused");
    assert!(e.to_string().contains(FILE_NAME), "{e}");
    // Damaged: one byte flipped inside a stored entry (the name's bytes).
    let mut bad = good.clone();
    let name = "n".repeat(200);
    let at = bad
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .expect("the entry is in the file");
    bad[at + 100] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();
    let e = DiskStore::open_dir(&dir.0)
        .and_then(|s| s.load().map(|_| ()))
        .expect_err("a damaged store must be refused");
    assert!(
        matches!(e, StoreError::Corrupt { .. }),
        "damage is called damage: {e}"
    );
}

#[test]
fn an_unwritable_directory_is_an_error_naming_it() {
    let dir = TempDir::new("ro");
    let inner = dir.0.join("sub");
    std::fs::write(&inner, b"a file, not a directory").unwrap();
    let e = DiskStore::open_dir(&inner).unwrap_err();
    assert!(matches!(e, StoreError::Io { .. }), "{e}");
    assert!(e.to_string().contains("sub"), "{e}");
}
