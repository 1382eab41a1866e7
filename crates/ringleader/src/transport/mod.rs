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

use self::codec::{FramedStream, framed, recv, recv_required, send};
use self::handshake::Secret;
use crate::error::TransportError;
use crate::protocol::{Request, Response};

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

/// Serves requests arriving from peers.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, request: Request) -> BoxFuture<'_, Response>;
}

/// Settings shared by both ends of a connection.
#[derive(Debug, Clone)]
pub struct WireConfig {
    /// The cluster name checked in the handshake.
    pub cluster: String,
    /// The optional shared secret.
    pub secret: Option<Secret>,
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
    /// Connections dropped because too many were open.
    pub connections_shed: AtomicU64,
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
    idle: Mutex<HashMap<String, Vec<FramedStream<N::Stream>>>>,
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

    fn take_idle(&self, addr: &str) -> Option<FramedStream<N::Stream>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get_mut(addr).and_then(Vec::pop)
    }

    fn put_idle(&self, addr: &str, conn: FramedStream<N::Stream>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(addr.to_string()).or_default();
        if list.len() < IDLE_PER_PEER {
            list.push(conn);
        }
    }

    async fn connect(&self, addr: &str) -> Result<FramedStream<N::Stream>, TransportError> {
        let stream = self
            .net
            .connect(addr)
            .await
            .map_err(|e| TransportError::Io(format!("connect {addr}: {e}")))?;
        self.net.prepare(&stream);
        let mut conn = framed(stream, self.config.max_frame);
        handshake::client(&mut conn, &self.config.cluster, self.config.secret.as_ref()).await?;
        Ok(conn)
    }

    async fn exchange(
        conn: &mut FramedStream<N::Stream>,
        request: &Request,
    ) -> Result<Response, TransportError> {
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
            stats.connections_shed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "too many connections; closing this one");
            continue;
        };
        net.prepare(&stream);
        let config = config.clone();
        let handler = handler.clone();
        let stats = stats.clone();
        let shutdown = shutdown.clone();
        crate::clock::spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = serve_connection(stream, peer, config, handler, stats) => {}
            }
        });
    }
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: std::net::SocketAddr,
    config: Arc<WireConfig>,
    handler: Arc<dyn Handler>,
    stats: Arc<WireStats>,
) {
    let mut conn = framed(stream, config.max_frame);
    let handshake = handshake::server(&mut conn, &config.cluster, config.secret.as_ref());
    match crate::clock::timeout(config.handshake_timeout, handshake).await {
        Ok(Ok(())) => {}
        Ok(Err(TransportError::Handshake(e))) => {
            stats.handshakes_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, error = %e, "peer refused at handshake");
            return;
        }
        Ok(Err(TransportError::Closed)) => {
            // Connected and left without a word (a port check, say).
            tracing::debug!(%peer, "connection closed before the handshake");
            return;
        }
        Ok(Err(e)) => {
            stats.frames_rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, error = %e, "bad handshake; connection closed");
            return;
        }
        Err(_) => {
            stats.handshakes_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "handshake timed out; connection closed");
            return;
        }
    }
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
                stats.frames_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, %reason, "malformed frame; connection closed");
                return;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection ended");
                return;
            }
        };
        let response = handler.handle(request).await;
        if let Err(e) = send(&mut conn, &response).await {
            tracing::debug!(%peer, error = %e, "could not answer; connection closed");
            return;
        }
    }
}
