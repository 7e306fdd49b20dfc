//! SCRAM credentials (KIP-554): per user at most one credential per
//! mechanism, the salted keys only, never the password.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{SecurityError, SCRAM_USERS_MAX};

/// A SCRAM mechanism; the discriminants are Kafka's wire codes
/// (DescribeUserScramCredentials / AlterUserScramCredentials).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[repr(i8)]
pub enum ScramMechanism {
    Sha256 = 1,
    Sha512 = 2,
}

impl ScramMechanism {
    /// Fewest iterations Kafka accepts (`ScramMechanism.minIterations`).
    pub const ITERATIONS_MIN: u32 = 4096;
    /// Most iterations Kafka accepts.
    pub const ITERATIONS_MAX: u32 = 16384;

    /// The SASL mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism of a SASL mechanism name (exact, as Kafka).
    pub fn from_name(name: &str) -> Option<ScramMechanism> {
        match name {
            "SCRAM-SHA-256" => Some(ScramMechanism::Sha256),
            "SCRAM-SHA-512" => Some(ScramMechanism::Sha512),
            _ => None,
        }
    }

    /// Kafka's wire code.
    pub fn code(self) -> i8 {
        self as i8
    }

    /// The mechanism of a wire code; `None` for UNKNOWN (0) and others.
    pub fn from_code(code: i8) -> Option<ScramMechanism> {
        match code {
            1 => Some(ScramMechanism::Sha256),
            2 => Some(ScramMechanism::Sha512),
            _ => None,
        }
    }

    /// Bytes of the mechanism's hash: the length of `stored_key` and
    /// `server_key`.
    pub fn hash_bytes(self) -> usize {
        match self {
            ScramMechanism::Sha256 => 32,
            ScramMechanism::Sha512 => 64,
        }
    }
}

/// One SCRAM credential (RFC 5802): what the server needs to check a
/// client's proof and prove itself; the password is not derivable from it.
#[derive(
    Clone, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct ScramCredential {
    pub mechanism: ScramMechanism,
    pub iterations: u32,
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

/// Shows sizes, never key bytes (views and entries are logged at debug).
impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredential")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .field("salt_bytes", &self.salt.len())
            .field("stored_key_bytes", &self.stored_key.len())
            .field("server_key_bytes", &self.server_key.len())
            .finish()
    }
}

impl ScramCredential {
    /// Kafka's checks (iterations in `ITERATIONS_MIN..=ITERATIONS_MAX`),
    /// plus what authentication relies on: a salt, keys of the hash's size.
    pub fn validate(&self) -> Result<(), SecurityError> {
        let bad = |m: String| Err(SecurityError::UnacceptableCredential(m));
        let m = self.mechanism;
        if self.iterations < ScramMechanism::ITERATIONS_MIN {
            return bad(format!("Too few iterations for {}", m.name()));
        }
        if self.iterations > ScramMechanism::ITERATIONS_MAX {
            return bad(format!("Too many iterations for {}", m.name()));
        }
        if self.salt.is_empty() {
            return bad("the salt is empty".into());
        }
        let want = m.hash_bytes();
        if self.stored_key.len() != want || self.server_key.len() != want {
            return bad(format!("{} keys must be {want} bytes", m.name()));
        }
        Ok(())
    }
}

/// A user's SCRAM credentials: at most one per mechanism.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserScram {
    /// Indexed by `slot(mechanism)`; each credential's mechanism is its
    /// slot's.
    slots: [Option<ScramCredential>; 2],
}

fn slot(m: ScramMechanism) -> usize {
    match m {
        ScramMechanism::Sha256 => 0,
        ScramMechanism::Sha512 => 1,
    }
}

impl UserScram {
    /// The credential for `mechanism`, if the user has one.
    pub fn get(&self, mechanism: ScramMechanism) -> Option<&ScramCredential> {
        self.slots[slot(mechanism)].as_ref()
    }

    /// The user's credentials, SHA-256 first.
    pub fn credentials(&self) -> impl Iterator<Item = &ScramCredential> {
        self.slots.iter().flatten()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// Adds or replaces the credential of its mechanism.
    pub(crate) fn set(&mut self, credential: ScramCredential) {
        let i = slot(credential.mechanism);
        self.slots[i] = Some(credential);
    }

    /// Removes the credential of `mechanism`; whether there was one.
    pub(crate) fn remove(&mut self, mechanism: ScramMechanism) -> bool {
        self.slots[slot(mechanism)].take().is_some()
    }
}

/// SCRAM users by name; `users.get(name)` takes a `&str`.
pub type ScramUsers = imbl::OrdMap<String, Arc<UserScram>>;

/// The answer to an `AlterScramCredentials` entry: one result per item, in
/// the entry's order. A user's alterations apply together or not at all
/// (as Kafka's, whose results are per user): a valid item of a user with a
/// refused one carries that user's first error and is not applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramAlterResults {
    pub upsertions: Vec<Result<(), SecurityError>>,
    pub deletions: Vec<Result<(), SecurityError>>,
}

/// One item of an alteration, as checked.
struct Item<'a> {
    user: &'a str,
    mechanism: ScramMechanism,
    result: Result<(), SecurityError>,
}

/// Applies one `AlterScramCredentials` entry to `users`; with `if_absent`,
/// upsertions of a user that exists are refused (`DuplicateResource`).
pub(crate) fn alter(
    users: &mut ScramUsers,
    upsertions: Vec<(String, ScramCredential)>,
    deletions: Vec<(String, ScramMechanism)>,
    if_absent: bool,
) -> ScramAlterResults {
    let mut items = check(users, &upsertions, &deletions);
    if if_absent {
        for item in items.iter_mut().take(upsertions.len()) {
            if item.result.is_ok() && users.contains_key(item.user) {
                item.result = Err(SecurityError::DuplicateResource("the user exists".into()));
            }
        }
    }
    // A user with a refused item keeps every credential as it was.
    let mut failed: BTreeMap<&str, SecurityError> = BTreeMap::new();
    for item in &items {
        if let Err(e) = &item.result {
            failed.entry(item.user).or_insert_with(|| e.clone());
        }
    }
    for item in &mut items {
        if let (Ok(()), Some(e)) = (&item.result, failed.get(item.user)) {
            item.result = Err(e.clone());
        }
    }
    let (ups, dels) = items.split_at(upsertions.len());
    for (item, (_, mechanism)) in dels.iter().zip(&deletions) {
        if item.result.is_ok() {
            remove(users, item.user, *mechanism);
        }
    }
    for (item, (_, credential)) in ups.iter().zip(&upsertions) {
        if item.result.is_ok() {
            let mut user = users
                .get(item.user)
                .map_or_else(UserScram::default, |u| UserScram::clone(u));
            user.set(credential.clone());
            users.insert(item.user.to_string(), Arc::new(user));
        }
    }
    let results = ScramAlterResults {
        upsertions: ups.iter().map(|i| i.result.clone()).collect(),
        deletions: dels.iter().map(|i| i.result.clone()).collect(),
    };
    assert_eq!(results.upsertions.len(), upsertions.len());
    assert_eq!(results.deletions.len(), deletions.len());
    results
}

/// Each item's own verdict: upsertions first, then deletions.
fn check<'a>(
    users: &ScramUsers,
    upsertions: &'a [(String, ScramCredential)],
    deletions: &'a [(String, ScramMechanism)],
) -> Vec<Item<'a>> {
    let named = upsertions
        .iter()
        .map(|(u, c)| (u.as_str(), c.mechanism))
        .chain(deletions.iter().map(|(u, m)| (u.as_str(), *m)));
    let mut times: BTreeMap<(&str, ScramMechanism), u32> = BTreeMap::new();
    for key in named.clone() {
        *times.entry(key).or_default() += 1;
    }
    let mut new_users: BTreeSet<&str> = BTreeSet::new();
    let mut items: Vec<Item<'a>> = named
        .map(|(user, mechanism)| {
            let result = if user.is_empty() {
                Err(SecurityError::UnacceptableCredential(
                    "Username must not be empty".into(),
                ))
            } else if times[&(user, mechanism)] > 1 {
                Err(SecurityError::DuplicateResource(
                    "A user credential cannot be altered twice in the same request".into(),
                ))
            } else {
                Ok(())
            };
            Item {
                user,
                mechanism,
                result,
            }
        })
        .collect();
    let (ups, dels) = items.split_at_mut(upsertions.len());
    for (item, (_, credential)) in ups.iter_mut().zip(upsertions) {
        if item.result.is_ok() {
            item.result = credential.validate();
        }
        let is_new = !users.contains_key(item.user);
        let first_time = is_new && item.result.is_ok() && new_users.insert(item.user);
        if first_time && users.len() + new_users.len() > SCRAM_USERS_MAX {
            item.result = Err(SecurityError::InvalidRequest(format!(
                "at most {SCRAM_USERS_MAX} SCRAM users"
            )));
        }
    }
    for item in dels.iter_mut() {
        let exists = users
            .get(item.user)
            .is_some_and(|u| u.get(item.mechanism).is_some());
        if item.result.is_ok() && !exists {
            item.result = Err(SecurityError::ResourceNotFound(format!(
                "Attempt to delete a user credential that does not exist ({} of {})",
                item.mechanism.name(),
                item.user
            )));
        }
    }
    items
}

/// Removes one credential; a user left without any is removed.
fn remove(users: &mut ScramUsers, user: &str, mechanism: ScramMechanism) {
    let Some(old) = users.get(user) else {
        return;
    };
    let mut changed = UserScram::clone(old);
    changed.remove(mechanism);
    if changed.is_empty() {
        users.remove(user);
    } else {
        users.insert(user.to_string(), Arc::new(changed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ScramMechanism::{Sha256, Sha512};

    fn cred(mechanism: ScramMechanism, iterations: u32) -> ScramCredential {
        let n = mechanism.hash_bytes();
        ScramCredential {
            mechanism,
            iterations,
            salt: vec![7; 16],
            stored_key: vec![1; n],
            server_key: vec![2; n],
        }
    }

    fn up(user: &str, m: ScramMechanism, iterations: u32) -> (String, ScramCredential) {
        (user.to_string(), cred(m, iterations))
    }

    fn del(user: &str, m: ScramMechanism) -> (String, ScramMechanism) {
        (user.to_string(), m)
    }

    #[test]
    fn mechanism_codes_and_names() {
        assert_eq!(ScramMechanism::from_code(1), Some(Sha256));
        assert_eq!(ScramMechanism::from_code(2), Some(Sha512));
        assert_eq!(ScramMechanism::from_code(0), None);
        assert_eq!(ScramMechanism::from_code(3), None);
        assert_eq!((Sha256.code(), Sha512.code()), (1, 2));
        assert_eq!(Sha512.name(), "SCRAM-SHA-512");
        assert_eq!(ScramMechanism::from_name("SCRAM-SHA-256"), Some(Sha256));
        assert_eq!(ScramMechanism::from_name("PLAIN"), None);
        let shown = format!("{:?}", cred(Sha256, 4096));
        assert!(!shown.contains("[1, 1"), "no key bytes in Debug: {shown}");
    }

    /// An alteration as AlterUserScramCredentials makes it.
    fn alter(
        users: &mut ScramUsers,
        upsertions: Vec<(String, ScramCredential)>,
        deletions: Vec<(String, ScramMechanism)>,
    ) -> ScramAlterResults {
        super::alter(users, upsertions, deletions, false)
    }

    #[test]
    fn if_absent_creates_new_users_only() {
        let mut users = ScramUsers::new();
        alter(&mut users, vec![up("alice", Sha256, 8192)], vec![]);
        let r = super::alter(
            &mut users,
            vec![
                up("alice", Sha256, 4096),
                up("alice", Sha512, 4096),
                up("bob", Sha256, 4096),
            ],
            vec![],
            true,
        );
        assert!(matches!(
            r.upsertions[..],
            [
                Err(SecurityError::DuplicateResource(_)),
                Err(SecurityError::DuplicateResource(_)),
                Ok(())
            ]
        ));
        let alice = users.get("alice").expect("alice");
        assert_eq!(alice.get(Sha256).map(|c| c.iterations), Some(8192));
        assert!(
            alice.get(Sha512).is_none(),
            "an existing user is left as is"
        );
        assert!(users.get("bob").is_some());
    }

    #[test]
    fn upserts_replace_and_deletes_remove() {
        let mut users = ScramUsers::new();
        let r = alter(
            &mut users,
            vec![up("alice", Sha256, 4096), up("alice", Sha512, 8192)],
            vec![],
        );
        assert_eq!(r.upsertions, vec![Ok(()), Ok(())]);
        let alice = users.get("alice").expect("alice");
        assert_eq!(alice.get(Sha512).map(|c| c.iterations), Some(8192));
        assert_eq!(alice.credentials().count(), 2);
        // Replace one, delete the other.
        let r = alter(
            &mut users,
            vec![up("alice", Sha256, 16384)],
            vec![del("alice", Sha512)],
        );
        assert_eq!((r.upsertions, r.deletions), (vec![Ok(())], vec![Ok(())]));
        let alice = users.get("alice").expect("alice");
        assert_eq!(alice.get(Sha256).map(|c| c.iterations), Some(16384));
        assert!(alice.get(Sha512).is_none());
        let r = alter(&mut users, vec![], vec![del("alice", Sha256)]);
        assert_eq!(r.deletions, vec![Ok(())]);
        assert!(users.is_empty(), "a user without credentials is removed");
    }

    #[test]
    fn refusals_duplicate_not_found_unacceptable() {
        let mut users = ScramUsers::new();
        alter(&mut users, vec![up("bob", Sha256, 4096)], vec![]);
        let before = users.clone();
        let r = alter(
            &mut users,
            vec![
                up("dup", Sha256, 4096),
                up("dup", Sha256, 4096),
                up("low", Sha256, 4095),
                up("high", Sha512, 16385),
                up("", Sha256, 4096),
                up("bob", Sha512, 4096),
            ],
            vec![del("bob", Sha512), del("ghost", Sha256)],
        );
        let kind = |r: &Result<(), SecurityError>| match r {
            Ok(()) => "ok",
            Err(SecurityError::DuplicateResource(_)) => "dup",
            Err(SecurityError::ResourceNotFound(_)) => "missing",
            Err(SecurityError::UnacceptableCredential(_)) => "unacceptable",
            Err(SecurityError::InvalidRequest(_)) => "invalid",
        };
        let ups: Vec<&str> = r.upsertions.iter().map(kind).collect();
        let dels: Vec<&str> = r.deletions.iter().map(kind).collect();
        // bob's SHA-512 upsert and delete name the same pair.
        assert_eq!(
            ups,
            vec![
                "dup",
                "dup",
                "unacceptable",
                "unacceptable",
                "unacceptable",
                "dup"
            ]
        );
        assert_eq!(dels, vec!["dup", "missing"]);
        assert_eq!(users, before, "nothing applied");
        // Keys of the wrong size, no salt.
        let mut short = cred(Sha512, 4096);
        short.stored_key.truncate(32);
        let mut unsalted = cred(Sha256, 4096);
        unsalted.salt.clear();
        let r = alter(
            &mut users,
            vec![("a".into(), short), ("b".into(), unsalted)],
            vec![],
        );
        assert!(
            r.upsertions.iter().all(|r| kind(r) == "unacceptable"),
            "{r:?}"
        );
    }

    #[test]
    fn a_users_items_apply_together() {
        let mut users = ScramUsers::new();
        let r = alter(
            &mut users,
            vec![
                up("carol", Sha256, 4096),
                up("carol", Sha512, 100),
                up("dave", Sha256, 4096),
            ],
            vec![],
        );
        assert!(
            matches!(
                r.upsertions[0],
                Err(SecurityError::UnacceptableCredential(_))
            ),
            "carol's other item failed"
        );
        assert!(matches!(
            r.upsertions[1],
            Err(SecurityError::UnacceptableCredential(_))
        ));
        assert_eq!(r.upsertions[2], Ok(()));
        assert!(users.get("carol").is_none());
        assert!(users.get("dave").is_some());
    }
}
