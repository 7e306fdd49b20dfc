//! SASL server mechanisms for Kafka's SaslHandshake/SaslAuthenticate:
//! PLAIN (RFC 4616, `plain`), SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802,
//! RFC 7677, `scram`).
//!
//! # Role
//! Pure protocol state machines: bytes from the client in, a reply or a
//! `SaslFailure` out. No I/O, no clock, no logging; the credential store is
//! behind the `Credentials` trait, randomness is `ring`'s `SecureRandom`.
//! The connection code makes one `Exchange` per authentication (at
//! SaslHandshake) and feeds it each SaslAuthenticate token with
//! `Exchange::step`.
//!
//! # Cores
//! An `Exchange` lives on the shard that owns the connection; it is plain data
//! (`Send`, but never shared). The only process-wide state is the random key
//! that makes up salts for unknown SCRAM users (`scram`), written once and
//! read-only after.
//!
//! # Invariants
//! - Any bytes from the client give `Ok` or `Err`, never a panic.
//! - An unknown user fails at the same step and with the same message as a
//!   wrong password; a failure's message never contains the password.
//! - Client tokens are bounded by `SASL_TOKEN_BYTES_MAX`, client nonces by
//!   `scram::SCRAM_NONCE_BYTES_MAX`, stored iteration counts by
//!   `scram::SCRAM_ITERATIONS_MIN..=SCRAM_ITERATIONS_MAX`.
//! - After `Step::Done` or an `Err`, every further `step` is an `Err`.

pub mod client;
pub mod plain;
pub mod scram;

use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};

pub use plain::PlainServer;
pub use scram::{
    random_salt, CredentialError, Credentials, ScramAlgorithm, ScramServer, StoredCredential,
};

/// The largest client token (SaslAuthenticate `auth_bytes`) a mechanism
/// accepts; longer ones fail the exchange. Every legitimate PLAIN or SCRAM
/// message is far below it.
pub const SASL_TOKEN_BYTES_MAX: usize = 8 * 1024;

/// Why an exchange failed: the text a Kafka client shows its user (the
/// `error_message` of SaslAuthenticate with SASL_AUTHENTICATION_FAILED).
/// Never contains the password, and is the same for an unknown user and a
/// wrong password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslFailure {
    pub message: String,
}

impl SaslFailure {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        SaslFailure {
            message: message.into(),
        }
    }
}

impl fmt::Display for SaslFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SaslFailure {}

/// What a mechanism answers to a client token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes to the client and wait for its next token.
    Challenge(Vec<u8>),
    /// Authenticated as `user`; send `reply` (possibly empty) to the client.
    Done { reply: Vec<u8>, user: String },
}

/// The SASL mechanisms this broker offers, named as Kafka names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    /// Every mechanism, in the order SaslHandshake lists them.
    pub const ALL: [Mechanism; 3] = [
        Mechanism::Plain,
        Mechanism::ScramSha256,
        Mechanism::ScramSha512,
    ];

    /// The mechanism with exactly this name (case-sensitive, as in Kafka).
    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => ScramAlgorithm::Sha256.name(),
            Mechanism::ScramSha512 => ScramAlgorithm::Sha512.name(),
        }
    }

    /// The SCRAM hash of a SCRAM mechanism, `None` for PLAIN.
    pub fn scram_algorithm(self) -> Option<ScramAlgorithm> {
        match self {
            Mechanism::Plain => None,
            Mechanism::ScramSha256 => Some(ScramAlgorithm::Sha256),
            Mechanism::ScramSha512 => Some(ScramAlgorithm::Sha512),
        }
    }
}

/// One authentication exchange with one mechanism: what the connection
/// code holds between SaslAuthenticate requests. (Not named `Session`:
/// that is the connection's identity, `crate::security::Session`.)
#[derive(Debug)]
pub struct Exchange {
    mechanism: Mechanism,
    server: Server,
}

#[derive(Debug)]
enum Server {
    Plain(PlainServer),
    Scram(ScramServer),
    /// The random source failed at the start: every step fails with this.
    Unavailable(SaslFailure),
}

impl Exchange {
    /// A new exchange; SCRAM draws its server nonce from `SystemRandom`.
    pub fn new(mechanism: Mechanism) -> Exchange {
        Exchange::with_rng(mechanism, &SystemRandom::new())
    }

    /// A new exchange; `rng` draws the SCRAM server nonce (PLAIN uses none).
    pub fn with_rng(mechanism: Mechanism, rng: &dyn SecureRandom) -> Exchange {
        let server = match mechanism.scram_algorithm() {
            None => Server::Plain(PlainServer::new()),
            Some(alg) => match ScramServer::new(alg, rng) {
                Ok(server) => Server::Scram(server),
                Err(failure) => Server::Unavailable(failure),
            },
        };
        Exchange { mechanism, server }
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Feeds one client token. PLAIN completes in one step with an empty
    /// reply; SCRAM answers a `Challenge`, then `Done`. After `Done` or an
    /// `Err`, every step is an `Err`.
    pub fn step(
        &mut self,
        client_msg: &[u8],
        creds: &dyn Credentials,
    ) -> Result<Step, SaslFailure> {
        match &mut self.server {
            Server::Plain(server) => server.step(client_msg, creds),
            Server::Scram(server) => server.step(client_msg, creds),
            Server::Unavailable(failure) => Err(failure.clone()),
        }
    }
}

/// The refusal of a token over `SASL_TOKEN_BYTES_MAX`.
fn check_token_bytes(client_msg: &[u8]) -> Result<(), SaslFailure> {
    if client_msg.len() > SASL_TOKEN_BYTES_MAX {
        return Err(SaslFailure::new(format!(
            "Authentication failed: SASL token of {} bytes is over the limit of {} bytes",
            client_msg.len(),
            SASL_TOKEN_BYTES_MAX
        )));
    }
    Ok(())
}

/// Equality of two byte strings in time that depends on their lengths only
/// (the lengths here are digest sizes, not secrets).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Store(HashMap<(String, ScramAlgorithm), StoredCredential>);

    impl Credentials for Store {
        fn scram(&self, user: &str, alg: ScramAlgorithm) -> Option<StoredCredential> {
            self.0.get(&(user.to_string(), alg)).cloned()
        }
    }

    #[test]
    fn sasl_mechanism_names_are_exact() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(m.name()), Some(m));
        }
        assert_eq!(Mechanism::ScramSha256.name(), "SCRAM-SHA-256");
        assert_eq!(Mechanism::ScramSha512.name(), "SCRAM-SHA-512");
        assert_eq!(Mechanism::from_name("plain"), None);
        assert_eq!(Mechanism::from_name("scram-sha-256"), None);
        assert_eq!(Mechanism::from_name("GSSAPI"), None);
        assert_eq!(Mechanism::from_name(""), None);
    }

    #[test]
    fn sasl_constant_time_eq() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn sasl_exchange_plain_and_scram() {
        let salt = random_salt().unwrap();
        let cred =
            StoredCredential::from_password(ScramAlgorithm::Sha256, b"pw", &salt, 4096).unwrap();
        let mut map = HashMap::new();
        map.insert(("bob".to_string(), ScramAlgorithm::Sha256), cred);
        let store = Store(map);

        let mut plain = Exchange::new(Mechanism::Plain);
        assert_eq!(plain.mechanism(), Mechanism::Plain);
        let done = plain.step(b"\0bob\0pw", &store).unwrap();
        assert_eq!(
            done,
            Step::Done {
                reply: Vec::new(),
                user: "bob".to_string()
            }
        );
        assert!(plain.step(b"\0bob\0pw", &store).is_err());

        let mut scram = Exchange::with_rng(Mechanism::ScramSha256, &SystemRandom::new());
        assert_eq!(scram.mechanism(), Mechanism::ScramSha256);
        match scram.step(b"n,,n=bob,r=abcdef", &store).unwrap() {
            Step::Challenge(c) => assert!(c.starts_with(b"r=abcdef")),
            other => panic!("expected a challenge, got {other:?}"),
        }
        let sha512 = Exchange::new(Mechanism::ScramSha512);
        assert_eq!(sha512.mechanism(), Mechanism::ScramSha512);
    }

    #[test]
    fn sasl_exchange_token_bound() {
        let store = Store(HashMap::new());
        let big = vec![b'a'; SASL_TOKEN_BYTES_MAX + 1];
        for m in Mechanism::ALL {
            let mut s = Exchange::new(m);
            let err = s.step(&big, &store).unwrap_err();
            assert!(err.message.contains("over the limit"), "{err}");
        }
    }
}
