//! SCRAM-SHA-256 and SCRAM-SHA-512, server side (RFC 5802, RFC 7677), as
//! Kafka speaks them.
//!
//! ```text
//! client-first  n,[a=authzid],n=user,r=cnonce[,ext=value...]
//! server-first  r=cnonce+snonce,s=base64(salt),i=iterations     -> Step::Challenge
//! client-final  c=base64(gs2 header),r=cnonce+snonce[,ext...],p=base64(proof)
//! server-final  v=base64(ServerSignature)                        -> Step::Done
//!
//! AuthMessage     = client-first-bare "," server-first "," client-final-without-proof
//! ClientSignature = HMAC(StoredKey, AuthMessage); ClientKey = proof XOR ClientSignature
//! accepted iff H(ClientKey) == StoredKey (constant time)
//! ```
//!
//! Kafka's specifics: no channel binding (the GS2 flag must be `n`); an
//! authzid must equal the user; the `tokenauth=true` extension (delegation
//! tokens) is refused, other extensions are ignored; stored iteration counts
//! are 4096..=16384.
//!
//! An unknown user (or one whose stored credential is unusable) gets a
//! challenge like any other, with a salt made up from the user name and a
//! per-process random key (so it is the same on every attempt), and fails at
//! the proof with the same message as a wrong password.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};

use super::{check_token_bytes, constant_time_eq, SaslFailure, Step};

/// The smallest iteration count a stored credential may have (Kafka's).
pub const SCRAM_ITERATIONS_MIN: u32 = 4096;
/// The largest iteration count a stored credential may have (Kafka's).
pub const SCRAM_ITERATIONS_MAX: u32 = 16384;
/// The longest client nonce accepted.
pub const SCRAM_NONCE_BYTES_MAX: usize = 256;
/// The length of `random_salt`'s salts and of made-up salts.
pub const SCRAM_SALT_BYTES: usize = 32;
/// The longest salt a stored credential may have.
pub const SCRAM_SALT_BYTES_MAX: usize = 1024;
/// Random bytes of the server nonce (sent as base64: 32 characters).
const SERVER_NONCE_RANDOM_BYTES: usize = 24;

/// The per-process key that makes up salts for unknown users. Written once
/// (the first `ScramServer::new`), read-only after.
static UNKNOWN_USER_KEY: OnceLock<[u8; 32]> = OnceLock::new();

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScramAlgorithm {
    Sha256,
    Sha512,
}

impl ScramAlgorithm {
    /// The SASL mechanism name: "SCRAM-SHA-256" or "SCRAM-SHA-512".
    pub fn name(self) -> &'static str {
        match self {
            ScramAlgorithm::Sha256 => "SCRAM-SHA-256",
            ScramAlgorithm::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The size of the hash's output: of SaltedPassword, StoredKey,
    /// ServerKey and the proof.
    pub fn digest_bytes(self) -> usize {
        self.digest().output_len()
    }

    pub(super) fn digest(self) -> &'static digest::Algorithm {
        match self {
            ScramAlgorithm::Sha256 => &digest::SHA256,
            ScramAlgorithm::Sha512 => &digest::SHA512,
        }
    }

    pub(super) fn hmac(self) -> hmac::Algorithm {
        match self {
            ScramAlgorithm::Sha256 => hmac::HMAC_SHA256,
            ScramAlgorithm::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            ScramAlgorithm::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            ScramAlgorithm::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }
}

/// What the broker stores for a user and a SCRAM hash (never the password).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCredential {
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
    pub iterations: u32,
}

impl fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredCredential")
            .field("salt_bytes", &self.salt.len())
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Why a credential cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialError {
    /// Outside `SCRAM_ITERATIONS_MIN..=SCRAM_ITERATIONS_MAX`.
    Iterations(u32),
    /// Empty or over `SCRAM_SALT_BYTES_MAX`.
    Salt {
        bytes: usize,
    },
    EmptySaltedPassword,
    /// The system's random number generator failed.
    Random,
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialError::Iterations(n) => write!(
                f,
                "iterations {n} is outside {SCRAM_ITERATIONS_MIN}..={SCRAM_ITERATIONS_MAX}"
            ),
            CredentialError::Salt { bytes } => {
                write!(
                    f,
                    "salt of {bytes} bytes is outside 1..={SCRAM_SALT_BYTES_MAX}"
                )
            }
            CredentialError::EmptySaltedPassword => f.write_str("salted password is empty"),
            CredentialError::Random => f.write_str("random number generator failed"),
        }
    }
}

impl std::error::Error for CredentialError {}

impl StoredCredential {
    /// The credential of `password`: SaltedPassword = PBKDF2(password, salt,
    /// iterations), then as `from_salted_password`.
    pub fn from_password(
        alg: ScramAlgorithm,
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Result<StoredCredential, CredentialError> {
        let iterations_nz = check_parameters(salt, iterations)?;
        let salted = salted_password(alg, password, salt, iterations_nz);
        StoredCredential::from_salted_password(alg, &salted, salt, iterations)
    }

    /// The credential of a salted password (what AlterUserScramCredentials
    /// carries): ClientKey = HMAC(SaltedPassword, "Client Key"), StoredKey =
    /// H(ClientKey), ServerKey = HMAC(SaltedPassword, "Server Key").
    pub fn from_salted_password(
        alg: ScramAlgorithm,
        salted_password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Result<StoredCredential, CredentialError> {
        check_parameters(salt, iterations)?;
        if salted_password.is_empty() {
            return Err(CredentialError::EmptySaltedPassword);
        }
        let (stored_key, server_key) = derive_keys(alg, salted_password);
        let credential = StoredCredential {
            salt: salt.to_vec(),
            stored_key,
            server_key,
            iterations,
        };
        assert!(credential.is_usable(alg));
        Ok(credential)
    }

    /// Whether the mechanisms accept this credential for `alg`: iterations
    /// and salt in bounds, keys of the hash's size. An unusable credential
    /// authenticates nobody (it is treated as an unknown user).
    pub fn is_usable(&self, alg: ScramAlgorithm) -> bool {
        (SCRAM_ITERATIONS_MIN..=SCRAM_ITERATIONS_MAX).contains(&self.iterations)
            && (1..=SCRAM_SALT_BYTES_MAX).contains(&self.salt.len())
            && self.stored_key.len() == alg.digest_bytes()
            && self.server_key.len() == alg.digest_bytes()
    }
}

/// A new random salt of `SCRAM_SALT_BYTES` bytes.
pub fn random_salt() -> Result<Vec<u8>, CredentialError> {
    let mut salt = vec![0u8; SCRAM_SALT_BYTES];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| CredentialError::Random)?;
    Ok(salt)
}

/// The lookup of stored credentials the mechanisms use.
pub trait Credentials {
    fn scram(&self, user: &str, alg: ScramAlgorithm) -> Option<StoredCredential>;
}

fn check_parameters(salt: &[u8], iterations: u32) -> Result<NonZeroU32, CredentialError> {
    if !(1..=SCRAM_SALT_BYTES_MAX).contains(&salt.len()) {
        return Err(CredentialError::Salt { bytes: salt.len() });
    }
    match NonZeroU32::new(iterations) {
        Some(n) if (SCRAM_ITERATIONS_MIN..=SCRAM_ITERATIONS_MAX).contains(&iterations) => Ok(n),
        _ => Err(CredentialError::Iterations(iterations)),
    }
}

/// SaltedPassword = Hi(password, salt, iterations) = PBKDF2-HMAC-H.
pub(crate) fn salted_password(
    alg: ScramAlgorithm,
    password: &[u8],
    salt: &[u8],
    iterations: NonZeroU32,
) -> Vec<u8> {
    let mut salted = vec![0u8; alg.digest_bytes()];
    pbkdf2::derive(alg.pbkdf2(), iterations, salt, password, &mut salted);
    salted
}

/// (StoredKey, ServerKey) of a salted password.
pub(crate) fn derive_keys(alg: ScramAlgorithm, salted_password: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let key = hmac::Key::new(alg.hmac(), salted_password);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(alg.digest(), client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");
    (stored_key.as_ref().to_vec(), server_key.as_ref().to_vec())
}

/// A credential for a user that has none: a salt that is the same on every
/// attempt, keys nobody can match.
fn unknown_user_credential(alg: ScramAlgorithm, secret: &[u8; 32], user: &str) -> StoredCredential {
    let key = hmac::Key::new(alg.hmac(), secret);
    let derive = |label: &[u8]| {
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(label);
        ctx.update(&[0]);
        ctx.update(user.as_bytes());
        ctx.sign().as_ref().to_vec()
    };
    let mut salt = derive(b"salt");
    salt.truncate(SCRAM_SALT_BYTES);
    let credential = StoredCredential {
        salt,
        stored_key: derive(b"stored key"),
        server_key: derive(b"server key"),
        iterations: SCRAM_ITERATIONS_MIN,
    };
    assert!(credential.is_usable(alg));
    credential
}

fn unknown_user_key(rng: &dyn SecureRandom) -> Result<&'static [u8; 32], SaslFailure> {
    if let Some(key) = UNKNOWN_USER_KEY.get() {
        return Ok(key);
    }
    let mut key = [0u8; 32];
    rng.fill(&mut key).map_err(|_| random_failure())?;
    Ok(UNKNOWN_USER_KEY.get_or_init(|| key))
}

/// One SCRAM exchange, server side.
pub struct ScramServer {
    alg: ScramAlgorithm,
    /// Printable, without ','; appended to the client's nonce.
    server_nonce: String,
    unknown_user_key: &'static [u8; 32],
    state: State,
}

/// Shows the phase only: neither the unknown-user key nor the credential.
impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.state {
            State::ClientFirst => "client-first",
            State::ClientFinal(_) => "client-final",
            State::Done => "done",
            State::Failed => "failed",
        };
        f.debug_struct("ScramServer")
            .field("alg", &self.alg)
            .field("phase", &phase)
            .finish_non_exhaustive()
    }
}

enum State {
    ClientFirst,
    ClientFinal(Box<Challenged>),
    Done,
    Failed,
}

/// What the server-first-message committed to, for the client-final.
struct Challenged {
    user: String,
    /// As the client sent it, e.g. `n,,`.
    gs2_header: Vec<u8>,
    /// Client nonce + server nonce.
    nonce: String,
    /// client-first-message-bare "," server-first-message ","
    auth_message_prefix: String,
    credential: StoredCredential,
    /// False for an unknown user (a made-up credential): always fails.
    known: bool,
}

impl ScramServer {
    /// A new exchange; `rng` draws the server nonce.
    pub fn new(alg: ScramAlgorithm, rng: &dyn SecureRandom) -> Result<ScramServer, SaslFailure> {
        let mut random = [0u8; SERVER_NONCE_RANDOM_BYTES];
        rng.fill(&mut random).map_err(|_| random_failure())?;
        let key = unknown_user_key(rng)?;
        Ok(ScramServer::with_parts(alg, BASE64.encode(random), key))
    }

    /// An exchange with a chosen server nonce (the RFC's test vectors).
    #[cfg(test)]
    pub(crate) fn with_server_nonce(alg: ScramAlgorithm, server_nonce: &str) -> ScramServer {
        let key = unknown_user_key(&SystemRandom::new()).expect("system random");
        ScramServer::with_parts(alg, server_nonce.to_string(), key)
    }

    fn with_parts(
        alg: ScramAlgorithm,
        server_nonce: String,
        unknown_user_key: &'static [u8; 32],
    ) -> ScramServer {
        assert!(!server_nonce.is_empty() && server_nonce.bytes().all(is_nonce_byte));
        ScramServer {
            alg,
            server_nonce,
            unknown_user_key,
            state: State::ClientFirst,
        }
    }

    pub fn algorithm(&self) -> ScramAlgorithm {
        self.alg
    }

    /// Feeds one client message: the client-first-message gives
    /// `Step::Challenge(server-first-message)`, the client-final-message
    /// `Step::Done { reply: server-final-message, user }`. Any error ends
    /// the exchange.
    pub fn step(
        &mut self,
        client_msg: &[u8],
        creds: &dyn Credentials,
    ) -> Result<Step, SaslFailure> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        check_token_bytes(client_msg)?;
        match state {
            State::ClientFirst => {
                let (pending, server_first) = self.client_first(client_msg, creds)?;
                self.state = State::ClientFinal(Box::new(pending));
                Ok(Step::Challenge(server_first.into_bytes()))
            }
            State::ClientFinal(pending) => {
                let server_final = self.client_final(&pending, client_msg)?;
                self.state = State::Done;
                Ok(Step::Done {
                    reply: server_final.into_bytes(),
                    user: pending.user,
                })
            }
            State::Done => Err(SaslFailure::new(
                "Authentication failed: the SCRAM pending is already complete",
            )),
            State::Failed => Err(SaslFailure::new(
                "Authentication failed: the SCRAM pending has already failed",
            )),
        }
    }

    fn client_first(
        &self,
        client_msg: &[u8],
        creds: &dyn Credentials,
    ) -> Result<(Challenged, String), SaslFailure> {
        let first = parse_client_first(client_msg)?;
        if first.token_auth {
            return Err(SaslFailure::new(
                "Authentication failed: delegation token authentication (tokenauth) is not supported",
            ));
        }
        if first.authzid.as_ref().is_some_and(|a| *a != first.user) {
            return Err(SaslFailure::new(
                "Authentication failed: Client requested an authorization id that is different from username",
            ));
        }
        let (credential, known) = match creds.scram(&first.user, self.alg) {
            Some(c) if c.is_usable(self.alg) => (c, true),
            _ => (
                unknown_user_credential(self.alg, self.unknown_user_key, &first.user),
                false,
            ),
        };
        let nonce = format!("{}{}", first.client_nonce, self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&credential.salt),
            credential.iterations
        );
        let pending = Challenged {
            user: first.user,
            gs2_header: first.gs2_header.as_bytes().to_vec(),
            nonce,
            auth_message_prefix: format!("{},{server_first},", first.bare),
            credential,
            known,
        };
        Ok((pending, server_first))
    }

    fn client_final(&self, pending: &Challenged, client_msg: &[u8]) -> Result<String, SaslFailure> {
        let last = parse_client_final(client_msg)?;
        if last.channel_binding != pending.gs2_header {
            return Err(invalid(
                "client-final-message: channel binding (c=) does not match",
            ));
        }
        if last.nonce != pending.nonce {
            return Err(invalid("client-final-message: nonce (r=) does not match"));
        }
        let auth_message = format!("{}{}", pending.auth_message_prefix, last.without_proof);
        let proof_ok = verify_proof(
            self.alg,
            &pending.credential,
            auth_message.as_bytes(),
            &last.proof,
        );
        if !(proof_ok & pending.known) {
            return Err(invalid_credentials(self.alg));
        }
        let server_key = hmac::Key::new(self.alg.hmac(), &pending.credential.server_key);
        let server_signature = hmac::sign(&server_key, auth_message.as_bytes());
        Ok(format!("v={}", BASE64.encode(server_signature.as_ref())))
    }
}

/// H(proof XOR HMAC(StoredKey, AuthMessage)) == StoredKey, in constant time.
fn verify_proof(
    alg: ScramAlgorithm,
    credential: &StoredCredential,
    auth_message: &[u8],
    proof: &[u8],
) -> bool {
    let stored_key = hmac::Key::new(alg.hmac(), &credential.stored_key);
    let client_signature = hmac::sign(&stored_key, auth_message);
    let signature = client_signature.as_ref();
    if proof.len() != signature.len() {
        return false;
    }
    let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
    let computed = digest::digest(alg.digest(), &client_key);
    constant_time_eq(computed.as_ref(), &credential.stored_key)
}

/// A parsed client-first-message, borrowing from it.
struct ClientFirst<'a> {
    /// `n,` [`a=` authzid] `,`
    gs2_header: &'a str,
    authzid: Option<String>,
    user: String,
    client_nonce: &'a str,
    /// client-first-message-bare (after the GS2 header).
    bare: &'a str,
    /// The `tokenauth=true` extension was present.
    token_auth: bool,
}

fn parse_client_first(client_msg: &[u8]) -> Result<ClientFirst<'_>, SaslFailure> {
    let text = message_text(client_msg, "client-first-message")?;
    let (flag, rest) = text
        .split_once(',')
        .ok_or_else(|| invalid("client-first-message: no GS2 header"))?;
    match flag {
        "n" => {}
        "y" => return Err(channel_binding_refused()),
        _ if flag.starts_with("p=") => return Err(channel_binding_refused()),
        _ => {
            return Err(invalid(
                "client-first-message: bad GS2 channel-binding flag",
            ))
        }
    }
    let (authz, bare) = rest
        .split_once(',')
        .ok_or_else(|| invalid("client-first-message: no GS2 header"))?;
    let authzid = match authz {
        "" => None,
        _ => {
            let encoded = authz
                .strip_prefix("a=")
                .ok_or_else(|| invalid("client-first-message: bad authorization id"))?;
            Some(decode_saslname(encoded)?)
        }
    };
    let gs2_header = &text[..text.len() - bare.len()];
    let (user, client_nonce, token_auth) = parse_client_first_bare(bare)?;
    Ok(ClientFirst {
        gs2_header,
        authzid,
        user,
        client_nonce,
        bare,
        token_auth,
    })
}

/// `n=user,r=nonce[,ext...]` -> (user, nonce, tokenauth=true present).
fn parse_client_first_bare(bare: &str) -> Result<(String, &str, bool), SaslFailure> {
    // Bounded: the message is at most SASL_TOKEN_BYTES_MAX bytes.
    let mut attrs = bare.split(',');
    let username = attrs.next().unwrap_or("");
    if username.starts_with("m=") {
        return Err(invalid(
            "client-first-message: mandatory extensions (m=) are not supported",
        ));
    }
    let user = decode_saslname(
        username
            .strip_prefix("n=")
            .ok_or_else(|| invalid("client-first-message: no user name (n=)"))?,
    )?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or_else(|| invalid("client-first-message: no nonce (r=)"))?;
    check_nonce(nonce)?;
    let mut token_auth = false;
    for attr in attrs {
        let (key, value) = parse_extension(attr)?;
        // Kafka reads the flag with Boolean.parseBoolean: case-insensitive.
        token_auth |= key == "tokenauth" && value.eq_ignore_ascii_case("true");
    }
    Ok((user, nonce, token_auth))
}

/// A parsed client-final-message, borrowing from it.
struct ClientFinal<'a> {
    /// The decoded `c=`.
    channel_binding: Vec<u8>,
    nonce: &'a str,
    /// client-final-message-without-proof.
    without_proof: &'a str,
    proof: Vec<u8>,
}

fn parse_client_final(client_msg: &[u8]) -> Result<ClientFinal<'_>, SaslFailure> {
    let text = message_text(client_msg, "client-final-message")?;
    let (without_proof, proof) = text
        .rsplit_once(",p=")
        .ok_or_else(|| invalid("client-final-message: no proof (p=)"))?;
    let mut attrs = without_proof.split(',');
    let channel_binding = attrs
        .next()
        .and_then(|a| a.strip_prefix("c="))
        .ok_or_else(|| invalid("client-final-message: no channel binding (c=)"))?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or_else(|| invalid("client-final-message: no nonce (r=)"))?;
    for attr in attrs {
        parse_extension(attr)?;
    }
    Ok(ClientFinal {
        channel_binding: BASE64
            .decode(channel_binding)
            .map_err(|_| invalid("client-final-message: channel binding (c=) is not base64"))?,
        nonce,
        without_proof,
        proof: BASE64
            .decode(proof)
            .map_err(|_| invalid("client-final-message: proof (p=) is not base64"))?,
    })
}

/// The message as text: UTF-8 without NUL (RFC 5802's value-char).
fn message_text<'a>(client_msg: &'a [u8], what: &str) -> Result<&'a str, SaslFailure> {
    let text =
        std::str::from_utf8(client_msg).map_err(|_| invalid(&format!("{what}: not UTF-8")))?;
    if text.contains('\0') {
        return Err(invalid(&format!("{what}: contains NUL")));
    }
    Ok(text)
}

/// `key=value` of an extension attribute.
fn parse_extension(attr: &str) -> Result<(&str, &str), SaslFailure> {
    match attr.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key, value)),
        _ => Err(invalid("malformed attribute")),
    }
}

/// RFC 5802 printable: %x21-2B / %x2D-7E.
fn is_nonce_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b','
}

fn check_nonce(nonce: &str) -> Result<(), SaslFailure> {
    if nonce.is_empty() || nonce.len() > SCRAM_NONCE_BYTES_MAX {
        return Err(invalid(&format!(
            "client-first-message: nonce of {} bytes is outside 1..={SCRAM_NONCE_BYTES_MAX}",
            nonce.len()
        )));
    }
    if !nonce.bytes().all(is_nonce_byte) {
        return Err(invalid("client-first-message: nonce is not printable"));
    }
    Ok(())
}

/// RFC 5802 saslname: `=2C` is ',', `=3D` is '=', any other '=' is invalid.
fn decode_saslname(encoded: &str) -> Result<String, SaslFailure> {
    if encoded.is_empty() {
        return Err(invalid("client-first-message: empty user name"));
    }
    let mut decoded = String::with_capacity(encoded.len());
    let mut rest = encoded;
    // Bounded: each turn consumes three bytes.
    while let Some(at) = rest.find('=') {
        decoded.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => decoded.push(','),
            Some("=3D") => decoded.push('='),
            _ => return Err(invalid("client-first-message: bad '=' escape in a name")),
        }
        rest = &rest[at + 3..];
    }
    decoded.push_str(rest);
    Ok(decoded)
}

fn invalid(what: &str) -> SaslFailure {
    SaslFailure::new(format!("Authentication failed: invalid SCRAM {what}"))
}

fn channel_binding_refused() -> SaslFailure {
    SaslFailure::new("Authentication failed: SCRAM channel binding is not supported")
}

/// The one failure of an unknown user, an unusable credential and a wrong
/// proof (Kafka's wording).
fn invalid_credentials(alg: ScramAlgorithm) -> SaslFailure {
    SaslFailure::new(format!(
        "Authentication failed during authentication due to invalid credentials with SASL mechanism {}",
        alg.name()
    ))
}

fn random_failure() -> SaslFailure {
    SaslFailure::new("Authentication failed: the server could not draw a random nonce")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::sasl::SASL_TOKEN_BYTES_MAX;

    #[derive(Default)]
    struct MapStore(HashMap<(String, ScramAlgorithm), StoredCredential>);

    impl MapStore {
        fn with(mut self, user: &str, alg: ScramAlgorithm, cred: StoredCredential) -> Self {
            self.0.insert((user.to_string(), alg), cred);
            self
        }
    }

    impl Credentials for MapStore {
        fn scram(&self, user: &str, alg: ScramAlgorithm) -> Option<StoredCredential> {
            self.0.get(&(user.to_string(), alg)).cloned()
        }
    }

    const RFC_SALT_B64: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    // SCRAM-SHA-512, computed once with Python's hashlib.pbkdf2_hmac and
    // hmac (user "alice", password "sluice-Pa55w0rd", salt bytes 1..=16 then
    // "sluice-salt", 4096 iterations).
    const PY_PASSWORD: &[u8] = b"sluice-Pa55w0rd";
    const PY_SALT_B64: &str = "AQIDBAUGBwgJCgsMDQ4PEHNsdWljZS1zYWx0";
    const PY_SALTED_HEX: &str = "4ddea6e88661b7a5ffabe7590c7ecc134baffa150419c12f9ee0a6c5fce1a543aec70cd603c05cad02f95070708688bf4f7d1b4e5da078f1dd0a4dff3ea0dff9";
    const PY_STORED_KEY_HEX: &str = "cdc8f94c2782a6c010f9fd89f7431552766be1c8e34bdbf456ad9ca5089c0d25587f2e00eb6091cd83752683befaf9499445fe7c862e7ba40ded6b802c15fd31";
    const PY_SERVER_KEY_HEX: &str = "ae06526c56032eceb755454bcbc937dd2ed6907def7cd628b78ecdac12f8933c4a5ab848cf924a7f97be27fe4d8f7918a257bd4feb09ee987babf113fdbd240e";
    const PY_CLIENT_FIRST: &str = "n,,n=alice,r=3rfcNHYJY1ZVvWVs7j+4Xw";
    const PY_SERVER_NONCE: &str = "Zx8kQ2m9PpR1vTnL0aW6yE4cHs7dJfGb";
    const PY_SERVER_FIRST: &str = "r=3rfcNHYJY1ZVvWVs7j+4XwZx8kQ2m9PpR1vTnL0aW6yE4cHs7dJfGb,s=AQIDBAUGBwgJCgsMDQ4PEHNsdWljZS1zYWx0,i=4096";
    const PY_CLIENT_FINAL: &str = "c=biws,r=3rfcNHYJY1ZVvWVs7j+4XwZx8kQ2m9PpR1vTnL0aW6yE4cHs7dJfGb,p=JGQk7HfX1AvCLf2Tm4PIv98YKtnDnZtvVFcxg0fwcX1V/dwVOUT1e6RBoaUX5rV3n4nnGPe/ZutxNj7lVNcZuw==";
    const PY_SERVER_FINAL: &str = "v=6x0qL5ObM7rcZ8mKZM4OXKsEhxS8ZnHnwTvXudjdwfeYSBTGMuQo/ll6o56zZ1gtmbplHLrXd7KvzklZQhXGkA==";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn rfc_store() -> MapStore {
        let salt = BASE64.decode(RFC_SALT_B64).unwrap();
        let cred = StoredCredential::from_password(ScramAlgorithm::Sha256, b"pencil", &salt, 4096)
            .unwrap();
        MapStore::default().with("user", ScramAlgorithm::Sha256, cred)
    }

    fn py_store() -> MapStore {
        let salt = BASE64.decode(PY_SALT_B64).unwrap();
        let cred =
            StoredCredential::from_password(ScramAlgorithm::Sha512, PY_PASSWORD, &salt, 4096)
                .unwrap();
        MapStore::default().with("alice", ScramAlgorithm::Sha512, cred)
    }

    fn challenge(step: Step) -> String {
        match step {
            Step::Challenge(c) => String::from_utf8(c).unwrap(),
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    /// A minimal SCRAM client: computes the proof from the password.
    struct TestClient {
        alg: ScramAlgorithm,
        gs2_header: String,
        bare: String,
        password: Vec<u8>,
    }

    impl TestClient {
        fn new(alg: ScramAlgorithm, authzid: &str, user: &str, password: &[u8]) -> Self {
            let encode = |s: &str| s.replace('=', "=3D").replace(',', "=2C");
            let gs2_header = match authzid {
                "" => "n,,".to_string(),
                a => format!("n,a={},", encode(a)),
            };
            TestClient {
                alg,
                gs2_header,
                bare: format!("n={},r=cLiEnT-n0nce/+x", encode(user)),
                password: password.to_vec(),
            }
        }

        fn first(&self) -> String {
            format!("{}{}", self.gs2_header, self.bare)
        }

        /// (client-final-message, the server-final-message it expects).
        fn last(&self, server_first: &str) -> (String, String) {
            let mut attrs = server_first.split(',');
            let nonce = attrs.next().unwrap().strip_prefix("r=").unwrap();
            let salt = BASE64
                .decode(attrs.next().unwrap().strip_prefix("s=").unwrap())
                .unwrap();
            let iterations: u32 = attrs.next().unwrap()[2..].parse().unwrap();
            assert!(nonce.starts_with("cLiEnT-n0nce/+x"));
            let salted = salted_password(
                self.alg,
                &self.password,
                &salt,
                NonZeroU32::new(iterations).unwrap(),
            );
            let salted_key = hmac::Key::new(self.alg.hmac(), &salted);
            let client_key = hmac::sign(&salted_key, b"Client Key");
            let stored_key = digest::digest(self.alg.digest(), client_key.as_ref());
            let server_key = hmac::sign(&salted_key, b"Server Key");
            let without_proof = format!("c={},r={nonce}", BASE64.encode(&self.gs2_header));
            let auth = format!("{},{server_first},{without_proof}", self.bare);
            let signature = hmac::sign(
                &hmac::Key::new(self.alg.hmac(), stored_key.as_ref()),
                auth.as_bytes(),
            );
            let proof: Vec<u8> = client_key
                .as_ref()
                .iter()
                .zip(signature.as_ref())
                .map(|(k, s)| k ^ s)
                .collect();
            let verifier = hmac::sign(
                &hmac::Key::new(self.alg.hmac(), server_key.as_ref()),
                auth.as_bytes(),
            );
            (
                format!("{without_proof},p={}", BASE64.encode(proof)),
                format!("v={}", BASE64.encode(verifier.as_ref())),
            )
        }
    }

    /// Runs a whole exchange with a random server nonce.
    fn exchange(client: &TestClient, store: &MapStore) -> Result<Step, SaslFailure> {
        let mut server = ScramServer::new(client.alg, &SystemRandom::new()).unwrap();
        let server_first = challenge(server.step(client.first().as_bytes(), store)?);
        let (last, _) = client.last(&server_first);
        server.step(last.as_bytes(), store)
    }

    #[test]
    fn sasl_scram_rfc7677_sha256_vector() {
        let store = rfc_store();
        let mut server = ScramServer::with_server_nonce(ScramAlgorithm::Sha256, RFC_SERVER_NONCE);
        let first = server.step(RFC_CLIENT_FIRST.as_bytes(), &store).unwrap();
        assert_eq!(challenge(first), RFC_SERVER_FIRST);
        let done = server.step(RFC_CLIENT_FINAL.as_bytes(), &store).unwrap();
        assert_eq!(
            done,
            Step::Done {
                reply: RFC_SERVER_FINAL.as_bytes().to_vec(),
                user: "user".to_string()
            }
        );
        assert!(server.step(RFC_CLIENT_FINAL.as_bytes(), &store).is_err());
    }

    #[test]
    fn sasl_scram_sha512_python_vector() {
        let store = py_store();
        let salt = BASE64.decode(PY_SALT_B64).unwrap();
        let cred = &store.0[&("alice".to_string(), ScramAlgorithm::Sha512)];
        assert_eq!(cred.stored_key, hex(PY_STORED_KEY_HEX));
        assert_eq!(cred.server_key, hex(PY_SERVER_KEY_HEX));
        let from_salted = StoredCredential::from_salted_password(
            ScramAlgorithm::Sha512,
            &hex(PY_SALTED_HEX),
            &salt,
            4096,
        )
        .unwrap();
        assert_eq!(&from_salted, cred);

        let mut server = ScramServer::with_server_nonce(ScramAlgorithm::Sha512, PY_SERVER_NONCE);
        let first = server.step(PY_CLIENT_FIRST.as_bytes(), &store).unwrap();
        assert_eq!(challenge(first), PY_SERVER_FIRST);
        let done = server.step(PY_CLIENT_FINAL.as_bytes(), &store).unwrap();
        assert_eq!(
            done,
            Step::Done {
                reply: PY_SERVER_FINAL.as_bytes().to_vec(),
                user: "alice".to_string()
            }
        );
        // The test client agrees with Python.
        let client = TestClient {
            alg: ScramAlgorithm::Sha512,
            gs2_header: "n,,".to_string(),
            bare: "n=alice,r=cLiEnT-n0nce/+x".to_string(),
            password: PY_PASSWORD.to_vec(),
        };
        let mut server = ScramServer::with_server_nonce(ScramAlgorithm::Sha512, PY_SERVER_NONCE);
        let server_first = challenge(server.step(client.first().as_bytes(), &store).unwrap());
        let (last, expected) = client.last(&server_first);
        match server.step(last.as_bytes(), &store).unwrap() {
            Step::Done { reply, .. } => assert_eq!(reply, expected.as_bytes()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sasl_scram_sha512_full_exchange() {
        let salt = random_salt().unwrap();
        assert_eq!(salt.len(), SCRAM_SALT_BYTES);
        let user = "al,ice=x";
        let cred = StoredCredential::from_password(ScramAlgorithm::Sha512, b"s3cret", &salt, 8192)
            .unwrap();
        let store = MapStore::default().with(user, ScramAlgorithm::Sha512, cred);
        for authzid in ["", user] {
            let client = TestClient::new(ScramAlgorithm::Sha512, authzid, user, b"s3cret");
            assert!(client.bare.starts_with("n=al=2Cice=3Dx,"));
            let mut server =
                ScramServer::new(ScramAlgorithm::Sha512, &SystemRandom::new()).unwrap();
            let server_first = challenge(server.step(client.first().as_bytes(), &store).unwrap());
            assert!(server_first.ends_with(",i=8192"));
            let (last, expected) = client.last(&server_first);
            let done = server.step(last.as_bytes(), &store).unwrap();
            assert_eq!(
                done,
                Step::Done {
                    reply: expected.into_bytes(),
                    user: user.to_string()
                }
            );
        }
        // The SHA-256 exchange for the same user has no credential.
        let client = TestClient::new(ScramAlgorithm::Sha256, "", user, b"s3cret");
        assert!(exchange(&client, &store).is_err());
    }

    #[test]
    fn sasl_scram_server_nonces_differ() {
        let rng = SystemRandom::new();
        let a = ScramServer::new(ScramAlgorithm::Sha256, &rng).unwrap();
        let b = ScramServer::new(ScramAlgorithm::Sha256, &rng).unwrap();
        assert_ne!(a.server_nonce, b.server_nonce);
        assert_eq!(a.server_nonce.len(), 32);
    }

    #[test]
    fn sasl_scram_credential_bounds() {
        let alg = ScramAlgorithm::Sha256;
        for (iterations, ok) in [
            (0, false),
            (4095, false),
            (4096, true),
            (16384, true),
            (16385, false),
        ] {
            let r = StoredCredential::from_password(alg, b"pw", b"salt", iterations);
            assert_eq!(r.is_ok(), ok, "{iterations}");
        }
        assert_eq!(
            StoredCredential::from_password(alg, b"pw", b"", 4096),
            Err(CredentialError::Salt { bytes: 0 })
        );
        assert_eq!(
            StoredCredential::from_salted_password(alg, b"", b"salt", 4096),
            Err(CredentialError::EmptySaltedPassword)
        );
        let cred = StoredCredential::from_password(alg, b"pw", b"salt", 4096).unwrap();
        assert!(cred.is_usable(alg));
        assert!(!cred.is_usable(ScramAlgorithm::Sha512));
        assert!(!format!("{cred:?}").contains("stored_key"));
    }

    #[test]
    fn sasl_scram_wrong_password_and_unknown_user_look_alike() {
        let store = rfc_store();
        let wrong = TestClient::new(ScramAlgorithm::Sha256, "", "user", b"pencil!");
        let unknown = TestClient::new(ScramAlgorithm::Sha256, "", "nobody", b"pencil");
        let wrong_err = exchange(&wrong, &store).unwrap_err();
        let unknown_err = exchange(&unknown, &store).unwrap_err();
        assert_eq!(wrong_err, unknown_err);
        assert_eq!(
            wrong_err.message,
            "Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256"
        );
        assert!(!wrong_err.message.contains("pencil"));
        // The made-up salt is stable per user, and differs between users.
        let salt_of = |user: &str| {
            let mut server =
                ScramServer::new(ScramAlgorithm::Sha256, &SystemRandom::new()).unwrap();
            let first = format!("n,,n={user},r=abc");
            let server_first = challenge(server.step(first.as_bytes(), &store).unwrap());
            server_first.split(',').nth(1).unwrap().to_string()
        };
        assert_eq!(salt_of("nobody"), salt_of("nobody"));
        assert_ne!(salt_of("nobody"), salt_of("nobody2"));
        assert_eq!(salt_of("user"), format!("s={RFC_SALT_B64}"));
    }

    #[test]
    fn sasl_scram_unusable_credential_fails_like_unknown_user() {
        let alg = ScramAlgorithm::Sha256;
        let mut cred = StoredCredential::from_password(alg, b"pencil", b"salt", 4096).unwrap();
        cred.iterations = 100_000;
        let store = MapStore::default().with("user", alg, cred);
        let client = TestClient::new(alg, "", "user", b"pencil");
        let err = exchange(&client, &store).unwrap_err();
        assert_eq!(err, invalid_credentials(alg));
    }

    /// The final message of the RFC exchange with one change, or an error
    /// from the first message.
    fn rfc_final_with(client_final: &str) -> Result<Step, SaslFailure> {
        let store = rfc_store();
        let mut server = ScramServer::with_server_nonce(ScramAlgorithm::Sha256, RFC_SERVER_NONCE);
        server.step(RFC_CLIENT_FIRST.as_bytes(), &store)?;
        server.step(client_final.as_bytes(), &store)
    }

    fn rfc_first(client_first: &[u8]) -> Result<Step, SaslFailure> {
        let store = rfc_store();
        let mut server = ScramServer::with_server_nonce(ScramAlgorithm::Sha256, RFC_SERVER_NONCE);
        server.step(client_first, &store)
    }

    #[test]
    fn sasl_scram_final_message_errors() {
        assert!(rfc_final_with(RFC_CLIENT_FINAL).is_ok());
        // Tampered nonce (one character of the server part).
        let tampered = RFC_CLIENT_FINAL.replace("hNlF$k0", "hNlF$k1");
        let err = rfc_final_with(&tampered).unwrap_err();
        assert!(err.message.contains("nonce"), "{err}");
        // Client nonce only.
        let short = RFC_CLIENT_FINAL.replace(RFC_SERVER_NONCE, "");
        assert!(rfc_final_with(&short).is_err());
        // c= of another GS2 header ("y,,"), and c= not base64.
        for c in ["c=eSws", "c=bixhPXVzZXIs", "c=biws=", "c=???"] {
            let wrong_c = RFC_CLIENT_FINAL.replace("c=biws", c);
            assert!(rfc_final_with(&wrong_c).is_err(), "{c}");
        }
        // Wrong proof: one bit flipped, truncated, empty, missing.
        let flipped = RFC_CLIENT_FINAL.replace("p=dHzb", "p=dHzc");
        assert_eq!(
            rfc_final_with(&flipped).unwrap_err(),
            invalid_credentials(ScramAlgorithm::Sha256)
        );
        let (head, _) = RFC_CLIENT_FINAL.rsplit_once(",p=").unwrap();
        for bad in [
            format!("{head},p=dHzbZapW"),
            format!("{head},p="),
            head.to_string(),
        ] {
            assert!(rfc_final_with(&bad).is_err(), "{bad}");
        }
        // Attributes out of order, or malformed extensions.
        let swapped = format!("r={RFC_SERVER_NONCE},c=biws,p=AAAA");
        assert!(rfc_final_with(&swapped).is_err());
        let bad_ext = RFC_CLIENT_FINAL.replace(",p=", ",junk,p=");
        assert!(rfc_final_with(&bad_ext).is_err());
        // An unknown extension before the proof changes AuthMessage: the
        // RFC's proof no longer matches, but it is not a format error.
        let ext = RFC_CLIENT_FINAL.replace(",p=", ",x=1,p=");
        assert_eq!(
            rfc_final_with(&ext).unwrap_err(),
            invalid_credentials(ScramAlgorithm::Sha256)
        );
    }

    #[test]
    fn sasl_scram_first_message_errors() {
        let cases: &[&[u8]] = &[
            b"",
            b"n",
            b"n,",
            b"n,,",
            b"y,,n=user,r=abc",
            b"p=tls-unique,,n=user,r=abc",
            b"x,,n=user,r=abc",
            b"n,,r=abc,n=user",
            b"n,,n=user",
            b"n,,n=user,r=",
            b"n,,n=,r=abc",
            b"n,,m=ext,n=user,r=abc",
            b"n,,n=us=41er,r=abc",
            b"n,,n=user=,r=abc",
            b"n,,n=user=2,r=abc",
            b"n,,n=user,r=ab c",
            b"n,,n=user,r=abc,noequals",
            b"n,,n=user,r=abc,tokenauth=true",
            b"n,,n=user,r=abc,tokenauth=TRUE",
            b"n,x=user,n=user,r=abc",
            b"n,a=other,n=user,r=abc",
            b"n,a=us=2Cer,n=user,r=abc",
            b"n,,n=u\0ser,r=abc",
            b"n,,n=\xff\xfe,r=abc",
        ];
        for case in cases {
            assert!(
                rfc_first(case).is_err(),
                "{}",
                String::from_utf8_lossy(case)
            );
        }
        let refused = rfc_first(b"y,,n=user,r=abc").unwrap_err();
        assert!(refused.message.contains("channel binding"), "{refused}");
        let mismatch = rfc_first(b"n,a=other,n=user,r=abc").unwrap_err();
        assert!(mismatch.message.contains("authorization id"), "{mismatch}");
        // Accepted: authzid equal to the user, unknown extensions,
        // tokenauth=false (Kafka's reading), a nonce of the maximum size.
        let long_nonce = format!("n,,n=user,r={}", "x".repeat(SCRAM_NONCE_BYTES_MAX));
        let accepted = [
            "n,a=user,n=user,r=abc",
            "n,,n=user,r=abc,x=1,ext=some=value",
            "n,,n=user,r=abc,tokenauth=false",
            long_nonce.as_str(),
        ];
        for case in accepted {
            assert!(rfc_first(case.as_bytes()).is_ok(), "{case}");
        }
        let too_long = format!("n,,n=user,r={}", "x".repeat(SCRAM_NONCE_BYTES_MAX + 1));
        assert!(rfc_first(too_long.as_bytes()).is_err());
    }

    #[test]
    fn sasl_scram_saslname_decoding() {
        assert_eq!(decode_saslname("a=2Cb=3Dc").unwrap(), "a,b=c");
        assert_eq!(decode_saslname("=3D=2C").unwrap(), "=,");
        assert_eq!(decode_saslname("é=2C").unwrap(), "é,");
        for bad in ["", "=", "=2", "=2c", "=3d", "a=é", "=41"] {
            assert!(decode_saslname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sasl_scram_states_after_done_and_failure() {
        let store = rfc_store();
        let mut server = ScramServer::with_server_nonce(ScramAlgorithm::Sha256, RFC_SERVER_NONCE);
        server.step(RFC_CLIENT_FIRST.as_bytes(), &store).unwrap();
        server.step(RFC_CLIENT_FINAL.as_bytes(), &store).unwrap();
        assert!(server.step(RFC_CLIENT_FIRST.as_bytes(), &store).is_err());
        assert!(server.step(RFC_CLIENT_FINAL.as_bytes(), &store).is_err());

        // A failed first message ends the exchange: a good one after it fails.
        let mut server = ScramServer::with_server_nonce(ScramAlgorithm::Sha256, RFC_SERVER_NONCE);
        assert!(server.step(b"garbage", &store).is_err());
        assert!(server.step(RFC_CLIENT_FIRST.as_bytes(), &store).is_err());
    }

    #[test]
    fn sasl_scram_token_bound() {
        let store = rfc_store();
        let padded_first = format!(
            "{RFC_CLIENT_FIRST},x={}",
            "y".repeat(SASL_TOKEN_BYTES_MAX - RFC_CLIENT_FIRST.len() - 2)
        );
        assert_eq!(padded_first.len(), SASL_TOKEN_BYTES_MAX + 1);
        let err = rfc_first(padded_first.as_bytes()).unwrap_err();
        assert!(err.message.contains("over the limit"), "{err}");
        assert!(rfc_first(&padded_first.as_bytes()[..SASL_TOKEN_BYTES_MAX]).is_ok());

        let mut server = ScramServer::with_server_nonce(ScramAlgorithm::Sha256, RFC_SERVER_NONCE);
        server.step(RFC_CLIENT_FIRST.as_bytes(), &store).unwrap();
        let padded_final = RFC_CLIENT_FINAL.replace(",p=", &format!(",x={},p=", "y".repeat(9000)));
        let err = server.step(padded_final.as_bytes(), &store).unwrap_err();
        assert!(err.message.contains("over the limit"), "{err}");
    }

    /// A valid message with bytes flipped, inserted or removed.
    fn mutate(msg: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
        let mut out = msg.to_vec();
        for &(at, kind, byte) in edits {
            let at = if out.is_empty() {
                0
            } else {
                at % (out.len() + 1)
            };
            match kind % 3 {
                0 if at < out.len() => out[at] = byte,
                1 => out.insert(at, byte),
                _ if at < out.len() => {
                    out.remove(at);
                }
                _ => out.push(byte),
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn sasl_scram_any_first_message_no_panic(msg in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = rfc_first(&msg);
        }

        #[test]
        fn sasl_scram_any_final_message_no_panic(msg in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = rfc_final_with(&String::from_utf8_lossy(&msg));
            let store = rfc_store();
            let mut server = ScramServer::with_server_nonce(ScramAlgorithm::Sha256, RFC_SERVER_NONCE);
            server.step(RFC_CLIENT_FIRST.as_bytes(), &store).unwrap();
            let _ = server.step(&msg, &store);
        }

        #[test]
        fn sasl_scram_mutated_messages_no_panic(
            edits_first in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..6),
            edits_final in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
        ) {
            let store = rfc_store();
            let first = mutate(RFC_CLIENT_FIRST.as_bytes(), &edits_first);
            let last = mutate(RFC_CLIENT_FINAL.as_bytes(), &edits_final);
            let mut server = ScramServer::with_server_nonce(ScramAlgorithm::Sha256, RFC_SERVER_NONCE);
            if server.step(&first, &store).is_ok() {
                let result = server.step(&last, &store);
                // Only an unchanged final message (an edit that restored a
                // byte) may pass, and only after an unchanged first message.
                if result.is_ok() {
                    prop_assert_eq!(&last[..], RFC_CLIENT_FINAL.as_bytes());
                }
            }
        }
    }
}
