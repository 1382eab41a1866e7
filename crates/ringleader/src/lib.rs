#![forbid(unsafe_code)]
#![deny(missing_docs)]
//! placeholder

pub mod assignment;
pub mod bootstrap;
pub mod config;
pub mod error;
pub mod events;
pub mod node;
pub mod partitioner;
pub mod protocol;
pub mod raft;
pub mod state;
pub mod token;
pub mod transport;
pub mod types;

pub use config::{NodeConfig, Timings};
pub use error::Error;
pub use events::{Event, EventStream};
pub use node::{MemberStatus, Node, NodeBuilder, Status};
pub use types::{LeaveReason, NodeId, NodeInfo, Role};
