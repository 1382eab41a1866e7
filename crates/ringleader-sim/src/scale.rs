//! Scale mode: many real [`ringleader::Node`]s in one turmoil simulation.
//!
//! `cargo run --release -p ringleader-sim -- --nodes 1000 --partitions 4096`
//! starts the nodes at once (the first 3 are the seeds; the cluster makes
//! five of the nodes voters, the library's default, and the rest are
//! members), with the library's default timings
//! ([`Timings::default`]), and measures in simulated time:
//!
//! 1. formation: from the start until ownership is *stable*: every
//!    partition in exactly one live node's [`Node::owned`], owned counts
//!    within one of each other, and every live node names the same leader,
//!    lists exactly the live nodes as members, and has a committed table
//!    that matches the holders;
//! 2. an idle window (5 s by default): requests the leader's server handled
//!    per second, by kind, counted in the simulator's network
//!    ([`CountingNet`]: the library is not changed);
//! 3. a crash of one plain member (turmoil's `crash` of its host: no
//!    goodbye, its sockets go silent) until stable again among the
//!    survivors;
//! 4. a new node joining until stable again;
//!
//! and, in-process with [`std::time::Instant`], how long
//! [`ringleader::assignment::assign`] takes for N = 100 and 1000, P = 4096.
//!
//! **Hosts.** turmoil 0.7 registers a link between every pair of hosts when
//! a host is added, and on every step walks *all* links once per running
//! host to deliver its messages (`Topology::deliver_messages`): a step costs
//! O(hosts³). With one node per host, 1000 hosts mean ~500 000 links and
//! ~5·10⁸ link visits per simulated millisecond. So members are packed
//! several to a turmoil host (each on its own port, each with its own
//! listener, connections and timers; nothing is shared between them but the
//! host's runtime). The 3 seeds, 4 more nodes and the node that joins each
//! get a host of their own; the crash hits one of those 7 that is a plain
//! member (not a voter, not the leader: the cluster picks its voters), so
//! it is a real host crash.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringleader::transport::Net;
use ringleader::{Event, Node, Role, Timings};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::TurmoilNet;

/// The first peer port on every host; packed nodes use the following ones.
const BASE_PORT: u16 = 7000;

/// Request kinds, in the order of `ringleader::protocol::Request`'s variants
/// (postcard encodes a variant as its index; the first payload byte of a
/// request frame is that index). `kind_order_matches_request` checks it.
pub const KINDS: [&str; 9] = [
    "append_entries",
    "vote",
    "install_snapshot",
    "probe",
    "join",
    "heartbeat",
    "leave",
    "release",
    "poke",
];

/// Requests one node's server received, by kind (slot `KINDS.len()`:
/// anything else), and connections it accepted.
#[derive(Debug, Default)]
pub struct RequestCounter {
    kinds: [AtomicU64; KINDS.len() + 1],
    accepted: AtomicU64,
}

impl RequestCounter {
    /// Requests by kind (the last slot: unknown kinds).
    pub fn snapshot(&self) -> [u64; KINDS.len() + 1] {
        std::array::from_fn(|i| self.kinds[i].load(Ordering::Relaxed))
    }

    /// Connections accepted.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// turmoil's TCP ([`TurmoilNet`]) plus a counter of the requests arriving on
/// accepted connections: the bytes read are split into frames (4-byte
/// big-endian length, then the payload) and every frame after the two
/// handshake frames counts as one request of the kind named by its first
/// payload byte. Costs a few comparisons per read; nothing is copied.
#[derive(Debug, Clone, Default)]
pub struct CountingNet {
    /// Where this node's counts go.
    pub counter: Arc<RequestCounter>,
}

/// A turmoil stream; the accepted ones count the requests read from them.
pub struct CountedStream {
    inner: turmoil::net::TcpStream,
    parser: Option<FrameParser>,
}

struct FrameParser {
    counter: Arc<RequestCounter>,
    /// Header bytes collected so far (while `left` is `None`).
    header: [u8; 4],
    have: usize,
    /// Payload bytes still to come, once the header is complete.
    left: Option<usize>,
    /// Whether the current payload's first byte was seen.
    first_seen: bool,
    frames: u64,
}

impl FrameParser {
    fn new(counter: Arc<RequestCounter>) -> Self {
        Self {
            counter,
            header: [0; 4],
            have: 0,
            left: None,
            first_seen: false,
            frames: 0,
        }
    }

    fn frame(&mut self, kind: Option<u8>) {
        self.frames += 1;
        // The client's Hello and Auth come first.
        if self.frames > 2 {
            let i = kind.map_or(KINDS.len(), |k| (k as usize).min(KINDS.len()));
            self.counter.kinds[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.left {
                None => {
                    let take = (4 - self.have).min(data.len());
                    self.header[self.have..self.have + take].copy_from_slice(&data[..take]);
                    self.have += take;
                    data = &data[take..];
                    if self.have == 4 {
                        self.have = 0;
                        let len = u32::from_be_bytes(self.header) as usize;
                        if len == 0 {
                            self.frame(None);
                        } else {
                            self.left = Some(len);
                            self.first_seen = false;
                        }
                    }
                }
                Some(left) => {
                    if !self.first_seen {
                        self.first_seen = true;
                        self.frame(Some(data[0]));
                    }
                    let take = left.min(data.len());
                    data = &data[take..];
                    self.left = (left > take).then_some(left - take);
                }
            }
        }
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(parser)) = (&polled, this.parser.as_mut()) {
            parser.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Net for CountingNet {
    type Stream = CountedStream;
    type Listener = turmoil::net::TcpListener;

    fn connect(
        &self,
        addr: &str,
    ) -> impl std::future::Future<Output = io::Result<Self::Stream>> + Send {
        let connect = TurmoilNet.connect(addr);
        async move {
            Ok(CountedStream {
                inner: connect.await?,
                parser: None,
            })
        }
    }

    fn bind(
        &self,
        addr: &str,
    ) -> impl std::future::Future<Output = io::Result<Self::Listener>> + Send {
        TurmoilNet.bind(addr)
    }

    async fn accept<'a>(
        &'a self,
        listener: &'a Self::Listener,
    ) -> io::Result<(Self::Stream, SocketAddr)> {
        let (inner, peer) = listener.accept().await?;
        self.counter.accepted.fetch_add(1, Ordering::Relaxed);
        let parser = Some(FrameParser::new(self.counter.clone()));
        Ok((CountedStream { inner, parser }, peer))
    }

    fn local_addr(&self, listener: &Self::Listener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ScaleConfig {
    /// Nodes at formation (5 of them voters); one more joins later.
    pub nodes: usize,
    /// Partitions.
    pub partitions: u32,
    /// Seeds turmoil, node ids and ringleader's thread-local generator.
    pub seed: u64,
    /// Members per turmoil host (0: enough to keep about 40 member hosts).
    pub per_host: usize,
    /// The idle window in which the leader's requests are counted.
    pub window: Duration,
    /// Each phase (formation, crash, join) must reach stable ownership
    /// within this much simulated time.
    pub deadline: Duration,
    /// turmoil's step.
    pub tick: Duration,
    /// How often every node's `owned()` is sampled (the time resolution).
    pub poll: Duration,
    /// Repetitions of each assignment timing (0: skip them).
    pub assignment_reps: usize,
    /// Print progress on stderr.
    pub verbose: bool,
}

impl ScaleConfig {
    /// `nodes` nodes and `partitions` partitions, everything else default.
    pub fn new(nodes: usize, partitions: u32) -> Self {
        Self {
            nodes,
            partitions,
            seed: 1,
            per_host: 0,
            window: Duration::from_secs(5),
            deadline: Duration::from_secs(60),
            tick: Duration::from_millis(1),
            poll: Duration::from_millis(10),
            assignment_reps: 21,
            verbose: false,
        }
    }

    fn members_per_host(&self) -> usize {
        if self.per_host > 0 {
            return self.per_host;
        }
        self.nodes.saturating_sub(4).div_ceil(40).max(1)
    }
}

/// How one phase went.
#[derive(Debug, Clone)]
pub struct Phase {
    /// Its name.
    pub name: &'static str,
    /// Simulated time until stable (`None`: not within the deadline).
    pub stable_after: Option<Duration>,
    /// Why it was not stable at the deadline.
    pub last_reason: Option<String>,
    /// Simulated time the phase ran.
    pub simulated: Duration,
    /// Wall time the phase took.
    pub wall: Duration,
}

/// `assign` timings for one N, in microseconds: (median, fastest).
#[derive(Debug, Clone)]
pub struct AssignmentTiming {
    /// Nodes.
    pub nodes: usize,
    /// Partitions.
    pub partitions: u32,
    /// Repetitions.
    pub reps: usize,
    /// From an empty table.
    pub fresh: (f64, f64),
    /// From a balanced table with one member gone (its entries cleared).
    pub crash: (f64, f64),
    /// From a balanced table with one member more.
    pub join: (f64, f64),
}

/// What a scale run measured.
#[derive(Debug, Clone)]
pub struct ScaleReport {
    /// The configuration.
    pub config: ScaleConfig,
    /// turmoil hosts used.
    pub hosts: usize,
    /// Members per packed host.
    pub per_host: usize,
    /// Formation, crash, join (the crash and join phases only when the one
    /// before converged).
    pub phases: Vec<Phase>,
    /// The idle window's length (simulated) and the leader's requests in it
    /// by kind.
    pub leader_window: Option<(Duration, [u64; KINDS.len() + 1])>,
    /// All nodes' requests in the idle window.
    pub all_window: Option<[u64; KINDS.len() + 1]>,
    /// Connections the leader accepted during the idle window.
    pub leader_accepted_window: Option<u64>,
    /// The crashed member's host.
    pub victim: Option<String>,
    /// Partitions the crashed member held.
    pub victim_partitions: Option<usize>,
    /// Connections the leader shed (over `MAX_CONNECTIONS`), whole run.
    pub leader_shed: u64,
    /// Simulated and wall time of the whole simulation.
    pub simulated: Duration,
    /// Wall time of the simulation (not the assignment timings).
    pub wall: Duration,
    /// `assign` timings.
    pub assignment: Vec<AssignmentTiming>,
}

impl ScaleReport {
    /// Whether formation, crash and join all reached stable ownership.
    pub fn converged(&self) -> bool {
        self.phases.len() == 3 && self.phases.iter().all(|p| p.stable_after.is_some())
    }

    /// The report as a GitHub-Markdown paragraph and table.
    pub fn table(&self) -> String {
        let c = &self.config;
        let t = Timings::default();
        let mut out = format!(
            "Simulator scale run: {} real ringleader nodes ({} voters, {} members) in one turmoil \
             simulation (one thread), {} hosts: seeds, four more nodes (one of \
             them the crashed member) and the joining node one to a host, the other members {} \
             to a host; P = {}; seed {}; default timings \
             (`Timings::default()`: heartbeat {} ms, session timeout {} ms, lease {} ms, Raft \
             heartbeat {} ms, election {}-{} ms, revoke timeout {} ms); turmoil tick {} ms, \
             message latency 0.1-3 ms; nodes started at once; applications release revoked \
             partitions at once. Times are simulated, from the action to the first sample \
             (every {} ms) where ownership is stable: every partition in exactly one live \
             node's `owned()`, counts within one, and all nodes agree on leader, members \
             and table.\n\n",
            c.nodes,
            ringleader::config::DEFAULT_VOTERS.min(c.nodes),
            c.nodes.saturating_sub(ringleader::config::DEFAULT_VOTERS),
            self.hosts,
            self.per_host,
            c.partitions,
            c.seed,
            t.heartbeat.as_millis(),
            t.session_timeout.as_millis(),
            t.lease.as_millis(),
            t.raft_heartbeat.as_millis(),
            t.election_timeout_min.as_millis(),
            t.election_timeout_max.as_millis(),
            t.revoke_timeout.as_millis(),
            c.tick.as_millis(),
            c.poll.as_millis(),
        );
        out.push_str("| measurement | result |\n|---|---|\n");
        let labels = [
            format!("formation: {} nodes started at once → stable", c.nodes),
            format!(
                "crash of one member{} → stable again",
                self.victim_partitions
                    .map(|k| format!(" holding {k} partitions"))
                    .unwrap_or_default()
            ),
            "one node joins → stable again".to_string(),
        ];
        for (i, label) in labels.iter().enumerate() {
            let value = match self.phases.get(i) {
                None => "skipped (no stable cluster before it)".to_string(),
                Some(p) => match p.stable_after {
                    Some(d) => format!(
                        "{:.2} s (wall {:.1} s)",
                        d.as_secs_f64(),
                        p.wall.as_secs_f64()
                    ),
                    None => format!(
                        "not within {:.0} s (wall {:.1} s); last seen: {}",
                        p.simulated.as_secs_f64(),
                        p.wall.as_secs_f64(),
                        p.last_reason.as_deref().unwrap_or("?")
                    ),
                },
            };
            out.push_str(&format!("| {label} | {value} |\n"));
            if i == 0 {
                if let Some((window, counts)) = &self.leader_window {
                    let secs = window.as_secs_f64();
                    out.push_str(&format!(
                        "| idle {:.0} s window: requests handled by the leader per second | {} |\n",
                        secs,
                        per_second(counts, secs)
                    ));
                    if let Some(all) = &self.all_window {
                        out.push_str(&format!(
                            "| idle window: requests handled, all nodes, per second | {} |\n",
                            per_second(all, secs)
                        ));
                    }
                    if let Some(a) = self.leader_accepted_window {
                        out.push_str(&format!(
                            "| idle window: connections the leader accepted | {a} |\n"
                        ));
                    }
                }
            }
        }
        out.push_str(&format!(
            "| connections the leader shed (over its limit), whole run | {} |\n",
            self.leader_shed
        ));
        for a in &self.assignment {
            out.push_str(&format!(
                "| `assign` time, N = {}, P = {}, release build, median (fastest) of {} | fresh {:.0} µs ({:.0}); one crash {:.0} µs ({:.0}); one join {:.0} µs ({:.0}) |\n",
                a.nodes, a.partitions, a.reps, a.fresh.0, a.fresh.1, a.crash.0, a.crash.1, a.join.0, a.join.1
            ));
        }
        let sim = self.simulated.as_secs_f64();
        let wall = self.wall.as_secs_f64();
        out.push_str(&format!(
            "| cost: simulated seconds per wall second | {:.3} ({:.1} s simulated in {:.1} s wall) |\n",
            if wall > 0.0 { sim / wall } else { 0.0 },
            sim,
            wall
        ));
        out
    }
}

fn per_second(counts: &[u64; KINDS.len() + 1], secs: f64) -> String {
    let total: u64 = counts.iter().sum();
    let parts: Vec<String> = counts
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| {
            format!(
                "{} {:.0}",
                KINDS.get(i).copied().unwrap_or("other"),
                *n as f64 / secs
            )
        })
        .collect();
    format!("{:.0} ({})", total as f64 / secs, parts.join(", "))
}

/// One node as the driver and its host share it.
struct NodeSlot {
    name: String,
    port: u16,
    id: u64,
    counter: Arc<RequestCounter>,
    node: Option<Node>,
    /// The latest sample: (simulated ms, partitions in `owned()`).
    sample: Option<(u64, Vec<u32>)>,
}

/// One turmoil host: its nodes and whether its software may start them.
struct HostState {
    active: bool,
    crashed: bool,
    nodes: Vec<NodeSlot>,
}

type SharedHost = Arc<Mutex<HostState>>;

fn lock(h: &SharedHost) -> std::sync::MutexGuard<'_, HostState> {
    h.lock().unwrap_or_else(|e| e.into_inner())
}

fn sim_ms() -> u64 {
    turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64
}

/// One host's software: once active, starts its nodes (each with an
/// application that releases revoked partitions at once), then samples
/// every node's `owned()` on every multiple of `poll_ms`.
async fn host_software(
    host: String,
    seeds: Vec<String>,
    partitions: u32,
    poll_ms: u64,
    shared: SharedHost,
) -> turmoil::Result {
    while !lock(&shared).active {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let specs: Vec<(String, u16, u64, Arc<RequestCounter>)> = lock(&shared)
        .nodes
        .iter()
        .map(|s| (s.name.clone(), s.port, s.id, s.counter.clone()))
        .collect();
    for (i, (name, port, id, counter)) in specs.into_iter().enumerate() {
        let clock: ringleader::runtime::WallClock = Arc::new(|| {
            turmoil::since_epoch().unwrap_or_else(|| UNIX_EPOCH.elapsed().unwrap_or_default())
        });
        let node = Node::builder()
            .name(name)
            .listen(format!("0.0.0.0:{port}"))
            .advertise(format!("{host}:{port}"))
            .seeds(seeds.clone())
            .partitions(partitions)
            .secret(crate::sim_secret())
            .timings(Timings::default())
            .id(id)
            .wall_clock(clock)
            .net(CountingNet { counter })
            .start()
            .await?;
        lock(&shared).nodes[i].node = Some(node.clone());
        let mut events = node.events();
        let app = node.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let Event::PartitionsRevoking { partitions, .. } = event {
                    let app = app.clone();
                    tokio::spawn(async move {
                        let _ = app.release(&partitions).await;
                    });
                }
            }
        });
    }
    loop {
        let now = sim_ms();
        let next = (now / poll_ms + 1) * poll_ms;
        tokio::time::sleep(Duration::from_millis(next - now)).await;
        let mut st = lock(&shared);
        for slot in &mut st.nodes {
            if let Some(node) = &slot.node {
                let owned = node.owned().iter().map(|g| g.partition).collect();
                slot.sample = Some((next, owned));
            }
        }
    }
}

/// The driver's view of the live nodes.
struct Live {
    /// (host, slot) of every live node.
    nodes: Vec<(usize, usize)>,
}

/// Whether ownership is stable at the latest complete sample: `Ok(ms)` with
/// the sample's time, or `Err(why not)`. `agree` also checks that every
/// node names the same leader, lists exactly the live nodes and has a
/// committed table matching the holders (costly: status and table of every
/// node).
fn stable(hosts: &[SharedHost], live: &Live, partitions: u32, agree: bool) -> Result<u64, String> {
    let mut stamp = None;
    let mut owner: Vec<Option<u64>> = vec![None; partitions as usize];
    let mut counts = Vec::with_capacity(live.nodes.len());
    let mut ids = BTreeSet::new();
    let mut nodes = Vec::with_capacity(live.nodes.len());
    for &(h, s) in &live.nodes {
        let st = lock(&hosts[h]);
        let slot = &st.nodes[s];
        let (Some(node), Some((ms, owned))) = (&slot.node, &slot.sample) else {
            return Err(format!("{} not started or not sampled", slot.name));
        };
        match stamp {
            None => stamp = Some(*ms),
            Some(t) if t != *ms => return Err("samples of different instants".into()),
            Some(_) => {}
        }
        counts.push(owned.len());
        ids.insert(slot.id);
        for p in owned {
            let Some(o) = owner.get_mut(*p as usize) else {
                return Err(format!("partition {p} out of range"));
            };
            if let Some(other) = o.replace(slot.id) {
                return Err(format!("partition {p} held by {other:x} and {:x}", slot.id));
            }
        }
        nodes.push(node.clone());
    }
    let stamp = stamp.ok_or("no live node")?;
    let held = owner.iter().filter(|o| o.is_some()).count();
    if held != partitions as usize {
        return Err(format!("{held} of {partitions} partitions held"));
    }
    let (lo, hi) = (
        counts.iter().min().copied().unwrap_or(0),
        counts.iter().max().copied().unwrap_or(0),
    );
    if hi - lo > 1 {
        return Err(format!("unbalanced: owned per node {lo}-{hi}"));
    }
    if !agree {
        return Ok(stamp);
    }
    let mut leader = None;
    for node in &nodes {
        let status = node.status();
        if status.leader.is_none() || (leader.is_some() && status.leader != leader) {
            return Err(format!(
                "{} names leader {:?}, others {:?}",
                status.name, status.leader, leader
            ));
        }
        leader = status.leader;
        if status.members.len() != ids.len() || !status.members.iter().all(|m| ids.contains(&m.id))
        {
            return Err(format!(
                "{} lists {} members, {} live",
                status.name,
                status.members.len(),
                ids.len()
            ));
        }
        let (_, table) = node.assignment();
        if !table.iter().zip(&owner).all(|(slot, o)| slot.owner == *o) {
            return Err(format!(
                "{}'s table disagrees with the holders",
                status.name
            ));
        }
    }
    Ok(stamp)
}

/// Runs the simulation phases and times `assign`; see the module docs.
pub fn run(config: &ScaleConfig) -> ScaleReport {
    assert!(config.nodes >= 5, "scale mode needs at least 5 nodes");
    let started = Instant::now();
    ringleader::runtime::seed_thread_rng(config.seed);
    let mut rng = StdRng::seed_from_u64(config.seed);
    let per_host = config.members_per_host();
    let poll_ms = config.poll.as_millis().max(1) as u64;

    // Layout: v0..v2 (the seeds), x0..x3 (one node each), m0.. (the other
    // members, packed), j (the node that joins later).
    let mut ids = BTreeSet::new();
    let mut fresh_id = |rng: &mut StdRng| loop {
        let id: u64 = rng.random::<u64>() >> 1;
        if id != 0 && ids.insert(id) {
            return id;
        }
    };
    let mut layout: Vec<(String, Vec<NodeSlot>)> = Vec::new();
    let mut add_host = |host: String, count: usize, rng: &mut StdRng| {
        let nodes = (0..count)
            .map(|k| NodeSlot {
                name: if count == 1 {
                    host.clone()
                } else {
                    format!("{host}-{k}")
                },
                port: BASE_PORT + k as u16,
                id: fresh_id(rng),
                counter: Arc::default(),
                node: None,
                sample: None,
            })
            .collect();
        layout.push((host, nodes));
    };
    for v in 0..3 {
        add_host(format!("v{v}"), 1, &mut rng);
    }
    // Voters are whichever nodes the cluster promotes, not necessarily the
    // seeds: several one-node hosts, so that one of them is a plain member.
    let singles = (config.nodes - 3).min(4);
    for x in 0..singles {
        add_host(format!("x{x}"), 1, &mut rng);
    }
    let mut rest = config.nodes - 3 - singles;
    let mut m = 0;
    while rest > 0 {
        let k = rest.min(per_host);
        add_host(format!("m{m}"), k, &mut rng);
        rest -= k;
        m += 1;
    }
    add_host("j".into(), 1, &mut rng);
    // The hosts a crash may hit: the one-node hosts, x0.. first.
    let candidates: Vec<usize> = (3..3 + singles).chain(0..3).collect();
    let joiner_host = layout.len() - 1;
    let seeds: Vec<String> = (0..3).map(|v| format!("v{v}:{BASE_PORT}")).collect();

    let mut sim = turmoil::Builder::new()
        .rng_seed(config.seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .simulation_duration(Duration::from_secs(24 * 3600))
        .tick_duration(config.tick)
        .min_message_latency(Duration::from_micros(100))
        .max_message_latency(Duration::from_millis(3))
        .fail_rate(0.0)
        .enable_random_order()
        // Connections waiting to be accepted (and segments buffered per
        // stream): every member connects to the leader at once.
        .tcp_capacity(1 << 16)
        .build();
    let layout_names: Vec<String> = layout.iter().map(|(name, _)| name.clone()).collect();
    let hosts: Vec<SharedHost> = layout
        .into_iter()
        .enumerate()
        .map(|(i, (name, nodes))| {
            let shared = Arc::new(Mutex::new(HostState {
                active: i != joiner_host,
                crashed: false,
                nodes,
            }));
            let h = shared.clone();
            let seeds = seeds.clone();
            let partitions = config.partitions;
            sim.host(name.clone(), move || {
                host_software(name.clone(), seeds.clone(), partitions, poll_ms, h.clone())
            });
            shared
        })
        .collect();
    let live = |hosts: &[SharedHost]| Live {
        nodes: hosts
            .iter()
            .enumerate()
            .flat_map(|(h, s)| {
                let st = lock(s);
                let n = if st.active && !st.crashed {
                    st.nodes.len()
                } else {
                    0
                };
                (0..n).map(move |k| (h, k))
            })
            .collect(),
    };
    let log = |what: String| {
        if config.verbose {
            eprintln!("[{:7.1} s wall] {what}", started.elapsed().as_secs_f64());
        }
    };
    log(format!(
        "{} nodes on {} hosts ({per_host} members per packed host), P = {}",
        config.nodes,
        hosts.len(),
        config.partitions
    ));

    let mut report = ScaleReport {
        config: config.clone(),
        hosts: hosts.len(),
        per_host,
        phases: Vec::new(),
        leader_window: None,
        all_window: None,
        leader_accepted_window: None,
        victim: None,
        victim_partitions: None,
        leader_shed: 0,
        simulated: Duration::ZERO,
        wall: Duration::ZERO,
        assignment: Vec::new(),
    };

    // Steps until stable or the deadline; the stable time is relative to
    // `since` (simulated ms).
    let until_stable = |sim: &mut turmoil::Sim<'_>, name: &'static str| -> Phase {
        let wall = Instant::now();
        let since = sim.elapsed();
        let deadline = since + config.deadline;
        let live_nodes = live(&hosts);
        let mut agree_after = 0u64;
        let mut last = String::from("no complete sample");
        let mut next_log = since + Duration::from_secs(1);
        loop {
            if let Err(e) = sim.step() {
                last = format!("simulation error: {e}");
                break;
            }
            let now = sim.elapsed();
            if now >= next_log {
                log(format!(
                    "{name}: {:.1} s simulated: {last}",
                    (now - since).as_secs_f64()
                ));
                next_log += Duration::from_secs(1);
            }
            // Cheap (a lock and the owned lists per node): every step.
            let ms = now.as_millis() as u64;
            match stable(&hosts, &live_nodes, config.partitions, false) {
                Err(why) => last = why,
                Ok(_) if ms < agree_after => {}
                Ok(_) => match stable(&hosts, &live_nodes, config.partitions, true) {
                    Ok(at) => {
                        let at = Duration::from_millis(at);
                        return Phase {
                            name,
                            stable_after: Some(at.saturating_sub(since)),
                            last_reason: None,
                            simulated: now - since,
                            wall: wall.elapsed(),
                        };
                    }
                    Err(why) => {
                        // Agreement costs a status and a table copy per
                        // node: try again a little later.
                        last = why;
                        agree_after = ms + 5 * poll_ms;
                    }
                },
            }
            if now >= deadline {
                break;
            }
        }
        Phase {
            name,
            stable_after: None,
            last_reason: Some(last),
            simulated: sim.elapsed() - since,
            wall: wall.elapsed(),
        }
    };

    let leader_slot = |hosts: &[SharedHost]| -> Option<(usize, usize)> {
        let any = lock(&hosts[0]).nodes[0].node.clone()?;
        let leader = any.status().leader?;
        hosts.iter().enumerate().find_map(|(h, s)| {
            let st = lock(s);
            st.nodes
                .iter()
                .position(|n| n.id == leader)
                .filter(|_| !st.crashed)
                .map(|k| (h, k))
        })
    };
    let counts_of = |hosts: &[SharedHost], at: (usize, usize)| {
        let st = lock(&hosts[at.0]);
        let c = &st.nodes[at.1].counter;
        (c.snapshot(), c.accepted())
    };
    let all_counts = |hosts: &[SharedHost]| {
        let mut sum = [0u64; KINDS.len() + 1];
        for h in hosts {
            for n in &lock(h).nodes {
                for (s, v) in sum.iter_mut().zip(n.counter.snapshot()) {
                    *s += v;
                }
            }
        }
        sum
    };

    // 1. Formation.
    let formation = until_stable(&mut sim, "formation");
    log(format!("formation: {:?}", formation.stable_after));
    let formed = formation.stable_after.is_some();
    report.phases.push(formation);

    if formed {
        // 2. The idle window.
        if let Some(leader) = leader_slot(&hosts) {
            let (before, acc_before) = counts_of(&hosts, leader);
            let all_before = all_counts(&hosts);
            let t0 = sim.elapsed();
            while sim.elapsed() < t0 + config.window {
                if sim.step().is_err() {
                    break;
                }
            }
            let window = sim.elapsed() - t0;
            let (after, acc_after) = counts_of(&hosts, leader);
            let all_after = all_counts(&hosts);
            if leader_slot(&hosts) == Some(leader) {
                report.leader_window =
                    Some((window, std::array::from_fn(|i| after[i] - before[i])));
                report.all_window = Some(std::array::from_fn(|i| all_after[i] - all_before[i]));
                report.leader_accepted_window = Some(acc_after - acc_before);
            }
            log(format!("idle window done: {:?}", report.leader_window));
        }

        // 3. Crash a plain member (not a voter) that has a host of its own.
        let plain: BTreeSet<u64> = leader_slot(&hosts)
            .and_then(|(h, k)| lock(&hosts[h]).nodes[k].node.clone())
            .map(|leader| {
                leader
                    .status()
                    .members
                    .iter()
                    .filter(|m| m.role == Role::Member && !m.leader)
                    .map(|m| m.id)
                    .collect()
            })
            .unwrap_or_default();
        let victim = candidates
            .iter()
            .copied()
            .find(|h| plain.contains(&lock(&hosts[*h]).nodes[0].id));
        if let Some(victim_host) = victim {
            let victim_name = layout_names[victim_host].clone();
            {
                let mut st = lock(&hosts[victim_host]);
                report.victim_partitions = st.nodes[0].sample.as_ref().map(|(_, o)| o.len());
                st.crashed = true;
                st.nodes[0].node = None;
            }
            sim.crash(victim_name.as_str());
            report.victim = Some(victim_name);
            let crash = until_stable(&mut sim, "crash");
            log(format!("crash: {:?}", crash.stable_after));
            let recovered = crash.stable_after.is_some();
            report.phases.push(crash);

            // 4. A new node joins.
            if recovered {
                lock(&hosts[joiner_host]).active = true;
                let join = until_stable(&mut sim, "join");
                log(format!("join: {:?}", join.stable_after));
                report.phases.push(join);
            }
        } else {
            log("no one-node host runs a plain member: no crash".into());
        }
        report.leader_shed = leader_slot(&hosts)
            .and_then(|(h, k)| lock(&hosts[h]).nodes[k].node.clone())
            .map_or(0, |n| {
                n.wire_stats().connections_shed.load(Ordering::Relaxed)
            });
    }
    report.simulated = sim.elapsed();
    report.wall = started.elapsed();
    // Drop the nodes before the simulation.
    for h in &hosts {
        for n in &mut lock(h).nodes {
            n.node = None;
        }
    }
    drop(sim);

    if config.assignment_reps > 0 {
        for n in [100, 1000] {
            report.assignment.push(time_assignment(
                n,
                config.partitions,
                config.assignment_reps,
                config.seed,
            ));
        }
    }
    report
}

/// Times [`ringleader::assignment::assign`] for `n` random member ids and
/// `partitions` partitions, `reps` times each: from an empty table, from a
/// balanced table with one member gone (its entries cleared, as
/// `handoff::plan` passes them) and with one member added.
pub fn time_assignment(n: usize, partitions: u32, reps: usize, seed: u64) -> AssignmentTiming {
    use ringleader::assignment::assign;
    let mut rng = StdRng::seed_from_u64(seed ^ n as u64);
    let mut members = BTreeSet::new();
    while members.len() < n {
        members.insert(rng.random::<u64>() >> 1);
    }
    let empty = vec![None; partitions as usize];
    let balanced = assign(&members, &empty);
    let gone = *members.iter().nth(n / 2).expect("n > 0");
    let mut fewer = members.clone();
    fewer.remove(&gone);
    let cleared: Vec<Option<u64>> = balanced
        .iter()
        .map(|o| o.filter(|id| *id != gone))
        .collect();
    let mut more = members.clone();
    while more.len() == members.len() {
        more.insert(rng.random::<u64>() >> 1);
    }
    let time = |members: &BTreeSet<u64>, table: &[Option<u64>]| {
        let mut us: Vec<f64> = (0..reps.max(1))
            .map(|_| {
                let t = Instant::now();
                let out = assign(members, table);
                let e = t.elapsed();
                std::hint::black_box(out);
                e.as_secs_f64() * 1e6
            })
            .collect();
        us.sort_by(f64::total_cmp);
        (us[us.len() / 2], us[0])
    };
    AssignmentTiming {
        nodes: n,
        partitions,
        reps: reps.max(1),
        fresh: time(&members, &empty),
        crash: time(&fewer, &cleared),
        join: time(&more, &balanced),
    }
}

/// Per-kind request counts of the parser, for tests.
#[cfg(test)]
fn parse(bytes: &[&[u8]]) -> [u64; KINDS.len() + 1] {
    let counter = Arc::new(RequestCounter::default());
    let mut p = FrameParser::new(counter.clone());
    for b in bytes {
        p.feed(b);
    }
    counter.snapshot()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringleader::protocol::Request;
    use ringleader::transport::codec::encode;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn kind_order_matches_request() {
        let probe = encode(&Request::Probe).expect("encode");
        assert_eq!(KINDS[probe[0] as usize], "probe");
        let hb = encode(&Request::Heartbeat {
            id: 1,
            known_created: 2,
            known_index: 3,
            released: vec![],
        })
        .expect("encode");
        assert_eq!(KINDS[hb[0] as usize], "heartbeat");
        let poke = encode(&Request::Poke { target: 1 }).expect("encode");
        assert_eq!(KINDS[poke[0] as usize], "poke");
        let leave = encode(&Request::Leave { id: 1 }).expect("encode");
        assert_eq!(KINDS[leave[0] as usize], "leave");
    }

    #[test]
    fn parser_skips_the_handshake_and_survives_any_split() {
        let mut bytes = frame(b"hello");
        bytes.extend(frame(b"auth"));
        bytes.extend(frame(&[5, 1, 2, 3]));
        bytes.extend(frame(&[3]));
        bytes.extend(frame(&[5; 300]));
        let whole = parse(&[&bytes]);
        assert_eq!(whole[5], 2);
        assert_eq!(whole[3], 1);
        assert_eq!(whole.iter().sum::<u64>(), 3);
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(parse(&bytewise), whole);
        let odd: Vec<&[u8]> = bytes.chunks(7).collect();
        assert_eq!(parse(&odd), whole);
    }

    #[test]
    fn small_cluster_converges_after_crash_and_join() {
        let mut config = ScaleConfig::new(20, 64);
        config.window = Duration::from_secs(1);
        config.assignment_reps = 0;
        let report = run(&config);
        assert!(report.converged(), "{}", report.table());
        assert_eq!(report.phases.len(), 3);
        assert!(report.victim_partitions.is_some());
    }
}
