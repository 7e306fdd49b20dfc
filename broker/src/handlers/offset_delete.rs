//! OffsetDelete (key 47): forgets committed offsets of a group that has no
//! members (we do not parse subscriptions, so any live member refuses it
//! with GROUP_SUBSCRIBED_TO_TOPIC).
//!
//! Authorization (`--authorizer`), as Kafka: DELETE on the group (else
//! GROUP_AUTHORIZATION_FAILED), then READ on each topic (else its
//! partitions get TOPIC_AUTHORIZATION_FAILED and keep their offsets).

use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};

use kafka_protocol::ResponseError;

use super::Ctx;
use crate::errors::group_error_code;
use crate::plane::{GroupRequest, GroupResponse, OffsetDeleteRequest as DeleteOffsets};
use crate::security::{AclOperation, AclResourceType, Session};

pub async fn handle(
    req: OffsetDeleteRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> OffsetDeleteResponse {
    let group = AclResourceType::Group;
    let refused = (!ctx.allowed(session, AclOperation::Delete, group, &req.group_id.0))
        .then(|| ResponseError::GroupAuthorizationFailed.code());
    let may_read =
        |name: &str| ctx.allowed(session, AclOperation::Read, AclResourceType::Topic, name);
    if let Some(code) = refused.or_else(|| ctx.not_coordinator(&req.group_id.0)) {
        let mut resp = OffsetDeleteResponse::default();
        resp.error_code = code;
        return resp;
    }
    let partitions = req
        .topics
        .iter()
        .filter(|t| may_read(&t.name.0))
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.0.to_string(), p.partition_index))
        })
        .collect();
    let del = DeleteOffsets {
        group_id: req.group_id.0.to_string(),
        partitions,
    };
    let GroupResponse::OffsetDelete(r) = ctx.shard.group(GroupRequest::OffsetDelete(del)).await
    else {
        unreachable!("an offset delete is answered with its result");
    };
    let mut resp = OffsetDeleteResponse::default();
    resp.error_code = group_error_code(r.error.as_ref());
    if r.error.is_some() {
        return resp;
    }
    let mut results = r.partitions.into_iter();
    resp.topics = req
        .topics
        .into_iter()
        .map(|t| {
            let mut out = OffsetDeleteResponseTopic::default();
            let readable = may_read(&t.name.0);
            out.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut o = OffsetDeleteResponsePartition::default();
                    o.partition_index = p.partition_index;
                    if !readable {
                        o.error_code = ResponseError::TopicAuthorizationFailed.code();
                        return o;
                    }
                    let e = results.next().and_then(|(_, _, e)| e);
                    o.error_code = group_error_code(e.as_ref());
                    o
                })
                .collect();
            out.name = t.name;
            out
        })
        .collect();
    resp
}
