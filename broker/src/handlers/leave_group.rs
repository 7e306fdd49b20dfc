//! LeaveGroup (key 13): members leave; the rest rebalance. v0-2 name one
//! member id; v3+ a batch of members (by member or instance id). Needs
//! READ on the group (`--authorizer`), else GROUP_AUTHORIZATION_FAILED.

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use kafka_protocol::ResponseError;

use super::{str_bytes, Ctx};
use crate::errors::group_error_code;
use crate::plane::{GroupRequest, GroupResponse, LeaveRequest, LeavingMember};
use crate::security::{AclOperation, AclResourceType, Session};

pub async fn handle(
    req: LeaveGroupRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> LeaveGroupResponse {
    let refused = (!ctx.allowed(
        session,
        AclOperation::Read,
        AclResourceType::Group,
        &req.group_id.0,
    ))
    .then(|| ResponseError::GroupAuthorizationFailed.code());
    if let Some(code) = refused.or_else(|| ctx.not_coordinator(&req.group_id.0)) {
        let mut resp = LeaveGroupResponse::default();
        resp.error_code = code;
        return resp;
    }
    let members: Vec<LeavingMember> = if version >= 3 {
        req.members
            .iter()
            .map(|m| LeavingMember {
                member_id: m.member_id.to_string(),
                group_instance_id: m.group_instance_id.as_ref().map(|s| s.to_string()),
            })
            .collect()
    } else {
        vec![LeavingMember {
            member_id: req.member_id.to_string(),
            group_instance_id: None,
        }]
    };
    let leave = LeaveRequest {
        group_id: req.group_id.0.to_string(),
        members: members.clone(),
    };
    let GroupResponse::Leave(r) = ctx.shard.group(GroupRequest::Leave(leave)).await else {
        unreachable!("a leave is answered with a leave result");
    };
    let mut resp = LeaveGroupResponse::default();
    resp.error_code = group_error_code(r.error.as_ref());
    if version < 3 {
        if let Some(Some(e)) = r.members.first() {
            resp.error_code = group_error_code(Some(e));
        }
        return resp;
    }
    resp.members = members
        .into_iter()
        .zip(r.members)
        .map(|(m, e)| {
            let mut out = MemberResponse::default();
            out.member_id = str_bytes(m.member_id);
            out.group_instance_id = m.group_instance_id.map(str_bytes);
            out.error_code = group_error_code(e.as_ref());
            out
        })
        .collect();
    resp
}
