//! Messages exchanged between nodes, after the handshake.
//!
//! Every connection carries requests from the side that opened it and one
//! response per request, in order. Messages are encoded with `postcard` inside
//! length-prefixed frames (see [`crate::transport::codec`]).

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::raft::TypeConfig;
use crate::state::{ClusterState, Command};
use crate::types::{NodeId, NodeInfo};

/// The wire protocol version carried in the handshake. Bump it on any
/// incompatible change to [`Request`], [`Response`] or the handshake.
pub const PROTOCOL_VERSION: u16 = 3;

/// A request from one node to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Raft log replication and heartbeats, addressed to one incarnation.
    AppendEntries {
        /// The incarnation the sender means to reach.
        target: NodeId,
        /// The openraft request.
        rpc: AppendEntriesRequest<TypeConfig>,
    },
    /// A Raft vote request.
    Vote {
        /// The incarnation the sender means to reach.
        target: NodeId,
        /// The openraft request.
        rpc: VoteRequest<NodeId>,
    },
    /// A chunk of a Raft snapshot.
    InstallSnapshot {
        /// The incarnation the sender means to reach.
        target: NodeId,
        /// The openraft request.
        rpc: InstallSnapshotRequest<TypeConfig>,
    },
    /// "Who are you and do you belong to a cluster?"
    Probe,
    /// Ask the leader to admit a node.
    Join {
        /// The joining incarnation.
        id: NodeId,
        /// How to reach it.
        info: NodeInfo,
        /// Its configured partition count (must match the cluster's).
        num_partitions: u32,
        /// Which start of the node this is: rises with every start from
        /// its data directory (0 without one, where every start is a new
        /// id). A higher one than the member table's is a restart.
        incarnation: u64,
    },
    /// A member's session heartbeat to the leader.
    Heartbeat {
        /// The sender.
        id: NodeId,
        /// Creation second of the cluster life the sender's copy belongs to.
        known_created: u32,
        /// Index of the last entry the sender has applied.
        known_index: u64,
        /// Revoking partitions the sender's application released, as
        /// (partition, grant token), repeated until the table shows them
        /// released. The token keeps a late repeat from acknowledging a
        /// later grant of the same partition.
        released: Vec<(u32, u64)>,
    },
    /// Ask the leader to remove a node now (graceful leave).
    Leave {
        /// The leaving incarnation.
        id: NodeId,
    },
    /// The sender's application stopped working on these revoking partitions.
    Release {
        /// The sender.
        id: NodeId,
        /// The partitions it released, with their grant tokens.
        partitions: Vec<(u32, u64)>,
    },
    /// From the leader: the table changed in a way that concerns the
    /// receiver (a grant, a revocation), so it should heartbeat at once
    /// instead of learning it up to one heartbeat interval later.
    Poke {
        /// The incarnation the leader means to reach.
        target: NodeId,
    },
    /// The leader's quorum round to one voter (`node/quorum.rs`): a Raft
    /// heartbeat that also keeps the voter's member session, so voters need
    /// not heartbeat the leader themselves (see [`crate::beat`]). Answered
    /// with [`Response::AppendEntries`].
    Beat {
        /// The incarnation the leader means to reach.
        target: NodeId,
        /// An empty AppendEntries carrying the leader's vote.
        rpc: AppendEntriesRequest<TypeConfig>,
        /// This round's number, counted by the leader.
        round: u64,
        /// The receiver's latest round whose answer renewed its session in
        /// the leader's table (a leader in office), if one did since the
        /// previous beat to it.
        renewed: Option<u64>,
        /// With `renewed` only, as in a heartbeat's `Ack`: for the
        /// receiver's revoking partitions, milliseconds until the leader may
        /// take each one.
        revocations: Vec<(u32, u64)>,
        /// With `renewed` only: the members the leader suspects.
        suspects: Vec<NodeId>,
        /// The leader's table when it built this beat, as (creation second,
        /// index): a renewal counts only on a receiver whose own table is at
        /// least that new, as a heartbeat's answer brings the member's table
        /// up to the leader's before it renews the lease.
        table: (u32, u64),
    },
}

impl Request {
    /// Whether this request, arriving on a connection whose handshake named
    /// node `sender`, may be served: it must speak only for its sender (a
    /// Raft message carries the sender's own vote; a join, heartbeat, leave
    /// or release names the sender), and its lists must be no longer than
    /// the `partitions` there are. The refusal says which rule failed and
    /// nothing of the receiver's state.
    pub fn check_sender(&self, sender: NodeId, partitions: u32) -> Result<(), &'static str> {
        let claimed = match self {
            Request::AppendEntries { rpc, .. } | Request::Beat { rpc, .. } => {
                rpc.vote.leader_id().voted_for()
            }
            Request::InstallSnapshot { rpc, .. } => rpc.vote.leader_id().voted_for(),
            Request::Vote { rpc, .. } => rpc.vote.leader_id().voted_for(),
            Request::Join { id, .. }
            | Request::Heartbeat { id, .. }
            | Request::Leave { id }
            | Request::Release { id, .. } => Some(*id),
            Request::Probe | Request::Poke { .. } => return Ok(()),
        };
        if claimed != Some(sender) {
            return Err("the request speaks for another node than its connection's");
        }
        let listed = match self {
            Request::Heartbeat { released, .. } => released.len(),
            Request::Release { partitions, .. } => partitions.len(),
            Request::Beat { revocations, .. } => revocations.len(),
            _ => 0,
        };
        if listed > partitions as usize {
            return Err("the request lists more partitions than the cluster has");
        }
        Ok(())
    }
}

/// The answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::AppendEntries`].
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to [`Request::Vote`].
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to [`Request::InstallSnapshot`].
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// Answer to [`Request::Probe`].
    Probe(ProbeInfo),
    /// Answer to [`Request::Join`].
    Join(JoinOutcome),
    /// Answer to [`Request::Heartbeat`].
    Heartbeat(HeartbeatOutcome),
    /// Answer to [`Request::Leave`].
    Leave(LeaveOutcome),
    /// Answer to [`Request::Release`]: whether this node leads and took note.
    Released(bool),
    /// Answer to [`Request::Poke`]: whether the receiver is that incarnation.
    Poked(bool),
    /// A Raft message reached a different incarnation than it was meant for.
    WrongTarget {
        /// The incarnation listening at that address now.
        actual: NodeId,
    },
    /// The request could not be served.
    Error(String),
}

/// What a node says about itself when probed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeInfo {
    /// Its node id.
    pub id: NodeId,
    /// Whether it belongs to a cluster.
    pub clustered: bool,
    /// The leader it knows of.
    pub leader: Option<NodeInfo>,
}

/// The answer to a join request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinOutcome {
    /// The node is in the member table (committed).
    Admitted,
    /// Ask the leader instead.
    NotLeader {
        /// The leader, when known.
        leader: Option<NodeInfo>,
    },
    /// The node may not join, and retrying will not help.
    Refused(String),
    /// The node may not join now, for the reason given; a later attempt may
    /// succeed (the member table is full, or the address it gives is held
    /// by a member and it did not answer there).
    NotNow(String),
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeartbeatOutcome {
    /// Session renewed.
    Ack {
        /// What the sender is missing of the committed state.
        update: Update,
        /// Members the leader has not heard from for a while.
        suspects: Vec<NodeId>,
        /// For each of the sender's revoking partitions: milliseconds, from
        /// this answer, until the leader may take it without a release.
        revocations: Vec<(u32, u64)>,
    },
    /// Heartbeat the leader instead.
    NotLeader {
        /// The leader, when known.
        leader: Option<NodeInfo>,
    },
    /// The sender is not in the member table (expelled): it must rejoin.
    UnknownMember,
}

/// The committed state a member is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    /// Nothing new.
    UpToDate,
    /// The entries after the member's index, in log order.
    Delta(Vec<(u64, Command)>),
    /// The whole state (the member is too far behind or in another life).
    Snapshot(Box<ClusterState>),
}

/// The answer to a leave request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaveOutcome {
    /// The node is out of the member table (committed).
    Removed,
    /// Its partitions are being handed off; ask again.
    InProgress,
    /// Ask the leader instead.
    NotLeader {
        /// The leader, when known.
        leader: Option<NodeInfo>,
    },
}

#[cfg(test)]
mod tests {
    use crate::protocol::Request;
    use crate::raft::TypeConfig;
    use crate::types::NodeInfo;
    use openraft::raft::{AppendEntriesRequest, VoteRequest};
    use openraft::{CommittedLeaderId, LogId, Vote};

    fn append(leader: u64) -> Request {
        Request::AppendEntries {
            target: 9,
            rpc: AppendEntriesRequest::<TypeConfig> {
                vote: Vote::new_committed(3, leader),
                prev_log_id: Some(LogId::new(CommittedLeaderId::new(3, leader), 1)),
                entries: Vec::new(),
                leader_commit: None,
            },
        }
    }

    #[test]
    fn a_request_speaks_only_for_its_connection() {
        let vote = |candidate| Request::Vote {
            target: 9,
            rpc: VoteRequest::new(Vote::new(4, candidate), None),
        };
        let join = |id| Request::Join {
            id,
            info: NodeInfo::default(),
            num_partitions: 8,
            incarnation: 0,
        };
        let heartbeat = |id| Request::Heartbeat {
            id,
            known_created: 0,
            known_index: 0,
            released: Vec::new(),
        };
        let release = |id| Request::Release {
            id,
            partitions: vec![(1, 2)],
        };
        // (request, the node it speaks for)
        let cases = [
            (append(5), 5),
            (vote(5), 5),
            (join(5), 5),
            (heartbeat(5), 5),
            (Request::Leave { id: 5 }, 5),
            (release(5), 5),
        ];
        for (request, speaker) in cases {
            assert_eq!(request.check_sender(speaker, 8), Ok(()), "{request:?}");
            assert!(request.check_sender(speaker + 1, 8).is_err(), "{request:?}");
        }
        // Asking carries no identity.
        assert_eq!(Request::Probe.check_sender(1, 8), Ok(()));
        assert_eq!(Request::Poke { target: 2 }.check_sender(1, 8), Ok(()));
    }

    #[test]
    fn lists_are_bounded_by_the_partition_count() {
        let release = Request::Release {
            id: 5,
            partitions: (0..9).map(|p| (p, 1)).collect(),
        };
        assert!(release.check_sender(5, 8).is_err());
        assert_eq!(release.check_sender(5, 9), Ok(()));
    }
}
