//! `sluice cluster`: brokers and partition health from Metadata (through
//! librdkafka), and a summary of a Sluice node's `/metrics` (Prometheus
//! text from the admin HTTP port, fetched with `ureq`).

use std::collections::BTreeMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::metadata::Metadata;
use serde_json::{json, Value};

use super::output::{id_list, OutputArgs, Report, Table};
use super::ConnArgs;

/// Problems `cluster health` lists one by one; the rest are counted.
const PROBLEMS_LISTED_MAX: usize = 20;

/// `sluice cluster ...`
#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    out: OutputArgs,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Brokers, controller, topic and partition counts, partitions without a leader or under-replicated.
    Info,
    /// Exit 1, listing the problems, when a partition has no leader or is under-replicated or a broker is unreachable.
    Health,
    /// A summary of a Sluice node's metrics (admin HTTP port).
    Metrics {
        /// The node's admin HTTP address.
        #[arg(
            long,
            env = "SLUICE_ADMIN",
            default_value = "127.0.0.1:9644",
            value_name = "HOST:PORT"
        )]
        admin: String,
        /// File whose first line is the admin port's bearer token.
        #[arg(long, env = "SLUICE_ADMIN_TOKEN_FILE", value_name = "FILE")]
        admin_token_file: Option<PathBuf>,
        /// PEM file of the CA the admin port's certificate chains to (an
        /// https:// --admin, the node started with --admin-tls); without
        /// it, the usual public roots.
        #[arg(long, env = "SLUICE_ADMIN_CA_FILE", value_name = "FILE")]
        admin_ca_file: Option<PathBuf>,
    },
}

pub fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    let conn = &args.conn;
    let (report, healthy) = match &args.command {
        ClusterCommand::Info => (info(conn)?.report(), true),
        ClusterCommand::Health => health(conn)?,
        ClusterCommand::Metrics {
            admin,
            admin_token_file,
            admin_ca_file,
        } => {
            let files = (admin_token_file.as_deref(), admin_ca_file.as_deref());
            (metrics(conn, admin, files)?, true)
        }
    };
    report.emit(args.out.format);
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What Metadata says about the cluster.
struct ClusterState {
    cluster_id: Option<String>,
    controller: i32,
    /// (id, host, port)
    brokers: Vec<(i32, String, i32)>,
    topics: usize,
    partitions: usize,
    /// `topic:partition` of the partitions without a leader.
    leaderless: Vec<String>,
    /// `topic:partition (isr/replicas)` of the under-replicated partitions.
    under_replicated: Vec<String>,
}

fn info(conn: &ConnArgs) -> anyhow::Result<ClusterState> {
    let consumer = conn.consumer(None, &[])?;
    let metadata = conn.metadata(&consumer, None)?;
    Ok(ClusterState::of(
        &metadata,
        controller(conn, &consumer),
        consumer.client().fetch_cluster_id(conn.timeout()),
    ))
}

/// The controller's broker id (-1 when unknown): Metadata carries it, but
/// `rdkafka` exposes it only through librdkafka's C API.
fn controller(conn: &ConnArgs, consumer: &BaseConsumer) -> i32 {
    let timeout_ms = i32::try_from(conn.timeout().as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the client handle is live for the call (borrowed from
    // `consumer`); rd_kafka_controllerid only reads the client's metadata.
    unsafe { rdkafka::bindings::rd_kafka_controllerid(consumer.client().native_ptr(), timeout_ms) }
}

impl ClusterState {
    fn of(metadata: &Metadata, controller: i32, cluster_id: Option<String>) -> ClusterState {
        let mut state = ClusterState {
            cluster_id,
            controller,
            brokers: metadata
                .brokers()
                .iter()
                .map(|b| (b.id(), b.host().to_string(), b.port()))
                .collect(),
            topics: metadata.topics().len(),
            partitions: 0,
            leaderless: Vec::new(),
            under_replicated: Vec::new(),
        };
        state.brokers.sort();
        let mut topics: Vec<_> = metadata.topics().iter().collect();
        topics.sort_by(|a, b| a.name().cmp(b.name()));
        for t in topics {
            let mut partitions: Vec<_> = t.partitions().iter().collect();
            partitions.sort_by_key(|p| p.id());
            for p in partitions {
                state.partitions += 1;
                if p.leader() < 0 {
                    state.leaderless.push(format!("{}:{}", t.name(), p.id()));
                } else if p.isr().len() < p.replicas().len() {
                    state.under_replicated.push(format!(
                        "{}:{} (isr {} of replicas {})",
                        t.name(),
                        p.id(),
                        id_list(p.isr()),
                        id_list(p.replicas())
                    ));
                }
            }
        }
        state
    }

    fn report(&self) -> Report {
        let mut brokers = Table::new(&["BROKER", "ADDRESS"]);
        for (id, host, port) in &self.brokers {
            brokers.row(vec![id.to_string(), format!("{host}:{port}")]);
        }
        let text = format!(
            "Cluster: {}\nController: {}\nTopics: {}\nPartitions: {}\nPartitions without a leader: {}\nUnder-replicated partitions: {}\n\n{}",
            self.cluster_id.as_deref().unwrap_or("-"),
            self.controller,
            self.topics,
            self.partitions,
            self.leaderless.len(),
            self.under_replicated.len(),
            brokers.render()
        );
        let json = json!({
            "cluster_id": self.cluster_id,
            "controller": self.controller,
            "brokers": self
                .brokers
                .iter()
                .map(|(id, host, port)| json!({"id": id, "host": host, "port": port}))
                .collect::<Vec<_>>(),
            "topics": self.topics,
            "partitions": self.partitions,
            "partitions_without_leader": self.leaderless.len(),
            "under_replicated_partitions": self.under_replicated.len(),
        });
        Report { text, json }
    }
}

fn health(conn: &ConnArgs) -> anyhow::Result<(Report, bool)> {
    let state = info(conn)?;
    let mut problems: Vec<String> = Vec::new();
    problems.extend(
        state
            .leaderless
            .iter()
            .map(|p| format!("partition {p} has no leader")),
    );
    problems.extend(
        state
            .under_replicated
            .iter()
            .map(|p| format!("partition {p} is under-replicated")),
    );
    for (id, host, port) in &state.brokers {
        if let Err(e) = reachable(host, *port, conn.timeout()) {
            problems.push(format!("broker {id} at {host}:{port} is unreachable: {e}"));
        }
    }
    let mut report = state.report();
    let healthy = problems.is_empty();
    if healthy {
        report.text.push_str("\nhealthy\n");
    } else {
        report
            .text
            .push_str(&format!("\n{} problem(s):\n", problems.len()));
        for p in problems.iter().take(PROBLEMS_LISTED_MAX) {
            report.text.push_str(&format!("  {p}\n"));
        }
        if problems.len() > PROBLEMS_LISTED_MAX {
            report.text.push_str(&format!(
                "  ... and {} more\n",
                problems.len() - PROBLEMS_LISTED_MAX
            ));
        }
    }
    if let Value::Object(fields) = &mut report.json {
        fields.insert("healthy".into(), json!(healthy));
        fields.insert("problems".into(), json!(problems));
    }
    Ok((report, healthy))
}

/// A TCP connection to the broker's advertised address: the bootstrap
/// broker answered, but clients must reach every broker.
fn reachable(host: &str, port: i32, timeout: Duration) -> anyhow::Result<()> {
    let port = u16::try_from(port).context("port")?;
    let addr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow!("{host} resolves to no address"))?;
    TcpStream::connect_timeout(&addr, timeout)?;
    Ok(())
}

// ---------------------------------------------------------------- metrics

/// One sample of the Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of a Prometheus text exposition (`name{k="v",...} value`);
/// comments and lines that do not parse are skipped. Label values are
/// taken as written (no escapes: Sluice's labels are plain words).
fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = value.parse::<f64>().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            Some(Sample {
                name: name.to_string(),
                labels,
                value,
            })
        })
        .collect()
}

/// The sum of a family's samples over all label sets; `None` when absent.
fn total(samples: &[Sample], name: &str) -> Option<f64> {
    let values: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Sums of a family by the value of `label` (e.g. per pool over shards).
fn by_label(samples: &[Sample], name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name) {
        if let Some(v) = s.label(label) {
            *out.entry(v.to_string()).or_insert(0.0) += s.value;
        }
    }
    out
}

/// Upper bounds (seconds) of the buckets holding the 50th, 99th and 99.9th
/// percentiles of a histogram summed over its label sets, and its count;
/// `None` when the histogram is absent. `f64::INFINITY`: past the last bound.
fn percentiles(samples: &[Sample], histogram: &str) -> Option<(f64, [f64; 3])> {
    let buckets = by_label(samples, &format!("{histogram}_bucket"), "le");
    let mut buckets: Vec<(f64, f64)> = buckets
        .into_iter()
        .filter_map(|(le, n)| Some((le.parse::<f64>().ok()?, n)))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = total(samples, &format!("{histogram}_count"))?;
    let at = |q: f64| {
        let rank = (q * count).ceil();
        buckets
            .iter()
            .find(|(_, n)| *n >= rank)
            .map_or(f64::INFINITY, |(le, _)| *le)
    };
    Some((count, [at(0.5), at(0.99), at(0.999)]))
}

fn bytes_text(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn latency_text(seconds: f64) -> String {
    if seconds.is_infinite() {
        "over the last bucket".to_string()
    } else if seconds < 1.0 {
        format!("<= {:.2} ms", seconds * 1000.0)
    } else {
        format!("<= {seconds:.1} s")
    }
}

/// Counters and gauges summed over the shards: (what, family).
const FIGURES: [(&str, &str); 10] = [
    ("open connections", "sluice_shard_connections"),
    (
        "refused connections",
        "sluice_shard_connections_refused_total",
    ),
    ("partitions", "sluice_shard_partitions"),
    ("produce requests", "sluice_shard_produce_requests_total"),
    ("fetch requests", "sluice_shard_fetch_requests_total"),
    ("rejected requests", "sluice_shard_requests_rejected_total"),
    ("WAL commits", "sluice_shard_wal_commits_total"),
    ("WAL bytes written", "sluice_shard_wal_written_bytes_total"),
    ("process resident bytes", "sluice_process_resident_bytes"),
    (
        "process resident peak bytes",
        "sluice_process_resident_peak_bytes",
    ),
];
/// Latency histograms: (what, family).
const LATENCIES: [(&str, &str); 3] = [
    ("produce", "sluice_shard_produce_latency_seconds"),
    ("fetch", "sluice_shard_fetch_latency_seconds"),
    ("wal sync", "sluice_shard_wal_sync_latency_seconds"),
];

fn metrics(
    conn: &ConnArgs,
    admin: &str,
    (token_file, ca_file): (Option<&std::path::Path>, Option<&std::path::Path>),
) -> anyhow::Result<Report> {
    let url = if admin.contains("://") {
        format!("{}/metrics", admin.trim_end_matches('/'))
    } else {
        format!("http://{admin}/metrics")
    };
    let mut agent = ureq::AgentBuilder::new().timeout(conn.timeout());
    if let Some(ca) = ca_file {
        agent = agent.tls_config(std::sync::Arc::new(tls_trusting(ca)?));
    }
    let agent = agent.build();
    let mut request = agent.get(&url);
    if let Some(path) = token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--admin-token-file: cannot read {}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let body = request
        .call()
        .map_err(|e| anyhow!("{e}"))
        .and_then(|r| r.into_string().context("reading the body"))
        .with_context(|| format!("GET {url}"))?;
    Ok(metrics_report(&parse_samples(&body)))
}

/// A TLS client configuration that trusts the CA certificates of `ca`.
fn tls_trusting(ca: &std::path::Path) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("--admin-ca-file {}", ca.display()))?;
    for cert in certs {
        let cert = cert.with_context(|| format!("--admin-ca-file {}", ca.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("--admin-ca-file {}: not a CA certificate", ca.display()))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn metrics_report(samples: &[Sample]) -> Report {
    let used = by_label(samples, "sluice_shard_pool_used_bytes", "pool");
    let peak = by_label(samples, "sluice_shard_pool_peak_bytes", "pool");
    let limit = by_label(samples, "sluice_shard_pool_limit_bytes", "pool");
    let mut pools = Table::new(&["POOL", "USED", "PEAK", "LIMIT"]);
    let mut pools_json = serde_json::Map::new();
    for (pool, used) in &used {
        let peak = peak.get(pool).copied().unwrap_or(0.0);
        let limit = limit.get(pool).copied().unwrap_or(0.0);
        pools.row(vec![
            pool.clone(),
            bytes_text(*used),
            bytes_text(peak),
            bytes_text(limit),
        ]);
        pools_json.insert(
            pool.clone(),
            json!({"used_bytes": used, "peak_bytes": peak, "limit_bytes": limit}),
        );
    }
    let mut figures = Table::new(&["FIGURE", "VALUE"]);
    let mut figures_json = serde_json::Map::new();
    for (what, family) in FIGURES {
        if let Some(v) = total(samples, family) {
            let cell = if family.contains("bytes") {
                bytes_text(v)
            } else {
                format!("{v}")
            };
            figures.row(vec![what.to_string(), cell]);
            figures_json.insert(family.to_string(), json!(v));
        }
    }
    let mut latencies = Table::new(&["OPERATION", "COUNT", "P50", "P99", "P99.9"]);
    let mut latencies_json = serde_json::Map::new();
    for (what, family) in LATENCIES {
        if let Some((count, [p50, p99, p999])) = percentiles(samples, family) {
            latencies.row(vec![
                what.to_string(),
                format!("{count}"),
                latency_text(p50),
                latency_text(p99),
                latency_text(p999),
            ]);
            let bound = |s: f64| if s.is_finite() { json!(s) } else { Value::Null };
            latencies_json.insert(
                family.to_string(),
                json!({
                    "count": count,
                    "p50_seconds_max": bound(p50),
                    "p99_seconds_max": bound(p99),
                    "p999_seconds_max": bound(p999),
                }),
            );
        }
    }
    let text = format!(
        "Memory by pool (all shards)\n{}\nFigures (all shards; counters since start)\n{}\nLatency (bucket upper bounds)\n{}",
        pools.render(),
        figures.render(),
        latencies.render()
    );
    Report {
        text,
        json: json!({"pools": pools_json, "figures": figures_json, "latencies": latencies_json}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE sluice_shard_pool_used_bytes gauge\n\
        sluice_shard_pool_used_bytes{shard=\"0\",pool=\"tail_cache\"} 1024\n\
        sluice_shard_pool_used_bytes{shard=\"1\",pool=\"tail_cache\"} 1024\n\
        sluice_shard_connections{shard=\"0\"} 2\n\
        sluice_process_threads 10\n\
        x_latency_seconds_count{shard=\"0\"} 100\n\
        x_latency_seconds_bucket{le=\"0.001\",shard=\"0\"} 60\n\
        x_latency_seconds_bucket{le=\"0.01\",shard=\"0\"} 99\n\
        x_latency_seconds_bucket{le=\"+Inf\",shard=\"0\"} 100\n";

    #[test]
    fn samples_sum_by_label() {
        let samples = parse_samples(TEXT);
        assert_eq!(
            by_label(&samples, "sluice_shard_pool_used_bytes", "pool").get("tail_cache"),
            Some(&2048.0)
        );
        assert_eq!(total(&samples, "sluice_process_threads"), Some(10.0));
        assert_eq!(total(&samples, "absent"), None);
    }

    #[test]
    fn percentiles_are_bucket_bounds() {
        let samples = parse_samples(TEXT);
        let (count, [p50, p99, p999]) =
            percentiles(&samples, "x_latency_seconds").expect("present");
        assert_eq!(count, 100.0);
        assert_eq!((p50, p99), (0.001, 0.01));
        assert!(p999.is_infinite());
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(bytes_text(512.0), "512 B");
        assert_eq!(bytes_text(1536.0), "1.5 KiB");
    }
}
