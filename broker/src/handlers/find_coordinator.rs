//! FindCoordinator (key 10): the coordinator of a group (key type 0) or of
//! a transactional id (key type 1) is always this node; a group can only be
//! coordinated once `__consumer_offsets` exists. v4+ looks up many keys.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use super::{str_bytes, Ctx};
use crate::errors::{codes, group_error_code};
use crate::plane::{GroupError, OFFSETS_TOPIC};

const KEY_TYPE_GROUP: i8 = 0;

pub fn handle(req: FindCoordinatorRequest, version: i16, ctx: &Ctx) -> FindCoordinatorResponse {
    let mut resp = FindCoordinatorResponse::default();
    if version >= 4 {
        resp.coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| coordinator(key, req.key_type, ctx))
            .collect();
        return resp;
    }
    let c = coordinator(req.key, req.key_type, ctx);
    resp.error_code = c.error_code;
    resp.error_message = c.error_message;
    resp.node_id = c.node_id;
    resp.host = c.host;
    resp.port = c.port;
    resp
}

fn coordinator(key: StrBytes, key_type: i8, ctx: &Ctx) -> Coordinator {
    let mut c = Coordinator::default();
    c.key = key;
    let ready = key_type != KEY_TYPE_GROUP || ctx.topic(OFFSETS_TOPIC).is_some();
    if !ready {
        c.error_code = group_error_code(Some(&GroupError::CoordinatorNotAvailable));
        c.node_id = BrokerId(-1);
        c.port = -1;
        return c;
    }
    c.error_code = codes::NONE;
    c.node_id = BrokerId(ctx.node.node_id);
    c.host = str_bytes(ctx.node.advertised_host.clone());
    c.port = i32::from(ctx.node.advertised_port);
    c
}
