//! Kafka API handlers, one file per API, and the dispatch between them.
//!
//! A handler takes a decoded request and its version and returns the
//! response body; the connection loop owns framing and headers. Handlers run
//! on the shard that accepted the connection; the data plane routes
//! partition work to the owning shard.

pub mod alter_configs;
pub mod alter_partition_reassignments;
pub mod alter_replica_log_dirs;
pub mod api_versions;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_log_dirs;
pub mod elect_leaders;
pub mod fetch;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod list_offsets;
pub mod list_partition_reassignments;
pub mod metadata;
pub mod offset_for_leader_epoch;
pub mod produce;
// Consumer groups (classic protocol) and committed offsets.
pub mod delete_groups;
pub mod describe_groups;
pub mod find_coordinator;
pub mod heartbeat;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod sync_group;
// Transactions.
pub mod add_offsets_to_txn;
pub mod add_partitions_to_txn;
pub mod describe_transactions;
pub mod end_txn;
pub mod list_transactions;
pub mod txn_offset_commit;
pub mod write_txn_markers;
// Authentication.
pub mod sasl;
// The authorization checks of every handler.
#[cfg(test)]
mod authz_tests;
// Security administration.
pub mod alter_client_quotas;
pub mod alter_user_scram_credentials;
pub mod create_acls;
pub mod delete_acls;
pub mod describe_acls;
pub mod describe_client_quotas;
pub mod describe_user_scram_credentials;
#[cfg(test)]
mod security_tests;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ResponseKind, TopicName};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::ResponseError;
use sluice_raft::{BrokerMeta, Metadata, MetadataView, PartitionMeta, TopicMeta, NO_LEADER};

use crate::errors;
use crate::plane::{ResponseMemory, Shard};
use crate::security::{AclOperation, AclResourceType, Session};

/// APIs served and their version ranges. Only what is implemented is
/// advertised: Fetch stops at 12 (13+ names topics by id), no fetch
/// sessions (session id 0 in every response).
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 9),
    (ApiKey::Fetch, 0, 12),
    (ApiKey::ListOffsets, 0, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 0, 7),
    (ApiKey::DeleteTopics, 0, 6),
    // Consumer groups.
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 0, 9),
    (ApiKey::OffsetFetch, 0, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeConfigs, 0, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::DeleteRecords, 0, 2),
    // Followers truncate by leader epoch before fetching.
    (ApiKey::OffsetForLeaderEpoch, 0, 4),
    // Cluster administration.
    (ApiKey::AlterReplicaLogDirs, 0, 2),
    (ApiKey::DescribeLogDirs, 0, 4),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 0),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::AddPartitionsToTxn, 0, 5),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::EndTxn, 0, 4),
    (ApiKey::WriteTxnMarkers, 0, 1),
    (ApiKey::TxnOffsetCommit, 0, 4),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    // Authentication: SaslHandshake v0 would switch to raw SASL tokens.
    (ApiKey::SaslHandshake, 1, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    // Security administration.
    (ApiKey::DescribeAcls, 0, 3),
    (ApiKey::CreateAcls, 0, 3),
    (ApiKey::DeleteAcls, 0, 3),
    (ApiKey::DescribeClientQuotas, 0, 1),
    (ApiKey::AlterClientQuotas, 0, 1),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
];

/// Our version range for `key`, if we serve it.
pub fn supported_range(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, min, max)| (min, max))
}

/// Node-wide facts the handlers need; shared by all shards (read-only).
#[derive(Debug)]
pub struct NodeInfo {
    pub node_id: i32,
    pub advertised_host: String,
    pub advertised_port: u16,
    pub cluster_id: String,
    pub default_partitions: u32,
    pub auto_create_topics: bool,
    /// Replicas of topics created without an explicit factor.
    pub default_replication_factor: u16,
    /// Part of a cluster (`--cluster-voters`): `__consumer_offsets` is
    /// created once enough brokers registered, not at start.
    pub cluster: bool,
    /// Partitions `__consumer_offsets` is created with.
    pub offsets_topic_partitions: u32,
    /// When the node started serving.
    pub started: Instant,
    /// The node's settings as broker configs (DescribeConfigs), its log
    /// dir among them.
    pub broker_configs: Vec<crate::config::BrokerConfig>,
    /// Listeners, TLS, SASL and authorizer settings.
    pub security: Arc<crate::security::Security>,
    /// The shards' client quota rates, so that quotas hold per node.
    pub quota_board: Arc<crate::security::quota::QuotaBoard>,
}

/// What a handler may use: this shard's data plane, the metadata service
/// and the node facts.
pub struct Ctx {
    pub shard: Rc<Shard>,
    pub meta: Metadata,
    pub node: Arc<NodeInfo>,
    /// A creation of `__consumer_offsets` started by this shard is under
    /// way (at most one per shard).
    pub offsets_creating: Cell<bool>,
    /// This shard's client quota rates (`security::quota`).
    pub quota_sensors: crate::security::quota::QuotaSensors,
    /// Open connections whose peer is another node's replica fetcher
    /// (a stopping shard does not wait for them to drain).
    pub replica_connections: Cell<usize>,
}

/// A broker's id and Kafka address as the wire carries them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerAddr {
    pub id: i32,
    pub host: String,
    pub port: i32,
}

impl Ctx {
    pub fn new(shard: Rc<Shard>, meta: Metadata, node: Arc<NodeInfo>) -> Ctx {
        let quota_sensors =
            crate::security::quota::QuotaSensors::new(Arc::clone(&node.quota_board), shard.id());
        Ctx {
            shard,
            meta,
            node,
            offsets_creating: Cell::new(false),
            quota_sensors,
            replica_connections: Cell::new(0),
        }
    }

    pub fn view(&self) -> Arc<MetadataView> {
        self.meta.view()
    }

    /// The topic's metadata, if it exists.
    pub fn topic(&self, name: &str) -> Option<Arc<TopicMeta>> {
        self.view().topics.get(name).cloned()
    }

    /// Whether `session` may do `op` on a resource (see
    /// `Security::authorize`): true without `--authorizer`.
    pub fn allowed(
        &self,
        session: &Session,
        op: AclOperation,
        resource: AclResourceType,
        name: &str,
    ) -> bool {
        self.node.security.authorizer.is_none()
            || self.meta.peek(|view| {
                self.node
                    .security
                    .authorize(view, session, op, resource, name)
            })
    }

    /// Whether `session` may do `op` on the cluster resource.
    pub fn allowed_on_cluster(&self, session: &Session, op: AclOperation) -> bool {
        self.allowed(
            session,
            op,
            AclResourceType::Cluster,
            crate::security::CLUSTER,
        )
    }

    /// An AddOffsetsToTxn or TxnOffsetCommit refused whole: WRITE on the
    /// transactional id, then READ on the group.
    pub fn txn_offsets_refusal(&self, session: &Session, id: &str, group: &str) -> Option<i16> {
        use kafka_protocol::ResponseError;
        if !self.allowed(
            session,
            AclOperation::Write,
            AclResourceType::TransactionalId,
            id,
        ) {
            return Some(ResponseError::TransactionalIdAuthorizationFailed.code());
        }
        if !self.allowed(session, AclOperation::Read, AclResourceType::Group, group) {
            return Some(ResponseError::GroupAuthorizationFailed.code());
        }
        None
    }

    /// This node's id as the metadata knows it.
    pub fn node_id(&self) -> u64 {
        u64::try_from(self.node.node_id).unwrap_or(0)
    }

    /// The unfenced brokers, by id; this node alone while the metadata
    /// lists no broker (a single node before it registered). Each is named
    /// by its advertised address on the listener `session` came in on
    /// (`Ctx::broker`).
    pub fn live_brokers(&self, view: &MetadataView, session: &Session) -> Vec<BrokerAddr> {
        let live: Vec<BrokerAddr> = view
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .filter_map(|b| self.broker(view, b.id, session))
            .collect();
        if live.is_empty() && view.brokers.is_empty() {
            return vec![self.this_broker(session)];
        }
        live
    }

    /// How many brokers are unfenced (this node while none registered).
    pub fn live_count(&self, view: &MetadataView) -> usize {
        let live = view.brokers.values().filter(|b| !b.fenced).count();
        if view.brokers.is_empty() {
            1
        } else {
            live
        }
    }

    /// The Kafka address of broker `id` (fenced ones too) on the listener
    /// `session` came in on (Kafka answers every client with the brokers'
    /// addresses on its own listener); this node's own from its settings.
    pub fn broker(&self, view: &MetadataView, id: u64, session: &Session) -> Option<BrokerAddr> {
        if id == self.node_id() {
            return Some(self.this_broker(session));
        }
        let listener = self.node.security.listeners.get(session.listener);
        let name = listener.map_or("", |l| l.name.as_str());
        view.brokers.get(&id).and_then(|b| broker_addr(b, name))
    }

    fn this_broker(&self, session: &Session) -> BrokerAddr {
        let listener = self.node.security.listeners.get(session.listener);
        let (host, port) = match listener {
            Some(l) => (l.advertised_host.clone(), l.advertised_port),
            None => (self.node.advertised_host.clone(), self.node.advertised_port),
        };
        BrokerAddr {
            id: self.node.node_id,
            host,
            port: i32::from(port),
        }
    }

    /// The controller's id on the wire (-1 when unknown).
    pub fn controller_id(&self) -> i32 {
        self.meta
            .controller()
            .and_then(|id| i32::try_from(id).ok())
            .unwrap_or(-1)
    }

    /// Whether this node leads `partition` of `topic`: the partition's
    /// metadata, or the error code to answer (UNKNOWN_TOPIC_OR_PARTITION,
    /// NOT_LEADER_OR_FOLLOWER).
    pub fn led_here<'t>(
        &self,
        topic: &'t TopicMeta,
        partition: i32,
    ) -> Result<&'t PartitionMeta, i16> {
        let p = usize::try_from(partition)
            .ok()
            .and_then(|i| topic.partitions.get(i))
            .ok_or_else(errors::codes::unknown_topic_or_partition)?;
        if p.leader != self.node_id() {
            return Err(ResponseError::NotLeaderOrFollower.code());
        }
        Ok(p)
    }

    /// The broker to name as a partition's current leader in a
    /// NOT_LEADER_OR_FOLLOWER answer: (id, epoch), id -1 when leaderless.
    pub fn leader_hint(topic: &TopicMeta, partition: i32) -> (i32, i32) {
        usize::try_from(partition)
            .ok()
            .and_then(|i| topic.partitions.get(i))
            .map_or((-1, -1), |p| (wire_id(p.leader), p.leader_epoch))
    }

    /// Whether this node coordinates `group_id` (leads its
    /// `__consumer_offsets` partition): `None`, or the error code to
    /// answer (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE).
    pub fn not_coordinator(&self, group_id: &str) -> Option<i16> {
        match self.group_leader(group_id) {
            Ok(leader) if leader == self.node_id() => None,
            Ok(_) => Some(ResponseError::NotCoordinator.code()),
            Err(code) => Some(code),
        }
    }

    /// The node leading the group's `__consumer_offsets` partition, or
    /// COORDINATOR_NOT_AVAILABLE (no such topic yet, or leaderless).
    pub fn group_leader(&self, group_id: &str) -> Result<u64, i16> {
        self.coordinator_leader(crate::plane::OFFSETS_TOPIC, group_id)
    }

    /// The node leading the transactional id's `__transaction_state`
    /// partition, or COORDINATOR_NOT_AVAILABLE.
    pub fn txn_leader(&self, transactional_id: &str) -> Result<u64, i16> {
        self.coordinator_leader(crate::plane::TXN_TOPIC, transactional_id)
    }

    /// The leader of `key`'s partition of the coordinator topic `topic`
    /// (Kafka's `abs(hash) % partitions` placement).
    fn coordinator_leader(&self, topic: &str, key: &str) -> Result<u64, i16> {
        let unavailable = ResponseError::CoordinatorNotAvailable.code();
        let t = self.topic(topic).ok_or(unavailable)?;
        let count = u32::try_from(t.partitions.len()).unwrap_or(0);
        if count == 0 {
            return Err(unavailable);
        }
        let index = crate::plane::offsets_partition_for(key, count) as usize;
        match t.partitions.get(index).map(|p| p.leader) {
            Some(leader) if leader != NO_LEADER => Ok(leader),
            _ => Err(unavailable),
        }
    }
}

/// A replica list from the wire: node ids >= 0, none twice, at least one.
pub fn replica_list(ids: &[kafka_protocol::messages::BrokerId]) -> Result<Vec<u64>, String> {
    // No cluster has more nodes: a longer list is refused before the
    // duplicate check (quadratic in its length).
    if ids.len() > crate::config::VOTERS_MAX {
        return Err(format!("{} replicas for one partition", ids.len()));
    }
    let mut out: Vec<u64> = Vec::with_capacity(ids.len());
    for id in ids {
        let n = u64::try_from(id.0).map_err(|_| format!("broker id {} is negative", id.0))?;
        if out.contains(&n) {
            return Err(format!("broker {n} is listed twice for one partition"));
        }
        out.push(n);
    }
    if out.is_empty() {
        return Err("a partition needs at least one replica".into());
    }
    Ok(out)
}

/// A node id on the wire (-1 for none or out of range).
pub fn wire_id(id: u64) -> i32 {
    if id == NO_LEADER {
        return -1;
    }
    i32::try_from(id).unwrap_or(-1)
}

fn broker_addr(b: &BrokerMeta, listener: &str) -> Option<BrokerAddr> {
    let (host, port) = b.address_for(listener);
    Some(BrokerAddr {
        id: i32::try_from(b.id).ok()?,
        host: host.to_string(),
        port: i32::from(port),
    })
}

/// The request could not be decoded: the connection is closed.
#[derive(Debug)]
pub struct DecodeError(pub String);

fn decode<T: Decodable>(body: &mut Bytes, version: i16) -> Result<T, DecodeError> {
    T::decode(body, version).map_err(|e| DecodeError(format!("{e:#}")))
}

/// A handler's answer: the body, and memory its bytes hold until the
/// response is written (fetched batches).
pub struct Response {
    pub body: ResponseKind,
    pub held: Option<ResponseMemory>,
    /// Close the connection once the body is written (a failed SASL
    /// authentication).
    pub close: bool,
}

/// Decodes the body of a supported request and runs its handler. `None`:
/// no response is due (produce with acks=0).
pub async fn dispatch(
    key: ApiKey,
    version: i16,
    body: &mut Bytes,
    ctx: &Ctx,
    session: &Session,
) -> Result<Option<Response>, DecodeError> {
    let response = match key {
        ApiKey::SaslHandshake => ResponseKind::SaslHandshake(sasl::handshake(
            &decode(body, version)?,
            version,
            ctx,
            session,
        )),
        ApiKey::SaslAuthenticate => {
            let (r, close) =
                sasl::authenticate(&decode(body, version)?, version, ctx, session).await;
            return Ok(Some(Response {
                body: ResponseKind::SaslAuthenticate(r),
                held: None,
                close,
            }));
        }
        ApiKey::ApiVersions => {
            ResponseKind::ApiVersions(api_versions::handle(&decode(body, version)?, version))
        }
        ApiKey::Metadata => ResponseKind::Metadata(
            metadata::handle(decode(body, version)?, version, ctx, session).await,
        ),
        ApiKey::CreateTopics => ResponseKind::CreateTopics(
            create_topics::handle(decode(body, version)?, version, ctx, session).await,
        ),
        ApiKey::DeleteTopics => ResponseKind::DeleteTopics(
            delete_topics::handle(decode(body, version)?, version, ctx, session).await,
        ),
        ApiKey::Produce => {
            match produce::handle(decode(body, version)?, version, ctx, session).await {
                Some(r) => ResponseKind::Produce(r),
                None => return Ok(None),
            }
        }
        ApiKey::Fetch => {
            let (r, held) = fetch::handle(decode(body, version)?, version, ctx, session).await;
            return Ok(Some(Response {
                body: ResponseKind::Fetch(r),
                held,
                close: false,
            }));
        }
        ApiKey::ListOffsets => ResponseKind::ListOffsets(
            list_offsets::handle(decode(body, version)?, version, ctx, session).await,
        ),
        ApiKey::InitProducerId => ResponseKind::InitProducerId(
            init_producer_id::handle(decode(body, version)?, version, ctx, session).await,
        ),
        ApiKey::CreatePartitions => ResponseKind::CreatePartitions(
            create_partitions::handle(decode(body, version)?, version, ctx, session).await,
        ),
        ApiKey::DescribeConfigs => ResponseKind::DescribeConfigs(describe_configs::handle(
            decode(body, version)?,
            version,
            ctx,
            session,
        )),
        ApiKey::AlterConfigs => ResponseKind::AlterConfigs(
            alter_configs::handle(decode(body, version)?, version, ctx, session).await,
        ),
        ApiKey::IncrementalAlterConfigs => ResponseKind::IncrementalAlterConfigs(
            incremental_alter_configs::handle(decode(body, version)?, version, ctx, session).await,
        ),
        ApiKey::DescribeCluster => ResponseKind::DescribeCluster(describe_cluster::handle(
            &decode(body, version)?,
            version,
            ctx,
            session,
        )),
        ApiKey::DeleteRecords => ResponseKind::DeleteRecords(
            delete_records::handle(decode(body, version)?, version, ctx, session).await,
        ),
        ApiKey::OffsetForLeaderEpoch => ResponseKind::OffsetForLeaderEpoch(
            offset_for_leader_epoch::handle(decode(body, version)?, version, ctx, session).await,
        ),
        ApiKey::ElectLeaders => ResponseKind::ElectLeaders(
            elect_leaders::handle(decode(body, version)?, version, ctx, session).await,
        ),
        ApiKey::AlterPartitionReassignments => ResponseKind::AlterPartitionReassignments(
            alter_partition_reassignments::handle(decode(body, version)?, version, ctx, session)
                .await,
        ),
        ApiKey::ListPartitionReassignments => ResponseKind::ListPartitionReassignments(
            list_partition_reassignments::handle(decode(body, version)?, version, ctx, session),
        ),
        ApiKey::DescribeLogDirs => ResponseKind::DescribeLogDirs(
            describe_log_dirs::handle(decode(body, version)?, version, ctx, session).await,
        ),
        ApiKey::AlterReplicaLogDirs => ResponseKind::AlterReplicaLogDirs(
            alter_replica_log_dirs::handle(decode(body, version)?, version, ctx, session),
        ),
        // Security administration.
        ApiKey::DescribeAcls => ResponseKind::DescribeAcls(describe_acls::handle(
            decode(body, version)?,
            version,
            ctx,
            session,
        )),
        ApiKey::CreateAcls => ResponseKind::CreateAcls(
            create_acls::handle(decode(body, version)?, version, ctx, session).await,
        ),
        ApiKey::DeleteAcls => ResponseKind::DeleteAcls(
            delete_acls::handle(decode(body, version)?, version, ctx, session).await,
        ),
        ApiKey::DescribeClientQuotas => ResponseKind::DescribeClientQuotas(
            describe_client_quotas::handle(decode(body, version)?, version, ctx, session),
        ),
        ApiKey::AlterClientQuotas => ResponseKind::AlterClientQuotas(
            alter_client_quotas::handle(decode(body, version)?, version, ctx, session).await,
        ),
        ApiKey::DescribeUserScramCredentials => ResponseKind::DescribeUserScramCredentials(
            describe_user_scram_credentials::handle(decode(body, version)?, version, ctx, session),
        ),
        ApiKey::AlterUserScramCredentials => ResponseKind::AlterUserScramCredentials(
            alter_user_scram_credentials::handle(decode(body, version)?, version, ctx, session)
                .await,
        ),
        other => match dispatch_groups(other, version, body, ctx, session).await? {
            Some(r) => r,
            None => return Err(DecodeError(format!("api {other:?} is not served"))),
        },
    };
    Ok(Some(Response {
        body: response,
        held: None,
        close: false,
    }))
}

/// The consumer-group APIs; `None` for any other key.
async fn dispatch_groups(
    key: ApiKey,
    version: i16,
    body: &mut Bytes,
    ctx: &Ctx,
    session: &Session,
) -> Result<Option<ResponseKind>, DecodeError> {
    let b = body;
    let v = version;
    Ok(Some(match key {
        ApiKey::FindCoordinator => ResponseKind::FindCoordinator(
            find_coordinator::handle(decode(b, v)?, v, ctx, session).await,
        ),
        ApiKey::JoinGroup => {
            ResponseKind::JoinGroup(join_group::handle(decode(b, v)?, v, ctx, session).await)
        }
        ApiKey::SyncGroup => {
            ResponseKind::SyncGroup(sync_group::handle(decode(b, v)?, v, ctx, session).await)
        }
        ApiKey::Heartbeat => {
            ResponseKind::Heartbeat(heartbeat::handle(decode(b, v)?, v, ctx, session).await)
        }
        ApiKey::LeaveGroup => {
            ResponseKind::LeaveGroup(leave_group::handle(decode(b, v)?, v, ctx, session).await)
        }
        ApiKey::OffsetCommit => {
            ResponseKind::OffsetCommit(offset_commit::handle(decode(b, v)?, v, ctx, session).await)
        }
        ApiKey::OffsetFetch => {
            ResponseKind::OffsetFetch(offset_fetch::handle(decode(b, v)?, v, ctx, session).await)
        }
        ApiKey::ListGroups => {
            ResponseKind::ListGroups(list_groups::handle(decode(b, v)?, v, ctx, session).await)
        }
        ApiKey::DescribeGroups => ResponseKind::DescribeGroups(
            describe_groups::handle(decode(b, v)?, v, ctx, session).await,
        ),
        ApiKey::DeleteGroups => {
            ResponseKind::DeleteGroups(delete_groups::handle(decode(b, v)?, v, ctx, session).await)
        }
        ApiKey::OffsetDelete => {
            ResponseKind::OffsetDelete(offset_delete::handle(decode(b, v)?, v, ctx, session).await)
        }
        ApiKey::AddPartitionsToTxn => ResponseKind::AddPartitionsToTxn(
            add_partitions_to_txn::handle(decode(b, v)?, v, ctx, session).await,
        ),
        ApiKey::AddOffsetsToTxn => ResponseKind::AddOffsetsToTxn(
            add_offsets_to_txn::handle(decode(b, v)?, v, ctx, session).await,
        ),
        ApiKey::EndTxn => {
            ResponseKind::EndTxn(end_txn::handle(decode(b, v)?, v, ctx, session).await)
        }
        ApiKey::WriteTxnMarkers => ResponseKind::WriteTxnMarkers(
            write_txn_markers::handle(decode(b, v)?, v, ctx, session).await,
        ),
        ApiKey::TxnOffsetCommit => ResponseKind::TxnOffsetCommit(
            txn_offset_commit::handle(decode(b, v)?, v, ctx, session).await,
        ),
        ApiKey::DescribeTransactions => ResponseKind::DescribeTransactions(
            describe_transactions::handle(decode(b, v)?, v, ctx, session).await,
        ),
        ApiKey::ListTransactions => ResponseKind::ListTransactions(
            list_transactions::handle(decode(b, v)?, v, ctx, session).await,
        ),
        _ => return Ok(None),
    }))
}

/// The code to answer a transactional id with when this node does not
/// coordinate it (`None`: it does, or may: the coordinator shard decides).
pub fn txn_not_coordinator(ctx: &Ctx, transactional_id: &str) -> Option<i16> {
    match ctx.txn_leader(transactional_id) {
        Ok(leader) if leader == ctx.node_id() => None,
        Ok(_) => Some(ResponseError::NotCoordinator.code()),
        Err(code) => Some(code),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// Kafka's topic name rule: 1..=249 chars of [a-zA-Z0-9._-], not "." or "..".
pub fn valid_topic_name(name: &str) -> bool {
    const TOPIC_NAME_CHARS_MAX: usize = 249;
    !name.is_empty()
        && name.len() <= TOPIC_NAME_CHARS_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

pub fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// A topic id as the protocol's Uuid.
pub fn topic_uuid(topic: &TopicMeta) -> uuid::Uuid {
    uuid::Uuid::from_bytes(topic.id)
}

/// Runs `fut` for at most `ms` milliseconds (glommio timer of this shard).
pub async fn with_deadline<F: std::future::Future>(ms: u64, fut: F) -> Option<F::Output> {
    let sleep = glommio::timer::sleep(std::time::Duration::from_millis(ms));
    match futures::future::select(std::pin::pin!(fut), std::pin::pin!(sleep)).await {
        futures::future::Either::Left((out, _)) => Some(out),
        futures::future::Either::Right(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(valid_topic_name("orders.v1_x-2"));
        assert!(valid_topic_name(&"a".repeat(249)));
        assert!(!valid_topic_name(&"a".repeat(250)));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name("."));
        assert!(!valid_topic_name(".."));
        assert!(!valid_topic_name("bad name"));
        assert!(!valid_topic_name("bad/name"));
        assert!(!valid_topic_name("é"));
    }

    #[test]
    fn supported_ranges_are_within_the_codec() {
        for &(key, min, max) in SUPPORTED {
            let codec = key.valid_versions();
            assert!(
                min <= max && codec.min <= min && max <= codec.max,
                "{key:?}"
            );
        }
    }
}
