//! Error types.

use thiserror::Error;

/// A failure talking to a peer.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TransportError {
    /// Connecting, reading or writing failed.
    #[error("i/o error: {0}")]
    Io(String),
    /// The peer did not answer in time.
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// A frame was oversized, truncated or did not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The handshake failed; the connection was not admitted.
    #[error("handshake refused: {0}")]
    Handshake(#[from] HandshakeError),
}

/// Why a handshake failed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: ours {ours}, theirs {theirs}")]
    Version {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// The peer belongs to another cluster.
    #[error("cluster name mismatch: ours {ours:?}, theirs {theirs:?}")]
    Cluster {
        /// Our cluster name.
        ours: String,
        /// The peer's cluster name.
        theirs: String,
    },
    /// The peer could not prove it knows the cluster secret.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The peer refused us, with its reason.
    #[error("peer refused the connection: {0}")]
    Refused(String),
    /// The peer sent something other than the expected handshake message.
    #[error("unexpected handshake message: {0}")]
    Unexpected(String),
}

/// A failure starting or operating a node.
#[derive(Debug, Error)]
pub enum Error {
    /// The configuration is invalid; the message names the setting.
    #[error("invalid configuration: {setting}: {reason}")]
    Config {
        /// The setting at fault.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The peer listen address could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        reason: String,
    },
    /// The cluster refused to admit this node (e.g. a different partition count).
    #[error("the cluster refused this node: {0}")]
    Refused(String),
    /// Raft reported an error.
    #[error("raft: {0}")]
    Raft(String),
    /// The node has shut down.
    #[error("the node has shut down")]
    Shutdown,
    /// No leader could be reached in time.
    #[error("no leader reachable: {0}")]
    NoLeader(String),
    /// The data directory cannot be used (locked, damaged, another
    /// cluster's, unreadable or unwritable).
    #[error(transparent)]
    Storage(#[from] crate::raft::store::StoreError),
}

impl Error {
    pub(crate) fn config(setting: &'static str, reason: impl Into<String>) -> Self {
        Error::Config {
            setting,
            reason: reason.into(),
        }
    }
}
