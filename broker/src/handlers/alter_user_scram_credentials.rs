//! AlterUserScramCredentials (key 51): deletes and adds or replaces SCRAM
//! credentials, one Raft entry for the request
//! (`Metadata::alter_scram_credentials`), one result per user name (as
//! Kafka), in order of first mention (deletions, then upsertions).
//!
//! The client sends the salted password (PBKDF2 of the password); the
//! broker keeps only StoredKey and ServerKey derived from it
//! (`sasl::StoredCredential::from_salted_password`), with the salt and the
//! iteration count. A user's items apply together or not at all; the
//! user's result is its first refusal:
//! - UNACCEPTABLE_CREDENTIAL: empty user name, iterations outside
//!   4096..=16384 ("Too few iterations" / "Too many iterations"), a salted
//!   password that is not the hash's size, an empty or oversized salt;
//! - DUPLICATE_RESOURCE: the same user and mechanism twice in the request
//!   (one item per user and mechanism, as Kafka's ZooKeeper brokers: both
//!   mechanisms of a user may change in one request);
//! - UNSUPPORTED_SASL_MECHANISM: a mechanism code other than 1 (SHA-256)
//!   and 2 (SHA-512);
//! - RESOURCE_NOT_FOUND: deleting a credential that does not exist.
//!
//! Authorization (`--authorizer`): ALTER on the cluster, else every user
//! is CLUSTER_AUTHORIZATION_FAILED.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
};
use kafka_protocol::ResponseError;
use sluice_raft::{
    AclOperation, ScramAlterResults, ScramCredential, ScramMechanism, SecurityError,
};

use super::{str_bytes, Ctx};
use crate::errors::security_error;
use crate::errors::{codes, meta_error_code};
use crate::sasl::{ScramAlgorithm, StoredCredential};
use crate::security::Session;

/// Why a user's alteration is refused: Kafka code and message.
type Refusal = (i16, String);

/// The items of the request the metadata is asked to apply.
#[derive(Default)]
struct Proposal {
    upsertions: Vec<(String, ScramCredential)>,
    deletions: Vec<(String, ScramMechanism)>,
}

pub async fn handle(
    req: AlterUserScramCredentialsRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> AlterUserScramCredentialsResponse {
    let mentioned = mentions(&req);
    let mut emitted: BTreeSet<&str> = BTreeSet::new();
    let users: Vec<&str> = mentioned
        .iter()
        .map(|(user, _)| *user)
        .filter(|user| emitted.insert(user))
        .collect();
    let mut resp = AlterUserScramCredentialsResponse::default();
    if !ctx.allowed_on_cluster(session, AclOperation::Alter) {
        let denied = ResponseError::ClusterAuthorizationFailed;
        resp.results = users
            .iter()
            .map(|user| result(user, Some((denied.code(), denied.to_string()))))
            .collect();
        return resp;
    }
    let (mut refused, proposal) = check(&req, &mentioned);
    let applied = apply(proposal, ctx).await;
    for (user, refusal) in applied {
        refused.entry(user).or_insert(refusal);
    }
    resp.results = users
        .iter()
        .map(|user| result(user, refused.get(*user).cloned()))
        .collect();
    let altered = resp
        .results
        .iter()
        .filter(|r| r.error_code == codes::NONE)
        .count();
    if altered > 0 {
        tracing::debug!(altered, principal = %session.principal(), "SCRAM credentials altered");
    }
    resp
}

/// Every (user, mechanism code) the request names: deletions, then
/// upsertions.
fn mentions(req: &AlterUserScramCredentialsRequest) -> Vec<(&str, i8)> {
    let deletions = req.deletions.iter().map(|d| (d.name.as_str(), d.mechanism));
    let upsertions = req
        .upsertions
        .iter()
        .map(|u| (u.name.as_str(), u.mechanism));
    deletions.chain(upsertions).collect()
}

/// The broker's checks: the first refusal of each user refused, and the
/// items of the other users.
fn check<'a>(
    req: &'a AlterUserScramCredentialsRequest,
    mentioned: &[(&'a str, i8)],
) -> (BTreeMap<String, Refusal>, Proposal) {
    let mut times: BTreeMap<(&str, i8), usize> = BTreeMap::new();
    for key in mentioned {
        *times.entry(*key).or_default() += 1;
    }
    let mut refused: BTreeMap<String, Refusal> = BTreeMap::new();
    let mut proposal = Proposal::default();
    for d in &req.deletions {
        let user = d.name.as_str();
        match item_check(user, d.mechanism, times[&(user, d.mechanism)]) {
            Ok(mechanism) => proposal.deletions.push((user.to_string(), mechanism)),
            Err(r) => {
                refused.entry(user.to_string()).or_insert(r);
            }
        }
    }
    for u in &req.upsertions {
        let user = u.name.as_str();
        let credential = item_check(user, u.mechanism, times[&(user, u.mechanism)])
            .and_then(|mechanism| credential_of(u, mechanism));
        match credential {
            Ok(c) => proposal.upsertions.push((user.to_string(), c)),
            Err(r) => {
                refused.entry(user.to_string()).or_insert(r);
            }
        }
    }
    // A user's items apply together or not at all.
    proposal
        .deletions
        .retain(|(user, _)| !refused.contains_key(user));
    proposal
        .upsertions
        .retain(|(user, _)| !refused.contains_key(user));
    (refused, proposal)
}

/// The checks of one item that need no credential: its mechanism.
fn item_check(user: &str, mechanism: i8, times: usize) -> Result<ScramMechanism, Refusal> {
    let unacceptable = ResponseError::UnacceptableCredential.code();
    if user.is_empty() {
        return Err((unacceptable, "Username must not be empty".into()));
    }
    if times > 1 {
        return Err((
            ResponseError::DuplicateResource.code(),
            "A user credential cannot be altered twice in the same request".into(),
        ));
    }
    ScramMechanism::from_code(mechanism).ok_or_else(|| {
        (
            ResponseError::UnsupportedSaslMechanism.code(),
            "Unknown SCRAM mechanism".into(),
        )
    })
}

/// The credential stored for an upsertion: the keys derived from its
/// salted password, which is not kept.
fn credential_of(
    u: &ScramCredentialUpsertion,
    mechanism: ScramMechanism,
) -> Result<ScramCredential, Refusal> {
    let unacceptable = |m: String| (ResponseError::UnacceptableCredential.code(), m);
    // A negative count is too few.
    let iterations = u32::try_from(u.iterations).unwrap_or(0);
    if iterations < ScramMechanism::ITERATIONS_MIN {
        return Err(unacceptable("Too few iterations".into()));
    }
    if iterations > ScramMechanism::ITERATIONS_MAX {
        return Err(unacceptable("Too many iterations".into()));
    }
    let alg = match mechanism {
        ScramMechanism::Sha256 => ScramAlgorithm::Sha256,
        ScramMechanism::Sha512 => ScramAlgorithm::Sha512,
    };
    let want = alg.digest_bytes();
    if u.salted_password.len() != want {
        return Err(unacceptable(format!(
            "The salted password of {} must be {want} bytes, not {}",
            mechanism.name(),
            u.salted_password.len()
        )));
    }
    let stored =
        StoredCredential::from_salted_password(alg, &u.salted_password, &u.salt, iterations)
            .map_err(|e| unacceptable(e.to_string()))?;
    assert_eq!(stored.stored_key.len(), mechanism.hash_bytes());
    Ok(ScramCredential {
        mechanism,
        iterations: stored.iterations,
        salt: stored.salt,
        stored_key: stored.stored_key,
        server_key: stored.server_key,
    })
}

/// Proposes the checked items in one entry: the refusal of each user the
/// metadata refused.
async fn apply(proposal: Proposal, ctx: &Ctx) -> Vec<(String, Refusal)> {
    let users: Vec<String> = proposal
        .deletions
        .iter()
        .map(|(user, _)| user.clone())
        .chain(proposal.upsertions.iter().map(|(user, _)| user.clone()))
        .collect();
    let results = match ctx
        .meta
        .alter_scram_credentials(proposal.upsertions, proposal.deletions)
        .await
    {
        Ok(ScramAlterResults {
            upsertions,
            deletions,
        }) => deletions.into_iter().chain(upsertions),
        Err(e) => {
            let refusal = (meta_error_code(&e), e.to_string());
            return users
                .into_iter()
                .map(|user| (user, refusal.clone()))
                .collect();
        }
    };
    let results: Vec<Result<(), SecurityError>> = results.collect();
    assert_eq!(results.len(), users.len());
    users
        .into_iter()
        .zip(results)
        .filter_map(|(user, r)| {
            let e = r.err()?;
            let (code, message) = security_error(&e);
            Some((user, (code, message.to_string())))
        })
        .collect()
}

fn result(user: &str, refusal: Option<Refusal>) -> AlterUserScramCredentialsResult {
    let mut r = AlterUserScramCredentialsResult::default();
    r.user = str_bytes(user);
    if let Some((code, message)) = refusal {
        r.error_code = code;
        r.error_message = Some(str_bytes(message));
    }
    r
}
