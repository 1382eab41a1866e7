//! Moving [`Request`]s and [`Response`]s between nodes.
//!
//! The node talks to peers only through the [`Transport`] trait (client side)
//! and hands incoming requests to a [`Handler`] (server side), so a simulated
//! network can stand in for TCP. [`TcpTransport`] and [`serve`] are the real
//! thing: framed TCP ([`codec`]) after a versioned, optionally authenticated
//! handshake ([`handshake`]). Both open their sockets through a [`Net`]:
//! [`TokioNet`] (tokio's TCP, the default) in normal use, a simulated network
//! (turmoil, in `crates/ringleader-sim`) under simulation.

pub mod codec;
pub mod handshake;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use self::codec::{
    FrameBudget, FramedStream, HANDSHAKE_MAX_FRAME, framed, framed_with_budget, recv,
    recv_required, send,
};
use self::handshake::Secret;
use self::tls::TlsConfig;
use crate::error::{HandshakeError, TransportError};
use crate::protocol::{Request, Response};
use crate::types::NodeId;

/// Sends requests to peers by address.
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` to the node listening at `addr` and waits at most
    /// `timeout` for its response.
    fn call(
        &self,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Response, TransportError>>;
}

/// Where a node's peer sockets come from: TCP connect, bind and accept.
///
/// [`TokioNet`] is the real network and the default everywhere. A simulator
/// supplies its own (turmoil's `TcpStream`/`TcpListener`) through
/// [`crate::NodeBuilder::net`]; nothing else in the node touches sockets.
pub trait Net: Clone + Send + Sync + 'static {
    /// A connected stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// A bound listener.
    type Listener: Send + Sync + 'static;

    /// Connects to `addr` (`HOST:PORT`).
    fn connect(&self, addr: &str) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;

    /// Binds a listener to `addr` (`HOST:PORT`; port 0 picks a free one).
    fn bind(&self, addr: &str) -> impl Future<Output = std::io::Result<Self::Listener>> + Send;

    /// Accepts the next connection.
    fn accept<'a>(
        &'a self,
        listener: &'a Self::Listener,
    ) -> impl Future<Output = std::io::Result<(Self::Stream, SocketAddr)>> + Send + 'a;

    /// The address `listener` is bound to.
    fn local_addr(&self, listener: &Self::Listener) -> std::io::Result<SocketAddr>;

    /// Prepares a freshly connected or accepted stream (TCP: no Nagle delay).
    fn prepare(&self, _stream: &Self::Stream) {}
}

/// tokio's TCP: the real network.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioNet;

impl Net for TokioNet {
    type Stream = tokio::net::TcpStream;
    type Listener = tokio::net::TcpListener;

    fn connect(&self, addr: &str) -> impl Future<Output = std::io::Result<Self::Stream>> + Send {
        tokio::net::TcpStream::connect(addr.to_string())
    }

    fn bind(&self, addr: &str) -> impl Future<Output = std::io::Result<Self::Listener>> + Send {
        tokio::net::TcpListener::bind(addr.to_string())
    }

    fn accept<'a>(
        &'a self,
        listener: &'a Self::Listener,
    ) -> impl Future<Output = std::io::Result<(Self::Stream, SocketAddr)>> + Send + 'a {
        listener.accept()
    }

    fn local_addr(&self, listener: &Self::Listener) -> std::io::Result<SocketAddr> {
        listener.local_addr()
    }

    fn prepare(&self, stream: &Self::Stream) {
        let _ = stream.set_nodelay(true);
    }
}

/// Who sent a request: the identity its connection's handshake established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The node id the sender gave in its handshake (covered by the proof
    /// of the cluster secret when there is one).
    pub id: NodeId,
    /// Whether the sender proved it knows the cluster secret.
    pub authenticated: bool,
}

/// A connected byte stream of any kind: plain, or TLS over one.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// A peer connection after the handshake.
pub type PeerConn = FramedStream<Box<dyn Conn>>;

/// Serves requests arriving from peers.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request from `peer`. A request that speaks for another
    /// node than `peer` must be refused.
    fn handle(&self, peer: Peer, request: Request) -> BoxFuture<'_, Response>;
}

/// Settings shared by both ends of a connection.
#[derive(Debug, Clone)]
pub struct WireConfig {
    /// The cluster name checked in the handshake.
    pub cluster: String,
    /// This node's id, given in every handshake it makes or answers. A
    /// transport given to [`crate::NodeBuilder::transport`] must be made
    /// with the id given to [`crate::NodeBuilder::id`].
    pub node: NodeId,
    /// The optional shared secret.
    pub secret: Option<Secret>,
    /// Mutual TLS for every connection, when configured.
    pub tls: Option<TlsConfig>,
    /// The largest frame accepted or sent.
    pub max_frame: usize,
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
}

/// Counters describing what the server side refused.
#[derive(Debug, Default)]
pub struct WireStats {
    /// Connections refused at the handshake (wrong cluster, secret, version).
    pub handshakes_refused: AtomicU64,
    /// Connections closed because of a malformed, truncated or oversized frame.
    pub frames_rejected: AtomicU64,
    /// Connections dropped because too many were open, or too many were
    /// still in their handshake (from one address or in all).
    pub connections_shed: AtomicU64,
    /// Log lines about refused peers left out to keep the log small.
    pub refusals_unlogged: AtomicU64,
    /// Requests refused after the handshake: they spoke for another node
    /// than their connection's, or listed more partitions than there are.
    pub requests_refused: AtomicU64,
}

const IDLE_PER_PEER: usize = 4;

/// The TCP [`Transport`]: a small pool of authenticated connections per peer.
///
/// Each connection carries one request at a time; concurrent calls to one
/// peer use several connections. Sockets come from `N` ([`TokioNet`] unless
/// built with [`TcpTransport::with_net`]).
pub struct TcpTransport<N: Net = TokioNet> {
    config: Arc<WireConfig>,
    net: N,
    idle: Mutex<HashMap<String, Vec<PeerConn>>>,
}

impl TcpTransport {
    /// Creates a transport on tokio's TCP with no open connections.
    pub fn new(config: Arc<WireConfig>) -> Self {
        Self::with_net(config, TokioNet)
    }
}

impl<N: Net> TcpTransport<N> {
    /// Creates a transport whose sockets come from `net`.
    pub fn with_net(config: Arc<WireConfig>, net: N) -> Self {
        Self {
            config,
            net,
            idle: Mutex::new(HashMap::new()),
        }
    }

    fn take_idle(&self, addr: &str) -> Option<PeerConn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get_mut(addr).and_then(Vec::pop)
    }

    fn put_idle(&self, addr: &str, conn: PeerConn) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(addr.to_string()).or_default();
        if list.len() < IDLE_PER_PEER {
            list.push(conn);
        }
    }

    async fn connect(&self, addr: &str) -> Result<PeerConn, TransportError> {
        let stream = self
            .net
            .connect(addr)
            .await
            .map_err(|e| TransportError::Io(format!("connect {addr}: {e}")))?;
        self.net.prepare(&stream);
        let stream: Box<dyn Conn> = match &self.config.tls {
            None => Box::new(stream),
            Some(tls) => {
                let name = tls::server_name(addr).map_err(|e| TransportError::Io(e.to_string()))?;
                let stream = tls.connector().connect(name, stream).await.map_err(|e| {
                    TransportError::Handshake(HandshakeError::Auth(format!("TLS with {addr}: {e}")))
                })?;
                Box::new(stream)
            }
        };
        let mut conn = framed(stream, HANDSHAKE_MAX_FRAME);
        let c = &self.config;
        handshake::client(&mut conn, &c.cluster, c.node, c.secret.as_ref()).await?;
        conn.codec_mut().set_max_frame(c.max_frame);
        Ok(conn)
    }

    async fn exchange(conn: &mut PeerConn, request: &Request) -> Result<Response, TransportError> {
        send(conn, request).await?;
        recv_required(conn).await
    }

    async fn call_inner(&self, addr: &str, request: Request) -> Result<Response, TransportError> {
        // A pooled connection may have been closed by the peer (e.g. it
        // restarted); retry such a failure once on a fresh connection. Every
        // request is safe to repeat.
        if let Some(mut conn) = self.take_idle(addr) {
            if let Ok(response) = Self::exchange(&mut conn, &request).await {
                self.put_idle(addr, conn);
                return Ok(response);
            }
        }
        let mut conn = self.connect(addr).await?;
        let response = Self::exchange(&mut conn, &request).await?;
        self.put_idle(addr, conn);
        Ok(response)
    }
}

impl<N: Net> Transport for TcpTransport<N> {
    fn call(
        &self,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Response, TransportError>> {
        let addr = addr.to_string();
        Box::pin(async move {
            match crate::clock::timeout(timeout, self.call_inner(&addr, request)).await {
                Ok(result) => result,
                Err(_) => Err(TransportError::Timeout(timeout.as_millis() as u64)),
            }
        })
    }
}

/// A connection with no request for this long is closed; clients reconnect
/// on demand (and retry a request that met a closed pooled connection).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The most connections one node serves at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 1024;

/// The most connections that may be in their handshake at once; more are
/// closed at accept. Authenticated connections do not count.
pub const MAX_HANDSHAKING: usize = 256;

/// The most connections from one (non-loopback) IP address that may be in
/// their handshake at once.
pub const MAX_HANDSHAKING_PER_SOURCE: usize = 64;

/// Connections still in their handshake, in all and per source address.
#[derive(Debug, Default)]
struct Handshaking {
    per_source: Mutex<HashMap<std::net::IpAddr, usize>>,
}

/// A place in [`Handshaking`], given back when dropped.
struct HandshakeSlot<'a> {
    table: &'a Handshaking,
    source: std::net::IpAddr,
}

impl Handshaking {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<std::net::IpAddr, usize>> {
        self.per_source.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a handshake from `source`, if both limits allow one.
    fn enter(&self, source: std::net::IpAddr) -> Option<HandshakeSlot<'_>> {
        let mut table = self.lock();
        let total: usize = table.values().sum();
        let mine = table.get(&source).copied().unwrap_or(0);
        // Every local process shares one loopback source (a whole test or
        // dev cluster): only the total bounds them.
        let per_source = !source.is_loopback() && mine >= MAX_HANDSHAKING_PER_SOURCE;
        if total >= MAX_HANDSHAKING || per_source {
            return None;
        }
        table.insert(source, mine + 1);
        Some(HandshakeSlot {
            table: self,
            source,
        })
    }
}

impl Drop for HandshakeSlot<'_> {
    fn drop(&mut self) {
        let mut table = self.table.lock();
        if let Some(n) = table.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                table.remove(&self.source);
            }
        }
    }
}

/// Log lines about refused peers: at most [`REFUSALS_LOGGED`] per
/// [`REFUSAL_WINDOW`]; the rest are counted in
/// [`WireStats::refusals_unlogged`] and summed up in the next window's first
/// line, so a flood of bad handshakes cannot flood the log.
#[derive(Debug, Default)]
struct RefusalLog {
    window: Mutex<Option<(crate::clock::Instant, u32, u64)>>,
}

const REFUSALS_LOGGED: u32 = 10;
const REFUSAL_WINDOW: Duration = Duration::from_secs(10);

impl RefusalLog {
    /// Whether to log this refusal now; also the count left out before it.
    fn admit(&self, stats: &WireStats) -> Option<u64> {
        let now = crate::clock::Instant::now();
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let (start, logged, skipped) = window.get_or_insert((now, 0, 0));
        if now.duration_since(*start) >= REFUSAL_WINDOW {
            let left_out = *skipped;
            *window = Some((now, 1, 0));
            return Some(left_out);
        }
        if *logged < REFUSALS_LOGGED {
            *logged += 1;
            return Some(0);
        }
        *skipped += 1;
        stats.refusals_unlogged.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// What [`serve`] shares between its connections.
struct Shared {
    config: Arc<WireConfig>,
    handler: Arc<dyn Handler>,
    stats: Arc<WireStats>,
    budget: Arc<FrameBudget>,
    handshaking: Handshaking,
    refusals: RefusalLog,
}

impl Shared {
    /// Logs a refused peer, within the rate limit. `what` is bounded text.
    fn refused(&self, peer: SocketAddr, what: &str) {
        if let Some(left_out) = self.refusals.admit(&self.stats) {
            if left_out > 0 {
                tracing::warn!(%peer, error = %what, left_out, "peer refused (and {left_out} more not logged)");
            } else {
                tracing::warn!(%peer, error = %what, "peer refused");
            }
        }
    }
}

/// Accepts peer connections on `listener` (bound with `net`) until
/// `shutdown` fires, serving each on its own task. A connection that fails
/// its handshake or sends a bad frame is closed and logged; nothing else is
/// affected.
pub async fn serve<N: Net>(
    net: N,
    listener: N::Listener,
    config: Arc<WireConfig>,
    handler: Arc<dyn Handler>,
    stats: Arc<WireStats>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let shared = Arc::new(Shared {
        config,
        handler,
        stats,
        budget: FrameBudget::new(codec::DEFAULT_FRAME_BUDGET),
        handshaking: Handshaking::default(),
        refusals: RefusalLog::default(),
    });
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = net.accept(&listener) => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                crate::clock::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shared
                .stats
                .connections_shed
                .fetch_add(1, Ordering::Relaxed);
            shared.refused(peer, "too many connections");
            continue;
        };
        net.prepare(&stream);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        crate::clock::spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = serve_connection(stream, peer, &shared) => {}
            }
        });
    }
}

/// TLS (when configured), then the ringleader handshake, on a fresh
/// connection.
async fn handshake_with<S: Conn + 'static>(
    stream: S,
    shared: &Shared,
) -> Result<(PeerConn, Peer), TransportError> {
    let c = &shared.config;
    let stream: Box<dyn Conn> =
        match &c.tls {
            None => Box::new(stream),
            Some(tls) => Box::new(tls.acceptor().accept(stream).await.map_err(|e| {
                TransportError::Handshake(HandshakeError::Auth(format!("TLS: {e}")))
            })?),
        };
    let mut conn = framed_with_budget(stream, HANDSHAKE_MAX_FRAME, shared.budget.clone());
    let established = handshake::server(&mut conn, &c.cluster, c.node, c.secret.as_ref()).await?;
    let peer = Peer {
        id: established.peer,
        authenticated: established.authenticated || c.tls.is_some(),
    };
    Ok((conn, peer))
}

/// Runs TLS and the handshake on a fresh connection, within the handshake
/// limits; `None` when the connection was refused (and logged).
async fn admit<S: Conn + 'static>(
    stream: S,
    peer: SocketAddr,
    shared: &Shared,
) -> Option<(PeerConn, Peer)> {
    let Some(_slot) = shared.handshaking.enter(peer.ip()) else {
        shared
            .stats
            .connections_shed
            .fetch_add(1, Ordering::Relaxed);
        shared.refused(peer, "too many connections in their handshake");
        return None;
    };
    let c = &shared.config;
    let outcome = crate::clock::timeout(c.handshake_timeout, handshake_with(stream, shared)).await;
    let error = match outcome {
        Ok(Ok(admitted)) => return Some(admitted),
        // Connected and left without a word (a port check, say).
        Ok(Err(TransportError::Closed)) => return None,
        Ok(Err(e @ TransportError::Handshake(_))) => e,
        Ok(Err(e)) => {
            shared.stats.frames_rejected.fetch_add(1, Ordering::Relaxed);
            e
        }
        Err(_) => TransportError::Handshake(HandshakeError::Unexpected(
            "no complete handshake in time".into(),
        )),
    };
    if matches!(error, TransportError::Handshake(_)) {
        shared
            .stats
            .handshakes_refused
            .fetch_add(1, Ordering::Relaxed);
    }
    shared.refused(peer, &error.to_string());
    None
}

async fn serve_connection<S: Conn + 'static>(stream: S, peer: SocketAddr, shared: &Shared) {
    let Some((mut conn, sender)) = admit(stream, peer, shared).await else {
        return;
    };
    conn.codec_mut().set_max_frame(shared.config.max_frame);
    loop {
        let next = crate::clock::timeout(IDLE_TIMEOUT, recv::<_, Request>(&mut conn)).await;
        let Ok(next) = next else {
            tracing::debug!(%peer, "idle connection closed");
            return;
        };
        let request = match next {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(TransportError::Malformed(reason)) => {
                shared.stats.frames_rejected.fetch_add(1, Ordering::Relaxed);
                let reason = crate::limits::clip(&reason, crate::limits::MAX_NAME_BYTES);
                shared.refused(peer, &format!("malformed frame: {reason}"));
                return;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection ended");
                return;
            }
        };
        let response = shared.handler.handle(sender, request).await;
        if let Err(e) = send(&mut conn, &response).await {
            tracing::debug!(%peer, error = %e, "could not answer; connection closed");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_are_limited_per_source_and_in_all() {
        let table = Handshaking::default();
        let a: std::net::IpAddr = [10, 0, 0, 1].into();
        let mut held: Vec<_> = (0..MAX_HANDSHAKING_PER_SOURCE)
            .map(|_| table.enter(a).expect("under the limit"))
            .collect();
        assert!(table.enter(a).is_none());
        held.pop();
        assert!(table.enter(a).is_some());
        // Other sources fill the rest of the table, and no more.
        let mut others = Vec::new();
        let mut i = 0u32;
        while let Some(slot) = table.enter(std::net::IpAddr::from((i + 1).to_be_bytes())) {
            others.push(slot);
            i += 1;
        }
        assert_eq!(held.len() + others.len(), MAX_HANDSHAKING);
        drop(held);
        drop(others);
        assert!(table.lock().is_empty());
    }

    #[test]
    fn refusals_are_logged_at_a_bounded_rate() {
        let log = RefusalLog::default();
        let stats = WireStats::default();
        let logged = (0..1000).filter(|_| log.admit(&stats).is_some()).count();
        assert_eq!(logged, REFUSALS_LOGGED as usize);
        assert_eq!(stats.refusals_unlogged.load(Ordering::Relaxed), 990);
    }
}
