//! JoinGroup (key 11): a member (re)joins; the answer waits until the
//! group's join phase ends (see `sluice_shard::group`). v4+: a new member
//! first gets MEMBER_ID_REQUIRED with its id. Needs READ on the group
//! (`--authorizer`), else GROUP_AUTHORIZATION_FAILED.

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};

use kafka_protocol::ResponseError;

use super::{str_bytes, Ctx};
use crate::errors::group_error_code;
use crate::plane::{GroupRequest, GroupResponse, JoinRequest, Protocol};
use crate::security::{AclOperation, AclResourceType, Session};

pub async fn handle(
    req: JoinGroupRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> JoinGroupResponse {
    let refused = (!ctx.allowed(
        session,
        AclOperation::Read,
        AclResourceType::Group,
        &req.group_id.0,
    ))
    .then(|| ResponseError::GroupAuthorizationFailed.code());
    if let Some(code) = refused.or_else(|| ctx.not_coordinator(&req.group_id.0)) {
        let mut resp = JoinGroupResponse::default();
        resp.error_code = code;
        resp.generation_id = -1;
        resp.protocol_name = Some(str_bytes(""));
        resp.member_id = req.member_id;
        return resp;
    }
    let join = JoinRequest {
        group_id: req.group_id.0.to_string(),
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.map(|s| s.to_string()),
        client_id: session.client_id().to_string(),
        // As Kafka shows it (Java's InetAddress text).
        client_host: format!("/{}", session.host),
        session_timeout_ms: req.session_timeout_ms,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if version == 0 {
            req.session_timeout_ms
        } else {
            req.rebalance_timeout_ms
        },
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .into_iter()
            .map(|p| Protocol {
                name: p.name.to_string(),
                metadata: p.metadata,
            })
            .collect(),
        require_known_member_id: version >= 4,
    };
    let GroupResponse::Join(r) = ctx.shard.group(GroupRequest::Join(join)).await else {
        unreachable!("a join is answered with a join result");
    };
    let mut resp = JoinGroupResponse::default();
    resp.error_code = group_error_code(r.error.as_ref());
    resp.generation_id = r.generation_id;
    resp.protocol_type = r.protocol_type.map(str_bytes);
    resp.protocol_name = Some(str_bytes(r.protocol_name.unwrap_or_default()));
    resp.leader = str_bytes(r.leader);
    resp.member_id = str_bytes(r.member_id);
    resp.members = r
        .members
        .into_iter()
        .map(|m| {
            let mut out = JoinGroupResponseMember::default();
            out.member_id = str_bytes(m.member_id);
            out.group_instance_id = m.group_instance_id.map(str_bytes);
            out.metadata = m.metadata;
            out
        })
        .collect();
    resp
}
