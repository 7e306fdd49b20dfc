//! AlterClientQuotas (key 49; v1 flexible): sets or removes quota values
//! per entity (`Metadata::alter_client_quotas`, one Raft entry for the
//! valid entities), one result per entity in order, echoing its
//! components. An entity is components `user`, `client-id` or `ip`, a null
//! name being `<default>`; each op sets a key to `value`, or removes it
//! (`remove`). An entity left without keys is removed.
//!
//! Checks, as Kafka's controller (`ClientQuotaControlManager`), each
//! INVALID_REQUEST for its entity alone: an empty entity, a component type
//! given twice or not one of the three, an empty name, IP with user or
//! client-id, an IP name that is no address, a key given twice or not one
//! of the entity kind's, a byte or connection rate that is not integral;
//! and here also a negative or non-finite value. An entity given twice is
//! refused the second time ("Ignoring duplicate entity").
//! `validate_only` answers the same results and writes nothing.
//!
//! Authorization (`--authorizer`): ALTER_CONFIGS on the cluster, else
//! every entry is CLUSTER_AUTHORIZATION_FAILED.

use std::collections::BTreeSet;
use std::net::IpAddr;

use kafka_protocol::messages::alter_client_quotas_request::EntryData as RequestEntry;
use kafka_protocol::messages::alter_client_quotas_response::{EntityData, EntryData};
use kafka_protocol::messages::{AlterClientQuotasRequest, AlterClientQuotasResponse};
use kafka_protocol::ResponseError;
use sluice_raft::{
    validate_quota_alteration, AclOperation, QuotaAlteration, QuotaEntity, QuotaEntityType,
    QuotaName, QuotaOps, SecurityError,
};

use super::{str_bytes, Ctx};
use crate::errors::security_error;
use crate::errors::{codes, meta_error_code};
use crate::security::Session;

pub async fn handle(
    req: AlterClientQuotasRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> AlterClientQuotasResponse {
    let mut resp = AlterClientQuotasResponse::default();
    if !ctx.allowed_on_cluster(session, AclOperation::AlterConfigs) {
        let denied = ResponseError::ClusterAuthorizationFailed;
        resp.entries = req
            .entries
            .iter()
            .map(|e| result(e, denied.code(), Some(denied.to_string())))
            .collect();
        return resp;
    }
    let checked = check_all(&req.entries);
    let outcomes = if req.validate_only {
        checked
            .into_iter()
            .map(|c| c.map(|_| ()).map_err(|e| code_of(&e)))
            .collect()
    } else {
        apply(checked, ctx).await
    };
    assert_eq!(outcomes.len(), req.entries.len());
    resp.entries = req
        .entries
        .iter()
        .zip(outcomes)
        .map(|(e, outcome)| match outcome {
            Ok(()) => result(e, codes::NONE, None),
            Err((code, message)) => result(e, code, Some(message)),
        })
        .collect();
    resp
}

type Outcome = Result<(), (i16, String)>;

fn code_of(e: &SecurityError) -> (i16, String) {
    let (code, message) = security_error(e);
    (code, message.to_string())
}

/// Every entry checked, as the metadata would apply it: its alteration, or
/// why it is refused (an entity repeated is refused the second time).
fn check_all(entries: &[RequestEntry]) -> Vec<Result<QuotaAlteration, SecurityError>> {
    let mut seen: BTreeSet<QuotaEntity> = BTreeSet::new();
    entries
        .iter()
        .map(|e| {
            let alteration = alteration_of(e)?;
            validate_quota_alteration(&alteration.0, &alteration.1)?;
            if !seen.insert(alteration.0.clone()) {
                return Err(SecurityError::InvalidRequest(format!(
                    "Ignoring duplicate entity {}",
                    entity_text(&alteration.0)
                )));
            }
            Ok(alteration)
        })
        .collect()
}

/// Writes the valid alterations in one entry; one outcome per entry.
async fn apply(checked: Vec<Result<QuotaAlteration, SecurityError>>, ctx: &Ctx) -> Vec<Outcome> {
    let mut valid: Vec<QuotaAlteration> = Vec::new();
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(checked.len());
    for c in checked {
        match c {
            Ok(alteration) => {
                valid.push(alteration);
                outcomes.push(None);
            }
            Err(e) => outcomes.push(Some(Err(code_of(&e)))),
        }
    }
    let n = valid.len();
    let applied: Vec<Outcome> = if n == 0 {
        Vec::new()
    } else {
        match ctx.meta.alter_client_quotas(valid).await {
            Ok(results) => results
                .into_iter()
                .map(|r| r.map_err(|e| code_of(&e)))
                .collect(),
            Err(e) => (0..n)
                .map(|_| Err((meta_error_code(&e), e.to_string())))
                .collect(),
        }
    };
    assert_eq!(applied.len(), n);
    let mut applied = applied.into_iter();
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| applied.next().expect("one result per proposed entity")))
        .collect()
}

/// The alteration an entry asks for; an IP name canonical, as stored.
fn alteration_of(e: &RequestEntry) -> Result<QuotaAlteration, SecurityError> {
    let bad = |m: String| Err(SecurityError::InvalidRequest(m));
    let mut entity = QuotaEntity {
        user: None,
        client_id: None,
        ip: None,
    };
    for c in &e.entity {
        let kind_name = c.entity_type.as_str();
        let Some(kind) = QuotaEntityType::from_name(kind_name) else {
            return bad(format!("Unhandled client quota entity type: {kind_name}"));
        };
        let slot = match kind {
            QuotaEntityType::User => &mut entity.user,
            QuotaEntityType::ClientId => &mut entity.client_id,
            QuotaEntityType::Ip => &mut entity.ip,
        };
        if slot.is_some() {
            return bad(format!("Duplicate entity entry {kind_name}"));
        }
        *slot = Some(match &c.entity_name {
            None => QuotaName::Default,
            Some(name) if kind == QuotaEntityType::Ip => QuotaName::Named(canonical_ip(name)),
            Some(name) => QuotaName::Named(name.to_string()),
        });
    }
    let ops: QuotaOps = e
        .ops
        .iter()
        .map(|op| (op.key.to_string(), (!op.remove).then_some(op.value)))
        .collect();
    Ok((entity, ops))
}

/// An IP address in its canonical spelling; anything else unchanged (the
/// metadata refuses it).
fn canonical_ip(name: &str) -> String {
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().to_string(),
        Err(_) => name.to_string(),
    }
}

/// An entity as Kafka prints it in messages: `user=alice, client-id=<default>`.
fn entity_text(entity: &QuotaEntity) -> String {
    [
        QuotaEntityType::User,
        QuotaEntityType::ClientId,
        QuotaEntityType::Ip,
    ]
    .into_iter()
    .filter_map(|kind| {
        entity.get(kind).map(|name| match name {
            QuotaName::Default => format!("{}=<default>", kind.name()),
            QuotaName::Named(n) => format!("{}={n}", kind.name()),
        })
    })
    .collect::<Vec<_>>()
    .join(", ")
}

fn result(e: &RequestEntry, error_code: i16, message: Option<String>) -> EntryData {
    let mut r = EntryData::default();
    r.error_code = error_code;
    r.error_message = message.map(str_bytes);
    r.entity = e
        .entity
        .iter()
        .map(|c| {
            let mut d = EntityData::default();
            d.entity_type = c.entity_type.clone();
            d.entity_name = c.entity_name.clone();
            d
        })
        .collect();
    r
}
