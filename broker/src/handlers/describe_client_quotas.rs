//! DescribeClientQuotas (key 48; v1 flexible): the client quota entities
//! a filter matches, with their values (`Quotas::describe` on the current
//! view). Each filter component names an entity type (`user`,
//! `client-id`, `ip`) and a match type: 0 EXACT (the name given), 1
//! DEFAULT (the `<default>` entity, no name given), 2 SPECIFIED (any
//! name, no name given); `strict`: the entity has no other component.
//!
//! A bad filter answers at the top level, entries null, with Kafka's codes
//! and messages (`ClientQuotasImage.describe`): an empty entity type, a
//! type given twice, a name missing for EXACT or given for DEFAULT and
//! SPECIFIED, an unknown match type, IP with user or client-id:
//! INVALID_REQUEST; an entity type Kafka does not know:
//! UNSUPPORTED_VERSION.
//!
//! Authorization (`--authorizer`): DESCRIBE_CONFIGS on the cluster, else
//! CLUSTER_AUTHORIZATION_FAILED at the top level, entries null.

use std::collections::BTreeSet;

use kafka_protocol::messages::describe_client_quotas_request::ComponentData;
use kafka_protocol::messages::describe_client_quotas_response::{EntityData, EntryData, ValueData};
use kafka_protocol::messages::{DescribeClientQuotasRequest, DescribeClientQuotasResponse};
use kafka_protocol::ResponseError;
use sluice_raft::{
    AclOperation, QuotaEntity, QuotaEntityType, QuotaFilter, QuotaFilterComponent, QuotaMatch,
    QuotaName, QuotaValues,
};

use super::{str_bytes, Ctx};
use crate::errors::codes;
use crate::errors::security_error;
use crate::security::Session;

const MATCH_EXACT: i8 = 0;
const MATCH_DEFAULT: i8 = 1;
const MATCH_SPECIFIED: i8 = 2;

pub fn handle(
    req: DescribeClientQuotasRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> DescribeClientQuotasResponse {
    if !ctx.allowed_on_cluster(session, AclOperation::DescribeConfigs) {
        let denied = ResponseError::ClusterAuthorizationFailed;
        return failed(denied.code(), denied.to_string());
    }
    let filter = match filter_of(&req) {
        Ok(filter) => filter,
        Err((code, message)) => return failed(code, message),
    };
    let found = match ctx.view().quotas.describe(&filter) {
        Ok(found) => found,
        Err(e) => {
            let (code, message) = security_error(&e);
            return failed(code, message.to_string());
        }
    };
    let mut resp = DescribeClientQuotasResponse::default();
    resp.entries = Some(
        found
            .iter()
            .map(|(entity, values)| entry(entity, values))
            .collect(),
    );
    resp
}

fn failed(code: i16, message: String) -> DescribeClientQuotasResponse {
    let mut resp = DescribeClientQuotasResponse::default();
    resp.error_code = code;
    resp.error_message = Some(str_bytes(message));
    resp.entries = None;
    resp
}

/// The metadata's filter of the request, or the code and message to answer.
fn filter_of(req: &DescribeClientQuotasRequest) -> Result<QuotaFilter, (i16, String)> {
    let invalid = |m: String| Err((codes::invalid_request(), m));
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut components = Vec::with_capacity(req.components.len());
    for c in &req.components {
        let name = c.entity_type.as_str();
        if name.is_empty() {
            return invalid("Invalid empty entity type.".into());
        }
        if !seen.insert(name) {
            return invalid(format!(
                "Entity type {name} cannot appear more than once in the filter."
            ));
        }
        let Some(entity_type) = QuotaEntityType::from_name(name) else {
            return Err((
                codes::unsupported_version(),
                format!("Unsupported entity type {name}"),
            ));
        };
        let matching = match_of(c).map_err(|m| (codes::invalid_request(), m))?;
        components.push(QuotaFilterComponent {
            entity_type,
            matching,
        });
    }
    assert_eq!(components.len(), req.components.len());
    Ok(QuotaFilter {
        components,
        strict: req.strict,
    })
}

fn match_of(c: &ComponentData) -> Result<QuotaMatch, String> {
    match (c.match_type, &c._match) {
        (MATCH_EXACT, Some(name)) => Ok(QuotaMatch::Exact(name.to_string())),
        (MATCH_EXACT, None) => {
            Err("Request specified MATCH_TYPE_EXACT, but set match string to null.".into())
        }
        (MATCH_DEFAULT, None) => Ok(QuotaMatch::Default),
        (MATCH_DEFAULT, Some(_)) => {
            Err("Request specified MATCH_TYPE_DEFAULT, but also specified a match string.".into())
        }
        (MATCH_SPECIFIED, None) => Ok(QuotaMatch::Specified),
        (MATCH_SPECIFIED, Some(_)) => {
            Err("Request specified MATCH_TYPE_SPECIFIED, but also specified a match string.".into())
        }
        (other, _) => Err(format!("Unknown match type {other}")),
    }
}

/// One entity and its values as the response carries them: components in
/// user, client-id, ip order; a null name for `<default>`.
fn entry(entity: &QuotaEntity, values: &QuotaValues) -> EntryData {
    let mut e = EntryData::default();
    e.entity = [
        QuotaEntityType::User,
        QuotaEntityType::ClientId,
        QuotaEntityType::Ip,
    ]
    .into_iter()
    .filter_map(|kind| {
        entity.get(kind).map(|name| {
            let mut d = EntityData::default();
            d.entity_type = str_bytes(kind.name());
            d.entity_name = match name {
                QuotaName::Default => None,
                QuotaName::Named(n) => Some(str_bytes(n.as_str())),
            };
            d
        })
    })
    .collect();
    e.values = values
        .iter()
        .map(|(key, value)| {
            let mut v = ValueData::default();
            v.key = str_bytes(key.as_str());
            v.value = *value;
            v
        })
        .collect();
    e
}
