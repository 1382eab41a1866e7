//! Helpers for in-process cluster tests: nodes on loopback, waits with
//! deadlines (never bare sleeps), and agreement checks.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ringleader::{Node, NodeBuilder, Role};
use tokio::time::Instant;

/// Generous: CI machines are shared and slow. Waits end as soon as the
/// condition holds, so this only bounds failures.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Reserves `n` distinct loopback addresses by binding and releasing them.
pub fn free_addrs(n: usize) -> Vec<String> {
    // Below Linux's ephemeral range (32768-60999): a port from bind(0) that
    // is closed again before the node binds it can meanwhile be taken by an
    // outgoing connection of another test (seen: "Address already in use").
    // Ports here are never handed out twice in one test binary.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = (std::process::id() * 7919) % SPAN;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(k < SPAN, "free_addrs: no free ports left");
        let port = LOW + (start + k) % SPAN;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
            out.push(l.local_addr().expect("local addr").to_string());
        }
    }
    out
}

/// A builder for a node listening on `addr` with the given seeds.
pub fn builder(name: &str, addr: &str, seeds: &[String]) -> NodeBuilder {
    Node::builder()
        .name(name)
        .listen(addr)
        .seeds(seeds.iter().cloned())
        .partitions(16)
}

/// Starts `n` nodes from one seed list (all of them), concurrently.
pub async fn start_cluster(n: usize) -> Vec<Node> {
    let addrs = free_addrs(n);
    let starts = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| builder(&format!("n{i}"), a, &addrs).start());
    futures::future::join_all(starts)
        .await
        .into_iter()
        .map(|r| r.expect("node starts"))
        .collect()
}

/// Polls `cond` every 20 ms until it holds or `DEADLINE` passes.
pub async fn wait_until<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if cond() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What every node must agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    pub leader: u64,
    pub epoch: u64,
    pub members: BTreeSet<u64>,
    pub voters: BTreeSet<u64>,
}

/// Some(agreement) when every node in `nodes` is joined, sees exactly
/// `nodes` as members, all alive, with one leader among them who believes it
/// leads, and the expected number of voters.
pub fn agreement(nodes: &[Node], expected_voters: usize) -> Option<Agreement> {
    let ids: BTreeSet<u64> = nodes.iter().map(Node::id).collect();
    let mut seen: Option<Agreement> = None;
    for node in nodes {
        let status = node.status();
        let members: BTreeSet<u64> = status.members.iter().map(|m| m.id).collect();
        if !status.joined || members != ids || status.members.iter().any(|m| !m.alive) {
            return None;
        }
        let voters: BTreeSet<u64> = status
            .members
            .iter()
            .filter(|m| m.role == Role::Voter)
            .map(|m| m.id)
            .collect();
        let this = Agreement {
            leader: status.leader?,
            epoch: status.epoch,
            members,
            voters,
        };
        match &seen {
            None => seen = Some(this),
            Some(prev) if *prev != this => return None,
            Some(_) => {}
        }
    }
    let agreed = seen?;
    let leaders: Vec<&Node> = nodes.iter().filter(|n| n.is_leader()).collect();
    if leaders.len() != 1 || leaders[0].id() != agreed.leader {
        return None;
    }
    if agreed.voters.len() != expected_voters {
        return None;
    }
    Some(agreed)
}

/// Waits until `nodes` agree (see [`agreement`]) and returns what they agree on.
pub async fn wait_agreement(nodes: &[Node], expected_voters: usize, what: &str) -> Agreement {
    let mut result = None;
    wait_until(what, || {
        result = agreement(nodes, expected_voters);
        result.is_some()
    })
    .await;
    result.expect("agreement")
}

pub async fn shutdown_all(nodes: &[Node]) {
    for n in nodes {
        n.shutdown().await;
    }
}

/// A transport that can cut links: calls to a blocked address fail as if the
/// network dropped them. Give each node its own and block both directions
/// to partition nodes inside one process.
pub struct FaultyTransport {
    inner: ringleader::transport::TcpTransport,
    blocked: std::sync::Mutex<BTreeSet<String>>,
}

impl FaultyTransport {
    /// A transport for the node to be started with `.id(id)`.
    pub fn new(id: ringleader::NodeId) -> std::sync::Arc<Self> {
        let wire = ringleader::transport::WireConfig {
            cluster: ringleader::config::DEFAULT_CLUSTER.to_string(),
            node: id,
            secret: None,
            tls: None,
            max_frame: ringleader::transport::codec::DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(2),
        };
        std::sync::Arc::new(Self {
            inner: ringleader::transport::TcpTransport::new(std::sync::Arc::new(wire)),
            blocked: std::sync::Mutex::new(BTreeSet::new()),
        })
    }

    pub fn block(&self, addr: &str) {
        self.blocked.lock().unwrap().insert(addr.to_string());
    }

    pub fn heal(&self) {
        self.blocked.lock().unwrap().clear();
    }
}

impl ringleader::transport::Transport for FaultyTransport {
    fn call(
        &self,
        addr: &str,
        request: ringleader::protocol::Request,
        timeout: Duration,
    ) -> futures::future::BoxFuture<
        '_,
        Result<ringleader::protocol::Response, ringleader::error::TransportError>,
    > {
        if self.blocked.lock().unwrap().contains(addr) {
            let addr = addr.to_string();
            return Box::pin(async move {
                // A cut link looks like a peer that never answers.
                tokio::time::sleep(timeout.min(Duration::from_millis(100))).await;
                Err(ringleader::error::TransportError::Io(format!(
                    "{addr}: link cut by test"
                )))
            });
        }
        self.inner.call(addr, request, timeout)
    }
}

/// Plays a well-behaved application on `node`: every revocation is
/// acknowledged at once. Returns the task; abort it when done.
pub fn auto_release(node: &Node) -> tokio::task::JoinHandle<()> {
    let node = node.clone();
    let mut events = node.events();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let ringleader::Event::PartitionsRevoking { partitions, .. } = event {
                let _ = node.release(&partitions).await;
            }
        }
    })
}
