//! Raft network for the one-voter group: there is nobody to talk to.
//!
//! openraft asks the factory for a client only to replicate to, or request
//! votes from, *other* members. With one voter and no learners it never
//! does; if it ever did (a membership change before a real network exists),
//! every RPC fails as `Unreachable`, which openraft retries with backoff and
//! which cannot corrupt anything. The factory never connects a node to
//! itself: a request for its own id is refused the same way and logged.
//!
//! The inter-node transport replaces this module when clusters arrive.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};

use crate::types::{Node, NodeId, TypeConfig};

#[derive(Debug, thiserror::Error)]
#[error("no raft network: node {target} is unreachable from node {from}")]
struct NoNetwork {
    from: NodeId,
    target: NodeId,
}

/// Hands out clients that fail every RPC.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NoNetworkFactory {
    pub(crate) node_id: NodeId,
}

/// A client for `target` that fails every RPC as unreachable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NoNetworkClient {
    from: NodeId,
    target: NodeId,
}

impl NoNetworkClient {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, Node, E> {
        RPCError::Unreachable(Unreachable::new(&NoNetwork {
            from: self.from,
            target: self.target,
        }))
    }
}

impl RaftNetworkFactory<TypeConfig> for NoNetworkFactory {
    type Network = NoNetworkClient;

    async fn new_client(&mut self, target: NodeId, _node: &Node) -> Self::Network {
        if target == self.node_id {
            tracing::error!(target, "raft: asked to connect a node to itself; refused");
        } else {
            tracing::debug!(target, "raft: no network, peer unreachable");
        }
        NoNetworkClient {
            from: self.node_id,
            target,
        }
    }
}

impl RaftNetwork<TypeConfig> for NoNetworkClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}
