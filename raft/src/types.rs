//! Public metadata types, the error enum, and the Raft entry / response
//! types that travel through openraft.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

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
}

/// What a client asks for when creating a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: u32,
    pub configs: BTreeMap<String, String>,
}

/// Where one partition lives.
#[derive(
    Debug,
    Clone,
    Copy,
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
    /// Node id of the partition leader.
    pub leader: u64,
}

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
}

impl MetadataView {
    /// The topic with id `id`: O(log topics), no scan.
    pub fn topic_by_id(&self, id: &[u8; 16]) -> Option<&Arc<TopicMeta>> {
        self.topic_ids
            .get(id)
            .and_then(|name| self.topics.get(&**name))
    }
}

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
    #[error("metadata service is shutting down")]
    ShuttingDown,
    #[error("metadata storage error: {0}")]
    Storage(String),
    #[error("metadata internal error: {0}")]
    Internal(String),
}

/// The application payload of one Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaRequest {
    CreateTopic {
        name: String,
        id: [u8; 16],
        partitions: u32,
        configs: BTreeMap<String, String>,
        created_ms: i64,
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
    },
    /// Replaces a topic's configs with `configs` (validated by the proposer).
    SetTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
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
