//! EndTxn (key 26): commits or aborts the producer's transaction. Answered
//! once the coordinator's PrepareCommit/PrepareAbort is durable (the
//! outcome is decided); the markers follow (`sluice_shard::txn`). Needs
//! WRITE on the transactional id (`--authorizer`), else
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED.

use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse};
use kafka_protocol::ResponseError;

use super::{txn_not_coordinator, Ctx};
use crate::errors::{codes, txn_error_code};
use crate::plane::{TxnRequest, TxnResponse};
use crate::security::{AclOperation, AclResourceType, Session};

/// First version that knows PRODUCER_FENCED (KIP-588).
const PRODUCER_FENCED_MIN_VERSION: i16 = 2;

pub async fn handle(
    req: EndTxnRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> EndTxnResponse {
    let mut resp = EndTxnResponse::default();
    let id = req.transactional_id.0.as_str();
    let kind = AclResourceType::TransactionalId;
    let refused = (!ctx.allowed(session, AclOperation::Write, kind, id))
        .then(|| ResponseError::TransactionalIdAuthorizationFailed.code());
    if let Some(code) = refused.or_else(|| txn_not_coordinator(ctx, id)) {
        resp.error_code = code;
        return resp;
    }
    let asked = TxnRequest::EndTxn {
        transactional_id: req.transactional_id.0.to_string(),
        producer_id: req.producer_id.0,
        producer_epoch: req.producer_epoch,
        commit: req.committed,
    };
    resp.error_code = match ctx.shard.txn(asked).await {
        TxnResponse::Done(Ok(())) => codes::NONE,
        TxnResponse::Done(Err(e)) => txn_error_code(&e, version >= PRODUCER_FENCED_MIN_VERSION),
        _ => ResponseError::UnknownServerError.code(),
    };
    resp
}
