//! One Kafka client connection: a glommio task on the shard that accepted
//! it. Requests are read, handled and answered one at a time, so responses
//! leave strictly in request order (clients may pipeline; like Kafka, the
//! next request is read once the previous one is answered).
//!
//! A reply is written within `REPLY_WRITE_TIMEOUT` or the connection is
//! closed: a peer that does not read cannot pin the reply's memory (a
//! fetch answer's batches stay charged to `fetch_response` until written).
//!
//! Malformed input closes the connection with a rate-limited warning:
//! a size prefix < 0 or > `request_max_bytes`, a truncated frame, an unknown
//! API key, an unsupported version (except ApiVersions, which is answered
//! with UNSUPPORTED_VERSION and our ranges in a v0 body), an undecodable
//! header or body.

use std::cell::Cell;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::handlers::{self, api_versions, Ctx};
use crate::plane::{RequestBuffer, ResponseMemory};

/// Read buffer of a connection.
const READ_BUFFER_BYTES: usize = 64 << 10;
/// Minimum request frame: api key, api version, correlation id.
const FRAME_BYTES_MIN: usize = 8;

/// Why a connection was closed by us (logged through `Debug`).
#[derive(Debug)]
#[allow(dead_code)]
pub enum Close {
    BadSize(i32),
    Truncated,
    UnknownApiKey(i16),
    UnsupportedVersion(ApiKey, i16),
    Decode(String),
    Encode(String),
    Io(std::io::Error),
    /// The peer did not read a reply within `REPLY_WRITE_TIMEOUT`.
    WriteTimeout,
    /// No request memory within `MEMORY_WAIT` (or `POOL_WAITERS_MAX`
    /// connections wait already).
    NoMemory,
}

/// Longest time writing one reply may take; a peer that does not read its
/// replies for this long is disconnected (its reply's memory is released).
pub const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What to do after one request.
enum Outcome {
    /// The encoded reply, and memory its bytes hold until written.
    Reply(Bytes, Option<ResponseMemory>),
    Silent,
}

pub struct ConnLimits {
    pub request_max_bytes: u32,
}

/// Serves one connection until the peer closes it or sends bad input.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: String,
    ctx: &Ctx,
    limits: &ConnLimits,
) {
    // The read buffer is charged to the request-buffer pool for the
    // connection's life; a full pool delays the connection's first read.
    let Some(_buffer) = ctx.shard.reserve_request(READ_BUFFER_BYTES as u64).await else {
        return closed(&peer, Close::NoMemory);
    };
    let mut stream = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    loop {
        // `_held` keeps the frame's memory charged until it is answered.
        let (frame, _held) = match read_frame(&mut stream, limits, ctx).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(close) => return closed(&peer, close),
        };
        let (reply, held) = match handle_frame(frame, ctx).await {
            Ok(Outcome::Reply(bytes, held)) => (bytes, held),
            Ok(Outcome::Silent) => continue,
            Err(close) => return closed(&peer, close),
        };
        if let Err(close) = write_bounded(&mut stream, &reply, ctx).await {
            return closed(&peer, close);
        }
        drop(held);
    }
}

/// Writes a reply within `REPLY_WRITE_TIMEOUT`. A write that completes at
/// once (the common case) touches no deadline; one that blocks registers
/// its deadline in the shard's deadline structure (no timer per connection).
async fn write_bounded<S: AsyncWrite + Unpin>(
    stream: &mut S,
    reply: &[u8],
    ctx: &Ctx,
) -> Result<(), Close> {
    let mut write = std::pin::pin!(write_reply(stream, reply));
    if let std::task::Poll::Ready(r) = futures::poll!(write.as_mut()) {
        return r.map_err(Close::Io);
    }
    let deadline = Instant::now() + REPLY_WRITE_TIMEOUT;
    let sleep = std::pin::pin!(ctx.shard.sleep_until(deadline));
    match futures::future::select(write, sleep).await {
        futures::future::Either::Left((r, _)) => r.map_err(Close::Io),
        futures::future::Either::Right(_) => Err(Close::WriteTimeout),
    }
}

async fn write_reply<S: AsyncWrite + Unpin>(stream: &mut S, reply: &[u8]) -> std::io::Result<()> {
    stream.write_all(reply).await?;
    stream.flush().await
}

fn closed(peer: &str, close: Close) {
    match close {
        // A peer going away mid-stream is ordinary.
        Close::Io(e) => tracing::debug!(peer, error = %e, "connection closed"),
        Close::Truncated => tracing::debug!(peer, "connection closed inside a frame"),
        other => warn_limited(peer, &other),
    }
}

thread_local! {
    static WARN_LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    static WARN_SUPPRESSED: Cell<u64> = const { Cell::new(0) };
}

/// At most one warning per `WARN_INTERVAL` per shard; the rest are counted
/// and reported with the next one.
fn warn_limited(peer: &str, close: &Close) {
    const WARN_INTERVAL: Duration = Duration::from_secs(10);
    let now = Instant::now();
    let due = WARN_LAST.with(|l| {
        l.get()
            .map_or(true, |t| now.duration_since(t) >= WARN_INTERVAL)
    });
    if !due {
        WARN_SUPPRESSED.with(|s| s.set(s.get() + 1));
        return;
    }
    WARN_LAST.with(|l| l.set(Some(now)));
    let suppressed = WARN_SUPPRESSED.with(|s| s.replace(0));
    let what = match close {
        Close::WriteTimeout | Close::NoMemory => "closing connection",
        _ => "closing connection: bad request",
    };
    tracing::warn!(peer, reason = ?close, suppressed, "{what}");
}

/// Reads one size-prefixed frame. `Ok(None)`: clean end of stream.
///
/// The frame's size is reserved from the shard's request-buffer pool
/// before its body is read; while the pool is full the connection waits
/// and its socket is not read (backpressure, not an error).
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    limits: &ConnLimits,
    ctx: &Ctx,
) -> Result<Option<(Bytes, RequestBuffer)>, Close> {
    let mut size = [0u8; 4];
    match stream.read(&mut size[..1]).await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(Close::Io(e)),
    }
    read_exact(stream, &mut size[1..]).await?;
    let size = i32::from_be_bytes(size);
    if size < FRAME_BYTES_MIN as i32
        || size as u32 > limits.request_max_bytes
        // Beside the connection's own read buffer, the frame must fit the
        // pool, or it could never be read.
        || size as u64 + READ_BUFFER_BYTES as u64 > ctx.shard.request_bytes_max()
    {
        return Err(Close::BadSize(size));
    }
    let Some(held) = ctx.shard.reserve_request(size as u64).await else {
        return Err(Close::NoMemory);
    };
    // The announced size is reserved, so the frame is allocated once at
    // that size (growing a buffer as bytes arrive would hold up to twice
    // the reservation). A peer announcing more than it sends holds at most
    // its reservation, within the pool.
    let mut frame = vec![0u8; size as usize];
    read_exact(stream, &mut frame).await?;
    Ok(Some((Bytes::from(frame), held)))
}

async fn read_exact<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut [u8]) -> Result<(), Close> {
    stream.read_exact(buf).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Close::Truncated,
        _ => Close::Io(e),
    })
}

async fn handle_frame(mut frame: Bytes, ctx: &Ctx) -> Result<Outcome, Close> {
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let key = ApiKey::try_from(raw_key).map_err(|_| Close::UnknownApiKey(raw_key))?;
    let Some((min, max)) = handlers::supported_range(key) else {
        return Err(Close::UnknownApiKey(raw_key));
    };
    if version < min || version > max {
        if key == ApiKey::ApiVersions {
            let body = ResponseKind::ApiVersions(api_versions::unsupported_version());
            return encode(correlation_id, key, 0, &body).map(|b| Outcome::Reply(b, None));
        }
        return Err(Close::UnsupportedVersion(key, version));
    }
    let header = RequestHeader::decode(&mut frame, key.request_header_version(version))
        .map_err(|e| Close::Decode(format!("header: {e:#}")))?;
    tracing::trace!(api = ?key, version, correlation_id = header.correlation_id, "request");
    match handlers::dispatch(key, version, &mut frame, ctx).await {
        Ok(Some(r)) => {
            let bytes = encode(header.correlation_id, key, version, &r.body)?;
            Ok(Outcome::Reply(bytes, r.held))
        }
        Ok(None) => Ok(Outcome::Silent),
        Err(e) => Err(Close::Decode(format!("{key:?} v{version}: {}", e.0))),
    }
}

/// Size prefix + response header + body.
fn encode(
    correlation_id: i32,
    key: ApiKey,
    version: i16,
    body: &ResponseKind,
) -> Result<Bytes, Close> {
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    header
        .encode(&mut buf, key.response_header_version(version))
        .and_then(|_| body.encode(&mut buf, version))
        .map_err(|e| Close::Encode(format!("{key:?} v{version}: {e:#}")))?;
    let size =
        i32::try_from(buf.len() - 4).map_err(|_| Close::Encode("response over 2 GiB".into()))?;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    let _ = buf.remaining();
    Ok(buf.freeze())
}

/// Runs one request frame (without its size prefix) through the handling
/// of a connection; `None` when no response is due.
#[cfg(test)]
pub async fn serve_frame_for_tests(frame: Bytes, ctx: &Ctx, _limits: &ConnLimits) -> Option<Bytes> {
    match handle_frame(frame, ctx).await {
        Ok(Outcome::Reply(bytes, _)) => Some(bytes),
        Ok(Outcome::Silent) => None,
        Err(close) => panic!("connection closed: {close:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_unsupported_api_versions_as_v0() {
        let body = ResponseKind::ApiVersions(api_versions::unsupported_version());
        let bytes = encode(42, ApiKey::ApiVersions, 0, &body).unwrap();
        let mut b = bytes.clone();
        assert_eq!(b.get_i32() as usize, bytes.len() - 4);
        assert_eq!(b.get_i32(), 42);
        assert_eq!(b.get_i16(), 35);
        assert_eq!(b.get_i32() as usize, handlers::SUPPORTED.len());
    }
}
