//! AddOffsetsToTxn (key 25): adds the group's `__consumer_offsets`
//! partition to the transaction, so that its TxnOffsetCommit records get
//! the transaction's marker. Needs WRITE on the transactional id
//! (`--authorizer`; else TRANSACTIONAL_ID_AUTHORIZATION_FAILED), then READ
//! on the group (else GROUP_AUTHORIZATION_FAILED), as in Kafka.

use kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse};
use kafka_protocol::ResponseError;

use super::{txn_not_coordinator, Ctx};
use crate::errors::{codes, txn_error_code};
use crate::plane::{offsets_partition_for, TxnRequest, TxnResponse, OFFSETS_TOPIC};
use crate::security::Session;

/// First version that knows PRODUCER_FENCED (KIP-588).
const PRODUCER_FENCED_MIN_VERSION: i16 = 2;

pub async fn handle(
    req: AddOffsetsToTxnRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> AddOffsetsToTxnResponse {
    let mut resp = AddOffsetsToTxnResponse::default();
    if let Some(code) = refusal(&req, ctx, session) {
        resp.error_code = code;
        return resp;
    }
    let partitions = ctx
        .topic(OFFSETS_TOPIC)
        .map_or(0, |t| u32::try_from(t.partitions.len()).unwrap_or(0));
    if partitions == 0 {
        resp.error_code = ResponseError::CoordinatorNotAvailable.code();
        return resp;
    }
    if let Some(code) = txn_not_coordinator(ctx, &req.transactional_id.0) {
        resp.error_code = code;
        return resp;
    }
    let p = offsets_partition_for(&req.group_id.0, partitions);
    let asked = TxnRequest::AddPartitions {
        transactional_id: req.transactional_id.0.to_string(),
        producer_id: req.producer_id.0,
        producer_epoch: req.producer_epoch,
        partitions: vec![(OFFSETS_TOPIC.to_string(), p as i32)],
        verify_only: false,
    };
    resp.error_code = match ctx.shard.txn(asked).await {
        TxnResponse::Done(Ok(())) => codes::NONE,
        TxnResponse::Done(Err(e)) => txn_error_code(&e, version >= PRODUCER_FENCED_MIN_VERSION),
        _ => ResponseError::UnknownServerError.code(),
    };
    resp
}

/// WRITE on the transactional id, then READ on the group.
fn refusal(req: &AddOffsetsToTxnRequest, ctx: &Ctx, session: &Session) -> Option<i16> {
    let (id, group) = (req.transactional_id.0.as_str(), req.group_id.0.as_str());
    ctx.txn_offsets_refusal(session, id, group)
}
