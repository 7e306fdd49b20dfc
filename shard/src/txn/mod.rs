//! Transactions (Kafka's KIP-98): the transaction coordinator.
//!
//! # Ownership
//!
//! Each transactional id belongs to one partition of the internal topic
//! `__transaction_state` (`abs(java_string_hash(id)) % partitions`, as
//! Kafka does). Its coordinator is the node that leads that partition, and
//! within the node the shard that owns it; requests reaching another shard
//! travel as `ShardMsg::Txn` over the mesh. The owner shard serves the id
//! only while this node leads the partition and its transactions are
//! loaded (`load`); otherwise it answers `NotCoordinator` or
//! `CoordinatorLoadInProgress`, as the group coordinator does.
//!
//! # Durability
//!
//! Every state change of a transactional id is one record (key: the id,
//! value: its metadata, `record`) written to its `__transaction_state`
//! partition through the produce path with acks=-1, and applied to memory
//! only once the in-sync replicas have it; one write per id is in flight at
//! a time (a request meeting one is answered CONCURRENT_TRANSACTIONS, which
//! clients retry). The topic is compacted by key, so its log holds about
//! one record per id. When a node becomes leader of a partition it loads
//! the partition's ids from its log; a transaction found in PrepareCommit
//! or PrepareAbort gets its markers written and completes, one found
//! Ongoing is aborted once its timeout passes.
//!
//! # Ending a transaction
//!
//! EndTxn writes PrepareCommit (or PrepareAbort) and answers once that is
//! durable: the outcome is decided. A task then writes a marker (a control
//! batch) to every partition of the transaction, through the owner shards
//! of this node (`Engine::write_txn_marker`), retrying those whose leader
//! is elsewhere or busy while this shard still coordinates the id, and
//! finally writes CompleteCommit (or CompleteAbort). The next transaction
//! of the id can only start after that (CONCURRENT_TRANSACTIONS before), so
//! a producer never gets ahead of its markers.
//!
//! # Deadlines
//!
//! Transaction timeouts and the expiry of idle ids
//! (`transactional.id.expiration.ms`) of all ids of a shard live in one
//! ordered set (`TxnCoordinator::deadlines`), served by one task per shard
//! that sleeps through the shard's deadline structure. An ongoing
//! transaction past its timeout is aborted with the producer's epoch bumped
//! (the producer is fenced, as in Kafka); an idle id past its expiry is
//! written as a tombstone and forgotten.

mod load;
mod record;
mod serve;
mod state;

pub(crate) use load::{run_txn_loads, TxnLog};
pub(crate) use serve::run_txn_timers;
pub use serve::RemoteMarkers;
pub use serve::TxnReply;
pub use state::{TxnCoordinator, TxnMeta, TxnState};

use crate::ShardError;

/// The internal topic whose partitions place transactional ids on shards.
pub const TXN_TOPIC: &str = "__transaction_state";
/// How long a transaction record write waits for the in-sync replicas
/// once durable here.
pub const TXN_WRITE_TIMEOUT_MS: u32 = 5_000;
/// Partitions one transaction may hold; more are refused (retriable: the
/// producer may commit and go on).
pub const TXN_PARTITIONS_MAX: usize = 10_000;

/// The `__transaction_state` partition of `transactional_id`.
pub fn txn_partition_for(transactional_id: &str, partitions: u32) -> u32 {
    crate::group::offsets_partition_for(transactional_id, partitions)
}

/// Why a transaction request failed; mapped to Kafka codes by the broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    #[error("coordinator not available")]
    CoordinatorNotAvailable,
    #[error("coordinator load in progress")]
    CoordinatorLoadInProgress,
    #[error("not coordinator")]
    NotCoordinator,
    /// Another state change of the id is in flight, or its markers are
    /// being written (Kafka CONCURRENT_TRANSACTIONS, 51; retriable).
    #[error("concurrent transactions")]
    ConcurrentTransactions,
    /// The request's producer epoch is older than the id's (Kafka
    /// PRODUCER_FENCED, 90; INVALID_PRODUCER_EPOCH, 47, for older request
    /// versions).
    #[error("producer fenced")]
    ProducerFenced,
    #[error("producer id does not match the transactional id")]
    InvalidProducerIdMapping,
    #[error("invalid transaction state")]
    InvalidTxnState,
    #[error("transaction timeout is not within 1..=transaction.max.timeout.ms")]
    InvalidTransactionTimeout,
    #[error("transactional id not found")]
    TransactionalIdNotFound,
    #[error(transparent)]
    Shard(#[from] ShardError),
}

/// A request for the transaction coordinator, free of the wire protocol.
#[derive(Clone, Debug)]
pub enum TxnRequest {
    InitProducerId {
        transactional_id: String,
        timeout_ms: i32,
        /// KIP-360: the producer's current id and epoch, or -1.
        producer_id: i64,
        producer_epoch: i16,
    },
    AddPartitions {
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        partitions: Vec<(String, i32)>,
        /// KIP-890: only check that the partitions are in the transaction.
        verify_only: bool,
    },
    EndTxn {
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
    },
    Describe(String),
    List {
        /// Kafka state names to keep (empty: all).
        states: Vec<String>,
        /// Producer ids to keep (empty: all).
        producer_ids: Vec<i64>,
    },
}

impl TxnRequest {
    pub fn transactional_id(&self) -> Option<&str> {
        match self {
            TxnRequest::InitProducerId {
                transactional_id, ..
            }
            | TxnRequest::AddPartitions {
                transactional_id, ..
            }
            | TxnRequest::EndTxn {
                transactional_id, ..
            } => Some(transactional_id),
            TxnRequest::Describe(id) => Some(id),
            TxnRequest::List { .. } => None,
        }
    }

    pub fn failed(&self, e: TxnError) -> TxnResponse {
        match self {
            TxnRequest::InitProducerId { .. } => TxnResponse::Producer(Err(e)),
            TxnRequest::AddPartitions { .. } | TxnRequest::EndTxn { .. } => {
                TxnResponse::Done(Err(e))
            }
            TxnRequest::Describe(id) => TxnResponse::Describe(TxnDescription {
                error: Some(e),
                transactional_id: id.clone(),
                ..TxnDescription::default()
            }),
            TxnRequest::List { .. } => TxnResponse::List(Vec::new()),
        }
    }
}

#[derive(Clone, Debug)]
pub enum TxnResponse {
    /// InitProducerId: the producer id and epoch.
    Producer(Result<(i64, i16), TxnError>),
    Done(Result<(), TxnError>),
    Describe(TxnDescription),
    List(Vec<TxnListing>),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnDescription {
    pub error: Option<TxnError>,
    pub transactional_id: String,
    pub state: &'static str,
    pub timeout_ms: i32,
    pub start_ms: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub partitions: Vec<(String, i32)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnListing {
    pub transactional_id: String,
    pub producer_id: i64,
    pub state: &'static str,
    /// When the ongoing transaction started (ms since the epoch), -1.
    pub start_ms: i64,
}
