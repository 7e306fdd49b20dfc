//! The replica fetcher of one shard: a follower's side of replication.
//!
//! One task per shard (spawned on the shard's executor, beside its
//! connections) fetches the partitions this shard follows
//! (`plane::followed`) from their leaders, Kafka's way: ordinary Fetch v12
//! requests to the leader node's advertised Kafka listener, with
//! `replica_id` = this node. Per leader node at most one TCP connection
//! (one session future), carrying every partition this shard follows from
//! it: connections are bounded by shards x (nodes - 1), never per
//! partition. A node never fetches from itself.
//!
//! A session loop, per leader:
//! 1. the partitions followed from that leader, re-read each round (their
//!    log end, epochs and truncation flag live in the data plane);
//! 2. those that need truncation first ask the leader OffsetForLeaderEpoch
//!    v4 with their last fetched epoch, truncate to min(own log end, the
//!    returned end offset) (an UNDEFINED epoch keeps the log end) and are
//!    marked truncated;
//! 3. one Fetch for the rest (fetch offset = log end, current and last
//!    fetched epoch), which long-polls at the leader up to
//!    `--replica-fetch-wait-max-ms`: an idle follower sends one request
//!    per wait, per leader;
//! 4. fetched batches are appended with their offsets
//!    (`plane::append_replica`, with the leader's high watermark).
//!
//! A partition answered NOT_LEADER_OR_FOLLOWER, FENCED_LEADER_EPOCH,
//! UNKNOWN_LEADER_EPOCH or UNKNOWN_TOPIC_OR_PARTITION is left out until the
//! followed set changes (`plane::followed_changed`: new leader or epoch)
//! or `PARKED_RETRY` passed (the leader may be behind on metadata);
//! OFFSET_OUT_OF_RANGE sends it through truncation again, or, when its log
//! ends below the leader's log start, continues its log there
//! (`plane::restart_replica_at`). A connection
//! error drops the connection and reconnects after a capped backoff; a
//! leader that cannot be reached is logged at most once per
//! `WARN_INTERVAL` per shard with the count of failures since (never per
//! partition). When the followed set changes the plan is redone: a leader
//! no longer followed loses its session and its connection (at the end of
//! its current long poll at the latest).
//!
//! Requests go through `kafka_client::Conn`. Memory: a response frame is
//! read into one buffer charged to the shard's `request_buffers` pool
//! (at once, past its limit if need be: see `kafka_client`) until its
//! batches are appended. Its size prefix is checked against
//! `Tuning::response_bytes_max` before anything is read.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{select, Either};
use futures::stream::{FuturesUnordered, StreamExt};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse,
};
use kafka_protocol::ResponseError;
use sluice_raft::{TopicMeta, NO_LEADER};
use tokio::sync::watch;

use crate::config::Settings;
use crate::handlers::{topic_name, Ctx};
use crate::kafka_client::{Conn, Failure, Profile};
use crate::plane::{self, Followed, WarnLimiter};

/// Fetch version of the replica fetcher (topics by name, last fetched
/// epoch, flexible).
const FETCH_VERSION: i16 = 12;
/// OffsetForLeaderEpoch version of the truncation step.
const EPOCH_VERSION: i16 = 4;
/// Client id the fetcher sends (shows in the leader's logs).
const CLIENT_ID: &str = "sluice-replica-fetcher";
/// Bytes one partition may take of a fetch response (Kafka's
/// replica.fetch.max.bytes); a larger first batch still comes whole.
const PARTITION_FETCH_BYTES_MAX: u32 = 1 << 20;
/// Room in a response beyond the requested bytes: one batch over the
/// per-partition bound and the per-partition headers.
const RESPONSE_SLACK_BYTES: u32 = 8 << 20;
/// Time the leader gets beyond the long poll to answer, and to take a
/// request.
const IO_SLACK: Duration = Duration::from_secs(15);
/// Longest connect attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Backoff between failed attempts to reach a leader: doubles from MIN
/// up to MAX; reset by an answered fetch. MAX stays short: a leader that
/// restarts before its lease runs out keeps its partitions, and its
/// followers (and so acks=all) wait for their next attempt; at most one
/// connection attempt per second per leader is cheap.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A partition refused by the leader (it may not have applied the same
/// metadata yet) is asked again after this, if nothing changed before.
const PARKED_RETRY: Duration = Duration::from_secs(1);
/// Shortest time between two "cannot reach leader" warnings of a shard.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The fetcher's settings.
#[derive(Clone, Debug)]
pub struct Tuning {
    pub node_id: u64,
    pub fetch_wait_max_ms: i32,
    pub fetch_max_bytes: i32,
    /// Largest response frame accepted.
    pub response_bytes_max: u32,
}

impl From<&Settings> for Tuning {
    fn from(s: &Settings) -> Tuning {
        let fetch_max_bytes = i32::try_from(s.replica_fetch_max_bytes).unwrap_or(i32::MAX);
        Tuning {
            node_id: u64::try_from(s.node_id).unwrap_or(0),
            fetch_wait_max_ms: i32::try_from(s.replica_fetch_wait_max_ms).unwrap_or(i32::MAX),
            fetch_max_bytes,
            response_bytes_max: s
                .replica_fetch_max_bytes
                .saturating_add(RESPONSE_SLACK_BYTES)
                .saturating_add(u32::try_from(s.wal_commit_bytes_max).unwrap_or(u32::MAX)),
        }
    }
}

/// A shard's replica fetcher (see the module docs).
pub struct ReplicaFetcher {
    ctx: Rc<Ctx>,
    tuning: Tuning,
    /// Leaders with a running session.
    running: RefCell<HashSet<u64>>,
    /// The followed-set version the plan was made at.
    version: Cell<u64>,
    unreachable: WarnLimiter,
    /// "The leader refuses this node as a replica" warnings.
    refused: WarnLimiter,
}

/// A partition by (topic name, index).
type Key = (Arc<str>, i32);

fn key_of(topic: &TopicMeta, partition: i32) -> Key {
    (Arc::from(topic.name.as_str()), partition)
}

/// One leader's connection and what the session remembers of its
/// partitions (only while they are followed from it).
struct Session {
    leader: u64,
    conn: Option<Conn>,
    backoff: Duration,
    /// Partitions left out until the followed set changes past
    /// `parked_at` or `PARKED_RETRY` passed since `parked_since`.
    parked: HashSet<Key>,
    parked_at: u64,
    parked_since: Instant,
    /// Partitions to truncate again (OFFSET_OUT_OF_RANGE).
    retruncate: HashSet<Key>,
    /// The leader high watermark last handed to each partition.
    high_watermarks: HashMap<Key, i64>,
    /// The leader log start last handed to each partition.
    log_starts: HashMap<Key, i64>,
}

impl ReplicaFetcher {
    pub fn new(ctx: Rc<Ctx>, tuning: Tuning) -> ReplicaFetcher {
        ReplicaFetcher {
            ctx,
            tuning,
            running: RefCell::new(HashSet::new()),
            version: Cell::new(0),
            unreachable: WarnLimiter::new(WARN_INTERVAL),
            refused: WarnLimiter::new(WARN_INTERVAL),
        }
    }

    /// Runs until `stop` flips; dropping the sessions closes their
    /// connections.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let stopped = std::pin::pin!(stop.wait_for(|s| *s));
        let work = std::pin::pin!(self.plan_loop());
        let _ = select(work, stopped).await;
        tracing::debug!(shard = self.ctx.shard.id(), "replica fetcher stopped");
    }

    /// Starts a session for each leader followed and not yet served, and
    /// again whenever the followed set changes.
    async fn plan_loop(&self) {
        let mut sessions = FuturesUnordered::new();
        loop {
            let (version, leaders) = self.leaders();
            if version > self.version.get() {
                self.version.set(version);
            }
            for leader in leaders {
                if self.running.borrow_mut().insert(leader) {
                    sessions.push(self.session(leader));
                }
            }
            let changed =
                std::pin::pin!(plane::followed_changed(&self.ctx.shard, self.version.get()));
            let ended = async {
                match sessions.next().await {
                    Some(leader) => leader,
                    None => std::future::pending().await,
                }
            };
            match select(changed, std::pin::pin!(ended)).await {
                // Resolving without a newer version means the shard is
                // closing: stop (the sessions are dropped with the loop).
                Either::Left((version, _)) if version <= self.version.get() => return,
                Either::Left((version, _)) => self.version.set(version),
                Either::Right((leader, _)) => {
                    self.running.borrow_mut().remove(&leader);
                }
            }
        }
    }

    /// The leader nodes of the partitions this shard follows (never this
    /// node, never "no leader").
    fn leaders(&self) -> (u64, Vec<u64>) {
        let (version, followed) = plane::followed(&self.ctx.shard);
        let mut out: Vec<u64> = followed
            .iter()
            .map(|f| f.leader)
            .filter(|&l| l != NO_LEADER && l != self.tuning.node_id)
            .collect();
        out.sort_unstable();
        out.dedup();
        (version, out)
    }

    /// The partitions followed from `leader`, now.
    fn followed_from(&self, leader: u64) -> Vec<Followed> {
        plane::followed(&self.ctx.shard)
            .1
            .into_iter()
            .filter(|f| f.leader == leader)
            .collect()
    }

    /// Fetches from one leader until nothing is followed from it; returns
    /// the leader.
    async fn session(&self, leader: u64) -> u64 {
        let mut s = Session {
            leader,
            conn: None,
            backoff: BACKOFF_MIN,
            parked: HashSet::new(),
            parked_at: self.version.get(),
            parked_since: Instant::now(),
            retruncate: HashSet::new(),
            high_watermarks: HashMap::new(),
            log_starts: HashMap::new(),
        };
        loop {
            if s.parked_at != self.version.get() || s.parked_since.elapsed() >= PARKED_RETRY {
                s.parked.clear();
                s.parked_at = self.version.get();
                s.parked_since = Instant::now();
            }
            let mut parts = self.followed_from(leader);
            if parts.is_empty() {
                tracing::debug!(leader, "replica fetcher: nothing followed from the leader");
                return leader;
            }
            let keys: HashSet<Key> = parts
                .iter()
                .map(|f| key_of(&f.topic, f.partition))
                .collect();
            s.high_watermarks.retain(|k, _| keys.contains(k));
            s.log_starts.retain(|k, _| keys.contains(k));
            s.retruncate.retain(|k| keys.contains(k));
            parts.retain(|f| !s.parked.contains(&key_of(&f.topic, f.partition)));
            if parts.is_empty() {
                // Everything waits for a new leader or epoch, or a retry.
                let retry = s.parked_since + PARKED_RETRY;
                let sleep = std::pin::pin!(self.ctx.shard.sleep_until(retry));
                if let Either::Left((false, _)) =
                    select(std::pin::pin!(self.wait_change()), sleep).await
                {
                    return leader; // The shard is closing.
                }
                continue;
            }
            match self.round(&mut s, parts).await {
                Ok(()) => s.backoff = BACKOFF_MIN,
                Err(failure) => {
                    s.conn = None;
                    self.warn_unreachable(leader, &failure);
                    glommio::timer::sleep(s.backoff).await;
                    s.backoff = (s.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Waits for the followed set to change; false when it resolved
    /// without a change (the shard is closing).
    async fn wait_change(&self) -> bool {
        let version = plane::followed_changed(&self.ctx.shard, self.version.get()).await;
        if version > self.version.get() {
            self.version.set(version);
            return true;
        }
        false
    }

    fn warn_unreachable(&self, leader: u64, failure: &Failure) {
        let Some(earlier) = self.unreachable.due() else {
            tracing::debug!(leader, error = %failure, "replica fetch failed");
            return;
        };
        tracing::warn!(
            shard = self.ctx.shard.id(),
            leader,
            failures = earlier + 1,
            error = %failure,
            "replica fetcher cannot reach a partition leader; retrying"
        );
    }

    /// One round with the leader: truncation where needed, then one fetch.
    async fn round(&self, s: &mut Session, parts: Vec<Followed>) -> Result<(), Failure> {
        if s.conn.is_none() {
            s.conn = Some(self.connect(s.leader).await?);
        }
        let (truncate, fetch): (Vec<Followed>, Vec<Followed>) = parts.into_iter().partition(|f| {
            f.needs_truncation || s.retruncate.contains(&key_of(&f.topic, f.partition))
        });
        if !truncate.is_empty() {
            self.truncate(s, truncate).await?;
            // Fetch them in the next round, from their new log end.
            if fetch.is_empty() {
                return Ok(());
            }
        }
        self.fetch(s, fetch).await
    }

    async fn connect(&self, leader: u64) -> Result<Conn, Failure> {
        let profile = Profile {
            client_id: CLIENT_ID,
            connect_timeout: CONNECT_TIMEOUT,
            response_bytes_max: self.tuning.response_bytes_max,
        };
        Conn::open(&self.ctx, leader, profile).await
    }

    /// OffsetForLeaderEpoch for `parts`, then truncation of each answered
    /// one (see the module docs).
    async fn truncate(&self, s: &mut Session, parts: Vec<Followed>) -> Result<(), Failure> {
        let shard = &self.ctx.shard;
        let mut asked: Vec<Followed> = Vec::with_capacity(parts.len());
        for f in parts {
            if f.last_fetched_epoch < 0 {
                // Nothing fetched under any epoch: nothing to cut.
                self.truncated(s, &f);
            } else {
                asked.push(f);
            }
        }
        if asked.is_empty() {
            return Ok(());
        }
        let req = epoch_request(&asked, self.tuning.node_id);
        let conn = s.conn.as_mut().ok_or(Failure::TimedOut)?;
        let (resp, _held): (OffsetForLeaderEpochResponse, _) = conn
            .call(
                &self.ctx.shard,
                ApiKey::OffsetForLeaderEpoch,
                EPOCH_VERSION,
                &req,
                IO_SLACK,
            )
            .await?;
        let by_key: HashMap<Key, &Followed> = asked
            .iter()
            .map(|f| (key_of(&f.topic, f.partition), f))
            .collect();
        for t in &resp.topics {
            for p in &t.partitions {
                let key: Key = (Arc::from(t.topic.0.as_str()), p.partition);
                let Some(f) = by_key.get(&key) else { continue };
                if p.error_code != 0 {
                    self.partition_error(s, key, p.error_code);
                    continue;
                }
                let target = if p.leader_epoch < 0 {
                    f.log_end
                } else {
                    f.log_end.min(p.end_offset)
                };
                if target < f.log_end {
                    match plane::truncate_replica(shard, &f.topic, f.partition, target).await {
                        Ok(end) => tracing::info!(
                            topic = %key.0,
                            partition = key.1,
                            from = f.log_end,
                            to = end,
                            "replica truncated by leader epoch"
                        ),
                        Err(e) => {
                            tracing::debug!(topic = %key.0, partition = key.1, error = %e, "replica truncation failed");
                            s.parked.insert(key);
                            continue;
                        }
                    }
                }
                self.truncated(s, f);
            }
        }
        Ok(())
    }

    /// Lets a truncated partition fetch (it is truncated again when its
    /// epoch moved meanwhile).
    fn truncated(&self, s: &mut Session, f: &Followed) {
        let key = key_of(&f.topic, f.partition);
        match plane::mark_truncated(&self.ctx.shard, &f.topic, f.partition, f.leader_epoch) {
            Ok(_) => {
                s.retruncate.remove(&key);
            }
            Err(e) => {
                tracing::debug!(topic = %key.0, partition = key.1, error = %e, "replica no longer followed");
                s.parked.insert(key);
            }
        }
    }

    /// One Fetch of `parts` and the appends of what came back.
    async fn fetch(&self, s: &mut Session, parts: Vec<Followed>) -> Result<(), Failure> {
        let shard = &self.ctx.shard;
        let req = fetch_request(&parts, &self.tuning);
        let wait = Duration::from_millis(u64::try_from(self.tuning.fetch_wait_max_ms).unwrap_or(0));
        let conn = s.conn.as_mut().ok_or(Failure::TimedOut)?;
        let (resp, held): (FetchResponse, _) = conn
            .call(shard, ApiKey::Fetch, FETCH_VERSION, &req, wait + IO_SLACK)
            .await?;
        if resp.error_code != 0 {
            return Err(Failure::Protocol(format!(
                "fetch answered with error {}",
                resp.error_code
            )));
        }
        let by_key: HashMap<Key, &Followed> = parts
            .iter()
            .map(|f| (key_of(&f.topic, f.partition), f))
            .collect();
        for t in resp.responses {
            for p in t.partitions {
                let key: Key = (Arc::from(t.topic.0.as_str()), p.partition_index);
                let Some(f) = by_key.get(&key) else { continue };
                let below_log_start = p.error_code == ResponseError::OffsetOutOfRange.code()
                    && p.log_start_offset > f.log_end;
                if below_log_start {
                    self.restart_at(s, f, p.log_start_offset).await;
                    continue;
                }
                if p.error_code != 0 {
                    self.partition_error(s, key, p.error_code);
                    continue;
                }
                let records = p.records.unwrap_or_default();
                let told = s.high_watermarks.get(&key).copied();
                if records.is_empty() && told == Some(p.high_watermark) {
                    continue;
                }
                match plane::append_replica(shard, &f.topic, f.partition, records, p.high_watermark)
                    .await
                {
                    Ok(_) => {
                        s.high_watermarks.insert(key.clone(), p.high_watermark);
                        self.follow_log_start(s, f, key, p.log_start_offset).await;
                    }
                    Err(e) => {
                        tracing::debug!(topic = %key.0, partition = key.1, error = %e, "replica append failed");
                        s.parked.insert(key);
                    }
                }
            }
        }
        drop(held);
        if resp.throttle_time_ms > 0 {
            let ms = u64::try_from(resp.throttle_time_ms).unwrap_or(0).min(1_000);
            glommio::timer::sleep(Duration::from_millis(ms)).await;
        }
        Ok(())
    }

    /// Moves the follower's log start up to the leader's (retention,
    /// DeleteRecords and the group carry-forward ran there), so the
    /// follower's WAL segments below it can be reclaimed too.
    async fn follow_log_start(
        &self,
        s: &mut Session,
        f: &Followed,
        key: Key,
        leader_log_start: i64,
    ) {
        let told = s.log_starts.get(&key).copied().unwrap_or(0);
        if leader_log_start <= told {
            return;
        }
        let shard = &self.ctx.shard;
        match plane::advance_replica_log_start(shard, &f.topic, f.partition, leader_log_start).await
        {
            Ok(now) => {
                s.log_starts.insert(key, now);
            }
            Err(e) => {
                tracing::debug!(topic = %key.0, partition = key.1, error = %e, "replica log start not moved");
            }
        }
    }

    /// A follower whose log ends below the leader's log start continues
    /// its log at the leader's log start.
    async fn restart_at(&self, s: &mut Session, f: &Followed, log_start: i64) {
        let key = key_of(&f.topic, f.partition);
        match plane::restart_replica_at(&self.ctx.shard, &f.topic, f.partition, log_start).await {
            Ok(_) => tracing::info!(
                topic = %key.0,
                partition = key.1,
                from = f.log_end,
                to = log_start,
                "replica restarted at the leader's log start"
            ),
            Err(e) => {
                tracing::debug!(topic = %key.0, partition = key.1, error = %e, "replica restart failed");
                s.parked.insert(key);
            }
        }
    }

    /// What an error code of one partition does to it.
    fn partition_error(&self, s: &mut Session, key: Key, code: i16) {
        let fenced = [
            ResponseError::NotLeaderOrFollower.code(),
            ResponseError::FencedLeaderEpoch.code(),
            ResponseError::UnknownLeaderEpoch.code(),
            ResponseError::UnknownTopicOrPartition.code(),
        ];
        if code == ResponseError::OffsetOutOfRange.code() {
            if !s.retruncate.insert(key.clone()) {
                // Out of range again right after a truncation: wait for
                // a change instead of asking in a loop.
                s.parked.insert(key);
            }
        } else if fenced.contains(&code) {
            tracing::debug!(topic = %key.0, partition = key.1, code, "replica fetch refused; waiting for new metadata");
            s.parked.insert(key);
        } else {
            if code == ResponseError::TopicAuthorizationFailed.code() {
                if let Some(suppressed) = self.refused.due() {
                    tracing::warn!(topic = %key.0, partition = key.1, suppressed, "the leader does not authorize this node as a replica (CLUSTER_ACTION): with --authorizer, the nodes' principal on the inter-broker listener must be a super user");
                }
            }
            // Retried after a pause, not in a loop.
            tracing::debug!(topic = %key.0, partition = key.1, code, "replica fetch error; retrying");
            s.parked.insert(key);
        }
    }
}

/// Followed partitions grouped by topic, in a stable order.
fn by_topic(parts: &[Followed]) -> BTreeMap<&str, Vec<&Followed>> {
    let mut out: BTreeMap<&str, Vec<&Followed>> = BTreeMap::new();
    for f in parts {
        out.entry(f.topic.name.as_str()).or_default().push(f);
    }
    out
}

/// Fetch v12 of `parts` from their log ends, as replica `tuning.node_id`.
fn fetch_request(parts: &[Followed], tuning: &Tuning) -> FetchRequest {
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(i32::try_from(tuning.node_id).unwrap_or(-1));
    req.max_wait_ms = tuning.fetch_wait_max_ms;
    req.min_bytes = 1;
    req.max_bytes = tuning.fetch_max_bytes;
    req.isolation_level = 0;
    req.session_id = 0;
    // No fetch session: every request is a full one.
    req.session_epoch = -1;
    req.topics = by_topic(parts)
        .into_iter()
        .map(|(name, fs)| {
            let mut t = FetchTopic::default();
            t.topic = topic_name(name);
            t.partitions = fs
                .into_iter()
                .map(|f| {
                    let mut p = FetchPartition::default();
                    p.partition = f.partition;
                    p.current_leader_epoch = f.leader_epoch;
                    p.fetch_offset = f.log_end;
                    p.last_fetched_epoch = f.last_fetched_epoch;
                    p.log_start_offset = -1;
                    p.partition_max_bytes = PARTITION_FETCH_BYTES_MAX
                        .min(u32::try_from(tuning.fetch_max_bytes).unwrap_or(0))
                        as i32;
                    p
                })
                .collect();
            t
        })
        .collect();
    req
}

/// OffsetForLeaderEpoch v4 of `parts`: each one's last fetched epoch.
fn epoch_request(parts: &[Followed], node_id: u64) -> OffsetForLeaderEpochRequest {
    let mut req = OffsetForLeaderEpochRequest::default();
    req.replica_id = BrokerId(i32::try_from(node_id).unwrap_or(-1));
    req.topics = by_topic(parts)
        .into_iter()
        .map(|(name, fs)| {
            let mut t = OffsetForLeaderTopic::default();
            t.topic = topic_name(name);
            t.partitions = fs
                .into_iter()
                .map(|f| {
                    let mut p = OffsetForLeaderPartition::default();
                    p.partition = f.partition;
                    p.current_leader_epoch = f.leader_epoch;
                    p.leader_epoch = f.last_fetched_epoch;
                    p
                })
                .collect();
            t
        })
        .collect();
    req
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka_client::encode_request;
    use kafka_protocol::messages::RequestHeader;
    use kafka_protocol::protocol::Decodable;

    fn followed(name: &str, partition: i32, log_end: i64) -> Followed {
        Followed {
            topic: Arc::new(TopicMeta {
                name: name.into(),
                id: [0; 16],
                partitions: Vec::new(),
                configs: Default::default(),
                created_ms: 0,
            }),
            partition,
            leader: 2,
            leader_epoch: 3,
            log_end,
            last_fetched_epoch: 2,
            needs_truncation: false,
        }
    }

    fn tuning() -> Tuning {
        Tuning {
            node_id: 1,
            fetch_wait_max_ms: 500,
            fetch_max_bytes: 10 << 20,
            response_bytes_max: 20 << 20,
        }
    }

    #[test]
    fn fetch_request_carries_every_partition_from_its_log_end() {
        let parts = [
            followed("b", 1, 7),
            followed("a", 0, 5),
            followed("b", 0, 9),
        ];
        let req = fetch_request(&parts, &tuning());
        assert_eq!(req.replica_id, BrokerId(1));
        assert_eq!((req.max_wait_ms, req.min_bytes), (500, 1));
        assert_eq!(req.topics.len(), 2, "one entry per topic");
        assert_eq!(req.topics[0].topic.0.as_str(), "a");
        let b = &req.topics[1];
        assert_eq!(b.partitions.len(), 2);
        assert_eq!(b.partitions[0].fetch_offset, 7);
        assert_eq!(b.partitions[0].current_leader_epoch, 3);
        assert_eq!(b.partitions[0].last_fetched_epoch, 2);
        assert_eq!(b.partitions[0].partition_max_bytes, 1 << 20);
        let frame =
            encode_request(ApiKey::Fetch, FETCH_VERSION, 5, CLIENT_ID, &req).expect("encodes");
        let mut body = frame.slice(4..);
        let header = RequestHeader::decode(&mut body, ApiKey::Fetch.request_header_version(12))
            .expect("header");
        assert_eq!(header.correlation_id, 5);
        let back = FetchRequest::decode(&mut body, FETCH_VERSION).expect("body");
        assert_eq!(back, req);
    }

    #[test]
    fn epoch_request_asks_for_the_last_fetched_epoch() {
        let req = epoch_request(&[followed("t", 4, 10)], 1);
        let p = &req.topics[0].partitions[0];
        assert_eq!(
            (p.partition, p.leader_epoch, p.current_leader_epoch),
            (4, 2, 3)
        );
        encode_request(
            ApiKey::OffsetForLeaderEpoch,
            EPOCH_VERSION,
            1,
            CLIENT_ID,
            &req,
        )
        .expect("encodes");
    }
}
