//! ListGroups (key 16): the groups of every shard, filtered by state (v4+)
//! and type (v5; every group here is "classic").

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};

use super::{str_bytes, Ctx};
use crate::security::Session;

pub async fn handle(req: ListGroupsRequest, _version: i16, ctx: &Ctx, session: &Session) -> ListGroupsResponse {
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_lowercase()).collect();
    let types: Vec<String> = req.types_filter.iter().map(|s| s.to_lowercase()).collect();
    let mut resp = ListGroupsResponse::default();
    resp.groups = ctx
        .shard
        .list_groups()
        .await
        .into_iter()
        .filter(|g| states.is_empty() || states.contains(&g.state.to_lowercase()))
        .filter(|_| types.is_empty() || types.iter().any(|t| t == "classic"))
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
