//! Scale run: N real ringleader [`Node`]s in one process (multi-thread tokio
//! runtime, one worker per core), on loopback TCP with default timings.
//! Prints a GitHub-Markdown table.
//!
//! Steps, each timed from the action to the first poll where the condition
//! holds:
//!
//! 1. start N nodes at once (or `--batch K` at a time, each batch once the
//!    previous one joined; seeds = the first 3, 3 voters by default) until
//!    every node is joined, every partition is owned (the union of the nodes'
//!    [`Node::owned`] covers `0..P` exactly once) and the nodes agree (same
//!    leader, same member set, same committed partition table), then until
//!    the counts are balanced (max - min ≤ 1);
//! 2. a steady window (5 s; 2 s with `--quick`): requests the leader received
//!    per second, heartbeat round trip, process RSS and CPU time per node;
//! 3. crash one plain member (not leader, not voter) with
//!    [`Node::shutdown`], which stops it without telling the cluster (its
//!    sockets close, as when the process is killed), until the survivors are
//!    stable again (it is gone from every view, its partitions re-owned);
//! 4. join one new node, until stable again with balanced counts.
//!
//! Every node's application releases revoked partitions at once (as a
//! cooperative application does). `Node::stats()`/`wire_stats()` have no
//! counter of handled requests, so each node is given a client
//! [`Transport`] that wraps the default [`TcpTransport`] and counts the
//! answered requests per destination; the leader's inbound rate is the sum of
//! what all nodes sent it.
//!
//! ```sh
//! cargo run --release -p ringleader --example scale -- [--nodes 100] [--partitions 4096]
//!     [--voters 3] [--batch K] [--timeout 60] [--quick]
//! ```
//!
//! `--timeout` bounds each step, in seconds; a step that does not finish in
//! time is reported with what was last observed. `--quick` defaults to 20
//! nodes and a 2 s window. Both ends of every
//! connection live in this process: expect 10-20 file descriptors per node,
//! more while the cluster forms (`ulimit -n`; the table reports the peak).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use ringleader::error::TransportError;
use ringleader::protocol::{Request, Response};
use ringleader::transport::{TcpTransport, Transport, WireConfig, codec::DEFAULT_MAX_FRAME};
use ringleader::{Event, Node, NodeId, Role};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Answered requests are counted by kind; failed calls (any kind) in slot
/// `FAILED`.
const KINDS: [&str; 6] = ["heartbeat", "raft", "join", "probe", "release", "other"];
const FAILED: usize = KINDS.len();
type Tally = [u64; KINDS.len() + 1];

struct Args {
    nodes: usize,
    partitions: u32,
    voters: usize,
    batch: usize,
    timeout: Duration,
    window: Duration,
}

fn parse_args() -> Args {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let value = |name: &str| -> Option<u64> {
        let i = args.iter().position(|a| a == name)?;
        let v = args
            .get(i + 1)
            .unwrap_or_else(|| panic!("{name} needs a value"));
        Some(
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: not a number: {v}")),
        )
    };
    Args {
        nodes: value("--nodes").map_or(if quick { 20 } else { 100 }, |v| v as usize),
        partitions: value("--partitions").map_or(4096, |v| v as u32),
        voters: value("--voters").map_or(3, |v| v as usize),
        batch: value("--batch").map_or(0, |v| v as usize),
        timeout: Duration::from_secs(value("--timeout").unwrap_or(60)),
        window: Duration::from_secs(if quick { 2 } else { 5 }),
    }
}

fn main() {
    let args = parse_args();
    assert!(args.nodes >= 2, "--nodes must be at least 2");
    // Open the /proc files now: the nodes may use up every descriptor later.
    for name in ["stat", "status", "limits"] {
        let _ = proc_read(name);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let rows = runtime.block_on(run(&args));
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "Scale run: {} ringleader nodes in one process ({workers} tokio worker threads, {workers} cores), \
         loopback TCP, default timings (heartbeat 200 ms, session timeout 1 s), P = {}, 3 seeds, {} voters, \
         nodes started {}, applications release revoked partitions at once; times from the action \
         (formation: the first start) to the first poll (every {} ms) where the condition holds.\n",
        args.nodes,
        args.partitions,
        args.voters,
        if args.batch == 0 || args.batch >= args.nodes {
            "all at once".to_string()
        } else {
            format!(
                "{} at a time, each batch once the previous one joined",
                args.batch
            )
        },
        poll_period(args.nodes).as_millis()
    );
    println!("| measurement | result |\n|---|---|");
    for (what, result) in rows {
        println!("| {what} | {result} |");
    }
    // Dropping a runtime with many nodes' tasks takes a while; we are done.
    runtime.shutdown_background();
}

fn poll_period(nodes: usize) -> Duration {
    Duration::from_millis((nodes as u64 / 10).clamp(50, 200))
}

async fn run(args: &Args) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = Vec::new();
    let counts = Arc::new(Counts::default());
    let n = args.nodes;
    let p = args.partitions;

    // 1. Formation.
    let seeds = free_addrs(3.min(n));
    let started = Instant::now();
    let batch = if args.batch == 0 { n } else { args.batch };
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    let mut apps: HashMap<NodeId, JoinHandle<()>> = HashMap::new();
    for first in (0..n).step_by(batch) {
        let starts = (first..n.min(first + batch)).map(|i| {
            let listen = seeds
                .get(i)
                .cloned()
                .unwrap_or_else(|| "127.0.0.1:0".into());
            start(args, format!("n{i}"), listen, &seeds, &counts)
        });
        for node in join_all(starts).await {
            let node = node.expect("node starts");
            apps.insert(node.id(), auto_release(&node));
            nodes.push(node);
        }
        eprintln!(
            "{} nodes listening after {:.1?}",
            nodes.len(),
            started.elapsed()
        );
        if nodes.len() < n {
            // The next batch starts once this one is in.
            while nodes.iter().any(|n| !n.is_joined()) && started.elapsed() < args.timeout {
                sample_fds();
                tokio::time::sleep(poll_period(n)).await;
            }
            if started.elapsed() >= args.timeout {
                let joined = nodes.iter().filter(|n| n.is_joined()).count();
                rows.push((
                    "batched start".into(),
                    format!(
                        "stopped after {} of {n} nodes: only {joined} joined within the timeout",
                        nodes.len()
                    ),
                ));
                break;
            }
        }
    }
    let formed = wait(&nodes, p, started, args.timeout, "formation").await;
    let ok = formed.stable.is_some();
    rows.push((format!("all {n} nodes joined"), secs(formed.joined)));
    rows.push((
        "every partition owned exactly once, nodes agree".into(),
        formed.stable_or_observed(),
    ));
    rows.push((
        "... and balanced (max - min ≤ 1)".into(),
        formed.balanced_with_counts(),
    ));

    // 2. Steady window.
    rows.extend(steady(&nodes, &counts, args.window).await);

    // 3. Crash a plain member.
    if ok {
        let leader = nodes.iter().find(|n| n.is_leader()).map(Node::id);
        let status = nodes[0].status();
        let is_voter = |id| {
            status
                .members
                .iter()
                .any(|m| m.id == id && m.role == Role::Voter)
        };
        let victim = nodes
            .iter()
            .position(|n| Some(n.id()) != leader && !is_voter(n.id()))
            .or_else(|| nodes.iter().position(|n| Some(n.id()) != leader))
            .expect("a non-leader node");
        let gone = nodes.remove(victim);
        let role = if is_voter(gone.id()) {
            "voter"
        } else {
            "plain member"
        };
        let held = gone.owned().len();
        let t = Instant::now();
        gone.shutdown().await;
        if let Some(app) = apps.remove(&gone.id()) {
            app.abort();
        }
        let after = wait(&nodes, p, t, args.timeout, "crash").await;
        rows.push((
            format!("crash of one {role} holding {held} partitions (`Node::shutdown`, no leave): survivors stable again"),
            after.stable_or_observed(),
        ));
        rows.push(("... and balanced".into(), after.balanced_with_counts()));

        // 4. Join one node.
        let t = Instant::now();
        match start(
            args,
            "newcomer".into(),
            "127.0.0.1:0".into(),
            &seeds,
            &counts,
        )
        .await
        {
            Ok(node) => {
                apps.insert(node.id(), auto_release(&node));
                nodes.push(node);
                let after = wait(&nodes, p, t, args.timeout, "join").await;
                rows.push(("one node joins: admitted".into(), secs(after.joined)));
                rows.push((
                    "... stable with balanced counts".into(),
                    after.balanced_with_counts(),
                ));
            }
            Err(e) => rows.push(("one node joins".into(), format!("failed to start: {e}"))),
        }
    } else {
        rows.push((
            "crash and join steps".into(),
            "skipped (no stable cluster)".into(),
        ));
    }

    let shed: u64 = nodes
        .iter()
        .map(|n| load(&n.wire_stats().connections_shed))
        .sum();
    let refused: u64 = nodes
        .iter()
        .map(|n| load(&n.wire_stats().handshakes_refused))
        .sum();
    let expired: u64 = nodes
        .iter()
        .map(|n| load(&n.stats().session_expirations))
        .sum();
    rows.push((
        "whole run: connections shed / handshakes refused / sessions expired".into(),
        format!("{shed} / {refused} / {expired}"),
    ));
    rows.push((
        "whole run: peak open file descriptors (sampled every second) / soft limit".into(),
        format!("{} / {}", peak_fds(), fd_limit()),
    ));
    rows.push(("whole run: wall time".into(), secs(Some(started.elapsed()))));
    for app in apps.values() {
        app.abort();
    }
    join_all(nodes.iter().map(Node::shutdown)).await;
    rows
}

async fn start(
    args: &Args,
    name: String,
    listen: String,
    seeds: &[String],
    counts: &Arc<Counts>,
) -> Result<Node, ringleader::Error> {
    // 0 is not a node id; the handshake names the node, so the transport
    // must know the id the node gets.
    let id = rand::random::<u64>() | 1;
    Node::builder()
        .name(name)
        .listen(listen)
        .seeds(seeds.iter().cloned())
        .partitions(args.partitions)
        .voters(args.voters)
        .id(id)
        .transport(Arc::new(CountingTransport::new(id, counts.clone())))
        .start()
        .await
}

/// Reserves `n` distinct loopback addresses by binding and releasing them.
fn free_addrs(n: usize) -> Vec<String> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").to_string())
        .collect()
}

/// A cooperative application: acknowledges every revocation at once.
fn auto_release(node: &Node) -> JoinHandle<()> {
    let node = node.clone();
    let mut events = node.events();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let Event::PartitionsRevoking { partitions, .. } = event {
                let _ = node.release(&partitions).await;
            }
        }
    })
}

// ----- waiting for stability ----------------------------------------------

/// When each milestone was first seen (relative to the action), or what was
/// observed last if it never was.
struct Waited {
    joined: Option<Duration>,
    stable: Option<Duration>,
    balanced: Option<Duration>,
    counts: (usize, usize),
    observed: String,
}

impl Waited {
    fn stable_or_observed(&self) -> String {
        match self.stable {
            Some(d) => secs(Some(d)),
            None => format!("not within the timeout; last seen: {}", self.observed),
        }
    }

    fn balanced_with_counts(&self) -> String {
        match self.balanced {
            Some(d) => format!(
                "{} (owned per node: {}-{})",
                secs(Some(d)),
                self.counts.0,
                self.counts.1
            ),
            None => format!("not within the timeout; last seen: {}", self.observed),
        }
    }
}

/// Polls until `nodes` are joined, stable and balanced, or `timeout` passes.
async fn wait(nodes: &[Node], p: u32, since: Instant, timeout: Duration, what: &str) -> Waited {
    let mut w = Waited {
        joined: None,
        stable: None,
        balanced: None,
        counts: (0, 0),
        observed: String::new(),
    };
    let deadline = since + timeout;
    let mut last_log = Instant::now();
    let mut last_sample = Instant::now();
    loop {
        let now = since.elapsed();
        let joined = nodes.iter().filter(|n| n.is_joined()).count();
        if joined == nodes.len() && w.joined.is_none() {
            w.joined = Some(now);
        }
        let (covered, duplicates, lo, hi) = ownership(nodes);
        let exact = covered == p as usize && duplicates == 0;
        // The expensive agreement check only once the cheap ones pass.
        let agreed = joined == nodes.len() && exact && agreement(nodes).is_ok();
        if agreed {
            w.stable.get_or_insert(now);
            if hi - lo <= 1 {
                w.balanced = Some(now);
                w.counts = (lo, hi);
                return w;
            }
        }
        let disagreement = if joined == nodes.len() && exact && !agreed {
            agreement(nodes).err().unwrap_or_default()
        } else {
            String::new()
        };
        w.observed = format!(
            "{joined}/{} joined, {covered}/{p} partitions owned, {duplicates} owned twice, \
             owned per node {lo}-{hi} {disagreement}",
            nodes.len()
        );
        if last_sample.elapsed() >= Duration::from_secs(1) {
            sample_fds();
            last_sample = Instant::now();
        }
        if last_log.elapsed() > Duration::from_secs(5) {
            eprintln!("{what}: after {now:.1?}: {}", w.observed);
            last_log = Instant::now();
        }
        if Instant::now() > deadline {
            return w;
        }
        tokio::time::sleep(poll_period(nodes.len())).await;
    }
}

/// (distinct partitions owned, partitions owned by more than one node,
/// fewest and most owned by one node), from each node's valid grants.
fn ownership(nodes: &[Node]) -> (usize, usize, usize, usize) {
    let mut seen = BTreeMap::<u32, usize>::new();
    let (mut lo, mut hi) = (usize::MAX, 0);
    for node in nodes {
        let owned = node.owned();
        lo = lo.min(owned.len());
        hi = hi.max(owned.len());
        for g in owned {
            *seen.entry(g.partition).or_default() += 1;
        }
    }
    let duplicates = seen.values().filter(|&&c| c > 1).count();
    (seen.len(), duplicates, lo, hi)
}

/// Ok when every node sees the same leader, exactly `nodes` as members and
/// the same committed partition owners.
fn agreement(nodes: &[Node]) -> Result<(), String> {
    let ids: BTreeSet<NodeId> = nodes.iter().map(Node::id).collect();
    let mut leader = None;
    let mut table: Option<Vec<Option<NodeId>>> = None;
    for node in nodes {
        let status = node.status();
        let members: BTreeSet<NodeId> = status.members.iter().map(|m| m.id).collect();
        if members != ids {
            return Err(format!("(a node sees {} members)", members.len()));
        }
        if status.leader.is_none() || leader.is_some_and(|l| Some(l) != status.leader) {
            return Err("(leaders differ)".into());
        }
        leader = status.leader;
        let owners: Vec<Option<NodeId>> = node.assignment().1.iter().map(|s| s.owner).collect();
        if table.as_ref().is_some_and(|t| *t != owners) {
            return Err("(partition tables differ)".into());
        }
        table.get_or_insert(owners);
    }
    Ok(())
}

// ----- the steady window --------------------------------------------------

async fn steady(nodes: &[Node], counts: &Counts, window: Duration) -> Vec<(String, String)> {
    let n = nodes.len();
    let leader = nodes.iter().find(|n| n.is_leader());
    let leader_addr = leader.map(|l| l.info().addr.clone()).unwrap_or_default();
    let before = counts.snapshot();
    let cpu_before = cpu_seconds();
    let t = Instant::now();
    sample_fds();
    tokio::time::sleep(window).await;
    sample_fds();
    let elapsed = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let after = counts.snapshot();
    let delta = |addr: Option<&str>, kind: usize| -> f64 {
        let sum = |m: &HashMap<String, Tally>| -> u64 {
            m.iter()
                .filter(|(a, _)| addr.is_none_or(|x| x == a.as_str()))
                .map(|(_, c)| c[kind])
                .sum()
        };
        (sum(&after) - sum(&before)) as f64 / elapsed
    };
    let to_leader: Vec<f64> = (0..=FAILED).map(|k| delta(Some(&leader_addr), k)).collect();
    let all: f64 = (0..FAILED).map(|k| delta(None, k)).sum();
    // "total (kind rate, ...; failed calls)", leaving out kinds under 0.5/s.
    let by_kind: Vec<String> = KINDS
        .iter()
        .zip(&to_leader)
        .filter(|(_, r)| **r >= 0.5)
        .map(|(k, r)| format!("{r:.0} {k}"))
        .collect();
    let mut rtts: Vec<u64> = nodes
        .iter()
        .filter(|n| !n.is_leader())
        .map(|n| load(&n.stats().heartbeat_rtt_micros))
        .collect();
    rtts.sort_unstable();
    let rss = rss_kib();
    let fds = open_fds().map_or_else(|e| format!("not countable: {e}"), |n| n.to_string());
    let label = format!("steady {:.0} s window", window.as_secs_f64());
    vec![
        (
            format!("{label}: requests answered by the leader per second"),
            if leader.is_some() {
                format!(
                    "{:.0} ({}; {:.0}/s failed calls)",
                    to_leader[..FAILED].iter().sum::<f64>(),
                    by_kind.join(", "),
                    to_leader[FAILED]
                )
            } else {
                "no node claims to lead".into()
            },
        ),
        (
            format!("{label}: requests answered, all nodes, per second"),
            format!("{all:.0}"),
        ),
        (
            format!("{label}: members' last heartbeat round trip, median / max"),
            match rtts.as_slice() {
                [] => "-".into(),
                r => format!(
                    "{:.1} ms / {:.1} ms",
                    r[r.len() / 2] as f64 / 1e3,
                    r[r.len() - 1] as f64 / 1e3
                ),
            },
        ),
        (
            format!("{label}: process CPU time"),
            format!(
                "{:.2} s per s ({:.1} ms per s per node)",
                cpu / elapsed,
                cpu / elapsed / n as f64 * 1e3
            ),
        ),
        (
            "process RSS (VmRSS) after the window".into(),
            format!(
                "{:.0} MiB ({:.0} KiB per node)",
                rss as f64 / 1024.0,
                rss as f64 / n as f64
            ),
        ),
        ("open file descriptors after the window".into(), fds),
    ]
}

/// Reads a `/proc/self` file through a handle opened at start-up, so it
/// still works when the nodes have used up every file descriptor.
fn proc_read(name: &str) -> Result<String, String> {
    use std::io::{Read, Seek};
    static FILES: OnceLock<Mutex<HashMap<String, std::fs::File>>> = OnceLock::new();
    let mut files = FILES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if !files.contains_key(name) {
        let f = std::fs::File::open(format!("/proc/self/{name}")).map_err(|e| e.to_string())?;
        files.insert(name.to_owned(), f);
    }
    let f = files.get_mut(name).expect("just inserted");
    let mut out = String::new();
    f.rewind().map_err(|e| e.to_string())?;
    f.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The most file descriptors seen open by [`sample_fds`]; `usize::MAX`
/// once counting failed because none were left.
static PEAK_FDS: AtomicUsize = AtomicUsize::new(0);

/// Open file descriptors, or why they could not be counted.
fn open_fds() -> Result<usize, String> {
    std::fs::read_dir("/proc/self/fd")
        .map(Iterator::count)
        .map_err(|e| e.to_string())
}

/// Records the current number of open descriptors in [`PEAK_FDS`].
fn sample_fds() {
    let n = open_fds().unwrap_or(usize::MAX);
    PEAK_FDS.fetch_max(n, Ordering::Relaxed);
}

fn peak_fds() -> String {
    match PEAK_FDS.load(Ordering::Relaxed) {
        usize::MAX => "the limit (counting failed: no descriptor left)".into(),
        n => n.to_string(),
    }
}

/// The soft limit on open files.
fn fd_limit() -> String {
    proc_read("limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .unwrap_or_else(|| "?".into())
}

/// This process's user + system CPU time, from `/proc/self/stat` (clock
/// ticks of 1/100 s, Linux's `USER_HZ`).
fn cpu_seconds() -> f64 {
    let stat = proc_read("stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

/// VmRSS from `/proc/self/status`, in KiB.
fn rss_kib() -> u64 {
    proc_read("status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn load(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(
        || "not within the timeout".into(),
        |d| format!("{:.2} s", d.as_secs_f64()),
    )
}

// ----- counting transport -------------------------------------------------

/// Answered requests per destination address, by kind (see [`KINDS`]),
/// and failed calls.
#[derive(Default)]
struct Counts(Mutex<HashMap<String, Tally>>);

impl Counts {
    fn add(&self, addr: &str, kind: usize) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = m.get_mut(addr) {
            c[kind] += 1;
        } else {
            let mut c = Tally::default();
            c[kind] = 1;
            m.insert(addr.to_owned(), c);
        }
    }

    fn snapshot(&self) -> HashMap<String, Tally> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The default TCP transport, counting what it delivers.
struct CountingTransport {
    inner: TcpTransport,
    counts: Arc<Counts>,
}

impl CountingTransport {
    /// A transport for the node started with `.id(id)`.
    fn new(id: ringleader::NodeId, counts: Arc<Counts>) -> Self {
        let wire = WireConfig {
            cluster: ringleader::config::DEFAULT_CLUSTER.to_string(),
            node: id,
            secret: None,
            tls: None,
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(2),
        };
        Self {
            inner: TcpTransport::new(Arc::new(wire)),
            counts,
        }
    }
}

impl Transport for CountingTransport {
    fn call(
        &self,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Response, TransportError>> {
        let kind = match request {
            Request::Heartbeat { .. } => 0,
            Request::AppendEntries { .. }
            | Request::Vote { .. }
            | Request::InstallSnapshot { .. } => 1,
            Request::Join { .. } => 2,
            Request::Probe => 3,
            Request::Release { .. } => 4,
            _ => 5,
        };
        let addr = addr.to_owned();
        Box::pin(async move {
            let result = self.inner.call(&addr, request, timeout).await;
            self.counts
                .add(&addr, if result.is_ok() { kind } else { FAILED });
            result
        })
    }
}
