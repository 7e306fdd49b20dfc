//! ListGroups (key 16): the groups of every shard, filtered by state (v4+)
//! and type (v5; every group here is "classic"). With `--authorizer`, as
//! Kafka: every group for a principal that may DESCRIBE the cluster, else
//! only the groups it may DESCRIBE.

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};

use super::{str_bytes, Ctx};
use crate::security::{AclOperation, AclResourceType, Session};

pub async fn handle(
    req: ListGroupsRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> ListGroupsResponse {
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_lowercase()).collect();
    let types: Vec<String> = req.types_filter.iter().map(|s| s.to_lowercase()).collect();
    let describe = AclOperation::Describe;
    let every_group = ctx.allowed_on_cluster(session, describe);
    let groups = ctx.shard.list_groups().await;
    let view = (!every_group).then(|| ctx.view());
    let may_describe = |group_id: &str| {
        view.as_ref().map_or(true, |view| {
            let kind = AclResourceType::Group;
            ctx.node
                .security
                .authorize(view, session, describe, kind, group_id)
        })
    };
    let mut resp = ListGroupsResponse::default();
    resp.groups = groups
        .into_iter()
        .filter(|g| states.is_empty() || states.contains(&g.state.to_lowercase()))
        .filter(|_| types.is_empty() || types.iter().any(|t| t == "classic"))
        .filter(|g| may_describe(&g.group_id))
        .map(|g| {
            let mut out = ListedGroup::default();
            out.group_id = GroupId(str_bytes(g.group_id));
            out.protocol_type = str_bytes(g.protocol_type);
            out.group_state = str_bytes(g.state);
            out.group_type = str_bytes("classic");
            out
        })
        .collect();
    resp
}
