//! DescribeGroups (key 15): state, protocol and members of each group; an
//! unknown group is described as "Dead" with no error, as Kafka does.
//! A group `session` may not DESCRIBE (`--authorizer`) gets
//! GROUP_AUTHORIZATION_FAILED; with `include_authorized_operations` (v3+)
//! a described group carries the operations `session` may do on it.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};

use kafka_protocol::ResponseError;

use super::metadata::authorized_operations;
use super::{str_bytes, Ctx};
use crate::errors::{codes, group_error_code};
use crate::plane::{GroupRequest, GroupResponse};
use crate::security::{AclOperation, AclResourceType, Session};

/// Kafka's "not requested" value of authorized_operations.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

/// First version with authorized operations.
const AUTHORIZED_OPERATIONS_MIN_VERSION: i16 = 3;

pub async fn handle(
    req: DescribeGroupsRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> DescribeGroupsResponse {
    let mut resp = DescribeGroupsResponse::default();
    let with_operations =
        version >= AUTHORIZED_OPERATIONS_MIN_VERSION && req.include_authorized_operations;
    for group_id in req.groups {
        let kind = AclResourceType::Group;
        let refused = (!ctx.allowed(session, AclOperation::Describe, kind, &group_id.0))
            .then(|| ResponseError::GroupAuthorizationFailed.code());
        if let Some(code) = refused.or_else(|| ctx.not_coordinator(&group_id.0)) {
            let mut out = DescribedGroup::default();
            out.group_id = group_id;
            out.error_code = code;
            out.authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
            resp.groups.push(out);
            continue;
        }
        let r = ctx
            .shard
            .group(GroupRequest::Describe(group_id.0.to_string()))
            .await;
        let GroupResponse::Describe(d) = r else {
            unreachable!("a describe is answered with a description");
        };
        let mut out = DescribedGroup::default();
        out.group_id = group_id;
        out.error_code = group_error_code(d.error.as_ref());
        out.group_state = str_bytes(d.state);
        out.protocol_type = str_bytes(d.protocol_type);
        out.protocol_data = str_bytes(d.protocol);
        out.authorized_operations = AUTHORIZED_OPERATIONS_OMITTED;
        out.members = d
            .members
            .into_iter()
            .map(|m| {
                let mut o = DescribedGroupMember::default();
                o.member_id = str_bytes(m.member_id);
                o.group_instance_id = m.group_instance_id.map(str_bytes);
                o.client_id = str_bytes(m.client_id);
                o.client_host = str_bytes(m.client_host);
                o.member_metadata = m.metadata;
                o.member_assignment = m.assignment;
                o
            })
            .collect();
        if with_operations && out.error_code == codes::NONE {
            let view = ctx.view();
            out.authorized_operations =
                authorized_operations(ctx, &view, session, kind, &out.group_id.0);
        }
        resp.groups.push(out);
    }
    resp
}
