//! AddPartitionsToTxn (key 24). v0-3: a producer adds partitions to its
//! transaction. v4+ (KIP-890, the form brokers send): a batch of
//! transactions, each of which may be `verify_only` (is the partition in
//! the ongoing transaction?). Partitions of unknown topics get
//! UNKNOWN_TOPIC_OR_PARTITION and the others of that transaction
//! OPERATION_NOT_ATTEMPTED, as in Kafka; otherwise every partition gets
//! the coordinator's verdict.
//!
//! Authorization, as Kafka's KafkaApis: v4+ (from brokers) needs
//! CLUSTER_ACTION on the cluster (`--authorizer`), else the top-level
//! CLUSTER_AUTHORIZATION_FAILED. v0-3 (from clients) need WRITE on the
//! transactional id (else every partition
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED) and WRITE on each topic; a
//! partition of a topic refused, or of an internal topic (always, as in
//! Kafka: clients never add those), gets TOPIC_AUTHORIZATION_FAILED, and
//! the transaction's other partitions OPERATION_NOT_ATTEMPTED.

use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{AddPartitionsToTxnRequest, AddPartitionsToTxnResponse};
use kafka_protocol::ResponseError;

use super::produce::is_internal_topic;
use super::{txn_not_coordinator, Ctx};
use crate::errors::{codes, txn_error_code};
use crate::plane::{TxnRequest, TxnResponse};
use crate::security::{AclOperation, AclResourceType, Session};

/// First version that knows PRODUCER_FENCED (KIP-588).
const PRODUCER_FENCED_MIN_VERSION: i16 = 2;
/// First version of the batched form.
const BATCHED_MIN_VERSION: i16 = 4;

pub async fn handle(
    req: AddPartitionsToTxnRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> AddPartitionsToTxnResponse {
    let mut resp = AddPartitionsToTxnResponse::default();
    if version < BATCHED_MIN_VERSION {
        let id = req.v3_and_below_transactional_id.0.as_str();
        let kind = AclResourceType::TransactionalId;
        if !ctx.allowed(session, AclOperation::Write, kind, id) {
            let denied = ResponseError::TransactionalIdAuthorizationFailed.code();
            resp.results_by_topic_v3_and_below = answers(&req.v3_and_below_topics, |_, _| denied);
            return resp;
        }
        resp.results_by_topic_v3_and_below = add(
            ctx,
            version,
            id,
            (
                req.v3_and_below_producer_id.0,
                req.v3_and_below_producer_epoch,
            ),
            &req.v3_and_below_topics,
            (false, Some(session)),
        )
        .await;
        return resp;
    }
    // Batches come from brokers only.
    if !ctx.allowed_on_cluster(session, AclOperation::ClusterAction) {
        resp.error_code = ResponseError::ClusterAuthorizationFailed.code();
        return resp;
    }
    for t in req.transactions {
        let mut r = AddPartitionsToTxnResult::default();
        r.topic_results = add(
            ctx,
            version,
            &t.transactional_id.0,
            (t.producer_id.0, t.producer_epoch),
            &t.topics,
            (t.verify_only, None),
        )
        .await;
        r.transactional_id = t.transactional_id;
        resp.results_by_transaction.push(r);
    }
    resp
}

/// Adds (or with `verify_only` checks) the partitions of one transaction.
/// `client`: the session of a client's request (v0-3), whose topics need
/// WRITE; `None` for a broker's batch.
async fn add(
    ctx: &Ctx,
    version: i16,
    transactional_id: &str,
    producer: (i64, i16),
    topics: &[AddPartitionsToTxnTopic],
    (verify_only, client): (bool, Option<&Session>),
) -> Vec<AddPartitionsToTxnTopicResult> {
    let refused = |name: &str| {
        client.is_some_and(|session| {
            is_internal_topic(name)
                || !ctx.allowed(session, AclOperation::Write, AclResourceType::Topic, name)
        })
    };
    let known = |name: &str, p: i32| {
        ctx.topic(name)
            .is_some_and(|t| usize::try_from(p).is_ok_and(|i| i < t.partitions.len()))
    };
    let all_known = topics
        .iter()
        .all(|t| !refused(&t.name.0) && t.partitions.iter().all(|p| known(&t.name.0, *p)));
    let verdict = if !all_known {
        None
    } else if let Some(code) = txn_not_coordinator(ctx, transactional_id) {
        Some(code)
    } else {
        let partitions = topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| (t.name.0.to_string(), *p)))
            .collect();
        let asked = TxnRequest::AddPartitions {
            transactional_id: transactional_id.to_string(),
            producer_id: producer.0,
            producer_epoch: producer.1,
            partitions,
            verify_only,
        };
        Some(match ctx.shard.txn(asked).await {
            TxnResponse::Done(Ok(())) => codes::NONE,
            TxnResponse::Done(Err(e)) => txn_error_code(&e, version >= PRODUCER_FENCED_MIN_VERSION),
            _ => ResponseError::UnknownServerError.code(),
        })
    };
    answers(topics, |name, p| match verdict {
        Some(code) => code,
        None if refused(name) => ResponseError::TopicAuthorizationFailed.code(),
        None if known(name, p) => ResponseError::OperationNotAttempted.code(),
        None => codes::unknown_topic_or_partition(),
    })
}

/// Every partition of `topics` answered with `code_of(topic, partition)`.
fn answers(
    topics: &[AddPartitionsToTxnTopic],
    code_of: impl Fn(&str, i32) -> i16,
) -> Vec<AddPartitionsToTxnTopicResult> {
    topics
        .iter()
        .map(|t| {
            let mut out = AddPartitionsToTxnTopicResult::default();
            out.name = t.name.clone();
            out.results_by_partition = t
                .partitions
                .iter()
                .map(|&p| {
                    let mut r = AddPartitionsToTxnPartitionResult::default();
                    r.partition_index = p;
                    r.partition_error_code = code_of(&t.name.0, p);
                    r
                })
                .collect();
            out
        })
        .collect()
}
