//! Exclusive ownership under joins, graceful leaves, crashes, a leader crash
//! and a paused member. Each node runs on its own single-worker runtime so
//! it can be frozen (like SIGSTOP) while the others go on. A monitor thread
//! samples every node's valid grants every millisecond against one
//! monotonic clock and fails on any instant where two nodes hold one
//! partition.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ringleader::{Event, Node};
use tokio::runtime::Runtime;
use tokio::time::Instant;

const P: u32 = 32;

struct Host {
    node: Node,
    rt: Runtime,
}

impl Host {
    async fn start(name: &str, addr: &str, seeds: &[String]) -> Host {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let builder = builder(name, addr, seeds).partitions(P);
        let node = rt.spawn(builder.start()).await.unwrap().unwrap();
        let host = Host { node, rt };
        // A well-behaved application: release at once when asked.
        let node = host.node.clone();
        let mut events = node.events();
        host.rt.spawn(async move {
            while let Some(event) = events.next().await {
                if let Event::PartitionsRevoking { partitions, .. } = event {
                    let _ = node.release(&partitions).await;
                }
            }
        });
        host
    }

    /// Freezes the node's runtime (timers, sockets, Raft, everything).
    fn pause(&self, d: Duration) {
        self.rt.spawn(async move { std::thread::sleep(d) });
    }

    async fn kill(self) {
        let node = self.node.clone();
        self.rt
            .spawn(async move { node.shutdown().await })
            .await
            .unwrap();
        self.rt.shutdown_background();
    }

    async fn leave(self) {
        let node = self.node.clone();
        self.rt
            .spawn(async move { node.leave(Duration::from_secs(20)).await })
            .await
            .unwrap()
            .unwrap();
        self.rt.shutdown_background();
    }
}

/// Everything the monitor saw go wrong.
#[derive(Default)]
struct Findings {
    overlaps: Vec<String>,
    samples: u64,
}

fn spawn_monitor(
    nodes: Arc<Mutex<Vec<Node>>>,
    stop: Arc<AtomicBool>,
    findings: Arc<Mutex<Findings>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let nodes = nodes.lock().unwrap().clone();
            let mut holder: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
            let at = start.elapsed();
            for node in &nodes {
                for g in node.owned() {
                    if let Some((other, token)) = holder.insert(g.partition, (node.id(), g.token)) {
                        findings.lock().unwrap().overlaps.push(format!(
                            "at {at:?}: partition {} held by {other} (token {token}) and {} (token {})",
                            g.partition,
                            node.id(),
                            g.token
                        ));
                    }
                }
            }
            findings.lock().unwrap().samples += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

/// Records every node's events with one monotonic clock.
fn record(node: &Node, log: Arc<Mutex<Vec<(Instant, u64, Event)>>>) {
    let id = node.id();
    let mut events = node.events();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            log.lock().unwrap().push((Instant::now(), id, e));
        }
    });
}

/// Every partition held by exactly one of `hosts`, counts within one, and
/// every host's committed table agrees with what is held.
fn settled(hosts: &[Host]) -> bool {
    let mut owner: BTreeMap<u32, u64> = BTreeMap::new();
    let mut counts = Vec::new();
    for h in hosts {
        let owned = h.node.owned();
        counts.push(owned.len());
        for g in owned {
            if owner.insert(g.partition, h.node.id()).is_some() {
                return false;
            }
        }
    }
    if owner.len() != P as usize {
        return false;
    }
    let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    if hi - lo > 1 {
        return false;
    }
    hosts.iter().all(|h| {
        let (_, table) = h.node.assignment();
        table
            .iter()
            .enumerate()
            .all(|(p, s)| s.owner == owner.get(&(p as u32)).copied())
    })
}

async fn wait_settled(hosts: &[Host], what: &str) {
    wait_until(what, || settled(hosts)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_partition_is_ever_held_twice() {
    init_tracing();
    let addrs = free_addrs(6);
    let seeds: Vec<String> = addrs[..4].to_vec();
    let mut hosts = Vec::new();
    for (i, a) in addrs[..4].iter().enumerate() {
        hosts.push(Host::start(&format!("o{i}"), a, &seeds).await);
    }
    let live: Arc<Mutex<Vec<Node>>> =
        Arc::new(Mutex::new(hosts.iter().map(|h| h.node.clone()).collect()));
    let log = Arc::new(Mutex::new(Vec::new()));
    for h in &hosts {
        record(&h.node, log.clone());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let findings = Arc::new(Mutex::new(Findings::default()));
    let monitor = spawn_monitor(live.clone(), stop.clone(), findings.clone());
    let sync = |hosts: &Vec<Host>| {
        *live.lock().unwrap() = hosts.iter().map(|h| h.node.clone()).collect();
    };

    wait_settled(&hosts, "4 nodes share the partitions").await;

    // Two join.
    for (i, a) in addrs[4..].iter().enumerate() {
        let h = Host::start(&format!("o{}", i + 4), a, &seeds).await;
        record(&h.node, log.clone());
        hosts.push(h);
    }
    sync(&hosts);
    wait_settled(&hosts, "6 nodes share the partitions").await;

    // A member leaves gracefully.
    let leader = hosts[0].node.leader().unwrap().0;
    let pos = hosts.iter().position(|h| h.node.id() != leader).unwrap();
    let leaving = hosts.remove(pos);
    sync(&hosts);
    leaving.leave().await;
    wait_settled(&hosts, "5 nodes after a graceful leave").await;

    // A member crashes.
    let leader = hosts[0].node.leader().unwrap().0;
    let pos = hosts.iter().position(|h| h.node.id() != leader).unwrap();
    let dead = hosts.remove(pos);
    sync(&hosts);
    dead.kill().await;
    wait_settled(&hosts, "4 nodes after a crash").await;

    // The leader crashes.
    let leader = hosts[0].node.leader().unwrap().0;
    let pos = hosts.iter().position(|h| h.node.id() == leader).unwrap();
    let dead = hosts.remove(pos);
    sync(&hosts);
    dead.kill().await;
    wait_settled(&hosts, "3 nodes after the leader crashed").await;

    // A member freezes for 3 s (three leases): its partitions move, and it
    // must not act on them meanwhile; then it comes back and rejoins.
    let leader = hosts[0].node.leader().unwrap().0;
    let pos = hosts.iter().position(|h| h.node.id() != leader).unwrap();
    let frozen_id = hosts[pos].node.id();
    hosts[pos].pause(Duration::from_secs(3));
    let others: Vec<usize> = (0..hosts.len()).filter(|i| *i != pos).collect();
    wait_until("the others take over the frozen node's partitions", || {
        let held: usize = others.iter().map(|i| hosts[*i].node.owned().len()).sum();
        held == P as usize
    })
    .await;
    wait_settled(&hosts, "the frozen node is back and shares again").await;
    assert!(
        hosts[pos]
            .node
            .status()
            .members
            .iter()
            .any(|m| m.id == frozen_id),
        "the frozen node rejoined"
    );

    stop.store(true, Ordering::Relaxed);
    monitor.join().unwrap();
    for h in hosts {
        h.kill().await;
    }
    let findings = findings.lock().unwrap();
    assert!(
        findings.samples > 100,
        "the monitor ran ({} samples)",
        findings.samples
    );
    assert!(
        findings.overlaps.is_empty(),
        "{} overlapping grants, first: {:?}",
        findings.overlaps.len(),
        findings.overlaps.first()
    );

    // Each node's event stream is well formed and tokens only rise.
    let log = log.lock().unwrap();
    let mut held: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    let mut last_token: BTreeMap<(u64, u32), u64> = BTreeMap::new();
    let mut all_tokens: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    let mut grant_holder: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    let mut assigned = 0;
    for (_, node, event) in log.iter() {
        let h = held.entry(*node).or_default();
        match event {
            Event::PartitionsAssigned { partitions } => {
                for g in partitions {
                    assigned += 1;
                    assert!(
                        h.insert(g.partition),
                        "node {node} assigned {} twice",
                        g.partition
                    );
                    // A node may get the same grant back after losing it to
                    // a lapsed lease (the table never moved it); a token
                    // never falls, and one token is never given to two nodes.
                    let last = last_token.entry((*node, g.partition)).or_insert(0);
                    assert!(g.token >= *last, "token fell on node {node}");
                    *last = g.token;
                    let holder = grant_holder.entry((g.partition, g.token)).or_insert(*node);
                    assert_eq!(*holder, *node, "one grant reached two nodes");
                    all_tokens.entry(g.partition).or_default().insert(g.token);
                }
            }
            Event::PartitionsRevoking { partitions, .. } | Event::PartitionsLost { partitions } => {
                for p in partitions {
                    h.remove(p);
                }
            }
            _ => {}
        }
    }
    assert!(assigned >= P as usize, "grants were observed ({assigned})");
    for (p, tokens) in &all_tokens {
        assert!(!tokens.is_empty(), "partition {p} was granted");
    }
}
