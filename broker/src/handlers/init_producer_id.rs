//! InitProducerId (key 22), for idempotent producers only.
//!
//! Without a transactional id every call gets a fresh producer id with
//! epoch 0, as Kafka does for non-transactional producers (an epoch bump
//! request from a producer that knows its id gets a new id as well). Ids
//! come from the accepting shard's block, reserved through the metadata
//! Raft log (`Shard::allocate_producer_id`), so they are never reused.
//!
//! Transactions are not served: a request with a transactional id is
//! answered TRANSACTIONAL_ID_AUTHORIZATION_FAILED (53), which clients
//! report as a fatal error instead of retrying.

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::Ctx;
use crate::errors::{codes, meta_error_code};

pub async fn handle(
    req: InitProducerIdRequest,
    _version: i16,
    ctx: &Ctx,
) -> InitProducerIdResponse {
    let mut resp = InitProducerIdResponse::default();
    resp.producer_id = ProducerId(-1);
    resp.producer_epoch = -1;
    if req.transactional_id.is_some() {
        resp.error_code = codes::transactional_id_authorization_failed();
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
