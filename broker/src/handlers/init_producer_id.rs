//! InitProducerId (key 22).
//!
//! Without a transactional id every call gets a fresh producer id with
//! epoch 0, as Kafka does for non-transactional producers (an epoch bump
//! request from a producer that knows its id gets a new id as well). Ids
//! come from the accepting shard's block, reserved through the metadata
//! Raft log (`Shard::allocate_producer_id`), so they are never reused.
//!
//! With a transactional id the request goes to the id's transaction
//! coordinator (`sluice_shard::txn`): a new id gets a producer id, a known
//! one the next epoch, which fences the previous producer instance (its
//! open transaction is aborted first: the caller gets
//! CONCURRENT_TRANSACTIONS and retries).
//!
//! Authorization (`--authorizer`), as Kafka 3.x: with a transactional id,
//! WRITE on it (else TRANSACTIONAL_ID_AUTHORIZATION_FAILED); without,
//! IDEMPOTENT_WRITE on the cluster or WRITE on at least one topic (Kafka's
//! `Authorizer::authorizeByResourceType`, see `may_write_some_topic`), else
//! CLUSTER_AUTHORIZATION_FAILED.

use std::collections::BTreeSet;
use std::net::IpAddr;

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;
use sluice_raft::{AclFilter, AclPatternType, AclPermission};

use super::{txn_not_coordinator, Ctx};
use crate::errors::{meta_error_code, txn_error_code};
use crate::plane::{TxnRequest, TxnResponse};
use crate::security::{AclOperation, AclResourceType, Session, CLUSTER};

/// First version that knows PRODUCER_FENCED (KIP-588).
const PRODUCER_FENCED_MIN_VERSION: i16 = 4;

/// The literal topic name Kafka's `authorizeByResourceType` checks first
/// (so that super users, `allow.everyone.if.no.acl.found` and wildcard or
/// prefix ACLs that match it allow at once).
const ANY_TOPIC_PROBE: &str = "hardcode";

pub async fn handle(
    req: InitProducerIdRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> InitProducerIdResponse {
    let mut resp = InitProducerIdResponse::default();
    resp.producer_id = ProducerId(-1);
    resp.producer_epoch = -1;
    let transactional_id = req.transactional_id.as_ref().map(|id| id.0.as_str());
    if let Some(code) = refusal(transactional_id, ctx, session) {
        resp.error_code = code;
        return resp;
    }
    if let Some(id) = req.transactional_id {
        if let Some(code) = txn_not_coordinator(ctx, &id.0) {
            resp.error_code = code;
            return resp;
        }
        let asked = TxnRequest::InitProducerId {
            transactional_id: id.0.to_string(),
            timeout_ms: req.transaction_timeout_ms,
            producer_id: req.producer_id.0,
            producer_epoch: req.producer_epoch,
        };
        match ctx.shard.txn(asked).await {
            TxnResponse::Producer(Ok((id, epoch))) => {
                resp.producer_id = ProducerId(id);
                resp.producer_epoch = epoch;
            }
            TxnResponse::Producer(Err(e)) => {
                resp.error_code = txn_error_code(&e, version >= PRODUCER_FENCED_MIN_VERSION)
            }
            _ => {}
        }
        return resp;
    }
    match ctx.shard.allocate_producer_id().await {
        Ok(id) => {
            tracing::debug!(producer_id = id, "producer id allocated");
            resp.producer_id = ProducerId(id);
            resp.producer_epoch = 0;
        }
        Err(e) => resp.error_code = meta_error_code(&e),
    }
    resp
}

/// The authorization error of an InitProducerId for `transactional_id`.
fn refusal(transactional_id: Option<&str>, ctx: &Ctx, session: &Session) -> Option<i16> {
    if let Some(id) = transactional_id {
        let kind = AclResourceType::TransactionalId;
        let allowed = ctx.allowed(session, AclOperation::Write, kind, id);
        return (!allowed).then(|| ResponseError::TransactionalIdAuthorizationFailed.code());
    }
    let cluster = AclResourceType::Cluster;
    let allowed = ctx.allowed(session, AclOperation::IdempotentWrite, cluster, CLUSTER)
        || may_write_some_topic(ctx, session);
    (!allowed).then(|| ResponseError::ClusterAuthorizationFailed.code())
}

/// Kafka's `Authorizer::authorizeByResourceType(WRITE, TOPIC)`: whether
/// some topic name exists that `session` may WRITE. Allowed at once when
/// the probe name is (super users, no ACL with
/// `allow.everyone.if.no.acl.found`, an ALLOW on `*` or a prefix of it).
/// Otherwise the topic ACLs of the principal (and of `User:*`) for its
/// host with WRITE or ALL decide: a DENY on `*` refuses; an ALLOW on `*`
/// allows; else an ALLOW on a name allows unless a literal DENY names the
/// same literal name or a prefixed DENY covers it. Reads at most the
/// principal's bindings (bounded by the metadata's ACL limit); off the
/// produce path (once per producer).
fn may_write_some_topic(ctx: &Ctx, session: &Session) -> bool {
    let (write, topic) = (AclOperation::Write, AclResourceType::Topic);
    if ctx.allowed(session, write, topic, ANY_TOPIC_PROBE) {
        return true;
    }
    let view = ctx.view();
    let principal = session.principal();
    let mut deny_literal: BTreeSet<String> = BTreeSet::new();
    let mut deny_prefixed: BTreeSet<String> = BTreeSet::new();
    let mut allowed: Vec<(AclPatternType, String)> = Vec::new();
    // A wildcard ALLOW decides only once every binding was seen: a
    // wildcard DENY of either principal wins over it.
    let mut wildcard_allowed = false;
    for who in [&*principal, sluice_raft::WILDCARD_PRINCIPAL] {
        let filter = AclFilter {
            resource_type: Some(topic),
            principal: Some(who.to_string()),
            ..AclFilter::any()
        };
        for b in view.acls.matching(&filter) {
            let grants = b.operation == write || b.operation == AclOperation::All;
            if !grants || !same_host(&b.host, session.ip) {
                continue;
            }
            let wildcard = b.pattern_type == AclPatternType::Literal
                && b.resource_name == sluice_raft::WILDCARD_RESOURCE;
            match (b.permission, b.pattern_type) {
                (AclPermission::Deny, _) if wildcard => return false,
                (AclPermission::Allow, _) if wildcard => wildcard_allowed = true,
                (AclPermission::Deny, AclPatternType::Literal) => {
                    deny_literal.insert(b.resource_name);
                }
                (AclPermission::Deny, AclPatternType::Prefixed) => {
                    deny_prefixed.insert(b.resource_name);
                }
                (AclPermission::Allow, pattern) => allowed.push((pattern, b.resource_name)),
            }
        }
    }
    if wildcard_allowed {
        return true;
    }
    allowed.iter().any(|(pattern, name)| {
        let literal_denied = *pattern == AclPatternType::Literal && deny_literal.contains(name);
        let prefix_denied = name
            .char_indices()
            .any(|(i, c)| deny_prefixed.contains(&name[..i + c.len_utf8()]));
        !literal_denied && !prefix_denied
    })
}

/// Whether an ACL's host names the peer: `*`, or the same address (a host
/// that is no address names none, as in `Acls::authorize`).
fn same_host(acl_host: &str, peer: IpAddr) -> bool {
    acl_host == sluice_raft::WILDCARD_HOST
        || acl_host
            .parse::<IpAddr>()
            .is_ok_and(|a| a.to_canonical() == peer.to_canonical())
}
