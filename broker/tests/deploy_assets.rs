//! The Grafana dashboard (`deploy/grafana/sluice.json`) and the Prometheus
//! alert rules (`deploy/prometheus/sluice-alerts.yml`) use only metrics a
//! real broker exports: one broker is started, fed a few records, and every
//! metric name in the dashboard's queries and the rules' expressions must
//! have samples in its `/metrics` (node_exporter's, in rules labelled
//! `requires: node_exporter`, excepted). Where `promtool` is installed it
//! also checks the rules and the exposition.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{consume_all, create_topic, http_get, metric_sum, produce_all, producer, Broker};
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

/// Prefixes of node_exporter's metrics, allowed in rules marked for it.
const NODE_EXPORTER_PREFIX: &str = "node_";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// What one exposition holds: the names samples carry, and each family's
/// declared type (`# TYPE name kind`).
struct Exposition {
    samples: BTreeSet<String>,
    types: BTreeMap<String, String>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut samples = BTreeSet::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    types.insert(name.to_string(), kind.to_string());
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                samples.insert(line[..end].to_string());
            }
        }
        Exposition { samples, types }
    }

    /// The family a sample name belongs to: a histogram's `_bucket`,
    /// `_sum` and `_count`, a counter's `_total`; `None` when no declared
    /// family explains the name.
    fn family_of<'a>(&self, name: &'a str) -> Option<&'a str> {
        let suffixed = [
            ("_bucket", "histogram"),
            ("_sum", "histogram"),
            ("_count", "histogram"),
            ("_total", "counter"),
        ];
        for (suffix, kind) in suffixed {
            if let Some(base) = name.strip_suffix(suffix) {
                if self.types.get(base).map(String::as_str) == Some(kind) {
                    return Some(base);
                }
            }
        }
        match self.types.get(name).map(String::as_str) {
            Some("gauge") | Some("unknown") => Some(name),
            _ => None,
        }
    }

    /// Names in `used` that have no sample or no family to explain them.
    fn missing<'a>(&self, used: &'a BTreeSet<String>) -> Vec<&'a str> {
        used.iter()
            .map(String::as_str)
            .filter(|n| !self.samples.contains(*n) || self.family_of(n).is_none())
            .collect()
    }
}

/// Every metric name in a PromQL expression: the identifiers that start
/// with `sluice_` or node_exporter's prefix (labels, functions and
/// keywords never do).
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("sluice_") || w.starts_with(NODE_EXPORTER_PREFIX))
        .map(str::to_string)
        .collect()
}

/// The dashboard's queries: every `expr`, and the template variables'
/// `query` and `definition` strings.
fn dashboard_exprs(v: &Json, key: Option<&str>, out: &mut Vec<String>) {
    match v {
        Json::String(s) if matches!(key, Some("expr" | "query" | "definition")) => {
            out.push(s.clone())
        }
        Json::Array(items) => items.iter().for_each(|i| dashboard_exprs(i, key, out)),
        Json::Object(map) => map
            .iter()
            .for_each(|(k, i)| dashboard_exprs(i, Some(k.as_str()), out)),
        _ => {}
    }
}

fn read_dashboard() -> Json {
    let path = deploy_dir().join("grafana/sluice.json");
    let text = std::fs::read_to_string(&path).expect("read dashboard");
    serde_json::from_str(&text).expect("dashboard is JSON")
}

/// One alerting rule: its name, expression and labels.
struct Rule {
    alert: String,
    expr: String,
    labels: BTreeMap<String, String>,
}

fn read_rules() -> Vec<Rule> {
    let path = deploy_dir().join("prometheus/sluice-alerts.yml");
    let text = std::fs::read_to_string(&path).expect("read rules");
    let doc: Yaml = serde_norway::from_str(&text).expect("rules are YAML");
    let groups = doc["groups"].as_sequence().expect("groups");
    let mut rules = Vec::new();
    for group in groups {
        assert!(group["name"].as_str().is_some(), "a group has a name");
        for r in group["rules"].as_sequence().expect("rules") {
            let text_of = |key: &str| r[key].as_str().map(str::to_string);
            let alert = text_of("alert").expect("an alerting rule");
            let expr = text_of("expr").unwrap_or_else(|| panic!("{alert}: expr"));
            let labels = r["labels"]
                .as_mapping()
                .unwrap_or_else(|| panic!("{alert}: labels"))
                .iter()
                .map(|(k, v)| {
                    let k = k.as_str().expect("label name").to_string();
                    (k, v.as_str().expect("label value").to_string())
                })
                .collect();
            assert!(
                r["annotations"]["summary"].as_str().is_some(),
                "{alert}: a summary"
            );
            rules.push(Rule {
                alert,
                expr,
                labels,
            });
        }
    }
    rules
}

/// Starts a broker, produces and reads back a few records, and returns
/// its exposition.
fn live_exposition() -> String {
    let b = Broker::start(1);
    create_topic(&b, "assets", 2);
    let p = producer(&b, &[]);
    let records: Vec<(i32, String, String, Option<i64>)> = (0..20)
        .map(|i| (i % 2, format!("k{i}"), format!("v{i}"), None))
        .collect();
    let acked = produce_all(&p, "assets", &records);
    assert_eq!(acked.len(), records.len());
    let read = consume_all(&b, "assets", 2, records.len(), Duration::from_secs(30));
    assert_eq!(read.len(), records.len());
    assert!(
        metric_sum(&b, "sluice_shard_produce_requests_total").unwrap_or(0) > 0,
        "produces were counted"
    );
    http_get(&b, "/metrics")
}

#[test]
fn dashboard_and_rules_use_only_exported_metrics() {
    let text = live_exposition();
    let exposition = Exposition::parse(&text);
    assert!(exposition.types.len() > 20, "a real exposition");

    let dashboard = read_dashboard();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, None, &mut exprs);
    assert!(exprs.len() > 20, "the dashboard's queries were found");
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    assert!(
        used.iter().all(|n| n.starts_with("sluice_")),
        "the dashboard needs nothing but the broker: {used:?}"
    );
    assert_eq!(exposition.missing(&used), Vec::<&str>::new(), "dashboard");
    for family in [
        "sluice_shard_produce_requests_total",
        "sluice_shard_fetch_requests_total",
        "sluice_shard_wal_written_bytes_total",
        "sluice_shard_produce_latency_seconds_bucket",
        "sluice_shard_fetch_latency_seconds_bucket",
        "sluice_shard_wal_sync_latency_seconds_bucket",
        "sluice_shard_pool_used_bytes",
        "sluice_shard_pool_limit_bytes",
        "sluice_shard_pool_waits_total",
        "sluice_shard_pool_refused_total",
        "sluice_shard_connections",
        "sluice_shard_connections_refused_total",
        "sluice_shard_partitions",
    ] {
        assert!(used.contains(family), "the dashboard shows {family}");
    }

    let rules = read_rules();
    let mut used_by_rules = BTreeSet::new();
    for rule in &rules {
        let names = metric_names(&rule.expr);
        assert!(
            !names.is_empty(),
            "{}: no metric in {}",
            rule.alert,
            rule.expr
        );
        let from_node = names.iter().any(|n| !n.starts_with("sluice_"));
        let marked = rule.labels.get("requires").map(String::as_str) == Some("node_exporter");
        assert_eq!(from_node, marked, "{}: node_exporter marking", rule.alert);
        assert!(rule.labels.contains_key("severity"), "{}", rule.alert);
        used_by_rules.extend(names.into_iter().filter(|n| n.starts_with("sluice_")));
    }
    assert_eq!(
        exposition.missing(&used_by_rules),
        Vec::<&str>::new(),
        "rules"
    );
    for family in [
        "sluice_shard_pool_used_bytes",
        "sluice_shard_pool_waits_total",
        "sluice_shard_wal_sync_latency_seconds_bucket",
        "sluice_shard_connections_refused_total",
    ] {
        assert!(used_by_rules.contains(family), "a rule watches {family}");
    }
    assert!(
        rules
            .iter()
            .any(|r| r.expr.contains("node_filesystem_avail_bytes")),
        "a disk space rule"
    );

    promtool_check(&text, &exposition);
}

/// The check itself must catch names that are not exported, and suffixes
/// on the wrong kind of family.
#[test]
fn the_name_check_catches_unknown_names() {
    let text = "# TYPE sluice_a_seconds histogram\nsluice_a_seconds_bucket{le=\"1\"} 0\nsluice_a_seconds_sum 0\nsluice_a_seconds_count 0\n# TYPE sluice_b counter\nsluice_b_total 3\n# TYPE sluice_c_count gauge\nsluice_c_count 1\n# EOF\n";
    let e = Exposition::parse(text);
    let used = metric_names(
        "histogram_quantile(0.9, rate(sluice_a_seconds_bucket[5m])) + sluice_a_seconds + rate(sluice_b_total[1m]) + sluice_b + sluice_c_count + sluice_nope{pool!=\"io_memory\"}",
    );
    assert_eq!(
        e.missing(&used),
        vec!["sluice_a_seconds", "sluice_b", "sluice_nope"]
    );
    assert_eq!(e.family_of("sluice_c_count"), Some("sluice_c_count"));
    assert_eq!(
        e.family_of("sluice_a_seconds_count"),
        Some("sluice_a_seconds")
    );
    let node =
        metric_names("node_filesystem_avail_bytes{fstype=~\"xfs\"} / node_filesystem_size_bytes");
    assert_eq!(node.len(), 2);
}

#[test]
fn dashboard_is_importable() {
    let d = read_dashboard();
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "the datasource is an import input"
    );
    assert!(d["title"].is_string() && d["uid"].is_string());
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().expect("id")), "unique ids");
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{p}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()));
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}");
        }
    }
    assert!(ids.len() > 10, "panels for every area");
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// `promtool check rules` on the rules and `promtool check metrics` on the
/// exposition, where promtool is installed.
fn promtool_check(text: &str, e: &Exposition) {
    let Some(promtool) = on_path("promtool") else {
        eprintln!("promtool is not on PATH: promtool check rules/metrics skipped");
        return;
    };
    let rules = deploy_dir().join("prometheus/sluice-alerts.yml");
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("run promtool check rules");
    assert!(out.status.success(), "promtool check rules: {out:?}");

    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool check metrics");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(text.as_bytes()).expect("feed promtool");
    drop(stdin);
    let out = child.wait_with_output().expect("promtool check metrics");
    let report =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    match out.status.code() {
        Some(0) => {}
        // Lint problems (not a parse error). The exposition is OpenMetrics:
        // a counter's HELP and TYPE name its family without `_total`, and
        // promtool's classic-format linter looks for help under the sample
        // name. That is the only problem allowed.
        Some(3) => {
            for line in report.lines().filter(|l| !l.trim().is_empty()) {
                let (name, problem) = line.split_once(' ').unwrap_or((line, ""));
                let counter = name
                    .strip_suffix("_total")
                    .is_some_and(|base| e.types.get(base).map(String::as_str) == Some("counter"));
                assert!(
                    counter && problem == "no help text",
                    "promtool check metrics: {line}"
                );
            }
        }
        _ => panic!("promtool check metrics failed: {report}"),
    }
}
