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

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::{txn_not_coordinator, Ctx};
use crate::errors::{meta_error_code, txn_error_code};
use crate::plane::{TxnRequest, TxnResponse};
use crate::security::Session;

/// First version that knows PRODUCER_FENCED (KIP-588).
const PRODUCER_FENCED_MIN_VERSION: i16 = 4;

pub async fn handle(req: InitProducerIdRequest, version: i16, ctx: &Ctx, session: &Session) -> InitProducerIdResponse {
    let mut resp = InitProducerIdResponse::default();
    resp.producer_id = ProducerId(-1);
    resp.producer_epoch = -1;
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
