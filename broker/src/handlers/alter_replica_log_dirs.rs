//! AlterReplicaLogDirs (key 34). A node has one log dir (its data dir,
//! see `describe_log_dirs`), so no replica can move between dirs: a
//! partition asked to go to that dir is answered NONE (it is there), one
//! asked to go anywhere else LOG_DIR_NOT_FOUND; a topic that does not
//! exist gets UNKNOWN_TOPIC_OR_PARTITION. The response carries no message,
//! so the refusal is logged once per request at debug, naming the one dir.
//! Needs ALTER on the cluster (`--authorizer`), else every partition gets
//! CLUSTER_AUTHORIZATION_FAILED, as Kafka's error response.

use kafka_protocol::messages::alter_replica_log_dirs_response::{
    AlterReplicaLogDirPartitionResult, AlterReplicaLogDirTopicResult,
};
use kafka_protocol::messages::{AlterReplicaLogDirsRequest, AlterReplicaLogDirsResponse};

use kafka_protocol::ResponseError;

use super::describe_log_dirs::log_dir;
use super::Ctx;
use crate::errors::codes;
use crate::security::{AclOperation, Session};

pub fn handle(
    req: AlterReplicaLogDirsRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> AlterReplicaLogDirsResponse {
    let allowed = ctx.allowed_on_cluster(session, AclOperation::Alter);
    let dir = log_dir(ctx);
    let mut resp = AlterReplicaLogDirsResponse::default();
    let mut refused = 0usize;
    for d in &req.dirs {
        let same = same_dir(d.path.as_str(), &dir);
        for t in &d.topics {
            let exists = ctx.topic(t.name.as_str());
            let mut out = AlterReplicaLogDirTopicResult::default();
            out.topic_name = t.name.clone();
            out.partitions = t
                .partitions
                .iter()
                .map(|&p| {
                    let mut r = AlterReplicaLogDirPartitionResult::default();
                    r.partition_index = p;
                    let known = exists.as_ref().is_some_and(|topic| {
                        usize::try_from(p).is_ok_and(|i| i < topic.partitions.len())
                    });
                    r.error_code = if !allowed {
                        ResponseError::ClusterAuthorizationFailed.code()
                    } else if !known {
                        codes::unknown_topic_or_partition()
                    } else if same {
                        codes::NONE
                    } else {
                        refused += 1;
                        codes::log_dir_not_found()
                    };
                    r
                })
                .collect();
            resp.results.push(out);
        }
    }
    if refused > 0 {
        tracing::debug!(
            refused,
            log_dir = dir,
            "AlterReplicaLogDirs: a node has one log dir (its data dir); replicas cannot move to another"
        );
    }
    resp
}

/// Whether `asked` names the node's log dir (trailing slashes aside).
fn same_dir(asked: &str, dir: &str) -> bool {
    let trim = |s: &str| s.trim_end_matches('/').to_string();
    !asked.is_empty() && trim(asked) == trim(dir)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_one_dir_matches_with_or_without_a_trailing_slash() {
        assert!(super::same_dir("/data/sluice/", "/data/sluice"));
        assert!(super::same_dir("/data/sluice", "/data/sluice"));
        assert!(!super::same_dir("/data/other", "/data/sluice"));
        assert!(!super::same_dir("", ""));
    }
}
