//! The client side of PLAIN and SCRAM, for this node's connections to the
//! other nodes' SASL inter-broker listener (`kafka_client`): the tokens
//! sent in SaslAuthenticate, and the check of the server's signature that
//! proves the other node knows the credential too.
//!
//! Pure like the server side: tokens in, tokens out, no I/O. The server's
//! messages are bounded (`SASL_TOKEN_BYTES_MAX`), and so are the iteration
//! count and salt it may ask for, so a hostile listener cannot make a node
//! spin in PBKDF2.

use std::fmt;
use std::num::NonZeroU32;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::rand::SecureRandom;
use ring::{digest, hmac};

use super::scram::{
    salted_password, SCRAM_ITERATIONS_MAX, SCRAM_ITERATIONS_MIN, SCRAM_SALT_BYTES_MAX,
};
use super::{constant_time_eq, Mechanism, SaslFailure, ScramAlgorithm, SASL_TOKEN_BYTES_MAX};

/// Random bytes of the client nonce (sent as base64: 32 characters).
const CLIENT_NONCE_RANDOM_BYTES: usize = 24;

/// A user's name and password for one mechanism. The password is never
/// printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    pub mechanism: Mechanism,
    pub username: String,
    password: String,
}

impl ClientCredentials {
    pub fn new(mechanism: Mechanism, username: String, password: String) -> ClientCredentials {
        ClientCredentials {
            mechanism,
            username,
            password,
        }
    }
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"(hidden)")
            .finish()
    }
}

/// A SCRAM salted password (RFC 5802's SaltedPassword), kept by a
/// connection so that authenticating again with the same salt and
/// iteration count costs no PBKDF2.
#[derive(Clone)]
pub struct SaltedPassword {
    alg: ScramAlgorithm,
    salt: Vec<u8>,
    iterations: NonZeroU32,
    salted: Vec<u8>,
}

impl fmt::Debug for SaltedPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaltedPassword")
            .field("alg", &self.alg)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// One authentication, from the client's side.
pub struct SaslClient {
    state: State,
    /// The salted password of an earlier authentication, reused when the
    /// server asks for the same salt and iteration count.
    salted: Option<SaltedPassword>,
}

enum State {
    /// PLAIN sent; the server's (empty) answer ends it.
    PlainSent,
    /// SCRAM client-first sent; the server-first message is next.
    ScramFirstSent {
        alg: ScramAlgorithm,
        password: String,
        client_first_bare: String,
        nonce: String,
    },
    /// SCRAM client-final sent; the server-final message must carry this
    /// signature.
    ScramFinalSent {
        server_signature: Vec<u8>,
    },
    Over,
}

impl SaslClient {
    /// Starts an authentication: the client and its first token.
    /// `salted` is what an earlier one on the connection left
    /// (`into_salted`).
    pub fn start(
        creds: &ClientCredentials,
        rng: &dyn SecureRandom,
        salted: Option<SaltedPassword>,
    ) -> Result<(SaslClient, Vec<u8>), SaslFailure> {
        let Some(alg) = creds.mechanism.scram_algorithm() else {
            // RFC 4616: authzid NUL authcid NUL passwd, no authzid.
            let token = [
                &[0][..],
                creds.username.as_bytes(),
                &[0],
                creds.password.as_bytes(),
            ]
            .concat();
            let client = SaslClient {
                state: State::PlainSent,
                salted,
            };
            return Ok((client, token));
        };
        let mut random = [0u8; CLIENT_NONCE_RANDOM_BYTES];
        rng.fill(&mut random)
            .map_err(|_| SaslFailure::new("no random bytes for the SCRAM nonce"))?;
        let nonce = BASE64.encode(random);
        let client_first_bare = format!("n={},r={nonce}", encode_saslname(&creds.username));
        let token = format!("n,,{client_first_bare}").into_bytes();
        let state = State::ScramFirstSent {
            alg,
            password: creds.password.clone(),
            client_first_bare,
            nonce,
        };
        Ok((SaslClient { state, salted }, token))
    }

    /// Whether `step(server_msg)` runs PBKDF2 (a server-first message
    /// whose salt and iteration count this client has not salted the
    /// password with): worth a blocking thread.
    pub fn costly_step(&self, server_msg: &[u8]) -> bool {
        let State::ScramFirstSent { alg, nonce, .. } = &self.state else {
            return false;
        };
        match ServerFirst::parse(server_msg, nonce) {
            Ok(first) => !self
                .salted
                .as_ref()
                .is_some_and(|s| first.salted_by(*alg, s)),
            Err(_) => false,
        }
    }

    /// The salted password this authentication used, for the next one.
    pub fn into_salted(self) -> Option<SaltedPassword> {
        self.salted
    }

    /// Feeds the server's token: `Some(token)` to send next, `None` once
    /// authenticated (the server proved it knows the credential).
    pub fn step(&mut self, server_msg: &[u8]) -> Result<Option<Vec<u8>>, SaslFailure> {
        if server_msg.len() > SASL_TOKEN_BYTES_MAX {
            self.state = State::Over;
            return Err(SaslFailure::new(format!(
                "a server SASL token of {} bytes",
                server_msg.len()
            )));
        }
        match std::mem::replace(&mut self.state, State::Over) {
            State::PlainSent => Ok(None),
            State::ScramFirstSent {
                alg,
                password,
                client_first_bare,
                nonce,
            } => {
                let first = ServerFirst::parse(server_msg, &nonce)?;
                let salted = match self.salted.take() {
                    Some(known) if first.salted_by(alg, &known) => known,
                    _ => SaltedPassword {
                        alg,
                        salted: salted_password(
                            alg,
                            password.as_bytes(),
                            &first.salt,
                            first.iterations,
                        ),
                        salt: first.salt.clone(),
                        iterations: first.iterations,
                    },
                };
                let (final_msg, server_signature) =
                    client_final(&salted, &client_first_bare, &first);
                self.salted = Some(salted);
                self.state = State::ScramFinalSent { server_signature };
                Ok(Some(final_msg))
            }
            State::ScramFinalSent { server_signature } => {
                let text = std::str::from_utf8(server_msg)
                    .map_err(|_| SaslFailure::new("server-final message is not UTF-8"))?;
                if let Some(error) = text.strip_prefix("e=") {
                    return Err(SaslFailure::new(format!("the server refused: {error}")));
                }
                let signature = text
                    .strip_prefix("v=")
                    .and_then(|v| BASE64.decode(v.split(',').next().unwrap_or(v)).ok())
                    .ok_or_else(|| SaslFailure::new("server-final message has no signature"))?;
                if !constant_time_eq(&signature, &server_signature) {
                    return Err(SaslFailure::new(
                        "the server's SCRAM signature is wrong: it does not hold this user's credential",
                    ));
                }
                Ok(None)
            }
            State::Over => Err(SaslFailure::new("the authentication is over")),
        }
    }
}

/// A server-first message, checked: its nonce extends the client's, its
/// salt and iteration count are within the bounds the server side keeps.
struct ServerFirst<'a> {
    text: &'a str,
    combined: &'a str,
    salt: Vec<u8>,
    iterations: NonZeroU32,
}

impl<'a> ServerFirst<'a> {
    fn parse(server_first: &'a [u8], nonce: &str) -> Result<ServerFirst<'a>, SaslFailure> {
        let text = std::str::from_utf8(server_first)
            .map_err(|_| SaslFailure::new("server-first message is not UTF-8"))?;
        let (mut combined, mut salt, mut iterations) = (None, None, None);
        for attr in text.split(',') {
            match attr.split_once('=') {
                Some(("r", v)) => combined = Some(v),
                Some(("s", v)) => salt = Some(v),
                Some(("i", v)) => iterations = Some(v),
                Some(("m", _)) => {
                    return Err(SaslFailure::new("server-first asks for an extension"))
                }
                _ => {}
            }
        }
        let missing = |what: &str| SaslFailure::new(format!("server-first message has no {what}"));
        let combined = combined.ok_or_else(|| missing("nonce"))?;
        if combined.len() <= nonce.len() || !combined.starts_with(nonce) {
            return Err(SaslFailure::new(
                "server-first nonce does not extend the client's",
            ));
        }
        let salt = salt
            .and_then(|s| BASE64.decode(s).ok())
            .filter(|s| !s.is_empty() && s.len() <= SCRAM_SALT_BYTES_MAX)
            .ok_or_else(|| missing("usable salt"))?;
        let iterations = iterations
            .and_then(|i| i.parse::<u32>().ok())
            .filter(|i| (SCRAM_ITERATIONS_MIN..=SCRAM_ITERATIONS_MAX).contains(i))
            .and_then(NonZeroU32::new)
            .ok_or_else(|| {
                SaslFailure::new(format!(
                    "server-first iteration count is not in {SCRAM_ITERATIONS_MIN}..={SCRAM_ITERATIONS_MAX}"
                ))
            })?;
        Ok(ServerFirst {
            text,
            combined,
            salt,
            iterations,
        })
    }

    /// Whether `salted` is the password salted as this message asks.
    fn salted_by(&self, alg: ScramAlgorithm, salted: &SaltedPassword) -> bool {
        salted.alg == alg && salted.iterations == self.iterations && salted.salt == self.salt
    }
}

/// The client-final message answering `first`, and the signature the
/// server-final message must carry (RFC 5802 section 3).
fn client_final(
    salted: &SaltedPassword,
    client_first_bare: &str,
    first: &ServerFirst<'_>,
) -> (Vec<u8>, Vec<u8>) {
    let alg = salted.alg;
    let key = hmac::Key::new(alg.hmac(), &salted.salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(alg.digest(), client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");
    // "biws": base64 of the GS2 header "n,," (no channel binding).
    let without_proof = format!("c=biws,r={}", first.combined);
    let auth_message = format!("{client_first_bare},{},{without_proof}", first.text);
    let client_signature = hmac::sign(
        &hmac::Key::new(alg.hmac(), stored_key.as_ref()),
        auth_message.as_bytes(),
    );
    let proof: Vec<u8> = (client_key.as_ref().iter())
        .zip(client_signature.as_ref())
        .map(|(k, s)| k ^ s)
        .collect();
    let server_signature = hmac::sign(
        &hmac::Key::new(alg.hmac(), server_key.as_ref()),
        auth_message.as_bytes(),
    );
    let token = format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes();
    (token, server_signature.as_ref().to_vec())
}

/// RFC 5802's saslname: '=' and ',' escaped.
fn encode_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sasl::{Credentials, Exchange, Step, StoredCredential};
    use ring::rand::SystemRandom;

    struct OneUser(String, ScramAlgorithm, StoredCredential);

    impl Credentials for OneUser {
        fn scram(&self, user: &str, alg: ScramAlgorithm) -> Option<StoredCredential> {
            (user == self.0 && alg == self.1).then(|| self.2.clone())
        }
    }

    fn store(user: &str, alg: ScramAlgorithm, password: &str) -> OneUser {
        let salt = b"salt of the test";
        let cred = StoredCredential::from_password(alg, password.as_bytes(), salt, 4096)
            .expect("credential");
        OneUser(user.into(), alg, cred)
    }

    /// Runs a client against the broker's own server side.
    fn run(creds: &ClientCredentials, server_store: &OneUser) -> Result<String, SaslFailure> {
        run_salted(creds, server_store, None).map(|(user, _, _)| user)
    }

    /// `run` starting from `salted`: the user, whether a step was costly,
    /// and the salted password left for the next run.
    fn run_salted(
        creds: &ClientCredentials,
        server_store: &OneUser,
        salted: Option<SaltedPassword>,
    ) -> Result<(String, bool, Option<SaltedPassword>), SaslFailure> {
        let rng = SystemRandom::new();
        let (mut client, mut token) = SaslClient::start(creds, &rng, salted)?;
        let mut server = Exchange::new(creds.mechanism);
        let mut costly = false;
        for _ in 0..4 {
            match server.step(&token, server_store)? {
                Step::Challenge(reply) => {
                    costly |= client.costly_step(&reply);
                    token = client.step(&reply)?.expect("a token answers a challenge");
                }
                Step::Done { reply, user } => {
                    costly |= client.costly_step(&reply);
                    assert_eq!(client.step(&reply)?, None, "the client is done too");
                    return Ok((user, costly, client.into_salted()));
                }
            }
        }
        panic!("no end after 4 steps");
    }

    #[test]
    fn authenticating_again_reuses_the_salted_password_of_the_same_salt() {
        let alg = ScramAlgorithm::Sha512;
        let mechanism = Mechanism::from_name(alg.name()).expect("mechanism");
        let creds = ClientCredentials::new(mechanism, "node".into(), "pencil".into());
        let server = store("node", alg, "pencil");
        let (_, costly, salted) = run_salted(&creds, &server, None).expect("first");
        assert!(costly, "the first authentication salts the password");
        let (user, costly, salted) = run_salted(&creds, &server, salted).expect("again");
        assert_eq!(user, "node");
        assert!(!costly, "the same salt and iterations: no PBKDF2");
        // A changed credential (another salt) is salted again, and a wrong
        // kept password does not pass for the right one.
        let other_salt = {
            let cred = StoredCredential::from_password(alg, b"pencil", b"another salt", 8192)
                .expect("credential");
            OneUser("node".into(), alg, cred)
        };
        let (_, costly, _) = run_salted(&creds, &other_salt, salted.clone()).expect("re-salted");
        assert!(costly, "another salt and iteration count");
        let changed = store("node", alg, "new pencil");
        assert!(run_salted(&creds, &changed, salted).is_err());
    }

    #[test]
    fn rfc_7677_client_messages() {
        // RFC 7677 section 3: user "user", password "pencil", and the
        // RFC's client nonce in place of a random one.
        let nonce = "rOprNGfwEbeRWgbNEkqO".to_string();
        let mut client = SaslClient {
            state: State::ScramFirstSent {
                alg: ScramAlgorithm::Sha256,
                password: "pencil".into(),
                client_first_bare: format!("n=user,r={nonce}"),
                nonce,
            },
            salted: None,
        };
        let server_first =
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let final_msg = client
            .step(server_first)
            .expect("client-final")
            .expect("a token");
        assert_eq!(
            String::from_utf8(final_msg).expect("utf-8"),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let server_final = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
        assert_eq!(client.step(server_final).expect("verified"), None);
        assert!(client.step(b"").is_err(), "nothing after the end");
    }

    #[test]
    fn every_mechanism_authenticates_against_the_server_side() {
        for alg in [ScramAlgorithm::Sha256, ScramAlgorithm::Sha512] {
            let mechanism = Mechanism::from_name(alg.name()).expect("mechanism");
            let server = store("node,=1", alg, "pencil");
            let good = ClientCredentials::new(mechanism, "node,=1".into(), "pencil".into());
            assert_eq!(run(&good, &server).expect("authenticated"), "node,=1");
            let bad = ClientCredentials::new(mechanism, "node,=1".into(), "pen".into());
            assert!(
                run(&bad, &server).is_err(),
                "{} with a wrong password",
                alg.name()
            );
        }
        let server = store("node", ScramAlgorithm::Sha256, "pencil");
        let plain = ClientCredentials::new(Mechanism::Plain, "node".into(), "pencil".into());
        assert_eq!(run(&plain, &server).expect("PLAIN"), "node");
    }

    #[test]
    fn a_server_without_the_credential_or_with_hostile_parameters_is_refused() {
        let creds = ClientCredentials::new(Mechanism::ScramSha512, "node".into(), "pencil".into());
        let start = || SaslClient::start(&creds, &SystemRandom::new(), None).expect("start");
        let (_, first) = start();
        let first = String::from_utf8(first).expect("utf-8");
        let nonce = first.rsplit("r=").next().expect("nonce").to_string();
        let salt = BASE64.encode(b"salt");
        for server_first in [
            format!("r=other{nonce},s={salt},i=4096"),
            format!("r={nonce},s={salt},i=4096"),
            format!("r={nonce}x,s={salt},i=1000000000"),
            format!("r={nonce}x,s={salt},i=10"),
            format!("r={nonce}x,s=,i=4096"),
            format!("r={nonce}x,i=4096"),
            format!("m=ext,r={nonce}x,s={salt},i=4096"),
        ] {
            let (mut client, _) = start();
            // A fresh start draws a new nonce: put it in place.
            let State::ScramFirstSent { nonce: fresh, .. } = &client.state else {
                panic!("SCRAM state");
            };
            let msg = server_first.replace(&nonce, fresh);
            assert!(client.step(msg.as_bytes()).is_err(), "accepted {msg}");
        }
        // A server that answers the proof without knowing the credential.
        let (mut client, _) = start();
        let State::ScramFirstSent { nonce: fresh, .. } = &client.state else {
            panic!("SCRAM state");
        };
        let msg = format!("r={fresh}x,s={salt},i=4096");
        client
            .step(msg.as_bytes())
            .expect("client-final")
            .expect("token");
        let forged = format!("v={}", BASE64.encode([7u8; 64]));
        assert!(client.step(forged.as_bytes()).is_err());
        // Over-long tokens.
        let (mut client, _) = start();
        assert!(client.step(&vec![b'r'; SASL_TOKEN_BYTES_MAX + 1]).is_err());
    }
}
