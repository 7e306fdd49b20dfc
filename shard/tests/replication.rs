//! Replication on one shard: real glommio executor, real WAL, a real
//! single-node `sluice_raft::Metadata`. Roles a single node cannot have
//! (follower, leader with followers) come from views applied with
//! `Shard::apply_view_for_tests`; the other replicas are played by the
//! test (replica fetches with `replica_id`, and leader batches handed to
//! `append_replica`).

mod common;
use common::*;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_raft::{Metadata, TopicMeta, TopicSpec};
use sluice_shard::{
    new_mesh, FetchPartition, FetchRequest, ListOffsetsPartition, ProducePartition,
    ProducePartitionResult, Shard, ShardConfig, ShardError, WalTuning,
};

// ---- helpers ---------------------------------------------------------------

const TIMEOUT_MS: u32 = 10_000;

fn shard_config(dir: &Path) -> ShardConfig {
    let mut cfg = ShardConfig::new(0, 1, dir);
    cfg.memory_bytes_max = 64 << 20;
    cfg.tail_cache_bytes_max = 8 << 20;
    cfg.wal = WalTuning {
        segment_bytes: 4 << 20,
        queue_bytes_max: 4 << 20,
        commit_bytes_max: 1 << 20,
        entry_bytes_max: (1 << 20) - 4096,
        ..WalTuning::default()
    };
    cfg
}

/// One uncompressed v2 batch of `count` records carrying `value`, at
/// `base` offset, stamped with leader `epoch`, from idempotent producer
/// `pid` (-1: none) starting at sequence `seq`. CRC valid.
fn batch(count: i32, value: &[u8], base: i64, epoch: i32, pid: i64, seq: i32) -> Vec<u8> {
    let mut records = Vec::new();
    for i in 0..count {
        let mut body = vec![0u8];
        varint(&mut body, 0);
        varint(&mut body, i64::from(i));
        varint(&mut body, -1);
        varint(&mut body, value.len() as i64);
        body.extend_from_slice(value);
        varint(&mut body, 0);
        varint(&mut records, body.len() as i64);
        records.extend_from_slice(&body);
    }
    let mut b = Vec::new();
    b.extend_from_slice(&base.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.extend_from_slice(&epoch.to_be_bytes());
    b.push(2);
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(count - 1).to_be_bytes());
    b.extend_from_slice(&1000i64.to_be_bytes());
    b.extend_from_slice(&1000i64.to_be_bytes());
    b.extend_from_slice(&pid.to_be_bytes());
    b.extend_from_slice(&(if pid < 0 { -1i16 } else { 0 }).to_be_bytes());
    b.extend_from_slice(&(if pid < 0 { -1 } else { seq }).to_be_bytes());
    b.extend_from_slice(&count.to_be_bytes());
    b.extend_from_slice(&records);
    let length = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

fn leader_epoch(b: &[u8]) -> i32 {
    i32::from_be_bytes(b[12..16].try_into().expect("4 bytes"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn create(
    shard: &Shard,
    meta: &Metadata,
    name: &str,
    configs: &[(&str, &str)],
) -> Arc<TopicMeta> {
    let configs: BTreeMap<String, String> = configs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let spec = TopicSpec {
        name: name.to_string(),
        partitions: 1,
        configs,
        replication_factor: 1,
        assignment: Vec::new(),
    };
    let topic = meta.create_topic(spec).await.expect("create topic");
    shard.await_topic_ready(&topic).await.expect("topic ready");
    topic
}

fn produce_req(topic: &Arc<TopicMeta>, records: Vec<u8>, acks: i16) -> ProducePartition {
    ProducePartition {
        topic: topic.clone(),
        partition: 0,
        records: Bytes::from(records),
        acks,
        timeout_ms: TIMEOUT_MS,
        origin: sluice_shard::Origin::Client,
        transactional_id: None,
    }
}

fn fetch_req(
    topic: &Arc<TopicMeta>,
    offset: i64,
    replica: Option<u64>,
    epoch: i32,
) -> FetchRequest {
    FetchRequest {
        partitions: vec![FetchPartition {
            topic: topic.clone(),
            partition: 0,
            fetch_offset: offset,
            partition_max_bytes: 1 << 20,
            current_leader_epoch: epoch,
        }],
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes: 50 << 20,
        isolation_level: 0,
        replica_id: replica,
    }
}

/// Starts a produce in a task; its answer lands in the returned cell.
fn spawn_produce(
    shard: &Rc<Shard>,
    req: ProducePartition,
) -> Rc<RefCell<Option<ProducePartitionResult>>> {
    let out = Rc::new(RefCell::new(None));
    let (s, o) = (shard.clone(), out.clone());
    glommio::spawn_local(async move {
        let r = s.produce(req).await;
        *o.borrow_mut() = Some(r);
    })
    .detach();
    out
}

async fn answered(cell: &Rc<RefCell<Option<ProducePartitionResult>>>) -> ProducePartitionResult {
    for _ in 0..500 {
        if let Some(r) = cell.borrow().clone() {
            return r;
        }
        sleep_ms(10).await;
    }
    panic!("produce not answered within 5 s");
}

async fn latest(shard: &Shard, topic: &Arc<TopicMeta>) -> i64 {
    let r = shard
        .list_offsets(ListOffsetsPartition {
            topic: topic.clone(),
            partition: 0,
            timestamp: -1,
            isolation_level: 0,
        })
        .await;
    assert_eq!(r.error, None);
    r.offset
}

// ---- leader ----------------------------------------------------------------

#[test]
fn not_enough_replicas_is_refused_before_writing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = start_meta(dir.path(), 1);
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    on_executor(move || async move {
        let shard = Shard::start(shard_config(&d), new_mesh(1), m.clone())
            .await
            .expect("start");
        let t = create(&shard, &m, "strict", &[("min.insync.replicas", "2")]).await;
        let r = shard
            .produce(produce_req(&t, batch(1, b"a", 0, -1, -1, 0), -1))
            .await;
        assert_eq!(r.error, Some(ShardError::NotEnoughReplicas));
        assert_eq!(latest(&shard, &t).await, 0, "nothing written");
        let r = shard
            .produce(produce_req(&t, batch(1, b"a", 0, -1, -1, 0), 1))
            .await;
        assert_eq!((r.error, r.base_offset), (None, 0), "acks=1 is not refused");
        // Two in-sync replicas are enough.
        let t = set_partition(&shard, &m, &t, 1, 1, 0, &[1, 2], &[1, 2]);
        let p = spawn_produce(&shard, produce_req(&t, batch(1, b"b", 0, -1, -1, 0), -1));
        sleep_ms(20).await;
        assert!(p.borrow().is_none(), "waits for follower 2");
        let r = shard.fetch(fetch_req(&t, 2, Some(2), 0)).await;
        assert_eq!(r[0].high_watermark, 2);
        assert_eq!(answered(&p).await.base_offset, 1);
        shard.close().await;
    });
    meta.shutdown();
}

#[test]
fn acks_all_is_answered_once_the_follower_fetched_past_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = start_meta(dir.path(), 1);
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    on_executor(move || async move {
        let shard = Shard::start(shard_config(&d), new_mesh(1), m.clone())
            .await
            .expect("start");
        let t = create(&shard, &m, "replicated", &[]).await;
        let t = set_partition(&shard, &m, &t, 1, 1, 3, &[1, 2], &[1, 2]);
        let p = spawn_produce(&shard, produce_req(&t, batch(3, b"x", 0, -1, -1, 0), -1));
        sleep_ms(50).await;
        assert!(p.borrow().is_none(), "durable here, not on follower 2 yet");
        // Consumers see nothing above the HW.
        let r = shard.fetch(fetch_req(&t, 0, None, -1)).await;
        assert_eq!((r[0].high_watermark, r[0].records.len()), (0, 0));
        // The follower reads up to the durable end; the leader stamped its epoch.
        let r = shard.fetch(fetch_req(&t, 0, Some(2), 3)).await;
        assert_eq!(r[0].error, None);
        assert_eq!((r[0].high_watermark, r[0].records.len()), (0, 1));
        assert_eq!(leader_epoch(&r[0].records[0]), 3);
        sleep_ms(20).await;
        assert!(p.borrow().is_none(), "the follower's log end is still 0");
        // Its next fetch says it has offsets 0..3: the HW moves, acks=all answers.
        let r = shard.fetch(fetch_req(&t, 3, Some(2), 3)).await;
        assert_eq!(r[0].high_watermark, 3);
        let done = answered(&p).await;
        assert_eq!((done.error, done.base_offset), (None, 0));
        let r = shard.fetch(fetch_req(&t, 0, None, 3)).await;
        assert_eq!((r[0].high_watermark, r[0].records.len()), (3, 1));
        // Leader epochs of fetches.
        let r = shard.fetch(fetch_req(&t, 0, None, 2)).await;
        assert_eq!(
            r[0].error,
            Some(ShardError::FencedLeaderEpoch { current: 3, got: 2 })
        );
        let r = shard.fetch(fetch_req(&t, 0, Some(2), 4)).await;
        assert_eq!(
            r[0].error,
            Some(ShardError::UnknownLeaderEpoch { current: 3, got: 4 })
        );
        // OffsetForLeaderEpoch: epoch 3 began at 0 (when this node became leader).
        assert_eq!(shard.end_offset_for_epoch(&t, 0, 3).await, Ok((3, 3)));
        assert_eq!(shard.end_offset_for_epoch(&t, 0, 1).await, Ok((1, 0)));
        assert_eq!(shard.end_offset_for_epoch(&t, 0, 5).await, Ok((-1, -1)));
        // A replica fetch long poll wakes when the durable end moves.
        let (s2, t2) = (shard.clone(), t.clone());
        let poll = glommio::spawn_local(async move {
            let mut req = fetch_req(&t2, 3, Some(2), 3);
            req.max_wait_ms = 5_000;
            s2.fetch(req).await
        });
        sleep_ms(20).await;
        let r = shard
            .produce(produce_req(&t, batch(1, b"y", 0, -1, -1, 0), 1))
            .await;
        assert_eq!(r.base_offset, 3);
        let started = std::time::Instant::now();
        let r = poll.await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!((r[0].records.len(), r[0].high_watermark), (1, 3));
        shard.close().await;
    });
    meta.shutdown();
}

#[test]
fn isr_loss_and_leadership_loss_fail_waiting_produces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = start_meta(dir.path(), 1);
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    on_executor(move || async move {
        let shard = Shard::start(shard_config(&d), new_mesh(1), m.clone())
            .await
            .expect("start");
        let t = create(&shard, &m, "fragile", &[("min.insync.replicas", "2")]).await;
        let t = set_partition(&shard, &m, &t, 1, 1, 1, &[1, 2, 3], &[1, 2, 3]);
        let p = spawn_produce(&shard, produce_req(&t, batch(1, b"a", 0, -1, -1, 0), -1));
        sleep_ms(30).await;
        assert!(p.borrow().is_none());
        let t = set_partition(&shard, &m, &t, 2, 1, 1, &[1, 2, 3], &[1]);
        assert_eq!(
            answered(&p).await.error,
            Some(ShardError::NotEnoughReplicasAfterAppend)
        );
        let t = set_partition(&shard, &m, &t, 3, 1, 1, &[1, 2, 3], &[1, 2]);
        let p = spawn_produce(&shard, produce_req(&t, batch(1, b"b", 0, -1, -1, 0), -1));
        sleep_ms(30).await;
        assert!(p.borrow().is_none());
        let t = set_partition(&shard, &m, &t, 4, 2, 2, &[1, 2, 3], &[1, 2]);
        assert_eq!(answered(&p).await.error, Some(ShardError::NotLeader));
        let r = shard
            .produce(produce_req(&t, batch(1, b"c", 0, -1, -1, 0), 1))
            .await;
        assert_eq!(
            r.error,
            Some(ShardError::NotLeader),
            "a follower refuses produce"
        );
        shard.close().await;
    });
    meta.shutdown();
}

#[test]
fn isr_changes_are_proposed_by_the_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = start_meta(dir.path(), 1);
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    on_executor(move || async move {
        let mut cfg = shard_config(&d);
        cfg.replica_lag_time_max_ms = 200;
        let shard = Shard::start(cfg, new_mesh(1), m.clone())
            .await
            .expect("start");
        let t = create(&shard, &m, "grow", &[]).await;
        assert_eq!(shard.stats().counters.isr_proposals, 0);
        // Follower 3 is out of the ISR and caught up: the leader proposes it.
        let t = set_partition(&shard, &m, &t, 1, 1, 0, &[1, 2, 3], &[1, 2]);
        shard.fetch(fetch_req(&t, 0, Some(2), 0)).await;
        shard.fetch(fetch_req(&t, 0, Some(3), 0)).await;
        assert_eq!(shard.stats().counters.isr_proposals, 1);
        // Follower 2 stops fetching: after the lag it is proposed out (the
        // single-node metadata refuses both changes; the shard proposes again),
        // within 10 s on however loaded a machine.
        let mut waited = 0;
        while shard.stats().counters.isr_proposals < 2 && waited < 10_000 {
            sleep_ms(50).await;
            waited += 50;
        }
        assert!(shard.stats().counters.isr_proposals >= 2);
        shard.close().await;
    });
    meta.shutdown();
}

// ---- follower --------------------------------------------------------------

#[test]
fn follower_appends_truncates_fails_over_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = start_meta(dir.path(), 1);
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    on_executor(move || async move {
        let shard = Shard::start(shard_config(&d), new_mesh(1), m.clone())
            .await
            .expect("start");
        let t = create(&shard, &m, "copy", &[]).await;
        assert!(shard.followed().is_empty());
        let v0 = shard.followed_version();
        let (s2, waiting) = (shard.clone(), Rc::new(RefCell::new(None)));
        let w2 = waiting.clone();
        glommio::spawn_local(async move {
            let v = s2.followed_changed(v0).await;
            *w2.borrow_mut() = Some(v);
        })
        .detach();
        sleep_ms(10).await;
        assert!(waiting.borrow().is_none());
        let t = set_partition(&shard, &m, &t, 1, 2, 3, &[2, 1], &[2, 1]);
        sleep_ms(10).await;
        assert!(
            waiting.borrow().is_some_and(|v| v > v0),
            "woken by the view"
        );
        let f = shard.followed();
        assert_eq!(f.len(), 1);
        assert_eq!(
            (
                f[0].leader,
                f[0].leader_epoch,
                f[0].log_end,
                f[0].last_fetched_epoch
            ),
            (2, 3, 0, -1)
        );
        assert!(f[0].needs_truncation);
        assert_eq!(shard.mark_truncated(&t, 0, 2), Ok(false), "stale epoch");
        assert_eq!(shard.mark_truncated(&t, 0, 3), Ok(true));
        assert!(!shard.followed()[0].needs_truncation);
        // A follower serves neither producers nor consumers.
        let r = shard
            .produce(produce_req(&t, batch(1, b"no", 0, -1, -1, 0), 1))
            .await;
        assert_eq!(r.error, Some(ShardError::NotLeader));
        let r = shard.fetch(fetch_req(&t, 0, None, -1)).await;
        assert_eq!(r[0].error, Some(ShardError::NotLeader));

        let old_a = [
            batch(2, b"old-a", 0, 2, 42, 0),
            batch(3, b"old-b", 2, 3, 42, 2),
        ]
        .concat();
        let end = shard
            .append_replica(&t, 0, Bytes::from(old_a.clone()), 1)
            .await;
        assert_eq!(end, Ok(5));
        // Batches below the log end are skipped; a gap is not.
        let more = [
            batch(3, b"old-b", 2, 3, 42, 2),
            batch(1, b"old-c", 5, 3, 42, 5),
        ]
        .concat();
        assert_eq!(
            shard.append_replica(&t, 0, Bytes::from(more), 6).await,
            Ok(6)
        );
        let straddling = batch(2, b"bad", 5, 3, -1, 0);
        assert!(matches!(
            shard
                .append_replica(&t, 0, Bytes::from(straddling), 6)
                .await,
            Err(ShardError::InvalidRecord(_))
        ));
        let f = shard.followed();
        assert_eq!((f[0].log_end, f[0].last_fetched_epoch), (6, 3));
        assert_eq!(
            shard.end_offset_for_epoch(&t, 0, 3).await,
            Err(ShardError::NotLeader),
            "OffsetForLeaderEpoch is for leaders"
        );
        // Truncation is entry granular: 5 drops the last entry, 3 the first.
        assert_eq!(
            shard.truncate_replica(&t, 0, 7).await,
            Ok(6),
            "past the end"
        );
        assert_eq!(shard.truncate_replica(&t, 0, 5).await, Ok(5));
        assert_eq!(shard.truncate_replica(&t, 0, 3).await, Ok(0));
        assert_eq!(shard.followed()[0].last_fetched_epoch, -1);
        let new_a = [
            batch(2, b"new-a", 0, 4, 42, 0),
            batch(3, b"new-b", 2, 4, 42, 2),
        ]
        .concat();
        assert_eq!(
            shard.append_replica(&t, 0, Bytes::from(new_a), 5).await,
            Ok(5)
        );
        let new_c = batch(1, b"new-c", 5, 4, 42, 5);
        assert_eq!(
            shard
                .append_replica(&t, 0, Bytes::from(new_c.clone()), 6)
                .await,
            Ok(6)
        );
        assert_eq!(shard.followed()[0].last_fetched_epoch, 4);

        // Failover: this node leads at epoch 5. The producer's retry of its
        // last batch is a duplicate (state from the replicated headers).
        let t = set_partition(&shard, &m, &t, 2, 1, 5, &[2, 1], &[1]);
        assert!(shard.followed().is_empty());
        let r = shard.produce(produce_req(&t, new_c.clone(), -1)).await;
        assert_eq!((r.error, r.base_offset), (None, 5));
        assert_eq!(shard.stats().counters.produce_duplicates, 1);
        assert_eq!(latest(&shard, &t).await, 6);
        assert_eq!(shard.end_offset_for_epoch(&t, 0, 4).await, Ok((4, 6)));
        assert_eq!(shard.end_offset_for_epoch(&t, 0, 5).await, Ok((5, 6)));
        shard.close().await;
    });
    // Reopen with the service's view (this node, one replica): recovery
    // replays the truncations; the old tail never comes back.
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    on_executor(move || async move {
        let shard = Shard::start(shard_config(&d), new_mesh(1), m.clone())
            .await
            .expect("restart");
        let t = m.view().topics["copy"].clone();
        assert_eq!(latest(&shard, &t).await, 6);
        let r = shard.fetch(fetch_req(&t, 0, None, -1)).await;
        let all: Vec<u8> = r[0].records.concat();
        assert!(contains(&all, b"new-a") && contains(&all, b"new-c"));
        assert!(!contains(&all, b"old-"), "a truncated tail stays truncated");
        let bases: Vec<i64> = r[0].records.iter().map(|b| base_offset(b)).collect();
        assert_eq!(bases, vec![0, 5], "one WAL entry per append");
        let r = shard
            .produce(produce_req(&t, batch(1, b"new-c", 0, -1, 42, 5), -1))
            .await;
        assert_eq!(
            (r.error, r.base_offset),
            (None, 5),
            "duplicate after restart too"
        );
        assert_eq!(latest(&shard, &t).await, 6);
        shard.close().await;
    });
    meta.shutdown();
}
