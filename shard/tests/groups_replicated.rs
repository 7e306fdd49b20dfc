//! Consumer-group state kept in `__consumer_offsets`: group records are
//! record batches in the group's offsets partition, loaded when this node
//! becomes its leader, dropped when it stops leading it, carried forward so
//! that the WAL stays reclaimable. Real glommio executor, real WAL, a real
//! single-node `sluice_raft::Metadata`; roles a single node cannot have come
//! from views applied with `Shard::apply_view_for_tests`, the other replica
//! is played by the test (replica fetches, `append_replica`).

mod common;
use common::*;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_raft::{Metadata, TopicMeta, TopicSpec};
use sluice_shard::group::{
    decode_batch, encode_batch, encode_record, CommitRequest, CommittedOffset, GroupError,
    GroupRecord, GroupRequest, GroupResponse, OffsetDeleteRequest, OffsetFetchRequest, KIND_GROUP,
    OFFSETS_TOPIC,
};
use sluice_shard::{
    new_mesh, FetchPartition, FetchRequest, ListOffsetsPartition, ProducePartition, Shard,
    ShardConfig, WalTuning,
};

// ---- helpers ---------------------------------------------------------------

/// Bound of every wait for an asynchronous effect.
const WAIT: Duration = Duration::from_secs(20);

fn wal_tuning(segment_bytes: u64) -> WalTuning {
    WalTuning {
        segment_bytes,
        queue_bytes_max: 4 << 20,
        commit_bytes_max: 128 << 10,
        entry_bytes_max: 120 << 10,
        ..WalTuning::default()
    }
}

fn shard_config(dir: &Path, segment_bytes: u64) -> ShardConfig {
    let mut cfg = ShardConfig::new(0, 1, dir);
    cfg.memory_bytes_max = 64 << 20;
    cfg.tail_cache_bytes_max = 8 << 20;
    cfg.wal = wal_tuning(segment_bytes);
    cfg
}

async fn start_shard(dir: &Path, meta: &Metadata, segment_bytes: u64) -> Rc<Shard> {
    Shard::start(shard_config(dir, segment_bytes), new_mesh(1), meta.clone())
        .await
        .expect("shard starts")
}

async fn create(
    shard: &Shard,
    meta: &Metadata,
    name: &str,
    partitions: u32,
    configs: &[(&str, &str)],
) -> Arc<TopicMeta> {
    let configs: BTreeMap<String, String> = configs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let spec = TopicSpec {
        name: name.to_string(),
        partitions,
        configs,
        replication_factor: 1,
        assignment: Vec::new(),
    };
    let topic = meta.create_topic(spec).await.expect("create topic");
    shard.await_topic_ready(&topic).await.expect("topic ready");
    topic
}

async fn create_offsets(shard: &Shard, meta: &Metadata) -> Arc<TopicMeta> {
    create(
        shard,
        meta,
        OFFSETS_TOPIC,
        1,
        &[("cleanup.policy", "compact")],
    )
    .await
}

fn committed(offset: i64) -> CommittedOffset {
    CommittedOffset {
        offset,
        leader_epoch: -1,
        metadata: Some("m".into()),
        commit_timestamp_ms: 1_700_000_000_000,
    }
}

fn commit_req(group: &str, offsets: &[(&str, i32, i64)]) -> GroupRequest {
    GroupRequest::Commit(CommitRequest {
        group_id: group.into(),
        generation_id: -1,
        member_id: String::new(),
        group_instance_id: None,
        offsets: offsets
            .iter()
            .map(|(t, p, o)| (t.to_string(), *p, committed(*o)))
            .collect(),
    })
}

fn commit_error(r: GroupResponse) -> Option<GroupError> {
    match r {
        GroupResponse::Commit(c) => c.error,
        other => panic!("not a commit answer: {other:?}"),
    }
}

/// A commit from outside the group; retried while the partition loads.
async fn commit(shard: &Shard, group: &str, offsets: &[(&str, i32, i64)]) {
    let deadline = Instant::now() + WAIT;
    loop {
        match commit_error(shard.group(commit_req(group, offsets)).await) {
            None => return,
            Some(GroupError::CoordinatorLoadInProgress) if Instant::now() < deadline => {
                sleep_ms(10).await
            }
            Some(e) => panic!("commit of {group} failed: {e}"),
        }
    }
}

/// OffsetFetch of every committed partition of `group`, sorted.
async fn fetch_offsets(shard: &Shard, group: &str) -> Result<Vec<(String, i32, i64)>, GroupError> {
    let req = GroupRequest::OffsetFetch(OffsetFetchRequest {
        group_id: group.into(),
        partitions: None,
        require_stable: false,
    });
    match shard.group(req).await {
        GroupResponse::OffsetFetch(r) => match r.error {
            Some(e) => Err(e),
            None => {
                let mut v: Vec<_> = r
                    .offsets
                    .into_iter()
                    .map(|(t, p, c)| (t, p, c.map_or(-1, |c| c.offset)))
                    .collect();
                v.sort();
                Ok(v)
            }
        },
        other => panic!("not an offset fetch answer: {other:?}"),
    }
}

/// `fetch_offsets`, waiting while the partition loads.
async fn loaded_offsets(shard: &Shard, group: &str) -> Vec<(String, i32, i64)> {
    let deadline = Instant::now() + WAIT;
    loop {
        match fetch_offsets(shard, group).await {
            Ok(v) => return v,
            Err(GroupError::CoordinatorLoadInProgress) if Instant::now() < deadline => {
                sleep_ms(10).await
            }
            Err(e) => panic!("offset fetch of {group} failed: {e}"),
        }
    }
}

fn offsets(v: &[(&str, i32, i64)]) -> Vec<(String, i32, i64)> {
    v.iter().map(|(t, p, o)| (t.to_string(), *p, *o)).collect()
}

/// Every stored batch of partition 0 of `topic` from `offset` on (a
/// consumer fetch: below the high watermark), as `(base offset, leader
/// epoch, batch)`.
async fn read_batches(
    shard: &Shard,
    topic: &Arc<TopicMeta>,
    offset: i64,
) -> Vec<(i64, i32, Vec<u8>)> {
    let req = FetchRequest {
        partitions: vec![FetchPartition {
            topic: topic.clone(),
            partition: 0,
            fetch_offset: offset,
            partition_max_bytes: 16 << 20,
            current_leader_epoch: -1,
        }],
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: 16 << 20,
        isolation_level: 0,
        replica_id: None,
    };
    let r = shard.fetch(req).await.remove(0);
    assert_eq!(r.error, None, "fetch of {}", topic.name);
    let mut out = Vec::new();
    for records in r.records {
        let mut rest = &records[..];
        while rest.len() >= 12 {
            let len = 12 + i32::from_be_bytes(rest[8..12].try_into().expect("4")) as usize;
            let (b, tail) = rest.split_at(len);
            let base = i64::from_be_bytes(b[..8].try_into().expect("8"));
            let epoch = i32::from_be_bytes(b[12..16].try_into().expect("4"));
            out.push((base, epoch, b.to_vec()));
            rest = tail;
        }
    }
    out
}

/// The group records stored in `batches`, in order.
fn group_records(batches: &[(i64, i32, Vec<u8>)]) -> Vec<GroupRecord> {
    batches
        .iter()
        .flat_map(|(_, _, b)| decode_batch(b))
        .map(|r| r.expect("decodable group record"))
        .collect()
}

fn commit_record(group: &str, v: &[(&str, i32, i64)]) -> GroupRecord {
    GroupRecord::Commit {
        group_id: group.into(),
        offsets: v
            .iter()
            .map(|(t, p, o)| (t.to_string(), *p, committed(*o)))
            .collect(),
    }
}

/// `encode_batch(rec)` at `base` offset, stamped with leader `epoch`, as a
/// leader would have stored it.
fn stored(rec: &GroupRecord, base: i64, epoch: i32) -> Vec<u8> {
    let mut b = encode_batch(rec, 1_000).to_vec();
    b[..8].copy_from_slice(&base.to_be_bytes());
    b[12..16].copy_from_slice(&epoch.to_be_bytes());
    b
}

/// Kinds of every entry in the shard's WAL (read with the shard closed).
async fn wal_kinds(dir: &Path, segment_bytes: u64) -> Vec<u8> {
    let t = wal_tuning(segment_bytes);
    let mut cfg = sluice_wal::WalConfig::new(dir.join("shard-0").join("wal"));
    cfg.segment_bytes = t.segment_bytes;
    cfg.queue_bytes_max = t.queue_bytes_max;
    cfg.commit_bytes_max = t.commit_bytes_max;
    cfg.entry_bytes_max = t.entry_bytes_max;
    let (wal, _) = sluice_wal::Wal::open(cfg).await.expect("WAL opens");
    let mut reader = wal.reader(wal.start());
    let mut kinds = Vec::new();
    while let Some(e) = reader.next().await {
        kinds.push(e.expect("readable").kind);
    }
    wal.close().await.expect("WAL closes");
    kinds
}

fn group_state_bytes(shard: &Shard) -> u64 {
    shard
        .stats()
        .pools
        .iter()
        .find(|p| p.name == "group_state")
        .expect("group_state pool")
        .used_bytes
}

const SEGMENT: u64 = 4 << 20;

// ---- tests -----------------------------------------------------------------

#[test]
fn commits_are_batches_in_the_offsets_partition_and_a_restart_reloads_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    on_executor(move || async move {
        let meta = start_meta(&path, 1);
        let shard = start_shard(&path, &meta, SEGMENT).await;
        let offsets_topic = create_offsets(&shard, &meta).await;
        commit(&shard, "g", &[("orders", 0, 42), ("orders", 1, 7)]).await;
        commit(&shard, "g", &[("orders", 0, 43)]).await;
        let req = GroupRequest::OffsetDelete(OffsetDeleteRequest {
            group_id: "g".into(),
            partitions: vec![("orders".into(), 1)],
        });
        match shard.group(req).await {
            GroupResponse::OffsetDelete(r) => {
                assert!(r.error.is_none() && r.partitions.iter().all(|p| p.2.is_none()))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            loaded_offsets(&shard, "g").await,
            offsets(&[("orders", 0, 43)])
        );

        // Each record is its own batch in the partition, in commit order.
        let batches = read_batches(&shard, &offsets_topic, 0).await;
        let bases: Vec<i64> = batches.iter().map(|b| b.0).collect();
        assert_eq!(bases, vec![0, 1, 2]);
        assert_eq!(
            group_records(&batches),
            vec![
                commit_record("g", &[("orders", 0, 42), ("orders", 1, 7)]),
                commit_record("g", &[("orders", 0, 43)]),
                GroupRecord::OffsetsDeleted {
                    group_id: "g".into(),
                    partitions: vec![("orders".into(), 1)],
                },
            ]
        );
        shard.close().await;

        // Nothing went to the WAL as a group entry of the old kind.
        let kinds = wal_kinds(&path, SEGMENT).await;
        assert!(!kinds.is_empty());
        assert!(!kinds.contains(&KIND_GROUP), "kinds {kinds:?}");

        // A restart loads the groups from the partition's log (before
        // `start` returns: the partition is led here at start).
        let shard = start_shard(&path, &meta, SEGMENT).await;
        assert_eq!(
            fetch_offsets(&shard, "g").await,
            Ok(offsets(&[("orders", 0, 43)]))
        );
        shard.close().await;
        meta.shutdown();
    });
}

#[test]
fn a_new_leader_loads_replicated_group_records_and_a_former_one_drops_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    on_executor(move || async move {
        let meta = start_meta(&path, 1);
        let shard = start_shard(&path, &meta, SEGMENT).await;
        let created = create_offsets(&shard, &meta).await;
        commit(&shard, "mine", &[("t", 0, 1)]).await;
        assert!(group_state_bytes(&shard) > 0);

        // Node 2 leads the partition: this node follows, its groups go.
        let t = set_partition(&shard, &meta, &created, 1, 2, 1, &[2, 1], &[2, 1]);
        assert_eq!(
            fetch_offsets(&shard, "mine").await,
            Err(GroupError::NotCoordinator)
        );
        assert_eq!(group_state_bytes(&shard), 0, "charges released");
        assert_eq!(
            commit_error(shard.group(commit_req("mine", &[("t", 0, 2)])).await),
            Some(GroupError::NotCoordinator)
        );
        // Node 2 truncated nothing of ours; it wrote three records after
        // them, which the replica fetcher hands to `append_replica`.
        let end = shard
            .truncate_replica(&t, 0, i64::MAX)
            .await
            .expect("nothing to truncate");
        assert_eq!(end, 1);
        let records = [
            commit_record("a", &[("t", 0, 10), ("t", 1, 11)]),
            commit_record("b", &[("u", 0, 20)]),
            GroupRecord::OffsetsDeleted {
                group_id: "a".into(),
                partitions: vec![("t".into(), 1)],
            },
        ];
        let mut from_leader = Vec::new();
        for (i, rec) in records.iter().enumerate() {
            from_leader.extend(stored(rec, end + i as i64, 1));
        }
        let log_end = shard
            .append_replica(&t, 0, Bytes::from(from_leader), end + 3)
            .await
            .expect("follower append");
        assert_eq!(log_end, 4);

        // This node becomes leader: until the loading task ran, the
        // partition's groups answer COORDINATOR_LOAD_IN_PROGRESS.
        let t = set_partition(&shard, &meta, &t, 2, 1, 2, &[1, 2], &[1, 2]);
        assert_eq!(
            fetch_offsets(&shard, "a").await,
            Err(GroupError::CoordinatorLoadInProgress)
        );
        assert_eq!(loaded_offsets(&shard, "a").await, offsets(&[("t", 0, 10)]));
        assert_eq!(loaded_offsets(&shard, "b").await, offsets(&[("u", 0, 20)]));
        assert_eq!(
            loaded_offsets(&shard, "mine").await,
            offsets(&[("t", 0, 1)]),
            "its own earlier record is in the log too"
        );

        // A commit now waits for the in-sync follower (acks=-1).
        let answer = Rc::new(RefCell::new(None));
        let cell = answer.clone();
        let s = shard.clone();
        glommio::spawn_local(async move {
            let r = s.group(commit_req("a", &[("t", 0, 12)])).await;
            *cell.borrow_mut() = Some(commit_error(r));
        })
        .detach();
        sleep_ms(200).await;
        assert!(answer.borrow().is_none(), "answered before the ISR had it");
        let replica_fetch = |offset: i64| FetchRequest {
            partitions: vec![FetchPartition {
                topic: t.clone(),
                partition: 0,
                fetch_offset: offset,
                partition_max_bytes: 1 << 20,
                current_leader_epoch: 2,
            }],
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 1 << 20,
            isolation_level: 0,
            replica_id: Some(2),
        };
        let got = shard.fetch(replica_fetch(4)).await.remove(0);
        assert_eq!(got.error, None);
        let b = &got.records[0];
        assert_eq!(i64::from_be_bytes(b[..8].try_into().expect("8")), 4);
        assert_eq!(
            i32::from_be_bytes(b[12..16].try_into().expect("4")),
            2,
            "stamped with the leader epoch"
        );
        assert_eq!(
            decode_batch(b),
            vec![Ok(commit_record("a", &[("t", 0, 12)]))]
        );
        shard.fetch(replica_fetch(5)).await;
        let deadline = Instant::now() + WAIT;
        while answer.borrow().is_none() && Instant::now() < deadline {
            sleep_ms(10).await;
        }
        assert_eq!(*answer.borrow(), Some(None), "answered once replicated");
        assert_eq!(loaded_offsets(&shard, "a").await, offsets(&[("t", 0, 12)]));

        // Leadership moves away again: everything is dropped.
        set_partition(&shard, &meta, &t, 3, 2, 3, &[2, 1], &[2, 1]);
        for g in ["a", "b", "mine"] {
            assert_eq!(
                fetch_offsets(&shard, g).await,
                Err(GroupError::NotCoordinator)
            );
        }
        assert_eq!(group_state_bytes(&shard), 0);
        match shard.group(GroupRequest::List).await {
            GroupResponse::List(l) => assert!(l.is_empty(), "{l:?}"),
            other => panic!("{other:?}"),
        }
        shard.close().await;
        meta.shutdown();
    });
}

#[test]
fn carry_forward_keeps_the_wal_reclaimable_and_the_offsets() {
    const SMALL: u64 = 256 << 10;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    on_executor(move || async move {
        let meta = start_meta(&path, 1);
        let shard = start_shard(&path, &meta, SMALL).await;
        let offsets_topic = create_offsets(&shard, &meta).await;
        let data = create(&shard, &meta, "data", 1, &[("retention.ms", "300")]).await;
        let value = vec![7u8; 30 << 10];
        let rounds = 120;
        for round in 0..rounds {
            let records = {
                // One record of 30 KiB, timestamp now.
                let ts = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_millis() as i64;
                batch_of(&value, ts)
            };
            let r = shard
                .produce(ProducePartition {
                    topic: data.clone(),
                    partition: 0,
                    records: Bytes::from(records),
                    acks: 1,
                    timeout_ms: 5_000,
                    origin: sluice_shard::Origin::Client,
                    transactional_id: None,
                })
                .await;
            assert_eq!(r.error, None);
            commit(
                &shard,
                "g",
                &[("data", 0, round), ("other", 3, 1000 + round)],
            )
            .await;
            commit(&shard, "h", &[("data", 0, 5)]).await;
            sleep_ms(20).await;
        }
        let written = (rounds as u64 * (30 << 10)) / SMALL;
        assert!(written >= 12, "{written} segments written");
        // Retention removes the expired data; the offsets partition, which
        // holds records from the first segment on, must not keep them.
        let deadline = Instant::now() + WAIT;
        let mut segments = shard.stats().wal.segments;
        while segments > 4 && Instant::now() < deadline {
            sleep_ms(100).await;
            segments = shard.stats().wal.segments;
        }
        assert!(
            segments <= 4,
            "{segments} WAL segments left of {written} written"
        );
        let earliest = shard
            .list_offsets(ListOffsetsPartition {
                topic: offsets_topic.clone(),
                partition: 0,
                timestamp: -2,
                isolation_level: 0,
            })
            .await;
        assert!(earliest.offset > 0, "log start moved: {earliest:?}");
        let last = rounds as i64 - 1;
        let want_g = offsets(&[("data", 0, last), ("other", 3, 1000 + last)]);
        assert_eq!(loaded_offsets(&shard, "g").await, want_g);
        // The partition's live records start with a snapshot.
        let live = group_records(&read_batches(&shard, &offsets_topic, earliest.offset).await);
        assert_eq!(live.first(), Some(&GroupRecord::PartitionReset));
        shard.close().await;

        let shard = start_shard(&path, &meta, SMALL).await;
        assert_eq!(fetch_offsets(&shard, "g").await, Ok(want_g));
        assert_eq!(
            fetch_offsets(&shard, "h").await,
            Ok(offsets(&[("data", 0, 5)]))
        );
        shard.close().await;
        meta.shutdown();
    });
}

#[test]
fn old_group_wal_entries_still_replay_and_move_into_the_partition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    on_executor(move || async move {
        let meta = start_meta(&path, 1);
        // A shard's first start creates its WAL; then the topic exists.
        let shard = start_shard(&path, &meta, SEGMENT).await;
        let offsets_topic = create_offsets(&shard, &meta).await;
        shard.close().await;
        // Entries as a data directory written before this change holds.
        {
            let t = wal_tuning(SEGMENT);
            let mut cfg = sluice_wal::WalConfig::new(path.join("shard-0").join("wal"));
            cfg.segment_bytes = t.segment_bytes;
            cfg.queue_bytes_max = t.queue_bytes_max;
            cfg.commit_bytes_max = t.commit_bytes_max;
            cfg.entry_bytes_max = t.entry_bytes_max;
            let (wal, _) = sluice_wal::Wal::open(cfg).await.expect("WAL opens");
            for rec in [
                commit_record("old", &[("t", 0, 5), ("t", 1, 6)]),
                GroupRecord::OffsetsDeleted {
                    group_id: "old".into(),
                    partitions: vec![("t".into(), 1)],
                },
                commit_record("gone", &[("t", 0, 1)]),
            ] {
                wal.append(KIND_GROUP, encode_record(&rec))
                    .await
                    .expect("appended");
            }
            wal.close().await.expect("closed");
        }
        let shard = start_shard(&path, &meta, SEGMENT).await;
        assert_eq!(
            fetch_offsets(&shard, "old").await,
            Ok(offsets(&[("t", 0, 5)]))
        );
        // They are written into the offsets partition after the load.
        let deadline = Instant::now() + WAIT;
        let mut records = Vec::new();
        while Instant::now() < deadline {
            records = group_records(&read_batches(&shard, &offsets_topic, 0).await);
            if records.len() >= 3 {
                break;
            }
            sleep_ms(20).await;
        }
        assert_eq!(
            records,
            vec![
                GroupRecord::PartitionReset,
                commit_record("gone", &[("t", 0, 1)]),
                commit_record("old", &[("t", 0, 5)]),
            ]
        );
        // Newer records win over the old entries at the next start.
        commit(&shard, "old", &[("t", 0, 9)]).await;
        match shard.group(GroupRequest::Delete("gone".into())).await {
            GroupResponse::Delete(e) => assert_eq!(e, None),
            other => panic!("{other:?}"),
        }
        shard.close().await;
        let shard = start_shard(&path, &meta, SEGMENT).await;
        assert_eq!(
            fetch_offsets(&shard, "old").await,
            Ok(offsets(&[("t", 0, 9)]))
        );
        assert_eq!(fetch_offsets(&shard, "gone").await, Ok(Vec::new()));
        shard.close().await;
        meta.shutdown();
    });
}

/// One uncompressed v2 batch of one record carrying `value`. CRC valid.
fn batch_of(value: &[u8], timestamp_ms: i64) -> Vec<u8> {
    let mut body = vec![0u8];
    varint(&mut body, 0);
    varint(&mut body, 0);
    varint(&mut body, -1);
    varint(&mut body, value.len() as i64);
    body.extend_from_slice(value);
    varint(&mut body, 0);
    let mut records = Vec::new();
    varint(&mut records, body.len() as i64);
    records.extend_from_slice(&body);
    let mut b = Vec::new();
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.push(2);
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&(-1i64).to_be_bytes());
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&1i32.to_be_bytes());
    b.extend_from_slice(&records);
    let length = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}
