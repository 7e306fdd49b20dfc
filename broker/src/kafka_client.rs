//! The broker's own Kafka client, for requests one node sends another
//! node's advertised Kafka listener: the replica fetcher's Fetch and
//! OffsetForLeaderEpoch (`replica`) and the transaction coordinator's
//! WriteTxnMarkers (`markers`).
//!
//! A `Conn` is one TCP connection to one node, used by one task at a time:
//! one request, then its response, never pipelined. It runs on the shard
//! that opened it (glommio `TcpStream`), over TLS with this node's
//! certificate when the inter-broker listener is `SSL` or `SASL_SSL`. On a
//! `SASL_*` listener it authenticates first (SaslHandshake, then
//! SaslAuthenticate with `sasl::client`'s tokens), and again on the same
//! connection before the session the other node granted ends (KIP-368).
//! The client's PBKDF2 runs on the shard's blocking thread, as the
//! server's does.
//!
//! Memory: a response frame is read into one buffer charged to the shard's
//! `request_buffers` pool, held by the caller until it is done with the
//! response. Its size prefix is checked against the connection's
//! `response_bytes_max` before anything is read.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use kafka_protocol::messages::{
    ApiKey, RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslAuthenticateResponse,
    SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::handlers::{with_deadline, Ctx};
use crate::plane::{RequestBuffer, Shard};
use crate::sasl::client::{ClientCredentials, SaltedPassword, SaslClient};

/// Why a request to another node failed as a whole.
#[derive(Debug)]
pub enum Failure {
    Io(std::io::Error),
    TimedOut,
    /// The node answered something we cannot use (bad frame, error code
    /// for the whole request), or is not in the metadata.
    Protocol(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Io(e) => write!(f, "{e}"),
            Failure::TimedOut => write!(f, "timed out"),
            Failure::Protocol(m) => write!(f, "{m}"),
        }
    }
}

/// Who a connection speaks for and what it accepts.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    /// Client id of every request (shows in the other node's logs).
    pub client_id: &'static str,
    /// Longest connect attempt.
    pub connect_timeout: Duration,
    /// Largest response frame accepted.
    pub response_bytes_max: u32,
}

/// A connection's byte stream: plain TCP, or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Unpin {}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for S {}

/// Steps of one SASL exchange at most (SCRAM takes two).
const SASL_STEPS_MAX: usize = 4;
/// Bound of one whole SASL authentication, in connect timeouts: the
/// handshake, the steps, and a PBKDF2 that may queue on the shard's
/// blocking thread behind clients' PLAIN checks.
const SASL_TIMEOUTS_MAX: u32 = 4;
/// Share of the session lifetime after which the connection
/// re-authenticates (Kafka's clients pick 85% to 95%).
const REAUTH_AT: f64 = 0.85;

/// One connection to one node's Kafka listener.
pub struct Conn {
    stream: Box<dyn Stream>,
    correlation_id: i32,
    profile: Profile,
    /// The node it is connected to (for messages).
    node: u64,
    /// Set on a SASL listener.
    sasl: Option<SaslSession>,
}

/// A connection's SASL authentication.
struct SaslSession {
    creds: Arc<ClientCredentials>,
    /// When to authenticate again (`None`: the session does not end).
    again: Option<Instant>,
    /// The SCRAM salted password of the last authentication: the next one
    /// with the same salt and iterations runs no PBKDF2.
    salted: Option<SaltedPassword>,
}

impl Conn {
    /// Connects to node `node`'s advertised Kafka listener as the current
    /// metadata view lists it.
    pub async fn open(ctx: &Ctx, node: u64, profile: Profile) -> Result<Conn, Failure> {
        let view = ctx.view();
        let broker = view
            .brokers
            .get(&node)
            .ok_or_else(|| Failure::Protocol(format!("node {node} is not registered")))?;
        let addr = resolve(&broker.host, broker.port).map_err(Failure::Io)?;
        let stream = TcpStream::connect_timeout(addr, profile.connect_timeout)
            .await
            .map_err(|e| Failure::Io(e.into()))?;
        let _ = stream.set_nodelay(true);
        let stream: Box<dyn Stream> = if ctx.node.security.inter_broker_tls {
            Box::new(tls_connect(ctx, &broker.host, stream, profile).await?)
        } else {
            Box::new(stream)
        };
        tracing::debug!(node, %addr, client = profile.client_id, "connected to a node");
        let mut conn = Conn {
            stream,
            correlation_id: 0,
            profile,
            node,
            sasl: None,
        };
        if let Some(creds) = &ctx.node.security.inter_broker_sasl {
            conn.sasl = Some(SaslSession {
                creds: Arc::clone(creds),
                again: None,
                salted: None,
            });
            conn.authenticate(&ctx.shard).await?;
        }
        Ok(conn)
    }

    /// SaslHandshake then SaslAuthenticate until the exchange is done,
    /// within `SASL_TIMEOUTS_MAX` connect timeouts; sets when to do it
    /// again from the session lifetime the node answers.
    async fn authenticate(&mut self, shard: &Shard) -> Result<(), Failure> {
        let limit = self.profile.connect_timeout * SASL_TIMEOUTS_MAX;
        let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        with_deadline(ms, self.authenticate_steps(shard))
            .await
            .ok_or(Failure::TimedOut)?
    }

    async fn authenticate_steps(&mut self, shard: &Shard) -> Result<(), Failure> {
        let Some(sasl) = &mut self.sasl else {
            return Ok(());
        };
        let (creds, salted) = (Arc::clone(&sasl.creds), sasl.salted.take());
        let (limit, node) = (self.profile.connect_timeout, self.node);
        let refused = |what: String| {
            Failure::Protocol(format!(
                "SASL {} as '{}' on node {}: {what} (--inter-broker-sasl-mechanism, --inter-broker-sasl-username, --inter-broker-sasl-password-file; the user must exist on the cluster)",
                creds.mechanism.name(),
                creds.username,
                node
            ))
        };
        let mut handshake = SaslHandshakeRequest::default();
        handshake.mechanism = StrBytes::from_static_str(creds.mechanism.name());
        let (resp, _): (SaslHandshakeResponse, _) = self
            .exchange(shard, ApiKey::SaslHandshake, 1, &handshake, limit)
            .await?;
        if resp.error_code != 0 {
            let offered: Vec<&str> = resp.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(refused(format!(
                "handshake error {}; the node offers {}",
                resp.error_code,
                offered.join(",")
            )));
        }
        let (mut client, mut token) =
            SaslClient::start(&creds, &ring::rand::SystemRandom::new(), salted)
                .map_err(|e| refused(e.message))?;
        for _ in 0..SASL_STEPS_MAX {
            let mut req = SaslAuthenticateRequest::default();
            req.auth_bytes = Bytes::from(std::mem::take(&mut token));
            let started = Instant::now();
            let (resp, _): (SaslAuthenticateResponse, _) = self
                .exchange(shard, ApiKey::SaslAuthenticate, 2, &req, limit)
                .await?;
            if resp.error_code != 0 {
                let message = resp.error_message.as_deref().unwrap_or("");
                return Err(refused(format!("refused ({}): {message}", resp.error_code)));
            }
            let server_msg = resp.auth_bytes;
            let step = if client.costly_step(&server_msg) {
                // PBKDF2: off the shard's executor.
                let (returned, step) = glommio::executor()
                    .spawn_blocking(move || {
                        let step = client.step(&server_msg);
                        (client, step)
                    })
                    .await;
                client = returned;
                step
            } else {
                client.step(&server_msg)
            };
            let Some(next) = step.map_err(|e| refused(e.message))? else {
                let lifetime = u64::try_from(resp.session_lifetime_ms).unwrap_or(0);
                // A lifetime past what the clock can add is no end.
                let again = (lifetime > 0)
                    .then(|| {
                        started.checked_add(Duration::from_millis(lifetime).mul_f64(REAUTH_AT))
                    })
                    .flatten();
                self.sasl = Some(SaslSession {
                    creds,
                    again,
                    salted: client.into_salted(),
                });
                return Ok(());
            };
            token = next;
        }
        Err(refused(format!("no end after {SASL_STEPS_MAX} steps")))
    }

    /// Sends one request and reads its response within `limit`; the
    /// response's frame stays charged to `shard`'s `request_buffers` pool
    /// while the returned buffer is held.
    pub async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        shard: &Shard,
        key: ApiKey,
        version: i16,
        req: &Req,
        limit: Duration,
    ) -> Result<(Resp, RequestBuffer), Failure> {
        let reauth_due = (self.sasl.as_ref())
            .and_then(|sasl| sasl.again)
            .is_some_and(|at| Instant::now() >= at);
        if reauth_due {
            self.authenticate(shard).await?;
        }
        self.exchange(shard, key, version, req, limit).await
    }

    /// One request and its response, as `call` without re-authentication.
    async fn exchange<Req: Encodable, Resp: Decodable>(
        &mut self,
        shard: &Shard,
        key: ApiKey,
        version: i16,
        req: &Req,
        limit: Duration,
    ) -> Result<(Resp, RequestBuffer), Failure> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let correlation_id = self.correlation_id;
        let frame = encode_request(key, version, correlation_id, self.profile.client_id, req)?;
        let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        let response_bytes_max = self.profile.response_bytes_max;
        let stream = &mut self.stream;
        let exchange = async {
            stream.write_all(&frame).await.map_err(Failure::Io)?;
            stream.flush().await.map_err(Failure::Io)?;
            read_response(stream, shard, response_bytes_max).await
        };
        let (mut body, held) = with_deadline(ms, exchange)
            .await
            .ok_or(Failure::TimedOut)??;
        let header = ResponseHeader::decode(&mut body, key.response_header_version(version))
            .map_err(|e| Failure::Protocol(format!("{key:?} response header: {e:#}")))?;
        if header.correlation_id != correlation_id {
            return Err(Failure::Protocol(format!(
                "correlation id {} for request {correlation_id}",
                header.correlation_id
            )));
        }
        let resp = Resp::decode(&mut body, version)
            .map_err(|e| Failure::Protocol(format!("{key:?} v{version} response: {e:#}")))?;
        Ok((resp, held))
    }
}

/// The TLS handshake with another node's `SSL` inter-broker listener,
/// within the connect timeout: its certificate must be valid for `host`
/// and chain to `--tls-client-ca-file`; this node presents its own (its
/// principal there).
async fn tls_connect(
    ctx: &Ctx,
    host: &str,
    stream: TcpStream,
    profile: Profile,
) -> Result<futures_rustls::client::TlsStream<TcpStream>, Failure> {
    let connector = ctx
        .node
        .security
        .tls
        .as_ref()
        .and_then(|t| t.connector())
        .ok_or_else(|| Failure::Protocol("inter-broker TLS needs --tls-client-ca-file".into()))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(bare.to_string())
        .map_err(|e| Failure::Protocol(format!("{host}: not a TLS server name: {e}")))?;
    let ms = u64::try_from(profile.connect_timeout.as_millis()).unwrap_or(u64::MAX);
    with_deadline(ms, connector.connect(name, stream))
        .await
        .ok_or(Failure::TimedOut)?
        .map_err(Failure::Io)
}

/// Reads one response frame: its size prefix, checked against
/// `response_bytes_max`, then its body into a buffer charged to the
/// shard's `request_buffers` pool.
async fn read_response(
    stream: &mut Box<dyn Stream>,
    shard: &Shard,
    response_bytes_max: u32,
) -> Result<(Bytes, RequestBuffer), Failure> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).await.map_err(Failure::Io)?;
    let size = i32::from_be_bytes(prefix);
    let size = match u32::try_from(size) {
        Ok(n) if n >= 4 && n <= response_bytes_max => n,
        _ => {
            return Err(Failure::Protocol(format!(
                "response size {size} is not in 4..={response_bytes_max}"
            )))
        }
    };
    // Charged at once, past the pool's limit if need be: the pool may be
    // full of client produce frames that wait (acks=all) for this very
    // replication, here or on the other node, so waiting for it could
    // stall every node until the memory wait runs out. The bytes are
    // bounded all the same: one response per connection, each at most
    // `response_bytes_max`, and connections are bounded by their users.
    let held = shard.reserve_request_forced(u64::from(size));
    let mut body = vec![0u8; size as usize];
    stream.read_exact(&mut body).await.map_err(Failure::Io)?;
    Ok((Bytes::from(body), held))
}

/// A node's address: an IP literal as is, a host name through the system
/// resolver (blocking, once per connection attempt).
pub fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (bare, port).to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host}: no address"))
    })
}

/// Size prefix + request header (with the client id) + body.
pub fn encode_request<T: Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: &'static str,
    body: &T,
) -> Result<Bytes, Failure> {
    let mut header = RequestHeader::default();
    header.request_api_key = key as i16;
    header.request_api_version = version;
    header.correlation_id = correlation_id;
    header.client_id = Some(StrBytes::from_static_str(client_id));
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    header
        .encode(&mut buf, key.request_header_version(version))
        .and_then(|_| body.encode(&mut buf, version))
        .map_err(|e| Failure::Protocol(format!("encoding {key:?} v{version}: {e:#}")))?;
    let size =
        i32::try_from(buf.len() - 4).map_err(|_| Failure::Protocol("request over 2 GiB".into()))?;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::ApiVersionsRequest;

    #[test]
    fn requests_carry_their_size_header_and_client_id() {
        let req = ApiVersionsRequest::default();
        let frame =
            encode_request(ApiKey::ApiVersions, 3, 9, "sluice-test", &req).expect("encodes");
        let size = i32::from_be_bytes(frame[..4].try_into().expect("prefix"));
        assert_eq!(size as usize, frame.len() - 4);
        let mut body = frame.slice(4..);
        let header =
            RequestHeader::decode(&mut body, ApiKey::ApiVersions.request_header_version(3))
                .expect("header");
        assert_eq!(header.request_api_key, ApiKey::ApiVersions as i16);
        assert_eq!((header.request_api_version, header.correlation_id), (3, 9));
        assert_eq!(header.client_id.as_deref(), Some("sluice-test"));
        assert_eq!(ApiVersionsRequest::decode(&mut body, 3).expect("body"), req);
    }

    #[test]
    fn addresses_resolve() {
        assert_eq!(
            resolve("127.0.0.1", 9092).unwrap(),
            "127.0.0.1:9092".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            resolve("[::1]", 9092).unwrap(),
            "[::1]:9092".parse::<SocketAddr>().unwrap()
        );
        assert!(resolve("localhost", 9092).is_ok());
    }
}
