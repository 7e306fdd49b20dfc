//! Consumer groups (Kafka's classic protocol) and committed offsets.
//!
//! # Ownership
//!
//! Each group belongs to one partition of the internal topic
//! `__consumer_offsets` (`abs(java_string_hash(group)) % partitions`, as
//! Kafka does). Its coordinator is the node that leads that partition, and
//! within the node the shard that owns it (`PartitionMeta::shard`, the same
//! index on every node); requests reaching another shard travel as
//! `ShardMsg::Group` over the mesh. The owner shard serves the group only
//! while this node leads the partition and its groups are loaded
//! (`load`); otherwise it answers `NotCoordinator` or
//! `CoordinatorLoadInProgress`.
//!
//! # Durability
//!
//! Offset commits, offset deletions and group deletions are record
//! batches in the group's `__consumer_offsets` partition (format in
//! `record`), written through the produce path with acks=-1 and
//! replicated to followers like any partition; a commit is answered once
//! the in-sync replicas have it. When a node becomes leader of an offsets
//! partition (at start, or on a role change) the shard rebuilds that
//! partition's groups from its log; when it stops leading it, their groups
//! are dropped from memory. Membership is not persisted: after a restart or
//! a coordinator move members get UNKNOWN_MEMBER_ID (or NOT_COORDINATOR)
//! and rejoin, as in Kafka. The state of each partition's groups is
//! written again (a snapshot) and the partition's log start moved past the
//! superseded records when they alone keep WAL segments from being
//! removed (`load`, retention). `KIND_GROUP` WAL entries of data
//! directories written before this are still replayed at recovery.
//!
//! # Deadlines
//!
//! Join delays, rebalance timeouts and session timeouts of all groups of a
//! shard live in one ordered set (`Coordinator::deadlines`), served by one
//! task per shard that sleeps through the shard's deadline structure
//! (`waiters`). A group with no members has no deadline: idle costs nothing.

mod load;
mod record;
mod serve;
mod state;
mod types;

pub(crate) use load::{run_group_loads, GroupLog};
pub use load::{GROUP_WRITE_TIMEOUT_MS, LOAD_SLICE_BYTES};
pub(crate) use record::{batch_kind, batch_records, keyed_batch, BatchKind};
pub use record::{
    decode_batch, encode as encode_record, encode_batch, GroupRecord, GROUP_RECORD_KEY, KIND_GROUP,
};
pub(crate) use serve::run_group_timers;
pub use serve::GroupReply;
pub use state::Coordinator;
pub use types::*;

/// The internal topic whose partitions place groups on shards.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Upper bound of the offsets topic's partition count (Kafka's default).
pub const OFFSETS_TOPIC_PARTITIONS_MAX: u32 = 50;

/// Partitions of `__consumer_offsets` for a node of `shards` shards:
/// min(50, 8 * shards), so every shard coordinates some groups.
pub fn offsets_topic_partitions(shards: u32) -> u32 {
    shards
        .saturating_mul(8)
        .clamp(1, OFFSETS_TOPIC_PARTITIONS_MAX)
}

/// Java's `String.hashCode` over UTF-16 code units.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// Kafka's `Utils.abs(groupId.hashCode) % partitions`.
pub fn offsets_partition_for(group_id: &str, partitions: u32) -> u32 {
    assert!(partitions > 0, "the offsets topic has partitions");
    let h = java_string_hash(group_id);
    let abs = if h == i32::MIN { 0 } else { h.unsigned_abs() };
    abs % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_hash_matches() {
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE in Java.
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(offsets_partition_for("polygenelubricants", 50), 0);
        assert_eq!(offsets_partition_for("hello", 50), 99_162_322 % 50);
    }

    #[test]
    fn partition_counts() {
        assert_eq!(offsets_topic_partitions(1), 8);
        assert_eq!(offsets_topic_partitions(4), 32);
        assert_eq!(offsets_topic_partitions(16), 50);
    }
}
