//! The running node: the public [`Node`] handle and the tasks behind it.
//!
//! A node runs four things: the peer server (answers Raft, join, heartbeat
//! and leave requests), its Raft instance, the member loop (joins the
//! cluster, then heartbeats the leader and follows its stream of committed
//! changes) and, while it leads, the leader duties (announce the epoch,
//! expire silent sessions, keep the voter set full).

mod leader;
mod member;
mod owner;
mod quorum;
mod server;
pub mod view;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Instant;
use crate::runtime::{TickGate, TickSwitch};
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::view::View;
use crate::beat::BeatLedger;
use crate::config::{NodeConfig, Timings};
use crate::error::Error;
use crate::events::EventStream;
use crate::raft::Raft;
use crate::raft::log_store::LogStore;
use crate::raft::network::NetworkFactory;
use crate::raft::state_machine::StateMachine;
use crate::raft::store::{DiskStore, StoreError, StoredIdentity};
use crate::runtime::WallClock;
use crate::transport::handshake::Secret;
use crate::transport::{self, Net, TcpTransport, TokioNet, Transport, WireConfig, WireStats};
use crate::types::{NodeId, NodeInfo, Role};
use crate::vote_gate::VoteGate;

/// Builds and starts a [`Node`].
///
/// `N` is where the node's sockets come from: tokio's TCP unless
/// [`NodeBuilder::net`] says otherwise (a simulator).
#[derive(Clone)]
pub struct NodeBuilder<N: Net = TokioNet> {
    config: NodeConfig,
    transport: Option<Arc<dyn Transport>>,
    net: N,
    id: Option<NodeId>,
    wall_clock: Option<WallClock>,
    process: Option<crate::clock::Process>,
    store: Option<Arc<DiskStore>>,
}

impl Default for NodeBuilder {
    fn default() -> Self {
        Self::from_config(NodeConfig::default())
    }
}

impl<N: Net> std::fmt::Debug for NodeBuilder<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("config", &self.config)
            .field("custom_transport", &self.transport.is_some())
            .field("net", &std::any::type_name::<N>())
            .field("id", &self.id)
            .field("custom_wall_clock", &self.wall_clock.is_some())
            .field("process", &self.process)
            .field("store", &self.store)
            .finish()
    }
}

impl NodeBuilder {
    /// Starts from a complete configuration.
    pub fn from_config(config: NodeConfig) -> Self {
        Self {
            config,
            transport: None,
            net: TokioNet,
            id: None,
            wall_clock: None,
            process: None,
            store: None,
        }
    }
}

impl<N: Net> NodeBuilder<N> {
    /// Opens peer sockets (listener and outgoing connections) through `net`
    /// instead of tokio's TCP. For simulation (`ringleader-sim` passes
    /// turmoil's network); normal use never needs it.
    pub fn net<M: Net>(self, net: M) -> NodeBuilder<M> {
        NodeBuilder {
            config: self.config,
            transport: self.transport,
            net,
            id: self.id,
            wall_clock: self.wall_clock,
            process: self.process,
            store: self.store,
        }
    }

    /// Uses `id` as this node's [`NodeId`] instead of a random one.
    /// For simulation and tests only. Without a data directory an id names
    /// one process incarnation, so it must never be reused, not even by the
    /// same node after a restart (see `docs/architecture.md`, section 4);
    /// with one, it must be the id the directory holds (a new directory
    /// takes it). 0 is refused at [`NodeBuilder::start`].
    pub fn id(mut self, id: NodeId) -> Self {
        self.id = Some(id);
        self
    }

    /// Reads wall-clock time (since the Unix epoch) from `clock` instead of
    /// [`std::time::SystemTime`]. Only the creation stamp of a new cluster
    /// life uses it (`crate::token`). For simulation: the clock must not go
    /// back between cluster lives.
    pub fn wall_clock(mut self, clock: WallClock) -> Self {
        self.wall_clock = Some(clock);
        self
    }

    /// Runs the node inside `process`: its clock (leases, sessions,
    /// heartbeats, timeouts, openraft's timers) runs at the process's rate,
    /// and its tasks, openraft's included, stop while the process is
    /// paused (see [`crate::clock`]). For simulation; without it (or when
    /// started inside no process) the node uses tokio's clock. Answers of
    /// [`Node::owned`] and [`Node::is_leader`] follow the process's clock
    /// whoever asks.
    pub fn process(mut self, process: crate::clock::Process) -> Self {
        self.process = Some(process);
        self
    }

    /// Sends requests through `transport` instead of the default
    /// [`TcpTransport`] (for tests that inject faults; the node still serves
    /// peers on its listen address, through its [`Net`]). The transport must speak to the
    /// same cluster name and secret as this node.
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Keeps the node's identity and Raft state in `dir` (created if
    /// missing), so a restart resumes as the same node and voter. Without
    /// it the node is ephemeral: a restart is a new node.
    pub fn data_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.config.data_dir = Some(dir.into());
        self
    }

    /// Keeps the node's identity and Raft state in `store` instead of a
    /// data directory. For simulation (a store on a backend that outlives
    /// the node is a disk that survives its crash); one node at a time.
    pub fn store(mut self, store: Arc<DiskStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The node's name (default: generated).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = Some(name.into());
        self
    }

    /// The peer listen address (default `127.0.0.1:0`).
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.config.listen = addr.into();
        self
    }

    /// The address peers use to reach this node (default: the bound address).
    pub fn advertise(mut self, addr: impl Into<String>) -> Self {
        self.config.advertise = Some(addr.into());
        self
    }

    /// The HTTP API address published to other members.
    pub fn http_addr(mut self, addr: impl Into<String>) -> Self {
        self.config.http_addr = Some(addr.into());
        self
    }

    /// Seed peers (`HOST:PORT`). None, or only this node: start a new cluster.
    pub fn seeds<I, S>(mut self, seeds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.seeds = seeds.into_iter().map(Into::into).collect();
        self
    }

    /// The cluster name (default `ringleader`).
    pub fn cluster(mut self, name: impl Into<String>) -> Self {
        self.config.cluster = name.into();
        self
    }

    /// A shared secret every peer must prove it knows (make one with
    /// [`Secret::new`]). Required unless every address is on loopback or
    /// [`NodeBuilder::allow_unauthenticated`] is given.
    pub fn secret(mut self, secret: Secret) -> Self {
        self.config.secret = Some(secret);
        self
    }

    /// Mutual TLS for every peer connection: peers must present a
    /// certificate signed by the cluster CA (see
    /// [`TlsConfig`](crate::transport::tls::TlsConfig)). Satisfies
    /// the rule that peers off loopback authenticate, with or without a
    /// secret.
    pub fn tls(mut self, tls: crate::transport::tls::TlsConfig) -> Self {
        self.config.tls = Some(tls);
        self
    }

    /// Lets the node run without a secret on non-loopback addresses, so
    /// anyone who can reach its peer port can act as a peer. Only for
    /// networks where that is already impossible (a test network namespace,
    /// a simulator).
    pub fn allow_unauthenticated(mut self) -> Self {
        self.config.allow_unauthenticated = true;
        self
    }

    /// Number of partitions (default 256).
    pub fn partitions(mut self, n: u32) -> Self {
        self.config.num_partitions = n;
        self
    }

    /// Target number of Raft voters: 1, 3, 5 (default) or 7; fewer while the
    /// cluster has fewer live nodes (an odd number, at most that many).
    pub fn voters(mut self, n: usize) -> Self {
        self.config.voters = n;
        self
    }

    /// All timings at once.
    pub fn timings(mut self, timings: Timings) -> Self {
        self.config.timings = timings;
        self
    }

    /// The configuration built so far.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Validates the configuration, binds the listen address and starts the
    /// node. It returns once the node serves peers; joining the cluster goes
    /// on in the background (see [`Node::wait_ready`]).
    pub async fn start(self) -> Result<Node, Error> {
        Node::start(self).await
    }
}

/// One member of a ringleader cluster. Cheap to clone; all clones drive the
/// same node.
#[derive(Clone)]
pub struct Node {
    core: Arc<Core>,
    /// The process the node runs in (simulation only).
    process: Option<crate::clock::Process>,
}

/// The state shared by the node's tasks.
pub(crate) struct Core {
    pub(crate) id: NodeId,
    /// Which start of this node this process is (0: no data directory).
    pub(crate) incarnation: u64,
    pub(crate) info: NodeInfo,
    pub(crate) config: NodeConfig,
    pub(crate) raft: Raft,
    pub(crate) sm: StateMachine,
    pub(crate) view: Arc<View>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) wire_stats: Arc<WireStats>,
    /// Leader only: when each member was last heard from.
    pub(crate) sessions: Mutex<BTreeMap<NodeId, Instant>>,
    /// Serialises membership changes on the leader.
    pub(crate) membership_lock: tokio::sync::Mutex<()>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) leaving: AtomicBool,
    /// What this node has done.
    pub(crate) stats: NodeStats,
    /// Key -> partition.
    pub(crate) partitioner: crate::partitioner::Partitioner,
    /// This node's grants.
    pub(crate) ownership: Mutex<crate::ownership::Ownership<Instant>>,
    /// Wakes the ownership task (lease renewed, partitions released).
    pub(crate) ownership_changed: tokio::sync::Notify,
    /// Partitions this node's application released that the table still
    /// shows as revoking by this node: repeated to the leader until done.
    pub(crate) released: Mutex<std::collections::BTreeSet<(u32, u64)>>,
    /// Leader only: members whose sessions must not be renewed any more (a
    /// new incarnation took their address); they expire normally.
    pub(crate) doomed: Mutex<std::collections::BTreeSet<NodeId>>,
    /// Serialises rebalancing with the check-then-remove of a leaving node.
    pub(crate) rebalance_lock: tokio::sync::Mutex<()>,
    /// Leader only: handoffs in flight.
    pub(crate) handoff: Mutex<owner::Handoff>,
    /// Wakes the leader loop for an immediate rebalance.
    pub(crate) rebalance_now: tokio::sync::Notify,
    /// Wakes the member loop for an immediate heartbeat (the leader poked
    /// this node: a grant or revocation concerns it).
    pub(crate) heartbeat_now: tokio::sync::Notify,
    /// The Raft term in which this node finished `take_office` (0: none).
    /// Until then its session table is not this term's and must not judge
    /// heartbeats.
    pub(crate) office_term: AtomicU64,
    /// When a quorum of voters last acknowledged this node as leader.
    quorum_acked_at: Mutex<Option<Instant>>,
    /// Keeps this node from voting for a successor within a leader lease
    /// of a quorum confirmation it relies on.
    vote_gate: Mutex<VoteGate>,
    /// The leader's beats this node answered and what they renewed.
    beats: Mutex<BeatLedger>,
    /// Set when the cluster refused this node for good (e.g. another P).
    refused: Mutex<Option<String>>,
    local_addr: SocketAddr,
    /// Wall-clock time since the Unix epoch (the creation stamp).
    pub(crate) wall_clock: WallClock,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Holds back openraft's tick while it has nothing to do.
    tick: TickSwitch,
}

impl Core {
    /// Records that the cluster refused this node, waking [`Node::wait_ready`].
    pub(crate) fn set_refused(&self, reason: String) {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.view.notify();
    }

    /// This node's [`BeatLedger`].
    pub(crate) fn beats(&self) -> std::sync::MutexGuard<'_, BeatLedger> {
        self.beats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This node's [`VoteGate`].
    pub(crate) fn vote_gate(&self) -> std::sync::MutexGuard<'_, VoteGate> {
        self.vote_gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When a quorum last acknowledged this node as leader (alone: now).
    pub(crate) fn quorum_acked_at(&self) -> Option<Instant> {
        let alone = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .voter_ids()
                .all(|v| v == self.id)
        };
        if alone {
            return Some(Instant::now());
        }
        *self
            .quorum_acked_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this node leads (quorum confirmed) and has taken office in
    /// the current term: its sessions were reset for this term.
    pub(crate) fn in_office(&self) -> bool {
        let term = self.raft.metrics().borrow().current_term;
        term != 0 && self.office_term.load(Ordering::SeqCst) == term
    }

    /// Raft's own view that this node leads (no quorum check): enough for
    /// bookkeeping that a real leader would need and a deposed one forgets.
    pub(crate) fn raft_thinks_it_leads(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// Released partitions not yet shown as released in the table.
    pub(crate) fn pending_releases(&self) -> Vec<(u32, u64)> {
        let mut released = self.released.lock().unwrap_or_else(|e| e.into_inner());
        self.view.with(|state, _| {
            released.retain(|(p, token)| {
                state.partitions.slot(*p).is_some_and(|s| {
                    s.owner == Some(self.id)
                        && s.state == crate::partitions::SlotState::Revoking
                        && s.token == *token
                })
            })
        });
        released.iter().copied().collect()
    }

    pub(crate) fn clear_refused(&self) {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub(crate) fn is_refused(&self) -> bool {
        self.refused().is_some()
    }

    fn refused(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether this node leads right now: Raft says so, and, when there are
    /// other voters, a quorum acknowledged it within the minimum election
    /// timeout. Voters refuse to elect anyone else for the maximum election
    /// timeout after hearing from their leader, so a leader cut off from its
    /// quorum stops acting as one before a successor can exist.
    pub(crate) fn raft_leads(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        if m.state != ServerState::Leader || m.current_leader != Some(self.id) {
            return false;
        }
        // A leader that committed its own removal from the voters stays
        // Raft leader for a while (openraft lets it replicate that entry),
        // and the remaining voters' quorum still answers its confirmations;
        // but they may elect one of themselves at once. It leads nothing.
        let (member, alone) = m
            .membership_config
            .membership()
            .voter_ids()
            .fold((false, true), |(member, alone), v| {
                (member || v == self.id, alone && v == self.id)
            });
        if !member {
            return false;
        }
        if alone {
            return true;
        }
        let acked = *self
            .quorum_acked_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        acked.is_some_and(|at| at.elapsed() < self.config.timings.election_timeout_min)
    }

    /// Moves [`Core::quorum_acked_at`] forward to `at`, or forgets it
    /// (`None`: this node does not lead).
    pub(crate) fn set_quorum_acked_at(&self, at: Option<Instant>) {
        let mut acked = self
            .quorum_acked_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match at {
            None => *acked = None,
            Some(at) => {
                if acked.is_none_or(|t| t < at) {
                    *acked = Some(at);
                }
            }
        }
    }

    /// The leader as far as this node knows: Raft's opinion first (voters),
    /// then the committed view.
    pub(crate) fn leader_hint(&self) -> Option<NodeInfo> {
        {
            let m = self.raft.metrics();
            let m = m.borrow();
            if let Some(leader) = m.current_leader {
                if let Some(node) = m.membership_config.membership().get_node(&leader) {
                    return Some(node.clone());
                }
            }
        }
        self.view.with(|state, _| {
            state
                .leader
                .and_then(|l| state.members.get(&l))
                .map(|m| m.info.clone())
        })
    }

    /// Current Raft voter ids.
    pub(crate) fn raft_voters(&self) -> std::collections::BTreeSet<NodeId> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().voter_ids().collect()
    }
}

/// Counters describing what this node has done; read them with
/// [`Node::stats`] (the daemon exports them as Prometheus metrics).
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Rebalancing steps this node committed as leader.
    pub rebalances: AtomicU64,
    /// Partitions this node granted as leader.
    pub partitions_granted: AtomicU64,
    /// Handoffs (revoke to release) this node completed as leader.
    pub handoffs: AtomicU64,
    /// Their total duration, in milliseconds.
    pub handoff_millis: AtomicU64,
    /// Members this node expired as leader.
    pub session_expirations: AtomicU64,
    /// Round trip of this node's last acknowledged heartbeat, in microseconds.
    pub heartbeat_rtt_micros: AtomicU64,
    /// Partitions this node lost without releasing them.
    pub partitions_lost: AtomicU64,
    /// Lease renewals by this node's own acknowledged heartbeats.
    pub renewals_by_heartbeat: AtomicU64,
    /// Lease renewals by the leader's beats (voters only, [`crate::beat`]).
    pub renewals_by_beat: AtomicU64,
}

/// One row of [`Status::members`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Node id.
    pub id: NodeId,
    /// Name.
    pub name: String,
    /// Peer address.
    pub addr: String,
    /// HTTP API address, when it has one.
    pub http_addr: Option<String>,
    /// Voter or member.
    pub role: Role,
    /// False when the leader has not heard from it for half a session timeout.
    pub alive: bool,
    /// Whether it leads the current epoch.
    pub leader: bool,
}

/// A node's view of the cluster, from its replicated copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This node's id.
    pub id: NodeId,
    /// This node's name.
    pub name: String,
    /// The cluster name.
    pub cluster: String,
    /// The leader of the current epoch, if any.
    pub leader: Option<NodeId>,
    /// The current leadership epoch token.
    pub epoch: u64,
    /// Log index of the last change this node has applied.
    pub applied_index: u64,
    /// Whether this node is in the member table.
    pub joined: bool,
    /// The member table.
    pub members: Vec<MemberStatus>,
}

impl Node {
    /// A builder with default settings.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    async fn start<N: Net>(mut builder: NodeBuilder<N>) -> Result<Node, Error> {
        // Everything the node spawns (openraft included) inherits this.
        let process = builder.process.take().or_else(crate::clock::current);
        let core = crate::clock::scope(process.clone(), Self::start_core(builder)).await?;
        Ok(Node { core, process })
    }

    async fn start_core<N: Net>(builder: NodeBuilder<N>) -> Result<Arc<Core>, Error> {
        let NodeBuilder {
            config,
            transport,
            net,
            id,
            wall_clock,
            process: _,
            store,
        } = builder;
        config.validate()?;
        if id == Some(0) {
            return Err(Error::config("id", "0 is not a node id"));
        }
        let disk = match (store, &config.data_dir) {
            (Some(store), _) => Some(store),
            (None, Some(dir)) => Some(Arc::new(DiskStore::open_dir(dir)?)),
            (None, None) => None,
        };
        let id = match &disk {
            Some(disk) => Some(durable_id(disk, &config, id)?),
            None => id,
        };
        let incarnation = match &disk {
            Some(disk) => disk.next_incarnation()?,
            None => 0,
        };
        let raft_config = Arc::new(config.raft_config()?);
        let partitioner = crate::partitioner::Partitioner::new(config.num_partitions)
            .map_err(|e| Error::config("partitions", e.to_string()))?;
        let listener = net.bind(&config.listen).await.map_err(|e| Error::Bind {
            addr: config.listen.clone(),
            reason: e.to_string(),
        })?;
        let local_addr = net.local_addr(&listener).map_err(|e| Error::Bind {
            addr: config.listen.clone(),
            reason: e.to_string(),
        })?;
        let id: NodeId = id.unwrap_or_else(random_id);
        let name = config
            .name
            .clone()
            .unwrap_or_else(|| format!("node-{:06x}", id & 0xff_ffff));
        let info = NodeInfo {
            name,
            addr: config
                .advertise
                .clone()
                .unwrap_or_else(|| local_addr.to_string()),
            http_addr: config.http_addr.clone(),
        };
        let wire = Arc::new(WireConfig {
            cluster: config.cluster.clone(),
            node: id,
            tls: config.tls.clone(),
            secret: config.secret.clone(),
            max_frame: config.max_frame,
            handshake_timeout: Duration::from_secs(2),
        });
        let transport: Arc<dyn Transport> = transport
            .unwrap_or_else(|| Arc::new(TcpTransport::with_net(wire.clone(), net.clone())));
        let view = Arc::new(View::new(id));
        let sink_view = view.clone();
        let sink: crate::raft::state_machine::ApplySink =
            Arc::new(move |applied| sink_view.on_applied(applied));
        let (log, sm) = match disk {
            Some(disk) => {
                let restored = disk.load()?;
                let log = LogStore::durable(disk.clone(), &restored);
                (log, StateMachine::durable(sink, disk, restored.snapshot)?)
            }
            None => (LogStore::default(), StateMachine::new(sink)),
        };
        let (tick_switch, tick_gate) = TickGate::new();
        let raft = tick_gate
            .scope(Raft::new(
                id,
                raft_config,
                NetworkFactory::new(transport.clone()),
                log,
                sm.clone(),
            ))
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        let core = Arc::new(Core {
            id,
            incarnation,
            info,
            config,
            raft,
            sm,
            view,
            transport,
            wire_stats: Arc::new(WireStats::default()),
            sessions: Mutex::new(BTreeMap::new()),
            membership_lock: tokio::sync::Mutex::new(()),
            shutdown: CancellationToken::new(),
            leaving: AtomicBool::new(false),
            partitioner,
            stats: NodeStats::default(),
            ownership: Mutex::new(crate::ownership::Ownership::new(id)),
            ownership_changed: tokio::sync::Notify::new(),
            released: Mutex::new(std::collections::BTreeSet::new()),
            doomed: Mutex::new(std::collections::BTreeSet::new()),
            rebalance_lock: tokio::sync::Mutex::new(()),
            handoff: Mutex::new(owner::Handoff::default()),
            rebalance_now: tokio::sync::Notify::new(),
            heartbeat_now: tokio::sync::Notify::new(),
            office_term: AtomicU64::new(0),
            quorum_acked_at: Mutex::new(None),
            beats: Mutex::new(BeatLedger::default()),
            vote_gate: Mutex::new(VoteGate::default()),
            refused: Mutex::new(None),
            local_addr,
            wall_clock: wall_clock.unwrap_or_else(crate::runtime::system_clock),
            tasks: Mutex::new(Vec::new()),
            tick: tick_switch,
        });
        tracing::info!(
            node = %core.info.name,
            id = core.id,
            addr = %core.info.addr,
            cluster = %core.config.cluster,
            "node starting"
        );
        let handler: Arc<dyn transport::Handler> = Arc::new(server::PeerHandler(core.clone()));
        let tasks = vec![
            crate::clock::spawn(transport::serve(
                net,
                listener,
                wire,
                handler,
                core.wire_stats.clone(),
                core.shutdown.clone(),
            )),
            crate::clock::spawn(member::run(core.clone())),
            crate::clock::spawn(leader::run(core.clone())),
            crate::clock::spawn(quorum::track(core.clone())),
            crate::clock::spawn(owner::run_ownership(core.clone())),
            crate::clock::spawn(drive_tick_gate(core.raft.server_metrics(), core.clone())),
        ];
        *core.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        Ok(core)
    }

    /// Runs `f` on this node's clock, whoever calls.
    fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.process {
            Some(process) => process.enter(f),
            None => f(),
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.core.id
    }

    /// This node's name and addresses.
    pub fn info(&self) -> &NodeInfo {
        &self.core.info
    }

    /// The address the peer server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.core.local_addr
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.core.config
    }

    /// Events from now on.
    pub fn events(&self) -> EventStream {
        EventStream::new(self.core.view.subscribe())
    }

    /// Whether this node leads the current epoch: Raft says it leads and the
    /// committed epoch is its own.
    pub fn is_leader(&self) -> bool {
        self.enter(|| self.core.raft_leads())
            && self.core.view.with(|s, _| s.leader == Some(self.core.id))
    }

    /// The leader of the current epoch and the epoch token, as committed.
    pub fn leader(&self) -> Option<(NodeId, u64)> {
        self.core.view.with(|s, _| s.leader.map(|l| (l, s.epoch)))
    }

    /// Whether this node is in the cluster's member table.
    pub fn is_joined(&self) -> bool {
        self.core
            .view
            .with(|s, _| s.members.contains_key(&self.core.id) && s.leader.is_some())
    }

    /// Why Raft stopped on this node, if it did (e.g. the data directory
    /// could not be written: a voter that cannot keep its promises stops).
    /// Such a node serves nothing any more; shut it down.
    pub fn failure(&self) -> Option<String> {
        let m = self.core.raft.metrics();
        let m = m.borrow();
        m.running_state
            .as_ref()
            .err()
            .map(|fatal| fatal.to_string())
    }

    /// Waits until this node is in the member table and knows a leader.
    /// Fails at once if the cluster refused the node for good
    /// ([`Error::Refused`]) or Raft stopped on it ([`Error::Raft`]).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let mut changes = self.core.view.watch();
        let mut raft = self.core.raft.metrics();
        let deadline = self.enter(Instant::now) + timeout;
        loop {
            if let Some(reason) = self.failure() {
                return Err(Error::Raft(reason));
            }
            if self.is_joined() {
                return Ok(());
            }
            if let Some(reason) = self.core.refused() {
                return Err(Error::Refused(reason));
            }
            if self.core.shutdown.is_cancelled() {
                return Err(Error::Shutdown);
            }
            let either = async {
                tokio::select! {
                    changed = changes.changed() => changed.is_ok(),
                    changed = raft.changed() => changed.is_ok(),
                }
            };
            let changed = self.enter(|| crate::clock::timeout_at(deadline, either));
            match changed.await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(self.failure().map_or(Error::Shutdown, Error::Raft));
                }
                Err(_) => return Err(Error::NoLeader("not admitted before the deadline".into())),
            }
        }
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> Status {
        let core = &self.core;
        core.view.with(|state, suspects| Status {
            id: core.id,
            name: core.info.name.clone(),
            cluster: core.config.cluster.clone(),
            leader: state.leader,
            epoch: state.epoch,
            applied_index: state.index,
            joined: state.members.contains_key(&core.id),
            members: state
                .members
                .iter()
                .map(|(id, m)| MemberStatus {
                    id: *id,
                    name: m.info.name.clone(),
                    addr: m.info.addr.clone(),
                    http_addr: m.info.http_addr.clone(),
                    role: m.role,
                    alive: !suspects.contains(id),
                    leader: state.leader == Some(*id),
                })
                .collect(),
        })
    }

    /// The partitions this node may work on right now, with their fencing
    /// tokens. Empty while its lease is not valid.
    pub fn owned(&self) -> Vec<crate::ownership::Grant> {
        self.core
            .ownership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .valid(self.enter(Instant::now))
    }

    /// Tells the leader this node's application stopped working on these
    /// revoking partitions (the acknowledgement of
    /// [`crate::Event::PartitionsRevoking`]), so they can move at once.
    /// Partitions this node does not hold under a revocation are ignored.
    /// Returns the partitions released (empty if none was being revoked
    /// here), whether or not the leader has heard of it yet: the release is
    /// repeated on every heartbeat until the table shows it.
    pub async fn release(&self, partitions: &[u32]) -> Result<Vec<u32>, Error> {
        let released = self
            .core
            .ownership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(partitions);
        if released.is_empty() {
            return Ok(Vec::new());
        }
        let parts: Vec<u32> = released.iter().map(|g| g.partition).collect();
        // Remember them until the table shows them released: every
        // heartbeat repeats them, so a leader change or a lost request
        // cannot turn a release into a wait for the deadline.
        self.core.queue_releases(&released);
        if self.core.raft_thinks_it_leads() {
            return Ok(parts);
        }
        let request = crate::protocol::Request::Release {
            id: self.core.id,
            partitions: released.iter().map(|g| (g.partition, g.token)).collect(),
        };
        let mut targets: Vec<String> = self
            .core
            .leader_hint()
            .map(|l| l.addr)
            .into_iter()
            .collect();
        targets.extend(member::known_peers(&self.core));
        for addr in targets {
            let answer = self
                .core
                .transport
                .call(&addr, request.clone(), self.core.config.timings.rpc_timeout)
                .await;
            if let Ok(crate::protocol::Response::Released(true)) = answer {
                return Ok(parts);
            }
        }
        // The next heartbeat carries the release again.
        Ok(parts)
    }

    /// The partition `key` belongs to (same on every node; see
    /// [`crate::partitioner`]).
    pub fn partition_for(&self, key: &[u8]) -> u32 {
        self.core.partitioner.partition_for(key)
    }

    /// The node that owns (or is handing off) `key`'s partition, per the
    /// committed table.
    pub fn owner_of(&self, key: &[u8]) -> Option<NodeId> {
        self.owner_of_partition(self.partition_for(key))
    }

    /// The node that owns (or is handing off) partition `p`.
    pub fn owner_of_partition(&self, p: u32) -> Option<NodeId> {
        self.core
            .view
            .with(|s, _| s.partitions.slot(p).and_then(|slot| slot.owner))
    }

    /// The committed partition table and the log index it is as of.
    pub fn assignment(&self) -> (u64, Vec<crate::partitions::Slot>) {
        self.core
            .view
            .with(|s, _| (s.index, s.partitions.slots().to_vec()))
    }

    /// What this node has done: rebalances, handoffs, expirations, heartbeat
    /// round trip, lost partitions.
    pub fn stats(&self) -> &NodeStats {
        &self.core.stats
    }

    /// Transport counters: refused handshakes, rejected frames, shed connections.
    pub fn wire_stats(&self) -> &WireStats {
        &self.core.wire_stats
    }

    /// Leaves the cluster gracefully: the node is removed through the log
    /// (so nobody waits for its session to expire), then it shuts down.
    /// Gives up on the cluster after `timeout` and shuts down anyway.
    pub async fn leave(&self, timeout: Duration) -> Result<(), Error> {
        self.core.leaving.store(true, Ordering::SeqCst);
        let left = async { crate::clock::timeout(timeout, leader::leave(&self.core)).await };
        let result = crate::clock::scope(self.process.clone(), left)
            .await
            .unwrap_or_else(|_| Err(Error::NoLeader("leave timed out".into())));
        if let Err(e) = &result {
            tracing::warn!(error = %e, "could not leave cleanly; shutting down anyway");
        }
        self.shutdown().await;
        result
    }

    /// Stops the node at once without telling the cluster, as a crash would
    /// (the leader removes it after the session timeout). Prefer
    /// [`Node::leave`].
    pub async fn shutdown(&self) {
        let core = &self.core;
        if core.shutdown.is_cancelled() {
            return;
        }
        core.lose_everything();
        core.shutdown.cancel();
        let _ = core.raft.shutdown().await;
        let tasks = std::mem::take(&mut *core.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            task.abort();
        }
        tracing::info!(node = %core.info.name, "node stopped");
    }

    /// Whether [`Node::leave`] has started.
    pub fn is_leaving(&self) -> bool {
        self.core.leaving.load(Ordering::SeqCst)
    }

    /// Whether [`Node::shutdown`] or [`Node::leave`] has run.
    pub fn is_shut_down(&self) -> bool {
        self.core.shutdown.is_cancelled()
    }
}

/// The id kept in `disk`, checked against the configuration; on a new
/// store, `wanted` (or a random id), written there first.
fn durable_id(
    disk: &DiskStore,
    config: &NodeConfig,
    wanted: Option<NodeId>,
) -> Result<NodeId, Error> {
    let mismatch = |what: String| StoreError::Mismatch {
        place: disk.place().to_string(),
        what,
    };
    let Some(stored) = disk.identity()? else {
        let node_id = wanted.unwrap_or_else(random_id);
        disk.set_identity(&StoredIdentity {
            format: crate::raft::store::FORMAT,
            node_id,
            cluster: config.cluster.clone(),
            num_partitions: config.num_partitions,
        })?;
        return Ok(node_id);
    };
    if stored.format != crate::raft::store::FORMAT {
        return Err(mismatch(format!(
            "has layout {}; this ringleader reads layout {}",
            stored.format,
            crate::raft::store::FORMAT
        ))
        .into());
    }
    if stored.cluster != config.cluster {
        return Err(mismatch(format!(
            "belongs to cluster {:?}, not {:?}",
            stored.cluster, config.cluster
        ))
        .into());
    }
    if stored.num_partitions != config.num_partitions {
        return Err(mismatch(format!(
            "was made with {} partitions; this node is configured with {}",
            stored.num_partitions, config.num_partitions
        ))
        .into());
    }
    if wanted.is_some_and(|w| w != stored.node_id) {
        return Err(mismatch(format!(
            "holds node {}, not the id asked for",
            stored.node_id
        ))
        .into());
    }
    Ok(stored.node_id)
}

/// A fresh node id (never 0: openraft's "no node").
fn random_id() -> NodeId {
    loop {
        let id = crate::runtime::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

/// Keeps the node's [`TickGate`] open while openraft counts this node as a
/// voter (follower or candidate), or as a leader that is no longer a voter
/// (openraft steps such a leader down at a tick), and shut otherwise: on a
/// learner, a node outside the membership, or a leader among the voters,
/// openraft's tick has nothing to do (heartbeats are ours,
/// [`quorum::track`]). Ends when openraft does.
async fn drive_tick_gate(
    mut server: tokio::sync::watch::Receiver<
        openraft::metrics::RaftServerMetrics<NodeId, NodeInfo>,
    >,
    core: Arc<Core>,
) {
    loop {
        let (needed, state) = {
            let m = server.borrow_and_update();
            (
                match m.state {
                    ServerState::Follower | ServerState::Candidate => true,
                    ServerState::Leader => !m.membership_config.voter_ids().any(|v| v == core.id),
                    ServerState::Learner | ServerState::Shutdown => false,
                },
                m.state,
            )
        };
        tracing::debug!(node = core.id, needed, ?state, "openraft tick gate");
        core.tick.set_needed(needed);
        if server.changed().await.is_err() {
            return;
        }
    }
}
