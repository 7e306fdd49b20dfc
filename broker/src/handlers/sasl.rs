//! SaslHandshake (v1) and SaslAuthenticate (v0-2): SASL inside Kafka
//! frames, on the connection's shard. The mechanisms are `crate::sasl`;
//! the credentials are the SCRAM credentials of the replicated metadata
//! (PLAIN checks its password against them).
//!
//! As in Kafka: a handshake on a listener without SASL, or an
//! authenticate without a handshake, is ILLEGAL_SASL_STATE; a failed
//! authentication is answered SASL_AUTHENTICATION_FAILED after
//! `Security::failed_auth_delay` and the connection is closed; a
//! re-authentication (KIP-368, a handshake on an authenticated
//! connection) must keep the principal.

use std::cell::Cell;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_raft::MetadataView;

use super::Ctx;
use crate::plane::WarnLimiter;
use crate::sasl::{self, Mechanism, Step};
use crate::security::{SaslState, Session};

pub fn handshake(
    req: &SaslHandshakeRequest,
    _version: i16,
    ctx: &Ctx,
    session: &Session,
) -> SaslHandshakeResponse {
    let enabled = &ctx.node.security.sasl_mechanisms;
    let mut r = SaslHandshakeResponse::default();
    r.mechanisms = enabled
        .iter()
        .map(|m| StrBytes::from_static_str(m))
        .collect();
    if !session.protocol.sasl() || matches!(*session.sasl.borrow(), SaslState::Exchanging(_)) {
        r.error_code = ResponseError::IllegalSaslState.code();
        return r;
    }
    let mechanism =
        Mechanism::from_name(req.mechanism.as_str()).filter(|m| enabled.contains(&m.name()));
    let Some(mechanism) = mechanism else {
        r.error_code = ResponseError::UnsupportedSaslMechanism.code();
        return r;
    };
    *session.sasl.borrow_mut() = SaslState::Exchanging(sasl::Exchange::new(mechanism));
    r
}

/// The answer, and whether the connection closes after it.
pub async fn authenticate(
    req: &SaslAuthenticateRequest,
    version: i16,
    ctx: &Ctx,
    session: &Session,
) -> (SaslAuthenticateResponse, bool) {
    let mut r = SaslAuthenticateResponse::default();
    let state = std::mem::replace(&mut *session.sasl.borrow_mut(), SaslState::Idle);
    let SaslState::Exchanging(mut exchange) = state else {
        r.error_code = ResponseError::IllegalSaslState.code();
        r.error_message = Some(StrBytes::from_static_str(
            "SaslAuthenticate without a SaslHandshake",
        ));
        return (r, true);
    };
    let mechanism = exchange.mechanism().name();
    let view = ctx.view();
    let step = if exchange.mechanism() == sasl::Mechanism::Plain {
        // PLAIN's PBKDF2 takes milliseconds (thousands of HMACs, as many
        // for an unknown user): it runs on the shard's blocking thread,
        // one at a time, so a flood of PLAIN attempts queues there instead
        // of stalling every other connection of the shard.
        let token = req.auth_bytes.clone();
        let (returned, step) = glommio::executor()
            .spawn_blocking(move || {
                let step = exchange.step(&token, &ViewCredentials(&view));
                (exchange, step)
            })
            .await;
        exchange = returned;
        step
    } else {
        exchange.step(&req.auth_bytes, &ViewCredentials(&view))
    };
    let failure = match step {
        Ok(Step::Challenge(bytes)) => {
            *session.sasl.borrow_mut() = SaslState::Exchanging(exchange);
            r.auth_bytes = bytes.into();
            return (r, false);
        }
        Ok(Step::Done { reply, user }) => {
            let principal = format!("User:{user}");
            if session.authenticated() && *session.principal() != *principal {
                // KIP-368: a re-authentication keeps the principal.
                "Cannot change principals during re-authentication".to_string()
            } else {
                let reauth_ms = ctx.node.security.reauth_ms;
                let lifetime = (reauth_ms > 0).then(|| Duration::from_millis(reauth_ms));
                session.authenticate(&principal, lifetime);
                if version >= 1 {
                    r.session_lifetime_ms = reauth_ms as i64;
                }
                r.auth_bytes = reply.into();
                count(true);
                return (r, false);
            }
        }
        Err(failure) => failure.message,
    };
    count(false);
    warn_failed(&session.host, mechanism, &failure);
    let delay = ctx.node.security.failed_auth_delay;
    if !delay.is_zero() {
        ctx.shard.sleep_until(Instant::now() + delay).await;
    }
    r.error_code = ResponseError::SaslAuthenticationFailed.code();
    r.error_message = Some(StrBytes::from_string(failure));
    (r, true)
}

/// The SCRAM credentials of the metadata view, for the mechanisms.
struct ViewCredentials<'a>(&'a MetadataView);

impl sasl::Credentials for ViewCredentials<'_> {
    fn scram(&self, user: &str, alg: sasl::ScramAlgorithm) -> Option<sasl::StoredCredential> {
        let mechanism = match alg {
            sasl::ScramAlgorithm::Sha256 => sluice_raft::ScramMechanism::Sha256,
            sasl::ScramAlgorithm::Sha512 => sluice_raft::ScramMechanism::Sha512,
        };
        let c = self.0.users.get(user)?.get(mechanism)?;
        Some(sasl::StoredCredential {
            salt: c.salt.clone(),
            stored_key: c.stored_key.clone(),
            server_key: c.server_key.clone(),
            iterations: c.iterations,
        })
    }
}

thread_local! {
    /// This shard's SASL authentications: (succeeded, failed).
    static AUTHENTICATIONS: (Cell<u64>, Cell<u64>) = const { (Cell::new(0), Cell::new(0)) };
    /// Failed-authentication warnings of this shard: at most one per 10 s.
    static FAILED_WARNINGS: WarnLimiter = const { WarnLimiter::new(Duration::from_secs(10)) };
}

fn count(ok: bool) {
    AUTHENTICATIONS.with(|(good, bad)| {
        let c = if ok { good } else { bad };
        c.set(c.get() + 1);
    });
}

/// This shard's SASL authentications since start: (succeeded, failed).
/// Read on the shard's thread (the probe task).
pub fn authentications() -> (u64, u64) {
    AUTHENTICATIONS.with(|(good, bad)| (good.get(), bad.get()))
}

fn warn_failed(host: &str, mechanism: &str, why: &str) {
    let Some(suppressed) = FAILED_WARNINGS.with(|w| w.due()) else {
        tracing::debug!(host, mechanism, why, "SASL authentication failed");
        return;
    };
    tracing::warn!(
        host,
        mechanism,
        why,
        suppressed,
        "SASL authentication failed"
    );
}
