//! Public metadata types, the error enum, and the Raft entry / response
//! types that travel through openraft.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::security::acl::{AclBinding, AclFilter, Acls};
use crate::security::quota::{QuotaAlteration, Quotas};
use crate::security::scram::{ScramAlterResults, ScramCredential, ScramMechanism, ScramUsers};
use crate::security::SecurityError;

/// How a node's metadata group is set up.
#[derive(Debug, Clone)]
pub struct MetaConfig {
    /// The Raft log, vote and snapshot live under `data_dir/raft`.
    pub data_dir: PathBuf,
    /// This node's id in the Raft group (and `PartitionMeta::leader`).
    pub node_id: u64,
    /// Shards (data-plane cores) partitions are placed on. Must be equal on
    /// every node and across restarts: placement is decided in `apply`.
    pub shards: u32,
    /// Upper bound of partitions per shard; the node holds at most
    /// `shards * partitions_per_shard_max` partitions.
    pub partitions_per_shard_max: u32,
    /// Where this node's Kafka listener is reached (registered with the
    /// controller and returned in Metadata).
    pub advertised_host: String,
    pub advertised_port: u16,
    /// The advertised address of every Kafka listener of this node.
    pub endpoints: Vec<Endpoint>,
    /// `None`: a one-voter group of this node, with no network.
    pub cluster: Option<ClusterConfig>,
}

/// The node-to-node side of a cluster member.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Where this node accepts Raft traffic from the other nodes.
    pub listen: std::net::SocketAddr,
    /// Every voter's node id and cluster address (`host:port`), this node
    /// included.
    pub voters: BTreeMap<u64, String>,
    /// Broker heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// A broker that has not heartbeat for this long is fenced, ms.
    pub lease_ms: u64,
    /// Heartbeat (and so be registered, unfenced, made leader) only once
    /// `Metadata::serving` was called: a broker does when its Kafka
    /// listeners accept connections, so that a restarting node is not
    /// listed as live while it still recovers its logs.
    pub heartbeat_when_serving: bool,
    /// Mutual TLS on every link between nodes; `None`: plain TCP.
    pub tls: Option<std::sync::Arc<dyn crate::network::ClusterTls>>,
}

/// What a client asks for when creating a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: u32,
    pub configs: BTreeMap<String, String>,
    /// Replicas per partition (>= 1). Ignored when `assignment` is given.
    pub replication_factor: u16,
    /// Explicit replica lists, one per partition (preferred leader first);
    /// empty: placed by the controller.
    pub assignment: Vec<Vec<u64>>,
}

/// `PartitionMeta::leader` of a partition that has no leader (every
/// in-sync replica is fenced; unclean election is off).
pub const NO_LEADER: u64 = u64::MAX;

/// Where one partition lives and who replicates it.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct PartitionMeta {
    /// Index of the owning shard, `< MetaConfig::shards`.
    pub shard: u32,
    /// Node id of the partition leader, `NO_LEADER` when none.
    pub leader: u64,
    /// Bumped by every leader change; stamped into the batches the leader
    /// appends (`partitionLeaderEpoch`).
    pub leader_epoch: i32,
    /// Node ids holding a replica, the preferred leader first.
    pub replicas: Vec<u64>,
    /// The in-sync replicas (a subset of `replicas`; holds the leader
    /// whenever there is one).
    pub isr: Vec<u64>,
}

impl PartitionMeta {
    /// Whether `node` holds a replica of the partition.
    pub fn is_replica(&self, node: u64) -> bool {
        self.replicas.contains(&node)
    }

    /// Whether `node` is in sync.
    pub fn in_sync(&self, node: u64) -> bool {
        self.isr.contains(&node)
    }
}

/// One broker (node) as registered in the metadata.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct BrokerMeta {
    pub id: u64,
    /// Where the other nodes reach it (its inter-broker listener's
    /// advertised address).
    pub host: String,
    pub port: u16,
    /// Its lease ran out: it leads nothing and is in no ISR until it
    /// heartbeats again.
    pub fenced: bool,
    /// The advertised address of each of its listeners, by listener name:
    /// a client is given the address of the listener it came in on, as
    /// Kafka does. Empty for a broker registered before they were.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// One advertised listener of a broker.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Endpoint {
    /// The listener's name (`PLAINTEXT`, `SASL_SSL`, `INTERNAL`...).
    pub listener: String,
    pub host: String,
    pub port: u16,
}

impl BrokerMeta {
    /// Where a client of `listener` reaches this broker: that listener's
    /// address, or the registered one when it has no such listener (a
    /// broker registered before it announced its listeners, during an
    /// upgrade; Kafka would leave such a broker out).
    pub fn address_for(&self, listener: &str) -> (&str, u16) {
        self.endpoints
            .iter()
            .find(|e| e.listener.eq_ignore_ascii_case(listener))
            .map_or((self.host.as_str(), self.port), |e| {
                (e.host.as_str(), e.port)
            })
    }
}

/// Registered brokers by node id.
pub type BrokerMap = imbl::OrdMap<u64, Arc<BrokerMeta>>;

/// One topic as committed in the Raft log.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct TopicMeta {
    pub name: String,
    /// Random UUID v4 bytes, chosen by the proposer and stored in the entry.
    pub id: [u8; 16],
    /// Indexed by partition number.
    pub partitions: Vec<PartitionMeta>,
    pub configs: BTreeMap<String, String>,
    /// Wall-clock time of the proposal, milliseconds since the Unix epoch.
    pub created_ms: i64,
}

/// Topics by name: a persistent (structurally shared) ordered map. Cloning
/// one is O(1) and a change copies O(log topics) nodes, so every published
/// view shares all unchanged nodes with the one before it, and
/// `TopicMap::diff` of two views skips the shared subtrees.
pub type TopicMap = imbl::OrdMap<Arc<str>, Arc<TopicMeta>>;

/// Topic names by topic id, the index beside `TopicMap`: the same kind of
/// persistent map, changed by the state machine with every create and
/// delete (O(log topics) each) and rebuilt with it from a snapshot. Ids are
/// random and never reused by another live topic.
pub type TopicIdMap = imbl::OrdMap<[u8; 16], Arc<str>>;

/// One difference between two `TopicMap`s, as `TopicMap::diff` yields it:
/// `Add(name, topic)`, `Update { old, new }` or `Remove(name, topic)`.
pub type TopicChange<'a, 'b> = imbl::ordmap::DiffItem<'a, 'b, Arc<str>, Arc<TopicMeta>>;

/// An immutable snapshot of the applied metadata.
#[derive(Debug, Clone, Default)]
pub struct MetadataView {
    /// Index of the last applied Raft log entry (0 before anything applied).
    pub version: u64,
    pub node_id: u64,
    /// Shares its nodes with the views before and after it.
    pub topics: TopicMap,
    /// The names of `topics` by topic id.
    pub topic_ids: TopicIdMap,
    /// Registered brokers, fenced ones too.
    pub brokers: BrokerMap,
    /// Partition reassignments in progress.
    pub reassignments: ReassignmentMap,
    /// SCRAM credentials by user name (SASL/SCRAM authentication).
    pub users: ScramUsers,
    /// ACLs, indexed for `Acls::authorize`.
    pub acls: Acls,
    /// Client quotas by entity (`Quotas::resolve`).
    pub quotas: Quotas,
}

impl MetadataView {
    /// The topic with id `id`: O(log topics), no scan.
    pub fn topic_by_id(&self, id: &[u8; 16]) -> Option<&Arc<TopicMeta>> {
        self.topic_ids
            .get(id)
            .and_then(|name| self.topics.get(&**name))
    }
}

/// A partition being moved to other replicas (AlterPartitionReassignments).
/// While it runs, the partition's `replicas` are `target` followed by the
/// original replicas that are not in it; it completes in the apply of the
/// ISR change that makes the ISR hold every target replica.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Reassignment {
    /// The replicas the partition will have, the preferred leader first.
    pub target: Vec<u64>,
    /// The replicas before the reassignment began (what a cancellation
    /// restores).
    pub original: Vec<u64>,
    /// Target replicas that are not original ones (being copied).
    pub adding: Vec<u64>,
    /// Original replicas that are not target ones (removed at completion).
    pub removing: Vec<u64>,
}

/// The key of a partition in a `ReassignmentMap`: topic name and partition.
pub type PartitionRef = (Arc<str>, u32);

/// Reassignments in progress by partition: a persistent map like `TopicMap`
/// (empty but for the partitions being moved).
pub type ReassignmentMap = imbl::OrdMap<PartitionRef, Arc<Reassignment>>;

/// Errors of the metadata service. Mapped to Kafka error codes in `broker`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MetaError {
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    #[error("invalid partition count: {0}")]
    InvalidPartitions(String),
    #[error("partition limit of {limit} per node reached (partitions_per_shard_max x shards; see --partitions-per-shard-max and --memory): {requested} more partitions do not fit")]
    PartitionLimit { limit: u64, requested: u64 },
    #[error("replication factor {requested} is larger than the {available} live brokers")]
    InvalidReplicationFactor { requested: u64, available: u64 },
    #[error("invalid replica assignment: {0}")]
    InvalidReplicaAssignment(String),
    #[error("stale leader epoch {got}: the partition is at epoch {current}")]
    StaleLeaderEpoch { current: i32, got: i32 },
    #[error("election not needed: {0}")]
    ElectionNotNeeded(String),
    #[error("preferred leader not available: {0}")]
    PreferredLeaderNotAvailable(String),
    #[error("no eligible leader: {0}")]
    EligibleLeadersNotAvailable(String),
    #[error("no reassignment in progress: {0}")]
    NoReassignmentInProgress(String),
    #[error("no metadata quorum: {0}")]
    NoQuorum(String),
    #[error("metadata service is shutting down")]
    ShuttingDown,
    #[error("metadata storage error: {0}")]
    Storage(String),
    #[error("metadata internal error: {0}")]
    Internal(String),
}

/// The application payload of one Raft log entry. Not `Eq`: quota values
/// are `f64` (finite: `Metadata::alter_client_quotas` refuses others,
/// which JSON could not carry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaRequest {
    CreateTopic {
        name: String,
        id: [u8; 16],
        partitions: u32,
        configs: BTreeMap<String, String>,
        created_ms: i64,
        #[serde(default = "one")]
        replication_factor: u16,
        #[serde(default)]
        assignment: Vec<Vec<u64>>,
    },
    DeleteTopic {
        name: String,
    },
    /// Reserves the block of `PRODUCER_ID_BLOCK_SIZE` producer ids that
    /// starts at `entry index * PRODUCER_ID_BLOCK_SIZE`. Log indexes are
    /// never reused, so neither are the blocks, across restarts too.
    ReserveProducerIds,
    /// Grows a topic to `partitions` partitions; new ones are placed like
    /// CreateTopics places them.
    CreatePartitions {
        name: String,
        partitions: u32,
        /// Replica lists of the new partitions (one each, preferred leader
        /// first, as many replicas as the topic's partitions have); empty:
        /// placed by the controller.
        #[serde(default)]
        assignment: Vec<Vec<u64>>,
    },
    /// Replaces a topic's configs with `configs` (validated by the proposer).
    SetTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// A broker announces itself (or a new Kafka address); it is unfenced.
    RegisterBroker {
        id: u64,
        host: String,
        port: u16,
        #[serde(default)]
        endpoints: Vec<Endpoint>,
    },
    /// The controller saw a broker's lease run out: it leaves every ISR it
    /// is not the last member of, and its leaderships move to in-sync
    /// replicas (epoch bumped), to a live out-of-sync replica when the
    /// topic enables unclean leader election (which is then the ISR), or
    /// to nobody.
    FenceBroker {
        id: u64,
    },
    /// A fenced broker heartbeats again; leaderless partitions whose ISR
    /// holds it are given to it, and those it replicates out of sync when
    /// their topic enables unclean leader election.
    UnfenceBroker {
        id: u64,
    },
    /// A partition leader shrinks or grows its ISR; refused unless
    /// `leader_epoch` is the partition's current epoch and the proposer
    /// leads it. An ISR that holds every target replica of the
    /// partition's reassignment completes it (see `Reassignment`).
    AlterIsr {
        topic: String,
        partition: u32,
        leader: u64,
        leader_epoch: i32,
        isr: Vec<u64>,
    },
    /// Leader elections (ElectLeaders), answered per partition in order
    /// (`MetaResponse::Each`); a change bumps the partition's epoch.
    ElectLeaders {
        election: Election,
        partitions: Vec<(String, u32)>,
    },
    /// Starts (`Some(target)`) or cancels (`None`) partition
    /// reassignments, answered per partition in order (`MetaResponse::Each`).
    Reassign {
        moves: Vec<(String, u32, Option<Vec<u64>>)>,
    },
    /// Adds or replaces, and deletes, SCRAM credentials; answered per item
    /// (`MetaResponse::ScramAltered`). A user's items apply together or
    /// not at all.
    AlterScramCredentials {
        upsertions: Vec<(String, ScramCredential)>,
        deletions: Vec<(String, ScramMechanism)>,
        /// Upsert only users that have no credential when the entry is
        /// applied (bootstrap users: a node behind the log cannot undo a
        /// password changed since); the others' items are answered
        /// `DuplicateResource` and change nothing.
        #[serde(default)]
        if_absent: bool,
    },
    /// Adds ACL bindings (an existing one is not added twice); answered per
    /// binding (`MetaResponse::AclsCreated`).
    CreateAcls(Vec<AclBinding>),
    /// Deletes the bindings each filter matches; answered per filter with
    /// the deleted bindings (`MetaResponse::AclsDeleted`).
    DeleteAcls(Vec<AclFilter>),
    /// Sets (`Some`) or removes (`None`) quota keys per entity; an entity
    /// left without keys is removed. Answered per entity
    /// (`MetaResponse::QuotasAltered`).
    AlterClientQuotas(Vec<QuotaAlteration>),
}

/// What an `ElectLeaders` entry elects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Election {
    /// The first replica becomes leader when it is in sync and unfenced.
    Preferred,
    /// A partition without leader gets any live replica, in sync or not.
    Unclean,
}

fn one() -> u16 {
    1
}

/// Producer ids one `ReserveProducerIds` entry reserves.
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

/// First producer id of the block reserved by the entry at `log_index`.
pub fn producer_id_block_start(log_index: u64) -> i64 {
    i64::try_from(log_index)
        .ok()
        .and_then(|i| i.checked_mul(PRODUCER_ID_BLOCK_SIZE))
        .expect("log index far below i64::MAX / PRODUCER_ID_BLOCK_SIZE")
}

/// What applying one entry produced. Errors decided in `apply` (a topic that
/// already exists, a full node) are results, not failures of the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MetaResponse {
    /// Blank and membership entries.
    None,
    Topic(Result<Arc<TopicMeta>, MetaError>),
    /// First id of a reserved producer id block.
    ProducerIds(i64),
    /// Broker registration, fencing and ISR changes.
    Done(Result<(), MetaError>),
    /// One result per item of the entry (elections, reassignments).
    Each(Vec<Result<(), MetaError>>),
    ScramAltered(ScramAlterResults),
    /// One result per binding.
    AclsCreated(Vec<Result<(), SecurityError>>),
    /// Per filter, the bindings it deleted.
    AclsDeleted(Vec<Vec<AclBinding>>),
    /// One result per entity.
    QuotasAltered(Vec<Result<(), SecurityError>>),
}

openraft::declare_raft_types!(
    /// openraft type configuration of the metadata group.
    pub TypeConfig:
        D = MetaRequest,
        R = MetaResponse,
);

pub(crate) type NodeId = u64;
pub(crate) type Node = openraft::BasicNode;
pub(crate) type Entry = openraft::Entry<TypeConfig>;
pub(crate) type LogId = openraft::LogId<NodeId>;
pub(crate) type Vote = openraft::Vote<NodeId>;
pub(crate) type StorageError = openraft::StorageError<NodeId>;
pub(crate) type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub(crate) type Raft = openraft::Raft<TypeConfig>;

/// Keeps `Cursor` in use for `declare_raft_types!`'s default `SnapshotData`.
pub(crate) type SnapshotData = Cursor<Vec<u8>>;
