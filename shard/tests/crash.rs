//! SIGKILL test: a child process (this test binary, re-run in child mode)
//! produces with acks=1 from several concurrent producers and prints every
//! acknowledged offset; the parent kills it with SIGKILL mid-stream, then
//! recovers the shard and checks that every acknowledged offset is there,
//! that offsets are contiguous (no gap, no repeat) and that new offsets
//! continue right after the recovered ones.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bytes::Bytes;
use sluice_raft::{MetaConfig, Metadata, TopicSpec};
use sluice_shard::{
    new_mesh, FetchPartition, FetchRequest, ListOffsetsPartition, ProducePartition, Shard,
    ShardConfig,
};

const CHILD_ENV: &str = "SLUICE_SHARD_CRASH_CHILD_DIR";
const PRODUCERS: usize = 4;
const ACKS_BEFORE_KILL: usize = 300;

fn start_meta(dir: &Path) -> Metadata {
    let cfg = MetaConfig {
        data_dir: dir.to_path_buf(),
        node_id: 1,
        shards: 1,
        partitions_per_shard_max: 10,
        advertised_host: "127.0.0.1".into(),
        advertised_port: 9092,
        endpoints: Vec::new(),
        cluster: None,
    };
    Metadata::start(cfg).expect("metadata starts")
}

fn shard_config(dir: &Path) -> ShardConfig {
    let mut cfg = ShardConfig::new(0, 1, dir);
    cfg.memory_bytes_max = 64 << 20;
    cfg
}

fn batch(value: &[u8]) -> Vec<u8> {
    let mut body = vec![0u8, 0, 0, 1]; // attributes, timestampDelta 0, offsetDelta 0, key null (-1)
    body.push((value.len() as u8) << 1);
    body.extend_from_slice(value);
    body.push(0); // no headers
    let mut b = Vec::new();
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.push(2);
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes()); // lastOffsetDelta
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&(-1i64).to_be_bytes());
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&1i32.to_be_bytes()); // recordCount
    b.push((body.len() as u8) << 1);
    b.extend_from_slice(&body);
    let length = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Child mode: produce forever, print each acknowledged base offset.
fn child(dir: PathBuf) {
    let meta = start_meta(&dir);
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let shard = Shard::start(shard_config(&dir), new_mesh(1), meta.clone())
                .await
                .expect("start");
            let spec = TopicSpec {
                name: "crash".into(),
                partitions: 1,
                configs: BTreeMap::new(),
                replication_factor: 1,
                assignment: Vec::new(),
            };
            let topic = meta.create_topic(spec).await.expect("create");
            shard.await_topic_ready(&topic).await.expect("ready");
            let producer = |n: usize| {
                let (shard, topic) = (&shard, topic.clone());
                async move {
                    loop {
                        let records = Bytes::from(batch(format!("p{n}").as_bytes()));
                        let r = shard
                            .produce(ProducePartition {
                                topic: topic.clone(),
                                partition: 0,
                                records,
                                acks: 1,
                                timeout_ms: 30_000,
                                origin: sluice_shard::Origin::Client,
                                transactional_id: None,
                            })
                            .await;
                        assert_eq!(r.error, None);
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "acked {}", r.base_offset);
                        let _ = out.flush();
                    }
                }
            };
            futures::future::join_all((0..PRODUCERS).map(producer)).await;
        })
        .expect("executor")
        .join()
        .expect("join");
}

#[test]
fn sigkill_keeps_acknowledged_offsets_contiguous() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        return child(PathBuf::from(dir));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut proc = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "sigkill_keeps_acknowledged_offsets_contiguous",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("child");
    let stdout = proc.stdout.take().expect("stdout");
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("child output");
        if let Some(offset) = line.strip_prefix("acked ") {
            acked.push(offset.trim().parse::<i64>().expect("offset"));
            if acked.len() == ACKS_BEFORE_KILL {
                break;
            }
        }
    }
    assert_eq!(acked.len(), ACKS_BEFORE_KILL, "the child produced");
    proc.kill().expect("SIGKILL");
    proc.wait().expect("reaped");
    let last_acked = *acked.iter().max().expect("acks");

    let meta = start_meta(dir.path());
    let (d, m) = (dir.path().to_path_buf(), meta.clone());
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let shard = Shard::start(shard_config(&d), new_mesh(1), m.clone())
                .await
                .expect("recover");
            let topic = m.view().topics["crash"].clone();
            let list = ListOffsetsPartition {
                topic: topic.clone(),
                partition: 0,
                timestamp: -1,
                isolation_level: 0,
            };
            let hw = shard.list_offsets(list).await.offset;
            assert!(
                hw > last_acked,
                "hw {hw} covers every acknowledged offset (last {last_acked})"
            );
            let mut next = 0i64;
            while next < hw {
                let fp = FetchPartition {
                    topic: topic.clone(),
                    partition: 0,
                    fetch_offset: next,
                    partition_max_bytes: 1 << 20,
                    current_leader_epoch: -1,
                };
                let req = FetchRequest {
                    partitions: vec![fp],
                    max_wait_ms: 0,
                    min_bytes: 1,
                    max_bytes: 1 << 20,
                    isolation_level: 0,
                    replica_id: None,
                };
                let r = shard.fetch(req).await;
                assert_eq!(r[0].error, None);
                assert!(!r[0].records.is_empty());
                for b in &r[0].records {
                    let base = i64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
                    assert_eq!(base, next, "offsets are contiguous, without gap or repeat");
                    next += 1;
                }
            }
            let records = Bytes::from(batch(b"after"));
            let r = shard
                .produce(ProducePartition {
                    topic,
                    partition: 0,
                    records,
                    acks: 1,
                    timeout_ms: 30_000,
                    origin: sluice_shard::Origin::Client,
                    transactional_id: None,
                })
                .await;
            assert_eq!(
                r.base_offset, hw,
                "new offsets continue right after the recovered ones"
            );
            shard.close().await;
        })
        .expect("executor")
        .join()
        .expect("join");
    meta.shutdown();
}
