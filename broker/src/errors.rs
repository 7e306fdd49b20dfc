//! The one place where data-plane and metadata errors become Kafka error
//! codes. Handlers never pick a code for a `ShardError` or `MetaError`
//! themselves.

use kafka_protocol::ResponseError;
use sluice_raft::MetaError;

use crate::plane::{GroupError, ShardError, TxnError};

/// Kafka error code of a data-plane error.
pub fn shard_error_code(e: &ShardError) -> i16 {
    let code = match e {
        ShardError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        ShardError::CorruptMessage(_) => ResponseError::CorruptMessage,
        ShardError::MessageTooLarge { .. } => ResponseError::MessageTooLarge,
        ShardError::InvalidRecord(_) => ResponseError::InvalidRecord,
        ShardError::KeylessRecord { .. } => ResponseError::InvalidRecord,
        ShardError::OffsetOutOfRange => ResponseError::OffsetOutOfRange,
        ShardError::NotLeader => ResponseError::NotLeaderOrFollower,
        ShardError::Timeout => ResponseError::RequestTimedOut,
        ShardError::Storage(_) => ResponseError::KafkaStorageError,
        // A memory wait ran out (or a bounded queue is full): retriable in
        // every client (THROTTLING_QUOTA_EXCEEDED is not: librdkafka fails
        // the message), and the response carries `throttle_time_ms`.
        ShardError::Busy => ResponseError::RequestTimedOut,
        // Like a Kafka broker going down: the client refreshes metadata and retries.
        ShardError::ShuttingDown => ResponseError::NotLeaderOrFollower,
        ShardError::Config(_) => ResponseError::UnknownServerError,
        ShardError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        ShardError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        ShardError::NotEnoughReplicas => ResponseError::NotEnoughReplicas,
        ShardError::NotEnoughReplicasAfterAppend => ResponseError::NotEnoughReplicasAfterAppend,
        ShardError::FencedLeaderEpoch { .. } => ResponseError::FencedLeaderEpoch,
        ShardError::UnknownLeaderEpoch { .. } => ResponseError::UnknownLeaderEpoch,
        ShardError::InvalidTxnState(_) => ResponseError::InvalidTxnState,
        ShardError::TransactionalIdAuthorizationFailed => {
            ResponseError::TransactionalIdAuthorizationFailed
        }
    };
    code.code()
}

/// `throttle_time_ms` of a Produce or Fetch response in which a partition's
/// wait for memory ran out (`ShardError::Busy`, or a fetch answered empty):
/// the client waits this long before it sends to this broker again.
pub const BUSY_THROTTLE_MS: i32 = 100;

/// Whether `code` is the one `ShardError::Busy` maps to (REQUEST_TIMED_OUT,
/// which a timed-out call to another shard also gets: throttling then is
/// harmless).
pub fn is_busy(code: i16) -> bool {
    code == shard_error_code(&ShardError::Busy)
}

/// Kafka error code of a metadata error.
/// The Kafka code and message of a security metadata refusal (SCRAM
/// credentials, ACLs, client quotas).
pub fn security_error(e: &sluice_raft::SecurityError) -> (i16, kafka_protocol::protocol::StrBytes) {
    use sluice_raft::SecurityError;
    let code = match e {
        SecurityError::ResourceNotFound(_) => ResponseError::ResourceNotFound,
        SecurityError::DuplicateResource(_) => ResponseError::DuplicateResource,
        SecurityError::UnacceptableCredential(_) => ResponseError::UnacceptableCredential,
        SecurityError::InvalidRequest(_) => ResponseError::InvalidRequest,
    };
    (
        code.code(),
        kafka_protocol::protocol::StrBytes::from_string(e.to_string()),
    )
}

pub fn meta_error_code(e: &MetaError) -> i16 {
    let code = match e {
        MetaError::TopicExists(_) => ResponseError::TopicAlreadyExists,
        MetaError::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition,
        MetaError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        MetaError::PartitionLimit { .. } => ResponseError::PolicyViolation,
        MetaError::InvalidReplicationFactor { .. } => ResponseError::InvalidReplicationFactor,
        MetaError::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
        MetaError::StaleLeaderEpoch { .. } => ResponseError::FencedLeaderEpoch,
        MetaError::ElectionNotNeeded(_) => ResponseError::ElectionNotNeeded,
        MetaError::PreferredLeaderNotAvailable(_) => ResponseError::PreferredLeaderNotAvailable,
        MetaError::EligibleLeadersNotAvailable(_) => ResponseError::EligibleLeadersNotAvailable,
        MetaError::NoReassignmentInProgress(_) => ResponseError::NoReassignmentInProgress,
        // Retriable: the request may succeed once a quorum is back.
        MetaError::NoQuorum(_) => ResponseError::RequestTimedOut,
        MetaError::ShuttingDown => ResponseError::BrokerNotAvailable,
        MetaError::Storage(_) => ResponseError::KafkaStorageError,
        MetaError::Internal(_) => ResponseError::UnknownServerError,
    };
    code.code()
}

/// Kafka error code of a group coordinator outcome (`None`: no error).
pub fn group_error_code(e: Option<&GroupError>) -> i16 {
    let Some(e) = e else {
        return codes::NONE;
    };
    let code = match e {
        GroupError::CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
        GroupError::NotCoordinator => ResponseError::NotCoordinator,
        GroupError::CoordinatorLoadInProgress => ResponseError::CoordinatorLoadInProgress,
        GroupError::InvalidGroupId => ResponseError::InvalidGroupId,
        GroupError::UnknownMemberId => ResponseError::UnknownMemberId,
        GroupError::IllegalGeneration => ResponseError::IllegalGeneration,
        GroupError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        GroupError::MemberIdRequired => ResponseError::MemberIdRequired,
        GroupError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
        GroupError::InvalidSessionTimeout => ResponseError::InvalidSessionTimeout,
        GroupError::FencedInstanceId => ResponseError::FencedInstanceId,
        GroupError::GroupIdNotFound => ResponseError::GroupIdNotFound,
        GroupError::NonEmptyGroup => ResponseError::NonEmptyGroup,
        GroupError::GroupMaxSizeReached => ResponseError::GroupMaxSizeReached,
        GroupError::OffsetMetadataTooLarge => ResponseError::OffsetMetadataTooLarge,
        GroupError::GroupSubscribedToTopic => ResponseError::GroupSubscribedToTopic,
        // The coordinator shard is busy, slow or stopping: the client
        // looks the coordinator up again and retries.
        GroupError::Shard(ShardError::Timeout | ShardError::ShuttingDown | ShardError::Busy) => {
            ResponseError::CoordinatorNotAvailable
        }
        GroupError::Shard(other) => return shard_error_code(other),
    };
    code.code()
}

/// Kafka error code of a transaction coordinator outcome. `fenced_code`:
/// PRODUCER_FENCED from the request versions that know it (KIP-588),
/// INVALID_PRODUCER_EPOCH before.
pub fn txn_error_code(e: &TxnError, producer_fenced_known: bool) -> i16 {
    let code = match e {
        TxnError::CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
        TxnError::CoordinatorLoadInProgress => ResponseError::CoordinatorLoadInProgress,
        TxnError::NotCoordinator => ResponseError::NotCoordinator,
        TxnError::ConcurrentTransactions => ResponseError::ConcurrentTransactions,
        TxnError::ProducerFenced if producer_fenced_known => ResponseError::ProducerFenced,
        TxnError::ProducerFenced => ResponseError::InvalidProducerEpoch,
        TxnError::InvalidProducerIdMapping => ResponseError::InvalidProducerIdMapping,
        TxnError::InvalidTxnState => ResponseError::InvalidTxnState,
        TxnError::InvalidTransactionTimeout => ResponseError::InvalidTransactionTimeout,
        TxnError::TransactionalIdNotFound => ResponseError::TransactionalIdNotFound,
        // The coordinator shard is busy, full, slow or stopping: the
        // client looks the coordinator up again and retries.
        TxnError::Shard(ShardError::Timeout | ShardError::ShuttingDown | ShardError::Busy) => {
            ResponseError::CoordinatorNotAvailable
        }
        TxnError::Shard(other) => return shard_error_code(other),
    };
    code.code()
}

/// Kafka error codes the front end decides by itself (request validation).
pub mod codes {
    use kafka_protocol::ResponseError;

    pub const NONE: i16 = 0;
    pub fn corrupt_message() -> i16 {
        ResponseError::CorruptMessage.code()
    }
    pub fn unknown_topic_or_partition() -> i16 {
        ResponseError::UnknownTopicOrPartition.code()
    }
    pub fn invalid_topic() -> i16 {
        ResponseError::InvalidTopicException.code()
    }
    pub fn invalid_required_acks() -> i16 {
        ResponseError::InvalidRequiredAcks.code()
    }
    pub fn unsupported_version() -> i16 {
        ResponseError::UnsupportedVersion.code()
    }
    pub fn unsupported_for_message_format() -> i16 {
        ResponseError::UnsupportedForMessageFormat.code()
    }
    pub fn topic_already_exists() -> i16 {
        ResponseError::TopicAlreadyExists.code()
    }
    pub fn invalid_partitions() -> i16 {
        ResponseError::InvalidPartitions.code()
    }
    pub fn invalid_replication_factor() -> i16 {
        ResponseError::InvalidReplicationFactor.code()
    }
    pub fn invalid_replica_assignment() -> i16 {
        ResponseError::InvalidReplicaAssignment.code()
    }
    pub fn request_timed_out() -> i16 {
        ResponseError::RequestTimedOut.code()
    }
    pub fn fetch_session_id_not_found() -> i16 {
        ResponseError::FetchSessionIdNotFound.code()
    }
    pub fn unknown_topic_id() -> i16 {
        ResponseError::UnknownTopicId.code()
    }
    pub fn invalid_config() -> i16 {
        ResponseError::InvalidConfig.code()
    }
    pub fn invalid_request() -> i16 {
        ResponseError::InvalidRequest.code()
    }
    pub fn log_dir_not_found() -> i16 {
        ResponseError::LogDirNotFound.code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_kafka() {
        assert_eq!(shard_error_code(&ShardError::UnknownTopicOrPartition), 3);
        assert_eq!(
            shard_error_code(&ShardError::CorruptMessage("crc".into())),
            2
        );
        assert_eq!(shard_error_code(&ShardError::OffsetOutOfRange), 1);
        assert_eq!(shard_error_code(&ShardError::NotLeader), 6);
        assert_eq!(shard_error_code(&ShardError::NotEnoughReplicas), 19);
        assert_eq!(
            shard_error_code(&ShardError::NotEnoughReplicasAfterAppend),
            20
        );
        let epochs = (1, 2);
        let fenced = ShardError::FencedLeaderEpoch {
            current: epochs.1,
            got: epochs.0,
        };
        assert_eq!(shard_error_code(&fenced), 74);
        let unknown = ShardError::UnknownLeaderEpoch {
            current: epochs.0,
            got: epochs.1,
        };
        assert_eq!(shard_error_code(&unknown), 75);
        assert_eq!(
            shard_error_code(&ShardError::InvalidTxnState(String::new())),
            48
        );
        assert_eq!(
            shard_error_code(&ShardError::TransactionalIdAuthorizationFailed),
            53
        );
        assert_eq!(
            meta_error_code(&MetaError::InvalidReplicationFactor {
                requested: 3,
                available: 1
            }),
            38
        );
        assert_eq!(meta_error_code(&MetaError::TopicExists("t".into())), 36);
        assert_eq!(
            meta_error_code(&MetaError::InvalidPartitions("0".into())),
            37
        );
        assert_eq!(codes::invalid_topic(), 17);
        assert_eq!(
            meta_error_code(&MetaError::ElectionNotNeeded(String::new())),
            84
        );
        assert_eq!(
            meta_error_code(&MetaError::PreferredLeaderNotAvailable(String::new())),
            80
        );
        assert_eq!(
            meta_error_code(&MetaError::EligibleLeadersNotAvailable(String::new())),
            83
        );
        assert_eq!(
            meta_error_code(&MetaError::NoReassignmentInProgress(String::new())),
            85
        );
        assert_eq!(codes::log_dir_not_found(), 57);
        assert_eq!(codes::unsupported_version(), 35);
        assert_eq!(codes::invalid_required_acks(), 21);
        assert_eq!(codes::unsupported_for_message_format(), 43);
        assert_eq!(group_error_code(None), 0);
        assert_eq!(group_error_code(Some(&GroupError::UnknownMemberId)), 25);
        assert_eq!(group_error_code(Some(&GroupError::IllegalGeneration)), 22);
        assert_eq!(group_error_code(Some(&GroupError::RebalanceInProgress)), 27);
        assert_eq!(group_error_code(Some(&GroupError::MemberIdRequired)), 79);
        assert_eq!(
            group_error_code(Some(&GroupError::CoordinatorNotAvailable)),
            15
        );
    }
}
