//! Transactions on the data plane, end to end on one shard: transactional
//! produces, markers written by `write_txn_marker`, the last stable offset
//! in Fetch and ListOffsets, the aborted transactions of read_committed
//! fetches, the produce checks, and the whole state rebuilt by recovery.

mod common;
use common::*;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use sluice_raft::{Metadata, TopicMeta, TopicSpec};
use sluice_shard::{
    compact, new_mesh, FetchPartition, FetchPartitionResult, FetchRequest, ListOffsetsPartition,
    Origin, ProducePartition, Shard, ShardConfig, ShardError, TxnMarker, WalTuning, KIND_BATCHES,
    KIND_REPLICA_BATCHES,
};

const PRODUCER: i64 = 4000;
const ATTRIBUTE_TRANSACTIONAL: i16 = 0x10;
const ATTRIBUTE_CONTROL: i16 = 0x20;

fn shard_config(dir: &Path) -> ShardConfig {
    let mut cfg = ShardConfig::new(0, 1, dir);
    cfg.memory_bytes_max = 64 << 20;
    cfg.tail_cache_bytes_max = 8 << 20;
    cfg
}

/// One uncompressed v2 batch of `count` records with these producer
/// fields and attributes; CRC valid.
fn batch(count: i32, producer: (i64, i16, i32), attributes: i16) -> Vec<u8> {
    let mut records = Vec::new();
    for i in 0..count {
        let mut body = vec![0u8];
        varint(&mut body, 0);
        varint(&mut body, i64::from(i));
        varint(&mut body, -1);
        varint(&mut body, 1);
        body.push(b'v');
        varint(&mut body, 0);
        varint(&mut records, body.len() as i64);
        records.extend_from_slice(&body);
    }
    let mut b = Vec::new();
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.push(2);
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&attributes.to_be_bytes());
    b.extend_from_slice(&(count - 1).to_be_bytes());
    b.extend_from_slice(&1000i64.to_be_bytes());
    b.extend_from_slice(&1000i64.to_be_bytes());
    b.extend_from_slice(&producer.0.to_be_bytes());
    b.extend_from_slice(&producer.1.to_be_bytes());
    b.extend_from_slice(&producer.2.to_be_bytes());
    b.extend_from_slice(&count.to_be_bytes());
    b.extend_from_slice(&records);
    let length = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// A transaction marker as a coordinator writes it: a transactional
/// control batch of one record, key (version 0, type), value (version 0,
/// coordinator epoch).
fn marker_batch(producer: (i64, i16), commit: bool) -> Vec<u8> {
    let mut body = vec![0u8];
    varint(&mut body, 0);
    varint(&mut body, 0);
    varint(&mut body, 4);
    body.extend_from_slice(&[0, 0, 0, u8::from(commit)]);
    varint(&mut body, 6);
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    varint(&mut body, 0);
    let mut record = Vec::new();
    varint(&mut record, body.len() as i64);
    record.extend_from_slice(&body);
    let mut b = batch(
        1,
        (producer.0, producer.1, -1),
        ATTRIBUTE_TRANSACTIONAL | ATTRIBUTE_CONTROL,
    );
    b.truncate(61);
    b.extend_from_slice(&record);
    let length = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// `b` at base offset `base`, stamped with leader epoch `epoch` (both
/// outside the CRC), as a leader stores it.
fn at(mut b: Vec<u8>, base: i64, epoch: i32) -> Vec<u8> {
    b[..8].copy_from_slice(&base.to_be_bytes());
    b[12..16].copy_from_slice(&epoch.to_be_bytes());
    b
}

fn attributes(b: &[u8]) -> i16 {
    i16::from_be_bytes([b[21], b[22]])
}

async fn create(shard: &Shard, meta: &Metadata, name: &str) -> Arc<TopicMeta> {
    let spec = TopicSpec {
        name: name.to_string(),
        partitions: 1,
        // Kept forever: the test's batches carry timestamps of 1970.
        configs: [("retention.ms".to_string(), "-1".to_string())].into(),
        replication_factor: 1,
        assignment: Vec::new(),
    };
    let topic = meta.create_topic(spec).await.expect("create topic");
    shard.await_topic_ready(&topic).await.expect("topic ready");
    topic
}

async fn produce(shard: &Shard, t: &Arc<TopicMeta>, records: Vec<u8>) -> Result<i64, ShardError> {
    let r = shard
        .produce(ProducePartition {
            topic: t.clone(),
            partition: 0,
            records: Bytes::from(records),
            acks: -1,
            timeout_ms: 10_000,
            origin: Origin::Client,
            transactional_id: Some(Arc::from("tx-1")),
        })
        .await;
    match r.error {
        None => Ok(r.base_offset),
        Some(e) => Err(e),
    }
}

async fn marker(
    shard: &Shard,
    t: &Arc<TopicMeta>,
    epoch: i16,
    commit: bool,
) -> Result<i64, ShardError> {
    let m = TxnMarker {
        producer_id: PRODUCER,
        producer_epoch: epoch,
        commit,
        coordinator_epoch: 0,
    };
    shard.write_txn_marker(t.clone(), 0, m).await
}

async fn fetch(
    shard: &Shard,
    t: &Arc<TopicMeta>,
    offset: i64,
    isolation_level: i8,
) -> FetchPartitionResult {
    let req = FetchRequest {
        partitions: vec![FetchPartition {
            topic: t.clone(),
            partition: 0,
            fetch_offset: offset,
            partition_max_bytes: 1 << 20,
            current_leader_epoch: -1,
        }],
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes: 1 << 20,
        isolation_level,
        replica_id: None,
    };
    let mut r = shard.fetch(req).await;
    assert_eq!(r.len(), 1);
    let r = r.remove(0);
    assert_eq!(r.error, None);
    r
}

async fn latest(shard: &Shard, t: &Arc<TopicMeta>, isolation_level: i8) -> i64 {
    let r = shard
        .list_offsets(ListOffsetsPartition {
            topic: t.clone(),
            partition: 0,
            timestamp: -1,
            isolation_level,
        })
        .await;
    assert_eq!(r.error, None);
    r.offset
}

fn bases(r: &FetchPartitionResult) -> Vec<i64> {
    r.records.iter().map(|b| base_offset(b)).collect()
}

#[test]
fn transactions_hold_the_last_stable_offset_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = start_meta(dir.path(), 1);
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    on_executor(move || async move {
        let shard = Shard::start(shard_config(&d), new_mesh(1), m.clone())
            .await
            .expect("start");
        let t = create(&shard, &m, "tx").await;
        let txn = ATTRIBUTE_TRANSACTIONAL;
        assert_eq!(produce(&shard, &t, batch(1, (-1, -1, -1), 0)).await, Ok(0));
        assert_eq!(
            produce(&shard, &t, batch(2, (PRODUCER, 0, 0), txn)).await,
            Ok(1)
        );
        assert_eq!(produce(&shard, &t, batch(1, (-1, -1, -1), 0)).await, Ok(3));

        // The open transaction holds the LSO at its first offset.
        let r = fetch(&shard, &t, 0, 1).await;
        assert_eq!((r.high_watermark, r.last_stable_offset), (4, 1));
        assert_eq!((bases(&r), r.aborted.clone()), (vec![0], vec![]));
        let r = fetch(&shard, &t, 0, 0).await;
        assert_eq!((bases(&r), r.last_stable_offset), (vec![0, 1, 3], 1));
        assert_eq!(
            (latest(&shard, &t, 0).await, latest(&shard, &t, 1).await),
            (4, 1)
        );

        // Kafka's refusals.
        let plain_of_producer = batch(1, (PRODUCER, 0, 2), 0);
        assert!(matches!(
            produce(&shard, &t, plain_of_producer).await,
            Err(ShardError::InvalidTxnState(_))
        ));
        let control = batch(1, (PRODUCER, 0, 2), txn | ATTRIBUTE_CONTROL);
        assert!(matches!(
            produce(&shard, &t, control).await,
            Err(ShardError::InvalidRecord(_))
        ));
        assert!(matches!(
            produce(&shard, &t, batch(1, (-1, -1, -1), txn)).await,
            Err(ShardError::InvalidRecord(_))
        ));
        let without_id = shard
            .produce(ProducePartition {
                topic: t.clone(),
                partition: 0,
                records: Bytes::from(batch(1, (PRODUCER, 0, 2), txn)),
                acks: -1,
                timeout_ms: 10_000,
                origin: Origin::Client,
                transactional_id: None,
            })
            .await;
        assert_eq!(
            without_id.error,
            Some(ShardError::TransactionalIdAuthorizationFailed)
        );

        // Aborted: the marker at 4; read_committed sees everything below
        // the new LSO and is told to drop producer 4000's records from 1.
        assert_eq!(marker(&shard, &t, 0, false).await, Ok(4));
        let r = fetch(&shard, &t, 0, 1).await;
        assert_eq!((r.high_watermark, r.last_stable_offset), (5, 5));
        assert_eq!(bases(&r), vec![0, 1, 3, 4]);
        assert_eq!(r.aborted, vec![(PRODUCER, 1)]);
        let stored_marker = r.records.last().expect("marker").clone();
        assert_eq!(attributes(&stored_marker), txn | ATTRIBUTE_CONTROL);
        assert!(fetch(&shard, &t, 0, 0).await.aborted.is_empty());
        assert!(fetch(&shard, &t, 5, 1).await.aborted.is_empty());

        // A marker at a newer epoch (no transaction open: written, closes
        // nothing) fences the older epoch.
        assert_eq!(marker(&shard, &t, 1, false).await, Ok(5));
        assert_eq!(fetch(&shard, &t, 0, 1).await.aborted, vec![(PRODUCER, 1)]);
        assert!(matches!(
            produce(&shard, &t, batch(1, (PRODUCER, 0, 2), txn)).await,
            Err(ShardError::InvalidProducerEpoch { current: 1, got: 0 })
        ));
        assert!(matches!(
            marker(&shard, &t, 0, true).await,
            Err(ShardError::InvalidProducerEpoch { current: 1, got: 0 })
        ));
        // The next transaction, at epoch 1 from sequence 0, stays open.
        assert_eq!(
            produce(&shard, &t, batch(1, (PRODUCER, 1, 0), txn)).await,
            Ok(6)
        );
        assert_eq!(latest(&shard, &t, 1).await, 6);
        shard.close().await;
    });
    // Recovery rebuilds the open transaction, the aborted index and the
    // producer's epoch from the WAL.
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    on_executor(move || async move {
        let shard = Shard::start(shard_config(&d), new_mesh(1), m.clone())
            .await
            .expect("restart");
        let t = m.view().topics["tx"].clone();
        let r = fetch(&shard, &t, 0, 1).await;
        assert_eq!((r.high_watermark, r.last_stable_offset), (7, 6));
        assert_eq!(bases(&r), vec![0, 1, 3, 4, 5]);
        assert_eq!(r.aborted, vec![(PRODUCER, 1)]);
        assert!(matches!(
            marker(&shard, &t, 0, true).await,
            Err(ShardError::InvalidProducerEpoch { current: 1, got: 0 })
        ));
        assert_eq!(
            produce(
                &shard,
                &t,
                batch(1, (PRODUCER, 1, 1), ATTRIBUTE_TRANSACTIONAL)
            )
            .await,
            Ok(7)
        );
        assert_eq!(marker(&shard, &t, 1, true).await, Ok(8));
        assert_eq!(latest(&shard, &t, 1).await, 9);
        let r = fetch(&shard, &t, 0, 1).await;
        assert_eq!(r.last_stable_offset, 9);
        assert_eq!(r.aborted, vec![(PRODUCER, 1)], "a commit adds nothing");
        shard.close().await;
    });
    meta.shutdown();
}

#[test]
fn a_follower_tracks_transactions_and_serves_them_once_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = start_meta(dir.path(), 1);
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    on_executor(move || async move {
        let shard = Shard::start(shard_config(&d), new_mesh(1), m.clone())
            .await
            .expect("start");
        let t = create(&shard, &m, "copied").await;
        let t = set_partition(&shard, &m, &t, 1, 2, 3, &[2, 1], &[2, 1]);
        assert_eq!(shard.mark_truncated(&t, 0, 3), Ok(true));
        let txn = ATTRIBUTE_TRANSACTIONAL;
        // The leader's log: producer 50's transaction at 0..=1, a plain
        // record at 2, its abort at 3, producer 51's transaction from 4.
        let leader_log = [
            at(batch(2, (50, 0, 0), txn), 0, 3),
            at(batch(1, (-1, -1, -1), 0), 2, 3),
            at(marker_batch((50, 0), false), 3, 3),
            at(batch(1, (51, 0, 0), txn), 4, 3),
        ]
        .concat();
        let end = shard
            .append_replica(&t, 0, Bytes::from(leader_log), 5)
            .await;
        assert_eq!(end, Ok(5));
        // Leader now: the one entry holding 0..=4 straddles the LSO (4),
        // so a read_committed fetch gets its batches below it.
        let t = set_partition(&shard, &m, &t, 2, 1, 4, &[1, 2], &[1, 2]);
        let r = fetch(&shard, &t, 0, 1).await;
        assert_eq!((r.high_watermark, r.last_stable_offset), (5, 4));
        assert_eq!(r.aborted, vec![(50, 0)]);
        assert_eq!(r.records.len(), 1);
        let returned = &r.records[0];
        let mut pos = 0usize;
        let mut batches = Vec::new();
        while pos < returned.len() {
            batches.push(base_offset(&returned[pos..]));
            let len = i32::from_be_bytes(returned[pos + 8..pos + 12].try_into().expect("4 bytes"));
            pos += 12 + len as usize;
        }
        assert_eq!(batches, vec![0, 2, 3], "producer 51's open batch is cut");
        // read_uncommitted gets the whole entry.
        let open_batch = batch(1, (51, 0, 0), txn).len();
        let whole = fetch(&shard, &t, 0, 0).await;
        assert_eq!(whole.records[0].len(), returned.len() + open_batch);
        assert!(whole.aborted.is_empty());
        assert_eq!(latest(&shard, &t, 1).await, 4);
        shard.close().await;
    });
    meta.shutdown();
}

/// One uncompressed v2 batch of one plain record carrying `value_bytes`
/// bytes, timestamp 1000 (long expired for any `retention.ms`). CRC valid.
fn big_batch(value_bytes: usize) -> Vec<u8> {
    let mut body = vec![0u8];
    varint(&mut body, 0);
    varint(&mut body, 0);
    varint(&mut body, -1);
    varint(&mut body, value_bytes as i64);
    body.resize(body.len() + value_bytes, b'x');
    varint(&mut body, 0);
    let mut records = Vec::new();
    varint(&mut records, body.len() as i64);
    records.extend_from_slice(&body);
    let mut b = batch(1, (-1, -1, -1), 0);
    b.truncate(61);
    b.extend_from_slice(&records);
    let length = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Small WAL segments, so that a few produces roll them.
const SMALL_SEGMENT: u64 = 256 << 10;

fn small_wal() -> WalTuning {
    WalTuning {
        segment_bytes: SMALL_SEGMENT,
        queue_bytes_max: 4 << 20,
        commit_bytes_max: 128 << 10,
        entry_bytes_max: 120 << 10,
        ..WalTuning::default()
    }
}

fn small_segment_config(dir: &Path) -> ShardConfig {
    let mut cfg = shard_config(dir);
    cfg.wal = small_wal();
    cfg
}

/// The kinds of the WAL entries holding partition 0 of topic `topic_id`
/// (read with the shard closed).
async fn kinds_of(dir: &Path, topic_id: [u8; 16]) -> Vec<u8> {
    let t = small_wal();
    let mut cfg = sluice_wal::WalConfig::new(dir.join("shard-0").join("wal"));
    cfg.segment_bytes = t.segment_bytes;
    cfg.queue_bytes_max = t.queue_bytes_max;
    cfg.commit_bytes_max = t.commit_bytes_max;
    cfg.entry_bytes_max = t.entry_bytes_max;
    let (wal, _) = sluice_wal::Wal::open(cfg).await.expect("WAL opens");
    let mut reader = wal.reader(wal.start());
    let mut kinds = Vec::new();
    while let Some(e) = reader.next().await {
        let e = e.expect("readable");
        if ![KIND_BATCHES, KIND_REPLICA_BATCHES, compact::KIND_REPLACE].contains(&e.kind) {
            continue;
        }
        let stored = compact::decode_stored(e.kind, &e.payload).expect("decodes");
        if stored.header.key.topic_id == topic_id && stored.header.key.partition == 0 {
            kinds.push(e.kind);
        }
    }
    wal.close().await.expect("WAL closes");
    kinds
}

/// The transaction state of partition 0 of `t` as the test below wrote it:
/// producer 4000's transaction at 1..=2 aborted at 3, a fencing abort at
/// epoch 1 at 4 (closes nothing), its transaction at epoch 1 open from 5.
async fn check_copied_state(shard: &Shard, t: &Arc<TopicMeta>) {
    let r = fetch(shard, t, 0, 1).await;
    assert_eq!((r.high_watermark, r.last_stable_offset), (6, 5));
    assert_eq!(bases(&r), vec![0, 1, 3, 4]);
    assert_eq!(r.aborted, vec![(PRODUCER, 1)], "the aborted index");
    assert_eq!(
        latest(shard, t, 1).await,
        5,
        "the LSO: the open transaction"
    );
    assert!(
        matches!(
            marker(shard, t, 0, true).await,
            Err(ShardError::InvalidProducerEpoch { current: 1, got: 0 })
        ),
        "the fencing marker's epoch"
    );
}

#[test]
fn transactions_copied_by_the_segment_collector_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = start_meta(dir.path(), 1);
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    let topic_id = std::sync::Arc::new(std::sync::Mutex::new([0u8; 16]));
    let id_out = topic_id.clone();
    on_executor(move || async move {
        let shard = Shard::start(small_segment_config(&d), new_mesh(1), m.clone())
            .await
            .expect("start");
        // Kept forever (the test's batches carry timestamps of 1970).
        let spec = TopicSpec {
            name: "tx".to_string(),
            partitions: 1,
            configs: [("retention.ms".to_string(), "-1".to_string())].into(),
            replication_factor: 1,
            assignment: Vec::new(),
        };
        let t = m.create_topic(spec).await.expect("create topic");
        shard.await_topic_ready(&t).await.expect("topic ready");
        *id_out.lock().expect("lock") = t.id;
        let txn = ATTRIBUTE_TRANSACTIONAL;
        assert_eq!(produce(&shard, &t, batch(1, (-1, -1, -1), 0)).await, Ok(0));
        assert_eq!(
            produce(&shard, &t, batch(2, (PRODUCER, 0, 0), txn)).await,
            Ok(1)
        );
        assert_eq!(marker(&shard, &t, 0, false).await, Ok(3));
        assert_eq!(marker(&shard, &t, 1, false).await, Ok(4));
        assert_eq!(
            produce(&shard, &t, batch(1, (PRODUCER, 1, 0), txn)).await,
            Ok(5)
        );
        check_copied_state(&shard, &t).await;
        let tx_end = shard.stats().wal.durable_end;

        // Fill the WAL with a topic whose records expire at once, until
        // the segment collector has copied the transactions forward and
        // retention has removed the segment of their originals.
        let spec = TopicSpec {
            name: "data".to_string(),
            partitions: 1,
            configs: [("retention.ms".to_string(), "300".to_string())].into(),
            replication_factor: 1,
            assignment: Vec::new(),
        };
        let data = m.create_topic(spec).await.expect("create data topic");
        shard.await_topic_ready(&data).await.expect("topic ready");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let s = shard.stats();
            if s.wal.start >= tx_end && s.counters.collector_entries_moved > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "originals not collected: WAL start {} below {tx_end}",
                s.wal.start
            );
            let r = shard
                .produce(ProducePartition {
                    topic: data.clone(),
                    partition: 0,
                    records: Bytes::from(big_batch(30 << 10)),
                    acks: 1,
                    timeout_ms: 5_000,
                    origin: Origin::Client,
                    transactional_id: None,
                })
                .await;
            assert_eq!(r.error, None);
            sleep_ms(20).await;
        }
        // Nothing changed while the entries moved.
        check_copied_state(&shard, &t).await;
        shard.close().await;
    });
    let id = *topic_id.lock().expect("lock");
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    on_executor(move || async move {
        let kinds = kinds_of(&d, id).await;
        assert!(
            !kinds.is_empty() && kinds.iter().all(|k| *k == compact::KIND_REPLACE),
            "only copies of the partition's entries are left: {kinds:?}"
        );
        // Recovery rebuilds the aborted index, the open transaction and
        // the producer's epoch from the copies.
        let shard = Shard::start(small_segment_config(&d), new_mesh(1), m.clone())
            .await
            .expect("restart");
        let t = m.view().topics["tx"].clone();
        check_copied_state(&shard, &t).await;
        // The open transaction goes on and commits.
        assert_eq!(
            produce(
                &shard,
                &t,
                batch(1, (PRODUCER, 1, 1), ATTRIBUTE_TRANSACTIONAL)
            )
            .await,
            Ok(6)
        );
        assert_eq!(marker(&shard, &t, 1, true).await, Ok(7));
        let r = fetch(&shard, &t, 0, 1).await;
        assert_eq!((r.high_watermark, r.last_stable_offset), (8, 8));
        assert_eq!(r.aborted, vec![(PRODUCER, 1)], "a commit adds nothing");
        shard.close().await;
    });
    meta.shutdown();
}
