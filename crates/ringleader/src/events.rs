//! Events a node reports to its application.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::ownership::Grant;
use crate::types::{LeaveReason, NodeId, NodeInfo, Role};

/// Something that happened in the cluster, as seen by one node.
///
/// Cluster-wide events come from committed log entries, so every node reports
/// them in the same order. [`Event::BecameLeader`] is node-local.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A new leadership epoch started.
    LeaderChanged {
        /// The new leader.
        leader: NodeId,
        /// The epoch token: strictly greater than every earlier epoch.
        epoch: u64,
    },
    /// This node became the leader of `epoch`. Leader-only work should carry
    /// `epoch` as its fencing token.
    BecameLeader {
        /// The epoch token.
        epoch: u64,
    },
    /// A node was admitted to the member table.
    MemberJoined {
        /// The node's id.
        id: NodeId,
        /// How to reach it.
        info: NodeInfo,
        /// Its role when admitted.
        role: Role,
    },
    /// A node was removed from the member table.
    MemberLeft {
        /// The node's id.
        id: NodeId,
        /// How it was reached.
        info: NodeInfo,
        /// Why it is gone.
        reason: LeaveReason,
    },
    /// A member was promoted to voter or demoted to plain member.
    RoleChanged {
        /// The node's id.
        id: NodeId,
        /// Its new role.
        role: Role,
    },
    /// This node may now work on these partitions. Each carries the fencing
    /// token of its grant.
    PartitionsAssigned {
        /// The new grants.
        partitions: Vec<Grant>,
    },
    /// The leader is moving these partitions away: stop working on them and
    /// call [`crate::Node::release`] within `deadline_ms`; after that they
    /// are lost anyway.
    PartitionsRevoking {
        /// The partitions.
        partitions: Vec<u32>,
        /// Milliseconds left to stop and release them.
        deadline_ms: u64,
    },
    /// This node no longer holds these partitions and did not release them
    /// (its lease ran out, or a revocation deadline passed): stop at once.
    PartitionsLost {
        /// The partitions.
        partitions: Vec<u32>,
    },
    /// The application read events too slowly and `missed` of them were
    /// dropped; re-read [`crate::Node::status`] to resynchronise.
    Lagged {
        /// How many events were dropped.
        missed: u64,
    },
}

/// A stream of [`Event`]s from one node, from the moment it was created.
///
/// Returned by [`crate::Node::events`]. Use it as a [`Stream`] or call
/// [`EventStream::next`]. A slow reader gets [`Event::Lagged`] instead of
/// blocking the node. That holds only while the reader itself does not
/// block the node's runtime: a reader that writes events somewhere that can
/// stall (a pipe, a socket) must not do it with blocking calls on a runtime
/// thread. `ringleader run` hands its event lines to a writer thread through
/// a bounded queue, dropping and counting lines when it is full, and acts
/// on revocations (`--auto-release`) in a task of its own, so a stdout
/// nobody reads costs lines, never the node.
pub struct EventStream {
    inner: BroadcastStream<Event>,
}

impl EventStream {
    pub(crate) fn new(rx: broadcast::Receiver<Event>) -> Self {
        Self {
            inner: BroadcastStream::new(rx),
        }
    }

    /// Waits for the next event; `None` once the node has shut down.
    pub async fn next(&mut self) -> Option<Event> {
        futures::StreamExt::next(self).await
    }
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(event))) => Poll::Ready(Some(event)),
            Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                Poll::Ready(Some(Event::Lagged { missed }))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
