//! openraft's network, carried by our [`Transport`].

use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::TypeConfig;
use crate::error::TransportError;
use crate::protocol::{Request, Response};
use crate::transport::Transport;
use crate::types::{NodeId, NodeInfo};

/// Creates one [`PeerClient`] per replication target.
#[derive(Clone)]
pub struct NetworkFactory {
    transport: Arc<dyn Transport>,
}

impl NetworkFactory {
    /// Wraps a transport.
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        Self { transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        PeerClient {
            target,
            node: node.clone(),
            transport: self.transport.clone(),
        }
    }
}

/// Sends Raft RPCs to one peer incarnation.
pub struct PeerClient {
    target: NodeId,
    node: NodeInfo,
    transport: Arc<dyn Transport>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unexpected(String);

impl PeerClient {
    async fn call<E: std::error::Error>(
        &self,
        request: Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>> {
        match self
            .transport
            .call(&self.node.addr, request, option.hard_ttl())
            .await
        {
            Ok(Response::WrongTarget { actual }) => {
                // Another incarnation lives at this address now: ours is gone.
                let e = Unexpected(format!(
                    "node {} at {} is now incarnation {actual}",
                    self.target, self.node.addr
                ));
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Ok(response) => Ok(response),
            Err(e @ (TransportError::Io(_) | TransportError::Closed)) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn remote<E>(&self, e: RaftError<NodeId, E>) -> RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>
    where
        E: std::error::Error,
    {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            e,
        ))
    }
}

fn unexpected<E: std::error::Error>(
    response: Response,
) -> RPCError<NodeId, NodeInfo, RaftError<NodeId, E>> {
    let e = Unexpected(format!("unexpected response: {response:?}"));
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let request = Request::AppendEntries {
            target: self.target,
            rpc,
        };
        match self.call(request, &option).await? {
            Response::AppendEntries(result) => result.map_err(|e| self.remote(e)),
            other => Err(unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let request = Request::InstallSnapshot {
            target: self.target,
            rpc,
        };
        match self.call(request, &option).await? {
            Response::InstallSnapshot(result) => result.map_err(|e| self.remote(e)),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        let request = Request::Vote {
            target: self.target,
            rpc,
        };
        match self.call(request, &option).await? {
            Response::Vote(result) => result.map_err(|e| self.remote(e)),
            other => Err(unexpected(other)),
        }
    }
}
