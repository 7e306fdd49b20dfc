//! DeleteTopics (key 20): one metadata entry per existing topic. v0-5 name topics
//! in `topic_names`; v6 in `topics`, by name or by id.

use futures::future::join_all;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};

use super::{str_bytes, topic_name, topic_uuid, Ctx};
use sluice_raft::MetaError;

use crate::errors::{codes, meta_error_code};

pub async fn handle(req: DeleteTopicsRequest, version: i16, ctx: &Ctx) -> DeleteTopicsResponse {
    let targets: Vec<Target> = if version >= 6 {
        req.topics
            .into_iter()
            .map(|t| t.name.map(Target::Name).unwrap_or(Target::Id(t.topic_id)))
            .collect()
    } else {
        req.topic_names.into_iter().map(Target::Name).collect()
    };
    let results = join_all(targets.into_iter().map(|t| delete_one(t, ctx))).await;
    let mut resp = DeleteTopicsResponse::default();
    resp.responses = results
        .into_iter()
        .map(|r| if version >= 5 { r } else { without_message(r) })
        .collect();
    resp
}

enum Target {
    Name(TopicName),
    Id(uuid::Uuid),
}

fn without_message(mut r: DeletableTopicResult) -> DeletableTopicResult {
    r.error_message = None;
    r
}

async fn delete_one(target: Target, ctx: &Ctx) -> DeletableTopicResult {
    let mut r = DeletableTopicResult::default();
    let name = match target {
        Target::Name(name) => name.0.to_string(),
        Target::Id(id) => match ctx.view().topic_by_id(id.as_bytes()) {
            Some(t) => t.name.clone(),
            None => {
                r.topic_id = id;
                r.error_code = codes::unknown_topic_id();
                return r;
            }
        },
    };
    r.name = Some(topic_name(&name));
    // A name the view does not hold costs no metadata entry (a request
    // naming thousands of unknown topics is answered at once); one
    // deleted concurrently is refused by the entry itself.
    if ctx.topic(&name).is_none() {
        let e = MetaError::UnknownTopic(name);
        r.error_code = meta_error_code(&e);
        r.error_message = Some(str_bytes(e.to_string()));
        return r;
    }
    match ctx.meta.delete_topic(&name).await {
        Ok(topic) => {
            r.topic_id = topic_uuid(&topic);
            tracing::info!(topic = name, "topic deleted");
        }
        Err(e) => {
            r.error_code = meta_error_code(&e);
            r.error_message = Some(str_bytes(e.to_string()));
        }
    }
    r
}
