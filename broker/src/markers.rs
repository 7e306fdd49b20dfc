//! The transaction coordinator's WriteTxnMarkers client: writes the
//! markers of a transaction to the partitions another node of the cluster
//! leads (the coordinator writes those this node leads itself).
//!
//! One `MarkerSender` per shard, installed in the shard as its
//! `RemoteMarkers` in a cluster only. Per target node it keeps a `Link`:
//! a bounded queue of markers (`QUEUED_MARKERS_MAX`; over it a marker is
//! refused with `Busy`, counted, and the coordinator retries it) and at
//! most one connection to the node's advertised Kafka listener
//! (`kafka_client::Conn`), opened lazily and dropped on any failure.
//! While a link has markers queued one task drains it: it takes up to
//! `MARKERS_PER_REQUEST_MAX` of them (one marker per producer id, as the
//! response names a marker by its producer id), sends them as one
//! WriteTxnMarkers v1 request, answers each from its partition's error
//! code, and ends when the queue is empty. So requests to a node go one at
//! a time, and markers queued meanwhile share the next one.
//!
//! Bounds: a connect attempt `CONNECT_TIMEOUT`, a request and its answer
//! `REQUEST_TIMEOUT` (the leader answers once its in-sync replicas have
//! the markers); a caller waits at most `REPLY_WAIT` and gets `Timeout`
//! after it. A response frame is at most `RESPONSE_BYTES_MAX`, charged to
//! the shard's `request_buffers` pool while it is read. A whole request
//! that fails (connect, I/O, timeout: `Timeout`; an unusable answer:
//! `Storage`) fails each of its markers; no retry here, the coordinator
//! retries with backoff. A node that cannot be reached is logged at most
//! once per `WARN_INTERVAL` per shard.
//!
//! The sender holds its shard's `Ctx` weakly: the shard holds the sender.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::pin;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::future::{select, Either, LocalBoxFuture};
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    ApiKey, ProducerId, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use kafka_protocol::ResponseError;

use crate::handlers::{topic_name, Ctx};
use crate::kafka_client::{Conn, Failure, Profile};
use crate::plane::{RemoteMarkers, ShardError, TxnMarker, WarnLimiter};

/// WriteTxnMarkers version sent (flexible; every node serves 0 and 1).
const VERSION: i16 = 1;
/// Client id of the requests (shows in the leader's logs).
const CLIENT_ID: &str = "sluice-txn-markers";
/// Longest connect attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request, from its first byte sent to its answer read: three
/// times the leader's own wait for its in-sync replicas (5 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait of a caller: the request in flight when its marker was
/// queued, then its own (each with a connect).
const REPLY_WAIT: Duration =
    Duration::from_secs(2 * (CONNECT_TIMEOUT.as_secs() + REQUEST_TIMEOUT.as_secs()));
/// Markers waiting per target node; more are refused (`Busy`).
const QUEUED_MARKERS_MAX: usize = 4096;
/// Partitions one request carries at most.
const MARKERS_PER_REQUEST_MAX: usize = 1024;
/// Largest response frame accepted: a few bytes per partition.
const RESPONSE_BYTES_MAX: u32 = 1 << 20;
/// Shortest time between two "cannot reach node" warnings of a shard.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// A shard's WriteTxnMarkers client (see the module docs).
pub struct MarkerSender {
    inner: Rc<Inner>,
}

struct Inner {
    ctx: Weak<Ctx>,
    /// By target node; at most one per node of the cluster.
    links: RefCell<HashMap<u64, Rc<Link>>>,
    unreachable: WarnLimiter,
}

/// One target node: its queue and its connection.
struct Link {
    node: u64,
    queue: RefCell<VecDeque<Pending>>,
    /// A task drains the queue.
    draining: Cell<bool>,
    /// Taken by the draining task while a request is out.
    conn: RefCell<Option<Conn>>,
    /// Markers refused because the queue was full.
    refused: Cell<u64>,
}

/// A marker waiting for its request.
struct Pending {
    topic: String,
    partition: i32,
    marker: TxnMarker,
    reply: oneshot::Sender<Result<(), ShardError>>,
}

impl MarkerSender {
    pub fn new(ctx: Weak<Ctx>) -> MarkerSender {
        MarkerSender {
            inner: Rc::new(Inner {
                ctx,
                links: RefCell::new(HashMap::new()),
                unreachable: WarnLimiter::new(WARN_INTERVAL),
            }),
        }
    }
}

impl RemoteMarkers for MarkerSender {
    fn write(
        &self,
        node: u64,
        topic: String,
        partition: i32,
        marker: TxnMarker,
    ) -> LocalBoxFuture<'static, Result<(), ShardError>> {
        let inner = Rc::clone(&self.inner);
        Box::pin(async move { inner.write(node, topic, partition, marker).await })
    }
}

impl Inner {
    fn link(&self, node: u64) -> Rc<Link> {
        let mut links = self.links.borrow_mut();
        let link = links.entry(node).or_insert_with(|| {
            Rc::new(Link {
                node,
                queue: RefCell::new(VecDeque::new()),
                draining: Cell::new(false),
                conn: RefCell::new(None),
                refused: Cell::new(0),
            })
        });
        Rc::clone(link)
    }

    /// Queues the marker, starts the link's drain task if none runs, and
    /// waits for the answer.
    async fn write(
        self: Rc<Self>,
        node: u64,
        topic: String,
        partition: i32,
        marker: TxnMarker,
    ) -> Result<(), ShardError> {
        let Some(ctx) = self.ctx.upgrade() else {
            return Err(ShardError::ShuttingDown);
        };
        let link = self.link(node);
        let (reply, answer) = oneshot::channel();
        {
            let mut queue = link.queue.borrow_mut();
            if queue.len() >= QUEUED_MARKERS_MAX {
                link.refused.set(link.refused.get() + 1);
                tracing::debug!(
                    node,
                    refused = link.refused.get(),
                    "transaction marker queue full"
                );
                return Err(ShardError::Busy);
            }
            queue.push_back(Pending {
                topic,
                partition,
                marker,
                reply,
            });
        }
        if !link.draining.replace(true) {
            let inner = Rc::clone(&self);
            glommio::spawn_local(async move { inner.drain(link).await }).detach();
        }
        // In the shard's deadline structure, not a timer per marker.
        let expired = pin!(ctx.shard.sleep_until(Instant::now() + REPLY_WAIT));
        match select(answer, expired).await {
            Either::Left((Ok(result), _)) => result,
            Either::Left((Err(oneshot::Canceled), _)) => Err(ShardError::ShuttingDown),
            // The marker may still go out; its answer is dropped.
            Either::Right(_) => Err(ShardError::Timeout),
        }
    }

    /// Sends the link's queued markers, a request at a time, until none is
    /// left.
    async fn drain(&self, link: Rc<Link>) {
        loop {
            let batch = take_batch(&mut link.queue.borrow_mut());
            if batch.is_empty() {
                link.draining.set(false);
                return;
            }
            let Some(ctx) = self.ctx.upgrade() else {
                for p in batch {
                    let _ = p.reply.send(Err(ShardError::ShuttingDown));
                }
                continue;
            };
            let answered = send(&ctx, &link, &batch).await;
            if let Err(failure) = &answered {
                self.warn_unreachable(link.node, failure);
            }
            answer(batch, answered);
        }
    }

    fn warn_unreachable(&self, node: u64, failure: &Failure) {
        let Some(earlier) = self.unreachable.due() else {
            tracing::debug!(node, error = %failure, "transaction markers not sent");
            return;
        };
        let shard = self.ctx.upgrade().map(|c| c.shard.id());
        tracing::warn!(
            shard,
            node,
            failures = earlier + 1,
            error = %failure,
            "cannot send transaction markers to a partition leader; the coordinator retries"
        );
    }
}

/// One request with `batch` over the link's connection (opened first
/// when there is none); the connection is kept only when it worked.
async fn send(
    ctx: &Ctx,
    link: &Link,
    batch: &[Pending],
) -> Result<WriteTxnMarkersResponse, Failure> {
    let taken = link.conn.borrow_mut().take();
    let mut conn = match taken {
        Some(conn) => conn,
        None => {
            let profile = Profile {
                client_id: CLIENT_ID,
                connect_timeout: CONNECT_TIMEOUT,
                response_bytes_max: RESPONSE_BYTES_MAX,
            };
            Conn::open(ctx, link.node, profile).await?
        }
    };
    let req = marker_request(batch);
    let (resp, _held): (WriteTxnMarkersResponse, _) = conn
        .call(
            &ctx.shard,
            ApiKey::WriteTxnMarkers,
            VERSION,
            &req,
            REQUEST_TIMEOUT,
        )
        .await?;
    *link.conn.borrow_mut() = Some(conn);
    Ok(resp)
}

/// Takes the next request's markers off the front of `queue`: at most
/// `MARKERS_PER_REQUEST_MAX`, one marker per producer id (a later marker
/// of the same producer waits for the next request); markers nobody waits
/// for any more are dropped.
fn take_batch(queue: &mut VecDeque<Pending>) -> Vec<Pending> {
    let mut taken: Vec<Pending> = Vec::new();
    let mut kept: VecDeque<Pending> = VecDeque::new();
    let mut by_producer: HashMap<i64, TxnMarker> = HashMap::new();
    while let Some(p) = queue.pop_front() {
        if p.reply.is_canceled() {
            continue;
        }
        if taken.len() >= MARKERS_PER_REQUEST_MAX {
            kept.push_back(p);
            break;
        }
        let same = by_producer.entry(p.marker.producer_id).or_insert(p.marker);
        if *same == p.marker {
            taken.push(p);
        } else {
            kept.push_back(p);
        }
    }
    kept.extend(queue.drain(..));
    *queue = kept;
    assert!(taken.len() <= MARKERS_PER_REQUEST_MAX);
    taken
}

/// WriteTxnMarkers of `batch`: one entry per marker (in the order first
/// seen), its partitions by topic.
fn marker_request(batch: &[Pending]) -> WriteTxnMarkersRequest {
    let mut markers: Vec<(TxnMarker, BTreeMap<&str, Vec<i32>>)> = Vec::new();
    for p in batch {
        let at = match markers.iter().position(|(m, _)| *m == p.marker) {
            Some(i) => i,
            None => {
                markers.push((p.marker, BTreeMap::new()));
                markers.len() - 1
            }
        };
        let parts = markers[at].1.entry(p.topic.as_str()).or_default();
        if !parts.contains(&p.partition) {
            parts.push(p.partition);
        }
    }
    let mut req = WriteTxnMarkersRequest::default();
    req.markers = markers
        .into_iter()
        .map(|(m, topics)| {
            let mut w = WritableTxnMarker::default();
            w.producer_id = ProducerId(m.producer_id);
            w.producer_epoch = m.producer_epoch;
            w.transaction_result = m.commit;
            w.coordinator_epoch = m.coordinator_epoch;
            w.topics = topics
                .into_iter()
                .map(|(name, partitions)| {
                    let mut t = WritableTxnMarkerTopic::default();
                    t.name = topic_name(name);
                    t.partition_indexes = partitions;
                    t
                })
                .collect();
            w
        })
        .collect();
    req
}

/// Answers every marker of `batch`: from its partition's error code, or
/// with the failure of the whole request.
fn answer(batch: Vec<Pending>, answered: Result<WriteTxnMarkersResponse, Failure>) {
    let resp = match answered {
        Ok(resp) => resp,
        Err(failure) => {
            for p in batch {
                let _ = p.reply.send(Err(failure_error(&failure)));
            }
            return;
        }
    };
    let mut codes: HashMap<(i64, &str, i32), i16> = HashMap::new();
    for m in &resp.markers {
        for t in &m.topics {
            for p in &t.partitions {
                codes.insert(
                    (m.producer_id.0, t.name.0.as_str(), p.partition_index),
                    p.error_code,
                );
            }
        }
    }
    for p in batch {
        let key = (p.marker.producer_id, p.topic.as_str(), p.partition);
        let result = match codes.get(&key) {
            Some(&code) => partition_result(code, &p.marker),
            None => Err(ShardError::Storage(
                "the leader's WriteTxnMarkers answer left the partition out".into(),
            )),
        };
        let _ = p.reply.send(result);
    }
}

/// The error a request that failed as a whole gives each of its markers.
fn failure_error(failure: &Failure) -> ShardError {
    match failure {
        Failure::Io(_) | Failure::TimedOut => ShardError::Timeout,
        Failure::Protocol(m) => ShardError::Storage(format!("WriteTxnMarkers: {m}")),
    }
}

/// A partition's error code in a WriteTxnMarkers answer as the data-plane
/// error the coordinator acts on (the inverse of `errors::shard_error_code`
/// where there is one).
fn partition_result(code: i16, marker: &TxnMarker) -> Result<(), ShardError> {
    let Some(e) = ResponseError::try_from_code(code) else {
        return Ok(());
    };
    Err(match e {
        ResponseError::NotLeaderOrFollower
        | ResponseError::LeaderNotAvailable
        | ResponseError::BrokerNotAvailable
        | ResponseError::FencedLeaderEpoch
        | ResponseError::UnknownLeaderEpoch => ShardError::NotLeader,
        ResponseError::UnknownTopicOrPartition => ShardError::UnknownTopicOrPartition,
        // The leader's epoch is not in the answer.
        ResponseError::InvalidProducerEpoch | ResponseError::ProducerFenced => {
            ShardError::InvalidProducerEpoch {
                current: -1,
                got: marker.producer_epoch,
            }
        }
        ResponseError::NotEnoughReplicas => ShardError::NotEnoughReplicas,
        ResponseError::NotEnoughReplicasAfterAppend => ShardError::NotEnoughReplicasAfterAppend,
        ResponseError::RequestTimedOut => ShardError::Timeout,
        ResponseError::InvalidTxnState => {
            ShardError::InvalidTxnState("the leader refused the marker".into())
        }
        other => ShardError::Storage(format!("the leader answered {other} ({code})")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka_client::encode_request;
    use kafka_protocol::messages::write_txn_markers_response::{
        WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
    };
    use kafka_protocol::messages::RequestHeader;
    use kafka_protocol::protocol::{Decodable, Encodable};

    fn marker(producer_id: i64, commit: bool) -> TxnMarker {
        TxnMarker {
            producer_id,
            producer_epoch: 3,
            commit,
            coordinator_epoch: 7,
        }
    }

    type Answer = oneshot::Receiver<Result<(), ShardError>>;

    fn pending(topic: &str, partition: i32, marker: TxnMarker) -> (Pending, Answer) {
        let (reply, answer) = oneshot::channel();
        let p = Pending {
            topic: topic.into(),
            partition,
            marker,
            reply,
        };
        (p, answer)
    }

    fn queue_of(items: Vec<(&str, i32, TxnMarker)>) -> (VecDeque<Pending>, Vec<Answer>) {
        let mut queue = VecDeque::new();
        let mut answers = Vec::new();
        for (t, p, m) in items {
            let (pending, answer) = pending(t, p, m);
            queue.push_back(pending);
            answers.push(answer);
        }
        (queue, answers)
    }

    fn result_of(answer: &mut Answer) -> Result<(), ShardError> {
        answer.try_recv().expect("not canceled").expect("answered")
    }

    #[test]
    fn one_request_carries_each_marker_once_with_its_partitions_by_topic() {
        let (commit, abort) = (marker(10, true), marker(11, false));
        let (mut queue, _answers) = queue_of(vec![
            ("b", 1, commit),
            ("a", 0, commit),
            ("b", 0, commit),
            ("b", 1, commit),
            ("c", 2, abort),
        ]);
        let batch = take_batch(&mut queue);
        assert_eq!(batch.len(), 5);
        assert!(queue.is_empty());
        let req = marker_request(&batch);
        assert_eq!(req.markers.len(), 2);
        let m = &req.markers[0];
        assert_eq!(m.producer_id, ProducerId(10));
        assert_eq!(
            (m.producer_epoch, m.transaction_result, m.coordinator_epoch),
            (3, true, 7)
        );
        let topics: Vec<(&str, &[i32])> = m
            .topics
            .iter()
            .map(|t| (t.name.0.as_str(), t.partition_indexes.as_slice()))
            .collect();
        assert_eq!(topics, vec![("a", &[0][..]), ("b", &[1, 0][..])]);
        assert!(!req.markers[1].transaction_result);
        // Both versions encode it, and it decodes back the same.
        for version in [0, VERSION] {
            let frame = encode_request(ApiKey::WriteTxnMarkers, version, 4, CLIENT_ID, &req)
                .expect("encodes");
            let mut body = frame.slice(4..);
            let header_version = ApiKey::WriteTxnMarkers.request_header_version(version);
            let header = RequestHeader::decode(&mut body, header_version).expect("header");
            assert_eq!(header.request_api_key, ApiKey::WriteTxnMarkers as i16);
            assert_eq!(header.request_api_version, version);
            let back = WriteTxnMarkersRequest::decode(&mut body, version).expect("body");
            assert_eq!(back, req);
        }
    }

    #[test]
    fn a_second_marker_of_a_producer_and_markers_past_the_bound_wait_for_the_next_request() {
        let (first, second) = (marker(5, false), marker(5, true));
        let mut items = vec![("t", 0, first), ("t", 1, second), ("t", 2, first)];
        for p in 0..MARKERS_PER_REQUEST_MAX as i32 {
            items.push(("u", p, marker(6, true)));
        }
        let (mut queue, mut answers) = queue_of(items);
        // Nobody waits for this one any more: dropped, never sent.
        drop(answers.remove(2));
        let batch = take_batch(&mut queue);
        assert_eq!(batch.len(), MARKERS_PER_REQUEST_MAX);
        assert_eq!((batch[0].partition, batch[0].marker), (0, first));
        assert!(batch[1..].iter().all(|p| p.topic == "u"));
        // Left: the second marker of producer 5, then the last of "u", in
        // their order.
        let left: Vec<(String, i32)> = queue
            .iter()
            .map(|p| (p.topic.clone(), p.partition))
            .collect();
        let last = MARKERS_PER_REQUEST_MAX as i32 - 1;
        assert_eq!(left, vec![("t".to_string(), 1), ("u".to_string(), last)]);
        let next = take_batch(&mut queue);
        assert_eq!(next.len(), 2);
        assert!(queue.is_empty());
    }

    fn response(entries: &[(i64, &str, i32, i16)]) -> WriteTxnMarkersResponse {
        let mut resp = WriteTxnMarkersResponse::default();
        for &(pid, topic, partition, code) in entries {
            let mut r = WritableTxnMarkerResult::default();
            r.producer_id = ProducerId(pid);
            let mut t = WritableTxnMarkerTopicResult::default();
            t.name = topic_name(topic);
            let mut p = WritableTxnMarkerPartitionResult::default();
            p.partition_index = partition;
            p.error_code = code;
            t.partitions.push(p);
            r.topics.push(t);
            resp.markers.push(r);
        }
        resp
    }

    #[test]
    fn each_marker_is_answered_from_its_partition() {
        let m = marker(9, true);
        let (mut queue, mut answers) = queue_of(vec![
            ("t", 0, m),
            ("t", 1, m),
            ("t", 2, m),
            ("t", 3, m),
            ("t", 4, m),
        ]);
        let batch = take_batch(&mut queue);
        let resp = response(&[
            (9, "t", 0, 0),
            (9, "t", 1, ResponseError::NotLeaderOrFollower.code()),
            (9, "t", 2, ResponseError::UnknownTopicOrPartition.code()),
            (9, "t", 3, ResponseError::InvalidProducerEpoch.code()),
        ]);
        // The answer went through the wire and back.
        let mut buf = bytes::BytesMut::new();
        resp.encode(&mut buf, VERSION).expect("encodes");
        let resp = WriteTxnMarkersResponse::decode(&mut buf.freeze(), VERSION).expect("decodes");
        answer(batch, Ok(resp));
        assert_eq!(result_of(&mut answers[0]), Ok(()));
        assert_eq!(result_of(&mut answers[1]), Err(ShardError::NotLeader));
        assert_eq!(
            result_of(&mut answers[2]),
            Err(ShardError::UnknownTopicOrPartition)
        );
        assert!(matches!(
            result_of(&mut answers[3]),
            Err(ShardError::InvalidProducerEpoch { got: 3, .. })
        ));
        assert!(matches!(
            result_of(&mut answers[4]),
            Err(ShardError::Storage(_))
        ));
    }

    #[test]
    fn a_failed_request_fails_every_marker_it_carried() {
        let m = marker(1, false);
        for (failure, timeout) in [
            (Failure::TimedOut, true),
            (
                Failure::Io(std::io::ErrorKind::ConnectionRefused.into()),
                true,
            ),
            (Failure::Protocol("bad frame".into()), false),
        ] {
            let (mut queue, mut answers) = queue_of(vec![("t", 0, m), ("u", 1, m)]);
            answer(take_batch(&mut queue), Err(failure));
            for a in &mut answers {
                let r = result_of(a);
                if timeout {
                    assert_eq!(r, Err(ShardError::Timeout));
                } else {
                    assert!(matches!(r, Err(ShardError::Storage(_))), "{r:?}");
                }
            }
        }
    }

    #[test]
    fn error_codes_map_to_what_the_coordinator_acts_on() {
        let m = marker(1, true);
        let cases = [
            (ResponseError::NotLeaderOrFollower, ShardError::NotLeader),
            (ResponseError::FencedLeaderEpoch, ShardError::NotLeader),
            (ResponseError::RequestTimedOut, ShardError::Timeout),
            (
                ResponseError::NotEnoughReplicas,
                ShardError::NotEnoughReplicas,
            ),
            (
                ResponseError::NotEnoughReplicasAfterAppend,
                ShardError::NotEnoughReplicasAfterAppend,
            ),
            (
                ResponseError::UnknownTopicOrPartition,
                ShardError::UnknownTopicOrPartition,
            ),
        ];
        for (code, want) in cases {
            assert_eq!(partition_result(code.code(), &m), Err(want), "{code:?}");
        }
        assert!(matches!(
            partition_result(ResponseError::ProducerFenced.code(), &m),
            Err(ShardError::InvalidProducerEpoch { .. })
        ));
        assert!(matches!(
            partition_result(ResponseError::KafkaStorageError.code(), &m),
            Err(ShardError::Storage(_))
        ));
        assert!(matches!(
            partition_result(-77, &m),
            Err(ShardError::Storage(_))
        ));
        assert_eq!(partition_result(0, &m), Ok(()));
        // Every code this node's own handler answers maps back to the
        // error it came from, where the coordinator tells them apart.
        for e in [
            ShardError::NotLeader,
            ShardError::UnknownTopicOrPartition,
            ShardError::Timeout,
            ShardError::NotEnoughReplicas,
            ShardError::NotEnoughReplicasAfterAppend,
        ] {
            let code = crate::errors::shard_error_code(&e);
            assert_eq!(partition_result(code, &m), Err(e));
        }
    }
}
