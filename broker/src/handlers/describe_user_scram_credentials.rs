//! DescribeUserScramCredentials (key 50): each user's SCRAM mechanisms
//! and iteration counts (never salts or keys), from the current view's
//! `users`. `users` null or empty: every user, in name order; else one
//! result per distinct name, in request order: a name given twice is
//! DUPLICATE_RESOURCE, a user without credentials RESOURCE_NOT_FOUND (as
//! Kafka's `ScramImage.describe`).
//!
//! Authorization (`--authorizer`): DESCRIBE on the cluster, else
//! CLUSTER_AUTHORIZATION_FAILED at the top level and for each named user.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};
use kafka_protocol::ResponseError;
use sluice_raft::{AclOperation, ScramUsers};

use super::{str_bytes, Ctx};
use crate::security::Session;

pub fn handle(
    req: DescribeUserScramCredentialsRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> DescribeUserScramCredentialsResponse {
    let mut resp = DescribeUserScramCredentialsResponse::default();
    let named: Vec<&str> = req
        .users
        .iter()
        .flatten()
        .map(|u| u.name.as_str())
        .collect();
    if !ctx.allowed_on_cluster(session, AclOperation::Describe) {
        let denied = ResponseError::ClusterAuthorizationFailed;
        resp.error_code = denied.code();
        resp.error_message = Some(str_bytes(denied.to_string()));
        resp.results = named
            .iter()
            .map(|user| failed(user, denied.code(), denied.to_string()))
            .collect();
        return resp;
    }
    let view = ctx.view();
    let users = &view.users;
    resp.results = if named.is_empty() {
        users.keys().map(|user| described(users, user)).collect()
    } else {
        let mut times: BTreeMap<&str, usize> = BTreeMap::new();
        for user in &named {
            *times.entry(user).or_default() += 1;
        }
        // Each name once, where it first appears.
        let mut emitted: BTreeSet<&str> = BTreeSet::new();
        let answered: Vec<&str> = named
            .iter()
            .copied()
            .filter(|u| emitted.insert(u))
            .collect();
        answered
            .into_iter()
            .map(|user| match times[user] {
                2.. => failed(
                    user,
                    ResponseError::DuplicateResource.code(),
                    format!(
                        "Cannot describe SCRAM credentials for the same user twice in a single request: {user}"
                    ),
                ),
                _ => described(users, user),
            })
            .collect()
    };
    resp
}

/// One user's credentials, or RESOURCE_NOT_FOUND.
fn described(users: &ScramUsers, user: &str) -> DescribeUserScramCredentialsResult {
    let infos: Vec<CredentialInfo> = users
        .get(user)
        .map(|u| {
            u.credentials()
                .map(|c| {
                    let mut info = CredentialInfo::default();
                    info.mechanism = c.mechanism.code();
                    info.iterations = i32::try_from(c.iterations).unwrap_or(i32::MAX);
                    info
                })
                .collect()
        })
        .unwrap_or_default();
    if infos.is_empty() {
        return failed(
            user,
            ResponseError::ResourceNotFound.code(),
            format!("attempt to describe a user credential that does not exist: {user}"),
        );
    }
    let mut r = DescribeUserScramCredentialsResult::default();
    r.user = str_bytes(user);
    r.credential_infos = infos;
    r
}

fn failed(user: &str, code: i16, message: String) -> DescribeUserScramCredentialsResult {
    let mut r = DescribeUserScramCredentialsResult::default();
    r.user = str_bytes(user);
    r.error_code = code;
    r.error_message = Some(str_bytes(message));
    r
}
