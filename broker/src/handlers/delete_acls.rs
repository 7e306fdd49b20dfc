//! DeleteAcls (key 31): deletes the ACL bindings each filter matches, one
//! Raft entry for the batch (`Metadata::delete_acls`); each filter's result
//! lists the bindings it matched (a binding two filters match is listed by
//! both, as in Kafka). Filters are read as DescribeAcls reads them
//! (`describe_acls::filter_of`): one with an UNKNOWN code is answered
//! INVALID_REQUEST ("Unknown patternFilter." / "Unknown entryFilter.") and
//! left out of the entry; one that can match nothing is answered empty.
//! v0 filters are LITERAL (the codec's default), so every binding listed
//! at v0 is literal, as v0 responses require.
//!
//! Authorization (`--authorizer`): ALTER on the cluster, else every filter
//! result is CLUSTER_AUTHORIZATION_FAILED.

use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::{DeleteAclsRequest, DeleteAclsResponse};
use kafka_protocol::ResponseError;
use sluice_raft::{AclBinding, AclFilter, AclOperation};

use super::describe_acls::{filter_of, WireFilter};
use super::{str_bytes, Ctx};
use crate::errors::{codes, meta_error_code};
use crate::security::Session;

/// What one filter of the request became.
enum Checked {
    /// Sent to the metadata, answered in the entry's results.
    Proposed,
    /// Matches nothing: answered empty.
    Empty,
    Invalid(String),
}

pub async fn handle(
    req: DeleteAclsRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> DeleteAclsResponse {
    let mut resp = DeleteAclsResponse::default();
    if !ctx.allowed_on_cluster(session, AclOperation::Alter) {
        let denied = ResponseError::ClusterAuthorizationFailed;
        resp.filter_results = req
            .filters
            .iter()
            .map(|_| failed(denied.code(), denied.to_string()))
            .collect();
        return resp;
    }
    let mut proposed: Vec<AclFilter> = Vec::new();
    let checked: Vec<Checked> = req
        .filters
        .iter()
        .map(|f| match filter_of(&wire(f)) {
            Ok(Some(filter)) => {
                proposed.push(filter);
                Checked::Proposed
            }
            Ok(None) => Checked::Empty,
            Err(message) => Checked::Invalid(message),
        })
        .collect();
    let n = proposed.len();
    let mut deleted = match ctx.meta.delete_acls(proposed).await {
        Ok(lists) => lists
            .into_iter()
            .map(|l| Ok(matched(&l)))
            .collect::<Vec<_>>(),
        Err(e) => (0..n)
            .map(|_| Err((meta_error_code(&e), e.to_string())))
            .collect(),
    }
    .into_iter();
    assert_eq!(deleted.len(), n);
    resp.filter_results = checked
        .into_iter()
        .map(|c| match c {
            Checked::Proposed => match deleted.next().expect("one result per proposed filter") {
                Ok(acls) => {
                    let mut r = DeleteAclsFilterResult::default();
                    r.matching_acls = acls;
                    r
                }
                Err((code, message)) => failed(code, message),
            },
            Checked::Empty => DeleteAclsFilterResult::default(),
            Checked::Invalid(message) => failed(codes::invalid_request(), message),
        })
        .collect();
    let removed: usize = resp
        .filter_results
        .iter()
        .map(|r| r.matching_acls.len())
        .sum();
    if removed > 0 {
        tracing::debug!(removed, principal = %session.principal(), "ACLs deleted");
    }
    resp
}

fn wire(f: &DeleteAclsFilter) -> WireFilter<'_> {
    WireFilter {
        resource_type: f.resource_type_filter,
        resource_name: f.resource_name_filter.as_deref(),
        pattern_type: f.pattern_type_filter,
        principal: f.principal_filter.as_deref(),
        host: f.host_filter.as_deref(),
        operation: f.operation,
        permission: f.permission_type,
    }
}

fn failed(code: i16, message: String) -> DeleteAclsFilterResult {
    let mut r = DeleteAclsFilterResult::default();
    r.error_code = code;
    r.error_message = Some(str_bytes(message));
    r
}

fn matched(bindings: &[AclBinding]) -> Vec<DeleteAclsMatchingAcl> {
    bindings
        .iter()
        .map(|b| {
            let mut m = DeleteAclsMatchingAcl::default();
            m.resource_type = b.resource_type.code();
            m.resource_name = str_bytes(b.resource_name.as_str());
            m.pattern_type = b.pattern_type.code();
            m.principal = str_bytes(b.principal.as_str());
            m.host = str_bytes(b.host.as_str());
            m.operation = b.operation.code();
            m.permission_type = b.permission.code();
            m
        })
        .collect()
}
