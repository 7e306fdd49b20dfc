//! A populated request body of every served API at every version, in a
//! few variants, for the tests of `frame_check` and as fuzzing seeds.
//!
//! - variant 0: every field the version carries set to a non-default
//!   value, every array holding 2 elements (nested arrays too), strings
//!   non-empty (one multi-byte UTF-8 char in each second element, a few
//!   strings and bytes longer than 127 bytes), bytes non-empty, Produce
//!   records a real record batch;
//! - variant 1: nullable fields and nullable arrays null where the version
//!   allows, arrays empty elsewhere, except arrays of structs that hold a
//!   nullable field: those keep their 2 elements, so the nested nulls are
//!   on the wire;
//! - variant 2: variant 0 plus, in flexible versions, unknown tagged
//!   fields (tags 100 and 200) in every struct.
//!
//! A field is only set in the versions that carry it (the codec refuses to
//! encode a non-default value elsewhere); `every_sample_round_trips`
//! checks each sample decodes to the request it was built from and
//! re-encodes to the same bytes.

use std::collections::BTreeMap;
use std::fmt;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::alter_configs_request as ac;
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsAssignment, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::incremental_alter_configs_request as iac;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::{Record, TimestampType};

use crate::handlers::SUPPORTED;

pub const VARIANTS: u8 = 3;

/// `$f(request, args...)` with the request built for `$key`.
macro_rules! per_key {
    ($key:expr, $c:expr, $f:ident $(, $arg:expr)*) => {
        match $key {
            ApiKey::Produce => $f(produce($c) $(, $arg)*),
            ApiKey::Fetch => $f(fetch($c) $(, $arg)*),
            ApiKey::ListOffsets => $f(list_offsets($c) $(, $arg)*),
            ApiKey::Metadata => $f(metadata($c) $(, $arg)*),
            ApiKey::ApiVersions => $f(api_versions($c) $(, $arg)*),
            ApiKey::CreateTopics => $f(create_topics($c) $(, $arg)*),
            ApiKey::DeleteTopics => $f(delete_topics($c) $(, $arg)*),
            ApiKey::FindCoordinator => $f(find_coordinator($c) $(, $arg)*),
            ApiKey::JoinGroup => $f(join_group($c) $(, $arg)*),
            ApiKey::SyncGroup => $f(sync_group($c) $(, $arg)*),
            ApiKey::Heartbeat => $f(heartbeat($c) $(, $arg)*),
            ApiKey::LeaveGroup => $f(leave_group($c) $(, $arg)*),
            ApiKey::OffsetCommit => $f(offset_commit($c) $(, $arg)*),
            ApiKey::OffsetFetch => $f(offset_fetch($c) $(, $arg)*),
            ApiKey::ListGroups => $f(list_groups($c) $(, $arg)*),
            ApiKey::DescribeGroups => $f(describe_groups($c) $(, $arg)*),
            ApiKey::DeleteGroups => $f(delete_groups($c) $(, $arg)*),
            ApiKey::OffsetDelete => $f(offset_delete($c) $(, $arg)*),
            ApiKey::InitProducerId => $f(init_producer_id($c) $(, $arg)*),
            ApiKey::CreatePartitions => $f(create_partitions($c) $(, $arg)*),
            ApiKey::DescribeConfigs => $f(describe_configs($c) $(, $arg)*),
            ApiKey::AlterConfigs => $f(alter_configs($c) $(, $arg)*),
            ApiKey::IncrementalAlterConfigs => $f(incremental_alter_configs($c) $(, $arg)*),
            ApiKey::DescribeCluster => $f(describe_cluster($c) $(, $arg)*),
            ApiKey::DeleteRecords => $f(delete_records($c) $(, $arg)*),
            ApiKey::OffsetForLeaderEpoch => $f(offset_for_leader_epoch($c) $(, $arg)*),
            ApiKey::ElectLeaders => $f(elect_leaders($c) $(, $arg)*),
            ApiKey::AlterPartitionReassignments => {
                $f(alter_partition_reassignments($c) $(, $arg)*)
            }
            ApiKey::ListPartitionReassignments => {
                $f(list_partition_reassignments($c) $(, $arg)*)
            }
            ApiKey::DescribeLogDirs => $f(describe_log_dirs($c) $(, $arg)*),
            ApiKey::AlterReplicaLogDirs => $f(alter_replica_log_dirs($c) $(, $arg)*),
            ApiKey::AddPartitionsToTxn => $f(add_partitions_to_txn($c) $(, $arg)*),
            ApiKey::AddOffsetsToTxn => $f(add_offsets_to_txn($c) $(, $arg)*),
            ApiKey::EndTxn => $f(end_txn($c) $(, $arg)*),
            ApiKey::WriteTxnMarkers => $f(write_txn_markers($c) $(, $arg)*),
            ApiKey::TxnOffsetCommit => $f(txn_offset_commit($c) $(, $arg)*),
            ApiKey::DescribeTransactions => $f(describe_transactions($c) $(, $arg)*),
            ApiKey::ListTransactions => $f(list_transactions($c) $(, $arg)*),
            ApiKey::SaslHandshake => $f(sasl_handshake($c) $(, $arg)*),
            ApiKey::SaslAuthenticate => $f(sasl_authenticate($c) $(, $arg)*),
            ApiKey::DescribeAcls => $f(describe_acls($c) $(, $arg)*),
            ApiKey::CreateAcls => $f(create_acls($c) $(, $arg)*),
            ApiKey::DeleteAcls => $f(delete_acls($c) $(, $arg)*),
            ApiKey::DescribeClientQuotas => $f(describe_client_quotas($c) $(, $arg)*),
            ApiKey::AlterClientQuotas => $f(alter_client_quotas($c) $(, $arg)*),
            ApiKey::DescribeUserScramCredentials => {
                $f(describe_user_scram_credentials($c) $(, $arg)*)
            }
            ApiKey::AlterUserScramCredentials => $f(alter_user_scram_credentials($c) $(, $arg)*),
            other => panic!("no sample for {other:?}"),
        }
    };
}

/// The body of a `key` request at `version` (see the module docs for the
/// variants). Panics for an API without samples or a version the codec
/// does not know.
pub fn sample(key: ApiKey, version: i16, variant: u8) -> Bytes {
    let c = C {
        key,
        v: version,
        var: variant,
    };
    per_key!(key, &c, encode, &c)
}

/// The APIs and versions sampled: `handlers::SUPPORTED`.
pub fn served() -> Vec<(ApiKey, i16, i16)> {
    SUPPORTED.to_vec()
}

/// Every served API, version and variant with its sample.
pub fn all() -> Vec<(ApiKey, i16, u8, Bytes)> {
    let mut out = Vec::new();
    for (key, min, max) in served() {
        for v in min..=max {
            for var in 0..VARIANTS {
                out.push((key, v, var, sample(key, v, var)));
            }
        }
    }
    out
}

fn encode<T: Encodable>(r: T, c: &C) -> Bytes {
    let mut buf = BytesMut::new();
    r.encode(&mut buf, c.v)
        .unwrap_or_else(|e| panic!("{c}: encode: {e:#}"));
    buf.freeze()
}

/// What is being built: API, version and variant.
struct C {
    key: ApiKey,
    v: i16,
    var: u8,
}

impl fmt::Display for C {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} v{} variant {}", self.key, self.v, self.var)
    }
}

impl C {
    /// The version is in `min..=max`.
    fn has(&self, min: i16, max: i16) -> bool {
        (min..=max).contains(&self.v)
    }

    /// A string: `base` for element 0, longer with a multi-byte char after.
    fn s(&self, base: &str, i: usize) -> StrBytes {
        StrBytes::from_string(match i {
            0 => base.to_owned(),
            _ => format!("{base}-{i}-é"),
        })
    }

    /// A string of 150 bytes (its compact length takes two varint bytes).
    fn long(&self, base: &str) -> StrBytes {
        StrBytes::from_string(format!("{base}:{}", "x".repeat(149 - base.len())))
    }

    fn bytes(&self, base: &str, len: usize) -> Bytes {
        Bytes::from(base.bytes().cycle().take(len).collect::<Vec<u8>>())
    }

    /// A field nullable from version `from`: null in variant 1 there.
    fn opt<T>(&self, from: i16, x: T) -> Option<T> {
        (self.var != 1 || self.v < from).then_some(x)
    }

    /// An array: empty in variant 1.
    fn vec<T>(&self, f: impl FnMut(usize) -> T) -> Vec<T> {
        let n = if self.var == 1 { 0 } else { 2 };
        (0..n).map(f).collect()
    }

    /// An array of structs holding nullable fields: 2 elements always.
    fn keep<T>(&self, f: impl FnMut(usize) -> T) -> Vec<T> {
        (0..2).map(f).collect()
    }

    /// An array nullable from version `from`: null in variant 1 there,
    /// empty in variant 1 before.
    fn opt_vec<T>(&self, from: i16, f: impl FnMut(usize) -> T) -> Option<Vec<T>> {
        self.opt(from, self.vec(f))
    }

    /// Unknown tagged fields: in variant 2 of flexible versions.
    fn tags(&self) -> BTreeMap<i32, Bytes> {
        let mut m = BTreeMap::new();
        if self.var == 2 && self.key.request_header_version(self.v) >= 2 {
            m.insert(100, Bytes::from_static(b"\x01\x02\x03"));
            m.insert(200, Bytes::from_static(b"tagged field 200"));
        }
        m
    }
}

/// `f(self)` if `cond`: sets a field in the versions that carry it.
trait At: Sized {
    fn at(self, cond: bool, f: impl FnOnce(Self) -> Self) -> Self {
        if cond {
            f(self)
        } else {
            self
        }
    }
}

impl<T> At for T {}

fn topic(c: &C, i: usize) -> TopicName {
    TopicName(c.s("topic", i))
}

fn group(c: &C, i: usize) -> GroupId {
    GroupId(c.s("group", i))
}

fn brokers(c: &C) -> Vec<BrokerId> {
    c.vec(|i| BrokerId(i as i32 + 4))
}

/// A topic id: parsed, as the codec's uuid type is not re-exported.
fn uuid<T: std::str::FromStr>(i: usize) -> T
where
    T::Err: fmt::Debug,
{
    format!(
        "{:032x}",
        0x0123_4567_89ab_cdef_0011_2233_4455_6677_u128 + i as u128
    )
    .parse()
    .expect("uuid")
}

/// A record batch (magic 2) of 2 records, each with key, value and header.
fn batch(n: usize) -> Bytes {
    let records: Vec<Record> = (0..2)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: -1,
            timestamp: 1_700_000_000_000 + i,
            key: Some(Bytes::from(format!("key-{n}-{i}"))),
            value: Some(Bytes::from(format!("value-{n}-{i} ").repeat(8))),
            headers: [(
                StrBytes::from_static_str("trace"),
                Some(Bytes::from(format!("h{n}{i}"))),
            )]
            .into_iter()
            .collect(),
        })
        .collect();
    crate::wire_tests::encode_batch(&records)
}

fn produce(c: &C) -> ProduceRequest {
    ProduceRequest::default()
        .at(c.has(3, 11), |r| {
            r.with_transactional_id(c.opt(3, TransactionalId(c.s("txn", 1))))
        })
        .with_acks(-1)
        .with_timeout_ms(1500)
        .with_topic_data(c.keep(|i| {
            TopicProduceData::default()
                .with_name(topic(c, i))
                .with_partition_data(c.keep(|j| {
                    PartitionProduceData::default()
                        .with_index(j as i32 + 1)
                        .with_records(c.opt(0, batch(2 * i + j)))
                        .with_unknown_tagged_fields(c.tags())
                }))
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_unknown_tagged_fields(c.tags())
}

fn fetch(c: &C) -> FetchRequest {
    FetchRequest::default()
        .at(c.has(12, 17) && c.var != 1, |r| {
            r.with_cluster_id(Some(c.s("cluster", 1)))
        })
        .with_replica_id(BrokerId(7))
        .with_max_wait_ms(250)
        .with_min_bytes(3)
        .at(c.has(3, 17), |r| r.with_max_bytes(1 << 20))
        .at(c.has(4, 17), |r| r.with_isolation_level(1))
        .at(c.has(7, 17), |r| {
            r.with_session_id(11).with_session_epoch(3)
        })
        .with_topics(c.vec(|i| {
            FetchTopic::default()
                .with_topic(topic(c, i))
                .with_partitions(c.vec(|j| {
                    FetchPartition::default()
                        .with_partition(j as i32 + 2)
                        .at(c.has(9, 17), |p| p.with_current_leader_epoch(5))
                        .with_fetch_offset(1000 + j as i64)
                        .at(c.has(12, 17), |p| p.with_last_fetched_epoch(4))
                        .at(c.has(5, 17), |p| p.with_log_start_offset(12))
                        .with_partition_max_bytes(65536)
                        .with_unknown_tagged_fields(c.tags())
                }))
                .with_unknown_tagged_fields(c.tags())
        }))
        .at(c.has(7, 12), |r| {
            r.with_forgotten_topics_data(c.vec(|i| {
                ForgottenTopic::default()
                    .with_topic(TopicName(c.s("gone", i)))
                    .with_partitions(c.vec(|j| 9 + j as i32))
                    .with_unknown_tagged_fields(c.tags())
            }))
        })
        .at(c.has(11, 17), |r| r.with_rack_id(c.long("rack")))
        .with_unknown_tagged_fields(c.tags())
}

fn list_offsets(c: &C) -> ListOffsetsRequest {
    ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .at(c.has(2, 9), |r| r.with_isolation_level(1))
        .with_topics(c.vec(|i| {
            ListOffsetsTopic::default()
                .with_name(topic(c, i))
                .with_partitions(c.vec(|j| {
                    ListOffsetsPartition::default()
                        .with_partition_index(j as i32 + 1)
                        .at(c.has(4, 9), |p| p.with_current_leader_epoch(6))
                        .with_timestamp(-2 + j as i64)
                        .at(c.v == 0, |p| p.with_max_num_offsets(3))
                        .with_unknown_tagged_fields(c.tags())
                }))
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_unknown_tagged_fields(c.tags())
}

fn metadata(c: &C) -> MetadataRequest {
    MetadataRequest::default()
        .with_topics(c.opt_vec(1, |i| {
            MetadataRequestTopic::default()
                .at(c.has(10, 12), |t| t.with_topic_id(uuid(i)))
                .with_name(c.opt(10, topic(c, i)))
                .with_unknown_tagged_fields(c.tags())
        }))
        .at(c.has(4, 12), |r| r.with_allow_auto_topic_creation(false))
        .at(c.has(8, 10), |r| {
            r.with_include_cluster_authorized_operations(true)
        })
        .at(c.has(8, 12), |r| {
            r.with_include_topic_authorized_operations(true)
        })
        .with_unknown_tagged_fields(c.tags())
}

fn api_versions(c: &C) -> ApiVersionsRequest {
    ApiVersionsRequest::default()
        .at(c.has(3, 4), |r| {
            r.with_client_software_name(c.s("sluice-sample", 0))
                .with_client_software_version(c.s("1.0", 1))
        })
        .with_unknown_tagged_fields(c.tags())
}

fn create_topics(c: &C) -> CreateTopicsRequest {
    CreateTopicsRequest::default()
        .with_topics(c.keep(|i| {
            CreatableTopic::default()
                .with_name(topic(c, i))
                .with_num_partitions(-1 + 4 * i as i32)
                .with_replication_factor(1 + i as i16)
                .with_assignments(c.vec(|j| {
                    CreatableReplicaAssignment::default()
                        .with_partition_index(j as i32 + 1)
                        .with_broker_ids(brokers(c))
                        .with_unknown_tagged_fields(c.tags())
                }))
                .with_configs(c.keep(|j| {
                    let value = [c.s("delete", 0), c.long("compact")][j].clone();
                    CreatableTopicConfig::default()
                        .with_name(c.s("cleanup.policy", j))
                        .with_value(c.opt(0, value))
                        .with_unknown_tagged_fields(c.tags())
                }))
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_timeout_ms(7000)
        .at(c.has(1, 7), |r| r.with_validate_only(true))
        .with_unknown_tagged_fields(c.tags())
}

fn delete_topics(c: &C) -> DeleteTopicsRequest {
    DeleteTopicsRequest::default()
        .at(c.v == 6, |r| {
            r.with_topics(c.keep(|i| {
                DeleteTopicState::default()
                    .with_name(c.opt(6, topic(c, i)))
                    .with_topic_id(uuid(i))
                    .with_unknown_tagged_fields(c.tags())
            }))
        })
        .at(c.has(0, 5), |r| r.with_topic_names(c.vec(|i| topic(c, i))))
        .with_timeout_ms(3000)
        .with_unknown_tagged_fields(c.tags())
}

fn find_coordinator(c: &C) -> FindCoordinatorRequest {
    FindCoordinatorRequest::default()
        .at(c.has(0, 3), |r| r.with_key(c.s("group", 1)))
        .at(c.has(1, 6), |r| r.with_key_type(1))
        .at(c.has(4, 6), |r| {
            r.with_coordinator_keys(c.vec(|i| c.s("txn", i)))
        })
        .with_unknown_tagged_fields(c.tags())
}

fn join_group(c: &C) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(group(c, 1))
        .with_session_timeout_ms(45000)
        .at(c.has(1, 9), |r| r.with_rebalance_timeout_ms(60000))
        .with_member_id(c.s("member", 0))
        .at(c.has(5, 9), |r| {
            r.with_group_instance_id(c.opt(5, c.s("instance", 1)))
        })
        .with_protocol_type(c.s("consumer", 0))
        .with_protocols(c.vec(|i| {
            JoinGroupRequestProtocol::default()
                .with_name(c.s("range", i))
                .with_metadata(c.bytes("subscription", 40 + 120 * i))
                .with_unknown_tagged_fields(c.tags())
        }))
        .at(c.has(8, 9), |r| r.with_reason(c.opt(8, c.s("rejoin", 0))))
        .with_unknown_tagged_fields(c.tags())
}

fn sync_group(c: &C) -> SyncGroupRequest {
    SyncGroupRequest::default()
        .with_group_id(group(c, 0))
        .with_generation_id(3)
        .with_member_id(c.s("member", 1))
        .at(c.has(3, 5), |r| {
            r.with_group_instance_id(c.opt(3, c.s("instance", 0)))
        })
        .at(c.v == 5, |r| {
            r.with_protocol_type(c.opt(5, c.s("consumer", 1)))
                .with_protocol_name(c.opt(5, c.s("range", 0)))
        })
        .with_assignments(c.vec(|i| {
            SyncGroupRequestAssignment::default()
                .with_member_id(c.s("member", i))
                .with_assignment(c.bytes("assignment", 10 + 5 * i))
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_unknown_tagged_fields(c.tags())
}

fn heartbeat(c: &C) -> HeartbeatRequest {
    HeartbeatRequest::default()
        .with_group_id(group(c, 1))
        .with_generation_id(8)
        .with_member_id(c.s("member", 0))
        .at(c.has(3, 4), |r| {
            r.with_group_instance_id(c.opt(3, c.s("instance", 1)))
        })
        .with_unknown_tagged_fields(c.tags())
}

fn leave_group(c: &C) -> LeaveGroupRequest {
    LeaveGroupRequest::default()
        .with_group_id(group(c, 0))
        .at(c.has(0, 2), |r| r.with_member_id(c.s("member", 1)))
        .at(c.has(3, 5), |r| {
            r.with_members(c.keep(|i| {
                MemberIdentity::default()
                    .with_member_id(c.s("member", i))
                    .with_group_instance_id(c.opt(3, c.s("instance", i)))
                    .at(c.v == 5, |m| m.with_reason(c.opt(5, c.s("shutdown", i))))
                    .with_unknown_tagged_fields(c.tags())
            }))
        })
        .with_unknown_tagged_fields(c.tags())
}

fn offset_commit(c: &C) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(group(c, 1))
        .at(c.has(1, 9), |r| {
            r.with_generation_id_or_member_epoch(4)
                .with_member_id(c.s("member", 0))
        })
        .at(c.has(7, 9), |r| {
            r.with_group_instance_id(c.opt(7, c.s("instance", 0)))
        })
        .at(c.has(2, 4), |r| r.with_retention_time_ms(86_400_000))
        .with_topics(c.keep(|i| {
            OffsetCommitRequestTopic::default()
                .with_name(topic(c, i))
                .with_partitions(c.keep(|j| {
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(j as i32 + 1)
                        .with_committed_offset(500 + j as i64)
                        .at(c.has(6, 9), |p| p.with_committed_leader_epoch(2))
                        .at(c.v == 1, |p| p.with_commit_timestamp(1_700_000_000_000))
                        .with_committed_metadata(c.opt(0, c.s("meta", j)))
                        .with_unknown_tagged_fields(c.tags())
                }))
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_unknown_tagged_fields(c.tags())
}

fn offset_fetch(c: &C) -> OffsetFetchRequest {
    OffsetFetchRequest::default()
        .at(c.has(0, 7), |r| {
            r.with_group_id(group(c, 0)).with_topics(c.opt_vec(2, |i| {
                OffsetFetchRequestTopic::default()
                    .with_name(topic(c, i))
                    .with_partition_indexes(c.vec(|j| j as i32 + 1))
                    .with_unknown_tagged_fields(c.tags())
            }))
        })
        .at(c.has(8, 9), |r| {
            r.with_groups(c.keep(|i| {
                OffsetFetchRequestGroup::default()
                    .with_group_id(group(c, i))
                    .at(c.v == 9, |g| {
                        g.with_member_id(c.opt(9, c.s("member", i)))
                            .with_member_epoch(6)
                    })
                    .with_topics(c.opt_vec(8, |j| {
                        OffsetFetchRequestTopics::default()
                            .with_name(topic(c, j))
                            .with_partition_indexes(c.vec(|k| k as i32 + 1))
                            .with_unknown_tagged_fields(c.tags())
                    }))
                    .with_unknown_tagged_fields(c.tags())
            }))
        })
        .at(c.has(7, 9), |r| r.with_require_stable(true))
        .with_unknown_tagged_fields(c.tags())
}

fn list_groups(c: &C) -> ListGroupsRequest {
    ListGroupsRequest::default()
        .at(c.has(4, 5), |r| {
            r.with_states_filter(c.vec(|i| c.s(["Stable", "Empty"][i], i)))
        })
        .at(c.v == 5, |r| {
            r.with_types_filter(c.vec(|i| c.s(["classic", "consumer"][i], i)))
        })
        .with_unknown_tagged_fields(c.tags())
}

fn describe_groups(c: &C) -> DescribeGroupsRequest {
    DescribeGroupsRequest::default()
        .with_groups(c.vec(|i| group(c, i)))
        .at(c.has(3, 5), |r| r.with_include_authorized_operations(true))
        .with_unknown_tagged_fields(c.tags())
}

fn delete_groups(c: &C) -> DeleteGroupsRequest {
    DeleteGroupsRequest::default()
        .with_groups_names(c.vec(|i| group(c, i)))
        .with_unknown_tagged_fields(c.tags())
}

fn offset_delete(c: &C) -> OffsetDeleteRequest {
    OffsetDeleteRequest::default()
        .with_group_id(group(c, 1))
        .with_topics(c.vec(|i| {
            OffsetDeleteRequestTopic::default()
                .with_name(topic(c, i))
                .with_partitions(c.vec(|j| {
                    OffsetDeleteRequestPartition::default().with_partition_index(j as i32 + 3)
                }))
        }))
}

fn init_producer_id(c: &C) -> InitProducerIdRequest {
    InitProducerIdRequest::default()
        .with_transactional_id(c.opt(0, TransactionalId(c.s("txn", 1))))
        .with_transaction_timeout_ms(60000)
        .at(c.has(3, 5), |r| {
            r.with_producer_id(ProducerId(4000)).with_producer_epoch(2)
        })
        .with_unknown_tagged_fields(c.tags())
}

fn create_partitions(c: &C) -> CreatePartitionsRequest {
    CreatePartitionsRequest::default()
        .with_topics(c.keep(|i| {
            CreatePartitionsTopic::default()
                .with_name(topic(c, i))
                .with_count(4 + i as i32)
                .with_assignments(c.opt_vec(0, |_| {
                    CreatePartitionsAssignment::default()
                        .with_broker_ids(brokers(c))
                        .with_unknown_tagged_fields(c.tags())
                }))
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_timeout_ms(2000)
        .with_validate_only(true)
        .with_unknown_tagged_fields(c.tags())
}

fn describe_configs(c: &C) -> DescribeConfigsRequest {
    DescribeConfigsRequest::default()
        .with_resources(c.keep(|i| {
            DescribeConfigsResource::default()
                .with_resource_type(2 + 2 * i as i8)
                .with_resource_name(c.s("resource", i))
                .with_configuration_keys(c.opt_vec(0, |j| c.s("retention.ms", j)))
                .with_unknown_tagged_fields(c.tags())
        }))
        .at(c.has(1, 4), |r| r.with_include_synonyms(true))
        .at(c.has(3, 4), |r| r.with_include_documentation(true))
        .with_unknown_tagged_fields(c.tags())
}

fn alter_configs(c: &C) -> AlterConfigsRequest {
    AlterConfigsRequest::default()
        .with_resources(c.keep(|i| {
            ac::AlterConfigsResource::default()
                .with_resource_type(2 + 2 * i as i8)
                .with_resource_name(c.s("resource", i))
                .with_configs(c.keep(|j| {
                    ac::AlterableConfig::default()
                        .with_name(c.s("segment.bytes", j))
                        .with_value(c.opt(0, c.s("1048576", j)))
                        .with_unknown_tagged_fields(c.tags())
                }))
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_validate_only(true)
        .with_unknown_tagged_fields(c.tags())
}

fn incremental_alter_configs(c: &C) -> IncrementalAlterConfigsRequest {
    IncrementalAlterConfigsRequest::default()
        .with_resources(c.keep(|i| {
            iac::AlterConfigsResource::default()
                .with_resource_type(2 + 2 * i as i8)
                .with_resource_name(c.s("resource", i))
                .with_configs(c.keep(|j| {
                    iac::AlterableConfig::default()
                        .with_name(c.s("retention.bytes", j))
                        .with_config_operation(1 + j as i8)
                        .with_value(c.opt(0, c.s("-1", j)))
                        .with_unknown_tagged_fields(c.tags())
                }))
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_validate_only(true)
        .with_unknown_tagged_fields(c.tags())
}

fn describe_cluster(c: &C) -> DescribeClusterRequest {
    DescribeClusterRequest::default()
        .with_include_cluster_authorized_operations(true)
        .at(c.v == 1, |r| r.with_endpoint_type(2))
        .with_unknown_tagged_fields(c.tags())
}

fn delete_records(c: &C) -> DeleteRecordsRequest {
    DeleteRecordsRequest::default()
        .with_topics(c.vec(|i| {
            DeleteRecordsTopic::default()
                .with_name(topic(c, i))
                .with_partitions(c.vec(|j| {
                    DeleteRecordsPartition::default()
                        .with_partition_index(j as i32 + 1)
                        .with_offset(42 + j as i64)
                        .with_unknown_tagged_fields(c.tags())
                }))
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_timeout_ms(4000)
        .with_unknown_tagged_fields(c.tags())
}

fn offset_for_leader_epoch(c: &C) -> OffsetForLeaderEpochRequest {
    OffsetForLeaderEpochRequest::default()
        .at(c.has(3, 4), |r| r.with_replica_id(BrokerId(2)))
        .with_topics(c.vec(|i| {
            OffsetForLeaderTopic::default()
                .with_topic(topic(c, i))
                .with_partitions(c.vec(|j| {
                    OffsetForLeaderPartition::default()
                        .with_partition(j as i32 + 1)
                        .at(c.has(2, 4), |p| p.with_current_leader_epoch(7))
                        .with_leader_epoch(6 - j as i32)
                        .with_unknown_tagged_fields(c.tags())
                }))
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_unknown_tagged_fields(c.tags())
}

fn elect_leaders(c: &C) -> ElectLeadersRequest {
    use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
    ElectLeadersRequest::default()
        .at(c.has(1, 2), |r| r.with_election_type(1))
        .with_topic_partitions(c.opt_vec(0, |i| {
            TopicPartitions::default()
                .with_topic(topic(c, i))
                .with_partitions(c.vec(|j| j as i32 + 1))
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_timeout_ms(6000)
        .with_unknown_tagged_fields(c.tags())
}

fn alter_partition_reassignments(c: &C) -> AlterPartitionReassignmentsRequest {
    use kafka_protocol::messages::alter_partition_reassignments_request::{
        ReassignablePartition, ReassignableTopic,
    };
    AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(6000)
        .with_topics(c.vec(|i| {
            ReassignableTopic::default()
                .with_name(topic(c, i))
                .with_partitions(c.keep(|j| {
                    ReassignablePartition::default()
                        .with_partition_index(j as i32)
                        .with_replicas(c.opt(0, brokers(c)))
                        .with_unknown_tagged_fields(c.tags())
                }))
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_unknown_tagged_fields(c.tags())
}

fn list_partition_reassignments(c: &C) -> ListPartitionReassignmentsRequest {
    use kafka_protocol::messages::list_partition_reassignments_request::ListPartitionReassignmentsTopics;
    ListPartitionReassignmentsRequest::default()
        .with_timeout_ms(6000)
        .with_topics(c.opt_vec(0, |i| {
            ListPartitionReassignmentsTopics::default()
                .with_name(topic(c, i))
                .with_partition_indexes(c.vec(|j| j as i32))
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_unknown_tagged_fields(c.tags())
}

fn describe_log_dirs(c: &C) -> DescribeLogDirsRequest {
    use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
    DescribeLogDirsRequest::default()
        .with_topics(c.opt_vec(0, |i| {
            DescribableLogDirTopic::default()
                .with_topic(topic(c, i))
                .with_partitions(c.vec(|j| j as i32 + 2))
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_unknown_tagged_fields(c.tags())
}

fn alter_replica_log_dirs(c: &C) -> AlterReplicaLogDirsRequest {
    use kafka_protocol::messages::alter_replica_log_dirs_request::{
        AlterReplicaLogDir, AlterReplicaLogDirTopic,
    };
    AlterReplicaLogDirsRequest::default()
        .with_dirs(c.vec(|i| {
            AlterReplicaLogDir::default()
                .with_path([c.s("/data/sluice", i), c.long("/data/other")][i].clone())
                .with_topics(c.vec(|j| {
                    AlterReplicaLogDirTopic::default()
                        .with_name(topic(c, j))
                        .with_partitions(c.vec(|k| k as i32))
                        .with_unknown_tagged_fields(c.tags())
                }))
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_unknown_tagged_fields(c.tags())
}

fn txn_id(c: &C, i: usize) -> TransactionalId {
    TransactionalId(c.s("txn", i))
}

fn add_partitions_to_txn(c: &C) -> AddPartitionsToTxnRequest {
    use kafka_protocol::messages::add_partitions_to_txn_request::{
        AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
    };
    let topics = || {
        c.vec(|i| {
            AddPartitionsToTxnTopic::default()
                .with_name(topic(c, i))
                .with_partitions(c.vec(|j| j as i32 + 1))
                .with_unknown_tagged_fields(c.tags())
        })
    };
    AddPartitionsToTxnRequest::default()
        .at(c.has(4, 5), |r| {
            r.with_transactions(c.vec(|i| {
                AddPartitionsToTxnTransaction::default()
                    .with_transactional_id(
                        [txn_id(c, i), TransactionalId(c.long("txn"))][i].clone(),
                    )
                    .with_producer_id(ProducerId(4000 + i as i64))
                    .with_producer_epoch(2 + i as i16)
                    .with_verify_only(true)
                    .with_topics(topics())
                    .with_unknown_tagged_fields(c.tags())
            }))
        })
        .at(c.has(0, 3), |r| {
            r.with_v3_and_below_transactional_id(txn_id(c, 1))
                .with_v3_and_below_producer_id(ProducerId(4000))
                .with_v3_and_below_producer_epoch(2)
                .with_v3_and_below_topics(topics())
        })
        .with_unknown_tagged_fields(c.tags())
}

fn add_offsets_to_txn(c: &C) -> AddOffsetsToTxnRequest {
    AddOffsetsToTxnRequest::default()
        .with_transactional_id(txn_id(c, 1))
        .with_producer_id(ProducerId(4000))
        .with_producer_epoch(2)
        .with_group_id(GroupId(c.long("group")))
        .with_unknown_tagged_fields(c.tags())
}

fn end_txn(c: &C) -> EndTxnRequest {
    EndTxnRequest::default()
        .with_transactional_id(txn_id(c, 1))
        .with_producer_id(ProducerId(4000))
        .with_producer_epoch(2)
        .with_committed(true)
        .with_unknown_tagged_fields(c.tags())
}

fn write_txn_markers(c: &C) -> WriteTxnMarkersRequest {
    use kafka_protocol::messages::write_txn_markers_request::{
        WritableTxnMarker, WritableTxnMarkerTopic,
    };
    WriteTxnMarkersRequest::default()
        .with_markers(c.vec(|i| {
            WritableTxnMarker::default()
                .with_producer_id(ProducerId(4000 + i as i64))
                .with_producer_epoch(2)
                .with_transaction_result(true)
                .with_topics(c.vec(|j| {
                    WritableTxnMarkerTopic::default()
                        .with_name(topic(c, j))
                        .with_partition_indexes(c.vec(|k| k as i32 + 1))
                        .with_unknown_tagged_fields(c.tags())
                }))
                .with_coordinator_epoch(5)
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_unknown_tagged_fields(c.tags())
}

fn txn_offset_commit(c: &C) -> TxnOffsetCommitRequest {
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    TxnOffsetCommitRequest::default()
        .with_transactional_id(txn_id(c, 1))
        .with_group_id(group(c, 0))
        .with_producer_id(ProducerId(4000))
        .with_producer_epoch(2)
        .at(c.has(3, 4), |r| {
            r.with_generation_id(4)
                .with_member_id(c.s("member", 1))
                .with_group_instance_id(c.opt(3, c.s("instance", 0)))
        })
        .with_topics(c.keep(|i| {
            TxnOffsetCommitRequestTopic::default()
                .with_name(topic(c, i))
                .with_partitions(c.keep(|j| {
                    TxnOffsetCommitRequestPartition::default()
                        .with_partition_index(j as i32 + 1)
                        .with_committed_offset(700 + j as i64)
                        .at(c.has(2, 4), |p| p.with_committed_leader_epoch(3))
                        .with_committed_metadata(
                            c.opt(0, [c.s("meta", 0), c.long("meta")][j].clone()),
                        )
                        .with_unknown_tagged_fields(c.tags())
                }))
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_unknown_tagged_fields(c.tags())
}

fn describe_transactions(c: &C) -> DescribeTransactionsRequest {
    DescribeTransactionsRequest::default()
        .with_transactional_ids(c.vec(|i| txn_id(c, i)))
        .with_unknown_tagged_fields(c.tags())
}

fn sasl_handshake(c: &C) -> SaslHandshakeRequest {
    SaslHandshakeRequest::default().with_mechanism(c.s("SCRAM-SHA-512", c.var as usize))
}

fn sasl_authenticate(c: &C) -> SaslAuthenticateRequest {
    // Not nullable: empty in variant 1, else long enough for a two-byte
    // compact length.
    let len = if c.var == 1 { 0 } else { 300 };
    SaslAuthenticateRequest::default()
        .with_auth_bytes(c.bytes("n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL", len))
        .with_unknown_tagged_fields(c.tags())
}

fn describe_acls(c: &C) -> DescribeAclsRequest {
    DescribeAclsRequest::default()
        .with_resource_type_filter(2)
        .with_resource_name_filter(c.opt(0, c.s("orders", 0)))
        .at(c.v >= 1, |r| r.with_pattern_type_filter(4))
        .with_principal_filter(c.opt(0, c.s("User:alice", 1)))
        .with_host_filter(c.opt(0, c.s("*", 0)))
        .with_operation(4)
        .with_permission_type(3)
        .with_unknown_tagged_fields(c.tags())
}

fn create_acls(c: &C) -> CreateAclsRequest {
    use kafka_protocol::messages::create_acls_request::AclCreation;
    CreateAclsRequest::default()
        .with_creations(c.vec(|i| {
            AclCreation::default()
                .with_resource_type(2 + i as i8)
                .with_resource_name(c.s("orders", i))
                .at(c.v >= 1, |a| a.with_resource_pattern_type(3 + i as i8))
                .with_principal(c.long("User:alice"))
                .with_host(c.s("*", i))
                .with_operation(3)
                .with_permission_type(3)
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_unknown_tagged_fields(c.tags())
}

fn delete_acls(c: &C) -> DeleteAclsRequest {
    use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
    DeleteAclsRequest::default()
        .with_filters(c.keep(|i| {
            DeleteAclsFilter::default()
                .with_resource_type_filter(1 + i as i8)
                .with_resource_name_filter(c.opt(0, c.s("orders", i)))
                .at(c.v >= 1, |f| f.with_pattern_type_filter(2))
                .with_principal_filter(c.opt(0, c.s("User:bob", i)))
                .with_host_filter(c.opt(0, c.s("10.0.0.1", i)))
                .with_operation(1)
                .with_permission_type(1)
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_unknown_tagged_fields(c.tags())
}

fn describe_client_quotas(c: &C) -> DescribeClientQuotasRequest {
    use kafka_protocol::messages::describe_client_quotas_request::ComponentData;
    DescribeClientQuotasRequest::default()
        .with_components(c.keep(|i| {
            ComponentData::default()
                .with_entity_type(c.s(["user", "client-id"][i], 0))
                .with_match_type(i as i8)
                .with_match(c.opt(0, c.s("alice", i)))
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_strict(true)
        .with_unknown_tagged_fields(c.tags())
}

fn alter_client_quotas(c: &C) -> AlterClientQuotasRequest {
    use kafka_protocol::messages::alter_client_quotas_request::{EntityData, EntryData, OpData};
    AlterClientQuotasRequest::default()
        .with_entries(c.keep(|i| {
            EntryData::default()
                .with_entity(c.keep(|j| {
                    EntityData::default()
                        .with_entity_type(c.s(["user", "client-id"][j], 0))
                        .with_entity_name(c.opt(0, c.s(["alice", "app"][j], i)))
                        .with_unknown_tagged_fields(c.tags())
                }))
                .with_ops(c.vec(|j| {
                    OpData::default()
                        .with_key(c.s("producer_byte_rate", j))
                        .with_value(1024.0 * (j + 1) as f64)
                        .with_remove(j == 1)
                        .with_unknown_tagged_fields(c.tags())
                }))
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_validate_only(true)
        .with_unknown_tagged_fields(c.tags())
}

fn describe_user_scram_credentials(c: &C) -> DescribeUserScramCredentialsRequest {
    use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
    DescribeUserScramCredentialsRequest::default()
        .with_users(c.opt_vec(0, |i| {
            UserName::default()
                .with_name(c.s("alice", i))
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_unknown_tagged_fields(c.tags())
}

fn alter_user_scram_credentials(c: &C) -> AlterUserScramCredentialsRequest {
    use kafka_protocol::messages::alter_user_scram_credentials_request::{
        ScramCredentialDeletion, ScramCredentialUpsertion,
    };
    AlterUserScramCredentialsRequest::default()
        .with_deletions(c.vec(|i| {
            ScramCredentialDeletion::default()
                .with_name(c.s("bob", i))
                .with_mechanism(1 + i as i8)
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_upsertions(c.vec(|i| {
            ScramCredentialUpsertion::default()
                .with_name(c.s("alice", i))
                .with_mechanism(2 - i as i8)
                .with_iterations(4096)
                .with_salt(c.bytes("salt", 32))
                .with_salted_password(c.bytes("salted", 64 - 32 * i))
                .with_unknown_tagged_fields(c.tags())
        }))
        .with_unknown_tagged_fields(c.tags())
}

fn list_transactions(c: &C) -> ListTransactionsRequest {
    ListTransactionsRequest::default()
        .with_state_filters(c.vec(|i| c.s(["Ongoing", "PrepareCommit"][i], i)))
        .with_producer_id_filters(c.vec(|i| ProducerId(4000 + i as i64)))
        .at(c.v == 1, |r| r.with_duration_filter(60_000))
        .with_unknown_tagged_fields(c.tags())
}

#[test]
fn every_sample_round_trips() {
    use kafka_protocol::protocol::Decodable;

    fn check<T>(built: T, c: &C, bytes: &Bytes)
    where
        T: Encodable + Decodable + PartialEq + fmt::Debug,
    {
        let mut rest = bytes.clone();
        let decoded = T::decode(&mut rest, c.v).unwrap_or_else(|e| panic!("{c}: decode: {e:#}"));
        assert!(rest.is_empty(), "{c}: {} bytes left", rest.len());
        assert_eq!(decoded, built, "{c}: decodes to another request");
        assert_eq!(encode(decoded, c), *bytes, "{c}: re-encodes differently");
    }

    let all = all();
    for (key, v, var, bytes) in &all {
        let c = C {
            key: *key,
            v: *v,
            var: *var,
        };
        per_key!(c.key, &c, check, &c, bytes);
    }
    let versions: i16 = served().iter().map(|(_, min, max)| max - min + 1).sum();
    assert_eq!(all.len(), versions as usize * VARIANTS as usize);
}

/// A body already encoded.
pub struct RawBody(pub Bytes);

impl Encodable for RawBody {
    fn encode<B: kafka_protocol::protocol::buf::ByteBufMut>(
        &self,
        buf: &mut B,
        _version: i16,
    ) -> anyhow::Result<()> {
        buf.put_slice(&self.0);
        Ok(())
    }
    fn compute_size(&self, _version: i16) -> anyhow::Result<usize> {
        Ok(self.0.len())
    }
}
