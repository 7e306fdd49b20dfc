//! End-to-end tests of the shard: real glommio executors, a real WAL in a
//! temporary directory and a real `sluice_raft::Metadata`. Produce, fetch,
//! long poll, ListOffsets, cross-shard routing over the mesh, then close,
//! reopen and recover.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use sluice_raft::{Metadata, TopicMeta, TopicSpec};
use sluice_shard::{
    new_mesh, FetchPartition, FetchRequest, ListOffsetsPartition, ProducePartition,
    RecoveryProgress, Shard, ShardConfig, ShardError, ShardMesh, WalTuning,
};

// ---- helpers ---------------------------------------------------------------

fn shard_config(dir: &Path, id: u32, shards: u32) -> ShardConfig {
    let mut cfg = ShardConfig::new(id, shards, dir);
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

/// One uncompressed Kafka v2 record batch with a valid CRC32C.
fn batch(count: i32, timestamp_ms: i64, value: &[u8]) -> Vec<u8> {
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
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.push(2);
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(count - 1).to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&(-1i64).to_be_bytes());
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&count.to_be_bytes());
    b.extend_from_slice(&records);
    let length = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

fn crc_ok(b: &[u8]) -> bool {
    u32::from_be_bytes(b[17..21].try_into().expect("4 bytes")) == crc32c::crc32c(&b[21..])
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

async fn produce(shard: &Shard, topic: &Arc<TopicMeta>, partition: i32, records: Vec<u8>) -> i64 {
    let req = ProducePartition {
        topic: topic.clone(),
        partition,
        records: Bytes::from(records),
        acks: -1,
        timeout_ms: 30_000,
        origin: sluice_shard::Origin::Client,
        transactional_id: None,
    };
    let r = shard.produce(req).await;
    assert_eq!(r.error, None, "produce to {}/{partition}", topic.name);
    r.base_offset
}

fn fetch_req(
    topic: &Arc<TopicMeta>,
    partitions: &[(i32, i64)],
    max_wait_ms: u32,
    min_bytes: u32,
) -> FetchRequest {
    let partitions = partitions
        .iter()
        .map(|&(partition, fetch_offset)| FetchPartition {
            topic: topic.clone(),
            partition,
            fetch_offset,
            partition_max_bytes: 1 << 20,
            current_leader_epoch: -1,
        })
        .collect();
    FetchRequest {
        partitions,
        max_wait_ms,
        min_bytes,
        max_bytes: 50 << 20,
        isolation_level: 0,
        replica_id: None,
    }
}

async fn list(shard: &Shard, topic: &Arc<TopicMeta>, partition: i32, timestamp: i64) -> (i64, i64) {
    let r = shard
        .list_offsets(ListOffsetsPartition {
            topic: topic.clone(),
            partition,
            timestamp,
            isolation_level: 0,
        })
        .await;
    assert_eq!(r.error, None);
    (r.offset, r.timestamp)
}

// ---- one shard -------------------------------------------------------------

#[test]
fn produce_fetch_list_offsets_then_recover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = start_meta(dir.path(), 1);
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    on_executor(move || async move {
        let shard = Shard::start(shard_config(&d, 0, 1), new_mesh(1), m.clone())
            .await
            .expect("start");
        let t = create(&shard, &m, "orders", 2, &[]).await;
        assert_eq!(produce(&shard, &t, 0, batch(3, 1000, b"a")).await, 0);
        assert_eq!(produce(&shard, &t, 0, batch(2, 2000, b"b")).await, 3);
        assert_eq!(produce(&shard, &t, 0, batch(1, 3000, b"c")).await, 5);
        assert_eq!(produce(&shard, &t, 1, batch(4, 1500, b"d")).await, 0);

        let r = shard.fetch(fetch_req(&t, &[(0, 0), (1, 0)], 0, 1)).await;
        assert_eq!(
            (
                r[0].error.clone(),
                r[0].high_watermark,
                r[0].last_stable_offset
            ),
            (None, 6, 6)
        );
        let bases: Vec<i64> = r[0].records.iter().map(|b| base_offset(b)).collect();
        assert_eq!(bases, vec![0, 3, 5]);
        assert!(r[0].records.iter().all(|b| crc_ok(b)));
        assert_eq!((r[1].high_watermark, r[1].records.len()), (4, 1));

        // The entry holding offset 4 starts at 3; a fetch at the high watermark is empty.
        let r = shard.fetch(fetch_req(&t, &[(0, 4)], 0, 1)).await;
        assert_eq!(base_offset(&r[0].records[0]), 3);
        let r = shard.fetch(fetch_req(&t, &[(0, 6)], 0, 1)).await;
        assert!(r[0].error.is_none() && r[0].records.is_empty());
        let r = shard.fetch(fetch_req(&t, &[(0, 7)], 0, 1)).await;
        assert_eq!(r[0].error, Some(ShardError::OffsetOutOfRange));
        assert_eq!(r[0].high_watermark, 6);

        assert_eq!(list(&shard, &t, 0, -2).await, (0, -1));
        assert_eq!(list(&shard, &t, 0, -1).await, (6, -1));
        assert_eq!(list(&shard, &t, 0, 1500).await, (3, 2000));
        assert_eq!(list(&shard, &t, 0, 9999).await, (-1, -1));
        assert_eq!(list(&shard, &t, 0, -3).await, (5, 3000));
        shard.close().await;
    });
    // Reopen: the index is rebuilt from the WAL, offsets continue.
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    on_executor(move || async move {
        let progress = Arc::new(RecoveryProgress::default());
        let mut cfg = shard_config(&d, 0, 1);
        cfg.recovery_progress = Some(Arc::clone(&progress));
        let shard = Shard::start(cfg, new_mesh(1), m.clone())
            .await
            .expect("restart");
        // The replay reported its progress to the end of the WAL.
        let (replayed, total) = progress.bytes();
        assert!(total > 0 && replayed == total, "{replayed} of {total}");
        let stats = shard.stats();
        assert_eq!(stats.counters.recovered_entries, 4);
        assert_eq!(stats.partitions, 2);
        let t = m.view().topics["orders"].clone();
        let r = shard.fetch(fetch_req(&t, &[(0, 0)], 0, 1)).await;
        let bases: Vec<i64> = r[0].records.iter().map(|b| base_offset(b)).collect();
        assert_eq!((r[0].high_watermark, bases), (6, vec![0, 3, 5]));
        assert!(
            shard.stats().counters.fetch_wal_reads >= 3,
            "served from the WAL after restart"
        );
        assert_eq!(produce(&shard, &t, 0, batch(2, 4000, b"e")).await, 6);
        assert_eq!(produce(&shard, &t, 1, batch(1, 4000, b"f")).await, 4);
        shard.close().await;
    });
    meta.shutdown();
}

#[test]
fn bad_batches_get_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = start_meta(dir.path(), 1);
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    on_executor(move || async move {
        let shard = Shard::start(shard_config(&d, 0, 1), new_mesh(1), m.clone())
            .await
            .expect("start");
        let t = create(&shard, &m, "strict", 1, &[("max.message.bytes", "1000")]).await;
        let send = |records: Vec<u8>, partition: i32| {
            let req = ProducePartition {
                topic: t.clone(),
                partition,
                records: Bytes::from(records),
                acks: 1,
                timeout_ms: 30_000,
                origin: sluice_shard::Origin::Client,
                transactional_id: None,
            };
            shard.produce(req)
        };
        let mut bad_crc = batch(1, 0, b"x");
        *bad_crc.last_mut().expect("bytes") ^= 1;
        assert!(matches!(
            send(bad_crc, 0).await.error,
            Some(ShardError::CorruptMessage(_))
        ));
        assert!(matches!(
            send(batch(1, 0, &[0u8; 2000]), 0).await.error,
            Some(ShardError::MessageTooLarge { .. })
        ));
        assert!(matches!(
            send(batch(1, 0, b"x")[..30].to_vec(), 0).await.error,
            Some(ShardError::CorruptMessage(_))
        ));
        assert_eq!(
            send(batch(1, 0, b"x"), 5).await.error,
            Some(ShardError::UnknownTopicOrPartition)
        );
        assert_eq!(
            send(batch(1, 0, b"x"), 0).await.base_offset,
            0,
            "no offset was taken by the failures"
        );
        shard.close().await;
    });
    meta.shutdown();
}

#[test]
fn log_append_time_and_acks_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = start_meta(dir.path(), 1);
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    on_executor(move || async move {
        let shard = Shard::start(shard_config(&d, 0, 1), new_mesh(1), m.clone())
            .await
            .expect("start");
        let t = create(
            &shard,
            &m,
            "stamped",
            1,
            &[("message.timestamp.type", "LogAppendTime")],
        )
        .await;
        let req = ProducePartition {
            topic: t.clone(),
            partition: 0,
            records: Bytes::from(batch(2, 5, b"v")),
            acks: 1,
            timeout_ms: 30_000,
            origin: sluice_shard::Origin::Client,
            transactional_id: None,
        };
        let r = shard.produce(req).await;
        assert!(r.log_append_time_ms > 1_600_000_000_000, "{r:?}");
        let req = ProducePartition {
            topic: t.clone(),
            partition: 0,
            records: Bytes::from(batch(1, 5, b"w")),
            acks: 0,
            timeout_ms: 30_000,
            origin: sluice_shard::Origin::Client,
            transactional_id: None,
        };
        assert_eq!(shard.produce(req).await.base_offset, 2);
        // acks=0 is still written: a long poll sees it become durable.
        let r = shard.fetch(fetch_req(&t, &[(0, 2)], 2000, 1)).await;
        assert_eq!(r[0].high_watermark, 3);
        let r = shard.fetch(fetch_req(&t, &[(0, 0)], 0, 1)).await;
        let first = &r[0].records[0];
        assert_eq!(first[22] & 0x08, 0x08, "timestamp type bit set");
        assert!(crc_ok(first));
        shard.close().await;
    });
    meta.shutdown();
}

#[test]
fn produces_beyond_the_inflight_pool_wait_and_keep_call_order() {
    // 8 MiB of memory: a 2 MiB produce_inflight pool, far below the burst.
    const BURST: usize = 40;
    const RECORDS: i32 = 4;
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = start_meta(dir.path(), 1);
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    on_executor(move || async move {
        let mut cfg = shard_config(&d, 0, 1);
        cfg.memory_bytes_max = 8 << 20;
        let shard = Rc::new(
            Shard::start(cfg, new_mesh(1), m.clone())
                .await
                .expect("start"),
        );
        let t = create(&shard, &m, "burst", 2, &[]).await;
        let big = vec![b'x'; 120 << 10];
        // Large batches to partition 0, small ones to partition 1, in one
        // burst: `join_all` polls (and so calls the shard) in this order.
        let work = (0..BURST).map(|i| {
            let (partition, value) = if i % 4 == 3 {
                (1, &b"s"[..])
            } else {
                (0, &big[..])
            };
            let req = ProducePartition {
                topic: t.clone(),
                partition,
                records: Bytes::from(batch(RECORDS, 1000 + i as i64, value)),
                acks: -1,
                timeout_ms: 30_000,
                origin: sluice_shard::Origin::Client,
                transactional_id: None,
            };
            let shard = shard.clone();
            async move { (partition, shard.produce(req).await) }
        });
        let results = futures::future::join_all(work).await;
        let mut next = [0i64; 2];
        for (i, (partition, r)) in results.into_iter().enumerate() {
            assert_eq!(r.error, None, "produce {i} waits, never fails");
            let p = partition as usize;
            assert_eq!(
                r.base_offset, next[p],
                "produce {i}: call order is offset order"
            );
            next[p] += i64::from(RECORDS);
        }
        let stats = shard.stats();
        assert!(stats.produce_admission_waits > 0, "the burst had to wait");
        let inflight = &stats.pools[1];
        assert_eq!(inflight.name, "produce_inflight");
        assert!(inflight.waits > 0 && inflight.peak_bytes <= inflight.max_bytes);
        assert_eq!(
            (stats.produce_admissions_waiting, inflight.used_bytes),
            (0, 0)
        );
        shard.close().await;
    });
    meta.shutdown();
}

#[test]
fn long_poll_wakes_on_produce_and_times_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = start_meta(dir.path(), 1);
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    on_executor(move || async move {
        let shard = Shard::start(shard_config(&d, 0, 1), new_mesh(1), m.clone())
            .await
            .expect("start");
        let t = create(&shard, &m, "polled", 1, &[]).await;
        let started = Instant::now();
        let r = shard.fetch(fetch_req(&t, &[(0, 0)], 150, 1)).await;
        assert!(r[0].records.is_empty());
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "waited until max_wait"
        );

        let waiting = {
            let (shard, t) = (shard.clone(), t.clone());
            glommio::spawn_local(
                async move { shard.fetch(fetch_req(&t, &[(0, 0)], 10_000, 1)).await },
            )
        };
        glommio::timer::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        produce(&shard, &t, 0, batch(1, 0, b"wake")).await;
        let r = waiting.await;
        assert_eq!(r[0].records.len(), 1);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "woken by the produce, not the deadline"
        );
        let s = shard.stats();
        assert_eq!(s.waiters.waiting, 0, "no waiter left behind");
        assert!(s.counters.fetch_long_polls >= 2);
        shard.close().await;
    });
    meta.shutdown();
}

#[test]
fn tail_cache_eviction_and_segment_crossing_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = start_meta(dir.path(), 1);
    let value = vec![7u8; 100 << 10];
    let (d, m, v) = (dir.path().to_path_buf(), meta.clone(), value.clone());
    on_executor(move || async move {
        let mut cfg = shard_config(&d, 0, 1);
        cfg.tail_cache_bytes_max = 300 << 10;
        let shard = Shard::start(cfg, new_mesh(1), m.clone())
            .await
            .expect("start");
        let t = create(&shard, &m, "big", 1, &[]).await;
        for i in 0..60 {
            assert_eq!(produce(&shard, &t, 0, batch(1, i, &v)).await, i);
        }
        let s = shard.stats();
        assert!(s.tail_cache_evictions > 0);
        assert!(s.pools.iter().all(|p| p.used_bytes <= p.max_bytes));
        assert!(s.wal.segments >= 2, "crossed a segment: {}", s.wal.segments);
        let mut req = fetch_req(&t, &[(0, 0)], 0, 1);
        req.max_bytes = 1 << 20;
        let r = shard.fetch(req).await;
        assert!(
            r[0].records.len() >= 9 && r[0].records.len() <= 10,
            "{}",
            r[0].records.len()
        );
        assert!(shard.stats().counters.fetch_wal_reads > 0);
        shard.close().await;
    });
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    on_executor(move || async move {
        let shard = Shard::start(shard_config(&d, 0, 1), new_mesh(1), m.clone())
            .await
            .expect("restart");
        assert_eq!(shard.stats().counters.recovered_entries, 60);
        let t = m.view().topics["big"].clone();
        assert_eq!(list(&shard, &t, 0, -1).await, (60, -1));
        let r = shard.fetch(fetch_req(&t, &[(0, 59)], 0, 1)).await;
        assert_eq!(base_offset(&r[0].records[0]), 59);
        shard.close().await;
    });
    meta.shutdown();
}

#[test]
fn deleted_topic_entries_are_skipped_on_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = start_meta(dir.path(), 1);
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    on_executor(move || async move {
        let shard = Shard::start(shard_config(&d, 0, 1), new_mesh(1), m.clone())
            .await
            .expect("start");
        let gone = create(&shard, &m, "gone", 1, &[]).await;
        let kept = create(&shard, &m, "kept", 1, &[]).await;
        produce(&shard, &gone, 0, batch(1, 0, b"x")).await;
        produce(&shard, &kept, 0, batch(1, 0, b"y")).await;
        m.delete_topic("gone").await.expect("delete");
        // The watcher drops the partition; a produce with the stale topic fails.
        let deadline = Instant::now() + Duration::from_secs(5);
        while shard.stats().partitions != 1 {
            assert!(Instant::now() < deadline, "watcher applied the delete");
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        let req = ProducePartition {
            topic: gone.clone(),
            partition: 0,
            records: Bytes::from(batch(1, 0, b"z")),
            acks: 1,
            timeout_ms: 30_000,
            origin: sluice_shard::Origin::Client,
            transactional_id: None,
        };
        assert_eq!(
            shard.produce(req).await.error,
            Some(ShardError::UnknownTopicOrPartition)
        );
        shard.close().await;
    });
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    on_executor(move || async move {
        let shard = Shard::start(shard_config(&d, 0, 1), new_mesh(1), m.clone())
            .await
            .expect("restart");
        let c = shard.stats().counters;
        assert_eq!((c.recovered_entries, c.recovery_skipped_entries), (1, 1));
        shard.close().await;
    });
    meta.shutdown();
}

// ---- several shards --------------------------------------------------------

/// Starts `shards` shard executors; shard 0 runs `test`, the others serve
/// until it is done. Every shard closes at the end.
fn with_shards<F, Fut>(dir: &Path, meta: &Metadata, shards: u32, test: F)
where
    F: FnOnce(Rc<Shard>, Metadata) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let mesh: ShardMesh = new_mesh(shards);
    let mut stops = Vec::new();
    let mut handles = Vec::new();
    for id in 1..shards {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        stops.push(stop_tx);
        let (d, m, mesh) = (dir.to_path_buf(), meta.clone(), mesh.clone());
        let h = glommio::LocalExecutorBuilder::default()
            .name(&format!("shard-{id}"))
            .spawn(move || async move {
                let shard = Shard::start(shard_config(&d, id, shards), mesh, m)
                    .await
                    .expect("start peer");
                let _ = stop_rx.await;
                shard.close().await;
            })
            .expect("executor");
        handles.push(h);
    }
    let (d, m) = (dir.to_path_buf(), meta.clone());
    on_executor(move || async move {
        let shard = Shard::start(shard_config(&d, 0, shards), mesh, m.clone())
            .await
            .expect("start shard 0");
        test(shard.clone(), m).await;
        for s in stops {
            let _ = s.send(());
        }
        shard.close().await;
    });
    for h in handles {
        h.join().expect("peer shard thread");
    }
}

fn cross_shard(shards: u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = start_meta(dir.path(), shards);
    with_shards(dir.path(), &meta, shards, move |shard, m| async move {
        let parts = (shards * 2) as i32;
        let t = create(&shard, &m, "spread", parts as u32, &[]).await;
        assert!(
            t.partitions.iter().any(|p| p.shard != 0),
            "some partitions live elsewhere"
        );
        for p in 0..parts {
            assert_eq!(
                produce(&shard, &t, p, batch(2, 100 + i64::from(p), b"x")).await,
                0
            );
            assert_eq!(produce(&shard, &t, p, batch(1, 200, b"y")).await, 2);
        }
        let all: Vec<(i32, i64)> = (0..parts).map(|p| (p, 0)).collect();
        let r = shard.fetch(fetch_req(&t, &all, 0, 1)).await;
        for (p, res) in r.iter().enumerate() {
            assert_eq!(res.error, None, "partition {p}");
            assert_eq!(
                (res.high_watermark, res.records.len()),
                (3, 2),
                "partition {p}"
            );
        }
        assert_eq!(list(&shard, &t, parts - 1, -1).await, (3, -1));
        assert_eq!(list(&shard, &t, parts - 1, 150).await, (2, 200));

        // A long poll over every shard is released by a produce on any of them.
        let ends: Vec<(i32, i64)> = (0..parts).map(|p| (p, 3)).collect();
        let waiting = {
            let (shard, t) = (shard.clone(), t.clone());
            glommio::spawn_local(async move { shard.fetch(fetch_req(&t, &ends, 10_000, 1)).await })
        };
        glommio::timer::sleep(Duration::from_millis(50)).await;
        let remote = t
            .partitions
            .iter()
            .position(|p| p.shard != 0)
            .expect("remote") as i32;
        let started = Instant::now();
        produce(&shard, &t, remote, batch(1, 300, b"z")).await;
        let r = waiting.await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "woken by the produce"
        );
        assert_eq!(r[remote as usize].records.len(), 1);
        let total: usize = r.iter().map(|x| x.records.len()).sum();
        assert_eq!(total, 1);
        assert!(shard.stats().counters.remote_sent > 0);
    });
    // Every shard recovers its own partitions.
    with_shards(dir.path(), &meta, shards, move |shard, m| async move {
        let t = m.view().topics["spread"].clone();
        for p in 0..(shards * 2) as i32 {
            let expect = if t.partitions.iter().position(|x| x.shard != 0) == Some(p as usize) {
                4
            } else {
                3
            };
            assert_eq!(list(&shard, &t, p, -1).await, (expect, -1), "partition {p}");
        }
    });
    meta.shutdown();
}

#[test]
fn two_shards_route_and_recover() {
    cross_shard(2);
}

#[test]
fn four_shards_route_and_recover() {
    cross_shard(4);
}

/// A fetch whose local owner answers at once (its partition has records)
/// while another owner would wait: the other owner's long poll is cut short
/// and the answer comes at once, not at `max_wait_ms`. The local owner used
/// to answer before the remote sub-fetch was even sent, so its cancel came
/// first, found nothing to cancel, and the remote owner waited out its long
/// poll (read_committed consumers saw records a whole commit interval late,
/// as the remote partitions only grew at the next commit).
#[test]
fn a_local_answer_cuts_the_remote_long_poll_short() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = start_meta(dir.path(), 2);
    with_shards(dir.path(), &meta, 2, move |shard, m| async move {
        let t = create(&shard, &m, "cut-short", 4, &[]).await;
        let local = t
            .partitions
            .iter()
            .position(|p| p.shard == 0)
            .expect("local") as i32;
        let remote = t
            .partitions
            .iter()
            .position(|p| p.shard == 1)
            .expect("remote") as i32;
        for isolation_level in [0i8, 1] {
            let offset = produce(&shard, &t, local, batch(1, 100, b"ready")).await;
            let mut req = fetch_req(&t, &[(local, offset), (remote, 0)], 5_000, 1);
            req.isolation_level = isolation_level;
            let started = Instant::now();
            let r = shard.fetch(req).await;
            let took = started.elapsed();
            assert_eq!(
                (r[0].error.clone(), r[0].records.len()),
                (None, 1),
                "isolation {isolation_level}: the local record"
            );
            assert_eq!(
                (r[1].error.clone(), r[1].records.len()),
                (None, 0),
                "isolation {isolation_level}: nothing remote"
            );
            assert!(
                took < Duration::from_secs(2),
                "isolation {isolation_level}: answered after {took:?}, not at once"
            );
        }
    });
    meta.shutdown();
}
