//! `compare`: runs one scenario against two brokers alternately (A, B, A,
//! B, ...), each run a child `sluice-bench` process with `--json`, and
//! prints every numeric figure's median per broker and the ratio A/B.
//!
//! Alternating spreads slow drifts of the machine (thermal, page cache,
//! other tenants) evenly over both brokers. Each child is killed when it
//! runs past `--run-seconds-max`.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser as _;
use serde_json::{json, Map, Value};

use crate::args::parse_seconds;
use crate::control::stop_requested;

const SCENARIOS: [&str; 4] = ["produce", "consume", "e2e", "many-topics"];
/// Figures listed first, in this order; the rest follow alphabetically.
const LEADING_FIGURES: [&str; 4] = ["seconds", "messages", "msgs_per_sec", "mb_per_sec"];

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Bootstrap address of broker A.
    #[arg(long)]
    pub a: String,
    /// Bootstrap address of broker B.
    #[arg(long)]
    pub b: String,
    /// Rounds; each round runs the scenario once on A, then once on B.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// A run still going after this long is killed and the comparison fails.
    #[arg(long, default_value_t = 900.0, value_parser = parse_seconds)]
    pub run_seconds_max: f64,
    /// An argument added to the scenario on A only (repeat for more), after
    /// the shared ones, so it overrides them: compare two topics of one
    /// cluster with `--a X --b X --a-arg=--replication-factor=3
    /// --a-arg=--topic=rf3 --b-arg=--topic=rf1`.
    #[arg(long = "a-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub a_args: Vec<String>,
    /// An argument added to the scenario on B only (repeat for more).
    #[arg(long = "b-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub b_args: Vec<String>,
    /// Print one JSON object as the last line on stdout.
    #[arg(long)]
    pub json: bool,
    /// The scenario and its arguments, after `--`, without `--bootstrap`:
    /// `-- produce --rate 5000 --seconds 10`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub scenario: Vec<String>,
}

/// Numeric figures of one run, by dotted path (`latency_us.p99`).
type Figures = BTreeMap<String, f64>;

pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let scenario_a = scenario_args(&[args.scenario.clone(), args.a_args.clone()].concat())?;
    let scenario_b = scenario_args(&[args.scenario.clone(), args.b_args.clone()].concat())?;
    let exe = std::env::current_exe().context("locating sluice-bench")?;
    let limit = Duration::from_secs_f64(args.run_seconds_max);
    let started = Instant::now();
    let (mut runs_a, mut runs_b) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let sides = [
            ("A", &args.a, &scenario_a, &mut runs_a),
            ("B", &args.b, &scenario_b, &mut runs_b),
        ];
        for (label, bootstrap, scenario, runs) in sides {
            if stop_requested() {
                break;
            }
            eprintln!(
                "compare: round {round}/{} on {label} ({bootstrap})",
                args.rounds
            );
            runs.push(run_child(&exe, scenario, bootstrap, limit)?);
        }
    }
    let rounds_done = runs_a.len().min(runs_b.len());
    if rounds_done == 0 {
        bail!("no complete round to compare");
    }
    runs_a.truncate(rounds_done);
    runs_b.truncate(rounds_done);
    let table = Table::new(&runs_a, &runs_b);
    print!("{}", table.human(&args, rounds_done));
    if args.json {
        println!(
            "{}",
            table.json(
                rounds_done,
                started.elapsed().as_secs_f64(),
                stop_requested()
            )
        );
    }
    Ok(())
}

/// Checks the scenario part and returns it with `--json` added.
fn scenario_args(scenario: &[String]) -> anyhow::Result<Vec<String>> {
    let Some(name) = scenario.first() else {
        bail!("no scenario given after --")
    };
    if !SCENARIOS.contains(&name.as_str()) {
        bail!("compare runs one of {SCENARIOS:?}, not {name:?}");
    }
    if scenario
        .iter()
        .any(|a| a == "--bootstrap" || a.starts_with("--bootstrap="))
    {
        bail!("leave --bootstrap out of the scenario: compare adds --a and --b");
    }
    let mut full = scenario.to_vec();
    if !full.iter().any(|a| a == "--json") {
        full.push("--json".into());
    }
    let check = ["sluice-bench"]
        .into_iter()
        .map(String::from)
        .chain(full.iter().cloned());
    crate::Cli::try_parse_from(check.chain(["--bootstrap".into(), "127.0.0.1:9092".into()]))
        .map_err(|e| anyhow::anyhow!("scenario arguments: {e}"))?;
    Ok(full)
}

fn run_child(
    exe: &std::path::Path,
    scenario: &[String],
    bootstrap: &str,
    limit: Duration,
) -> anyhow::Result<Figures> {
    let mut child = Command::new(exe)
        .args(scenario)
        .args(["--bootstrap", bootstrap])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let mut stdout = child.stdout.take().context("child stdout")?;
    // The benchmark is a client process, not a shard: a thread drains the
    // child's stdout so the child never blocks on a full pipe.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let status = wait_bounded(&mut child, limit)?;
    let text = reader
        .join()
        .map_err(|_| anyhow::anyhow!("stdout reader panicked"))??;
    if !status.success() {
        bail!("run against {bootstrap} failed ({status})");
    }
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("run printed nothing")?;
    let value: Value =
        serde_json::from_str(last).with_context(|| format!("last line is not JSON: {last}"))?;
    let mut figures = Figures::new();
    flatten("", &value, &mut figures);
    Ok(figures)
}

fn wait_bounded(child: &mut Child, limit: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "run exceeded --run-seconds-max ({:.0}s) and was killed",
                limit.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Collects every number of a JSON value under its dotted path.
fn flatten(prefix: &str, value: &Value, out: &mut Figures) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                out.insert(prefix.to_string(), f);
            }
        }
        Value::Object(map) => {
            for (key, inner) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, inner, out);
            }
        }
        _ => {}
    }
}

fn median(values: &mut [f64]) -> f64 {
    assert!(!values.is_empty());
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Medians of the figures present in every run on both sides.
struct Table {
    rows: Vec<(String, f64, f64)>,
}

impl Table {
    fn new(runs_a: &[Figures], runs_b: &[Figures]) -> Table {
        let all: Vec<&Figures> = runs_a.iter().chain(runs_b).collect();
        let mut keys: Vec<&String> = all[0]
            .keys()
            .filter(|k| all.iter().all(|run| run.contains_key(*k)))
            .collect();
        keys.sort_by_key(|k| (figure_rank(k), *k));
        let side = |runs: &[Figures], key: &str| {
            median(&mut runs.iter().map(|r| r[key]).collect::<Vec<_>>())
        };
        let rows = keys
            .into_iter()
            .map(|k| (k.clone(), side(runs_a, k), side(runs_b, k)))
            .collect();
        Table { rows }
    }

    fn human(&self, args: &CompareArgs, rounds: usize) -> String {
        let mut out = format!(
            "== compare ({rounds} rounds, medians) A={} B={} scenario: {}\n",
            args.a,
            args.b,
            args.scenario.join(" ")
        );
        for (side, extra) in [("A", &args.a_args), ("B", &args.b_args)] {
            if !extra.is_empty() {
                out.push_str(&format!("   {side} only: {}\n", extra.join(" ")));
            }
        }
        out.push_str(&format!(
            "   {:<34} {:>16} {:>16} {:>9}\n",
            "figure", "A", "B", "A/B"
        ));
        for (key, a, b) in &self.rows {
            out.push_str(&format!(
                "   {key:<34} {a:>16.3} {b:>16.3} {:>9}\n",
                ratio_text(*a, *b)
            ));
        }
        out
    }

    fn json(&self, rounds: usize, wall_seconds: f64, interrupted: bool) -> Value {
        let (mut a, mut b, mut ratio) = (Map::new(), Map::new(), Map::new());
        for (key, va, vb) in &self.rows {
            a.insert(key.clone(), json!(va));
            b.insert(key.clone(), json!(vb));
            ratio.insert(
                key.clone(),
                ratio_of(*va, *vb).map_or(Value::Null, |r| json!(r)),
            );
        }
        let mut top = json!({
            "scenario": "compare", "rounds": rounds, "wall_seconds": wall_seconds,
            "interrupted": interrupted, "a": a, "b": b, "ratio": ratio,
        });
        // The figures required of every JSON line are A's medians.
        for key in LEADING_FIGURES {
            top[key] = self.value_a(key).map_or(Value::Null, |v| json!(v));
        }
        let latency: Map<String, Value> = self
            .rows
            .iter()
            .filter_map(|(k, va, _)| {
                k.strip_prefix("latency_us.")
                    .map(|p| (p.to_string(), json!(va)))
            })
            .collect();
        if !latency.is_empty() {
            top["latency_us"] = Value::Object(latency);
        }
        top
    }

    fn value_a(&self, key: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, a, _)| *a)
    }
}

/// Order of the table: the required figures, then the latency percentiles
/// in rising order, then everything else alphabetically.
fn figure_rank(key: &str) -> usize {
    const LATENCY_ORDER: [&str; 8] = ["p50", "p90", "p99", "p999", "p9999", "max", "mean", "count"];
    if let Some(i) = LEADING_FIGURES.iter().position(|f| *f == key) {
        return i;
    }
    match key
        .strip_prefix("latency_us.")
        .and_then(|p| LATENCY_ORDER.iter().position(|f| *f == p))
    {
        Some(i) => LEADING_FIGURES.len() + i,
        None => LEADING_FIGURES.len() + LATENCY_ORDER.len(),
    }
}

fn ratio_of(a: f64, b: f64) -> Option<f64> {
    (b != 0.0).then(|| a / b)
}

fn ratio_text(a: f64, b: f64) -> String {
    ratio_of(a, b).map_or_else(|| "-".into(), |r| format!("{r:.3}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn flattens_nested_numbers() {
        let mut out = Figures::new();
        flatten(
            "",
            &json!({"a": 1, "b": {"c": 2.5, "d": "x"}, "e": true}),
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out["b.c"], 2.5);
    }

    #[test]
    fn scenario_is_checked() {
        let args = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let full = scenario_args(&args(&["produce", "--seconds", "1"])).expect("valid");
        assert_eq!(full.last().map(String::as_str), Some("--json"));
        assert!(scenario_args(&args(&["wal"])).is_err());
        assert!(scenario_args(&args(&["produce", "--bootstrap", "x:1"])).is_err());
        assert!(scenario_args(&args(&["produce", "--no-such-flag"])).is_err());
    }

    /// One side's own arguments come after the shared ones and win.
    #[test]
    fn a_side_argument_overrides_a_shared_one() {
        let shared = ["produce", "--topic", "rf1", "--replication-factor", "1"];
        let side = ["--topic=rf3", "--replication-factor=3"];
        let all: Vec<String> = shared.iter().chain(&side).map(|s| s.to_string()).collect();
        let full = scenario_args(&all).expect("valid");
        let cli = crate::Cli::try_parse_from(
            ["sluice-bench".to_string()]
                .into_iter()
                .chain(full)
                .chain(["--bootstrap".to_string(), "127.0.0.1:1".to_string()]),
        )
        .expect("parses");
        let crate::Command::Produce(p) = cli.command else {
            panic!("produce");
        };
        assert_eq!(
            (p.common.topic.as_str(), p.common.replication_factor),
            ("rf3", 3)
        );
    }

    #[test]
    fn table_compares_medians() {
        let run = |v: f64| {
            Figures::from([
                ("msgs_per_sec".to_string(), v),
                ("only_here".to_string(), 1.0),
            ])
        };
        let mut b_run = run(50.0);
        b_run.remove("only_here");
        let table = Table::new(
            &[run(100.0), run(120.0), run(110.0)],
            &[b_run.clone(), b_run.clone(), b_run],
        );
        assert_eq!(table.rows, vec![("msgs_per_sec".to_string(), 110.0, 50.0)]);
        let value = table.json(3, 1.0, false);
        assert_eq!(value["ratio"]["msgs_per_sec"], json!(2.2));
        assert_eq!(value["msgs_per_sec"], json!(110.0));
    }
}
