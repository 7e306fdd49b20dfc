//! DescribeAcls (key 29): the ACL bindings a filter matches
//! (`Acls::matching` on the current view), grouped by resource pattern as
//! the response carries them. Also the ACL wire conversions CreateAcls and
//! DeleteAcls share (`filter_of`, the code names of Kafka's enums) and the
//! Kafka code of a `SecurityError`.
//!
//! The filter: resource type (ANY = 1), resource name (null: any), pattern
//! type (ANY = 1, MATCH = 2, LITERAL = 3, PREFIXED = 4; v0 has none and is
//! LITERAL), principal and host (null: any; no wildcard semantics),
//! operation and permission (ANY = 1). A code Kafka reads as UNKNOWN (0,
//! or one it does not define) is INVALID_REQUEST. A code Kafka defines but
//! no stored ACL can have (resource types DELEGATION_TOKEN and USER,
//! operations CREATE_TOKENS and DESCRIBE_TOKENS) matches nothing.
//!
//! ACLs are managed whether or not this node runs `--authorizer` (they are
//! cluster metadata and can be staged before the authorizer is turned on),
//! where Kafka answers SECURITY_DISABLED.
//!
//! Authorization (`--authorizer`): DESCRIBE on the cluster, else
//! CLUSTER_AUTHORIZATION_FAILED at the top level, no resources.

use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{DescribeAclsRequest, DescribeAclsResponse};
use kafka_protocol::ResponseError;
use sluice_raft::{
    AclBinding, AclFilter, AclOperation, AclPermission, AclResourceType, PatternFilter,
};

use super::{str_bytes, Ctx};
use crate::errors::codes;
use crate::security::Session;

/// The ANY code of every ACL enum on the wire.
const ANY: i8 = 1;

pub fn handle(
    req: DescribeAclsRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> DescribeAclsResponse {
    let mut resp = DescribeAclsResponse::default();
    if !ctx.allowed_on_cluster(session, AclOperation::Describe) {
        let denied = ResponseError::ClusterAuthorizationFailed;
        resp.error_code = denied.code();
        resp.error_message = Some(str_bytes(denied.to_string()));
        return resp;
    }
    let wire = WireFilter {
        resource_type: req.resource_type_filter,
        resource_name: req.resource_name_filter.as_deref(),
        pattern_type: req.pattern_type_filter,
        principal: req.principal_filter.as_deref(),
        host: req.host_filter.as_deref(),
        operation: req.operation,
        permission: req.permission_type,
    };
    match filter_of(&wire) {
        Err(message) => {
            resp.error_code = codes::invalid_request();
            resp.error_message = Some(str_bytes(message));
        }
        Ok(None) => {}
        Ok(Some(filter)) => resp.resources = grouped(&ctx.view().acls.matching(&filter)),
    }
    resp
}

/// `bindings` (in `Acls::matching` order: by resource type, pattern type,
/// name) as one resource per pattern, with its entries.
fn grouped(bindings: &[AclBinding]) -> Vec<DescribeAclsResource> {
    let mut out: Vec<DescribeAclsResource> = Vec::new();
    for b in bindings {
        let same = out.last().is_some_and(|r| {
            r.resource_type == b.resource_type.code()
                && r.pattern_type == b.pattern_type.code()
                && r.resource_name.as_str() == b.resource_name
        });
        if !same {
            let mut r = DescribeAclsResource::default();
            r.resource_type = b.resource_type.code();
            r.resource_name = str_bytes(b.resource_name.as_str());
            r.pattern_type = b.pattern_type.code();
            out.push(r);
        }
        let mut acl = AclDescription::default();
        acl.principal = str_bytes(b.principal.as_str());
        acl.host = str_bytes(b.host.as_str());
        acl.operation = b.operation.code();
        acl.permission_type = b.permission.code();
        out.last_mut().expect("pushed above").acls.push(acl);
    }
    assert!(out.len() <= bindings.len());
    out
}

/// An ACL binding filter as DescribeAcls and DeleteAcls carry it.
pub struct WireFilter<'a> {
    pub resource_type: i8,
    pub resource_name: Option<&'a str>,
    pub pattern_type: i8,
    pub principal: Option<&'a str>,
    pub host: Option<&'a str>,
    pub operation: i8,
    pub permission: i8,
}

/// One filter code as Kafka reads it.
enum FilterCode<T> {
    Any,
    Is(T),
    /// Defined by Kafka, but no stored binding has it.
    Never,
    Unknown,
}

fn filter_code<T>(code: i8, parse: fn(i8) -> Option<T>, never: &[i8]) -> FilterCode<T> {
    match (code, parse(code)) {
        (ANY, _) => FilterCode::Any,
        (_, Some(v)) => FilterCode::Is(v),
        (c, None) if never.contains(&c) => FilterCode::Never,
        _ => FilterCode::Unknown,
    }
}

/// Resource types Kafka defines that no binding here has: DELEGATION_TOKEN,
/// USER.
const RESOURCE_TYPES_NEVER: [i8; 2] = [6, 7];
/// Operations Kafka defines that no binding here has: CREATE_TOKENS,
/// DESCRIBE_TOKENS.
const OPERATIONS_NEVER: [i8; 2] = [13, 14];

/// The metadata's filter of a wire filter; `Ok(None)`: it can match no
/// binding; `Err`: a code is UNKNOWN (Kafka's messages).
pub fn filter_of(w: &WireFilter<'_>) -> Result<Option<AclFilter>, String> {
    let resource_type = filter_code(
        w.resource_type,
        AclResourceType::from_code,
        &RESOURCE_TYPES_NEVER,
    );
    let pattern = match w.pattern_type {
        ANY => Some(PatternFilter::Any),
        2 => Some(PatternFilter::Match),
        3 => Some(PatternFilter::Literal),
        4 => Some(PatternFilter::Prefixed),
        _ => None,
    };
    let operation = filter_code(w.operation, AclOperation::from_code, &OPERATIONS_NEVER);
    let permission = filter_code(w.permission, AclPermission::from_code, &[]);
    let (Some(pattern), false) = (pattern, matches!(resource_type, FilterCode::Unknown)) else {
        return Err("Unknown patternFilter.".into());
    };
    if matches!(operation, FilterCode::Unknown) || matches!(permission, FilterCode::Unknown) {
        return Err("Unknown entryFilter.".into());
    }
    let (Some(resource_type), Some(operation), Some(permission)) =
        (known(resource_type), known(operation), known(permission))
    else {
        return Ok(None);
    };
    Ok(Some(AclFilter {
        resource_type,
        resource_name: w.resource_name.map(str::to_string),
        pattern,
        principal: w.principal.map(str::to_string),
        host: w.host.map(str::to_string),
        operation,
        permission,
    }))
}

/// `Some(None)` for ANY, `Some(Some(v))` for a value, `None` for a code
/// that matches nothing (or UNKNOWN, refused before).
fn known<T>(code: FilterCode<T>) -> Option<Option<T>> {
    match code {
        FilterCode::Any => Some(None),
        FilterCode::Is(v) => Some(Some(v)),
        FilterCode::Never | FilterCode::Unknown => None,
    }
}

/// Kafka's name of a `ResourceType` code, as its messages print it.
pub fn resource_type_name(code: i8) -> &'static str {
    const NAMES: [&str; 8] = [
        "UNKNOWN",
        "ANY",
        "TOPIC",
        "GROUP",
        "CLUSTER",
        "TRANSACTIONAL_ID",
        "DELEGATION_TOKEN",
        "USER",
    ];
    code_name(&NAMES, code)
}

/// Kafka's name of a `PatternType` code.
pub fn pattern_type_name(code: i8) -> &'static str {
    const NAMES: [&str; 5] = ["UNKNOWN", "ANY", "MATCH", "LITERAL", "PREFIXED"];
    code_name(&NAMES, code)
}

/// Kafka's name of an `AclOperation` code.
pub fn operation_name(code: i8) -> &'static str {
    const NAMES: [&str; 15] = [
        "UNKNOWN",
        "ANY",
        "ALL",
        "READ",
        "WRITE",
        "CREATE",
        "DELETE",
        "ALTER",
        "DESCRIBE",
        "CLUSTER_ACTION",
        "DESCRIBE_CONFIGS",
        "ALTER_CONFIGS",
        "IDEMPOTENT_WRITE",
        "CREATE_TOKENS",
        "DESCRIBE_TOKENS",
    ];
    code_name(&NAMES, code)
}

/// Kafka's name of an `AclPermissionType` code.
pub fn permission_name(code: i8) -> &'static str {
    const NAMES: [&str; 4] = ["UNKNOWN", "ANY", "DENY", "ALLOW"];
    code_name(&NAMES, code)
}

fn code_name(names: &[&'static str], code: i8) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|i| names.get(i))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// The Kafka error code and message of a refused security item (CreateAcls,
/// AlterClientQuotas, AlterUserScramCredentials).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::security_error;
    use sluice_raft::SecurityError;

    fn wire(
        resource_type: i8,
        pattern_type: i8,
        operation: i8,
        permission: i8,
    ) -> WireFilter<'static> {
        WireFilter {
            resource_type,
            resource_name: Some("t"),
            pattern_type,
            principal: None,
            host: None,
            operation,
            permission,
        }
    }

    #[test]
    fn filter_codes_as_kafka_reads_them() {
        let f = filter_of(&wire(2, 2, 3, 3))
            .expect("valid")
            .expect("can match");
        assert_eq!(f.resource_type, Some(AclResourceType::Topic));
        assert_eq!(f.pattern, PatternFilter::Match);
        assert_eq!(f.operation, Some(AclOperation::Read));
        assert_eq!(f.permission, Some(AclPermission::Allow));
        let any = filter_of(&wire(1, 1, 1, 1))
            .expect("valid")
            .expect("can match");
        assert_eq!(any.resource_type, None);
        assert_eq!(any.operation, None);
        assert_eq!(any.permission, None);
        for bad in [
            wire(0, 1, 1, 1),
            wire(8, 1, 1, 1),
            wire(1, 0, 1, 1),
            wire(1, 5, 1, 1),
        ] {
            assert_eq!(filter_of(&bad), Err("Unknown patternFilter.".into()));
        }
        for bad in [
            wire(1, 1, 0, 1),
            wire(1, 1, 15, 1),
            wire(1, 1, 1, 0),
            wire(1, 1, 1, 4),
        ] {
            assert_eq!(filter_of(&bad), Err("Unknown entryFilter.".into()));
        }
        assert_eq!(filter_of(&wire(6, 1, 1, 1)), Ok(None), "DELEGATION_TOKEN");
        assert_eq!(filter_of(&wire(1, 1, 13, 1)), Ok(None), "CREATE_TOKENS");
    }

    #[test]
    fn code_names_and_error_codes() {
        assert_eq!(resource_type_name(1), "ANY");
        assert_eq!(resource_type_name(-3), "UNKNOWN");
        assert_eq!(pattern_type_name(4), "PREFIXED");
        assert_eq!(operation_name(12), "IDEMPOTENT_WRITE");
        assert_eq!(operation_name(99), "UNKNOWN");
        assert_eq!(permission_name(2), "DENY");
        let code = |e: SecurityError| security_error(&e).0;
        assert_eq!(code(SecurityError::ResourceNotFound(String::new())), 91);
        assert_eq!(code(SecurityError::DuplicateResource(String::new())), 92);
        assert_eq!(
            code(SecurityError::UnacceptableCredential(String::new())),
            93
        );
        assert_eq!(code(SecurityError::InvalidRequest(String::new())), 42);
    }
}
