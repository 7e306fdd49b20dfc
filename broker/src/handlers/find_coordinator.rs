//! FindCoordinator (key 10): the coordinator of a group (key type 0) is
//! the node leading the group's `__consumer_offsets` partition, that of a
//! transactional id (key type 1) the node leading the id's
//! `__transaction_state` partition (COORDINATOR_NOT_AVAILABLE while it
//! has no leader). v4+ looks up many keys.
//!
//! In a cluster each of those topics is created here, on the first lookup
//! that finds it missing, like Kafka: once as many brokers are live as the
//! default replication factor (or, after `OFFSETS_TOPIC_BROKERS_WAIT` of
//! uptime, with the live ones), with a replication factor of min(default,
//! live brokers). Lookups answer COORDINATOR_NOT_AVAILABLE until then.
//!
//! Authorization (`--authorizer`), per key as Kafka: DESCRIBE on the group
//! (GROUP_AUTHORIZATION_FAILED) or on the transactional id
//! (TRANSACTIONAL_ID_AUTHORIZATION_FAILED), with node -1; a lookup whose
//! keys are all refused creates no topic.

use std::time::Duration;

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_raft::{MetaError, TopicSpec};

use super::{str_bytes, with_deadline, BrokerAddr, Ctx};
use crate::errors::{codes, group_error_code};
use crate::plane::{GroupError, OFFSETS_TOPIC, TXN_TOPIC};
use crate::security::{AclOperation, AclResourceType, Session};

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;
/// Uptime after which a cluster creates `__consumer_offsets` with the
/// brokers that are live, fewer than the default replication factor.
const OFFSETS_TOPIC_BROKERS_WAIT: Duration = Duration::from_secs(30);
/// How long one lookup waits for the creation it started.
const OFFSETS_TOPIC_CREATE_WAIT_MS: u64 = 5_000;

pub async fn handle(
    req: FindCoordinatorRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> FindCoordinatorResponse {
    let topic = match req.key_type {
        KEY_TYPE_GROUP => Some(OFFSETS_TOPIC),
        KEY_TYPE_TRANSACTION => Some(TXN_TOPIC),
        _ => None,
    };
    let any_allowed = || {
        let mut keys = if version >= 4 {
            req.coordinator_keys.iter()
        } else {
            std::slice::from_ref(&req.key).iter()
        };
        keys.any(|key| refusal(key.as_str(), req.key_type, ctx, session).is_none())
    };
    if let Some(topic) = topic.filter(|t| ctx.topic(t).is_none()) {
        if any_allowed() {
            create_coordinator_topic(ctx, topic).await;
        }
    }
    let mut resp = FindCoordinatorResponse::default();
    if version >= 4 {
        resp.coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| coordinator(key, req.key_type, ctx, session))
            .collect();
        return resp;
    }
    let c = coordinator(req.key, req.key_type, ctx, session);
    resp.error_code = c.error_code;
    if version >= 1 {
        resp.error_message = c.error_message;
    }
    resp.node_id = c.node_id;
    resp.host = c.host;
    resp.port = c.port;
    resp
}

/// The authorization error for looking up `key`: DESCRIBE on the group
/// or on the transactional id.
fn refusal(key: &str, key_type: i8, ctx: &Ctx, session: &Session) -> Option<ResponseError> {
    let (kind, error) = match key_type {
        KEY_TYPE_GROUP => (
            AclResourceType::Group,
            ResponseError::GroupAuthorizationFailed,
        ),
        KEY_TYPE_TRANSACTION => (
            AclResourceType::TransactionalId,
            ResponseError::TransactionalIdAuthorizationFailed,
        ),
        _ => return None,
    };
    (!ctx.allowed(session, AclOperation::Describe, kind, key)).then_some(error)
}

fn coordinator(key: StrBytes, key_type: i8, ctx: &Ctx, session: &Session) -> Coordinator {
    if let Some(error) = refusal(key.as_str(), key_type, ctx, session) {
        let mut c = Coordinator::default();
        c.key = key;
        c.error_code = error.code();
        c.error_message = Some(str_bytes(super::metadata::denied_message(error)));
        c.node_id = BrokerId(-1);
        c.port = -1;
        return c;
    }
    let leader = match key_type {
        KEY_TYPE_GROUP => ctx.group_leader(key.as_str()).ok(),
        KEY_TYPE_TRANSACTION => ctx.txn_leader(key.as_str()).ok(),
        _ => None,
    };
    let found = leader.and_then(|leader| ctx.broker(&ctx.view(), leader, session));
    let mut c = Coordinator::default();
    c.key = key;
    let Some(BrokerAddr { id, host, port }) = found else {
        c.error_code = group_error_code(Some(&GroupError::CoordinatorNotAvailable));
        c.node_id = BrokerId(-1);
        c.port = -1;
        return c;
    };
    c.error_code = codes::NONE;
    c.node_id = BrokerId(id);
    c.host = str_bytes(host);
    c.port = port;
    c
}

/// Clears the shard's "creation under way" flag when the lookup that set
/// it ends (also when it is dropped with its connection).
struct Creating<'a>(&'a Ctx);

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        self.0.offsets_creating.set(false);
    }
}

/// Creates `__consumer_offsets` or `__transaction_state` in a cluster once
/// enough brokers are live (see the module docs); at most one creation per
/// shard at a time.
async fn create_coordinator_topic(ctx: &Ctx, name: &'static str) {
    if !ctx.node.cluster || ctx.offsets_creating.get() {
        return;
    }
    let live = ctx.live_count(&ctx.view());
    let wanted = usize::from(ctx.node.default_replication_factor.max(1));
    let waited = ctx.node.started.elapsed() >= OFFSETS_TOPIC_BROKERS_WAIT;
    if live == 0 || (live < wanted && !waited) {
        tracing::debug!(live, wanted, "{name}: waiting for brokers");
        return;
    }
    let factor = wanted.min(live);
    if factor < wanted {
        tracing::warn!(
            live,
            wanted,
            "{name}: creating it with fewer replicas than --default-replication-factor (brokers missing)"
        );
    }
    ctx.offsets_creating.set(true);
    let _creating = Creating(ctx);
    let spec = TopicSpec {
        name: name.to_string(),
        partitions: ctx.node.offsets_topic_partitions,
        configs: [("cleanup.policy".to_string(), "compact".to_string())].into(),
        replication_factor: u16::try_from(factor).unwrap_or(1),
        assignment: Vec::new(),
    };
    match with_deadline(OFFSETS_TOPIC_CREATE_WAIT_MS, ctx.meta.create_topic(spec)).await {
        Some(Ok(topic)) => tracing::info!(
            partitions = topic.partitions.len(),
            replication_factor = factor,
            "{name} created"
        ),
        Some(Err(MetaError::TopicExists(_))) => {}
        Some(Err(e)) => tracing::debug!(error = %e, "{name}: creation failed"),
        None => tracing::debug!("{name}: creation still pending"),
    }
}
