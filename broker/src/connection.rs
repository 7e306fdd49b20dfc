//! One Kafka client connection: a glommio task on the shard that accepted
//! it, with a read side and a write side joined by a bounded queue of
//! replies (`IN_FLIGHT_MAX` requests in flight).
//!
//! Produce requests are pipelined: the read side starts a Produce (every
//! partition is queued at its owning shard, in the order of the frames:
//! see `Shard::produce_start`) before it reads the next frame, and the
//! write side awaits durability and writes the reply. So librdkafka's many
//! in-flight produces on one connection (one request per partition) share
//! WAL commits instead of paying one fdatasync each. Every other request
//! is a barrier: it runs once every earlier reply was written, and the
//! next frame is read after it ran. Replies leave strictly in request
//! order. A frame's request-buffer reservation is held until its reply was
//! written (or, without a reply, until its request finished).
//!
//! Produce with acks=0 gets no reply; if it fails the connection is closed
//! (as in Kafka: the client has no other way to learn of it).
//!
//! A reply is written within `REPLY_WRITE_TIMEOUT` or the connection is
//! closed: a peer that does not read cannot pin the reply's memory (a
//! fetch answer's batches stay charged to `fetch_response` until written).
//!
//! Malformed input closes the connection with a rate-limited warning and
//! is counted by reason (`Closes`, `sluice_shard_requests_rejected_total`):
//! a size prefix < 8 or > `request_max_bytes`, an unknown API key, an
//! unsupported version (except ApiVersions, which is answered with
//! UNSUPPORTED_VERSION and our ranges in a v0 body), a frame that fails
//! `frame_check` (every count and length against the bytes there, before
//! the codec sees it), an undecodable header or body. Replies already due
//! are written first.
//!
//! Untrusted bytes enter here. A connection holds no buffer of its own
//! between frames: the size prefix is read into 4 bytes, and each frame
//! into one buffer of its announced size, reserved from the shard's
//! request-buffer pool first. Once a frame's first byte arrived, its
//! prefix, and then its body, must each arrive within
//! `--frame-read-timeout-ms`, or the connection is closed: a stalled
//! partial frame cannot hold its reservation. The bound is armed in the
//! shard's deadline structure only while a read blocks.

use std::future::Future;
use std::pin::{pin, Pin};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::channel::oneshot;
use futures::future::{select, Either};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use kafka_protocol::messages::{
    ApiKey, ProduceRequest, RequestHeader, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::frame_check::{self, Refusal};
use crate::handlers::{self, api_versions, produce, Ctx};
use crate::plane::{RequestBuffer, ResponseMemory, WarnLimiter};
use crate::security::quota::QuotaKind;
use crate::security::Session;

/// Minimum request frame: api key, api version, correlation id.
const FRAME_BYTES_MIN: usize = 8;
/// Decoding a request whose arrays take less than this is not charged
/// to the request-buffer pool (beside its frame).
const DECODED_CHARGE_BYTES_MIN: u64 = 4 << 10;
/// Decoded arrays up to this many times their frame's size are charged at
/// once (past the pool's limit if need be), as real requests need (a
/// Metadata v1-8 topic of a 7-character name: 9 bytes on the wire, 72
/// decoded); larger ratios (arrays of empty elements) wait for the pool.
const DECODED_PER_FRAME_BYTE_FORCED_MAX: u64 = 8;
/// Requests of one connection read and not yet answered (the reply queue
/// between its read and write sides); a full queue stops the reading.
/// Above librdkafka's default of 5 requests in flight per connection times
/// the partitions it batches per request.
pub const IN_FLIGHT_MAX: usize = 64;

/// Why a connection was closed by us (logged through `Debug`).
#[derive(Debug)]
#[allow(dead_code)]
pub enum Close {
    BadSize(i32),
    Truncated,
    UnknownApiKey(i16),
    UnsupportedVersion(ApiKey, i16),
    /// The frame failed `frame_check`.
    Malformed(ApiKey, i16, Refusal),
    /// Decoding the frame would take more than the request-buffer pool.
    DecodedTooLarge(ApiKey, u64),
    Decode(String),
    Encode(String),
    Io(std::io::Error),
    /// A produce with acks=0 failed with this error code.
    SilentProduceFailed(i16),
    /// The peer did not read a reply within `REPLY_WRITE_TIMEOUT`.
    WriteTimeout,
    /// A started frame did not arrive within `--frame-read-timeout-ms`.
    FrameTimeout,
    /// No request memory within `MEMORY_WAIT` (or `POOL_WAITERS_MAX`
    /// connections wait already).
    NoMemory,
    /// The peer closed while a request ran: its replies are dropped.
    PeerGone,
    /// A request other than ApiVersions, SaslHandshake or
    /// SaslAuthenticate before a SASL authentication completed (or after
    /// it expired: KIP-368).
    Unauthenticated(ApiKey),
    /// SASL authentication failed (its answer was written first).
    AuthenticationFailed,
}

/// The counters a close is counted in: (bad requests or timeouts, reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseKind {
    Rejected(Rejected),
    TimedOut(TimedOut),
}

/// Requests refused by closing the connection, by reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    FrameSize,
    UnknownApi,
    UnsupportedVersion,
    Malformed,
    DecodedTooLarge,
}

impl Rejected {
    pub const ALL: [Rejected; 5] = [
        Rejected::FrameSize,
        Rejected::UnknownApi,
        Rejected::UnsupportedVersion,
        Rejected::Malformed,
        Rejected::DecodedTooLarge,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Rejected::FrameSize => "frame_size",
            Rejected::UnknownApi => "unknown_api",
            Rejected::UnsupportedVersion => "unsupported_version",
            Rejected::Malformed => "malformed",
            Rejected::DecodedTooLarge => "decoded_too_large",
        }
    }
}

/// Connections closed for a deadline, by reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimedOut {
    PartialFrame,
    ReplyWrite,
    MemoryWait,
}

impl TimedOut {
    pub const ALL: [TimedOut; 3] = [
        TimedOut::PartialFrame,
        TimedOut::ReplyWrite,
        TimedOut::MemoryWait,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TimedOut::PartialFrame => "partial_frame",
            TimedOut::ReplyWrite => "reply_write",
            TimedOut::MemoryWait => "memory_wait",
        }
    }
}

impl Close {
    /// The counter this close goes to; `None` for ordinary ends.
    pub fn kind(&self) -> Option<CloseKind> {
        use CloseKind::{Rejected as R, TimedOut as T};
        Some(match self {
            Close::BadSize(_) => R(Rejected::FrameSize),
            Close::UnknownApiKey(_) => R(Rejected::UnknownApi),
            Close::UnsupportedVersion(..) => R(Rejected::UnsupportedVersion),
            Close::Malformed(..) | Close::Decode(_) => R(Rejected::Malformed),
            Close::DecodedTooLarge(..) => R(Rejected::DecodedTooLarge),
            Close::FrameTimeout => T(TimedOut::PartialFrame),
            Close::WriteTimeout => T(TimedOut::ReplyWrite),
            Close::NoMemory => T(TimedOut::MemoryWait),
            Close::Truncated
            | Close::Encode(_)
            | Close::Io(_)
            | Close::SilentProduceFailed(_)
            | Close::PeerGone
            | Close::Unauthenticated(_)
            | Close::AuthenticationFailed => return None,
        })
    }
}

/// A shard's count of connections closed, by `CloseKind`. Shard-local.
#[derive(Debug, Default)]
pub struct Closes {
    rejected: [std::cell::Cell<u64>; Rejected::ALL.len()],
    timed_out: [std::cell::Cell<u64>; TimedOut::ALL.len()],
}

impl Closes {
    fn count(&self, kind: CloseKind) {
        let cell = match kind {
            CloseKind::Rejected(r) => &self.rejected[r as usize],
            CloseKind::TimedOut(t) => &self.timed_out[t as usize],
        };
        cell.set(cell.get() + 1);
    }

    pub fn rejected(&self, r: Rejected) -> u64 {
        self.rejected[r as usize].get()
    }

    pub fn timed_out(&self, t: TimedOut) -> u64 {
        self.timed_out[t as usize].get()
    }
}

/// Longest time writing one reply may take; a peer that does not read its
/// replies for this long is disconnected (its reply's memory is released).
pub const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connection refused by SASL stays open after its refusal is
/// written, unless the client closes it first (it is read no further:
/// another request ends it). A client then reads the refusal apart from
/// the end of the stream; kafka-python drops an answer read together with
/// the close, and reports "socket disconnected" instead.
pub const AUTH_REFUSAL_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What to do after one request.
enum Outcome {
    /// The encoded reply, and memory its bytes hold until written.
    Reply(Bytes, Option<ResponseMemory>),
    /// Write the reply, then close the connection (a failed SASL
    /// authentication: the client reads the error, then the close).
    ReplyThenClose(Bytes, Close),
    Silent,
}

/// The rest of a request, run by the write side in request order.
type Rest<'a> = Pin<Box<dyn Future<Output = Result<Outcome, Close>> + 'a>>;

/// A read request on its way to its reply.
struct InFlight<'a> {
    rest: Rest<'a>,
    /// Set for barriers: tells the read side that the request ran.
    ran: Option<oneshot::Sender<()>>,
    /// The frame's memory (and its decoded arrays'), released once the
    /// reply is written.
    held: (RequestBuffer, Option<RequestBuffer>),
}

/// How the read side goes on after starting a request.
enum Started<'a> {
    /// Read on at once (the request is queued where it runs).
    Pipelined(Rest<'a>),
    /// Read on once this ran, after every earlier reply was written.
    Barrier(Rest<'a>),
}

pub struct ConnLimits {
    pub request_max_bytes: u32,
    /// A started frame's prefix, then its body, must each arrive within it.
    pub frame_read_timeout: Duration,
    /// Turns true when the node stops: no further frame is read, the
    /// replies of requests read so far are written, then the connection
    /// closes (a graceful drain; see `server`).
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// Serves one connection until the peer closes it or sends bad input;
/// counts the close in `closes` when it was ours.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: String,
    ctx: &Ctx,
    limits: &ConnLimits,
    closes: &Closes,
    session: Session,
) {
    let (mut reader, mut writer) = stream.split();
    let (queue, replies) = local_channel::new_bounded(IN_FLIGHT_MAX);
    let read_side = pin!(read_side(&mut reader, queue, limits, ctx, &session));
    let write_side = pin!(write_side(&mut writer, &replies, ctx));
    let (read_side, write_side) = (timed(read_side, &session), timed(write_side, &session));
    // The write side ends on a write error or once the read side ended
    // (it drops the queue's sender) and every earlier reply was written.
    let (read_end, write_end) = match select(read_side, write_side).await {
        // Nobody reads the replies: the requests in flight are dropped
        // (a long poll does not hold the connection for its whole wait).
        Either::Left((Err(Close::PeerGone), _)) => (Err(Close::PeerGone), Ok(())),
        Either::Left((read_end, write_side)) => (read_end, write_side.await),
        Either::Right((write_end, _)) => (Ok(()), write_end),
    };
    if session.replica() {
        ctx.replica_connections
            .set(ctx.replica_connections.get() - 1);
    }
    if let Err(close) = write_end.and(read_end) {
        if let Some(kind) = close.kind() {
            closes.count(kind);
        }
        closed(&peer, close);
    }
}

/// Adds the time each poll of `fut` takes to `session.cpu`: the shard's
/// CPU time on a connection (reading, TLS, decoding, handling, encoding,
/// writing), for the `request_percentage` quota. Waiting is not polling,
/// so a long poll or a throttle costs nothing; nor does any of it while
/// no quota is set (`Session::metered`: no clock is read).
fn timed<'s, F: Future + Unpin + 's>(
    mut fut: F,
    session: &'s Session,
) -> impl Future<Output = F::Output> + Unpin + 's {
    futures::future::poll_fn(move |cx| {
        if !session.metered.get() {
            return Pin::new(&mut fut).poll(cx);
        }
        let start = Instant::now();
        let polled = Pin::new(&mut fut).poll(cx);
        session.cpu.set(session.cpu.get() + start.elapsed());
        polled
    })
}

/// Reads frames and starts their requests until the end of the stream.
async fn read_side<'a, R: AsyncRead + Unpin>(
    reader: &mut R,
    queue: LocalSender<InFlight<'a>>,
    limits: &ConnLimits,
    ctx: &'a Ctx,
    session: &'a Session,
) -> Result<(), Close> {
    let mut ahead = Ahead::default();
    let mut stop = limits.stop.clone();
    // Once the node stops, a client's connection reads no new request (a
    // frame begun is dropped unanswered, so the client retries it
    // elsewhere or later). Another node's replica fetcher is read on until
    // the shard closes: produces with acks=all read before the stop wait
    // for its next fetch.
    let stopped = |stop: &tokio::sync::watch::Receiver<bool>| *stop.borrow() && !session.replica();
    loop {
        // A client over its quota is not read until its throttle ends
        // (KIP-219; its replies carry `throttle_time_ms`).
        if let Some(until) = session.throttled_until.take() {
            let now = Instant::now();
            if until > now {
                let slept = pin!(ctx.shard.sleep_until(until));
                let stopping = pin!(stop.wait_for(|s| *s));
                select(slept, stopping).await;
                // Time the connection was not read does not count against
                // its authentication's lifetime: the client's
                // re-authentication waits in the socket meanwhile.
                session.extend_expiry(until.saturating_duration_since(now));
            }
        }
        if stopped(&stop) {
            return Ok(());
        }
        let next = {
            let read = pin!(read_frame(reader, limits, ctx, session, &mut ahead));
            let stopping = pin!(async {
                if session.replica() {
                    return futures::future::pending().await;
                }
                let _ = stop.wait_for(|s| *s).await;
            });
            match select(read, stopping).await {
                Either::Left((frame, _)) => frame?,
                Either::Right(_) => None,
            }
        };
        let Some((frame, held)) = next else {
            return Ok(());
        };
        let (started, decoded) = start_frame(frame, ctx, session).await?;
        let (rest, barrier) = match started {
            Started::Pipelined(rest) => (rest, None),
            Started::Barrier(rest) => (rest, Some(oneshot::channel())),
        };
        let (ran, barrier) = barrier.unzip();
        let item = InFlight {
            rest,
            ran,
            held: (held, decoded),
        };
        if queue.send(item).await.is_err() {
            return Ok(()); // The write side is gone.
        }
        if let Some(barrier) = barrier {
            if !barrier_ran(reader, barrier, &mut ahead).await? {
                return Ok(());
            }
        }
    }
}

/// Bytes of the next size prefix, read while a barrier ran.
#[derive(Default)]
struct Ahead {
    bytes: [u8; 4],
    len: usize,
}

/// Waits for a barrier request to run (false: the write side is gone)
/// while watching the socket: the peer closing (or resetting) ends the
/// connection at once (`PeerGone`: every reply still due is dropped, as
/// Kafka drops the responses of a closed channel; a peer that half-closes
/// while only Produces are in flight still gets their replies), and the
/// first bytes of a next frame are kept in `ahead`.
async fn barrier_ran<R: AsyncRead + Unpin>(
    reader: &mut R,
    mut barrier: oneshot::Receiver<()>,
    ahead: &mut Ahead,
) -> Result<bool, Close> {
    let mut bytes = [0u8; 4];
    match select(&mut barrier, reader.read(&mut bytes)).await {
        Either::Left((ran, _)) => Ok(ran.is_ok()),
        Either::Right((Ok(0), _)) => Err(Close::PeerGone),
        Either::Right((Ok(len), _)) => {
            *ahead = Ahead { bytes, len };
            Ok(barrier.await.is_ok())
        }
        // A reset peer is gone too.
        Either::Right((Err(_), _)) => Err(Close::PeerGone),
    }
}

/// Finishes requests in order and writes their replies.
async fn write_side<W: AsyncWrite + Unpin>(
    writer: &mut W,
    replies: &LocalReceiver<InFlight<'_>>,
    ctx: &Ctx,
) -> Result<(), Close> {
    while let Some(InFlight { rest, ran, held }) = replies.recv().await {
        let outcome = rest.await;
        if let Some(ran) = ran {
            let _ = ran.send(());
        }
        match outcome? {
            Outcome::Reply(reply, response_memory) => {
                write_bounded(writer, &reply, ctx).await?;
                drop(response_memory);
            }
            Outcome::ReplyThenClose(reply, close) => {
                write_bounded(writer, &reply, ctx).await?;
                if matches!(close, Close::AuthenticationFailed) {
                    // Until the client closes (the read side ends and
                    // drops the queue) or sends anything more, bounded.
                    let grace = Instant::now() + AUTH_REFUSAL_CLOSE_GRACE;
                    let grace = pin!(ctx.shard.sleep_until(grace));
                    let _ = select(grace, pin!(replies.recv())).await;
                }
                return Err(close);
            }
            Outcome::Silent => {}
        }
        drop(held);
    }
    Ok(())
}

/// Writes a reply within `REPLY_WRITE_TIMEOUT`.
async fn write_bounded<S: AsyncWrite + Unpin>(
    stream: &mut S,
    reply: &[u8],
    ctx: &Ctx,
) -> Result<(), Close> {
    let write = async { write_reply(stream, reply).await.map_err(Close::Io) };
    within(write, REPLY_WRITE_TIMEOUT, Close::WriteTimeout, ctx).await
}

/// Runs `io` for at most `limit`, else fails with `expired`. I/O that
/// completes at once (the common case) touches no deadline; I/O that
/// blocks registers its deadline in the shard's deadline structure (no
/// timer per connection).
async fn within<F: Future<Output = Result<(), Close>>>(
    io: F,
    limit: Duration,
    expired: Close,
    ctx: &Ctx,
) -> Result<(), Close> {
    let mut io = pin!(io);
    if let std::task::Poll::Ready(r) = futures::poll!(io.as_mut()) {
        return r;
    }
    let sleep = pin!(ctx.shard.sleep_until(Instant::now() + limit));
    match select(io, sleep).await {
        Either::Left((r, _)) => r,
        Either::Right(_) => Err(expired),
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
        Close::PeerGone => tracing::debug!(peer, "connection closed with a request in flight"),
        // Counted and logged (rate-limited) where authentication failed.
        Close::AuthenticationFailed => {
            tracing::debug!(peer, "connection closed: authentication failed")
        }
        Close::SilentProduceFailed(code) => {
            tracing::debug!(
                peer,
                code,
                "connection closed: a produce with acks=0 failed"
            )
        }
        other => warn_limited(peer, &other),
    }
}

thread_local! {
    /// Closing warnings of this shard: at most one per 10 s.
    static CLOSE_WARNINGS: WarnLimiter = const { WarnLimiter::new(Duration::from_secs(10)) };
}

/// At most one warning per 10 s per shard; the rest are counted and
/// reported with the next one.
fn warn_limited(peer: &str, close: &Close) {
    let Some(suppressed) = CLOSE_WARNINGS.with(|w| w.due()) else {
        return;
    };
    let what = match close {
        Close::WriteTimeout | Close::NoMemory | Close::FrameTimeout => "closing connection",
        _ => "closing connection: bad request",
    };
    tracing::warn!(peer, reason = ?close, suppressed, "{what}");
}

/// Reads one size-prefixed frame. `Ok(None)`: clean end of stream.
///
/// The frame's size is reserved from the shard's request-buffer pool
/// before its body is read; while the pool is full the connection waits
/// and its socket is not read (backpressure, not an error). The rest of
/// the prefix, once its first byte came, and the body, once reserved,
/// must each arrive within `frame_read_timeout`.
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    limits: &ConnLimits,
    ctx: &Ctx,
    session: &Session,
    ahead: &mut Ahead,
) -> Result<Option<(Bytes, RequestBuffer)>, Close> {
    let mut size = ahead.bytes;
    let mut got = std::mem::take(&mut ahead.len);
    if got == 0 {
        got = match stream.read(&mut size).await {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) => return Err(Close::Io(e)),
        };
    }
    read_exact_within(stream, &mut size[got..], limits, ctx).await?;
    let size = i32::from_be_bytes(size);
    if size < FRAME_BYTES_MIN as i32
        || size as u32 > limits.request_max_bytes
        // The frame must fit the pool, or it could never be read.
        || size as u64 > ctx.shard.request_bytes_max()
    {
        return Err(Close::BadSize(size));
    }
    // Before SASL authentication a client sends small frames of three
    // APIs only (Kafka's `sasl.server.max.receive.size`): nothing is
    // reserved for anything else.
    if !session.authenticated() && size as usize > UNAUTHENTICATED_FRAME_BYTES_MAX {
        return Err(Close::BadSize(size));
    }
    // The API key decides whether the frame may wait for the pool.
    let mut key = [0u8; 2];
    read_exact_within(stream, &mut key, limits, ctx).await?;
    if let Ok(api) = ApiKey::try_from(i16::from_be_bytes(key)) {
        if !authentication_allows(api, session) {
            return Err(Close::Unauthenticated(api));
        }
    }
    let held = if never_waits(i16::from_be_bytes(key), size as u64) {
        ctx.shard.reserve_request_forced(size as u64)
    } else {
        match ctx.shard.reserve_request(size as u64).await {
            Some(held) => held,
            None => return Err(Close::NoMemory),
        }
    };
    // The announced size is reserved, so the frame is allocated once at
    // that size (growing a buffer as bytes arrive would hold up to twice
    // the reservation). A peer announcing more than it sends holds at most
    // its reservation, within the pool, for `frame_read_timeout`.
    let mut frame = vec![0u8; size as usize];
    frame[..2].copy_from_slice(&key);
    read_exact_within(stream, &mut frame[2..], limits, ctx).await?;
    Ok(Some((Bytes::from(frame), held)))
}

/// Largest frame read from a client that has not authenticated on a SASL
/// listener (Kafka's `sasl.server.max.receive.size` default).
const UNAUTHENTICATED_FRAME_BYTES_MAX: usize = 512 * 1024;

/// Largest Fetch or OffsetForLeaderEpoch frame charged without waiting
/// (a follower's fetch of 20,000 partitions is ~800 KB).
const UNQUEUED_FRAME_BYTES_MAX: u64 = 1 << 20;

/// Whether a frame is charged to the request-buffer pool at once, past its
/// limit if need be, instead of waiting for room. Fetch and
/// OffsetForLeaderEpoch are how followers replicate: with acks=all, the
/// pool may be full of Produce frames held until their replies, which wait
/// for exactly these requests, so waiting would stall the partition until
/// the memory wait ran out. They are barriers (one per connection at a
/// time) and small (bounded by `UNQUEUED_FRAME_BYTES_MAX`).
fn never_waits(api_key: i16, size: u64) -> bool {
    let replication =
        api_key == ApiKey::Fetch as i16 || api_key == ApiKey::OffsetForLeaderEpoch as i16;
    replication && size <= UNQUEUED_FRAME_BYTES_MAX
}

/// Fills `buf` within `frame_read_timeout`.
async fn read_exact_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    limits: &ConnLimits,
    ctx: &Ctx,
) -> Result<(), Close> {
    if buf.is_empty() {
        return Ok(());
    }
    let read = read_exact(stream, buf);
    within(read, limits.frame_read_timeout, Close::FrameTimeout, ctx).await
}

async fn read_exact<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut [u8]) -> Result<(), Close> {
    stream.read_exact(buf).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Close::Truncated,
        _ => Close::Io(e),
    })
}

/// Checks a frame (`frame_check`) and starts its request: a Produce is
/// started at once (see `produce::start`), anything else is left to run
/// as a barrier. Also returns the reservation for the decoded request.
async fn start_frame<'a>(
    mut frame: Bytes,
    ctx: &'a Ctx,
    session: &'a Session,
) -> Result<(Started<'a>, Option<RequestBuffer>), Close> {
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
            let reply = encode(correlation_id, key, 0, &body).map(|b| Outcome::Reply(b, None));
            return Ok((Started::Barrier(Box::pin(async move { reply })), None));
        }
        return Err(Close::UnsupportedVersion(key, version));
    }
    if !authentication_allows(key, session) {
        return Err(Close::Unauthenticated(key));
    }
    let checked =
        frame_check::check(key, version, &frame).map_err(|r| Close::Malformed(key, version, r))?;
    let decoded = reserve_decoded(key, frame.len() as u64, checked.decoded_bytes, ctx).await?;
    let header = RequestHeader::decode(&mut frame, key.request_header_version(version))
        .map_err(|e| Close::Decode(format!("header: {e:#}")))?;
    let correlation_id = header.correlation_id;
    tracing::trace!(api = ?key, version, correlation_id, "request");
    let client_id = header.client_id.as_ref().map_or("", |c| c.as_str());
    session.set_client_id(client_id);
    // Another node's replica fetcher sends Fetch and OffsetForLeaderEpoch
    // (v3 and later) with its replica_id >= 0, the body's first field: its
    // connection is never throttled, as in Kafka (replication is not a
    // client's traffic), and stays open while the node drains.
    let replica_id_first =
        key == ApiKey::Fetch || (key == ApiKey::OffsetForLeaderEpoch && version >= 3);
    let follower = replica_id_first
        && frame.len() >= 4
        && i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) >= 0;
    if follower && session.mark_replica() {
        ctx.replica_connections
            .set(ctx.replica_connections.get() + 1);
    }
    let quotas = Quotas::new(session, ctx, key);
    if key == ApiKey::Produce {
        let throttle = quotas.charge(session, ctx, QuotaKind::Produce, frame.len());
        let req = ProduceRequest::decode(&mut frame, version)
            .map_err(|e| Close::Decode(format!("{key:?} v{version}: {e:#}")))?;
        let started = produce::start(req, version, ctx, session).await;
        let pipelined = Started::Pipelined(Box::pin(async move {
            match started.finish().await {
                produce::Finished::Reply(mut body) => {
                    body.throttle_time_ms = body.throttle_time_ms.max(throttle);
                    let body = ResponseKind::Produce(body);
                    encode(correlation_id, key, version, &body).map(|b| Outcome::Reply(b, None))
                }
                produce::Finished::Silent => Ok(Outcome::Silent),
                produce::Finished::SilentFailed(code) => Err(Close::SilentProduceFailed(code)),
            }
        }));
        return Ok((pipelined, decoded));
    }
    let barrier = Started::Barrier(Box::pin(async move {
        match handlers::dispatch(key, version, &mut frame, ctx, session).await {
            Ok(Some(mut r)) => {
                let mut throttle = quotas.throttle;
                if let ResponseKind::Fetch(body) = &r.body {
                    let bytes = fetched_bytes(body);
                    throttle = throttle.max(quotas.charge(session, ctx, QuotaKind::Fetch, bytes));
                }
                if throttle > 0 {
                    add_throttle(&mut r.body, throttle);
                }
                let bytes = encode(correlation_id, key, version, &r.body)?;
                if r.close {
                    return Ok(Outcome::ReplyThenClose(bytes, Close::AuthenticationFailed));
                }
                Ok(Outcome::Reply(bytes, r.held))
            }
            Ok(None) => Ok(Outcome::Silent),
            Err(e) => Err(Close::Decode(format!("{key:?} v{version}: {}", e.0))),
        }
    }));
    Ok((barrier, decoded))
}

/// A request's quota charges: `metered` only while a quota is set
/// (anywhere) and for a client's request (not another node's replica
/// connection, a transaction marker or SASL); and the throttle its request
/// time gave. The client is the session's (principal, latest client id).
struct Quotas {
    metered: bool,
    /// In ms; the response carries the largest throttle of its charges.
    throttle: i32,
}

impl Quotas {
    /// Charges the connection's shard time since its previous request to
    /// the `request_percentage` quota (Kafka records a request's time when
    /// its response is sent; here the next request carries it, which the
    /// rate over `SAMPLES` windows does not tell apart).
    fn new(session: &Session, ctx: &Ctx, key: ApiKey) -> Quotas {
        let none = Quotas {
            metered: false,
            throttle: 0,
        };
        if session.replica() {
            session.metered.set(false);
            session.cpu.take();
            return none;
        }
        // Not charged, and the time so far is left to the next request (an
        // exempt request cannot wipe the time of an expensive one).
        if matches!(
            key,
            ApiKey::SaslHandshake | ApiKey::SaslAuthenticate | ApiKey::WriteTxnMarkers
        ) {
            return none;
        }
        let spent = session.cpu.take();
        let metered = !ctx.meta.peek(|view| view.quotas.is_empty());
        session.metered.set(metered);
        if !metered {
            return none;
        }
        let (principal, client_id) = (session.principal(), session.client_id());
        let t = ctx.meta.peek(|view| {
            let sensors = &ctx.quota_sensors;
            sensors.record_time(&view.quotas, &principal, &client_id, spent)
        });
        Quotas {
            metered,
            throttle: session.throttle(t),
        }
    }

    /// Records `bytes` against the client's quota of `kind` and returns
    /// the response's throttle in ms: the largest of this and the request
    /// time's (0 without a quota).
    fn charge(&self, session: &Session, ctx: &Ctx, kind: QuotaKind, bytes: usize) -> i32 {
        if !self.metered {
            return 0;
        }
        let (principal, client_id) = (session.principal(), session.client_id());
        let t = ctx.meta.peek(|view| {
            let sensors = &ctx.quota_sensors;
            sensors.record(&view.quotas, &principal, &client_id, kind, bytes as f64)
        });
        session.throttle(t).max(self.throttle)
    }
}

/// Raises a response's `throttle_time_ms` to `ms` (every response has
/// one but SASL's and WriteTxnMarkers', whose requests are not throttled).
fn add_throttle(body: &mut ResponseKind, ms: i32) {
    macro_rules! raise {
        ($($api:ident),* $(,)?) => {
            match body {
                $(ResponseKind::$api(b) => b.throttle_time_ms = b.throttle_time_ms.max(ms),)*
                _ => {}
            }
        };
    }
    raise!(
        Produce,
        Fetch,
        ListOffsets,
        Metadata,
        ApiVersions,
        CreateTopics,
        DeleteTopics,
        FindCoordinator,
        JoinGroup,
        SyncGroup,
        Heartbeat,
        LeaveGroup,
        OffsetCommit,
        OffsetFetch,
        ListGroups,
        DescribeGroups,
        DeleteGroups,
        OffsetDelete,
        InitProducerId,
        CreatePartitions,
        DescribeConfigs,
        AlterConfigs,
        IncrementalAlterConfigs,
        DescribeCluster,
        DeleteRecords,
        OffsetForLeaderEpoch,
        AlterReplicaLogDirs,
        DescribeLogDirs,
        ElectLeaders,
        AlterPartitionReassignments,
        ListPartitionReassignments,
        AddPartitionsToTxn,
        AddOffsetsToTxn,
        EndTxn,
        TxnOffsetCommit,
        DescribeTransactions,
        ListTransactions,
        DescribeAcls,
        CreateAcls,
        DeleteAcls,
        DescribeClientQuotas,
        AlterClientQuotas,
        DescribeUserScramCredentials,
        AlterUserScramCredentials,
    );
}

/// Record bytes of a fetch answer (what `consumer_byte_rate` counts).
fn fetched_bytes(body: &kafka_protocol::messages::FetchResponse) -> usize {
    body.responses
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| p.records.as_ref().map_or(0, |r| r.len()))
        .sum()
}

/// Whether `session` may send a request of `key`: on a SASL listener,
/// only ApiVersions, SaslHandshake and SaslAuthenticate until the client
/// authenticated, and again once the authentication expired (KIP-368: the
/// client re-authenticates before it; Kafka closes a connection that did
/// not). Elsewhere everything (authorization is the handlers').
fn authentication_allows(key: ApiKey, session: &Session) -> bool {
    if matches!(
        key,
        ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
    ) {
        return true;
    }
    session.authenticated() && !session.expired(Instant::now())
}

/// Reserves what decoding a checked frame takes (its arrays) from the
/// request-buffer pool, beside the frame's own `frame_bytes`; small
/// requests are not charged. Up to `DECODED_PER_FRAME_BYTE_FORCED_MAX`
/// times the frame it is charged at once: waiting in the pool's queue
/// while holding the frame could wait for bytes only this request holds,
/// and hold up every connection behind it. Frame and arrays together must
/// fit the pool.
async fn reserve_decoded(
    key: ApiKey,
    frame_bytes: u64,
    decoded_bytes: u64,
    ctx: &Ctx,
) -> Result<Option<RequestBuffer>, Close> {
    if decoded_bytes < DECODED_CHARGE_BYTES_MIN {
        return Ok(None);
    }
    if frame_bytes + decoded_bytes > ctx.shard.request_bytes_max() {
        return Err(Close::DecodedTooLarge(key, decoded_bytes));
    }
    if decoded_bytes <= frame_bytes * DECODED_PER_FRAME_BYTE_FORCED_MAX {
        return Ok(Some(ctx.shard.reserve_request_forced(decoded_bytes)));
    }
    match ctx.shard.reserve_request(decoded_bytes).await {
        Some(held) => Ok(Some(held)),
        None => Err(Close::NoMemory),
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
    let session = Session::anonymous();
    let rest = match start_frame(frame, ctx, &session).await {
        Ok((Started::Pipelined(rest) | Started::Barrier(rest), _)) => rest,
        Err(close) => panic!("connection closed: {close:?}"),
    };
    match rest.await {
        Ok(Outcome::Reply(bytes, _) | Outcome::ReplyThenClose(bytes, _)) => Some(bytes),
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

    #[test]
    fn a_throttle_raises_the_response_field_and_never_lowers_it() {
        let mut body = ResponseKind::Metadata(Default::default());
        add_throttle(&mut body, 250);
        let ResponseKind::Metadata(m) = &mut body else {
            unreachable!()
        };
        assert_eq!(m.throttle_time_ms, 250);
        m.throttle_time_ms = 900;
        add_throttle(&mut body, 250);
        let ResponseKind::Metadata(m) = &body else {
            unreachable!()
        };
        assert_eq!(m.throttle_time_ms, 900);
    }
}
