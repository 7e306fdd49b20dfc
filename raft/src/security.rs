//! Security metadata replicated through the Raft log: SCRAM credentials
//! (`scram`), Kafka ACLs (`acl`) and client quotas (`quota`).
//!
//! Each kind is applied by the state machine from its own entries
//! (`AlterScramCredentials`, `CreateAcls` / `DeleteAcls`,
//! `AlterClientQuotas`), stored in the snapshot, and published in
//! `MetadataView` as a persistent structure (`ScramUsers`, `Acls`,
//! `Quotas`) whose clone is O(1): an unused kind costs an empty map.
//!
//! Invariants:
//! - Apply is a pure function of the entry and the state: no clock, no
//!   DNS, no randomness; any entry content, valid or not, yields a result
//!   per item and never a panic.
//! - No password is ever stored: a SCRAM credential holds the salted keys.
//! - Each kind is bounded (`SCRAM_USERS_MAX`, `ACLS_MAX`,
//!   `QUOTA_ENTITIES_MAX`); a change beyond the bound is refused with
//!   `SecurityError::InvalidRequest`.
//! - Errors are a `SecurityError` per item; the broker maps them to Kafka
//!   codes.

pub(crate) mod acl;
pub(crate) mod quota;
pub(crate) mod scram;

use serde::{Deserialize, Serialize};

/// SCRAM users at most (a user counts once, whatever its mechanisms).
pub const SCRAM_USERS_MAX: usize = 100_000;
/// ACL bindings at most.
pub const ACLS_MAX: usize = 100_000;
/// Client quota entities at most.
pub const QUOTA_ENTITIES_MAX: usize = 100_000;

/// Why one item of a security entry was refused; the message is meant for
/// the client (Kafka's `error_message`). The broker maps each variant to
/// the Kafka code named on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum SecurityError {
    /// RESOURCE_NOT_FOUND (91): deleting a SCRAM credential that does not
    /// exist.
    #[error("{0}")]
    ResourceNotFound(String),
    /// DUPLICATE_RESOURCE (92): one request alters the same user and
    /// mechanism twice.
    #[error("{0}")]
    DuplicateResource(String),
    /// UNACCEPTABLE_CREDENTIAL (93): empty user name, iterations out of
    /// range, malformed keys.
    #[error("{0}")]
    UnacceptableCredential(String),
    /// INVALID_REQUEST (42): a malformed ACL binding or quota alteration, a
    /// bad quota filter, or a bound reached.
    #[error("{0}")]
    InvalidRequest(String),
}
