//! Kafka API handlers, one file per API, and the dispatch between them.
//!
//! A handler takes a decoded request and its version and returns the
//! response body; the connection loop owns framing and headers. Handlers run
//! on the shard that accepted the connection; the data plane routes
//! partition work to the owning shard.

pub mod alter_configs;
pub mod api_versions;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod fetch;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod list_offsets;
pub mod metadata;
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

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ResponseKind, TopicName};
use kafka_protocol::protocol::{Decodable, StrBytes};
use sluice_raft::{Metadata, MetadataView, TopicMeta};

use crate::plane::{ResponseMemory, Shard};

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
}

/// What a handler may use: this shard's data plane, the metadata service
/// and the node facts.
pub struct Ctx {
    pub shard: Rc<Shard>,
    pub meta: Metadata,
    pub node: Arc<NodeInfo>,
}

impl Ctx {
    pub fn view(&self) -> Arc<MetadataView> {
        self.meta.view()
    }

    /// The topic's metadata, if it exists.
    pub fn topic(&self, name: &str) -> Option<Arc<TopicMeta>> {
        self.view().topics.get(name).cloned()
    }
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
}

/// Decodes the body of a supported request and runs its handler. `None`:
/// no response is due (produce with acks=0).
pub async fn dispatch(
    key: ApiKey,
    version: i16,
    body: &mut Bytes,
    ctx: &Ctx,
) -> Result<Option<Response>, DecodeError> {
    let response = match key {
        ApiKey::ApiVersions => {
            ResponseKind::ApiVersions(api_versions::handle(&decode(body, version)?, version))
        }
        ApiKey::Metadata => {
            ResponseKind::Metadata(metadata::handle(decode(body, version)?, version, ctx).await)
        }
        ApiKey::CreateTopics => ResponseKind::CreateTopics(
            create_topics::handle(decode(body, version)?, version, ctx).await,
        ),
        ApiKey::DeleteTopics => ResponseKind::DeleteTopics(
            delete_topics::handle(decode(body, version)?, version, ctx).await,
        ),
        ApiKey::Produce => match produce::handle(decode(body, version)?, version, ctx).await {
            Some(r) => ResponseKind::Produce(r),
            None => return Ok(None),
        },
        ApiKey::Fetch => {
            let (r, held) = fetch::handle(decode(body, version)?, version, ctx).await;
            return Ok(Some(Response {
                body: ResponseKind::Fetch(r),
                held,
            }));
        }
        ApiKey::ListOffsets => ResponseKind::ListOffsets(
            list_offsets::handle(decode(body, version)?, version, ctx).await,
        ),
        ApiKey::InitProducerId => ResponseKind::InitProducerId(
            init_producer_id::handle(decode(body, version)?, version, ctx).await,
        ),
        ApiKey::CreatePartitions => ResponseKind::CreatePartitions(
            create_partitions::handle(decode(body, version)?, version, ctx).await,
        ),
        ApiKey::DescribeConfigs => ResponseKind::DescribeConfigs(describe_configs::handle(
            decode(body, version)?,
            version,
            ctx,
        )),
        ApiKey::AlterConfigs => ResponseKind::AlterConfigs(
            alter_configs::handle(decode(body, version)?, version, ctx).await,
        ),
        ApiKey::IncrementalAlterConfigs => ResponseKind::IncrementalAlterConfigs(
            incremental_alter_configs::handle(decode(body, version)?, version, ctx).await,
        ),
        ApiKey::DescribeCluster => ResponseKind::DescribeCluster(describe_cluster::handle(
            &decode(body, version)?,
            version,
            ctx,
        )),
        ApiKey::DeleteRecords => ResponseKind::DeleteRecords(
            delete_records::handle(decode(body, version)?, version, ctx).await,
        ),
        other => match dispatch_groups(other, version, body, ctx).await? {
            Some(r) => r,
            None => return Err(DecodeError(format!("api {other:?} is not served"))),
        },
    };
    Ok(Some(Response {
        body: response,
        held: None,
    }))
}

/// The consumer-group APIs; `None` for any other key.
async fn dispatch_groups(
    key: ApiKey,
    version: i16,
    body: &mut Bytes,
    ctx: &Ctx,
) -> Result<Option<ResponseKind>, DecodeError> {
    let b = body;
    let v = version;
    Ok(Some(match key {
        ApiKey::FindCoordinator => {
            ResponseKind::FindCoordinator(find_coordinator::handle(decode(b, v)?, v, ctx))
        }
        ApiKey::JoinGroup => {
            ResponseKind::JoinGroup(join_group::handle(decode(b, v)?, v, ctx).await)
        }
        ApiKey::SyncGroup => {
            ResponseKind::SyncGroup(sync_group::handle(decode(b, v)?, v, ctx).await)
        }
        ApiKey::Heartbeat => {
            ResponseKind::Heartbeat(heartbeat::handle(decode(b, v)?, v, ctx).await)
        }
        ApiKey::LeaveGroup => {
            ResponseKind::LeaveGroup(leave_group::handle(decode(b, v)?, v, ctx).await)
        }
        ApiKey::OffsetCommit => {
            ResponseKind::OffsetCommit(offset_commit::handle(decode(b, v)?, v, ctx).await)
        }
        ApiKey::OffsetFetch => {
            ResponseKind::OffsetFetch(offset_fetch::handle(decode(b, v)?, v, ctx).await)
        }
        ApiKey::ListGroups => {
            ResponseKind::ListGroups(list_groups::handle(decode(b, v)?, v, ctx).await)
        }
        ApiKey::DescribeGroups => {
            ResponseKind::DescribeGroups(describe_groups::handle(decode(b, v)?, v, ctx).await)
        }
        ApiKey::DeleteGroups => {
            ResponseKind::DeleteGroups(delete_groups::handle(decode(b, v)?, v, ctx).await)
        }
        ApiKey::OffsetDelete => {
            ResponseKind::OffsetDelete(offset_delete::handle(decode(b, v)?, v, ctx).await)
        }
        _ => return Ok(None),
    }))
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
