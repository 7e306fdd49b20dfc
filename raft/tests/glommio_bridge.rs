//! The shards are glommio executors: the metadata handle must work from a
//! glommio task (requests, answers and `changed` wake-ups cross from the
//! control thread's tokio runtime into glommio).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice_raft::{MetaConfig, Metadata, TopicSpec};

fn spec(name: &str) -> TopicSpec {
    TopicSpec {
        name: name.to_string(),
        partitions: 2,
        configs: BTreeMap::new(),
        replication_factor: 1,
        assignment: Vec::new(),
    }
}

#[test]
fn create_and_changed_from_a_glommio_executor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = MetaConfig {
        data_dir: dir.path().to_path_buf(),
        node_id: 1,
        shards: 2,
        partitions_per_shard_max: 100,
        advertised_host: "127.0.0.1".into(),
        advertised_port: 9092,
        endpoints: Vec::new(),
        cluster: None,
    };
    let meta = Metadata::start(cfg).expect("start");
    let shard_meta = meta.clone();
    let executor = glommio::LocalExecutorBuilder::default()
        .io_memory(512 * 1024)
        .make()
        .expect("glommio executor");
    let round_trips_us = executor.run(async move {
        let since = shard_meta.view().version;
        let waiter = {
            let meta = shard_meta.clone();
            glommio::spawn_local(async move { meta.changed(since).await })
        };
        let created = shard_meta
            .create_topic(spec("from-glommio"))
            .await
            .expect("create");
        let seen = waiter.await;
        assert!(seen.version > since);
        assert_eq!(seen.topics["from-glommio"], created);
        let mut samples_us = Vec::new();
        for i in 0..50 {
            let t = Instant::now();
            shard_meta
                .create_topic(spec(&format!("rt-{i}")))
                .await
                .expect("create");
            samples_us.push(t.elapsed().as_micros() as u64);
        }
        samples_us
    });
    assert_eq!(meta.view().topics.len(), 51);
    let mut sorted = round_trips_us;
    sorted.sort_unstable();
    println!(
        "create_topic from glommio: p50 {} us, max {} us",
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    );
    meta.shutdown();
    // After shutdown a waiter is released rather than left hanging.
    let released = glommio::LocalExecutorBuilder::default()
        .io_memory(512 * 1024)
        .make()
        .expect("executor");
    let done = released.run(async move {
        glommio::timer::timeout(Duration::from_secs(5), async {
            Ok(meta.changed(u64::MAX).await)
        })
        .await
    });
    assert!(done.is_ok(), "changed() resolves after shutdown");
}
