//! Heartbeat (key 12): keeps a member's session alive; answers
//! REBALANCE_IN_PROGRESS when the member must rejoin. Needs READ on the
//! group (`--authorizer`), else GROUP_AUTHORIZATION_FAILED.

use kafka_protocol::messages::{HeartbeatRequest as WireHeartbeat, HeartbeatResponse};

use kafka_protocol::ResponseError;

use super::Ctx;
use crate::errors::group_error_code;
use crate::plane::{GroupRequest, GroupResponse, HeartbeatRequest};
use crate::security::{AclOperation, AclResourceType, Session};

pub async fn handle(
    req: WireHeartbeat,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> HeartbeatResponse {
    let refused = (!ctx.allowed(
        session,
        AclOperation::Read,
        AclResourceType::Group,
        &req.group_id.0,
    ))
    .then(|| ResponseError::GroupAuthorizationFailed.code());
    if let Some(code) = refused.or_else(|| ctx.not_coordinator(&req.group_id.0)) {
        let mut resp = HeartbeatResponse::default();
        resp.error_code = code;
        return resp;
    }
    let hb = HeartbeatRequest {
        group_id: req.group_id.0.to_string(),
        generation_id: req.generation_id,
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.map(|s| s.to_string()),
    };
    let error = match ctx.shard.group(GroupRequest::Heartbeat(hb)).await {
        GroupResponse::Heartbeat(e) => e,
        _ => None,
    };
    let mut resp = HeartbeatResponse::default();
    resp.error_code = group_error_code(error.as_ref());
    resp
}
