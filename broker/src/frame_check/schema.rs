//! The wire shape of every request body the broker serves, at every
//! version it advertises (`handlers::SUPPORTED`), as data for the walker
//! in `frame_check`.
//!
//! Each struct lists its fields in wire order with the versions that carry
//! them; a field outside its versions is absent from the wire. Strings,
//! bytes and arrays are compact (unsigned-varint length + 1) from the
//! message's first flexible version on, which also adds a tagged-field
//! section after every struct. `elem_bytes` is the size of the codec's
//! Rust type for one element: what `Vec::with_capacity` takes per counted
//! element when the codec decodes an array of it.
//!
//! These tables follow Kafka's message definitions as the `kafka-protocol`
//! crate (0.15) decodes them; `frame_check::tests` checks them against
//! that crate for every served API, version and a populated sample.

use std::mem::size_of;

use kafka_protocol::messages::{self as m, ApiKey};
use kafka_protocol::protocol::StrBytes;

/// A field's wire type.
#[derive(Debug)]
pub enum Ty {
    I8,
    I16,
    I32,
    I64,
    Bool,
    Uuid,
    /// String (i16 length, -1 null) or compact string.
    Str,
    /// Bytes (i32 length, -1 null) or compact bytes.
    Bytes,
    /// A struct inline (only as a tagged field).
    Struct(&'static Struct),
    /// Array (i32 count, -1 null) or compact array of structs.
    Array(&'static Struct),
    /// Array of i32.
    ArrayI32,
    /// Array of i64.
    ArrayI64,
    /// Array of strings.
    ArrayStr,
}

/// A field present in versions `min..=max`.
#[derive(Debug)]
pub struct Field {
    pub ty: Ty,
    pub min: i16,
    pub max: i16,
}

/// A field of the tagged section, known to the codec by its tag. Outside
/// its versions the codec refuses the tag.
#[derive(Debug)]
pub struct Tagged {
    pub tag: u32,
    pub field: Field,
}

#[derive(Debug)]
pub struct Struct {
    pub fields: &'static [Field],
    pub tagged: &'static [Tagged],
    /// Bytes of the codec's element type (see the module docs).
    pub elem_bytes: usize,
}

/// A request body: its first flexible version (`NEVER`: none) and root.
#[derive(Debug)]
pub struct Schema {
    pub flexible_min: i16,
    pub root: &'static Struct,
}

const MAX: i16 = i16::MAX;
/// `flexible_min` of a message without flexible versions.
pub const NEVER: i16 = i16::MAX;

const fn all(ty: Ty) -> Field {
    Field {
        ty,
        min: 0,
        max: MAX,
    }
}

const fn from(min: i16, ty: Ty) -> Field {
    Field { ty, min, max: MAX }
}

const fn until(max: i16, ty: Ty) -> Field {
    Field { ty, min: 0, max }
}

const fn between(min: i16, max: i16, ty: Ty) -> Field {
    Field { ty, min, max }
}

const fn st<T>(fields: &'static [Field]) -> Struct {
    Struct {
        fields,
        tagged: &[],
        elem_bytes: size_of::<T>(),
    }
}

/// Bytes of one string element of an array (`TopicName`, `GroupId`, ...
/// are all `StrBytes` newtypes).
pub const STR_ELEM_BYTES: usize = size_of::<StrBytes>();

use Ty::*;

// Produce
const PRODUCE_PARTITION: Struct =
    st::<m::produce_request::PartitionProduceData>(&[all(I32), all(Bytes)]);
const PRODUCE_TOPIC: Struct =
    st::<m::produce_request::TopicProduceData>(&[all(Str), all(Array(&PRODUCE_PARTITION))]);
const PRODUCE: Struct = st::<m::ProduceRequest>(&[
    from(3, Str), // transactional_id
    all(I16),     // acks
    all(I32),     // timeout_ms
    all(Array(&PRODUCE_TOPIC)),
]);

// Fetch
const FETCH_PARTITION: Struct = Struct {
    fields: &[
        all(I32),      // partition
        from(9, I32),  // current_leader_epoch
        all(I64),      // fetch_offset
        from(12, I32), // last_fetched_epoch
        from(5, I64),  // log_start_offset
        all(I32),      // partition_max_bytes
    ],
    tagged: &[Tagged {
        tag: 0, // replica_directory_id
        field: from(17, Uuid),
    }],
    elem_bytes: size_of::<m::fetch_request::FetchPartition>(),
};
const FETCH_TOPIC: Struct = st::<m::fetch_request::FetchTopic>(&[
    until(12, Str), // topic
    from(13, Uuid), // topic_id
    all(Array(&FETCH_PARTITION)),
]);
const FETCH_FORGOTTEN: Struct = st::<m::fetch_request::ForgottenTopic>(&[
    between(7, 12, Str),
    from(13, Uuid),
    from(7, ArrayI32),
]);
const FETCH_REPLICA_STATE: Struct =
    st::<m::fetch_request::ReplicaState>(&[from(15, I32), from(15, I64)]);
const FETCH: Struct = Struct {
    fields: &[
        until(14, I32), // replica_id
        all(I32),       // max_wait_ms
        all(I32),       // min_bytes
        from(3, I32),   // max_bytes
        from(4, I8),    // isolation_level
        from(7, I32),   // session_id
        from(7, I32),   // session_epoch
        all(Array(&FETCH_TOPIC)),
        from(7, Array(&FETCH_FORGOTTEN)),
        from(11, Str), // rack_id
    ],
    tagged: &[
        Tagged {
            tag: 0, // cluster_id
            field: all(Str),
        },
        Tagged {
            tag: 1, // replica_state
            field: from(15, Struct(&FETCH_REPLICA_STATE)),
        },
    ],
    elem_bytes: size_of::<m::FetchRequest>(),
};

// ListOffsets
const LIST_OFFSETS_PARTITION: Struct = st::<m::list_offsets_request::ListOffsetsPartition>(&[
    all(I32),      // partition_index
    from(4, I32),  // current_leader_epoch
    all(I64),      // timestamp
    until(0, I32), // max_num_offsets
]);
const LIST_OFFSETS_TOPIC: Struct = st::<m::list_offsets_request::ListOffsetsTopic>(&[
    all(Str),
    all(Array(&LIST_OFFSETS_PARTITION)),
]);
const LIST_OFFSETS: Struct = st::<m::ListOffsetsRequest>(&[
    all(I32),    // replica_id
    from(2, I8), // isolation_level
    all(Array(&LIST_OFFSETS_TOPIC)),
]);

// Metadata
const METADATA_TOPIC: Struct =
    st::<m::metadata_request::MetadataRequestTopic>(&[from(10, Uuid), all(Str)]);
const METADATA: Struct = st::<m::MetadataRequest>(&[
    all(Array(&METADATA_TOPIC)),
    from(4, Bool),        // allow_auto_topic_creation
    between(8, 10, Bool), // include_cluster_authorized_operations
    from(8, Bool),        // include_topic_authorized_operations
]);

// ApiVersions
const API_VERSIONS: Struct = st::<m::ApiVersionsRequest>(&[from(3, Str), from(3, Str)]);

// CreateTopics
const CREATE_TOPICS_ASSIGNMENT: Struct =
    st::<m::create_topics_request::CreatableReplicaAssignment>(&[all(I32), all(ArrayI32)]);
const CREATE_TOPICS_CONFIG: Struct =
    st::<m::create_topics_request::CreatableTopicConfig>(&[all(Str), all(Str)]);
const CREATE_TOPICS_TOPIC: Struct = st::<m::create_topics_request::CreatableTopic>(&[
    all(Str), // name
    all(I32), // num_partitions
    all(I16), // replication_factor
    all(Array(&CREATE_TOPICS_ASSIGNMENT)),
    all(Array(&CREATE_TOPICS_CONFIG)),
]);
const CREATE_TOPICS: Struct = st::<m::CreateTopicsRequest>(&[
    all(Array(&CREATE_TOPICS_TOPIC)),
    all(I32),      // timeout_ms
    from(1, Bool), // validate_only
]);

// DeleteTopics
const DELETE_TOPICS_STATE: Struct =
    st::<m::delete_topics_request::DeleteTopicState>(&[from(6, Str), from(6, Uuid)]);
const DELETE_TOPICS: Struct = st::<m::DeleteTopicsRequest>(&[
    from(6, Array(&DELETE_TOPICS_STATE)),
    until(5, ArrayStr), // topic_names
    all(I32),           // timeout_ms
]);

// Consumer groups.
const FIND_COORDINATOR: Struct = st::<m::FindCoordinatorRequest>(&[
    until(3, Str),     // key
    from(1, I8),       // key_type
    from(4, ArrayStr), // coordinator_keys
]);
const JOIN_GROUP_PROTOCOL: Struct =
    st::<m::join_group_request::JoinGroupRequestProtocol>(&[all(Str), all(Bytes)]);
const JOIN_GROUP: Struct = st::<m::JoinGroupRequest>(&[
    all(Str),     // group_id
    all(I32),     // session_timeout_ms
    from(1, I32), // rebalance_timeout_ms
    all(Str),     // member_id
    from(5, Str), // group_instance_id
    all(Str),     // protocol_type
    all(Array(&JOIN_GROUP_PROTOCOL)),
    from(8, Str), // reason
]);
const SYNC_GROUP_ASSIGNMENT: Struct =
    st::<m::sync_group_request::SyncGroupRequestAssignment>(&[all(Str), all(Bytes)]);
const SYNC_GROUP: Struct = st::<m::SyncGroupRequest>(&[
    all(Str),     // group_id
    all(I32),     // generation_id
    all(Str),     // member_id
    from(3, Str), // group_instance_id
    from(5, Str), // protocol_type
    from(5, Str), // protocol_name
    all(Array(&SYNC_GROUP_ASSIGNMENT)),
]);
const HEARTBEAT: Struct = st::<m::HeartbeatRequest>(&[all(Str), all(I32), all(Str), from(3, Str)]);
const LEAVE_GROUP_MEMBER: Struct = st::<m::leave_group_request::MemberIdentity>(&[
    from(3, Str), // member_id
    from(3, Str), // group_instance_id
    from(5, Str), // reason
]);
const LEAVE_GROUP: Struct = st::<m::LeaveGroupRequest>(&[
    all(Str),      // group_id
    until(2, Str), // member_id
    from(3, Array(&LEAVE_GROUP_MEMBER)),
]);
const OFFSET_COMMIT_PARTITION: Struct =
    st::<m::offset_commit_request::OffsetCommitRequestPartition>(&[
        all(I32),           // partition_index
        all(I64),           // committed_offset
        from(6, I32),       // committed_leader_epoch
        between(1, 1, I64), // commit_timestamp
        all(Str),           // committed_metadata
    ]);
const OFFSET_COMMIT_TOPIC: Struct = st::<m::offset_commit_request::OffsetCommitRequestTopic>(&[
    all(Str),
    all(Array(&OFFSET_COMMIT_PARTITION)),
]);
const OFFSET_COMMIT: Struct = st::<m::OffsetCommitRequest>(&[
    all(Str),           // group_id
    from(1, I32),       // generation_id_or_member_epoch
    from(1, Str),       // member_id
    from(7, Str),       // group_instance_id
    between(2, 4, I64), // retention_time_ms
    all(Array(&OFFSET_COMMIT_TOPIC)),
]);
const OFFSET_FETCH_TOPIC: Struct =
    st::<m::offset_fetch_request::OffsetFetchRequestTopic>(&[until(7, Str), until(7, ArrayI32)]);
const OFFSET_FETCH_GROUP_TOPIC: Struct =
    st::<m::offset_fetch_request::OffsetFetchRequestTopics>(&[from(8, Str), from(8, ArrayI32)]);
const OFFSET_FETCH_GROUP: Struct = st::<m::offset_fetch_request::OffsetFetchRequestGroup>(&[
    from(8, Str), // group_id
    from(9, Str), // member_id
    from(9, I32), // member_epoch
    from(8, Array(&OFFSET_FETCH_GROUP_TOPIC)),
]);
const OFFSET_FETCH: Struct = st::<m::OffsetFetchRequest>(&[
    until(7, Str), // group_id
    until(7, Array(&OFFSET_FETCH_TOPIC)),
    from(8, Array(&OFFSET_FETCH_GROUP)),
    from(7, Bool), // require_stable
]);
const LIST_GROUPS: Struct = st::<m::ListGroupsRequest>(&[from(4, ArrayStr), from(5, ArrayStr)]);
const DESCRIBE_GROUPS: Struct = st::<m::DescribeGroupsRequest>(&[all(ArrayStr), from(3, Bool)]);
const DELETE_GROUPS: Struct = st::<m::DeleteGroupsRequest>(&[all(ArrayStr)]);
const OFFSET_DELETE_PARTITION: Struct =
    st::<m::offset_delete_request::OffsetDeleteRequestPartition>(&[all(I32)]);
const OFFSET_DELETE_TOPIC: Struct = st::<m::offset_delete_request::OffsetDeleteRequestTopic>(&[
    all(Str),
    all(Array(&OFFSET_DELETE_PARTITION)),
]);
const OFFSET_DELETE: Struct =
    st::<m::OffsetDeleteRequest>(&[all(Str), all(Array(&OFFSET_DELETE_TOPIC))]);

const INIT_PRODUCER_ID: Struct = st::<m::InitProducerIdRequest>(&[
    all(Str),     // transactional_id
    all(I32),     // transaction_timeout_ms
    from(3, I64), // producer_id
    from(3, I16), // producer_epoch
]);

// Topic and config administration.
const CREATE_PARTITIONS_ASSIGNMENT: Struct =
    st::<m::create_partitions_request::CreatePartitionsAssignment>(&[all(ArrayI32)]);
const CREATE_PARTITIONS_TOPIC: Struct =
    st::<m::create_partitions_request::CreatePartitionsTopic>(&[
        all(Str),
        all(I32),
        all(Array(&CREATE_PARTITIONS_ASSIGNMENT)),
    ]);
const CREATE_PARTITIONS: Struct = st::<m::CreatePartitionsRequest>(&[
    all(Array(&CREATE_PARTITIONS_TOPIC)),
    all(I32),  // timeout_ms
    all(Bool), // validate_only
]);
const DESCRIBE_CONFIGS_RESOURCE: Struct =
    st::<m::describe_configs_request::DescribeConfigsResource>(&[all(I8), all(Str), all(ArrayStr)]);
const DESCRIBE_CONFIGS: Struct = st::<m::DescribeConfigsRequest>(&[
    all(Array(&DESCRIBE_CONFIGS_RESOURCE)),
    from(1, Bool), // include_synonyms
    from(3, Bool), // include_documentation
]);
const ALTER_CONFIGS_CONFIG: Struct =
    st::<m::alter_configs_request::AlterableConfig>(&[all(Str), all(Str)]);
const ALTER_CONFIGS_RESOURCE: Struct = st::<m::alter_configs_request::AlterConfigsResource>(&[
    all(I8),
    all(Str),
    all(Array(&ALTER_CONFIGS_CONFIG)),
]);
const ALTER_CONFIGS: Struct =
    st::<m::AlterConfigsRequest>(&[all(Array(&ALTER_CONFIGS_RESOURCE)), all(Bool)]);
const INCREMENTAL_CONFIG: Struct =
    st::<m::incremental_alter_configs_request::AlterableConfig>(&[all(Str), all(I8), all(Str)]);
const INCREMENTAL_RESOURCE: Struct =
    st::<m::incremental_alter_configs_request::AlterConfigsResource>(&[
        all(I8),
        all(Str),
        all(Array(&INCREMENTAL_CONFIG)),
    ]);
const INCREMENTAL_ALTER_CONFIGS: Struct =
    st::<m::IncrementalAlterConfigsRequest>(&[all(Array(&INCREMENTAL_RESOURCE)), all(Bool)]);
const DESCRIBE_CLUSTER: Struct = st::<m::DescribeClusterRequest>(&[all(Bool), from(1, I8)]);
const DELETE_RECORDS_PARTITION: Struct =
    st::<m::delete_records_request::DeleteRecordsPartition>(&[all(I32), all(I64)]);
const DELETE_RECORDS_TOPIC: Struct = st::<m::delete_records_request::DeleteRecordsTopic>(&[
    all(Str),
    all(Array(&DELETE_RECORDS_PARTITION)),
]);
const DELETE_RECORDS: Struct =
    st::<m::DeleteRecordsRequest>(&[all(Array(&DELETE_RECORDS_TOPIC)), all(I32)]);

// OffsetForLeaderEpoch (followers truncating by leader epoch).
const OFFSET_FOR_LEADER_EPOCH_PARTITION: Struct =
    st::<m::offset_for_leader_epoch_request::OffsetForLeaderPartition>(&[
        all(I32),     // partition
        from(2, I32), // current_leader_epoch
        all(I32),     // leader_epoch
    ]);
const OFFSET_FOR_LEADER_EPOCH_TOPIC: Struct =
    st::<m::offset_for_leader_epoch_request::OffsetForLeaderTopic>(&[
        all(Str),
        all(Array(&OFFSET_FOR_LEADER_EPOCH_PARTITION)),
    ]);
const OFFSET_FOR_LEADER_EPOCH: Struct = st::<m::OffsetForLeaderEpochRequest>(&[
    from(3, I32), // replica_id
    all(Array(&OFFSET_FOR_LEADER_EPOCH_TOPIC)),
]);

// Cluster administration.
const ELECT_LEADERS_TOPIC: Struct =
    st::<m::elect_leaders_request::TopicPartitions>(&[all(Str), all(ArrayI32)]);
const ELECT_LEADERS: Struct = st::<m::ElectLeadersRequest>(&[
    from(1, I8),                      // election_type
    all(Array(&ELECT_LEADERS_TOPIC)), // topic_partitions (nullable)
    all(I32),                         // timeout_ms
]);
const REASSIGNABLE_PARTITION: Struct =
    st::<m::alter_partition_reassignments_request::ReassignablePartition>(&[
        all(I32),      // partition_index
        all(ArrayI32), // replicas (nullable)
    ]);
const REASSIGNABLE_TOPIC: Struct =
    st::<m::alter_partition_reassignments_request::ReassignableTopic>(&[
        all(Str),
        all(Array(&REASSIGNABLE_PARTITION)),
    ]);
const ALTER_PARTITION_REASSIGNMENTS: Struct = st::<m::AlterPartitionReassignmentsRequest>(&[
    all(I32), // timeout_ms
    all(Array(&REASSIGNABLE_TOPIC)),
]);
const LIST_REASSIGNMENTS_TOPIC: Struct = st::<
    m::list_partition_reassignments_request::ListPartitionReassignmentsTopics,
>(&[all(Str), all(ArrayI32)]);
const LIST_PARTITION_REASSIGNMENTS: Struct = st::<m::ListPartitionReassignmentsRequest>(&[
    all(I32),                              // timeout_ms
    all(Array(&LIST_REASSIGNMENTS_TOPIC)), // topics (nullable)
]);
const DESCRIBE_LOG_DIRS_TOPIC: Struct =
    st::<m::describe_log_dirs_request::DescribableLogDirTopic>(&[all(Str), all(ArrayI32)]);
const DESCRIBE_LOG_DIRS: Struct =
    st::<m::DescribeLogDirsRequest>(&[all(Array(&DESCRIBE_LOG_DIRS_TOPIC))]);
const ALTER_LOG_DIR_TOPIC: Struct =
    st::<m::alter_replica_log_dirs_request::AlterReplicaLogDirTopic>(&[all(Str), all(ArrayI32)]);
const ALTER_LOG_DIR: Struct = st::<m::alter_replica_log_dirs_request::AlterReplicaLogDir>(&[
    all(Str), // path
    all(Array(&ALTER_LOG_DIR_TOPIC)),
]);
const ALTER_REPLICA_LOG_DIRS: Struct =
    st::<m::AlterReplicaLogDirsRequest>(&[all(Array(&ALTER_LOG_DIR))]);

// Transactions.
const ADD_PARTITIONS_TO_TXN_TOPIC: Struct =
    st::<m::add_partitions_to_txn_request::AddPartitionsToTxnTopic>(&[
        all(Str),      // name
        all(ArrayI32), // partitions
    ]);
const ADD_PARTITIONS_TO_TXN_TRANSACTION: Struct =
    st::<m::add_partitions_to_txn_request::AddPartitionsToTxnTransaction>(&[
        from(4, Str),  // transactional_id
        from(4, I64),  // producer_id
        from(4, I16),  // producer_epoch
        from(4, Bool), // verify_only
        from(4, Array(&ADD_PARTITIONS_TO_TXN_TOPIC)),
    ]);
const ADD_PARTITIONS_TO_TXN: Struct = st::<m::AddPartitionsToTxnRequest>(&[
    from(4, Array(&ADD_PARTITIONS_TO_TXN_TRANSACTION)), // transactions
    until(3, Str),                                      // v3_and_below_transactional_id
    until(3, I64),                                      // v3_and_below_producer_id
    until(3, I16),                                      // v3_and_below_producer_epoch
    until(3, Array(&ADD_PARTITIONS_TO_TXN_TOPIC)),      // v3_and_below_topics
]);
const ADD_OFFSETS_TO_TXN: Struct = st::<m::AddOffsetsToTxnRequest>(&[
    all(Str), // transactional_id
    all(I64), // producer_id
    all(I16), // producer_epoch
    all(Str), // group_id
]);
const END_TXN: Struct = st::<m::EndTxnRequest>(&[
    all(Str),  // transactional_id
    all(I64),  // producer_id
    all(I16),  // producer_epoch
    all(Bool), // committed
]);
const WRITE_TXN_MARKERS_TOPIC: Struct =
    st::<m::write_txn_markers_request::WritableTxnMarkerTopic>(&[
        all(Str),      // name
        all(ArrayI32), // partition_indexes
    ]);
const WRITE_TXN_MARKERS_MARKER: Struct = st::<m::write_txn_markers_request::WritableTxnMarker>(&[
    all(I64),  // producer_id
    all(I16),  // producer_epoch
    all(Bool), // transaction_result
    all(Array(&WRITE_TXN_MARKERS_TOPIC)),
    all(I32), // coordinator_epoch
]);
const WRITE_TXN_MARKERS: Struct =
    st::<m::WriteTxnMarkersRequest>(&[all(Array(&WRITE_TXN_MARKERS_MARKER))]);
const TXN_OFFSET_COMMIT_PARTITION: Struct =
    st::<m::txn_offset_commit_request::TxnOffsetCommitRequestPartition>(&[
        all(I32),     // partition_index
        all(I64),     // committed_offset
        from(2, I32), // committed_leader_epoch
        all(Str),     // committed_metadata (nullable)
    ]);
const TXN_OFFSET_COMMIT_TOPIC: Struct = st::<
    m::txn_offset_commit_request::TxnOffsetCommitRequestTopic,
>(&[all(Str), all(Array(&TXN_OFFSET_COMMIT_PARTITION))]);
const TXN_OFFSET_COMMIT: Struct = st::<m::TxnOffsetCommitRequest>(&[
    all(Str),     // transactional_id
    all(Str),     // group_id
    all(I64),     // producer_id
    all(I16),     // producer_epoch
    from(3, I32), // generation_id
    from(3, Str), // member_id
    from(3, Str), // group_instance_id (nullable)
    all(Array(&TXN_OFFSET_COMMIT_TOPIC)),
]);
const DESCRIBE_TRANSACTIONS: Struct = st::<m::DescribeTransactionsRequest>(&[
    all(ArrayStr), // transactional_ids
]);
const LIST_TRANSACTIONS: Struct = st::<m::ListTransactionsRequest>(&[
    all(ArrayStr), // state_filters
    all(ArrayI64), // producer_id_filters
    from(1, I64),  // duration_filter
]);

const SASL_HANDSHAKE: Struct = st::<m::SaslHandshakeRequest>(&[
    all(Str), // mechanism
]);
const SASL_AUTHENTICATE: Struct = st::<m::SaslAuthenticateRequest>(&[
    all(Bytes), // auth_bytes
]);

// ACLs: a binding's (or filter's) fields, the same in the three APIs.
const ACL_FIELDS: &[Field] = &[
    all(I8),     // resource_type (filter)
    all(Str),    // resource_name (filter: nullable)
    from(1, I8), // pattern_type (filter)
    all(Str),    // principal (filter: nullable)
    all(Str),    // host (filter: nullable)
    all(I8),     // operation
    all(I8),     // permission_type
];
const DESCRIBE_ACLS: Struct = st::<m::DescribeAclsRequest>(ACL_FIELDS);
const CREATE_ACLS_CREATION: Struct = st::<m::create_acls_request::AclCreation>(ACL_FIELDS);
const CREATE_ACLS: Struct = st::<m::CreateAclsRequest>(&[all(Array(&CREATE_ACLS_CREATION))]);
const DELETE_ACLS_FILTER: Struct = st::<m::delete_acls_request::DeleteAclsFilter>(ACL_FIELDS);
const DELETE_ACLS: Struct = st::<m::DeleteAclsRequest>(&[all(Array(&DELETE_ACLS_FILTER))]);
// Client quotas. A quota's value is an f64: 8 bytes, walked as an I64.
const DESCRIBE_CLIENT_QUOTAS_COMPONENT: Struct =
    st::<m::describe_client_quotas_request::ComponentData>(&[
        all(Str), // entity_type
        all(I8),  // match_type
        all(Str), // match (nullable)
    ]);
const DESCRIBE_CLIENT_QUOTAS: Struct = st::<m::DescribeClientQuotasRequest>(&[
    all(Array(&DESCRIBE_CLIENT_QUOTAS_COMPONENT)),
    all(Bool), // strict
]);
const ALTER_CLIENT_QUOTAS_ENTITY: Struct =
    st::<m::alter_client_quotas_request::EntityData>(&[all(Str), all(Str)]);
const ALTER_CLIENT_QUOTAS_OP: Struct = st::<m::alter_client_quotas_request::OpData>(&[
    all(Str),  // key
    all(I64),  // value (f64)
    all(Bool), // remove
]);
const ALTER_CLIENT_QUOTAS_ENTRY: Struct = st::<m::alter_client_quotas_request::EntryData>(&[
    all(Array(&ALTER_CLIENT_QUOTAS_ENTITY)),
    all(Array(&ALTER_CLIENT_QUOTAS_OP)),
]);
const ALTER_CLIENT_QUOTAS: Struct = st::<m::AlterClientQuotasRequest>(&[
    all(Array(&ALTER_CLIENT_QUOTAS_ENTRY)),
    all(Bool), // validate_only
]);
// SCRAM credentials.
const DESCRIBE_SCRAM_USER: Struct =
    st::<m::describe_user_scram_credentials_request::UserName>(&[all(Str)]);
const DESCRIBE_USER_SCRAM_CREDENTIALS: Struct =
    st::<m::DescribeUserScramCredentialsRequest>(&[all(Array(&DESCRIBE_SCRAM_USER))]);
const SCRAM_DELETION: Struct =
    st::<m::alter_user_scram_credentials_request::ScramCredentialDeletion>(&[all(Str), all(I8)]);
const SCRAM_UPSERTION: Struct =
    st::<m::alter_user_scram_credentials_request::ScramCredentialUpsertion>(&[
        all(Str),   // name
        all(I8),    // mechanism
        all(I32),   // iterations
        all(Bytes), // salt
        all(Bytes), // salted_password
    ]);
const ALTER_USER_SCRAM_CREDENTIALS: Struct = st::<m::AlterUserScramCredentialsRequest>(&[
    all(Array(&SCRAM_DELETION)),
    all(Array(&SCRAM_UPSERTION)),
]);

/// The schema of `key`'s request body; `None` for an API not served.
pub fn of(key: ApiKey) -> Option<Schema> {
    let (flexible_min, root) = match key {
        ApiKey::Produce => (9, &PRODUCE),
        ApiKey::Fetch => (12, &FETCH),
        ApiKey::ListOffsets => (6, &LIST_OFFSETS),
        ApiKey::Metadata => (9, &METADATA),
        ApiKey::ApiVersions => (3, &API_VERSIONS),
        ApiKey::CreateTopics => (5, &CREATE_TOPICS),
        ApiKey::DeleteTopics => (4, &DELETE_TOPICS),
        ApiKey::FindCoordinator => (3, &FIND_COORDINATOR),
        ApiKey::JoinGroup => (6, &JOIN_GROUP),
        ApiKey::SyncGroup => (4, &SYNC_GROUP),
        ApiKey::Heartbeat => (4, &HEARTBEAT),
        ApiKey::LeaveGroup => (4, &LEAVE_GROUP),
        ApiKey::OffsetCommit => (8, &OFFSET_COMMIT),
        ApiKey::OffsetFetch => (6, &OFFSET_FETCH),
        ApiKey::ListGroups => (3, &LIST_GROUPS),
        ApiKey::DescribeGroups => (5, &DESCRIBE_GROUPS),
        ApiKey::DeleteGroups => (2, &DELETE_GROUPS),
        ApiKey::OffsetDelete => (NEVER, &OFFSET_DELETE),
        ApiKey::InitProducerId => (2, &INIT_PRODUCER_ID),
        ApiKey::CreatePartitions => (2, &CREATE_PARTITIONS),
        ApiKey::DescribeConfigs => (4, &DESCRIBE_CONFIGS),
        ApiKey::AlterConfigs => (2, &ALTER_CONFIGS),
        ApiKey::IncrementalAlterConfigs => (1, &INCREMENTAL_ALTER_CONFIGS),
        ApiKey::DescribeCluster => (0, &DESCRIBE_CLUSTER),
        ApiKey::DeleteRecords => (2, &DELETE_RECORDS),
        ApiKey::OffsetForLeaderEpoch => (4, &OFFSET_FOR_LEADER_EPOCH),
        ApiKey::ElectLeaders => (2, &ELECT_LEADERS),
        ApiKey::AlterPartitionReassignments => (0, &ALTER_PARTITION_REASSIGNMENTS),
        ApiKey::ListPartitionReassignments => (0, &LIST_PARTITION_REASSIGNMENTS),
        ApiKey::DescribeLogDirs => (2, &DESCRIBE_LOG_DIRS),
        ApiKey::AlterReplicaLogDirs => (2, &ALTER_REPLICA_LOG_DIRS),
        ApiKey::AddPartitionsToTxn => (3, &ADD_PARTITIONS_TO_TXN),
        ApiKey::AddOffsetsToTxn => (3, &ADD_OFFSETS_TO_TXN),
        ApiKey::EndTxn => (3, &END_TXN),
        ApiKey::WriteTxnMarkers => (1, &WRITE_TXN_MARKERS),
        ApiKey::TxnOffsetCommit => (3, &TXN_OFFSET_COMMIT),
        ApiKey::DescribeTransactions => (0, &DESCRIBE_TRANSACTIONS),
        ApiKey::ListTransactions => (0, &LIST_TRANSACTIONS),
        ApiKey::SaslHandshake => (NEVER, &SASL_HANDSHAKE),
        ApiKey::SaslAuthenticate => (2, &SASL_AUTHENTICATE),
        ApiKey::DescribeAcls => (2, &DESCRIBE_ACLS),
        ApiKey::CreateAcls => (2, &CREATE_ACLS),
        ApiKey::DeleteAcls => (2, &DELETE_ACLS),
        ApiKey::DescribeClientQuotas => (1, &DESCRIBE_CLIENT_QUOTAS),
        ApiKey::AlterClientQuotas => (1, &ALTER_CLIENT_QUOTAS),
        ApiKey::DescribeUserScramCredentials => (0, &DESCRIBE_USER_SCRAM_CREDENTIALS),
        ApiKey::AlterUserScramCredentials => (0, &ALTER_USER_SCRAM_CREDENTIALS),
        _ => return None,
    };
    Some(Schema { flexible_min, root })
}
