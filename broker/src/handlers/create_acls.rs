//! CreateAcls (key 30): adds ACL bindings, one Raft entry for the batch
//! (`Metadata::create_acls`), one result per creation in order. A binding
//! that exists already is created again without error (as Kafka).
//!
//! Each creation is checked first as Kafka's controller does
//! (`validateNewAcl`): resource type, pattern type (LITERAL or PREFIXED;
//! v0 carries none and is LITERAL), operation and permission must be
//! concrete codes, else INVALID_REQUEST ("Invalid resourceType ANY", ...);
//! then `AclBinding::validate` (a resource name, the cluster's
//! `kafka-cluster`, a `Type:name` principal, a host). Resource types
//! DELEGATION_TOKEN and USER and operations CREATE_TOKENS and
//! DESCRIBE_TOKENS are not stored here: INVALID_REQUEST. Only valid
//! bindings reach the log; none, no entry.
//!
//! Authorization (`--authorizer`): ALTER on the cluster, else every
//! creation is CLUSTER_AUTHORIZATION_FAILED.

use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::{CreateAclsRequest, CreateAclsResponse};
use kafka_protocol::ResponseError;
use sluice_raft::{AclBinding, AclOperation, AclPatternType, AclPermission, AclResourceType};

use super::describe_acls::{
    operation_name, pattern_type_name, permission_name, resource_type_name,
};
use super::{str_bytes, Ctx};
use crate::errors::{codes, meta_error_code, security_error};
use crate::security::Session;

pub async fn handle(
    req: CreateAclsRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> CreateAclsResponse {
    let mut resp = CreateAclsResponse::default();
    if !ctx.allowed_on_cluster(session, AclOperation::Alter) {
        let denied = ResponseError::ClusterAuthorizationFailed;
        resp.results = req
            .creations
            .iter()
            .map(|_| result(denied.code(), Some(denied.to_string())))
            .collect();
        return resp;
    }
    let checked: Vec<Result<AclBinding, String>> = req.creations.iter().map(binding_of).collect();
    let valid: Vec<AclBinding> = checked
        .iter()
        .filter_map(|c| c.as_ref().ok())
        .cloned()
        .collect();
    let proposed = valid.len();
    let applied = ctx.meta.create_acls(valid).await;
    let mut applied = match applied {
        Ok(results) => results
            .into_iter()
            .map(|r| match r {
                Ok(()) => result(codes::NONE, None),
                Err(e) => {
                    let (code, message) = security_error(&e);
                    result(code, Some(message.to_string()))
                }
            })
            .collect::<Vec<_>>(),
        Err(e) => (0..proposed)
            .map(|_| result(meta_error_code(&e), Some(e.to_string())))
            .collect(),
    }
    .into_iter();
    assert_eq!(applied.len(), proposed);
    resp.results = checked
        .into_iter()
        .map(|c| match c {
            Ok(_) => applied.next().expect("one result per proposed binding"),
            Err(message) => result(codes::invalid_request(), Some(message)),
        })
        .collect();
    let created = resp
        .results
        .iter()
        .filter(|r| r.error_code == codes::NONE)
        .count();
    if created > 0 {
        tracing::debug!(created, principal = %session.principal(), "ACLs created");
    }
    resp
}

fn result(error_code: i16, message: Option<String>) -> AclCreationResult {
    let mut r = AclCreationResult::default();
    r.error_code = error_code;
    r.error_message = message.map(str_bytes);
    r
}

/// The binding a creation asks for, or why Kafka refuses it.
fn binding_of(c: &AclCreation) -> Result<AclBinding, String> {
    let resource_type = concrete(
        c.resource_type,
        resource_type_name,
        AclResourceType::from_code,
        "resourceType",
    )?;
    let pattern_type = AclPatternType::from_code(c.resource_pattern_type).ok_or_else(|| {
        format!(
            "Invalid patternType {}",
            pattern_type_name(c.resource_pattern_type)
        )
    })?;
    let operation = concrete(
        c.operation,
        operation_name,
        AclOperation::from_code,
        "operation",
    )?;
    let permission = AclPermission::from_code(c.permission_type).ok_or_else(|| {
        format!(
            "Invalid permissionType {}",
            permission_name(c.permission_type)
        )
    })?;
    let binding = AclBinding {
        resource_type,
        resource_name: c.resource_name.to_string(),
        pattern_type,
        principal: c.principal.to_string(),
        host: c.host.to_string(),
        operation,
        permission,
    };
    binding.validate().map_err(|e| e.to_string())?;
    Ok(binding)
}

/// The value of a resource type or operation code of a creation: UNKNOWN
/// and ANY are invalid (Kafka's message names the field), a code Kafka
/// defines that is not stored here is not supported.
fn concrete<T>(
    code: i8,
    name: fn(i8) -> &'static str,
    parse: fn(i8) -> Option<T>,
    field: &str,
) -> Result<T, String> {
    match (name(code), parse(code)) {
        (_, Some(v)) => Ok(v),
        (n @ ("UNKNOWN" | "ANY"), None) => Err(format!("Invalid {field} {n}")),
        (n, None) => Err(format!("{field} {n} is not supported by this broker")),
    }
}
