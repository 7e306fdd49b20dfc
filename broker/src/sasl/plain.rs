//! SASL PLAIN (RFC 4616), server side: one message `authzid NUL authcid NUL
//! passwd`, checked against the user's SCRAM credential (SHA-512 if it has
//! one, else SHA-256): SaltedPassword = PBKDF2(passwd, salt, iterations),
//! its StoredKey compared in constant time. No password is stored anywhere.
//!
//! An unknown user (or one without a usable credential) costs the same
//! PBKDF2 as a known one and fails with the same message as a wrong
//! password.

use std::num::NonZeroU32;

use super::scram::{derive_keys, salted_password, SCRAM_ITERATIONS_MIN, SCRAM_SALT_BYTES};
use super::{check_token_bytes, constant_time_eq, Credentials, SaslFailure, ScramAlgorithm};
use super::{Step, StoredCredential};

/// One PLAIN exchange: a single client message.
#[derive(Debug, Default)]
pub struct PlainServer {
    /// The one message was received (whatever its outcome).
    finished: bool,
}

impl PlainServer {
    pub fn new() -> PlainServer {
        PlainServer { finished: false }
    }

    /// Checks `authzid NUL authcid NUL passwd`; `Step::Done` with an empty
    /// reply on success. Any further call is an `Err`.
    pub fn step(
        &mut self,
        client_msg: &[u8],
        creds: &dyn Credentials,
    ) -> Result<Step, SaslFailure> {
        if std::mem::replace(&mut self.finished, true) {
            return Err(SaslFailure::new(
                "Authentication failed: the PLAIN exchange is already finished",
            ));
        }
        check_token_bytes(client_msg)?;
        let (authzid, user, password) = parse(client_msg)?;
        if !authzid.is_empty() && authzid != user.as_bytes() {
            return Err(SaslFailure::new(
                "Authentication failed: Client requested an authorization id that is different from username",
            ));
        }
        if !verify(creds, user, password) {
            return Err(SaslFailure::new(
                "Authentication failed: Invalid username or password",
            ));
        }
        Ok(Step::Done {
            reply: Vec::new(),
            user: user.to_string(),
        })
    }
}

/// (authzid, authcid, passwd); Kafka's messages for malformed ones.
fn parse(client_msg: &[u8]) -> Result<(&[u8], &str, &[u8]), SaslFailure> {
    // Bounded: the message is at most SASL_TOKEN_BYTES_MAX bytes.
    let tokens: Vec<&[u8]> = client_msg.split(|&b| b == 0).collect();
    let [authzid, user, password] = tokens[..] else {
        return Err(SaslFailure::new(format!(
            "Invalid SASL/PLAIN response: expected 3 tokens, got {}",
            tokens.len()
        )));
    };
    let user = std::str::from_utf8(user)
        .map_err(|_| SaslFailure::new("Invalid SASL/PLAIN response: the username is not UTF-8"))?;
    if user.is_empty() {
        return Err(SaslFailure::new(
            "Authentication failed: username not specified",
        ));
    }
    if password.is_empty() {
        return Err(SaslFailure::new(
            "Authentication failed: password not specified",
        ));
    }
    Ok((authzid, user, password))
}

/// Whether `password` is `user`'s; the same work whether the user exists
/// or not.
fn verify(creds: &dyn Credentials, user: &str, password: &[u8]) -> bool {
    let found = [ScramAlgorithm::Sha512, ScramAlgorithm::Sha256]
        .into_iter()
        .find_map(|alg| {
            creds
                .scram(user, alg)
                .filter(|c| c.is_usable(alg))
                .map(|c| (alg, c))
        });
    let (alg, credential, known) = match found {
        Some((alg, credential)) => (alg, credential, true),
        None => (ScramAlgorithm::Sha512, unknown_user_credential(), false),
    };
    let Some(iterations) = NonZeroU32::new(credential.iterations) else {
        return false; // Not reached: usable credentials have 4096 or more.
    };
    let salted = salted_password(alg, password, &credential.salt, iterations);
    let (stored_key, _) = derive_keys(alg, &salted);
    constant_time_eq(&stored_key, &credential.stored_key) & known
}

/// What an unknown user is checked against: the same PBKDF2 cost as the
/// cheapest real credential; `known == false` makes it fail anyway.
fn unknown_user_credential() -> StoredCredential {
    let bytes = ScramAlgorithm::Sha512.digest_bytes();
    StoredCredential {
        salt: vec![0; SCRAM_SALT_BYTES],
        stored_key: vec![0; bytes],
        server_key: vec![0; bytes],
        iterations: SCRAM_ITERATIONS_MIN,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::sasl::SASL_TOKEN_BYTES_MAX;

    #[derive(Default)]
    struct MapStore(HashMap<(String, ScramAlgorithm), StoredCredential>);

    impl Credentials for MapStore {
        fn scram(&self, user: &str, alg: ScramAlgorithm) -> Option<StoredCredential> {
            self.0.get(&(user.to_string(), alg)).cloned()
        }
    }

    fn cred(alg: ScramAlgorithm, password: &[u8]) -> StoredCredential {
        StoredCredential::from_password(alg, password, b"plain-test-salt", 4096).unwrap()
    }

    /// "alice": SHA-256 only; "bob": SHA-512 "bob-512" and SHA-256
    /// "bob-256" (SHA-512 wins).
    fn store() -> MapStore {
        let mut m = HashMap::new();
        m.insert(
            ("alice".to_string(), ScramAlgorithm::Sha256),
            cred(ScramAlgorithm::Sha256, b"alice-pw"),
        );
        m.insert(
            ("bob".to_string(), ScramAlgorithm::Sha512),
            cred(ScramAlgorithm::Sha512, b"bob-512"),
        );
        m.insert(
            ("bob".to_string(), ScramAlgorithm::Sha256),
            cred(ScramAlgorithm::Sha256, b"bob-256"),
        );
        MapStore(m)
    }

    fn run(msg: &[u8]) -> Result<Step, SaslFailure> {
        PlainServer::new().step(msg, &store())
    }

    fn done(user: &str) -> Step {
        Step::Done {
            reply: Vec::new(),
            user: user.to_string(),
        }
    }

    #[test]
    fn sasl_plain_good_password() {
        assert_eq!(run(b"\0alice\0alice-pw").unwrap(), done("alice"));
        assert_eq!(run(b"alice\0alice\0alice-pw").unwrap(), done("alice"));
        assert_eq!(run(b"\0bob\0bob-512").unwrap(), done("bob"));
    }

    #[test]
    fn sasl_plain_wrong_password_and_unknown_user_look_alike() {
        let wrong = run(b"\0alice\0alice-pW").unwrap_err();
        let unknown = run(b"\0carol\0alice-pw").unwrap_err();
        assert_eq!(wrong, unknown);
        assert_eq!(
            wrong.message,
            "Authentication failed: Invalid username or password"
        );
        assert!(!wrong.message.contains("alice-pW"));
        // bob's SHA-256 password is not checked: SHA-512 is.
        assert!(run(b"\0bob\0bob-256").is_err());
        // A user whose only credential is unusable is unknown.
        let mut bad = cred(ScramAlgorithm::Sha256, b"pw");
        bad.iterations = 1;
        let mut m = HashMap::new();
        m.insert(("dave".to_string(), ScramAlgorithm::Sha256), bad);
        let err = PlainServer::new()
            .step(b"\0dave\0pw", &MapStore(m))
            .unwrap_err();
        assert_eq!(err, wrong);
    }

    #[test]
    fn sasl_plain_authzid_mismatch() {
        let err = run(b"bob\0alice\0alice-pw").unwrap_err();
        assert!(err.message.contains("authorization id"), "{err}");
    }

    #[test]
    fn sasl_plain_malformed() {
        for msg in [
            &b""[..],
            b"alice",
            b"\0alice",
            b"alicealice-pw",
            b"\0alice\0alice-pw\0",
            b"\0\0alice\0alice-pw",
            b"\0\0alice-pw",
            b"\0alice\0",
            b"\0\xff\xfe\0pw",
        ] {
            let err = run(msg).unwrap_err();
            assert!(!err.message.contains("alice-pw"), "{err}");
        }
        assert_eq!(
            run(b"\0alice").unwrap_err().message,
            "Invalid SASL/PLAIN response: expected 3 tokens, got 2"
        );
    }

    #[test]
    fn sasl_plain_one_message_only_and_bound() {
        let store = store();
        let mut server = PlainServer::new();
        server.step(b"\0alice\0alice-pw", &store).unwrap();
        assert!(server.step(b"\0alice\0alice-pw", &store).is_err());

        let mut server = PlainServer::new();
        assert!(server.step(b"\0alice\0wrong", &store).is_err());
        assert!(server.step(b"\0alice\0alice-pw", &store).is_err());

        let mut big = b"\0alice\0".to_vec();
        big.resize(SASL_TOKEN_BYTES_MAX + 1, b'x');
        let err = run(&big).unwrap_err();
        assert!(err.message.contains("over the limit"), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn sasl_plain_any_message_no_panic(msg in proptest::collection::vec(any::<u8>(), 0..300)) {
            let result = run(&msg);
            if result.is_ok() {
                prop_assert!(msg.ends_with(b"\0alice\0alice-pw") || msg.ends_with(b"\0bob\0bob-512"));
            }
        }
    }
}
