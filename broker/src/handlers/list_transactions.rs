//! ListTransactions (key 66): the transactional ids this node
//! coordinates, filtered by state and producer id (v1: and by how long the
//! transaction has been running). Unknown state names come back in
//! `unknown_state_filters`, as in Kafka. Ids `session` may not DESCRIBE
//! (`--authorizer`) are left out, as in Kafka.

use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::{ListTransactionsRequest, ListTransactionsResponse, ProducerId};

use super::{str_bytes, Ctx};
use crate::security::{AclOperation, AclResourceType, Session};

const STATES: &[&str] = &[
    "Empty",
    "Ongoing",
    "PrepareCommit",
    "PrepareAbort",
    "CompleteCommit",
    "CompleteAbort",
    "Dead",
    "PrepareEpochFence",
];

pub async fn handle(
    req: ListTransactionsRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> ListTransactionsResponse {
    let mut resp = ListTransactionsResponse::default();
    let states: Vec<String> = req.state_filters.iter().map(|s| s.to_string()).collect();
    resp.unknown_state_filters = req
        .state_filters
        .iter()
        .filter(|s| !STATES.contains(&s.as_str()))
        .cloned()
        .collect();
    let ids: Vec<i64> = req.producer_id_filters.iter().map(|p| p.0).collect();
    let min_duration_ms = req.duration_filter;
    let now = super::now_ms();
    let listed = ctx.shard.list_txns(states, ids).await;
    let view = ctx.view();
    for l in listed {
        if min_duration_ms >= 0 && l.start_ms >= 0 && now - l.start_ms < min_duration_ms {
            continue;
        }
        let (op, kind) = (AclOperation::Describe, AclResourceType::TransactionalId);
        if !ctx
            .node
            .security
            .authorize(&view, session, op, kind, &l.transactional_id)
        {
            continue;
        }
        let mut s = TransactionState::default();
        s.transactional_id = str_bytes(l.transactional_id).into();
        s.producer_id = ProducerId(l.producer_id);
        s.transaction_state = str_bytes(l.state);
        resp.transaction_states.push(s);
    }
    resp
}
