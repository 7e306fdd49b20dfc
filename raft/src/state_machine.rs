//! The metadata state machine: openraft's `RaftStateMachine` (storage v2).
//!
//! State lives in memory and is made durable by the Raft log plus the
//! snapshot file (`snapshot`). On open the snapshot is loaded; openraft then
//! re-applies the log after it once the leader commits.
//!
//! Placement is decided here, in `apply`, so every replica computes the same
//! answer: each new partition goes to the shard holding the fewest
//! partitions, ties to the lowest shard index.
//!
//! After each applied batch a new immutable `MetadataView` is published
//! through `Published`. The topics are a persistent map (`TopicMap`):
//! publishing clones its root (O(1)); each change copied O(log topics)
//! nodes, and the new view shares every other node with the old one.

use std::collections::BTreeMap;
use std::io;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, RaftSnapshotBuilder, StorageIOError};
use tokio::sync::watch;

use crate::snapshot;
use crate::types::{
    producer_id_block_start, Entry, LogId, MetaError, MetaRequest, MetaResponse, MetadataView,
    PartitionMeta, SnapshotData, SnapshotMeta, StorageError, StoredMembership, TopicIdMap,
    TopicMap, TopicMeta, TypeConfig,
};

/// The applied view, shared between the control thread (writer) and every
/// `Metadata` handle (readers).
#[derive(Debug)]
pub(crate) struct Published {
    view: ArcSwap<MetadataView>,
    version_tx: watch::Sender<u64>,
    closed: AtomicBool,
}

impl Published {
    pub(crate) fn new(node_id: u64) -> Published {
        let view = MetadataView {
            node_id,
            ..MetadataView::default()
        };
        let (version_tx, _) = watch::channel(0);
        Published {
            view: ArcSwap::from_pointee(view),
            version_tx,
            closed: AtomicBool::new(false),
        }
    }

    pub(crate) fn view(&self) -> Arc<MetadataView> {
        self.view.load_full()
    }

    fn publish(&self, view: MetadataView) {
        let version = view.version;
        assert!(
            version >= self.view.load().version,
            "metadata version must not go back"
        );
        self.view.store(Arc::new(view));
        self.version_tx.send_replace(version);
    }

    /// Marks the service stopped and wakes every `changed` waiter.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.version_tx.send_modify(|_| {});
    }

    /// Resolves once the view's version exceeds `since`, or the service
    /// stopped (then with the last view).
    pub(crate) async fn changed(&self, since: u64) -> Arc<MetadataView> {
        let mut rx = self.version_tx.subscribe();
        loop {
            let view = self.view();
            if view.version > since || self.closed.load(Ordering::Acquire) {
                return view;
            }
            if rx.changed().await.is_err() {
                return self.view();
            }
        }
    }
}

/// Limits that placement enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placement {
    pub node_id: u64,
    pub shards: u32,
    pub partitions_per_shard_max: u32,
}

impl Placement {
    fn partitions_max(&self) -> u64 {
        u64::from(self.shards) * u64::from(self.partitions_per_shard_max)
    }
}

/// The replicated data.
#[derive(Debug, Clone)]
struct Data {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// Shared with the published views: cloning `Data` is O(1) in topics.
    topics: TopicMap,
    /// The names of `topics` by id; changed with it, also shared.
    topic_ids: TopicIdMap,
    /// Partitions per shard, `len() == shards`.
    shard_load: Vec<u64>,
    partitions_total: u64,
    brokers: crate::types::BrokerMap,
}

impl Data {
    fn new(shards: u32) -> Data {
        Data {
            last_applied: None,
            membership: StoredMembership::default(),
            topics: TopicMap::new(),
            topic_ids: TopicIdMap::new(),
            shard_load: vec![0; shards as usize],
            partitions_total: 0,
            brokers: crate::types::BrokerMap::new(),
        }
    }

    fn from_snapshot(shards: u32, meta: &SnapshotMeta, topics: Vec<TopicMeta>) -> Data {
        let mut data = Data::new(shards);
        data.last_applied = meta.last_log_id;
        data.membership = meta.last_membership.clone();
        for topic in topics {
            data.charge(&topic, 1);
            let name: Arc<str> = Arc::from(topic.name.as_str());
            data.topic_ids.insert(topic.id, Arc::clone(&name));
            data.topics.insert(name, Arc::new(topic));
        }
        data
    }

    /// Adds (`sign = 1`) or removes (`sign = -1`) a topic's partitions from
    /// the shard counts.
    fn charge(&mut self, topic: &TopicMeta, sign: i64) {
        for p in &topic.partitions {
            if let Some(load) = self.shard_load.get_mut(p.shard as usize) {
                *load = load
                    .checked_add_signed(sign)
                    .expect("shard load within bounds");
            }
        }
        let n = topic.partitions.len() as u64;
        self.partitions_total = if sign > 0 {
            self.partitions_total + n
        } else {
            self.partitions_total - n
        };
    }

    fn create(&mut self, limits: &Placement, req: CreateArgs) -> Result<Arc<TopicMeta>, MetaError> {
        validate_partitions(req.partitions, limits)?;
        if self.topics.contains_key(req.name.as_str()) {
            return Err(MetaError::TopicExists(req.name));
        }
        if self.topic_ids.contains_key(&req.id) {
            // Ids are random 128-bit values: only a broken proposer repeats one.
            return Err(MetaError::Internal(format!(
                "topic id {} is already in use",
                hex(&req.id)
            )));
        }
        let requested = u64::from(req.partitions);
        let limit = limits.partitions_max();
        if self.partitions_total + requested > limit {
            return Err(MetaError::PartitionLimit { limit, requested });
        }
        warn_near_limit(self.partitions_total, requested, limit);
        let partitions = (0..req.partitions)
            .map(|_| self.place_one(limits.node_id))
            .collect();
        let topic = TopicMeta {
            name: req.name,
            id: req.id,
            partitions,
            configs: req.configs,
            created_ms: req.created_ms,
        };
        self.partitions_total += requested;
        let topic = Arc::new(topic);
        let name: Arc<str> = Arc::from(topic.name.as_str());
        self.topic_ids.insert(topic.id, Arc::clone(&name));
        self.topics.insert(name, Arc::clone(&topic));
        Ok(topic)
    }

    /// Picks the least loaded shard (ties: lowest index) and charges it.
    fn place_one(&mut self, leader: u64) -> PartitionMeta {
        let (shard, load) = self
            .shard_load
            .iter_mut()
            .enumerate()
            .min_by_key(|(i, load)| (**load, *i))
            .expect("at least one shard");
        *load += 1;
        PartitionMeta {
            shard: shard as u32,
            leader,
            leader_epoch: 0,
            replicas: vec![leader],
            isr: vec![leader],
        }
    }

    /// Adds partitions to a topic up to `partitions` in total.
    fn grow(
        &mut self,
        limits: &Placement,
        name: &str,
        partitions: u32,
    ) -> Result<Arc<TopicMeta>, MetaError> {
        let old = self
            .topics
            .get(name)
            .ok_or_else(|| MetaError::UnknownTopic(name.to_string()))?;
        let have = old.partitions.len() as u64;
        if u64::from(partitions) <= have {
            return Err(MetaError::InvalidPartitions(format!(
                "topic '{name}' has {have} partitions; the new count {partitions} must be larger"
            )));
        }
        let requested = u64::from(partitions) - have;
        let limit = limits.partitions_max();
        if self.partitions_total + requested > limit {
            return Err(MetaError::PartitionLimit { limit, requested });
        }
        let mut topic = TopicMeta::clone(old);
        for _ in 0..requested {
            topic.partitions.push(self.place_one(limits.node_id));
        }
        self.partitions_total += requested;
        let topic = Arc::new(topic);
        self.topics.insert(Arc::from(name), Arc::clone(&topic));
        Ok(topic)
    }

    fn set_configs(
        &mut self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<TopicMeta>, MetaError> {
        let old = self
            .topics
            .get(name)
            .ok_or_else(|| MetaError::UnknownTopic(name.to_string()))?;
        let topic = Arc::new(TopicMeta {
            configs,
            ..TopicMeta::clone(old)
        });
        self.topics.insert(Arc::from(name), Arc::clone(&topic));
        Ok(topic)
    }

    fn delete(&mut self, name: &str) -> Result<Arc<TopicMeta>, MetaError> {
        let topic = self
            .topics
            .remove(name)
            .ok_or_else(|| MetaError::UnknownTopic(name.to_string()))?;
        self.topic_ids.remove(&topic.id);
        self.charge(&topic, -1);
        Ok(topic)
    }

    /// O(1): the view shares the topic map's nodes.
    fn view(&self, node_id: u64) -> MetadataView {
        let version = self.last_applied.map_or(0, |l| l.index);
        MetadataView {
            version,
            node_id,
            topics: self.topics.clone(),
            topic_ids: self.topic_ids.clone(),
            brokers: self.brokers.clone(),
        }
    }

    /// Broker registration, fencing and ISR changes.
    fn apply_cluster(&mut self, req: MetaRequest) -> Result<(), MetaError> {
        Err(MetaError::Internal(format!("not applied yet: {req:?}")))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct CreateArgs {
    name: String,
    id: [u8; 16],
    partitions: u32,
    configs: BTreeMap<String, String>,
    created_ms: i64,
}

/// Share of the partition limit (percent) at which one warning is logged.
const PARTITIONS_WARN_PERCENT: u64 = 80;

/// Logs one warning when a creation crosses `PARTITIONS_WARN_PERCENT` of
/// the node's partition limit (once per crossing, not per topic above it).
fn warn_near_limit(total: u64, requested: u64, limit: u64) {
    let threshold = limit * PARTITIONS_WARN_PERCENT / 100;
    if total < threshold && total + requested >= threshold {
        tracing::warn!(
            partitions = total + requested,
            limit,
            "partition count reached {PARTITIONS_WARN_PERCENT}% of the node's limit (--partitions-per-shard-max x shards)"
        );
    }
}

/// Rejects 0 partitions and counts over the node's total limit. Used by the
/// proposer too, so obviously bad requests never reach the log.
pub(crate) fn validate_partitions(partitions: u32, limits: &Placement) -> Result<(), MetaError> {
    let limit = limits.partitions_max();
    if partitions == 0 {
        return Err(MetaError::InvalidPartitions(
            "a topic needs at least 1 partition".into(),
        ));
    }
    if u64::from(partitions) > limit {
        let msg = format!("{partitions} partitions exceed the node limit of {limit}");
        return Err(MetaError::InvalidPartitions(msg));
    }
    Ok(())
}

/// The state machine handed to openraft.
pub(crate) struct StateMachine {
    dir: PathBuf,
    limits: Placement,
    data: Data,
    published: Arc<Published>,
    /// Entries up to this index were applied before the last restart: they
    /// are logged at debug, not info, when re-applied.
    replay_until: Option<u64>,
}

fn sm_err(e: impl std::error::Error + 'static) -> AnyError {
    AnyError::new(&e)
}

impl StateMachine {
    /// Loads the snapshot (if any) from `dir` and publishes its view.
    pub(crate) fn open(
        dir: PathBuf,
        limits: Placement,
        published: Arc<Published>,
        replay_until: Option<u64>,
    ) -> io::Result<StateMachine> {
        assert!(limits.shards > 0, "at least one shard");
        let data = match snapshot::read(&dir)? {
            Some((meta, bytes)) => {
                Data::from_snapshot(limits.shards, &meta, snapshot::decode_topics(&bytes)?)
            }
            None => Data::new(limits.shards),
        };
        published.publish(data.view(limits.node_id));
        Ok(StateMachine {
            dir,
            limits,
            data,
            published,
            replay_until,
        })
    }

    fn apply_one(&mut self, entry: Entry) -> MetaResponse {
        let log_id = entry.log_id;
        tracing::debug!(%log_id, "metadata: apply");
        self.data.last_applied = Some(log_id);
        match entry.payload {
            EntryPayload::Blank => MetaResponse::None,
            EntryPayload::Membership(m) => {
                self.data.membership = StoredMembership::new(Some(log_id), m);
                MetaResponse::None
            }
            EntryPayload::Normal(MetaRequest::ReserveProducerIds) => {
                let start = producer_id_block_start(log_id.index);
                tracing::debug!(
                    start,
                    index = log_id.index,
                    "metadata: producer ids reserved"
                );
                MetaResponse::ProducerIds(start)
            }
            EntryPayload::Normal(
                req @ (MetaRequest::RegisterBroker { .. }
                | MetaRequest::FenceBroker { .. }
                | MetaRequest::UnfenceBroker { .. }
                | MetaRequest::AlterIsr { .. }),
            ) => MetaResponse::Done(self.data.apply_cluster(req)),
            EntryPayload::Normal(req) => {
                let action = match req {
                    MetaRequest::CreateTopic { .. } => "created",
                    MetaRequest::DeleteTopic { .. } => "deleted",
                    MetaRequest::ReserveProducerIds => unreachable!("answered above"),
                    MetaRequest::CreatePartitions { .. } => "grown",
                    MetaRequest::SetTopicConfigs { .. } => "reconfigured",
                    _ => unreachable!("answered above"),
                };
                let result = self.apply_request(req);
                self.log_result(log_id, action, &result);
                MetaResponse::Topic(result)
            }
        }
    }

    fn apply_request(&mut self, req: MetaRequest) -> Result<Arc<TopicMeta>, MetaError> {
        match req {
            MetaRequest::CreateTopic {
                name,
                id,
                partitions,
                configs,
                created_ms,
                ..
            } => {
                let args = CreateArgs {
                    name,
                    id,
                    partitions,
                    configs,
                    created_ms,
                };
                self.data.create(&self.limits, args)
            }
            MetaRequest::DeleteTopic { name } => self.data.delete(&name),
            MetaRequest::ReserveProducerIds => {
                Err(MetaError::Internal("answered in apply_one".into()))
            }
            MetaRequest::CreatePartitions { name, partitions } => {
                self.data.grow(&self.limits, &name, partitions)
            }
            MetaRequest::SetTopicConfigs { name, configs } => self.data.set_configs(&name, configs),
            _ => Err(MetaError::Internal("answered in apply_one".into())),
        }
    }

    fn log_result(&self, log_id: LogId, action: &str, result: &Result<Arc<TopicMeta>, MetaError>) {
        let index = log_id.index;
        let replay = self.replay_until.is_some_and(|r| index <= r);
        match result {
            Ok(t) if !replay => {
                tracing::info!(topic = %t.name, partitions = t.partitions.len(), index, "metadata: topic {action}")
            }
            Ok(t) => tracing::debug!(topic = %t.name, index, "metadata: replayed topic {action}"),
            Err(e) => tracing::debug!(error = %e, index, "metadata: request rejected"),
        }
    }

    fn snapshot_builder(&self) -> SnapshotBuilder {
        SnapshotBuilder {
            dir: self.dir.clone(),
            data: self.data.clone(),
        }
    }
}

/// Builds a snapshot from a copy of the data (Arc clones) taken when
/// openraft asked for the builder.
pub(crate) struct SnapshotBuilder {
    dir: PathBuf,
    data: Data,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let topics: Vec<TopicMeta> = self
            .data
            .topics
            .values()
            .map(|t| TopicMeta::clone(t))
            .collect();
        let bytes = snapshot::encode_topics(&topics)
            .map_err(|e| StorageIOError::write_snapshot(None, sm_err(e)))?;
        let last = self.data.last_applied;
        let snapshot_id = last.map_or_else(
            || "empty".to_string(),
            |l| format!("{}-{}", l.leader_id, l.index),
        );
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.data.membership.clone(),
            snapshot_id,
        };
        snapshot::write(&self.dir, &meta, &bytes)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), sm_err(e)))?;
        tracing::debug!(snapshot = %meta.snapshot_id, bytes = bytes.len(), "metadata: snapshot written");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.data.last_applied, self.data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<MetaResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let responses: Vec<MetaResponse> = entries.into_iter().map(|e| self.apply_one(e)).collect();
        if !responses.is_empty() {
            self.published.publish(self.data.view(self.limits.node_id));
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_builder()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let bytes = data.into_inner();
        let read_err =
            |e: io::Error| StorageIOError::read_snapshot(Some(meta.signature()), sm_err(e));
        let topics = snapshot::decode_topics(&bytes).map_err(read_err)?;
        snapshot::write(&self.dir, meta, &bytes)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), sm_err(e)))?;
        self.data = Data::from_snapshot(self.limits.shards, meta, topics);
        self.published.publish(self.data.view(self.limits.node_id));
        tracing::info!(snapshot = %meta.snapshot_id, "metadata: snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let found = snapshot::read(&self.dir)
            .map_err(|e| StorageIOError::read_snapshot(None, sm_err(e)))?;
        Ok(found.map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(shards: u32, per_shard: u32) -> Placement {
        Placement {
            node_id: 1,
            shards,
            partitions_per_shard_max: per_shard,
        }
    }

    fn args(name: &str, partitions: u32) -> CreateArgs {
        CreateArgs {
            name: name.into(),
            id: id_of(name),
            partitions,
            configs: BTreeMap::new(),
            created_ms: 0,
        }
    }

    fn id_of(name: &str) -> [u8; 16] {
        assert!(name.len() < 16, "test names are short");
        let mut id = [0x5a; 16];
        id[..name.len()].copy_from_slice(name.as_bytes());
        id[name.len()] = 0;
        id
    }

    /// The id index holds exactly the topics of the name map.
    fn assert_index_matches(d: &Data) {
        assert_eq!(d.topic_ids.len(), d.topics.len());
        for (name, topic) in &d.topics {
            assert_eq!(d.topic_ids.get(&topic.id).map(|n| &**n), Some(&**name));
        }
        let view = d.view(1);
        for topic in d.topics.values() {
            assert_eq!(view.topic_by_id(&topic.id), Some(topic));
        }
    }

    #[test]
    fn id_index_follows_creates_deletes_and_snapshots() {
        let l = limits(2, 1_000);
        let mut d = Data::new(2);
        let names: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
        for n in &names {
            d.create(&l, args(n, 2)).expect("create");
        }
        assert_index_matches(&d);
        for n in names.iter().step_by(3) {
            let gone = d.delete(n).expect("delete");
            assert!(d.view(1).topic_by_id(&gone.id).is_none());
        }
        d.grow(&l, "t1", 5).expect("grow");
        d.set_configs("t2", BTreeMap::from([("k".into(), "v".into())]))
            .expect("configs");
        assert_eq!(
            d.view(1)
                .topic_by_id(&id_of("t1"))
                .map(|t| t.partitions.len()),
            Some(5)
        );
        // A name reused after its delete gets the new topic's id only.
        let mut again = args("t0", 1);
        again.id = [0xee; 16];
        d.create(&l, again).expect("recreate t0");
        assert!(d.view(1).topic_by_id(&id_of("t0")).is_none());
        assert_index_matches(&d);
        let mut dup = args("other", 1);
        dup.id = [0xee; 16];
        assert!(matches!(d.create(&l, dup), Err(MetaError::Internal(_))));
        // Snapshot round trip: encode, decode, rebuild.
        let topics: Vec<TopicMeta> = d.topics.values().map(|t| TopicMeta::clone(t)).collect();
        let bytes = snapshot::encode_topics(&topics).expect("encode");
        let back = Data::from_snapshot(
            2,
            &SnapshotMeta::default(),
            snapshot::decode_topics(&bytes).expect("decode"),
        );
        assert_index_matches(&back);
        assert_eq!(back.topic_ids, d.topic_ids);
        assert_eq!(back.topics, d.topics);
    }

    #[test]
    fn placement_fills_least_loaded_then_lowest_index() {
        let l = limits(3, 100);
        let mut d = Data::new(3);
        let a = d.create(&l, args("a", 2)).expect("a");
        assert_eq!(
            a.partitions.iter().map(|p| p.shard).collect::<Vec<_>>(),
            vec![0, 1]
        );
        let b = d.create(&l, args("b", 4)).expect("b");
        assert_eq!(
            b.partitions.iter().map(|p| p.shard).collect::<Vec<_>>(),
            vec![2, 0, 1, 2]
        );
        assert_eq!(d.shard_load, vec![2, 2, 2]);
        d.delete("a").expect("delete a");
        assert_eq!(d.shard_load, vec![1, 1, 2]);
        assert_eq!(d.partitions_total, 4);
        let c = d.create(&l, args("c", 1)).expect("c");
        assert_eq!(c.partitions[0].shard, 0);
    }

    #[test]
    fn limits_and_duplicates() {
        let l = limits(2, 3);
        let mut d = Data::new(2);
        assert!(matches!(
            d.create(&l, args("z", 0)),
            Err(MetaError::InvalidPartitions(_))
        ));
        assert!(matches!(
            d.create(&l, args("z", 7)),
            Err(MetaError::InvalidPartitions(_))
        ));
        d.create(&l, args("a", 4)).expect("a");
        assert_eq!(
            d.create(&l, args("a", 1)),
            Err(MetaError::TopicExists("a".into()))
        );
        let err = d.create(&l, args("b", 3)).expect_err("over the limit");
        assert_eq!(
            err,
            MetaError::PartitionLimit {
                limit: 6,
                requested: 3
            }
        );
        assert!(
            err.to_string().contains('6'),
            "message names the limit: {err}"
        );
        d.create(&l, args("b", 2)).expect("exactly at the limit");
        assert_eq!(
            d.delete("nope"),
            Err(MetaError::UnknownTopic("nope".into()))
        );
    }
}
