//! Crashes, restarts and data directories, with the real binary on
//! loopback: what etcd survives, ringleader must too (issue 19). Every node
//! is killed with SIGKILL by PID; every wait is bounded.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A loopback cluster whose nodes can be killed and started again.
struct Cluster {
    dir: PathBuf,
    peers: Vec<u16>,
    https: Vec<u16>,
    seeds: String,
    procs: Vec<Option<Proc>>,
    partitions: u32,
    durable: bool,
}

impl Cluster {
    fn new(tag: &str, n: usize, partitions: u32, durable: bool) -> Self {
        let ports = free_ports(2 * n);
        let peers = ports[..n].to_vec();
        let https = ports[n..].to_vec();
        let seeds = peers
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let dir = std::env::temp_dir().join(format!(
            "ringleader-durability-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = Self {
            dir,
            peers,
            https,
            seeds,
            procs: (0..n).map(|_| None).collect(),
            partitions,
            durable,
        };
        for i in 0..n {
            cluster.start(i);
        }
        cluster
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{}", i + 1))
    }

    fn start(&mut self, i: usize) {
        let data_dir = self.data_dir(i).display().to_string();
        let extra: Vec<&str> = if self.durable {
            vec!["--data-dir", &data_dir]
        } else {
            Vec::new()
        };
        let proc = start_with(
            &format!("n{}", i + 1),
            self.peers[i],
            self.https[i],
            &self.seeds,
            self.partitions,
            &extra,
            Stdio::null(),
        );
        self.procs[i] = Some(proc);
    }

    /// SIGKILL, by PID, and reaped.
    fn kill(&mut self, i: usize) {
        drop(self.procs[i].take());
    }

    fn live(&self) -> Vec<&Proc> {
        self.procs.iter().flatten().collect()
    }

    /// Every partition's token, if the live nodes together hold every
    /// partition exactly once.
    fn owned(&self) -> Option<BTreeMap<u64, u64>> {
        let mut owned = BTreeMap::new();
        for p in self.live() {
            for g in get_json(&p.http, "/partitions")?.as_array()? {
                let token: u64 = g["token"].as_str()?.parse().ok()?;
                if owned.insert(g["partition"].as_u64()?, token).is_some() {
                    return None;
                }
            }
        }
        (owned.len() == self.partitions as usize).then_some(owned)
    }

    /// The (name, role) of every member, if every live node reports the
    /// same table and it names exactly the live nodes.
    fn members(&self) -> Option<Vec<(String, String)>> {
        let mut seen: Option<Vec<(String, String)>> = None;
        for p in self.live() {
            let status = get_json(&p.http, "/status")?;
            status["leader"].as_str()?;
            let mut rows: Vec<(String, String)> = status["members"]
                .as_array()?
                .iter()
                .map(|m| {
                    let field = |k: &str| m[k].as_str().unwrap_or("?").to_string();
                    (field("name"), field("role"))
                })
                .collect();
            rows.sort();
            if seen.get_or_insert_with(|| rows.clone()) != &rows {
                return None;
            }
        }
        let rows = seen?;
        (rows.len() == self.live().len()).then_some(rows)
    }

    /// Waits until the live nodes agree on a table of exactly themselves
    /// and own every partition once; returns the tokens.
    fn settled(&self, what: &str) -> BTreeMap<u64, u64> {
        let mut tokens = None;
        wait_until(what, || {
            tokens = self.members().and_then(|_| self.owned());
            tokens.is_some()
        });
        tokens.unwrap_or_default()
    }

    fn voters(&self) -> Vec<usize> {
        let rows = self.members().unwrap_or_default();
        rows.iter()
            .filter(|(_, role)| role == "voter")
            .filter_map(|(name, _)| name.strip_prefix('n')?.parse::<usize>().ok())
            .map(|n| n - 1)
            .collect()
    }

    fn leader(&self) -> Option<usize> {
        let p = self.live().into_iter().next()?;
        let status = get_json(&p.http, "/status")?;
        let leader = status["leader"].as_str()?;
        let row = status["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"].as_str() == Some(leader))?;
        let n: usize = row["name"].as_str()?.strip_prefix('n')?.parse().ok()?;
        Some(n - 1)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            drop(p.take());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn two_of_five_voters_killed_at_once_leave_the_rest_owning_everything() {
    let mut c = Cluster::new("five", 5, 64, false);
    c.settled("five nodes agree and own everything");
    wait_until("five voters", || c.voters().len() == 5);
    let leader = c.leader().expect("a leader");
    let other = c.voters().into_iter().find(|v| *v != leader).unwrap();
    c.kill(leader);
    c.kill(other);
    c.settled("the three survivors own everything");
}

#[test]
fn two_of_three_voters_killed_come_back_with_their_data() {
    let mut c = Cluster::new("three", 3, 64, true);
    c.settled("three nodes agree and own everything");
    wait_until("three voters", || c.voters().len() == 3);
    c.kill(1);
    c.kill(2);
    // No quorum now; with their data the two resume as the same voters.
    c.start(1);
    c.start(2);
    c.settled("the cluster owns everything again");
    assert_eq!(c.voters().len(), 3, "the same three voters");
}

#[test]
fn every_node_killed_and_restarted_resumes_the_cluster_with_higher_tokens() {
    let mut c = Cluster::new("all", 3, 64, true);
    let before = c.settled("three nodes agree and own everything");
    let highest = before.values().copied().max().unwrap();
    for i in 0..3 {
        c.kill(i);
    }
    let restarted = Instant::now();
    for i in 0..3 {
        c.start(i);
    }
    let after = c.settled("the restarted cluster owns everything");
    eprintln!(
        "every partition owned {:?} after the restart",
        restarted.elapsed()
    );
    let lowest = after.values().copied().min().unwrap();
    assert!(
        lowest > highest,
        "every token after the restart ({lowest} and up) is above every one before ({highest})"
    );
    assert_eq!(
        lowest >> 32,
        highest >> 32,
        "the same cluster life resumed (tokens share its creation second)"
    );
}

/// `rounds` kill -9 and restarts of a random node, `gap` ms apart (plus up
/// to `spread` ms more); every node must agree and own everything
/// afterwards.
fn storm(durable: bool, rounds: usize, gap: u64, spread: u64) {
    let mut c = Cluster::new(if durable { "storm" } else { "storm-eph" }, 5, 64, durable);
    c.settled("five nodes agree and own everything");
    // A fixed-seed generator: the storm is the same on every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut last = Instant::now();
    for round in 0..rounds {
        if round > 0 {
            std::thread::sleep(Duration::from_millis(gap + next(spread)));
        }
        let i = next(5) as usize;
        c.kill(i);
        c.start(i);
        last = Instant::now();
    }
    c.settled("the cluster settles after the storm");
    eprintln!("settled {:?} after the last restart", last.elapsed());
}

/// With data directories a restarted node is the same voter again: a storm
/// as fast as the nodes can start cannot wear the voter majority away.
#[test]
fn a_restart_storm_settles() {
    storm(true, 30, 200, 800);
}

/// Without data directories every restart is a new node; the old one's
/// voter seat is handed on as soon as the new one joins from its address
/// (a replacement round: about a second). Restarts spaced wider than that
/// never cost the quorum; faster storms need data directories.
#[test]
fn a_restart_storm_without_data_dirs_settles_when_spaced_beyond_a_replacement_round() {
    storm(false, 15, 1500, 500);
}

/// Runs the binary to completion (bounded), returning its exit code and
/// stderr.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringleader");
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ringleader {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_damaged_or_shared_data_dir_is_refused_naming_it() {
    let c = Cluster::new("damage", 1, 8, true);
    c.settled("a node of its own");
    let dir = c.data_dir(0);
    let file = dir.join("ringleader.redb");
    let ports = free_ports(2);
    let listen = format!("127.0.0.1:{}", ports[0]);
    let http = format!("127.0.0.1:{}", ports[1]);
    let dir_arg = dir.display().to_string();
    let args = [
        "run",
        "--listen",
        &listen,
        "--http",
        &http,
        "--partitions",
        "8",
        "--data-dir",
        &dir_arg,
    ];
    // A second process on the same directory.
    let (code, err) = run_to_exit(&args);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("in use by another process"), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    let mut c = c;
    c.kill(0);
    // A directory of another cluster.
    let other = [&args[..], &["--cluster", "other"]].concat();
    let (code, err) = run_to_exit(&other);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("belongs to cluster \"ringleader\""), "{err}");
    // Its store damaged: one flipped byte in every copy of the node's name.
    let mut bytes = std::fs::read(&file).unwrap();
    let copies: Vec<usize> = bytes
        .windows(3)
        .enumerate()
        .filter(|(_, w)| *w == b"\x02n1")
        .map(|(i, _)| i)
        .collect();
    assert!(!copies.is_empty(), "the node's name is in its store");
    for at in copies {
        bytes[at + 2] ^= 0x01;
    }
    std::fs::write(&file, &bytes).unwrap();
    let (code, err) = run_to_exit(&args);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("damaged"), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
}

#[test]
fn a_lost_majority_is_recovered_from_one_survivor() {
    let mut c = Cluster::new("recover", 3, 32, true);
    let before = c.settled("three nodes agree and own everything");
    let highest = before.values().copied().max().unwrap();
    // Two voters lost for good, with their disks; the survivor is stopped
    // for the recovery (its store is locked while it runs).
    for i in 0..3 {
        c.kill(i);
    }
    for i in 1..3 {
        std::fs::remove_dir_all(c.data_dir(i)).unwrap();
    }
    let dir = c.data_dir(0).display().to_string();
    let (code, err) = run_to_exit(&["recover", "--data-dir", &dir, "--force-new-cluster"]);
    assert_eq!(code, Some(2), "refused without the confirmation: {err}");
    assert!(err.contains("--confirm-majority-lost"), "{err}");
    let confirmed = [
        "recover",
        "--data-dir",
        &dir,
        "--force-new-cluster",
        "--confirm-majority-lost",
    ];
    let (code, err) = run_to_exit(&confirmed);
    assert_eq!(code, Some(0), "{err}");
    // The survivor alone: it owns everything, under tokens above all before.
    c.start(0);
    let mut after = None;
    wait_until("the survivor owns everything", || {
        let status = get_json(&c.procs[0].as_ref().unwrap().http, "/status");
        let members = status
            .as_ref()
            .and_then(|s| s["members"].as_array().map(|m| m.len()));
        after = c.owned();
        members == Some(1) && after.is_some()
    });
    let lowest = after.unwrap().values().copied().min().unwrap();
    assert!(lowest > highest, "{lowest} after, {highest} before");
    // The lost nodes come back empty and join it.
    c.start(1);
    c.start(2);
    c.settled("the recovered cluster has all three again");
}
