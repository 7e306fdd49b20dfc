//! SyncGroup (key 14): the leader hands in the assignments; every member
//! gets its own once the leader's arrived. Needs READ on the group
//! (`--authorizer`), else GROUP_AUTHORIZATION_FAILED.

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};

use kafka_protocol::ResponseError;

use super::{str_bytes, Ctx};
use crate::errors::group_error_code;
use crate::plane::{GroupRequest, GroupResponse, SyncRequest};
use crate::security::{AclOperation, AclResourceType, Session};

pub async fn handle(
    req: SyncGroupRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> SyncGroupResponse {
    let refused = (!ctx.allowed(
        session,
        AclOperation::Read,
        AclResourceType::Group,
        &req.group_id.0,
    ))
    .then(|| ResponseError::GroupAuthorizationFailed.code());
    if let Some(code) = refused.or_else(|| ctx.not_coordinator(&req.group_id.0)) {
        let mut resp = SyncGroupResponse::default();
        resp.error_code = code;
        return resp;
    }
    let sync = SyncRequest {
        group_id: req.group_id.0.to_string(),
        generation_id: req.generation_id,
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.map(|s| s.to_string()),
        assignments: req
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect(),
    };
    let GroupResponse::Sync(r) = ctx.shard.group(GroupRequest::Sync(sync)).await else {
        unreachable!("a sync is answered with a sync result");
    };
    let mut resp = SyncGroupResponse::default();
    resp.error_code = group_error_code(r.error.as_ref());
    resp.protocol_type = r.protocol_type.map(str_bytes);
    resp.protocol_name = r.protocol_name.map(str_bytes);
    resp.assignment = r.assignment;
    resp
}
