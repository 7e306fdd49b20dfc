//! Applying a new metadata view to a shard's partition map.
//!
//! Views hold their topics in a persistent map (`TopicMap`) that shares
//! every unchanged node with the view before it. `TopicMap::diff` skips the
//! shared subtrees, so applying a view that changed k topics costs
//! O(k log topics) plus their partitions, whatever the number of topics;
//! dropping the previous view frees only the nodes the new one replaced.

use std::collections::HashMap;
use std::time::Instant;

use sluice_raft::{PartitionMeta, TopicChange, TopicMap, TopicMeta};

use crate::entry::PartitionKey;
use crate::partition::{MetaChange, Partition};

/// What applying one view changed on a shard.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Partitions created.
    pub created: u64,
    /// Keys of the partitions removed.
    pub gone: Vec<PartitionKey>,
    /// Index entries the removed partitions held.
    pub gone_entries: u64,
    /// Removed partitions that held a replication state.
    pub gone_replicated: u64,
    /// Bytes of the removed partitions' transaction states.
    pub gone_txn_bytes: u64,
    /// Removed partitions whose topic lives on (this node no longer
    /// replicates them): their log must not come back at recovery.
    pub reassigned: Vec<PartitionKey>,
    /// Partitions held here whose role, epoch, ISR or HW changed.
    pub changed: Vec<(PartitionKey, MetaChange)>,
    /// Topics the diff yielded: added, changed or removed ones.
    pub topics_changed: u64,
}

/// Whether partition `pm` is held by shard `shard` of node `node`: placed
/// on that shard and replicated on that node.
pub(crate) fn hosted(pm: &PartitionMeta, shard: u32, node: u64) -> bool {
    pm.shard == shard && (pm.is_replica(node) || (pm.replicas.is_empty() && pm.leader == node))
}

/// Brings `parts` (the partitions of shard `shard` of node `node`) from
/// view `old` to view `new`: creates the partitions of added or grown
/// topics this node replicates on `shard`, applies role, epoch and ISR
/// changes to the held ones, removes those of removed topics and those this
/// node no longer replicates, and both for a name that now holds a topic
/// with another id.
pub(crate) fn apply_changes(
    shard: u32,
    node: u64,
    parts: &mut HashMap<PartitionKey, Partition>,
    old: &TopicMap,
    new: &TopicMap,
) -> Applied {
    let mut applied = Applied::default();
    let now = Instant::now();
    for change in old.diff(new) {
        applied.topics_changed += 1;
        match change {
            TopicChange::Add(_, topic) => add_topic(shard, node, parts, topic, now, &mut applied),
            TopicChange::Update {
                old: (_, was),
                new: (_, now_topic),
            } => {
                if was.id != now_topic.id {
                    drop_topic(parts, was, &mut applied);
                }
                add_topic(shard, node, parts, now_topic, now, &mut applied);
            }
            TopicChange::Remove(_, topic) => drop_topic(parts, topic, &mut applied),
        }
    }
    applied
}

/// The keys of `topic`'s partitions placed on `shard`.
pub(crate) fn keys_on(topic: &TopicMeta, shard: u32) -> impl Iterator<Item = PartitionKey> + '_ {
    topic
        .partitions
        .iter()
        .enumerate()
        .filter(move |(_, pm)| pm.shard == shard)
        .map(|(i, _)| PartitionKey {
            topic_id: topic.id,
            partition: i as u32,
        })
}

/// Creates the missing partitions of `topic` held here, applies the
/// metadata of every held one, removes those no longer held.
fn add_topic(
    shard: u32,
    node: u64,
    parts: &mut HashMap<PartitionKey, Partition>,
    topic: &TopicMeta,
    now: Instant,
    applied: &mut Applied,
) {
    for (i, pm) in topic.partitions.iter().enumerate() {
        let key = PartitionKey {
            topic_id: topic.id,
            partition: i as u32,
        };
        if !hosted(pm, shard, node) {
            if let Some(p) = parts.remove(&key) {
                applied.gone_entries += p.batches.len() as u64;
                applied.gone_txn_bytes += p.txn_bytes();
                applied.gone_replicated += u64::from(p.repl.is_some());
                applied.gone.push(key);
                applied.reassigned.push(key);
            }
            continue;
        }
        let p = parts.entry(key).or_insert_with(|| {
            applied.created += 1;
            Partition::new(key)
        });
        let change = p.apply_meta(pm, node, now);
        if change != MetaChange::default() {
            applied.changed.push((key, change));
        }
    }
}

/// Removes the partitions of `topic` held here.
fn drop_topic(
    parts: &mut HashMap<PartitionKey, Partition>,
    topic: &TopicMeta,
    applied: &mut Applied,
) {
    for i in 0..topic.partitions.len() {
        let key = PartitionKey {
            topic_id: topic.id,
            partition: i as u32,
        };
        if let Some(p) = parts.remove(&key) {
            applied.gone_entries += p.batches.len() as u64;
            applied.gone_txn_bytes += p.txn_bytes();
            applied.gone_replicated += u64::from(p.repl.is_some());
            applied.gone.push(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use sluice_raft::PartitionMeta;

    use super::*;

    const SHARDS: u32 = 3;
    const ME: u32 = 1;
    const NODE: u64 = 1;

    fn topic(name: &str, id: u64, partitions: u32) -> Arc<TopicMeta> {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&id.to_le_bytes());
        Arc::new(TopicMeta {
            name: name.to_string(),
            id: bytes,
            partitions: (0..partitions)
                .map(|p| PartitionMeta {
                    shard: (id as u32 + p) % SHARDS,
                    leader: 1,
                    leader_epoch: 0,
                    replicas: vec![1],
                    isr: vec![1],
                })
                .collect(),
            configs: BTreeMap::new(),
            created_ms: 0,
        })
    }

    fn insert(map: &mut TopicMap, t: Arc<TopicMeta>) {
        map.insert(Arc::from(t.name.as_str()), t);
    }

    /// The partitions shard `ME` must hold for `map`, computed from scratch.
    fn expected(map: &TopicMap) -> BTreeSet<PartitionKey> {
        map.values()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.shard == ME)
                    .map(|(i, _)| PartitionKey {
                        topic_id: t.id,
                        partition: i as u32,
                    })
            })
            .collect()
    }

    /// Asserts that `parts` holds exactly the partitions `map` places here.
    fn assert_holds(parts: &HashMap<PartitionKey, Partition>, map: &TopicMap) {
        let held: BTreeSet<PartitionKey> = parts.keys().copied().collect();
        let want = expected(map);
        let missing: Vec<_> = want.difference(&held).take(5).collect();
        let extra: Vec<_> = held.difference(&want).take(5).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "missing {missing:?}, extra {extra:?}"
        );
    }

    /// Names whose topic differs between the maps, found by looking at all.
    fn changed_names(old: &TopicMap, new: &TopicMap) -> u64 {
        let names: BTreeSet<&Arc<str>> = old.keys().chain(new.keys()).collect();
        names
            .into_iter()
            .filter(|n| old.get(&***n) != new.get(&***n))
            .count() as u64
    }

    #[test]
    fn one_view_applies_exactly_the_changed_topics() {
        let mut v1 = TopicMap::new();
        for i in 0..10_000u64 {
            insert(&mut v1, topic(&format!("t-{i:05}"), i, 3));
        }
        let mut parts = HashMap::new();
        let first = apply_changes(ME, NODE, &mut parts, &TopicMap::new(), &v1);
        assert_eq!(first.topics_changed, 10_000);
        assert_eq!(first.created, 10_000);
        assert_holds(&parts, &v1);
        // State of an unchanged partition must survive later views.
        let kept = PartitionKey {
            topic_id: topic("t-00000", 0, 3).id,
            partition: 1,
        };
        parts.get_mut(&kept).expect("held here").next_offset = 42;

        let mut v2 = v1.clone();
        insert(&mut v2, topic("t-05000-new", 20_000, 3)); // added
        let grown = topic("t-02000", 2000, 6); // same id, 3 more partitions
        insert(&mut v2, grown);
        insert(&mut v2, topic("t-07000", 30_000, 3)); // recreated: new id
        let removed = v2.remove("t-09000").expect("present");
        let applied = apply_changes(ME, NODE, &mut parts, &v1, &v2);
        assert_eq!(applied.topics_changed, 4, "only the changed topics");
        assert_holds(&parts, &v2);
        // Added: 1 of 3; grown: 1 of the 3 new; recreated: 1 of 3.
        assert_eq!(applied.created, 3);
        // Removed: its 1 partition here; recreated: the old id's 1.
        assert_eq!(applied.gone.len(), 2);
        assert!(applied.gone.iter().any(|k| k.topic_id == removed.id));
        assert_eq!(parts[&kept].next_offset, 42);
        assert_eq!(
            apply_changes(ME, NODE, &mut parts, &v2, &v2).topics_changed,
            0
        );
    }

    #[test]
    fn partitions_follow_the_replica_lists_and_roles() {
        let mut t = (*topic("r", 7, 1)).clone();
        t.partitions[0].shard = ME;
        let with = |leader: u64, replicas: &[u64]| {
            let mut x = t.clone();
            x.partitions[0].leader = leader;
            x.partitions[0].leader_epoch += 1;
            x.partitions[0].replicas = replicas.to_vec();
            x.partitions[0].isr = replicas.to_vec();
            Arc::new(x)
        };
        let mut v1 = TopicMap::new();
        insert(&mut v1, with(2, &[2, 3]));
        let mut parts = HashMap::new();
        let a = apply_changes(ME, NODE, &mut parts, &TopicMap::new(), &v1);
        assert_eq!((a.created, parts.len()), (0, 0), "not a replica here");
        let mut v2 = TopicMap::new();
        insert(&mut v2, with(2, &[2, NODE]));
        let a = apply_changes(ME, NODE, &mut parts, &v1, &v2);
        assert_eq!(a.created, 1);
        let p = parts.values().next().expect("created");
        assert!(!p.is_leader && p.repl.as_ref().is_some_and(|r| r.needs_truncation));
        assert!(a.changed[0].1.repl_created && a.changed[0].1.leadership);
        let mut v3 = TopicMap::new();
        insert(&mut v3, with(NODE, &[2, NODE]));
        let a = apply_changes(ME, NODE, &mut parts, &v2, &v3);
        assert!(parts.values().next().expect("kept").is_leader);
        assert!(a.changed[0].1.leadership && !a.changed[0].1.repl_created);
        let mut v4 = TopicMap::new();
        insert(&mut v4, with(2, &[2, 3]));
        let a = apply_changes(ME, NODE, &mut parts, &v3, &v4);
        assert_eq!(
            (a.gone.len(), a.reassigned.len(), a.gone_replicated),
            (1, 1, 1)
        );
        assert!(parts.is_empty());
        println!(
            "partition struct bytes {}",
            std::mem::size_of::<Partition>()
        );
    }

    /// A long series of views, each changing a few topics anywhere in a
    /// large map: after every view the shard holds exactly what a pass over
    /// all topics would give, and the diff yielded exactly the changed names.
    #[test]
    fn many_views_match_a_full_recompute() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut view = TopicMap::new();
        for i in 0..2000u64 {
            insert(
                &mut view,
                topic(&format!("t-{:05}", i * 2), i, 1 + (i % 4) as u32),
            );
        }
        let mut parts = HashMap::new();
        apply_changes(ME, NODE, &mut parts, &TopicMap::new(), &view);
        let mut next_id = 1_000_000;
        for _ in 0..200 {
            let mut next = view.clone();
            for _ in 0..1 + rand(6) {
                let name = format!("t-{:05}", rand(4000));
                next_id += 1;
                match (next.get(name.as_str()).cloned(), rand(3)) {
                    (None, _) => insert(&mut next, topic(&name, next_id, 1 + rand(4) as u32)),
                    (Some(t), 0) => {
                        let more = t.partitions.len() as u32 + 1 + rand(3) as u32;
                        let id = u64::from_le_bytes(t.id[..8].try_into().expect("8 bytes"));
                        insert(&mut next, topic(&name, id, more)); // grown
                    }
                    (Some(_), 1) => {
                        let recreated = topic(&name, next_id, 1 + rand(4) as u32);
                        insert(&mut next, recreated);
                    }
                    (Some(_), _) => {
                        next.remove(name.as_str());
                    }
                }
            }
            let applied = apply_changes(ME, NODE, &mut parts, &view, &next);
            assert_eq!(applied.topics_changed, changed_names(&view, &next));
            assert_holds(&parts, &next);
            view = next;
        }
    }
}
