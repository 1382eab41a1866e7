//! The HTTP/1.1 server under the API, with the limits a node exposed to
//! strangers needs: at most [`Limits::max_connections`] connections at once
//! (further ones wait in the listen backlog, holding no descriptor of ours),
//! a header-read timeout that also ends idle keep-alive connections, and a
//! graceful shutdown. Long-lived responses (the SSE stream) count against
//! the connection limit but are never cut by the timeout: it runs only
//! while the server waits for a request head.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Default connection limit of the HTTP API.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Default time a client has to send a request head, and that an idle
/// keep-alive connection stays open.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// File descriptors kept back from the HTTP API for everything else
/// (listeners, the runtime, logs), before the rest is split evenly between
/// HTTP clients and peers.
pub const FD_RESERVE: u64 = 64;
/// Largest request head (request line and headers) a connection buffers,
/// in bytes: keys are at most 4 KiB (12 KiB percent-encoded), and 512
/// connections trickling heads cannot hold more than 32 MiB.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long in-flight requests may run on after a shutdown is asked for.
pub const DRAIN: Duration = Duration::from_secs(1);

/// The server's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to send a request head (and idle time between requests).
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit
/// now in force (None if it cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// The HTTP connection limit under an open-file limit of `nofile`: at most
/// `configured`, and at most half of what [`FD_RESERVE`] leaves, so peers
/// always have as many descriptors as HTTP clients can take. At least 1.
pub fn connection_cap(configured: usize, nofile: Option<u64>) -> usize {
    let Some(nofile) = nofile else {
        return configured.max(1);
    };
    let half = usize::try_from(nofile.saturating_sub(FD_RESERVE) / 2).unwrap_or(usize::MAX);
    configured.min(half).max(1)
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves;
/// then stops accepting and gives in-flight requests [`DRAIN`] to finish.
/// Each request carries its peer address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(MAX_HEAD_BYTES);
    tokio::pin!(shutdown);
    let mut failing = false;
    loop {
        // A free slot first: beyond the limit, clients wait in the kernel's
        // backlog instead of taking a descriptor from the peers.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed; nothing left to serve with
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    failing = false;
                    accepted
                }
                Err(e) => {
                    // Out of descriptors, typically: back off instead of
                    // spinning, and say so once per burst.
                    if !failing {
                        tracing::warn!(error = %e, "HTTP API cannot accept connections");
                        failing = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = app
            .clone()
            .map_request(move |mut request: axum::extract::Request<_>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Errors here are the client's (a timeout, a reset, bad HTTP).
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_connections_leave_descriptors_for_peers() {
        assert_eq!(connection_cap(512, None), 512);
        assert_eq!(connection_cap(512, Some(1 << 20)), 512);
        // 1024 descriptors: 64 reserved, 480 for HTTP, 480 for the rest.
        assert_eq!(connection_cap(512, Some(1024)), 480);
        assert_eq!(connection_cap(512, Some(256)), 96);
        assert_eq!(connection_cap(512, Some(10)), 1);
        assert_eq!(connection_cap(0, None), 1);
    }
}
