//! DeleteGroups (key 42): removes groups without members, with their
//! committed offsets (a durable record in the coordinator's WAL). A group
//! `session` may not DELETE (`--authorizer`) gets GROUP_AUTHORIZATION_FAILED.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use kafka_protocol::ResponseError;

use super::Ctx;
use crate::errors::group_error_code;
use crate::plane::{GroupRequest, GroupResponse};
use crate::security::{AclOperation, AclResourceType, Session};

pub async fn handle(
    req: DeleteGroupsRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> DeleteGroupsResponse {
    let mut resp = DeleteGroupsResponse::default();
    for group_id in req.groups_names {
        let kind = AclResourceType::Group;
        let refused = (!ctx.allowed(session, AclOperation::Delete, kind, &group_id.0))
            .then(|| ResponseError::GroupAuthorizationFailed.code());
        if let Some(code) = refused.or_else(|| ctx.not_coordinator(&group_id.0)) {
            let mut out = DeletableGroupResult::default();
            out.group_id = group_id;
            out.error_code = code;
            resp.results.push(out);
            continue;
        }
        let error = match ctx
            .shard
            .group(GroupRequest::Delete(group_id.0.to_string()))
            .await
        {
            GroupResponse::Delete(e) => e,
            _ => None,
        };
        let mut out = DeletableGroupResult::default();
        out.group_id = group_id;
        out.error_code = group_error_code(error.as_ref());
        resp.results.push(out);
    }
    resp
}
