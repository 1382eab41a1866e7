//! Deterministic simulation of ringleader clusters.
//!
//! One seed picks a cluster shape (3 to 9 hosts, 8 to 512 partitions) and a
//! random fault schedule; the real [`ringleader::Node`] code runs on every
//! host inside [turmoil] (simulated TCP, simulated time, one thread). After
//! every simulated millisecond the driver checks the invariants of
//! `docs/testing.md` section 6 against what every host sampled in that
//! millisecond and what its event stream said. See `docs/testing.md`,
//! section 7.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use ringleader::clock::Process;
use ringleader::ownership::Grant;
use ringleader::transport::Net;
use ringleader::{Event, Node, Role, Timings};

pub mod disk;
pub mod outsider;
pub mod scale;

/// The simulated network: turmoil's TCP.
#[derive(Debug, Clone, Copy, Default)]
pub struct TurmoilNet;

impl Net for TurmoilNet {
    type Stream = turmoil::net::TcpStream;
    type Listener = turmoil::net::TcpListener;

    fn connect(
        &self,
        addr: &str,
    ) -> impl std::future::Future<Output = std::io::Result<Self::Stream>> + Send {
        let addr = addr.to_string();
        async move { turmoil::net::TcpStream::connect(addr).await }
    }

    fn bind(
        &self,
        addr: &str,
    ) -> impl std::future::Future<Output = std::io::Result<Self::Listener>> + Send {
        let addr = addr.to_string();
        async move { turmoil::net::TcpListener::bind(addr).await }
    }

    fn accept<'a>(
        &'a self,
        listener: &'a Self::Listener,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::Stream, SocketAddr)>> + Send + 'a
    {
        listener.accept()
    }

    fn local_addr(&self, listener: &Self::Listener) -> std::io::Result<SocketAddr> {
        listener.local_addr()
    }
}

/// The peer port every simulated host listens on.
pub const PORT: u16 = 7000;

/// The cluster secret every simulated node is given: the simulated network
/// is not loopback, and nodes there authenticate like nodes anywhere.
pub fn sim_secret() -> ringleader::transport::handshake::Secret {
    match ringleader::transport::handshake::Secret::new(&b"simulated cluster secret"[..]) {
        Ok(secret) => secret,
        Err(e) => unreachable!("a 24-byte secret is long enough: {e}"),
    }
}

/// Timings used in the simulation: the library defaults except a 2 s
/// revocation timeout (defaults: heartbeat 200 ms, session 1 s, lease 1 s,
/// Raft heartbeat 50 ms, election 150-200 ms, RPC timeout 500 ms).
pub fn sim_timings() -> Timings {
    Timings {
        revoke_timeout: Duration::from_secs(2),
        ..Timings::default()
    }
}

/// How long the fault phase lasts.
pub const FAULT_PHASE: Duration = Duration::from_secs(8);
/// The longest the initial cluster may take to settle.
pub const FORMATION_BOUND: Duration = Duration::from_secs(15);
/// Invariant 5: after the heal (network repaired, crashed hosts restarted
/// as new incarnations), the cluster must settle within this bound:
/// election (0.4 s) + session timeout (1 s) + lease (1 s) + revoke timeout
/// (2 s) + joins and voter promotion of restarted hosts (~1 s) + margin.
pub const CONVERGENCE_BOUND: Duration = Duration::from_secs(10);

/// What one seed did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Hosts.
    pub nodes: usize,
    /// Partitions.
    pub partitions: u32,
    /// Invariant violations (empty: passed).
    pub violations: Vec<String>,
    /// The trace: schedule actions and every event, stamped with simulated
    /// milliseconds.
    pub trace: Vec<String>,
    /// A hash of the trace (same seed, same hash when deterministic).
    pub trace_hash: u64,
    /// Writes the mock store refused (stale tokens; fine).
    pub stale_writes_refused: u64,
    /// Writes the mock store accepted.
    pub writes_accepted: u64,
    /// Simulated milliseconds from the heal until the cluster settled.
    pub converged_after_ms: Option<u64>,
    /// Faults injected.
    pub faults: usize,
    /// Simulated duration.
    pub simulated: Duration,
    /// How the seed ran (its replay flags).
    pub mode: Mode,
}

/// What kind of cluster a seed runs, beyond what the seed draws.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mode {
    /// An [`outsider`] attacks the cluster during its first 10 s.
    pub outsider: bool,
    /// Every host has a [`disk::SimDisk`] (a data directory surviving its
    /// crashes, losing what was not synced), and the faults include
    /// restarts that keep it: a majority of voters at once, crash loops of
    /// one node, the whole cluster at once.
    pub durable: bool,
    /// The voter target (0: the library's default). Plain seeds run with
    /// 3, as every soak before durable voters did.
    pub voters: usize,
    /// Restart storms: besides the other faults, rolling crashes of one
    /// host after another, each restarted at once, the next 1.5-2 s later
    /// (beyond a replacement round, so even nodes without disks must keep
    /// their quorum: an impatient rolling deploy). A storm starts from a
    /// healthy cluster; without disks no other fault starts during it.
    pub storms: bool,
}

impl Mode {
    /// The `ringleader-sim` flags that replay this mode.
    pub fn flags(&self) -> String {
        let mut flags = String::new();
        if self.outsider {
            flags.push_str(" --outsider");
        }
        if self.durable {
            flags.push_str(" --durable");
        }
        if self.storms {
            flags.push_str(" --storms");
        }
        // What `ringleader-sim` picks without --voters.
        let default = if self.durable { 0 } else { 3 };
        if self.voters != default {
            flags.push_str(&format!(" --voters {}", self.voters));
        }
        flags
    }
}

impl Outcome {
    /// The failure report: seed, violations and a compact trace (schedule
    /// actions, leader changes and the last events before the first
    /// violation).
    pub fn report(&self) -> String {
        let mut out = format!(
            "seed {} FAILED ({} nodes, {} partitions): {} violation(s); replay with `cargo run -p ringleader-sim -- --seed {}{}`\n",
            self.seed,
            self.nodes,
            self.partitions,
            self.violations.len(),
            self.seed,
            self.mode.flags()
        );
        for v in self.violations.iter().take(10) {
            out.push_str(&format!("  VIOLATION {v}\n"));
        }
        out.push_str("  trace (actions, leaders, violations; last 40 lines of everything):\n");
        let compact: Vec<&String> = self
            .trace
            .iter()
            .filter(|l| {
                l.contains(" ACTION ") || l.contains("LeaderChanged") || l.contains("VIOLATION")
            })
            .collect();
        for l in compact.iter().take(200) {
            out.push_str(&format!("    {l}\n"));
        }
        out.push_str("    ...\n");
        let first_violation = self
            .trace
            .iter()
            .position(|l| l.contains("VIOLATION"))
            .unwrap_or(self.trace.len());
        let end = (first_violation + 1).min(self.trace.len());
        for l in &self.trace[end.saturating_sub(40)..end] {
            out.push_str(&format!("    {l}\n"));
        }
        out
    }
}

/// One host's sample of one millisecond: incarnation id, valid grants, and
/// `(leader, epoch)` when it answered `is_leader()`.
type Sample = (u64, Vec<Grant>, Option<(u64, u64)>);

/// What one host's tasks report to the driver.
#[derive(Default)]
struct Obs {
    /// (simulated ms, id, valid grants, (leader, epoch) when `is_leader()`).
    samples: Vec<(u64, Sample)>,
    /// (simulated ms, id, event).
    events: Vec<(u64, u64, Event)>,
    /// (process key, node id) of each process the host started.
    started: Vec<(u64, u64)>,
}

/// One host as the driver and the host's software share it.
#[derive(Default)]
struct Slot {
    /// The id of the incarnation to start next.
    next_id: u64,
    /// Whether the host's software should run a node (false: not joined yet).
    active: bool,
    /// Set by the driver: leave gracefully.
    leave: bool,
    /// This host's clock rate (parts per million away from real speed),
    /// the same for every incarnation (one machine).
    rate_ppm: i32,
    /// How long this host's application takes to release a revoked
    /// partition (`None`: it never does; the revocation deadline applies).
    release_after: Option<Duration>,
    /// The running incarnation's process (the driver pauses it).
    process: Option<Process>,
    /// The host's disk, in durable mode.
    disk: Option<disk::SimDisk>,
    /// Processes started on this host so far.
    starts: u64,
    /// The voter target to start nodes with (0: the default).
    voters: usize,
    node: Option<Node>,
    obs: Obs,
}

type Shared = Arc<Mutex<Slot>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Slot> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn sim_ms() -> u64 {
    turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64
}

/// The software of one host: waits until activated, starts a node (a new
/// incarnation each time it runs) in a [`Process`] running at the host's
/// clock rate, plays the application (releases revoked partitions after
/// the host's `release_after`, or never; paused with the process) and
/// samples the node every
/// millisecond. The sampler stands outside the process: it keeps asking
/// while the process is paused, and the node answers by its own clock.
async fn host_software(
    name: String,
    seeds: Vec<String>,
    partitions: u32,
    slot: Shared,
) -> turmoil::Result {
    loop {
        if lock(&slot).active {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (node_id, rate_ppm, release_after, disk, voters, start) = {
        let mut s = lock(&slot);
        s.starts += 1;
        (
            s.next_id,
            s.rate_ppm,
            s.release_after,
            s.disk.clone(),
            s.voters,
            s.starts,
        )
    };
    // The checker follows processes: a restart with the disk keeps the
    // node id, so each process after the first gets a key of its own.
    let id = process_key(node_id, start);
    lock(&slot).obs.started.push((id, node_id));
    let process = Process::new(rate_ppm);
    lock(&slot).process = Some(process.clone());
    let clock: ringleader::runtime::WallClock = Arc::new(|| {
        turmoil::since_epoch().unwrap_or_else(|| UNIX_EPOCH.elapsed().unwrap_or_default())
    });
    let builder = Node::builder()
        .name(name.clone())
        .listen(format!("0.0.0.0:{PORT}"))
        .advertise(format!("{name}:{PORT}"))
        .seeds(seeds)
        .partitions(partitions)
        .secret(sim_secret())
        .timings(sim_timings())
        .id(node_id)
        .wall_clock(clock)
        .net(TurmoilNet)
        .process(process.clone());
    let builder = if voters == 0 {
        builder
    } else {
        builder.voters(voters)
    };
    let builder = match disk {
        Some(disk) => {
            let place = format!("{name}'s disk");
            let store = ringleader::raft::store::DiskStore::open_backend(disk.open(), place)?;
            builder.store(Arc::new(store))
        }
        None => builder,
    };
    let node = process.run(builder.start()).await?;
    lock(&slot).node = Some(node.clone());
    let mut events = node.events();
    let recorder = slot.clone();
    let app = node.clone();
    tokio::spawn(process.run(async move {
        while let Some(event) = events.next().await {
            let ms = sim_ms();
            if let (Event::PartitionsRevoking { partitions, .. }, Some(after)) =
                (&event, release_after)
            {
                let partitions = partitions.clone();
                let app = app.clone();
                ringleader::clock::spawn(async move {
                    if !after.is_zero() {
                        ringleader::clock::sleep(after).await;
                    }
                    let _ = app.release(&partitions).await;
                });
            }
            lock(&recorder).obs.events.push((ms, id, event));
        }
    }));
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    loop {
        tick.tick().await;
        if lock(&slot).leave {
            let _ = node.leave(Duration::from_secs(5)).await;
            lock(&slot).node = None;
            return Ok(());
        }
        let ms = sim_ms();
        let owned = node.owned();
        let leads = if node.is_leader() {
            node.leader()
        } else {
            None
        };
        lock(&slot).obs.samples.push((ms, (id, owned, leads)));
    }
}

/// The checker's name for the `start`-th process of node `node_id`: the id
/// itself for the first, distinct values for later ones (restarts with the
/// disk keep the node id).
fn process_key(node_id: u64, start: u64) -> u64 {
    if start <= 1 {
        node_id
    } else {
        node_id ^ start.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17)
    }
}

/// Per-node event grammar state for one partition.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Held {
    Held,
    Revoking,
}

/// A fault to undo later.
#[derive(Debug, Clone)]
enum Undo {
    Restart(usize),
    /// Restart a host in a crash loop; it crashes again this many times.
    RestartLoop(usize, u32),
    /// Crash a host of a crash loop again (then restart it, `.1` more
    /// times to go).
    Recrash(usize, u32),
    /// The next crash of a restart storm (`.0` more to go).
    StormNext(u32),
    Rejoin(usize),
    Repair(Vec<usize>, Vec<usize>),
    RepairOneway(usize, usize),
    Release(usize, usize),
    ResetLatency(usize, usize),
    ResetLoss(usize, usize),
    /// Resume a paused host's process.
    Resume(usize, Process),
    Nothing,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Forming,
    Faults,
    Healing,
    Done,
}

/// Runs one seed to the end and returns what happened (3 voters, no
/// disks: the mode every soak before durable voters ran).
pub fn run_seed(seed: u64) -> Outcome {
    run_seed_in(
        seed,
        Mode {
            voters: 3,
            ..Mode::default()
        },
    )
}

/// Runs one seed with an [`outsider`] attacking the cluster during its
/// first 10 s (the same cluster and faults as [`run_seed`] would draw; the
/// outsider's traffic changes the interleavings).
pub fn run_seed_with_outsider(seed: u64) -> Outcome {
    run_seed_in(
        seed,
        Mode {
            outsider: true,
            voters: 3,
            ..Mode::default()
        },
    )
}

/// Runs one seed with disks and the default voter target (see
/// [`Mode::durable`]).
pub fn run_seed_durable(seed: u64) -> Outcome {
    run_seed_in(
        seed,
        Mode {
            durable: true,
            ..Mode::default()
        },
    )
}

/// Runs one seed in `mode`.
pub fn run_seed_in(seed: u64, mode: Mode) -> Outcome {
    run(seed, mode)
}

fn run(seed: u64, mode: Mode) -> Outcome {
    let with_outsider = mode.outsider;
    // Everything ringleader draws (ids it would draw, nonces, openraft's
    // election timeouts) follows from the seed: every host runs on this
    // thread.
    ringleader::runtime::seed_thread_rng(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = rng.random_range(3..=9);
    let partitions: u32 = *[8u32, 16, 32, 64, 128, 256, 512]
        .choose(&mut rng)
        .expect("non-empty");
    // Some hosts join later.
    let initial = if n > 3 { rng.random_range(3..=n) } else { n };
    let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
    let seeds: Vec<String> = names[..initial]
        .iter()
        .map(|h| format!("{h}:{PORT}"))
        .collect();

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .simulation_duration(Duration::from_secs(3600))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(100))
        .max_message_latency(Duration::from_millis(3))
        .fail_rate(0.0)
        .repair_rate(0.02)
        .enable_random_order()
        // turmoil panics when more connections wait to be accepted than
        // this (default 64), e.g. when a held link releases a burst of
        // connection attempts at once. Linux's default backlog is 4096.
        .tcp_capacity(4096)
        .build();

    let mut used_ids = BTreeSet::new();
    let mut fresh_id = |rng: &mut StdRng| loop {
        let id: u64 = rng.random::<u64>() >> 1;
        if id != 0 && used_ids.insert(id) {
            return id;
        }
    };

    let rates = clock_rates(seed, n);
    let release_delays = release_delays(seed, n);
    let slots: Vec<Shared> = (0..n).map(|_| Shared::default()).collect();
    for (i, name) in names.iter().enumerate() {
        {
            let mut s = lock(&slots[i]);
            s.next_id = fresh_id(&mut rng);
            s.active = i < initial;
            s.rate_ppm = rates[i];
            s.release_after = release_delays[i];
            s.disk = mode.durable.then(disk::SimDisk::default);
            s.voters = mode.voters;
        }
        let slot = slots[i].clone();
        let name = name.clone();
        let seeds = seeds.clone();
        sim.host(name.clone(), move || {
            host_software(name.clone(), seeds.clone(), partitions, slot.clone())
        });
    }
    let findings = outsider::Findings::default();
    if with_outsider {
        sim.client(
            "outsider",
            outsider::software(
                seed,
                names.clone(),
                partitions,
                Duration::from_secs(1),
                Duration::from_secs(10),
                findings.clone(),
            ),
        );
    }

    let mut st = Checker::new(seed, partitions);
    st.trace.push(format!(
        "seed {seed}: {n} hosts ({initial} at start), {partitions} partitions{}",
        mode.flags()
    ));
    let shown: Vec<String> = names
        .iter()
        .zip(&rates)
        .map(|(h, r)| format!("{h} {r:+}"))
        .collect();
    st.action(0, format!("clock rates (ppm): {}", shown.join(", ")));
    let apps: Vec<String> = names
        .iter()
        .zip(&release_delays)
        .map(|(h, d)| match d {
            Some(d) => format!("{h} {} ms", d.as_millis()),
            None => format!("{h} never"),
        })
        .collect();
    st.action(
        0,
        format!("applications release after: {}", apps.join(", ")),
    );
    // Per host: Some(down since) when crashed or left and not back yet.
    let mut down: Vec<bool> = vec![false; n];
    let mut left: Vec<bool> = vec![false; n];
    let mut pending: Vec<(u64, Undo)> = Vec::new();
    let mut phase = Phase::Forming;
    let mut phase_start: u64 = 0;
    let mut next_fault: u64 = 0;
    let mut faults = 0usize;
    let mut net_faults_active = 0usize;
    let mut converged_after_ms = None;
    let mut settled_since: Option<u64> = None;
    // One restart storm at a time.
    let mut storming = false;

    loop {
        if let Err(e) = sim.step() {
            st.violation(0, format!("simulation error: {e}"));
            break;
        }
        let now = sim.elapsed().as_millis() as u64;
        // Collect what the hosts reported, in host order.
        for (i, slot) in slots.iter().enumerate() {
            let obs = std::mem::take(&mut lock(slot).obs);
            st.absorb(i, obs);
        }
        // Samples of a millisecond may straddle two steps; check with lag.
        st.check_until(now.saturating_sub(2));
        for finding in std::mem::take(&mut *findings.lock().unwrap_or_else(|e| e.into_inner())) {
            st.violation(now, finding);
        }

        let live: Vec<(usize, Node)> = slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = lock(s);
                if s.leave || down[i] || !s.active {
                    None
                } else {
                    s.node.clone().map(|n| (i, n))
                }
            })
            .collect();
        let expected_live = (0..n)
            .filter(|i| lock(&slots[*i]).active && !down[*i] && !left[*i])
            .count();
        let settled = live.len() == expected_live && st.settled(&live, partitions, now);
        if settled {
            settled_since.get_or_insert(now);
        } else {
            settled_since = None;
        }

        match phase {
            Phase::Forming => {
                if settled_since.is_some_and(|t| now >= t + 300) {
                    st.action(now, "cluster formed; faults begin".into());
                    phase = Phase::Faults;
                    phase_start = now;
                    next_fault = now + rng.random_range(100..800);
                } else if now > FORMATION_BOUND.as_millis() as u64 {
                    st.violation(now, "the initial cluster did not settle in time".into());
                    break;
                }
            }
            Phase::Faults => {
                if now >= phase_start + FAULT_PHASE.as_millis() as u64 {
                    // Heal everything (a crash loop ends with its restart).
                    for (_, undo) in std::mem::take(&mut pending) {
                        if matches!(undo, Undo::Recrash(..) | Undo::StormNext(_)) {
                            continue;
                        }
                        apply_undo(
                            &mut sim,
                            &names,
                            &slots,
                            &mut down,
                            &mut left,
                            &mut fresh_id,
                            &mut rng,
                            &undo,
                            &mut st,
                            now,
                        );
                    }
                    for a in 0..n {
                        for b in a + 1..n {
                            sim.set_link_fail_rate(names[a].as_str(), names[b].as_str(), 0.0);
                            sim.release(names[a].as_str(), names[b].as_str());
                            sim.repair(names[a].as_str(), names[b].as_str());
                        }
                    }
                    st.action(
                        now,
                        "heal: network repaired, paused hosts resumed, crashed hosts restarted"
                            .into(),
                    );
                    phase = Phase::Healing;
                    phase_start = now;
                    settled_since = None;
                    continue;
                }
                // Undo what is due.
                let due: Vec<Undo> = {
                    let (due, rest): (Vec<_>, Vec<_>) =
                        pending.drain(..).partition(|(at, _)| *at <= now);
                    pending = rest;
                    due.into_iter().map(|(_, u)| u).collect()
                };
                for undo in due {
                    if !matches!(
                        undo,
                        Undo::Restart(_)
                            | Undo::RestartLoop(..)
                            | Undo::Recrash(..)
                            | Undo::StormNext(_)
                            | Undo::Rejoin(_)
                            | Undo::Nothing
                    ) {
                        net_faults_active = net_faults_active.saturating_sub(1);
                    }
                    if let Some(next) = crash_loop_step(
                        &mut sim, &names, &slots, &mut down, &mut rng, &undo, &mut st, now,
                    ) {
                        pending.push(next);
                    }
                    if let Undo::StormNext(left) = undo {
                        let running: Vec<usize> = live.iter().map(|(i, _)| *i).collect();
                        let next = storm_step(
                            &mut sim, &names, &slots, &mut down, &mut rng, &running, left, &mut st,
                            now,
                        );
                        storming = !next.is_empty() && left > 0;
                        pending.extend(next);
                    }
                    apply_undo(
                        &mut sim,
                        &names,
                        &slots,
                        &mut down,
                        &mut left,
                        &mut fresh_id,
                        &mut rng,
                        &undo,
                        &mut st,
                        now,
                    );
                }
                if now >= next_fault {
                    next_fault = now + rng.random_range(150..1200);
                    let healthy = net_faults_active == 0
                        && !down.iter().any(|d| *d)
                        && healthy_voters(&live, &st.leading);
                    // A storm starts from a healthy cluster and runs alone:
                    // nodes without disks promise to keep their quorum
                    // through restarts spaced beyond a replacement round,
                    // not through those plus partitions and pauses.
                    let storm = mode.storms && !storming && healthy && rng.random_bool(0.2);
                    let picked = if storming && !mode.durable {
                        None
                    } else if storm {
                        storming = true;
                        let crashes = rng.random_range(4..10);
                        Some((
                            format!("restart storm: {crashes} hosts crash one after another"),
                            vec![(now, Undo::StormNext(crashes))],
                            false,
                        ))
                    } else if mode.durable && rng.random_bool(0.25) {
                        pick_restart_fault(
                            &mut rng,
                            &mut sim,
                            &names,
                            &slots,
                            &live,
                            &st.leading,
                            now,
                        )
                    } else {
                        pick_fault(
                            &mut rng,
                            &mut sim,
                            &names,
                            &slots,
                            &live,
                            &st.leading,
                            healthy || mode.durable,
                            n,
                            now,
                        )
                        .map(|(what, undo, is_net)| (what, vec![undo], is_net))
                    };
                    if let Some((what, undos, is_net)) = picked {
                        faults += 1;
                        st.action(now, what);
                        for undo in undos {
                            match &undo.1 {
                                Undo::Restart(i) | Undo::RestartLoop(i, _) => down[*i] = true,
                                Undo::Rejoin(i) => {
                                    down[*i] = true;
                                    left[*i] = true;
                                }
                                _ => {}
                            }
                            if is_net {
                                net_faults_active += 1;
                            }
                            pending.push(undo);
                        }
                    }
                }
            }
            Phase::Healing => {
                if settled_since.is_some_and(|t| now >= t + 300) {
                    let at = settled_since.unwrap_or(now);
                    converged_after_ms = Some(at - phase_start);
                    st.action(
                        now,
                        format!("settled {} ms after the heal", at - phase_start),
                    );
                    phase = Phase::Done;
                } else if now > phase_start + CONVERGENCE_BOUND.as_millis() as u64 {
                    let why = st.unsettled_reason(&live, partitions);
                    st.violation(
                        now,
                        format!(
                            "invariant 5: not settled {} ms after the heal: {why}",
                            CONVERGENCE_BOUND.as_millis()
                        ),
                    );
                    phase = Phase::Done;
                }
            }
            Phase::Done => break,
        }
        if st.violations.len() > 20 {
            break;
        }
    }
    let simulated = sim.elapsed();
    // Drop the nodes (and the simulation) before the next seed.
    for s in &slots {
        lock(s).node = None;
    }
    drop(sim);
    let mut h = DefaultHasher::new();
    st.trace.hash(&mut h);
    Outcome {
        seed,
        nodes: n,
        partitions,
        trace_hash: h.finish(),
        violations: st.violations,
        trace: st.trace,
        stale_writes_refused: st.store.refused,
        writes_accepted: st.store.accepted,
        converged_after_ms,
        faults,
        simulated,
        mode,
    }
}

/// The leader's view is healthy: exactly one running node acts as leader,
/// every running node agrees it leads and is in its member table, and the
/// voter set has at least three members, all running incarnations. Only
/// then may a crash or a leave be scheduled: losing a majority of voters
/// at once is a known unrecoverable case (docs/architecture.md section
/// 15), not something to find. (The leader's view, not any node's: an
/// expelled node's stale view still lists the old voters.)
///
/// `leading` is each host's latest in-host `is_leader()` sample (the driver
/// must not call `is_leader()` or `owned()` itself: they read the node's
/// tokio clock, which only exists inside the host's runtime).
fn healthy_voters(live: &[(usize, Node)], leading: &BTreeMap<usize, bool>) -> bool {
    let ids: BTreeSet<u64> = live.iter().map(|(_, n)| n.id()).collect();
    let leaders: Vec<&Node> = live
        .iter()
        .filter(|(i, _)| leading.get(i).copied().unwrap_or(false))
        .map(|(_, n)| n)
        .collect();
    let [leader] = leaders.as_slice() else {
        return false;
    };
    let status = leader.status();
    let members: BTreeSet<u64> = status.members.iter().map(|m| m.id).collect();
    let voters: BTreeSet<u64> = status
        .members
        .iter()
        .filter(|m| m.role == Role::Voter)
        .map(|m| m.id)
        .collect();
    voters.len() >= 3
        && voters.is_subset(&ids)
        && members == ids
        && live.len() >= 3
        && live
            .iter()
            .all(|(_, n)| n.status().leader == Some(leader.id()))
}

type Pending = (u64, Undo);

/// Each host's clock rate, in parts per million away from real speed,
/// within the configured bound ρ (`clock_drift_ppm`). Per seed, one of:
/// uniform in [-ρ, ρ]; each host at -ρ or +ρ exactly; hosts alternately at
/// +ρ and -ρ (from a random first sign). From its own generator, so the
/// rest of the seed's schedule does not depend on it.
pub fn clock_rates(seed: u64, n: usize) -> Vec<i32> {
    let rho = i32::try_from(sim_timings().clock_drift_ppm).unwrap_or(i32::MAX);
    let mut rng = StdRng::seed_from_u64(seed ^ 0xc10c_d41f);
    let style = rng.random_range(0..3);
    let first = if rng.random_bool(0.5) { rho } else { -rho };
    (0..n)
        .map(|i| match style {
            0 => rng.random_range(-rho..=rho),
            1 => {
                if rng.random_bool(0.5) {
                    rho
                } else {
                    -rho
                }
            }
            _ => {
                if i % 2 == 0 {
                    first
                } else {
                    -first
                }
            }
        })
        .collect()
}

/// How long each host's application takes to release a revoked partition
/// (`None`: never; the leader takes it at the revocation deadline). Per
/// seed, one of: every application prompt (half the seeds); each one slow,
/// from 0 to 1.5 revocation timeouts; prompt ones and one that never
/// releases. From its own generator, like [`clock_rates`].
pub fn release_delays(seed: u64, n: usize) -> Vec<Option<Duration>> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5e1e_a5ed);
    let most = sim_timings().revoke_timeout.as_millis() as u64 * 3 / 2;
    match rng.random_range(0..4) {
        0 | 1 => vec![Some(Duration::ZERO); n],
        2 => (0..n)
            .map(|_| Some(Duration::from_millis(rng.random_range(0..=most))))
            .collect(),
        _ => {
            let stuck = rng.random_range(0..n);
            (0..n)
                .map(|i| (i != stuck).then_some(Duration::ZERO))
                .collect()
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn pick_fault(
    rng: &mut StdRng,
    sim: &mut turmoil::Sim<'_>,
    names: &[String],
    slots: &[Shared],
    live: &[(usize, Node)],
    leading: &BTreeMap<usize, bool>,
    healthy: bool,
    n: usize,
    now: u64,
) -> Option<(String, Pending, bool)> {
    let live_idx: Vec<usize> = live.iter().map(|(i, _)| *i).collect();
    let inactive: Vec<usize> = (0..n).filter(|i| !lock(&slots[*i]).active).collect();
    let kind = rng.random_range(0..10);
    let pick2 = |rng: &mut StdRng| -> (usize, usize) {
        let a = rng.random_range(0..n);
        let mut b = rng.random_range(0..n - 1);
        if b >= a {
            b += 1;
        }
        (a, b)
    };
    match kind {
        0 if healthy && live.len() >= 3 => {
            let i = *live_idx.choose(rng)?;
            crash_host(sim, names, slots, i);
            let back = now + rng.random_range(300..3000);
            Some((
                format!("crash {}", names[i]),
                (back, Undo::Restart(i)),
                false,
            ))
        }
        1 if healthy && live.len() >= 3 => {
            let i = *live_idx.choose(rng)?;
            lock(&slots[i]).leave = true;
            let back = now + rng.random_range(1000..4000);
            Some((
                format!("leave {}", names[i]),
                (back, Undo::Rejoin(i)),
                false,
            ))
        }
        2 if !inactive.is_empty() => {
            let i = *inactive.choose(rng)?;
            lock(&slots[i]).active = true;
            Some((format!("join {}", names[i]), (now, Undo::Nothing), false))
        }
        3 | 4 => {
            // Minority or majority side cut off from the rest.
            let mut all: Vec<usize> = (0..n).collect();
            all.shuffle(rng);
            let k = rng.random_range(1..n);
            let (a, b) = all.split_at(k);
            let (a, b) = (a.to_vec(), b.to_vec());
            for x in &a {
                for y in &b {
                    sim.partition(names[*x].as_str(), names[*y].as_str());
                }
            }
            let until = now + rng.random_range(300..4000);
            Some((
                format!("partition {} | {}", show(names, &a), show(names, &b)),
                (until, Undo::Repair(a, b)),
                true,
            ))
        }
        5 if n >= 3 => {
            // Bridge: two groups cut from each other, one host sees both.
            let mut all: Vec<usize> = (0..n).collect();
            all.shuffle(rng);
            let bridge = all[0];
            let rest = &all[1..];
            let k = rng.random_range(1..rest.len());
            let (a, b) = rest.split_at(k);
            let (a, b) = (a.to_vec(), b.to_vec());
            for x in &a {
                for y in &b {
                    sim.partition(names[*x].as_str(), names[*y].as_str());
                }
            }
            let until = now + rng.random_range(300..4000);
            Some((
                format!(
                    "bridge {} <- {} -> {}",
                    show(names, &a),
                    names[bridge],
                    show(names, &b)
                ),
                (until, Undo::Repair(a, b)),
                true,
            ))
        }
        6 => {
            let (a, b) = pick2(rng);
            sim.partition_oneway(names[a].as_str(), names[b].as_str());
            let until = now + rng.random_range(300..4000);
            Some((
                format!("one-way cut {} -> {}", names[a], names[b]),
                (until, Undo::RepairOneway(a, b)),
                true,
            ))
        }
        7 => {
            let (a, b) = pick2(rng);
            if rng.random_bool(0.5) {
                sim.hold(names[a].as_str(), names[b].as_str());
                let until = now + rng.random_range(50..2500);
                Some((
                    format!("hold {} <-> {}", names[a], names[b]),
                    (until, Undo::Release(a, b)),
                    true,
                ))
            } else {
                let ms = rng.random_range(20..400);
                sim.set_link_max_message_latency(
                    names[a].as_str(),
                    names[b].as_str(),
                    Duration::from_millis(ms),
                );
                let until = now + rng.random_range(300..3000);
                Some((
                    format!("delay {} <-> {} up to {ms} ms", names[a], names[b]),
                    (until, Undo::ResetLatency(a, b)),
                    true,
                ))
            }
        }
        8 => {
            let (a, b) = pick2(rng);
            let rate = rng.random_range(0.002..0.02);
            sim.set_link_fail_rate(names[a].as_str(), names[b].as_str(), rate);
            let until = now + rng.random_range(300..3000);
            Some((
                format!(
                    "lossy {} <-> {} (drop rate {rate:.3}/ms)",
                    names[a], names[b]
                ),
                (until, Undo::ResetLoss(a, b)),
                true,
            ))
        }
        9 => {
            // Process pause: often the leader, mostly longer than a lease
            // (1-3 session timeouts), sometimes shorter (around the
            // election timeout and the lease's margins).
            let leader = live_idx
                .iter()
                .copied()
                .find(|i| leading.get(i).copied().unwrap_or(false));
            let i = match leader {
                Some(l) if rng.random_bool(0.5) => l,
                _ => *live_idx.choose(rng)?,
            };
            let process = lock(&slots[i]).process.clone()?;
            if process.is_paused() {
                return None;
            }
            let t = sim_timings();
            let (lease, session) = (
                t.lease.as_millis() as u64,
                t.session_timeout.as_millis() as u64,
            );
            let ms = if rng.random_bool(0.75) {
                rng.random_range(lease..=3 * session)
            } else {
                rng.random_range(100..lease)
            };
            process.pause();
            Some((
                format!(
                    "pause {}{} for {ms} ms",
                    names[i],
                    if leader == Some(i) { " (leader)" } else { "" }
                ),
                (now + ms, Undo::Resume(i, process)),
                true,
            ))
        }
        _ => None,
    }
}

/// Crashes host `i`: its process is gone, and so is whatever its disk had
/// not synced.
fn crash_host(sim: &mut turmoil::Sim<'_>, names: &[String], slots: &[Shared], i: usize) {
    sim.crash(names[i].as_str());
    if let Some(disk) = &lock(&slots[i]).disk {
        disk.crash();
    }
}

/// Durable mode's restart faults (issue 19): a majority of the voters at
/// once, a crash loop of one host, or every host at once; each host comes
/// back with its disk.
fn pick_restart_fault(
    rng: &mut StdRng,
    sim: &mut turmoil::Sim<'_>,
    names: &[String],
    slots: &[Shared],
    live: &[(usize, Node)],
    leading: &BTreeMap<usize, bool>,
    now: u64,
) -> Option<(String, Vec<Pending>, bool)> {
    if live.is_empty() {
        return None;
    }
    let restart = |rng: &mut StdRng, sim: &mut turmoil::Sim<'_>, hosts: &[usize]| {
        hosts
            .iter()
            .map(|i| {
                crash_host(sim, names, slots, *i);
                (now + rng.random_range(300..2500), Undo::Restart(*i))
            })
            .collect::<Vec<Pending>>()
    };
    match rng.random_range(0..3) {
        0 => {
            // The leader's voters, as far as the leader knows; a majority.
            let leader = live
                .iter()
                .find(|(i, _)| leading.get(i).copied().unwrap_or(false))?;
            let voters: BTreeSet<u64> = leader
                .1
                .status()
                .members
                .iter()
                .filter(|m| m.role == Role::Voter)
                .map(|m| m.id)
                .collect();
            let mut hosts: Vec<usize> = live
                .iter()
                .filter(|(_, n)| voters.contains(&n.id()))
                .map(|(i, _)| *i)
                .collect();
            hosts.shuffle(rng);
            hosts.truncate(voters.len() / 2 + 1);
            let undos = restart(rng, sim, &hosts);
            Some((
                format!("crash a majority of the voters {}", show(names, &hosts)),
                undos,
                false,
            ))
        }
        1 => {
            let (i, _) = live.choose(rng)?;
            let loops = rng.random_range(2..6);
            crash_host(sim, names, slots, *i);
            Some((
                format!("crash loop of {} ({} crashes)", names[*i], loops + 1),
                vec![(
                    now + rng.random_range(50..500),
                    Undo::RestartLoop(*i, loops),
                )],
                false,
            ))
        }
        _ => {
            let hosts: Vec<usize> = live.iter().map(|(i, _)| *i).collect();
            let undos = restart(rng, sim, &hosts);
            Some((
                format!("crash every running host {}", show(names, &hosts)),
                undos,
                false,
            ))
        }
    }
}

/// One crash of a restart storm: a running host crashes and restarts at
/// once (50-300 ms); with `left` more to go, the next comes 1.5-2 s later.
#[allow(clippy::too_many_arguments)]
fn storm_step(
    sim: &mut turmoil::Sim<'_>,
    names: &[String],
    slots: &[Shared],
    down: &mut [bool],
    rng: &mut StdRng,
    running: &[usize],
    left: u32,
    st: &mut Checker,
    now: u64,
) -> Vec<Pending> {
    let Some(i) = running.choose(rng).copied() else {
        return Vec::new();
    };
    crash_host(sim, names, slots, i);
    down[i] = true;
    st.action(now, format!("storm: crash {}", names[i]));
    let mut next = vec![(now + rng.random_range(50..300), Undo::Restart(i))];
    if left > 0 {
        next.push((
            now + rng.random_range(1500..2000),
            Undo::StormNext(left - 1),
        ));
    }
    next
}

/// The next step of a crash loop after `undo` is applied, if any: a
/// restarted host crashes again soon, then restarts again.
#[allow(clippy::too_many_arguments)]
fn crash_loop_step(
    sim: &mut turmoil::Sim<'_>,
    names: &[String],
    slots: &[Shared],
    down: &mut [bool],
    rng: &mut StdRng,
    undo: &Undo,
    st: &mut Checker,
    now: u64,
) -> Option<Pending> {
    match undo {
        Undo::RestartLoop(i, left) if *left > 0 => Some((
            now + rng.random_range(100..700),
            Undo::Recrash(*i, *left - 1),
        )),
        Undo::Recrash(i, left) => {
            if down[*i] {
                return None;
            }
            crash_host(sim, names, slots, *i);
            down[*i] = true;
            st.action(now, format!("crash {} again (crash loop)", names[*i]));
            Some((
                now + rng.random_range(50..500),
                Undo::RestartLoop(*i, *left),
            ))
        }
        _ => None,
    }
}

fn show(names: &[String], set: &[usize]) -> String {
    let mut v: Vec<&str> = set.iter().map(|i| names[*i].as_str()).collect();
    v.sort();
    format!("{{{}}}", v.join(","))
}

#[allow(clippy::too_many_arguments)]
fn apply_undo(
    sim: &mut turmoil::Sim<'_>,
    names: &[String],
    slots: &[Shared],
    down: &mut [bool],
    left: &mut [bool],
    fresh_id: &mut impl FnMut(&mut StdRng) -> u64,
    rng: &mut StdRng,
    undo: &Undo,
    st: &mut Checker,
    now: u64,
) {
    match undo {
        Undo::Restart(i) | Undo::Rejoin(i) | Undo::RestartLoop(i, _) => {
            let durable = {
                let mut s = lock(&slots[*i]);
                let durable = s.disk.is_some();
                if !durable {
                    s.next_id = fresh_id(rng);
                }
                s.leave = false;
                s.node = None;
                durable
            };
            down[*i] = false;
            left[*i] = false;
            sim.bounce(names[*i].as_str());
            let how = if durable {
                "with its disk"
            } else {
                "as a new incarnation"
            };
            st.action(now, format!("restart {} {how}", names[*i]));
        }
        Undo::Recrash(..) | Undo::StormNext(_) => {}
        Undo::Repair(a, b) => {
            for x in a {
                for y in b {
                    sim.repair(names[*x].as_str(), names[*y].as_str());
                }
            }
            if !a.is_empty() {
                st.action(
                    now,
                    format!("repair {} | {}", show(names, a), show(names, b)),
                );
            }
        }
        Undo::RepairOneway(a, b) => {
            sim.repair_oneway(names[*a].as_str(), names[*b].as_str());
            st.action(
                now,
                format!("repair one-way {} -> {}", names[*a], names[*b]),
            );
        }
        Undo::Release(a, b) => {
            sim.release(names[*a].as_str(), names[*b].as_str());
            st.action(now, format!("release held {} <-> {}", names[*a], names[*b]));
        }
        Undo::ResetLatency(a, b) => {
            sim.set_link_max_message_latency(
                names[*a].as_str(),
                names[*b].as_str(),
                Duration::from_millis(3),
            );
            st.action(
                now,
                format!("latency back to normal {} <-> {}", names[*a], names[*b]),
            );
        }
        Undo::Resume(i, process) => {
            process.resume();
            st.action(now, format!("resume {}", names[*i]));
        }
        Undo::Nothing => {}
        Undo::ResetLoss(a, b) => {
            sim.set_link_fail_rate(names[*a].as_str(), names[*b].as_str(), 0.0);
            st.action(now, format!("loss ends {} <-> {}", names[*a], names[*b]));
        }
    }
}

/// A downstream store that accepts a write only with a token at least as
/// high as any it has seen for that partition.
#[derive(Default)]
struct Store {
    /// Per partition: the highest token seen and who wrote with it.
    max_token: BTreeMap<u32, (u64, u64)>,
    accepted: u64,
    refused: u64,
}

enum Write {
    Accepted,
    /// A stale writer (a lower token than one already seen): fine.
    Refused,
    /// Accepted, but another node wrote under the same token: two holders
    /// of one grant, which fencing cannot tell apart (a bug).
    SameTokenOtherHolder(u64),
}

impl Store {
    fn write(&mut self, p: u32, token: u64, writer: u64) -> Write {
        let max = self.max_token.entry(p).or_insert((0, writer));
        if token > max.0 || (token == max.0 && max.1 == writer) {
            *max = (token, writer);
            self.accepted += 1;
            Write::Accepted
        } else if token == max.0 {
            self.accepted += 1;
            Write::SameTokenOtherHolder(max.1)
        } else {
            self.refused += 1;
            Write::Refused
        }
    }
}

/// The invariant checker.
struct Checker {
    partitions: u32,
    violations: Vec<String>,
    trace: Vec<String>,
    /// ms -> host -> (id, valid grants, leads).
    samples: BTreeMap<u64, BTreeMap<usize, Sample>>,
    /// Invariant 1: epoch -> leader, and per node the last epoch seen.
    epoch_leader: BTreeMap<u64, u64>,
    last_epoch: BTreeMap<u64, u64>,
    /// Invariant 3: per partition, the last sampled holder and token.
    last_holder: BTreeMap<u32, (u64, u64)>,
    /// One token never reaches two nodes.
    grant_holder: BTreeMap<(u32, u64), u64>,
    /// Invariant 4: per node, per partition.
    held: BTreeMap<u64, BTreeMap<u32, Held>>,
    store: Store,
    /// Each host's latest `is_leader()` sample.
    leading: BTreeMap<usize, bool>,
    /// Store writes on their way: arrival ms -> (host, id, partition, token).
    in_flight: BTreeMap<u64, Vec<(usize, u64, u32, u64)>>,
    delay_rng: StdRng,
    /// Process key -> node id (see [`process_key`]).
    node_of: BTreeMap<u64, u64>,
}

impl Checker {
    fn new(seed: u64, partitions: u32) -> Self {
        Self {
            partitions,
            violations: Vec::new(),
            trace: Vec::new(),
            samples: BTreeMap::new(),
            epoch_leader: BTreeMap::new(),
            last_epoch: BTreeMap::new(),
            last_holder: BTreeMap::new(),
            grant_holder: BTreeMap::new(),
            held: BTreeMap::new(),
            store: Store::default(),
            leading: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            delay_rng: StdRng::seed_from_u64(seed ^ 0x5eed_5707e),
            node_of: BTreeMap::new(),
        }
    }

    fn action(&mut self, now: u64, what: String) {
        self.trace.push(format!("t={now} ACTION {what}"));
    }

    fn violation(&mut self, now: u64, what: String) {
        self.trace.push(format!("t={now} VIOLATION {what}"));
        self.violations.push(format!("t={now} {what}"));
    }

    /// The node id of process `key`.
    fn node(&self, key: u64) -> u64 {
        self.node_of.get(&key).copied().unwrap_or(key)
    }

    fn absorb(&mut self, host: usize, obs: Obs) {
        self.node_of.extend(obs.started);
        for (ms, id, event) in obs.events {
            self.trace.push(format!("t={ms} n{host}#{id:x} {event:?}"));
            self.event(ms, host, id, event);
        }
        for (ms, sample) in obs.samples {
            self.leading.insert(host, sample.2.is_some());
            self.samples.entry(ms).or_default().insert(host, sample);
        }
    }

    fn event(&mut self, ms: u64, host: usize, id: u64, event: Event) {
        match event {
            Event::LeaderChanged { leader, epoch } => {
                if let Some(prev) = self.epoch_leader.insert(epoch, leader) {
                    if prev != leader {
                        self.violation(
                            ms,
                            format!("invariant 1: epoch {epoch:x} led by {prev:x} and {leader:x}"),
                        );
                    }
                }
                let last = self.last_epoch.entry(id).or_insert(0);
                if epoch <= *last {
                    let last = *last;
                    self.violation(
                        ms,
                        format!("invariant 1: n{host}#{id:x} saw epoch {epoch:x} after {last:x}"),
                    );
                } else {
                    *last = epoch;
                }
            }
            Event::BecameLeader { epoch } => {
                if let Some(l) = self.epoch_leader.get(&epoch) {
                    if *l != self.node(id) {
                        let l = *l;
                        self.violation(
                            ms,
                            format!("invariant 1: n{host}#{id:x} became leader of epoch {epoch:x} led by {l:x}"),
                        );
                    }
                }
            }
            Event::PartitionsAssigned { partitions } => {
                for g in partitions {
                    let state = self
                        .held
                        .entry(id)
                        .or_default()
                        .insert(g.partition, Held::Held);
                    if state == Some(Held::Held) {
                        self.violation(
                            ms,
                            format!(
                                "invariant 4: n{host}#{id:x} assigned {} while holding it",
                                g.partition
                            ),
                        );
                    }
                    let holder = *self
                        .grant_holder
                        .entry((g.partition, g.token))
                        .or_insert(id);
                    if holder != id {
                        self.violation(
                            ms,
                            format!(
                                "invariant 3: grant {}@{:x} reached {holder:x} and {id:x}",
                                g.partition, g.token
                            ),
                        );
                    }
                }
            }
            Event::PartitionsRevoking { partitions, .. } => {
                for p in partitions {
                    let state = self.held.entry(id).or_default().get(&p).copied();
                    if state != Some(Held::Held) {
                        self.violation(
                            ms,
                            format!("invariant 4: n{host}#{id:x} revoking {p}, not held (state {state:?})"),
                        );
                    }
                    self.held.entry(id).or_default().insert(p, Held::Revoking);
                }
            }
            Event::PartitionsLost { partitions } => {
                for p in partitions {
                    if self.held.entry(id).or_default().remove(&p).is_none() {
                        self.violation(
                            ms,
                            format!("invariant 4: n{host}#{id:x} lost {p}, not held"),
                        );
                    }
                }
            }
            Event::Lagged { missed } => {
                self.violation(
                    ms,
                    format!("n{host}#{id:x} event stream lagged ({missed} missed)"),
                );
            }
            _ => {}
        }
    }

    /// Checks invariants 1-3 and the store on every millisecond up to `upto`.
    fn check_until(&mut self, upto: u64) {
        let later = self.samples.split_off(&(upto + 1));
        let ready = std::mem::replace(&mut self.samples, later);
        for (ms, hosts) in ready {
            let mut holders: BTreeMap<u32, (usize, u64, u64)> = BTreeMap::new();
            let mut leaders: Vec<(usize, u64, (u64, u64))> = Vec::new();
            for (host, (id, grants, leads)) in &hosts {
                if let Some(l) = leads {
                    leaders.push((*host, *id, *l));
                }
                for g in grants {
                    if let Some((oh, oid, ot)) = holders.insert(g.partition, (*host, *id, g.token))
                    {
                        self.violation(
                            ms,
                            format!(
                                "invariant 2: partition {} held by n{oh}#{oid:x} (token {ot:x}) and n{host}#{id:x} (token {:x})",
                                g.partition, g.token
                            ),
                        );
                    }
                    match self.last_holder.get(&g.partition) {
                        Some((lid, lt)) if *lid != *id && g.token <= *lt => {
                            let (lid, lt) = (*lid, *lt);
                            self.violation(
                                ms,
                                format!(
                                    "invariant 3: partition {} token {:x} on n{host}#{id:x} after token {lt:x} on {lid:x}",
                                    g.partition, g.token
                                ),
                            );
                        }
                        Some((lid, lt)) if *lid == *id && g.token < *lt => {
                            let lt = *lt;
                            self.violation(
                                ms,
                                format!(
                                    "invariant 3: partition {} token fell on n{host}#{id:x}: {:x} after {lt:x}",
                                    g.partition, g.token
                                ),
                            );
                        }
                        _ => {}
                    }
                    self.last_holder.insert(g.partition, (*id, g.token));
                }
            }
            if leaders.len() > 1 {
                self.violation(
                    ms,
                    format!("invariant 1: two nodes act as leader at once: {leaders:x?}"),
                );
            }
            // Every holder writes to the store every 10 ms with the token of
            // each grant it holds; a write reaches the store 0-250 ms later
            // (a slow path to the store), so stale writes do happen.
            if ms % 10 == 0 {
                for (host, (id, grants, _)) in &hosts {
                    for g in grants {
                        let delay = self.delay_rng.random_range(0..250u64);
                        self.in_flight.entry(ms + delay).or_default().push((
                            *host,
                            *id,
                            g.partition,
                            g.token,
                        ));
                    }
                }
            }
            let arriving = self.in_flight.remove(&ms).unwrap_or_default();
            for (host, id, p, token) in arriving {
                match self.store.write(p, token, id) {
                    Write::Accepted => {}
                    Write::Refused => {}
                    Write::SameTokenOtherHolder(other) => self.violation(
                        ms,
                        format!(
                            "store: accepted writes to {p} under one token {token:x} from {other:x} and n{host}#{id:x}"
                        ),
                    ),
                }
            }
        }
    }

    /// Invariant 5: every partition held by exactly one live node, counts
    /// within one, and every live node agrees on leader, members and table.
    fn settled(&self, live: &[(usize, Node)], partitions: u32, _now: u64) -> bool {
        self.unsettled(live, partitions).is_none()
    }

    fn unsettled_reason(&self, live: &[(usize, Node)], partitions: u32) -> String {
        self.unsettled(live, partitions).unwrap_or_default()
    }

    fn unsettled(&self, live: &[(usize, Node)], partitions: u32) -> Option<String> {
        let _ = self.partitions;
        if live.is_empty() {
            return Some("no live node".into());
        }
        // The latest complete sample of each live node.
        let Some(latest) = self.samples.iter().next() else {
            return Some("no samples yet".into());
        };
        let ids: BTreeSet<u64> = live.iter().map(|(_, n)| n.id()).collect();
        let mut owner: BTreeMap<u32, u64> = BTreeMap::new();
        let mut counts = Vec::new();
        for (host, node) in live {
            let Some((id, grants, _)) = latest.1.get(host) else {
                return Some(format!("n{host} not sampled"));
            };
            if self.node(*id) != node.id() {
                return Some(format!("n{host} sample from an old incarnation"));
            }
            counts.push((*host, grants.len()));
            for g in grants {
                if owner.insert(g.partition, node.id()).is_some() {
                    return Some(format!("partition {} held twice", g.partition));
                }
            }
        }
        if owner.len() != partitions as usize {
            return Some(format!("{} of {partitions} partitions held", owner.len()));
        }
        let (lo, hi) = (
            counts.iter().map(|c| c.1).min().unwrap_or(0),
            counts.iter().map(|c| c.1).max().unwrap_or(0),
        );
        if hi - lo > 1 {
            let shown: Vec<String> = counts
                .iter()
                .map(|(host, count)| {
                    let (_, table) = live[live.iter().position(|(h, _)| h == host).unwrap_or(0)]
                        .1
                        .assignment();
                    let id = live.iter().find(|(h, _)| h == host).map(|(_, n)| n.id());
                    let in_table = table.iter().filter(|s| s.owner == id).count();
                    format!("n{host} holds {count} (its table says {in_table})")
                })
                .collect();
            return Some(format!("unbalanced: {}", shown.join(", ")));
        }
        let first = live[0].1.status();
        for (host, node) in live {
            let status = node.status();
            let members: BTreeSet<u64> = status.members.iter().map(|m| m.id).collect();
            if members != ids {
                return Some(format!("n{host} members {members:x?} != live {ids:x?}"));
            }
            if status.leader.is_none() || status.leader != first.leader {
                return Some(format!(
                    "n{host} leader {:?} vs {:?}",
                    status.leader, first.leader
                ));
            }
            let (_, table) = node.assignment();
            if !table
                .iter()
                .enumerate()
                .all(|(p, s)| s.owner == owner.get(&(p as u32)).copied())
            {
                return Some(format!("n{host} table disagrees with the holders"));
            }
        }
        None
    }
}
