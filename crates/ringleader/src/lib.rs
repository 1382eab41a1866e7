#![forbid(unsafe_code)]
#![deny(missing_docs)]
//! ringleader lets many copies of one service split their work safely, with
//! no external coordinator: membership and failure detection, leader election
//! with a fencing token (the epoch), and partitions each owned by exactly one
//! live node, with a fencing token per grant (see `docs/guarantees.md`).
//!
//! Nodes form a cluster from a seed list. A small set of voters (1, 3, 5 or 7;
//! by default five once there are five nodes) run Raft ([openraft]); every
//! other node holds a session with the leader and follows the committed
//! state. With a data directory ([`NodeBuilder::data_dir`]) a node keeps its
//! identity and Raft state across restarts. The leader removes a member that stays
//! silent for the session timeout (1 s by default) through the log, so every
//! node reports the same [`Event`]s in the same order.
//!
//! # Example
//!
//! A single node with no seeds forms a cluster of its own at once; give
//! several nodes the same `seeds` to form a larger one.
//!
//! ```
//! use std::time::Duration;
//! use ringleader::{Event, Node};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), ringleader::Error> {
//! let node = Node::builder()
//!     .name("worker-1")
//!     .listen("127.0.0.1:0")
//!     .partitions(64)
//!     .start()
//!     .await?;
//! let mut events = node.events();
//! node.wait_ready(Duration::from_secs(10)).await?;
//!
//! let status = node.status();
//! assert_eq!(status.members.len(), 1);
//! assert!(node.is_leader());
//! let (leader, epoch) = node.leader().expect("a leader");
//! assert_eq!(leader, node.id());
//!
//! // Leader-only work carries the epoch as its fencing token.
//! while let Some(event) = events.next().await {
//!     if let Event::BecameLeader { epoch: mine } = event {
//!         assert_eq!(mine, epoch);
//!         break;
//!     }
//! }
//! node.leave(Duration::from_secs(5)).await?;
//! # Ok(())
//! # }
//! ```

pub mod assignment;
pub mod beat;
pub mod bootstrap;
pub mod clock;
pub mod config;
pub mod error;
pub mod events;
pub mod handoff;
pub mod lease;
pub mod limits;
pub mod node;
pub mod ownership;
pub mod partitioner;
pub mod partitions;
pub mod protocol;
pub mod raft;
pub mod runtime;
pub mod state;
pub mod token;
pub mod transport;
pub mod types;
pub mod vote_gate;

pub use config::{NodeConfig, Timings};
pub use error::Error;
pub use events::{Event, EventStream};
pub use node::{MemberStatus, Node, NodeBuilder, NodeStats, Status};
pub use types::{LeaveReason, NodeId, NodeInfo, Role};
