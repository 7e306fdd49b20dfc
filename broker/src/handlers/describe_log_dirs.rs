//! DescribeLogDirs (key 35). A node has one log dir: its data dir (every
//! shard's WAL and the metadata log live under it); the answer names it
//! (absolute path) and lists every partition replica the node holds in it,
//! each with the bytes of its stored record batches and its offset lag
//! (how far its log end is behind the high watermark it knows: 0 on the
//! leader), gathered in one pass over each shard's partitions
//! (`Shard::partition_disk`; the other shards answer over the mesh). v4
//! adds the file system's total and usable bytes (`statvfs`). `topics`
//! null lists every partition, otherwise the named ones held here.
//! Needs DESCRIBE on the cluster (`--authorizer`), else no dir and
//! CLUSTER_AUTHORIZATION_FAILED (v3+; earlier versions carry no code), as
//! in Kafka.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse};

use kafka_protocol::ResponseError;

use super::{str_bytes, topic_name, Ctx};
use crate::errors::shard_error_code;
use crate::security::{AclOperation, Session};

/// First version with a top-level error code.
const ERROR_CODE_MIN_VERSION: i16 = 3;

/// This node's one log dir (the data dir, absolute when it could be
/// resolved at start).
pub fn log_dir(ctx: &Ctx) -> String {
    ctx.node
        .broker_configs
        .iter()
        .find(|c| c.name == "log.dirs")
        .and_then(|c| c.value.clone())
        .unwrap_or_default()
}

pub async fn handle(
    req: DescribeLogDirsRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> DescribeLogDirsResponse {
    let mut resp = DescribeLogDirsResponse::default();
    if !ctx.allowed_on_cluster(session, AclOperation::Describe) {
        if version >= ERROR_CODE_MIN_VERSION {
            resp.error_code = ResponseError::ClusterAuthorizationFailed.code();
        }
        return resp;
    }
    let dir = log_dir(ctx);
    let mut result = DescribeLogDirsResult::default();
    result.log_dir = str_bytes(dir.clone());
    if version >= 4 {
        let (total, usable) = disk_bytes(&dir);
        result.total_bytes = total;
        result.usable_bytes = usable;
    }
    let wanted: Option<BTreeSet<(String, i32)>> = req.topics.as_ref().map(|topics| {
        topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| (t.topic.to_string(), *p)))
            .collect()
    });
    match ctx.shard.partition_disk().await {
        Ok(held) => {
            let view = ctx.view();
            let mut by_topic: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
            for p in held {
                let Some(name) = view.topic_ids.get(&p.topic_id) else {
                    continue; // Deleted since the view the shard applied.
                };
                let index = i32::try_from(p.partition).unwrap_or(i32::MAX);
                if wanted
                    .as_ref()
                    .is_some_and(|w| !w.contains(&(name.to_string(), index)))
                {
                    continue;
                }
                let mut out = DescribeLogDirsPartition::default();
                out.partition_index = index;
                out.partition_size = i64::try_from(p.bytes).unwrap_or(i64::MAX);
                out.offset_lag = p.offset_lag;
                by_topic.entry(name.to_string()).or_default().push(out);
            }
            result.topics = by_topic
                .into_iter()
                .map(|(name, mut partitions)| {
                    partitions.sort_by_key(|p| p.partition_index);
                    let mut t = DescribeLogDirsTopic::default();
                    t.name = topic_name(&name);
                    t.partitions = partitions;
                    t
                })
                .collect();
        }
        Err(e) => result.error_code = shard_error_code(&e),
    }
    resp.results = vec![result];
    resp
}

/// Total and available bytes of the file system holding `dir`; -1 each
/// when unknown.
fn disk_bytes(dir: &str) -> (i64, i64) {
    let Ok(path) = std::ffi::CString::new(dir) else {
        return (-1, -1);
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `st` a valid out value.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return (-1, -1);
    }
    let block = st.f_frsize as u64;
    let total = (st.f_blocks as u64).saturating_mul(block);
    let usable = (st.f_bavail as u64).saturating_mul(block);
    (
        i64::try_from(total).unwrap_or(i64::MAX),
        i64::try_from(usable).unwrap_or(i64::MAX),
    )
}
