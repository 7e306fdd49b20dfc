//! DescribeTransactions (key 65): the state of each transactional id, from
//! its coordinator. An id this node does not coordinate gets
//! NOT_COORDINATOR (admin clients look the coordinator up per id).
//! With `--authorizer`, as Kafka: an id `session` may not DESCRIBE gets
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED, and the partitions of topics it
//! may not DESCRIBE are left out of a transaction's.

use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::{
    DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId,
};

use kafka_protocol::ResponseError;

use super::{str_bytes, topic_name, txn_not_coordinator, Ctx};
use crate::errors::{codes, txn_error_code};
use crate::plane::{TxnRequest, TxnResponse};
use crate::security::{AclOperation, AclResourceType, Session};

pub async fn handle(
    req: DescribeTransactionsRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> DescribeTransactionsResponse {
    let mut resp = DescribeTransactionsResponse::default();
    let describe = AclOperation::Describe;
    for id in req.transactional_ids {
        let mut s = TransactionState::default();
        s.producer_id = ProducerId(-1);
        s.producer_epoch = -1;
        s.transaction_start_time_ms = -1;
        let kind = AclResourceType::TransactionalId;
        let refused = (!ctx.allowed(session, describe, kind, &id.0))
            .then(|| ResponseError::TransactionalIdAuthorizationFailed.code());
        if let Some(code) = refused.or_else(|| txn_not_coordinator(ctx, &id.0)) {
            s.error_code = code;
            s.transactional_id = id;
            resp.transaction_states.push(s);
            continue;
        }
        if let TxnResponse::Describe(d) =
            ctx.shard.txn(TxnRequest::Describe(id.0.to_string())).await
        {
            match d.error {
                Some(e) => s.error_code = txn_error_code(&e, true),
                None => {
                    s.error_code = codes::NONE;
                    s.transaction_state = str_bytes(d.state);
                    s.transaction_timeout_ms = d.timeout_ms;
                    s.transaction_start_time_ms = d.start_ms;
                    s.producer_id = ProducerId(d.producer_id);
                    s.producer_epoch = d.producer_epoch;
                    let mut topics: Vec<TopicData> = Vec::new();
                    for (t, p) in d.partitions {
                        if !ctx.allowed(session, describe, AclResourceType::Topic, &t) {
                            continue;
                        }
                        match topics.last_mut() {
                            Some(last) if last.topic.0.as_str() == t => last.partitions.push(p),
                            _ => {
                                let mut td = TopicData::default();
                                td.topic = topic_name(&t);
                                td.partitions.push(p);
                                topics.push(td);
                            }
                        }
                    }
                    s.topics = topics;
                }
            }
        }
        s.transactional_id = id;
        resp.transaction_states.push(s);
    }
    resp
}
