#![forbid(unsafe_code)]
#![deny(missing_docs)]
//! placeholder
pub mod bootstrap;
pub mod error;
pub mod events;
pub mod protocol;
pub mod raft;
pub mod state;
pub mod token;
pub mod transport;
pub mod types;
