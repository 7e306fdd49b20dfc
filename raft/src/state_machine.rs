//! The metadata state machine: openraft's `RaftStateMachine` (storage v2).
//!
//! State lives in memory and is made durable by the Raft log plus the
//! snapshot file (`snapshot`). On open the snapshot is loaded; openraft then
//! re-applies the log after it once the leader commits.
//!
//! Placement is decided here, in `apply`, so every replica computes the same
//! answer from the replicated data alone:
//!
//! - shard: each new partition goes to the shard holding the fewest
//!   partitions, ties to the lowest shard index (the same index on every
//!   node);
//! - replicas: with replication factor r, the live (registered, unfenced)
//!   brokers sorted by id, r of them starting at `(entry index + partition)
//!   % live`, so successive topics and partitions spread their leaders
//!   (`replicas[0]`) over the nodes; leader = `replicas[0]`, ISR = replicas,
//!   epoch 0. An explicit assignment is validated and used as given.
//!   Entries written before any broker registered (a one-voter group's old
//!   log) place on this node alone, as they did when written.
//!
//! Broker entries (register, fence, unfence) and ISR changes are applied
//! here too (see `MetaRequest`); fencing and unfencing are logged once per
//! event at info, never per partition. A topic with
//! `unclean.leader.election.enable=true` whose partition is left without
//! an in-sync leader by a fencing gets a live out-of-sync replica as
//! leader (alone in the ISR, epoch + 1), also when that replica is
//! unfenced later.
//!
//! Leader elections (`ElectLeaders`) and partition reassignments
//! (`Reassign`) answer per partition. A reassignment in progress is kept
//! in `reassignments` (published with the view, in the snapshot): the
//! partition's replicas are the target followed by the original replicas
//! not in it; the `AlterIsr` whose ISR holds every target replica
//! completes it in the same apply (replicas := target, ISR := ISR ∩
//! target, a removed leader hands over to the first in-sync target
//! replica, epoch + 1); a cancellation restores the original replicas.
//!
//! Security entries (`AlterScramCredentials`, `CreateAcls`, `DeleteAcls`,
//! `AlterClientQuotas`) are applied by `security` and answered per item;
//! each is logged once, with counts only (never user names or keys).
//!
//! After each applied batch a new immutable `MetadataView` is published
//! through `Published`. The topics are a persistent map (`TopicMap`):
//! publishing clones its root (O(1)); each change copied O(log topics)
//! nodes, and the new view shares every other node with the old one.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, RaftSnapshotBuilder, StorageIOError};
use tokio::sync::watch;

use crate::security::acl::Acls;
use crate::security::quota::Quotas;
use crate::security::scram::{self, ScramUsers, UserScram};
use crate::security::SecurityError;
use crate::snapshot::{self, SnapshotBody};
use crate::types::{
    producer_id_block_start, BrokerMap, BrokerMeta, Election, Entry, LogId, MetaError, MetaRequest,
    MetaResponse, MetadataView, PartitionMeta, Reassignment, ReassignmentMap, SnapshotData,
    SnapshotMeta, StorageError, StoredMembership, TopicIdMap, TopicMap, TopicMeta, TypeConfig,
    NO_LEADER,
};

/// Topic config that lets a partition without an in-sync leader be led by
/// an out-of-sync replica (records may be lost).
pub const UNCLEAN_LEADER_ELECTION: &str = "unclean.leader.election.enable";

/// Whether `topic` enables unclean leader election.
fn unclean_enabled(topic: &TopicMeta) -> bool {
    topic
        .configs
        .get(UNCLEAN_LEADER_ELECTION)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

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

    pub(crate) fn peek<R>(&self, f: impl FnOnce(&MetadataView) -> R) -> R {
        f(&self.view.load())
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
    /// Registered brokers; shared with the published views.
    brokers: BrokerMap,
    /// Reassignments in progress; shared with the published views.
    reassignments: ReassignmentMap,
    /// SCRAM credentials, ACLs and client quotas; shared with the views.
    users: ScramUsers,
    acls: Acls,
    quotas: Quotas,
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
            brokers: BrokerMap::new(),
            reassignments: ReassignmentMap::new(),
            users: ScramUsers::new(),
            acls: Acls::default(),
            quotas: Quotas::default(),
        }
    }

    fn from_snapshot(shards: u32, meta: &SnapshotMeta, body: SnapshotBody) -> Data {
        let mut data = Data::new(shards);
        data.last_applied = meta.last_log_id;
        data.membership = meta.last_membership.clone();
        for broker in body.brokers {
            data.brokers.insert(broker.id, Arc::new(broker));
        }
        for topic in body.topics {
            data.charge(&topic, 1);
            let name: Arc<str> = Arc::from(topic.name.as_str());
            data.topic_ids.insert(topic.id, Arc::clone(&name));
            data.topics.insert(name, Arc::new(topic));
        }
        for (topic, partition, r) in body.reassignments {
            data.reassignments
                .insert((Arc::from(topic.as_str()), partition), Arc::new(r));
        }
        for (user, credential) in body.scram {
            let mut scram = data
                .users
                .get(user.as_str())
                .map_or_else(UserScram::default, |u| UserScram::clone(u));
            scram.set(credential);
            data.users.insert(user, Arc::new(scram));
        }
        data.acls = Acls::from_bindings(body.acls);
        data.quotas = Quotas::from_entries(
            body.quotas
                .into_iter()
                .map(|(entity, values)| (entity, values.into_iter().collect())),
        );
        data
    }

    /// The snapshot data: every replicated item, copied (O(items)).
    fn snapshot_body(&self) -> SnapshotBody {
        SnapshotBody {
            topics: self.topics.values().map(|t| TopicMeta::clone(t)).collect(),
            brokers: self
                .brokers
                .values()
                .map(|b| BrokerMeta::clone(b))
                .collect(),
            reassignments: self
                .reassignments
                .iter()
                .map(|((t, p), r)| (t.to_string(), *p, Reassignment::clone(r)))
                .collect(),
            scram: self
                .users
                .iter()
                .flat_map(|(user, s)| s.credentials().map(|c| (user.clone(), c.clone())))
                .collect(),
            acls: self.acls.bindings(),
            quotas: self
                .quotas
                .entities()
                .iter()
                .map(|(e, values)| {
                    let values = values.iter().map(|(k, v)| (k.clone(), *v)).collect();
                    (e.clone(), values)
                })
                .collect(),
        }
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

    fn create(
        &mut self,
        limits: &Placement,
        req: CreateArgs,
        index: u64,
    ) -> Result<Arc<TopicMeta>, MetaError> {
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
        let replicas = if req.assignment.is_empty() {
            let factor = u64::from(req.replication_factor);
            self.placed_replicas(limits, req.partitions, factor, index)?
        } else {
            self.assigned_replicas(req.partitions, &req.assignment)?
        };
        warn_near_limit(self.partitions_total, requested, limit);
        let partitions = replicas
            .into_iter()
            .map(|replicas| self.new_partition(replicas))
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
    fn take_shard(&mut self) -> u32 {
        let (shard, load) = self
            .shard_load
            .iter_mut()
            .enumerate()
            .min_by_key(|(i, load)| (**load, *i))
            .expect("at least one shard");
        *load += 1;
        shard as u32
    }

    /// Whether `id` is a registered, unfenced broker.
    fn is_live(&self, id: u64) -> bool {
        self.brokers.get(&id).is_some_and(|b| !b.fenced)
    }

    /// A new partition on the least loaded shard: led by its first live
    /// replica, with the live replicas in sync (all of them when placed by
    /// the controller; without live ones: no leader, every replica in the
    /// ISR).
    fn new_partition(&mut self, replicas: Vec<u64>) -> PartitionMeta {
        let shard = self.take_shard();
        let live: Vec<u64> = if self.brokers.is_empty() {
            replicas.clone() // Written before brokers registered.
        } else {
            replicas
                .iter()
                .copied()
                .filter(|&id| self.is_live(id))
                .collect()
        };
        let (leader, isr) = match live.first() {
            Some(&leader) => (leader, live),
            None => (NO_LEADER, replicas.clone()),
        };
        PartitionMeta {
            shard,
            leader,
            leader_epoch: 0,
            replicas,
            isr,
        }
    }

    /// Replica lists of `count` new partitions with `factor` replicas each,
    /// over the live brokers (sorted by id), starting at a rotating offset.
    fn placed_replicas(
        &self,
        limits: &Placement,
        count: u32,
        factor: u64,
        index: u64,
    ) -> Result<Vec<Vec<u64>>, MetaError> {
        if self.brokers.is_empty() && self.membership.membership().voter_ids().nth(1).is_none() {
            // A one-voter group's entries from before brokers registered:
            // this node alone, as when they were written.
            return Ok(vec![vec![limits.node_id]; count as usize]);
        }
        let live: Vec<u64> = self
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| b.id)
            .collect();
        let available = live.len() as u64;
        if factor == 0 || factor > available {
            return Err(MetaError::InvalidReplicationFactor {
                requested: factor,
                available,
            });
        }
        let n = live.len() as u64;
        Ok((0..u64::from(count))
            .map(|i| {
                let start = index.wrapping_add(i) % n;
                (0..factor)
                    .map(|j| live[((start + j) % n) as usize])
                    .collect()
            })
            .collect())
    }

    /// Validates an explicit assignment: one non-empty list per partition,
    /// all of one length, of registered brokers, without duplicates.
    fn assigned_replicas(
        &self,
        partitions: u32,
        assignment: &[Vec<u64>],
    ) -> Result<Vec<Vec<u64>>, MetaError> {
        let bad = |msg: String| Err(MetaError::InvalidReplicaAssignment(msg));
        if assignment.len() != partitions as usize {
            return bad(format!(
                "{} replica lists for {partitions} partitions",
                assignment.len()
            ));
        }
        let width = assignment.first().map_or(0, Vec::len);
        for (i, list) in assignment.iter().enumerate() {
            if list.is_empty() {
                return bad(format!("partition {i} has no replicas"));
            }
            if list.len() != width {
                return bad(format!(
                    "partition {i} has {} replicas, partition 0 has {width}",
                    list.len()
                ));
            }
            let mut seen = BTreeSet::new();
            for &id in list {
                if !self.brokers.contains_key(&id) {
                    return bad(format!("broker {id} (partition {i}) is not registered"));
                }
                if !seen.insert(id) {
                    return bad(format!("broker {id} appears twice in partition {i}"));
                }
            }
        }
        Ok(assignment.to_vec())
    }

    /// Adds partitions to a topic up to `partitions` in total, placed by
    /// the controller or, when `assignment` is not empty, on its replica
    /// lists (one per new partition, as many replicas as the topic's
    /// partitions have, registered brokers only).
    fn grow(
        &mut self,
        limits: &Placement,
        name: &str,
        partitions: u32,
        assignment: &[Vec<u64>],
        index: u64,
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
        let factor = old.partitions.first().map_or(1, |p| p.replicas.len()) as u64;
        let mut topic = TopicMeta::clone(old);
        let replicas = if assignment.is_empty() {
            self.placed_replicas(limits, requested as u32, factor, index)?
        } else {
            let lists = self.assigned_replicas(requested as u32, assignment)?;
            let width = lists.first().map_or(0, Vec::len) as u64;
            if width != factor {
                return Err(MetaError::InvalidReplicaAssignment(format!(
                    "the new partitions have {width} replicas, the topic's have {factor}"
                )));
            }
            lists
        };
        for replicas in replicas {
            topic.partitions.push(self.new_partition(replicas));
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
        for i in 0..topic.partitions.len() {
            self.reassignments.remove(&(Arc::from(name), i as u32));
        }
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
            reassignments: self.reassignments.clone(),
            users: self.users.clone(),
            acls: self.acls.clone(),
            quotas: self.quotas.clone(),
        }
    }

    /// Broker registration, fencing and ISR changes. `replay`: applied
    /// before the last restart (logged at debug only).
    fn apply_cluster(&mut self, req: MetaRequest, replay: bool) -> Result<(), MetaError> {
        match req {
            MetaRequest::RegisterBroker {
                id,
                host,
                port,
                endpoints,
            } => {
                let was_fenced = self.brokers.get(&id).is_some_and(|b| b.fenced);
                let broker = BrokerMeta {
                    id,
                    host,
                    port,
                    fenced: false,
                    endpoints,
                };
                let led = if was_fenced {
                    self.lead_leaderless(id)
                } else {
                    0
                };
                if replay {
                    tracing::debug!(id, "metadata: replayed broker registration");
                } else {
                    tracing::info!(id, host = %broker.host, port, leaderships = led, "metadata: broker registered");
                }
                self.brokers.insert(id, Arc::new(broker));
                Ok(())
            }
            MetaRequest::FenceBroker { id } => {
                let broker = self.registered(id)?;
                if broker.fenced {
                    return Ok(());
                }
                self.brokers.insert(
                    id,
                    Arc::new(BrokerMeta {
                        fenced: true,
                        ..BrokerMeta::clone(&broker)
                    }),
                );
                let live: BTreeSet<u64> = self
                    .brokers
                    .values()
                    .filter(|b| !b.fenced)
                    .map(|b| b.id)
                    .collect();
                let (mut moved, mut orphaned, mut shrunk) = (0u64, 0u64, 0u64);
                let mut unclean = 0u64;
                self.update_partitions(|topic, p| {
                    let mut changed = false;
                    let led_by_it = p.leader == id;
                    if led_by_it {
                        let next = p.isr.iter().copied().find(|r| *r != id && live.contains(r));
                        p.leader = next.unwrap_or(NO_LEADER);
                        p.leader_epoch = p.leader_epoch.saturating_add(1);
                        if next.is_some() {
                            moved += 1;
                        } else {
                            orphaned += 1;
                        }
                        changed = true;
                    }
                    if p.isr.len() > 1 && p.isr.contains(&id) {
                        p.isr.retain(|r| *r != id);
                        shrunk += 1;
                        changed = true;
                    }
                    if p.leader == NO_LEADER && unclean_enabled(topic) {
                        let any = p.replicas.iter().copied().find(|r| live.contains(r));
                        if let Some(r) = any {
                            if led_by_it {
                                orphaned -= 1; // Counted above; led after all.
                            } else {
                                p.leader_epoch = p.leader_epoch.saturating_add(1);
                            }
                            elect_unclean(p, r);
                            unclean += 1;
                            changed = true;
                        }
                    }
                    changed
                });
                if replay {
                    tracing::debug!(id, "metadata: replayed broker fencing");
                } else {
                    tracing::info!(
                        id,
                        leaderships_moved = moved,
                        partitions_without_leader = orphaned,
                        isr_shrunk = shrunk,
                        unclean_elections = unclean,
                        "metadata: broker fenced (lease expired)"
                    );
                }
                Ok(())
            }
            MetaRequest::UnfenceBroker { id } => {
                let broker = self.registered(id)?;
                let was_fenced = broker.fenced;
                if was_fenced {
                    self.brokers.insert(
                        id,
                        Arc::new(BrokerMeta {
                            fenced: false,
                            ..BrokerMeta::clone(&broker)
                        }),
                    );
                }
                let led = self.lead_leaderless(id);
                if replay || !was_fenced {
                    tracing::debug!(id, leaderships = led, "metadata: broker unfenced");
                } else {
                    tracing::info!(id, leaderships = led, "metadata: broker unfenced");
                }
                Ok(())
            }
            MetaRequest::AlterIsr {
                topic,
                partition,
                leader,
                leader_epoch,
                isr,
            } => self.alter_isr(&topic, partition, leader, leader_epoch, isr),
            other => Err(MetaError::Internal(format!(
                "not a cluster entry: {other:?}"
            ))),
        }
    }

    fn registered(&self, id: u64) -> Result<Arc<BrokerMeta>, MetaError> {
        self.brokers
            .get(&id)
            .cloned()
            .ok_or_else(|| MetaError::Internal(format!("broker {id} is not registered")))
    }

    /// Gives `id` every leaderless partition whose ISR holds it (epoch + 1),
    /// and those it replicates out of sync when their topic enables
    /// unclean leader election.
    fn lead_leaderless(&mut self, id: u64) -> u64 {
        let mut led = 0;
        self.update_partitions(|topic, p| {
            if p.leader != NO_LEADER {
                return false;
            }
            if p.isr.contains(&id) {
                p.leader = id;
                p.leader_epoch = p.leader_epoch.saturating_add(1);
            } else if p.replicas.contains(&id) && unclean_enabled(topic) {
                p.leader_epoch = p.leader_epoch.saturating_add(1);
                elect_unclean(p, id);
            } else {
                return false;
            }
            led += 1;
            true
        });
        led
    }

    /// Runs `change` on every partition (with its topic); topics with a
    /// changed partition are replaced (the others stay shared with earlier
    /// views).
    fn update_partitions(
        &mut self,
        mut change: impl FnMut(&TopicMeta, &mut PartitionMeta) -> bool,
    ) {
        let mut changed = Vec::new();
        for (name, topic) in &self.topics {
            let mut copy: Option<TopicMeta> = None;
            for (i, p) in topic.partitions.iter().enumerate() {
                let mut next = p.clone();
                if change(topic, &mut next) {
                    copy.get_or_insert_with(|| TopicMeta::clone(topic))
                        .partitions[i] = next;
                }
            }
            if let Some(copy) = copy {
                changed.push((Arc::clone(name), Arc::new(copy)));
            }
        }
        for (name, topic) in changed {
            self.topics.insert(name, topic);
        }
    }

    fn alter_isr(
        &mut self,
        topic: &str,
        partition: u32,
        leader: u64,
        leader_epoch: i32,
        isr: Vec<u64>,
    ) -> Result<(), MetaError> {
        let old = self
            .topics
            .get(topic)
            .ok_or_else(|| MetaError::UnknownTopic(topic.to_string()))?;
        let Some(p) = old.partitions.get(partition as usize) else {
            return Err(MetaError::InvalidPartitions(format!(
                "topic '{topic}' has no partition {partition}"
            )));
        };
        if p.leader_epoch != leader_epoch {
            return Err(MetaError::StaleLeaderEpoch {
                current: p.leader_epoch,
                got: leader_epoch,
            });
        }
        let refuse = |msg: String| {
            Err(MetaError::Internal(format!(
                "ISR change of {topic}-{partition} refused: {msg}"
            )))
        };
        if p.leader != leader || leader == NO_LEADER {
            return refuse(format!("node {leader} does not lead it"));
        }
        if !isr.contains(&leader) {
            return refuse(format!("the new ISR {isr:?} lacks the leader {leader}"));
        }
        let mut seen = BTreeSet::new();
        for &id in &isr {
            if !p.replicas.contains(&id) {
                return refuse(format!("node {id} holds no replica"));
            }
            if !seen.insert(id) {
                return refuse(format!("node {id} appears twice"));
            }
            if !p.isr.contains(&id) && !self.is_live(id) {
                return refuse(format!("node {id} is fenced or not registered"));
            }
        }
        tracing::debug!(topic, partition, ?isr, "metadata: ISR changed");
        let mut copy = TopicMeta::clone(old);
        let key: (Arc<str>, u32) = (Arc::from(topic), partition);
        let done = self
            .reassignments
            .get(&key)
            .filter(|r| r.target.iter().all(|t| isr.contains(t)))
            .cloned();
        let p = &mut copy.partitions[partition as usize];
        p.isr = isr;
        if let Some(r) = done {
            // Every target replica is in sync: the reassignment completes.
            let live = self.live_ids();
            if let Err(e) = set_replicas(p, r.target.clone(), &live) {
                return Err(MetaError::Internal(e));
            }
            self.reassignments.remove(&key);
            tracing::debug!(topic, partition, replicas = ?p.replicas, leader = p.leader, "metadata: reassignment completed");
        }
        self.topics.insert(Arc::from(topic), Arc::new(copy));
        Ok(())
    }

    /// The registered, unfenced brokers.
    fn live_ids(&self) -> BTreeSet<u64> {
        self.brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| b.id)
            .collect()
    }

    /// A copy of the partition to change, from `changed` (copies of topics
    /// already changed by this entry) or the current topics.
    fn partition_of<'c>(
        &self,
        changed: &'c mut BTreeMap<Arc<str>, TopicMeta>,
        topic: &str,
        partition: u32,
    ) -> Result<&'c mut PartitionMeta, MetaError> {
        if !changed.contains_key(topic) {
            let t = self
                .topics
                .get(topic)
                .ok_or_else(|| MetaError::UnknownTopic(topic.to_string()))?;
            changed.insert(Arc::from(topic), TopicMeta::clone(t));
        }
        let t = changed.get_mut(topic).expect("inserted above");
        t.partitions.get_mut(partition as usize).ok_or_else(|| {
            MetaError::UnknownTopic(format!("{topic} (it has no partition {partition})"))
        })
    }

    /// Stores the topics an entry changed.
    fn store(&mut self, changed: BTreeMap<Arc<str>, TopicMeta>) {
        for (name, topic) in changed {
            self.topics.insert(name, Arc::new(topic));
        }
    }

    /// ElectLeaders: one result per partition, in order.
    fn elect(
        &mut self,
        election: Election,
        partitions: Vec<(String, u32)>,
    ) -> Vec<Result<(), MetaError>> {
        let live = self.live_ids();
        let mut changed = BTreeMap::new();
        let mut elected = 0u64;
        let results = partitions
            .into_iter()
            .map(|(topic, partition)| {
                let p = self.partition_of(&mut changed, &topic, partition)?;
                let name = || format!("{topic}-{partition}");
                match election {
                    Election::Preferred => {
                        let preferred = p.replicas.first().copied().unwrap_or(NO_LEADER);
                        if p.leader == preferred {
                            return Err(MetaError::ElectionNotNeeded(format!(
                                "{} is already led by its preferred replica {preferred}",
                                name()
                            )));
                        }
                        if !p.isr.contains(&preferred) || !live.contains(&preferred) {
                            return Err(MetaError::PreferredLeaderNotAvailable(format!(
                                "the preferred replica {preferred} of {} is not in sync or not live (ISR {:?})",
                                name(),
                                p.isr
                            )));
                        }
                        p.leader = preferred;
                        p.leader_epoch = p.leader_epoch.saturating_add(1);
                    }
                    Election::Unclean => {
                        if p.leader != NO_LEADER {
                            return Err(MetaError::ElectionNotNeeded(format!(
                                "{} has a leader ({})",
                                name(),
                                p.leader
                            )));
                        }
                        let in_sync = p.isr.iter().copied().find(|r| live.contains(r));
                        let any = p.replicas.iter().copied().find(|r| live.contains(r));
                        p.leader_epoch = p.leader_epoch.saturating_add(1);
                        match (in_sync, any) {
                            (Some(r), _) => p.leader = r,
                            (None, Some(r)) => elect_unclean(p, r),
                            (None, None) => {
                                p.leader_epoch = p.leader_epoch.saturating_sub(1);
                                return Err(MetaError::EligibleLeadersNotAvailable(format!(
                                    "no replica of {} is live (replicas {:?})",
                                    name(),
                                    p.replicas
                                )));
                            }
                        }
                    }
                }
                elected += 1;
                Ok(())
            })
            .collect();
        self.store(changed);
        if elected > 0 {
            tracing::info!(?election, partitions = elected, "metadata: leaders elected");
        }
        results
    }

    /// AlterPartitionReassignments: one result per partition, in order.
    fn reassign(
        &mut self,
        moves: Vec<(String, u32, Option<Vec<u64>>)>,
    ) -> Vec<Result<(), MetaError>> {
        let live = self.live_ids();
        let mut changed = BTreeMap::new();
        let (mut started, mut cancelled) = (0u64, 0u64);
        let mut results = Vec::with_capacity(moves.len());
        for (topic, partition, target) in moves {
            let result = (|| {
                let key: (Arc<str>, u32) = (Arc::from(topic.as_str()), partition);
                let ongoing = self.reassignments.get(&key).cloned();
                if let Some(target) = &target {
                    self.check_target(target)?;
                }
                let p = self.partition_of(&mut changed, &topic, partition)?;
                let bad = MetaError::InvalidReplicaAssignment;
                match target {
                    None => {
                        let Some(r) = ongoing else {
                            return Err(MetaError::NoReassignmentInProgress(format!(
                                "{topic}-{partition} is not being reassigned"
                            )));
                        };
                        set_replicas(p, r.original.clone(), &live).map_err(bad)?;
                        self.reassignments.remove(&key);
                        cancelled += 1;
                    }
                    Some(target) => {
                        let original =
                            ongoing.map_or_else(|| p.replicas.clone(), |r| r.original.clone());
                        let adding: Vec<u64> = target
                            .iter()
                            .copied()
                            .filter(|t| !original.contains(t))
                            .collect();
                        let removing: Vec<u64> = original
                            .iter()
                            .copied()
                            .filter(|o| !target.contains(o))
                            .collect();
                        let mut replicas = target.clone();
                        replicas.extend(removing.iter().copied());
                        set_replicas(p, replicas, &live).map_err(bad)?;
                        if target.iter().all(|t| p.isr.contains(t)) {
                            // Already in sync (a reorder or a removal): done.
                            set_replicas(p, target, &live).map_err(bad)?;
                            self.reassignments.remove(&key);
                        } else {
                            let r = Reassignment {
                                target,
                                original,
                                adding,
                                removing,
                            };
                            self.reassignments.insert(key, Arc::new(r));
                        }
                        started += 1;
                    }
                }
                Ok(())
            })();
            results.push(result);
        }
        self.store(changed);
        tracing::info!(
            started,
            cancelled,
            in_progress = self.reassignments.len(),
            "metadata: partition reassignments"
        );
        results
    }

    /// SCRAM credentials, ACLs and client quotas: one result per item.
    /// Logged once per entry (counts only, never names or keys).
    fn apply_security(&mut self, req: MetaRequest, replay: bool) -> MetaResponse {
        let (what, response, done, refused) = match req {
            MetaRequest::AlterScramCredentials {
                upsertions,
                deletions,
                if_absent,
            } => {
                let r = scram::alter(&mut self.users, upsertions, deletions, if_absent);
                let all = r.upsertions.iter().chain(&r.deletions);
                let (ok, err) = count_results(all);
                (
                    "SCRAM credentials altered",
                    MetaResponse::ScramAltered(r),
                    ok,
                    err,
                )
            }
            MetaRequest::CreateAcls(bindings) => {
                let r = self.acls.create(&bindings);
                let (ok, err) = count_results(r.iter());
                ("ACLs created", MetaResponse::AclsCreated(r), ok, err)
            }
            MetaRequest::DeleteAcls(filters) => {
                let r = self.acls.delete(&filters);
                let deleted = r.iter().map(Vec::len).sum::<usize>() as u64;
                ("ACLs deleted", MetaResponse::AclsDeleted(r), deleted, 0)
            }
            MetaRequest::AlterClientQuotas(alterations) => {
                let r = self.quotas.alter(&alterations);
                let (ok, err) = count_results(r.iter());
                (
                    "client quotas altered",
                    MetaResponse::QuotasAltered(r),
                    ok,
                    err,
                )
            }
            other => {
                let e = MetaError::Internal(format!("not a security entry: {other:?}"));
                return MetaResponse::Done(Err(e));
            }
        };
        if replay {
            tracing::debug!(done, refused, "metadata: replayed: {what}");
        } else {
            tracing::info!(
                done,
                refused,
                users = self.users.len(),
                acls = self.acls.len(),
                quota_entities = self.quotas.len(),
                "metadata: {what}"
            );
        }
        response
    }

    /// A reassignment target: replicas on registered brokers, none twice.
    fn check_target(&self, target: &[u64]) -> Result<(), MetaError> {
        let bad = |m: String| Err(MetaError::InvalidReplicaAssignment(m));
        if target.is_empty() {
            return bad("a partition needs at least one replica".into());
        }
        let mut seen = BTreeSet::new();
        for &id in target {
            if !self.brokers.contains_key(&id) {
                return bad(format!("broker {id} is not registered"));
            }
            if !seen.insert(id) {
                return bad(format!("broker {id} is listed twice"));
            }
        }
        Ok(())
    }
}

/// (succeeded, refused) among per-item results.
fn count_results<'a>(results: impl Iterator<Item = &'a Result<(), SecurityError>>) -> (u64, u64) {
    results.fold((0, 0), |(ok, err), r| match r {
        Ok(()) => (ok + 1, err),
        Err(_) => (ok, err + 1),
    })
}

/// An unclean election: `leader` (live, maybe out of sync) leads alone in
/// the ISR; the caller bumps the epoch.
fn elect_unclean(p: &mut PartitionMeta, leader: u64) {
    p.leader = leader;
    p.isr = vec![leader];
}

/// Gives the partition the replica list `replicas`: the ISR keeps its
/// members that are in it (it must keep one), and a leader not in it hands
/// over to the first in-sync live replica of the list (or to nobody),
/// epoch + 1.
fn set_replicas(
    p: &mut PartitionMeta,
    replicas: Vec<u64>,
    live: &BTreeSet<u64>,
) -> Result<(), String> {
    let isr: Vec<u64> = p
        .isr
        .iter()
        .copied()
        .filter(|r| replicas.contains(r))
        .collect();
    if isr.is_empty() {
        return Err(format!(
            "none of the replicas {replicas:?} is in sync (ISR {:?})",
            p.isr
        ));
    }
    if p.leader != NO_LEADER && !replicas.contains(&p.leader) {
        p.leader = replicas
            .iter()
            .copied()
            .find(|r| isr.contains(r) && live.contains(r))
            .unwrap_or(NO_LEADER);
        p.leader_epoch = p.leader_epoch.saturating_add(1);
    }
    p.isr = isr;
    p.replicas = replicas;
    Ok(())
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
    replication_factor: u16,
    assignment: Vec<Vec<u64>>,
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
                Data::from_snapshot(limits.shards, &meta, snapshot::decode(&bytes)?)
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
            ) => {
                let replay = self.replay_until.is_some_and(|r| log_id.index <= r);
                MetaResponse::Done(self.data.apply_cluster(req, replay))
            }
            EntryPayload::Normal(MetaRequest::ElectLeaders {
                election,
                partitions,
            }) => MetaResponse::Each(self.data.elect(election, partitions)),
            EntryPayload::Normal(MetaRequest::Reassign { moves }) => {
                MetaResponse::Each(self.data.reassign(moves))
            }
            EntryPayload::Normal(
                req @ (MetaRequest::AlterScramCredentials { .. }
                | MetaRequest::CreateAcls(_)
                | MetaRequest::DeleteAcls(_)
                | MetaRequest::AlterClientQuotas(_)),
            ) => {
                let replay = self.replay_until.is_some_and(|r| log_id.index <= r);
                self.data.apply_security(req, replay)
            }
            EntryPayload::Normal(req) => {
                let action = match req {
                    MetaRequest::CreateTopic { .. } => "created",
                    MetaRequest::DeleteTopic { .. } => "deleted",
                    MetaRequest::ReserveProducerIds => unreachable!("answered above"),
                    MetaRequest::CreatePartitions { .. } => "grown",
                    MetaRequest::SetTopicConfigs { .. } => "reconfigured",
                    _ => unreachable!("answered above"),
                };
                let result = self.apply_request(req, log_id.index);
                self.log_result(log_id, action, &result);
                MetaResponse::Topic(result)
            }
        }
    }

    fn apply_request(&mut self, req: MetaRequest, index: u64) -> Result<Arc<TopicMeta>, MetaError> {
        match req {
            MetaRequest::CreateTopic {
                name,
                id,
                partitions,
                configs,
                created_ms,
                replication_factor,
                assignment,
            } => {
                let args = CreateArgs {
                    name,
                    id,
                    partitions,
                    configs,
                    created_ms,
                    replication_factor,
                    assignment,
                };
                self.data.create(&self.limits, args, index)
            }
            MetaRequest::DeleteTopic { name } => self.data.delete(&name),
            MetaRequest::ReserveProducerIds => {
                Err(MetaError::Internal("answered in apply_one".into()))
            }
            MetaRequest::CreatePartitions {
                name,
                partitions,
                assignment,
            } => self
                .data
                .grow(&self.limits, &name, partitions, &assignment, index),
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
        let body = self.data.snapshot_body();
        let bytes =
            snapshot::encode(&body).map_err(|e| StorageIOError::write_snapshot(None, sm_err(e)))?;
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
        let body = snapshot::decode(&bytes).map_err(read_err)?;
        snapshot::write(&self.dir, meta, &bytes)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), sm_err(e)))?;
        self.data = Data::from_snapshot(self.limits.shards, meta, body);
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
            replication_factor: 1,
            assignment: Vec::new(),
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
            d.create(&l, args(n, 2), 0).expect("create");
        }
        assert_index_matches(&d);
        for n in names.iter().step_by(3) {
            let gone = d.delete(n).expect("delete");
            assert!(d.view(1).topic_by_id(&gone.id).is_none());
        }
        d.grow(&l, "t1", 5, &[], 0).expect("grow");
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
        d.create(&l, again, 0).expect("recreate t0");
        assert!(d.view(1).topic_by_id(&id_of("t0")).is_none());
        assert_index_matches(&d);
        let mut dup = args("other", 1);
        dup.id = [0xee; 16];
        assert!(matches!(d.create(&l, dup, 0), Err(MetaError::Internal(_))));
        // Snapshot round trip: encode, decode, rebuild.
        let body = SnapshotBody {
            topics: d.topics.values().map(|t| TopicMeta::clone(t)).collect(),
            ..SnapshotBody::default()
        };
        let bytes = snapshot::encode(&body).expect("encode");
        let back = Data::from_snapshot(
            2,
            &SnapshotMeta::default(),
            snapshot::decode(&bytes).expect("decode"),
        );
        assert_index_matches(&back);
        assert_eq!(back.topic_ids, d.topic_ids);
        assert_eq!(back.topics, d.topics);
    }

    /// Security entries applied, then a snapshot round trip: the same
    /// users, ACLs and quotas; entries with bad content get per-item errors.
    #[test]
    fn security_entries_apply_and_survive_a_snapshot() {
        use crate::security::acl::*;
        use crate::security::quota::*;
        use crate::security::scram::*;
        let mut d = Data::new(1);
        let credential = |mechanism: ScramMechanism, iterations| ScramCredential {
            mechanism,
            iterations,
            salt: vec![9; 8],
            stored_key: vec![1; mechanism.hash_bytes()],
            server_key: vec![2; mechanism.hash_bytes()],
        };
        let r = d.apply_security(
            MetaRequest::AlterScramCredentials {
                upsertions: vec![
                    ("alice".into(), credential(ScramMechanism::Sha256, 4096)),
                    ("bob".into(), credential(ScramMechanism::Sha512, 1)),
                ],
                deletions: vec![("carol".into(), ScramMechanism::Sha256)],
                if_absent: false,
            },
            false,
        );
        let MetaResponse::ScramAltered(r) = r else {
            panic!("{r:?}")
        };
        assert_eq!(r.upsertions[0], Ok(()));
        assert!(r.upsertions[1].is_err() && r.deletions[0].is_err());
        let acl = |name: &str, pattern_type| AclBinding {
            resource_type: AclResourceType::Group,
            resource_name: name.into(),
            pattern_type,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: AclOperation::Read,
            permission: AclPermission::Allow,
        };
        let r = d.apply_security(
            MetaRequest::CreateAcls(vec![
                acl("g", AclPatternType::Literal),
                acl("", AclPatternType::Literal),
                acl("*", AclPatternType::Prefixed),
                acl("team-", AclPatternType::Prefixed),
            ]),
            false,
        );
        let MetaResponse::AclsCreated(r) = r else {
            panic!("{r:?}")
        };
        assert_eq!(r.iter().filter(|r| r.is_ok()).count(), 2, "{r:?}");
        let entity = QuotaEntity {
            user: None,
            client_id: Some(QuotaName::Named("c".into())),
            ip: None,
        };
        let ops = vec![(PRODUCER_BYTE_RATE.to_string(), Some(1024.0))];
        let weird = vec![(PRODUCER_BYTE_RATE.to_string(), Some(f64::NAN))];
        let r = d.apply_security(
            MetaRequest::AlterClientQuotas(vec![(entity.clone(), ops), (entity.clone(), weird)]),
            true,
        );
        let MetaResponse::QuotasAltered(r) = r else {
            panic!("{r:?}")
        };
        assert!(r[0].is_ok() && r[1].is_err());
        // Not a security entry: an error, no panic.
        let r = d.apply_security(MetaRequest::ReserveProducerIds, false);
        assert!(matches!(r, MetaResponse::Done(Err(MetaError::Internal(_)))));
        let view = d.view(1);
        assert_eq!(view.users.len(), 1);
        assert_eq!(view.acls.len(), 2);
        assert_eq!(
            view.quotas.resolve("u", "c", PRODUCER_BYTE_RATE),
            Some(1024.0)
        );
        let bytes = snapshot::encode(&d.snapshot_body()).expect("encode");
        let back = Data::from_snapshot(
            1,
            &SnapshotMeta::default(),
            snapshot::decode(&bytes).expect("decode"),
        );
        assert_eq!(back.users, d.users);
        assert_eq!(back.acls, d.acls);
        assert_eq!(back.quotas, d.quotas);
        let r = d.apply_security(MetaRequest::DeleteAcls(vec![AclFilter::any()]), false);
        let MetaResponse::AclsDeleted(r) = r else {
            panic!("{r:?}")
        };
        assert_eq!(r[0].len(), 2);
        assert!(d.view(1).acls.is_empty());
        assert_eq!(back.acls.len(), 2, "the earlier copy is unchanged");
    }

    /// Log entries are JSON: quota values come back with the same bits
    /// (serde_json's `float_roundtrip`), so every node applies the same.
    #[test]
    fn quota_values_cross_json_exactly() {
        use crate::security::quota::{QuotaEntity, QuotaName};
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut values = vec![
            0.1 + 0.2,
            1e-300,
            5e-324,
            f64::MAX,
            123_456_789.123_456_78,
            -0.0,
        ];
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x);
            if v.is_finite() {
                values.push(v);
            }
        }
        let entity = QuotaEntity {
            user: Some(QuotaName::Default),
            client_id: None,
            ip: None,
        };
        let ops = values.iter().map(|v| ("k".to_string(), Some(*v))).collect();
        let req = MetaRequest::AlterClientQuotas(vec![(entity, ops)]);
        let json = serde_json::to_vec(&req).expect("json");
        let MetaRequest::AlterClientQuotas(back) = serde_json::from_slice(&json).expect("parse")
        else {
            panic!("another entry");
        };
        for ((_, got), want) in back[0].1.iter().zip(&values) {
            assert_eq!(got.map(f64::to_bits), Some(want.to_bits()), "{want:e}");
        }
    }

    #[test]
    fn placement_fills_least_loaded_then_lowest_index() {
        let l = limits(3, 100);
        let mut d = Data::new(3);
        let a = d.create(&l, args("a", 2), 0).expect("a");
        assert_eq!(
            a.partitions.iter().map(|p| p.shard).collect::<Vec<_>>(),
            vec![0, 1]
        );
        let b = d.create(&l, args("b", 4), 0).expect("b");
        assert_eq!(
            b.partitions.iter().map(|p| p.shard).collect::<Vec<_>>(),
            vec![2, 0, 1, 2]
        );
        assert_eq!(d.shard_load, vec![2, 2, 2]);
        d.delete("a").expect("delete a");
        assert_eq!(d.shard_load, vec![1, 1, 2]);
        assert_eq!(d.partitions_total, 4);
        let c = d.create(&l, args("c", 1), 0).expect("c");
        assert_eq!(c.partitions[0].shard, 0);
    }

    #[test]
    fn limits_and_duplicates() {
        let l = limits(2, 3);
        let mut d = Data::new(2);
        assert!(matches!(
            d.create(&l, args("z", 0), 0),
            Err(MetaError::InvalidPartitions(_))
        ));
        assert!(matches!(
            d.create(&l, args("z", 7), 0),
            Err(MetaError::InvalidPartitions(_))
        ));
        d.create(&l, args("a", 4), 0).expect("a");
        assert_eq!(
            d.create(&l, args("a", 1), 0),
            Err(MetaError::TopicExists("a".into()))
        );
        let err = d.create(&l, args("b", 3), 0).expect_err("over the limit");
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
        d.create(&l, args("b", 2), 0).expect("exactly at the limit");
        assert_eq!(
            d.delete("nope"),
            Err(MetaError::UnknownTopic("nope".into()))
        );
    }

    fn register(d: &mut Data, id: u64) {
        let req = MetaRequest::RegisterBroker {
            id,
            host: format!("h{id}"),
            port: 9000 + id as u16,
            endpoints: Vec::new(),
        };
        d.apply_cluster(req, false).expect("register");
    }

    fn fence(d: &mut Data, id: u64) {
        d.apply_cluster(MetaRequest::FenceBroker { id }, false)
            .expect("fence");
    }

    fn unfence(d: &mut Data, id: u64) {
        d.apply_cluster(MetaRequest::UnfenceBroker { id }, false)
            .expect("unfence");
    }

    fn rf(name: &str, partitions: u32, replication_factor: u16) -> CreateArgs {
        CreateArgs {
            replication_factor,
            ..args(name, partitions)
        }
    }

    fn part(d: &Data, topic: &str, i: usize) -> PartitionMeta {
        d.topics[topic].partitions[i].clone()
    }

    #[test]
    fn replicas_rotate_over_live_brokers() {
        let l = limits(2, 100);
        let mut d = Data::new(2);
        for id in [3, 1, 2] {
            register(&mut d, id);
        }
        let t = d.create(&l, rf("a", 3, 3), 10).expect("create");
        let replicas: Vec<Vec<u64>> = t.partitions.iter().map(|p| p.replicas.clone()).collect();
        // Start at (10 + i) % 3 over [1, 2, 3].
        assert_eq!(replicas, vec![vec![2, 3, 1], vec![3, 1, 2], vec![1, 2, 3]]);
        for p in &t.partitions {
            assert_eq!(p.leader, p.replicas[0]);
            assert_eq!(p.isr, p.replicas);
            assert_eq!(p.leader_epoch, 0);
        }
        assert_eq!(
            t.partitions.iter().map(|p| p.shard).collect::<Vec<_>>(),
            vec![0, 1, 0]
        );
        fence(&mut d, 2);
        assert_eq!(
            d.create(&l, rf("b", 1, 3), 11),
            Err(MetaError::InvalidReplicationFactor {
                requested: 3,
                available: 2
            })
        );
        let b = d.create(&l, rf("b", 2, 2), 11).expect("rf 2 of 2 live");
        assert!(b.partitions.iter().all(|p| !p.replicas.contains(&2)));
        // New partitions get the topic's replica count.
        let grown = d.grow(&l, "b", 4, &[], 12).expect("grow");
        assert!(grown.partitions.iter().all(|p| p.replicas.len() == 2));
        assert_eq!(
            d.grow(&l, "a", 4, &[], 13),
            Err(MetaError::InvalidReplicationFactor {
                requested: 3,
                available: 2
            })
        );
    }

    #[test]
    fn explicit_assignment_is_validated() {
        let l = limits(1, 100);
        let mut d = Data::new(1);
        for id in 1..=3 {
            register(&mut d, id);
        }
        let mut a = args("a", 2);
        a.assignment = vec![vec![3, 1], vec![2, 3]];
        let t = d.create(&l, a, 5).expect("assigned");
        assert_eq!(t.partitions[0].replicas, vec![3, 1]);
        assert_eq!(t.partitions[1].leader, 2);
        let bad = |assignment: Vec<Vec<u64>>, partitions: u32| {
            let mut a = args("b", partitions);
            a.assignment = assignment;
            a
        };
        for (assignment, partitions) in [
            (vec![vec![1]], 2),
            (vec![vec![1], vec![]], 2),
            (vec![vec![1], vec![1, 2]], 2),
            (vec![vec![9]], 1),
            (vec![vec![1, 1]], 1),
        ] {
            let result = d.create(&l, bad(assignment.clone(), partitions), 6);
            assert!(
                matches!(result, Err(MetaError::InvalidReplicaAssignment(_))),
                "{assignment:?}: {result:?}"
            );
        }
        assert!(!d.topics.contains_key("b"));
    }

    #[test]
    fn without_brokers_a_lone_voter_places_on_itself() {
        let l = limits(1, 100);
        let mut d = Data::new(1);
        let t = d.create(&l, rf("old", 2, 1), 3).expect("create");
        assert!(t
            .partitions
            .iter()
            .all(|p| p.replicas == vec![1] && p.leader == 1));
    }

    #[test]
    fn fencing_moves_leaders_and_shrinks_isrs_unfencing_restores_leaders() {
        let l = limits(1, 100);
        let mut d = Data::new(1);
        for id in 1..=3 {
            register(&mut d, id);
        }
        let mut a = args("a", 2);
        a.assignment = vec![vec![1, 2, 3], vec![2, 1, 3]];
        d.create(&l, a, 1).expect("create");
        let mut b = args("b", 1);
        b.assignment = vec![vec![1]];
        d.create(&l, b, 2).expect("create");
        let before = d.topics.clone();
        fence(&mut d, 1);
        assert!(d.brokers[&1].fenced);
        // Led by 1: the next live ISR member leads, epoch + 1, 1 leaves the ISR.
        assert_eq!(
            part(&d, "a", 0),
            PartitionMeta {
                shard: 0,
                leader: 2,
                leader_epoch: 1,
                replicas: vec![1, 2, 3],
                isr: vec![2, 3]
            }
        );
        // Not led by 1: same leader and epoch, 1 leaves the ISR.
        let p1 = part(&d, "a", 1);
        assert_eq!((p1.leader, p1.leader_epoch, p1.isr), (2, 0, vec![2, 3]));
        // 1 was the last ISR member: no leader, it stays in the ISR.
        let p2 = part(&d, "b", 0);
        assert_eq!(
            (p2.leader, p2.leader_epoch, p2.isr),
            (NO_LEADER, 1, vec![1])
        );
        // Fencing again changes nothing.
        let fenced = d.topics.clone();
        fence(&mut d, 1);
        assert_eq!(d.topics, fenced);
        // An ISR member that is fenced is skipped as the next leader.
        fence(&mut d, 2);
        let p0 = part(&d, "a", 0);
        assert_eq!((p0.leader, p0.leader_epoch, p0.isr), (3, 2, vec![3]));
        unfence(&mut d, 1);
        assert!(!d.brokers[&1].fenced);
        let p2 = part(&d, "b", 0);
        assert_eq!((p2.leader, p2.leader_epoch), (1, 2));
        assert_eq!(
            part(&d, "a", 0).leader,
            3,
            "led partitions keep their leader"
        );
        assert_ne!(before, d.topics);
        assert!(matches!(
            d.apply_cluster(MetaRequest::FenceBroker { id: 42 }, false),
            Err(MetaError::Internal(_))
        ));
    }

    #[test]
    fn alter_isr_checks_leader_epoch_and_members() {
        let l = limits(1, 100);
        let mut d = Data::new(1);
        for id in 1..=3 {
            register(&mut d, id);
        }
        let mut a = args("a", 1);
        a.assignment = vec![vec![1, 2, 3]];
        d.create(&l, a, 1).expect("create");
        let alter = |d: &mut Data, leader: u64, epoch: i32, isr: Vec<u64>| {
            let req = MetaRequest::AlterIsr {
                topic: "a".into(),
                partition: 0,
                leader,
                leader_epoch: epoch,
                isr,
            };
            d.apply_cluster(req, false)
        };
        assert_eq!(
            alter(&mut d, 1, 3, vec![1]),
            Err(MetaError::StaleLeaderEpoch { current: 0, got: 3 })
        );
        assert!(matches!(
            alter(&mut d, 2, 0, vec![2]),
            Err(MetaError::Internal(_))
        ));
        assert!(matches!(
            alter(&mut d, 1, 0, vec![2]),
            Err(MetaError::Internal(_))
        ));
        assert!(matches!(
            alter(&mut d, 1, 0, vec![1, 4]),
            Err(MetaError::Internal(_))
        ));
        assert!(matches!(
            alter(&mut d, 1, 0, vec![1, 1]),
            Err(MetaError::Internal(_))
        ));
        assert!(matches!(
            alter(&mut d, 1, 0, vec![]),
            Err(MetaError::Internal(_))
        ));
        alter(&mut d, 1, 0, vec![1, 3]).expect("shrink");
        assert_eq!(part(&d, "a", 0).isr, vec![1, 3]);
        fence(&mut d, 2);
        assert!(
            matches!(
                alter(&mut d, 1, 0, vec![1, 2, 3]),
                Err(MetaError::Internal(_))
            ),
            "a fenced broker does not rejoin the ISR"
        );
        unfence(&mut d, 2);
        alter(&mut d, 1, 0, vec![1, 2, 3]).expect("grow");
        assert_eq!(part(&d, "a", 0).isr, vec![1, 2, 3]);
        assert!(matches!(
            d.apply_cluster(
                MetaRequest::AlterIsr {
                    topic: "nope".into(),
                    partition: 0,
                    leader: 1,
                    leader_epoch: 0,
                    isr: vec![1]
                },
                false
            ),
            Err(MetaError::UnknownTopic(_))
        ));
    }

    #[test]
    fn grown_partitions_take_an_explicit_assignment() {
        let l = limits(1, 100);
        let mut d = Data::new(1);
        for id in 1..=3 {
            register(&mut d, id);
        }
        let mut a = args("a", 1);
        a.assignment = vec![vec![1, 2]];
        d.create(&l, a, 1).expect("create");
        let t = d
            .grow(&l, "a", 3, &[vec![3, 1], vec![2, 3]], 2)
            .expect("grow");
        assert_eq!(t.partitions[1].replicas, vec![3, 1]);
        assert_eq!(
            (t.partitions[2].leader, t.partitions[2].isr.clone()),
            (2, vec![2, 3])
        );
        for bad in [
            vec![vec![1, 2]],             // one list for two partitions
            vec![vec![1], vec![2]],       // not the topic's replica count
            vec![vec![1, 9], vec![2, 3]], // unregistered broker
            vec![vec![1, 1], vec![2, 3]], // twice
        ] {
            let r = d.grow(&l, "a", 5, &bad, 3);
            assert!(
                matches!(r, Err(MetaError::InvalidReplicaAssignment(_))),
                "{bad:?}: {r:?}"
            );
        }
        assert_eq!(d.topics["a"].partitions.len(), 3);
    }

    fn topic_with(d: &mut Data, name: &str, lists: Vec<Vec<u64>>, unclean: bool) {
        let mut a = args(name, lists.len() as u32);
        a.assignment = lists;
        if unclean {
            a.configs
                .insert(UNCLEAN_LEADER_ELECTION.into(), "true".into());
        }
        d.create(&limits(1, 100), a, 1).expect("create");
    }

    fn alter(d: &mut Data, topic: &str, isr: Vec<u64>) -> Result<(), MetaError> {
        let p = part(d, topic, 0);
        d.apply_cluster(
            MetaRequest::AlterIsr {
                topic: topic.into(),
                partition: 0,
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                isr,
            },
            false,
        )
    }

    #[test]
    fn preferred_and_unclean_elections() {
        let mut d = Data::new(1);
        for id in 1..=3 {
            register(&mut d, id);
        }
        topic_with(&mut d, "a", vec![vec![1, 2, 3]], false);
        let one = |t: &str| vec![(t.to_string(), 0)];
        let elect = |d: &mut Data, e: Election, t: &str| d.elect(e, one(t)).remove(0);
        assert!(matches!(
            elect(&mut d, Election::Preferred, "a"),
            Err(MetaError::ElectionNotNeeded(_))
        ));
        fence(&mut d, 1);
        assert_eq!(part(&d, "a", 0).leader, 2);
        // The preferred replica is fenced and out of the ISR.
        assert!(matches!(
            elect(&mut d, Election::Preferred, "a"),
            Err(MetaError::PreferredLeaderNotAvailable(_))
        ));
        unfence(&mut d, 1);
        alter(&mut d, "a", vec![2, 3, 1]).expect("1 back in sync");
        let epoch = part(&d, "a", 0).leader_epoch;
        elect(&mut d, Election::Preferred, "a").expect("preferred");
        let p = part(&d, "a", 0);
        assert_eq!((p.leader, p.leader_epoch), (1, epoch + 1));
        assert!(matches!(
            elect(&mut d, Election::Unclean, "a"),
            Err(MetaError::ElectionNotNeeded(_))
        ));
        // Unclean: a leaderless partition gets a live out-of-sync replica.
        topic_with(&mut d, "b", vec![vec![1, 2]], false);
        alter(&mut d, "b", vec![1]).expect("shrink");
        fence(&mut d, 1);
        let p = part(&d, "b", 0);
        assert_eq!(
            (p.leader, p.isr.clone()),
            (NO_LEADER, vec![1]),
            "clean: no leader"
        );
        let results = d.elect(
            Election::Unclean,
            vec![("b".into(), 0), ("nope".into(), 0), ("b".into(), 7)],
        );
        assert!(results[0].is_ok());
        assert!(matches!(results[1], Err(MetaError::UnknownTopic(_))));
        assert!(matches!(results[2], Err(MetaError::UnknownTopic(_))));
        let q = part(&d, "b", 0);
        assert_eq!(
            (q.leader, q.isr.clone(), q.leader_epoch),
            (2, vec![2], p.leader_epoch + 1)
        );
        fence(&mut d, 2);
        fence(&mut d, 3);
        topic_with(&mut d, "c", vec![vec![2]], false);
        assert!(matches!(
            elect(&mut d, Election::Unclean, "c"),
            Err(MetaError::EligibleLeadersNotAvailable(_))
        ));
    }

    #[test]
    fn fencing_elects_out_of_sync_replicas_when_the_topic_allows_it() {
        let mut d = Data::new(1);
        for id in 1..=3 {
            register(&mut d, id);
        }
        topic_with(&mut d, "clean", vec![vec![1, 2]], false);
        topic_with(&mut d, "dirty", vec![vec![1, 2]], true);
        alter(&mut d, "clean", vec![1]).expect("shrink");
        alter(&mut d, "dirty", vec![1]).expect("shrink");
        fence(&mut d, 1);
        assert_eq!(part(&d, "clean", 0).leader, NO_LEADER);
        let p = part(&d, "dirty", 0);
        assert_eq!((p.leader, p.isr, p.leader_epoch), (2, vec![2], 1));
        // Unfencing an out-of-sync replica of a leaderless unclean topic.
        topic_with(&mut d, "late", vec![vec![3, 1]], true);
        alter(&mut d, "late", vec![3]).expect("shrink");
        fence(&mut d, 3);
        let p = part(&d, "late", 0);
        assert_eq!(p.leader, NO_LEADER, "1 is fenced too");
        unfence(&mut d, 1);
        let p = part(&d, "late", 0);
        assert_eq!((p.leader, p.isr), (1, vec![1]));
    }

    #[test]
    fn reassignment_adds_then_completes_with_the_isr_or_is_cancelled() {
        let mut d = Data::new(1);
        for id in 1..=4 {
            register(&mut d, id);
        }
        topic_with(&mut d, "a", vec![vec![1, 2]], false);
        let mv = |t: Option<Vec<u64>>| vec![("a".to_string(), 0u32, t)];
        d.reassign(mv(Some(vec![3, 4]))).remove(0).expect("start");
        let p = part(&d, "a", 0);
        assert_eq!(
            (p.replicas.clone(), p.isr.clone(), p.leader),
            (vec![3, 4, 1, 2], vec![1, 2], 1)
        );
        let r = d.view(1).reassignments[&(Arc::from("a"), 0)].clone();
        assert_eq!(
            (r.adding.clone(), r.removing.clone()),
            (vec![3, 4], vec![1, 2])
        );
        alter(&mut d, "a", vec![1, 2, 3]).expect("3 in sync");
        assert!(
            d.reassignments.contains_key(&(Arc::from("a"), 0)),
            "4 is not yet"
        );
        alter(&mut d, "a", vec![1, 2, 3, 4]).expect("4 in sync");
        let p = part(&d, "a", 0);
        assert_eq!(
            (p.replicas, p.isr, p.leader, p.leader_epoch),
            (vec![3, 4], vec![3, 4], 3, 1),
            "done: the old leader handed over"
        );
        assert!(d.reassignments.is_empty());
        // Cancel restores the original replicas.
        d.reassign(mv(Some(vec![3, 1]))).remove(0).expect("start");
        assert_eq!(part(&d, "a", 0).replicas, vec![3, 1, 4]);
        d.reassign(mv(None)).remove(0).expect("cancel");
        let p = part(&d, "a", 0);
        assert_eq!((p.replicas, p.isr), (vec![3, 4], vec![3, 4]));
        assert!(matches!(
            d.reassign(mv(None)).remove(0),
            Err(MetaError::NoReassignmentInProgress(_))
        ));
        // A removal completes at once; bad targets are refused.
        d.reassign(mv(Some(vec![4])))
            .remove(0)
            .expect("shrink to 4");
        let p = part(&d, "a", 0);
        assert_eq!((p.replicas, p.isr, p.leader), (vec![4], vec![4], 4));
        for bad in [vec![], vec![9], vec![2, 2]] {
            assert!(matches!(
                d.reassign(mv(Some(bad))).remove(0),
                Err(MetaError::InvalidReplicaAssignment(_))
            ));
        }
        // Deleting the topic forgets its reassignments.
        d.reassign(mv(Some(vec![1]))).remove(0).expect("start");
        d.delete("a").expect("delete");
        assert!(d.reassignments.is_empty());
    }
}
