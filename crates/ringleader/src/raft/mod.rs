//! The glue between ringleader and openraft: type configuration, log store,
//! state machine, the durable store behind them and the network adapter.

pub mod log_store;
pub mod network;
pub mod recover;
pub mod state_machine;
pub mod store;

use std::io::Cursor;

use crate::state::Command;
use crate::types::{NodeId, NodeInfo};

openraft::declare_raft_types!(
    /// openraft type configuration for ringleader.
    pub TypeConfig:
        D = Command,
        R = (),
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = crate::runtime::RaftRuntime,
);

/// The Raft handle type used throughout the crate.
pub type Raft = openraft::Raft<TypeConfig>;
