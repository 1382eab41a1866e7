//! Identifiers and descriptions of cluster members shared by every layer.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The identity of a node.
///
/// Without a data directory a fresh random id is drawn every time a process
/// starts a node, so a restarted process is always a new member: nothing it
/// remembers can be confused with its previous life. With one, the id is
/// kept there and a restart is the same node (and voter) again; each start
/// counts an *incarnation* (see [`crate::protocol::Request::Join`]) so the
/// cluster can tell the new process from the old. (A node that is expelled
/// while it keeps running rejoins under the same id.)
/// The human-readable name lives in [`NodeInfo::name`].
pub type NodeId = u64;

/// How a node is reached and how it calls itself.
///
/// This is also openraft's `Node` type: voters find each other through it.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The user-given (or generated) node name, for people.
    pub name: String,
    /// The peer address (`HOST:PORT`) other nodes connect to.
    pub addr: String,
    /// The HTTP API address, when the node serves one.
    pub http_addr: Option<String>,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// The part a member plays in consensus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A Raft voter: replicates the log and may be elected leader.
    Voter,
    /// A member that holds a session with the leader and receives the
    /// committed state as a stream, but does not vote.
    Member,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Voter => "voter",
            Role::Member => "member",
        })
    }
}

/// Why a member left the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The node asked to leave (`Node::leave`).
    Left,
    /// The leader heard nothing from the node for the session timeout.
    Expired,
}

impl fmt::Display for LeaveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LeaveReason::Left => "left",
            LeaveReason::Expired => "expired",
        })
    }
}
