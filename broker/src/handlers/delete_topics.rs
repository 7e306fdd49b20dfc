//! DeleteTopics (key 20): one metadata entry per existing topic. v0-5 name topics
//! in `topic_names`; v6 in `topics`, by name or by id.
//!
//! Authorization (`--authorizer`), as Kafka's controller: DELETE on the
//! cluster allows every topic; else a topic needs DELETE on itself
//! (TOPIC_AUTHORIZATION_FAILED). A name `session` may not DESCRIBE is
//! refused before its existence is looked at; a topic named by id that it
//! may not delete is refused with its name left out unless it may
//! DESCRIBE it.

use futures::future::join_all;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};

use kafka_protocol::ResponseError;
use sluice_raft::MetaError;

use super::{str_bytes, topic_name, topic_uuid, Ctx};
use crate::errors::{codes, meta_error_code};
use crate::security::quota::MutationQuota;
use crate::security::{AclOperation, AclResourceType, Session};

pub async fn handle(
    req: DeleteTopicsRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> DeleteTopicsResponse {
    let targets: Vec<Target> = if version >= 6 {
        req.topics
            .into_iter()
            .map(|t| t.name.map(Target::Name).unwrap_or(Target::Id(t.topic_id)))
            .collect()
    } else {
        req.topic_names.into_iter().map(Target::Name).collect()
    };
    let cluster_delete = ctx.allowed_on_cluster(session, AclOperation::Delete);
    // KIP-599: versions 5 and later refuse a topic over the quota.
    let mutations = MutationQuota::new(ctx, session, version >= 5);
    let access = Access {
        ctx,
        session,
        cluster_delete,
        mutations: &mutations,
    };
    let results = join_all(targets.into_iter().map(|t| delete_one(t, &access))).await;
    let mut resp = DeleteTopicsResponse::default();
    resp.throttle_time_ms = mutations.throttle_ms();
    resp.responses = results
        .into_iter()
        .map(|r| if version >= 5 { r } else { without_message(r) })
        .collect();
    resp
}

enum Target {
    Name(TopicName),
    Id(uuid::Uuid),
}

fn without_message(mut r: DeletableTopicResult) -> DeletableTopicResult {
    r.error_message = None;
    r
}

/// What `session` may delete and describe.
struct Access<'a> {
    ctx: &'a Ctx,
    session: &'a Session,
    /// DELETE on the cluster: every topic.
    cluster_delete: bool,
    mutations: &'a MutationQuota<'a>,
}

impl Access<'_> {
    fn may(&self, op: AclOperation, name: &str) -> bool {
        self.cluster_delete
            || self
                .ctx
                .allowed(self.session, op, AclResourceType::Topic, name)
    }
}

async fn delete_one(target: Target, access: &Access<'_>) -> DeletableTopicResult {
    let ctx = access.ctx;
    let mut r = DeletableTopicResult::default();
    let denied = |r: &mut DeletableTopicResult| {
        let e = ResponseError::TopicAuthorizationFailed;
        r.error_code = e.code();
        r.error_message = Some(str_bytes(super::metadata::denied_message(e)));
    };
    let name = match target {
        Target::Name(name) => {
            if !access.may(AclOperation::Describe, &name.0) {
                r.name = Some(name);
                denied(&mut r);
                return r;
            }
            name.0.to_string()
        }
        Target::Id(id) => match ctx.view().topic_by_id(id.as_bytes()) {
            Some(t) if !access.may(AclOperation::Delete, &t.name) => {
                r.topic_id = id;
                if access.may(AclOperation::Describe, &t.name) {
                    r.name = Some(topic_name(&t.name));
                }
                denied(&mut r);
                return r;
            }
            Some(t) => t.name.clone(),
            None => {
                r.topic_id = id;
                r.error_code = codes::unknown_topic_id();
                return r;
            }
        },
    };
    r.name = Some(topic_name(&name));
    // A name the view does not hold costs no metadata entry (a request
    // naming thousands of unknown topics is answered at once); one
    // deleted concurrently is refused by the entry itself.
    let Some(topic) = ctx.topic(&name) else {
        let e = MetaError::UnknownTopic(name);
        r.error_code = meta_error_code(&e);
        r.error_message = Some(str_bytes(e.to_string()));
        return r;
    };
    if !access.may(AclOperation::Delete, &name) {
        denied(&mut r);
        return r;
    }
    let partitions = u32::try_from(topic.partitions.len()).unwrap_or(u32::MAX);
    if !access.mutations.admit(partitions) {
        let e = ResponseError::ThrottlingQuotaExceeded;
        r.error_code = e.code();
        r.error_message = Some(str_bytes("The throttling quota has been exceeded."));
        return r;
    }
    match ctx.meta.delete_topic(&name).await {
        Ok(topic) => {
            r.topic_id = topic_uuid(&topic);
            tracing::info!(topic = name, "topic deleted");
        }
        Err(e) => {
            r.error_code = meta_error_code(&e);
            r.error_message = Some(str_bytes(e.to_string()));
        }
    }
    r
}
