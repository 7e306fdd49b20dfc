//! DescribeGroups (key 15): state, protocol and members of each group; an
//! unknown group is described as "Dead" with no error, as Kafka does.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};

use super::{str_bytes, Ctx};
use crate::errors::group_error_code;
use crate::plane::{GroupRequest, GroupResponse};
use crate::security::Session;

/// Kafka's "not requested" value of authorized_operations.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

pub async fn handle(
    req: DescribeGroupsRequest,
    _version: i16,
    ctx: &Ctx, session: &Session,
) -> DescribeGroupsResponse {
    let mut resp = DescribeGroupsResponse::default();
    for group_id in req.groups {
        if let Some(code) = ctx.not_coordinator(&group_id.0) {
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
        resp.groups.push(out);
    }
    resp
}
