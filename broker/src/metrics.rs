//! `/metrics` (Prometheus text, encoded by `prometheus-client`) and
//! `/admin/memory` (JSON) from shard snapshots (`probe`) and the process's
//! own memory figures. Runs on the admin thread only.
//!
//! Every scrape builds a fresh registry holding one collector over the
//! snapshots: nothing is kept or updated between scrapes.

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use sluice_index::IndexFigures;
use sluice_raft::MetadataView;

use crate::probe::ShardProbe;

/// Bucket bounds (inclusive upper bounds) of exported byte histograms.
const BYTES_BUCKETS: [u64; 12] = [
    512,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
    2 << 20,
    4 << 20,
    8 << 20,
    16 << 20,
    64 << 20,
];
/// Bucket bounds of exported latency histograms, microseconds.
const LATENCY_US_BUCKETS: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];
/// Bucket bounds of commit sizes in entries.
const ENTRIES_BUCKETS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024];

/// The process's memory as the kernel sees it (`/proc/self/status`), bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessMemory {
    pub rss: u64,
    /// The highest RSS since the process started (`VmHWM`).
    pub rss_peak: u64,
    pub rss_anon: u64,
    /// File-backed and shared pages (mapped files, shared memory).
    pub rss_mapped: u64,
    pub threads: u64,
}

impl ProcessMemory {
    pub fn read() -> ProcessMemory {
        let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        ProcessMemory {
            rss: field("VmRSS:") * 1024,
            rss_peak: field("VmHWM:") * 1024,
            rss_anon: field("RssAnon:") * 1024,
            rss_mapped: (field("RssFile:") + field("RssShmem:")) * 1024,
            threads: field("Threads:"),
        }
    }
}

/// The node's view of the cluster, from the applied metadata (Kafka's
/// under-replicated and offline partition counts, the controller).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClusterFigures {
    pub brokers_live: u64,
    pub brokers_fenced: u64,
    /// Node id of the controller, -1 when none is known.
    pub controller: i64,
    /// Partitions this node leads.
    pub leader_partitions: u64,
    /// Partitions this node leads whose ISR is smaller than their replicas.
    pub under_replicated: u64,
    /// Partitions this node leads with fewer in-sync replicas than their
    /// `min.insync.replicas` (acks=all is refused there).
    pub under_min_isr: u64,
    /// Partitions without a leader (every in-sync replica fenced).
    pub offline: u64,
}

impl ClusterFigures {
    /// One pass over the view's partitions (a scrape, not a hot path).
    pub fn of(
        view: &MetadataView,
        controller: Option<u64>,
        min_insync_default: usize,
    ) -> ClusterFigures {
        let me = view.node_id;
        let mut f = ClusterFigures {
            controller: controller.and_then(|c| i64::try_from(c).ok()).unwrap_or(-1),
            ..ClusterFigures::default()
        };
        for b in view.brokers.values() {
            if b.fenced {
                f.brokers_fenced += 1;
            } else {
                f.brokers_live += 1;
            }
        }
        for topic in view.topics.values() {
            let min_insync = topic
                .configs
                .get("min.insync.replicas")
                .and_then(|v| v.parse().ok())
                .unwrap_or(min_insync_default);
            for p in &topic.partitions {
                if p.leader == sluice_raft::NO_LEADER {
                    f.offline += 1;
                    continue;
                }
                if p.leader != me {
                    continue;
                }
                f.leader_partitions += 1;
                f.under_replicated += u64::from(p.isr.len() < p.replicas.len());
                f.under_min_isr += u64::from(p.isr.len() < min_insync.min(p.replicas.len()));
            }
        }
        f
    }
}

/// Everything one scrape exports.
#[derive(Debug)]
struct Snapshot {
    shards: Vec<ShardProbe>,
    missing: Vec<u32>,
    process: ProcessMemory,
    cluster: ClusterFigures,
    /// The shards' open search indexes.
    search: Vec<IndexFigures>,
}

/// Renders the Prometheus text exposition.
pub fn render_prometheus(
    probes: Vec<Result<ShardProbe, u32>>,
    cluster: ClusterFigures,
    search: Vec<IndexFigures>,
) -> String {
    let mut snapshot = split(probes, ProcessMemory::read());
    snapshot.cluster = cluster;
    snapshot.search = search;
    let mut registry = Registry::with_prefix("sluice");
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "encoding /metrics");
    }
    out
}

fn split(probes: Vec<Result<ShardProbe, u32>>, process: ProcessMemory) -> Snapshot {
    let (mut shards, mut missing) = (Vec::new(), Vec::new());
    for p in probes {
        match p {
            Ok(p) => shards.push(p),
            Err(id) => missing.push(id),
        }
    }
    Snapshot {
        shards,
        missing,
        process,
        cluster: ClusterFigures::default(),
        search: Vec::new(),
    }
}

type Labels = Vec<(&'static str, String)>;

fn shard_label(p: &ShardProbe) -> Labels {
    vec![("shard", p.stats.shard_id.to_string())]
}

/// Writes one metric family: a descriptor and one sample per label set.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let Some(kind) = samples.first().map(|(_, m)| m.metric_type()) else {
        return Ok(());
    };
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    if let [(labels, m)] = samples.as_slice() {
        if labels.is_empty() {
            return m.encode(metric);
        }
    }
    for (labels, m) in &samples {
        m.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauges(
    enc: &mut DescriptorEncoder,
    shards: &[ShardProbe],
    name: &str,
    help: &str,
    value: impl Fn(&ShardProbe) -> u64,
) -> Result<(), std::fmt::Error> {
    let samples = shards
        .iter()
        .map(|p| (shard_label(p), ConstGauge::new(value(p) as i64)))
        .collect();
    family(enc, name, help, samples)
}

fn counters(
    enc: &mut DescriptorEncoder,
    shards: &[ShardProbe],
    name: &str,
    help: &str,
    value: impl Fn(&ShardProbe) -> u64,
) -> Result<(), std::fmt::Error> {
    let samples = shards
        .iter()
        .map(|p| (shard_label(p), ConstCounter::new(value(p))))
        .collect();
    family(enc, name, help, samples)
}

/// A counter family labelled by shard and reason.
fn reason_counters(
    enc: &mut DescriptorEncoder,
    shards: &[ShardProbe],
    name: &str,
    help: &str,
    by_reason: impl Fn(&ShardProbe) -> &[(&'static str, u64)],
) -> Result<(), std::fmt::Error> {
    labelled_counters(enc, shards, name, help, "reason", by_reason)
}

/// Counters per shard and value of `label`.
fn labelled_counters(
    enc: &mut DescriptorEncoder,
    shards: &[ShardProbe],
    name: &str,
    help: &str,
    label: &'static str,
    by_reason: impl Fn(&ShardProbe) -> &[(&'static str, u64)],
) -> Result<(), std::fmt::Error> {
    let by_reason = &by_reason;
    let samples = shards
        .iter()
        .flat_map(|p| {
            by_reason(p).iter().map(move |(reason, n)| {
                let mut l = shard_label(p);
                l.push((label, reason.to_string()));
                (l, ConstCounter::new(*n))
            })
        })
        .collect();
    family(enc, name, help, samples)
}

/// An hdrhistogram exported with fixed buckets; values scaled by `scale`
/// (1e-6 turns microseconds into seconds).
struct HdrMetric<'a> {
    hist: &'a Histogram<u64>,
    bounds: &'a [u64],
    scale: f64,
}

impl std::fmt::Debug for HdrMetric<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HdrMetric")
    }
}

impl EncodeMetric for HdrMetric<'_> {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let h = self.hist;
        let sum = h.mean() * h.len() as f64 * self.scale;
        let buckets = bucket_counts(h, self.bounds, self.scale);
        encoder.encode_histogram::<Labels>(sum, h.len(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The count of each bucket alone (not cumulative: the encoder adds them
/// up), the last one `+Inf`.
fn bucket_counts(h: &Histogram<u64>, bounds: &[u64], scale: f64) -> Vec<(f64, u64)> {
    let mut below = 0;
    let mut buckets: Vec<(f64, u64)> = bounds
        .iter()
        .map(|&b| {
            let cumulative = h.count_between(0, b).max(below);
            let own = cumulative - below;
            below = cumulative;
            (b as f64 * scale, own)
        })
        .collect();
    buckets.push((f64::INFINITY, h.len().saturating_sub(below)));
    buckets
}

fn histograms(
    enc: &mut DescriptorEncoder,
    shards: &[ShardProbe],
    name: &str,
    help: &str,
    pick: impl Fn(&ShardProbe) -> (&Histogram<u64>, &'static [u64], f64),
) -> Result<(), std::fmt::Error> {
    let samples = shards
        .iter()
        .map(|p| {
            let (hist, bounds, scale) = pick(p);
            (
                shard_label(p),
                HdrMetric {
                    hist,
                    bounds,
                    scale,
                },
            )
        })
        .collect();
    family(enc, name, help, samples)
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_process(&mut enc)?;
        self.encode_cluster(&mut enc)?;
        self.encode_pools(&mut enc)?;
        self.encode_shards(&mut enc)?;
        self.encode_search(&mut enc)?;
        self.encode_histograms(&mut enc)
    }
}

impl Snapshot {
    fn encode_process(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.process;
        let one = |v: u64| vec![(Labels::new(), ConstGauge::new(v as i64))];
        family(
            enc,
            "process_resident_bytes",
            "Resident set size of the process.",
            one(m.rss),
        )?;
        family(
            enc,
            "process_resident_peak_bytes",
            "Highest resident set size since the process started (VmHWM).",
            one(m.rss_peak),
        )?;
        family(
            enc,
            "process_resident_anon_bytes",
            "Anonymous (heap) resident memory.",
            one(m.rss_anon),
        )?;
        family(
            enc,
            "process_resident_mapped_bytes",
            "File-backed and shared resident memory.",
            one(m.rss_mapped),
        )?;
        family(
            enc,
            "process_threads",
            "Threads of the process.",
            one(m.threads),
        )?;
        family(
            enc,
            "shards_unanswered",
            "Shards that did not answer this scrape.",
            one(self.missing.len() as u64),
        )
    }

    /// One sample per shard with an open search index.
    fn encode_search(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        type Pick = fn(&IndexFigures) -> u64;
        let per_shard = |pick: Pick| -> Vec<(Labels, ConstGauge)> {
            self.search
                .iter()
                .map(|f| {
                    let v = i64::try_from(pick(f)).unwrap_or(i64::MAX);
                    (vec![("shard", f.shard.to_string())], ConstGauge::new(v))
                })
                .collect()
        };
        let gauges: [(&str, &str, Pick); 7] = [
            ("index_commit_max_micros", "Longest index commit since start, microseconds.", |f| f.commit_micros_max),
            (
                "index_docs",
                "Documents in the search index's last commit.",
                |f| f.docs_committed,
            ),
            (
                "index_splits",
                "Splits (index segments) in the last commit.",
                |f| f.segments,
            ),
            (
                "index_disk_bytes",
                "Bytes of the search index's files.",
                |f| f.disk_bytes,
            ),
            (
                "index_queued_bytes",
                "Record bytes queued for the index's helper thread.",
                |f| f.queued_bytes,
            ),
            (
                "index_cache_bytes",
                "Heap of the open searcher, estimated at 64 KiB per split (the index cache); 0 when closed.",
                |f| f.cache_bytes,
            ),
            (
                "index_cache_max_bytes",
                "An open searcher stays open while it maps at most this much.",
                |f| f.cache_bytes_max,
            ),
        ];
        for (name, help, pick) in gauges {
            family(enc, name, help, per_shard(pick))?;
        }
        let counters: [(&str, &str, Pick); 8] = [
            (
                "index_commit_micros",
                "Time spent in index commits, microseconds.",
                |f| f.commit_micros,
            ),
            (
                "index_docs_indexed",
                "Documents added to the index since start.",
                |f| f.docs_indexed,
            ),
            (
                "index_commits",
                "Index commits (each makes what it holds searchable).",
                |f| f.commits,
            ),
            (
                "index_batches_failed",
                "Record batches that did not decode and were not indexed.",
                |f| f.batches_failed,
            ),
            ("index_commit_failures", "Index commits that failed.", |f| {
                f.commit_failures
            }),
            (
                "index_deletes",
                "Deletions (log start moved, topic gone) applied to the index.",
                |f| f.deletes,
            ),
            (
                "index_searcher_opens",
                "Searchers opened (index cache misses).",
                |f| f.searcher_opens,
            ),
            (
                "index_searches",
                "Searches run over the shard's index.",
                |f| f.searches,
            ),
        ];
        for (name, help, pick) in counters {
            let samples: Vec<(Labels, ConstCounter)> = self
                .search
                .iter()
                .map(|f| {
                    (
                        vec![("shard", f.shard.to_string())],
                        ConstCounter::new(pick(f)),
                    )
                })
                .collect();
            family(enc, name, help, samples)?;
        }
        Ok(())
    }

    fn encode_cluster(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.cluster;
        let one = |v: i64| vec![(Labels::new(), ConstGauge::new(v))];
        let n = |v: u64| one(i64::try_from(v).unwrap_or(i64::MAX));
        let brokers = vec![
            (
                vec![("state", "live".to_string())],
                ConstGauge::new(c.brokers_live as i64),
            ),
            (
                vec![("state", "fenced".to_string())],
                ConstGauge::new(c.brokers_fenced as i64),
            ),
        ];
        family(
            enc,
            "cluster_brokers",
            "Registered brokers, by state (fenced: lease expired).",
            brokers,
        )?;
        family(
            enc,
            "cluster_controller_id",
            "Node id of the controller (the Raft leader); -1 when none.",
            one(c.controller),
        )?;
        family(
            enc,
            "cluster_leader_partitions",
            "Partitions this node leads.",
            n(c.leader_partitions),
        )?;
        family(
            enc,
            "cluster_under_replicated_partitions",
            "Partitions this node leads whose ISR is smaller than their replica set.",
            n(c.under_replicated),
        )?;
        family(
            enc,
            "cluster_under_min_isr_partitions",
            "Partitions this node leads with fewer in-sync replicas than min.insync.replicas (acks=all refused).",
            n(c.under_min_isr),
        )?;
        family(
            enc,
            "cluster_offline_partitions",
            "Partitions without a leader (no in-sync replica is live).",
            n(c.offline),
        )
    }

    fn encode_pools(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        type Pick = fn(&crate::plane::PoolStats) -> u64;
        let kinds: [(&str, &str, Pick); 4] = [
            (
                "shard_pool_used_bytes",
                "Bytes charged to a memory pool.",
                |p| p.used_bytes,
            ),
            ("shard_pool_limit_bytes", "Limit of a memory pool.", |p| {
                p.max_bytes
            }),
            (
                "shard_pool_peak_bytes",
                "Highest use of a memory pool.",
                |p| p.peak_bytes,
            ),
            (
                "shard_pool_over_bytes",
                "Bytes charged past a pool's limit (committed partition state).",
                |p| p.over_bytes,
            ),
        ];
        for (name, help, pick) in kinds {
            let samples = self.pool_samples(|p| ConstGauge::new(pick(p) as i64));
            family(enc, name, help, samples)?;
        }
        let refused = self.pool_samples(|p| ConstCounter::new(p.refused));
        family(
            enc,
            "shard_pool_refused",
            "Reservations a memory pool refused.",
            refused,
        )?;
        let waits = self.pool_samples(|p| ConstCounter::new(p.waits));
        family(
            enc,
            "shard_pool_waits",
            "Reservations that waited for a memory pool (backpressure).",
            waits,
        )?;
        let waiting = self.pool_samples(|p| ConstGauge::new(p.waiting as i64));
        family(
            enc,
            "shard_pool_waiting",
            "Reservations waiting for a memory pool now.",
            waiting,
        )
    }

    fn pool_samples<M>(&self, f: impl Fn(&crate::plane::PoolStats) -> M) -> Vec<(Labels, M)> {
        let f = &f;
        self.shards
            .iter()
            .flat_map(|s| {
                s.stats.pools.iter().map(move |p| {
                    let mut l = shard_label(s);
                    l.push(("pool", p.name.to_string()));
                    (l, f(p))
                })
            })
            .collect()
    }

    fn encode_shards(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.shards;
        gauges(
            enc,
            s,
            "shard_memory_limit_bytes",
            "The shard's memory budget.",
            |p| p.stats.memory_bytes_max,
        )?;
        gauges(
            enc,
            s,
            "shard_partitions",
            "Partitions owned by the shard.",
            |p| p.stats.partitions,
        )?;
        gauges(
            enc,
            s,
            "shard_index_entries",
            "Index entries of the shard's partitions.",
            |p| p.stats.index_entries,
        )?;
        gauges(
            enc,
            s,
            "shard_connections",
            "Open Kafka connections.",
            |p| p.connections,
        )?;
        gauges(
            enc,
            s,
            "shard_tasks",
            "Long-lived tasks of the shard.",
            |p| p.stats.tasks,
        )?;
        gauges(
            enc,
            s,
            "shard_produce_tasks",
            "Produces waiting for durability.",
            |p| p.stats.produce_tasks,
        )?;
        gauges(
            enc,
            s,
            "shard_fetch_waiters",
            "Fetches parked in long polls.",
            |p| p.stats.waiters.waiting,
        )?;
        gauges(
            enc,
            s,
            "shard_wal_queue_bytes",
            "Bytes queued for the next WAL commit.",
            |p| p.stats.wal.queue_bytes,
        )?;
        counters(
            enc,
            s,
            "shard_connections_refused",
            "Connections closed at accept for --connections-per-shard-max.",
            |p| p.connections_refused,
        )?;
        reason_counters(
            enc,
            s,
            "shard_requests_rejected",
            "Requests refused by closing their connection (bad frame size, unknown API, unsupported version, malformed, decoded arrays larger than the request-buffer pool).",
            |p| &p.requests_rejected,
        )?;
        labelled_counters(
            enc,
            s,
            "shard_sasl_authentications",
            "SASL authentications, by result (failed ones are also slowed by --failed-authentication-delay-ms and close their connection).",
            "result",
            |p| &p.sasl_authentications,
        )?;
        counters(
            enc,
            s,
            "shard_tls_handshakes_failed",
            "TLS handshakes that failed or timed out (untrusted or expired client certificates, plaintext clients on a TLS listener).",
            |p| p.tls_handshakes_failed,
        )?;
        reason_counters(
            enc,
            s,
            "shard_connections_timed_out",
            "Connections closed for a deadline: a partial frame past --frame-read-timeout-ms, a reply not read, a memory wait.",
            |p| &p.connections_timed_out,
        )?;
        counters(
            enc,
            s,
            "shard_request_waits",
            "Connections that waited for request-buffer memory.",
            |p| p.stats.request_waits,
        )?;
        counters(
            enc,
            s,
            "shard_produce_requests",
            "Partition produces handled.",
            |p| p.stats.counters.produce_requests,
        )?;
        counters(
            enc,
            s,
            "shard_produce_busy",
            "Partition produces answered Busy (memory wait ran out, queue full).",
            |p| p.stats.counters.produce_busy,
        )?;
        counters(
            enc,
            s,
            "shard_produce_admission_waits",
            "Partition produces that queued for memory.",
            |p| p.stats.produce_admission_waits,
        )?;
        counters(
            enc,
            s,
            "shard_produce_admission_timeouts",
            "Queued partition produces whose memory wait ran out.",
            |p| p.stats.produce_admission_timeouts,
        )?;
        gauges(
            enc,
            s,
            "shard_produce_admissions_waiting",
            "Partition produces waiting for memory now.",
            |p| p.stats.produce_admissions_waiting,
        )?;
        counters(
            enc,
            s,
            "shard_fetch_requests",
            "Fetch requests handled.",
            |p| p.stats.counters.fetch_requests,
        )?;
        counters(
            enc,
            s,
            "shard_fetch_busy",
            "Fetches cut short because fetch_response memory was not free.",
            |p| p.stats.counters.fetch_busy,
        )?;
        counters(
            enc,
            s,
            "shard_fetch_throttled",
            "Fetches answered empty and throttled: their memory wait ran out.",
            |p| p.stats.counters.fetch_throttled,
        )?;
        counters(
            enc,
            s,
            "shard_wal_commits",
            "WAL commits (write + sync).",
            |p| p.stats.wal.commits,
        )?;
        counters(
            enc,
            s,
            "shard_wal_written_bytes",
            "Bytes written to the WAL.",
            |p| p.stats.wal.bytes_written,
        )?;
        gauges(
            enc,
            s,
            "shard_wal_segments",
            "WAL segment files of the shard.",
            |p| p.stats.wal.segments,
        )?;
        gauges(
            enc,
            s,
            "shard_wal_segment_bytes",
            "Disk bytes of the shard's WAL segment files (preallocated).",
            |p| p.stats.wal.disk_bytes,
        )?;
        counters(
            enc,
            s,
            "shard_wal_segments_removed",
            "WAL segment files removed by retention.",
            |p| p.stats.counters.retention_segments_removed,
        )?;
        counters(
            enc,
            s,
            "shard_retention_log_start_moves",
            "Partition log starts moved by retention.",
            |p| p.stats.counters.retention_log_start_moves,
        )?;
        counters(
            enc,
            s,
            "shard_retention_carried_records",
            "Log start and group records appended again before segments were removed.",
            |p| p.stats.counters.retention_carried_records,
        )?;
        let compaction: [(&str, &str, fn(&ShardProbe) -> u64); 7] = [
            (
                "compaction_passes",
                "Compaction passes over a partition that wrote replacements.",
                |p| p.stats.counters.compaction_passes,
            ),
            (
                "compaction_records_removed",
                "Records dropped by compaction (superseded, keyless, or expired tombstones).",
                |p| p.stats.counters.compaction_records_removed,
            ),
            (
                "compaction_tombstones_removed",
                "Tombstones dropped by compaction after delete.retention.ms.",
                |p| p.stats.counters.compaction_tombstones_removed,
            ),
            (
                "compaction_entries_replaced",
                "Log entries replaced by compacted ones.",
                |p| p.stats.counters.compaction_entries_replaced,
            ),
            (
                "compaction_bytes_written",
                "Bytes of the replacement entries compaction wrote.",
                |p| p.stats.counters.compaction_bytes_written,
            ),
            (
                "wal_collector_entries_moved",
                "Live entries the segment collector copied out of mostly dead WAL segments.",
                |p| p.stats.counters.collector_entries_moved,
            ),
            (
                "wal_collector_bytes_moved",
                "Bytes the segment collector copied forward.",
                |p| p.stats.counters.collector_bytes_moved,
            ),
        ];
        for (name, help, value) in compaction {
            counters(enc, s, name, help, value)?;
        }
        let txn: [(&str, &str, fn(&ShardProbe) -> u64); 6] = [
            (
                "txn_commits",
                "Transactions committed by the shard's coordinator (markers written).",
                |p| p.stats.counters.txn_commits,
            ),
            (
                "txn_aborts",
                "Transactions aborted by the shard's coordinator (markers written).",
                |p| p.stats.counters.txn_aborts,
            ),
            (
                "txn_timeouts",
                "Transactions aborted because transaction.timeout.ms passed.",
                |p| p.stats.counters.txn_timeouts,
            ),
            (
                "txn_fenced",
                "Ongoing transactions aborted because a new producer instance fenced the old one.",
                |p| p.stats.counters.txn_fenced,
            ),
            (
                "txn_markers",
                "Transaction markers written by the shard's coordinator (one per partition).",
                |p| p.stats.counters.txn_markers,
            ),
            (
                "txn_ids_expired",
                "Transactional ids forgotten after transactional.id.expiration.ms.",
                |p| p.stats.counters.txn_ids_expired,
            ),
        ];
        for (name, help, value) in txn {
            counters(enc, s, name, help, value)?;
        }
        Ok(())
    }

    fn encode_histograms(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.shards;
        histograms(
            enc,
            s,
            "shard_wal_commit_bytes",
            "Bytes per WAL commit.",
            |p| (&p.stats.wal.commit_bytes, &BYTES_BUCKETS, 1.0),
        )?;
        histograms(
            enc,
            s,
            "shard_wal_commit_entries",
            "Entries per WAL commit.",
            |p| (&p.stats.wal.commit_entries, &ENTRIES_BUCKETS, 1.0),
        )?;
        histograms(
            enc,
            s,
            "shard_wal_sync_latency_seconds",
            "Write + sync time per WAL commit.",
            |p| (&p.stats.wal.sync_latency_us, &LATENCY_US_BUCKETS, 1e-6),
        )?;
        histograms(
            enc,
            s,
            "shard_produce_latency_seconds",
            "Partition produce latency at the requesting shard.",
            |p| (&p.stats.produce_latency_us, &LATENCY_US_BUCKETS, 1e-6),
        )?;
        histograms(
            enc,
            s,
            "shard_fetch_latency_seconds",
            "Fetch latency at the requesting shard.",
            |p| (&p.stats.fetch_latency_us, &LATENCY_US_BUCKETS, 1e-6),
        )
    }
}

/// `/admin/memory`: the same figures as JSON, with the topics holding the
/// most partition state.
pub fn render_memory_json(
    probes: Vec<Result<ShardProbe, u32>>,
    view: &MetadataView,
    search: &[IndexFigures],
) -> String {
    let snapshot = split(probes, ProcessMemory::read());
    let shards: Vec<Value> = snapshot
        .shards
        .iter()
        .map(|p| shard_json(p, view))
        .collect();
    let m = snapshot.process;
    let doc = json!({
        "process": {
            "rss_bytes": m.rss,
            "rss_peak_bytes": m.rss_peak,
            "rss_anon_bytes": m.rss_anon,
            "rss_mapped_bytes": m.rss_mapped,
            "threads": m.threads,
        },
        "shards_unanswered": snapshot.missing,
        "shards": shards,
        "search_indexes": search.iter().map(search_json).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// One shard's search index: its index cache (the open searcher) and
/// its size; its builders and queue are in the `search_index` pool.
fn search_json(f: &IndexFigures) -> Value {
    json!({
        "shard": f.shard,
        "docs": f.docs_committed,
        "splits": f.segments,
        "disk_bytes": f.disk_bytes,
        "queued_bytes": f.queued_bytes,
        "cache_bytes": f.cache_bytes,
        "cache_max_bytes": f.cache_bytes_max,
    })
}

fn shard_json(p: &ShardProbe, view: &MetadataView) -> Value {
    let s = &p.stats;
    let pools: Vec<Value> = s
        .pools
        .iter()
        .map(|pool| {
            json!({
                "pool": pool.name,
                "used_bytes": pool.used_bytes,
                "limit_bytes": pool.max_bytes,
                "peak_bytes": pool.peak_bytes,
                "over_bytes": pool.over_bytes,
                "refused": pool.refused,
                "waits": pool.waits,
                "waiting": pool.waiting,
            })
        })
        .collect();
    let top: Vec<Value> = s
        .top_topics
        .iter()
        .map(|(id, bytes)| json!({"topic": view.topic_by_id(id).map_or("(deleted)", |t| t.name.as_str()), "bytes": bytes}))
        .collect();
    json!({
        "shard": s.shard_id,
        "memory_limit_bytes": s.memory_bytes_max,
        "partitions": s.partitions,
        "partition_struct_bytes": s.partition_struct_bytes,
        "index_entries": s.index_entries,
        "connections": p.connections,
        "connections_refused": p.connections_refused,
        "requests_rejected": p.requests_rejected.iter().map(|(r, n)| (r.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "tasks": s.tasks,
        "produce_tasks": s.produce_tasks,
        "fetch_waiters": s.waiters.waiting,
        "request_waits": s.request_waits,
        "produce_admissions_waiting": s.produce_admissions_waiting,
        "wal_queue_bytes": s.wal.queue_bytes,
        "tail_cache_entries": s.tail_cache_entries,
        "pools": pools,
        "top_topics": top,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One histogram family holding `hist`, encoded as `/metrics` does.
    #[derive(Debug)]
    struct OneHistogram(Histogram<u64>);

    impl Collector for OneHistogram {
        fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let metric = HdrMetric {
                hist: &self.0,
                bounds: &LATENCY_US_BUCKETS,
                scale: 1e-6,
            };
            family(
                &mut enc,
                "t_latency_seconds",
                "test",
                vec![(Labels::new(), metric)],
            )
        }
    }

    fn bucket_values(text: &str) -> Vec<(String, u64)> {
        text.lines()
            .filter(|l| l.starts_with("t_latency_seconds_bucket"))
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').expect("sample line");
                (name.to_string(), value.parse().expect("count"))
            })
            .collect()
    }

    /// Under-replicated and under-min-ISR count only partitions led here;
    /// offline ones count wherever they are.
    #[test]
    fn cluster_figures_follow_the_view() {
        use sluice_raft::{BrokerMeta, PartitionMeta, TopicMeta, NO_LEADER};
        use std::sync::Arc;
        let part = |leader: u64, isr: &[u64]| PartitionMeta {
            shard: 0,
            leader,
            leader_epoch: 0,
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
        };
        let topic = TopicMeta {
            name: "t".into(),
            id: [1; 16],
            partitions: vec![
                part(1, &[1, 2, 3]),
                part(1, &[1, 2]),
                part(1, &[1]),
                part(2, &[2]),
                part(NO_LEADER, &[3]),
            ],
            configs: [("min.insync.replicas".to_string(), "2".to_string())].into(),
            created_ms: 0,
        };
        let mut view = MetadataView {
            node_id: 1,
            ..MetadataView::default()
        };
        view.topics.insert(Arc::from("t"), Arc::new(topic));
        for (id, fenced) in [(1, false), (2, false), (3, true)] {
            let b = BrokerMeta {
                id,
                host: "127.0.0.1".into(),
                port: 9092,
                fenced,
                endpoints: Vec::new(),
            };
            view.brokers.insert(id, Arc::new(b));
        }
        let f = ClusterFigures::of(&view, Some(2), 1);
        let expected = ClusterFigures {
            brokers_live: 2,
            brokers_fenced: 1,
            controller: 2,
            leader_partitions: 3,
            under_replicated: 2,
            under_min_isr: 1,
            offline: 1,
        };
        assert_eq!(f, expected);
        let index = IndexFigures {
            shard: 1,
            docs_committed: 42,
            docs_indexed: 50,
            cache_bytes: 7,
            ..IndexFigures::default()
        };
        let text = render_prometheus(Vec::new(), f, vec![index]);
        assert!(
            text.contains("sluice_cluster_under_replicated_partitions 2"),
            "{text}"
        );
        assert!(text.contains("sluice_index_docs{shard=\"1\"} 42"), "{text}");
        assert!(
            text.contains("sluice_index_docs_indexed_total{shard=\"1\"} 50"),
            "{text}"
        );
        assert!(
            text.contains("sluice_index_cache_bytes{shard=\"1\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("sluice_cluster_brokers{state=\"fenced\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_once() {
        let mut hist = Histogram::<u64>::new(3).expect("histogram");
        for us in [50, 200, 200, 3_000, 40_000, 9_000_000] {
            hist.record(us).expect("record");
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(OneHistogram(hist)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        let buckets = bucket_values(&text);
        assert_eq!(buckets.len(), LATENCY_US_BUCKETS.len() + 1, "{text}");
        let counts: Vec<u64> = buckets.iter().map(|(_, c)| *c).collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{text}");
        // le=0.0001 holds 50 us; le=0.00025 adds the two 200 us; +Inf holds all six.
        assert_eq!(counts[0], 1, "{text}");
        assert_eq!(counts[1], 3, "{text}");
        assert!(buckets.last().unwrap().0.contains("+Inf"), "{text}");
        assert_eq!(*counts.last().unwrap(), 6, "{text}");
        assert!(text.contains("t_latency_seconds_count 6"), "{text}");
    }
}
