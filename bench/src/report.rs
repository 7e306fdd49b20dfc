//! Reporting: the human summary on stdout, the `--json` line (always the
//! last line on stdout), the HdrHistogram percentile-distribution text file
//! (`--hgrm-out`) and the latency-by-percentile SVG (`--plot`).
//!
//! Latencies are recorded in microseconds; files show milliseconds.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, Context as _};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::args::CommonArgs;

/// Highest latency a histogram tracks; larger values are clamped to it.
const LATENCY_US_MAX: u64 = 3_600_000_000;
const LATENCY_SIGFIG: u8 = 3;
/// Percentile ticks per half distance to 100%, as HdrHistogram's tools use.
const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Microseconds per output unit (milliseconds) in `.hgrm` and plots.
const US_PER_MS: f64 = 1_000.0;
const BYTES_PER_MB: f64 = 1_000_000.0;

pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIG)
        .expect("constant histogram bounds are valid")
}

/// Records a latency in microseconds, clamping values over the bound.
pub fn record_latency_us(hist: &mut Histogram<u64>, latency_us: u64) {
    hist.saturating_record(latency_us.min(LATENCY_US_MAX));
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct LatencySummary {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
    pub mean: f64,
    pub count: u64,
}

impl LatencySummary {
    pub fn of(hist: &Histogram<u64>) -> LatencySummary {
        let summary = LatencySummary {
            p50: hist.value_at_quantile(0.50),
            p90: hist.value_at_quantile(0.90),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            p9999: hist.value_at_quantile(0.9999),
            max: hist.max(),
            mean: hist.mean(),
            count: hist.len(),
        };
        assert!(
            summary.is_monotone(),
            "percentiles out of order: {summary:?}"
        );
        summary
    }

    pub fn is_monotone(&self) -> bool {
        let v = [self.p50, self.p90, self.p99, self.p999, self.p9999];
        v.windows(2).all(|w| w[0] <= w[1]) && self.p9999 <= hist_max_upper(self.max)
    }
}

/// `value_at_quantile` reports the highest value equivalent to a bucket, so
/// it may exceed the exact recorded maximum by the bucket's width.
fn hist_max_upper(max: u64) -> u64 {
    max + max / 10u64.pow(u32::from(LATENCY_SIGFIG)) + 1
}

/// What a scenario measured, ready to print.
pub struct Summary {
    pub scenario: &'static str,
    pub settings: String,
    pub seconds: f64,
    pub messages: u64,
    pub bytes: u64,
    pub interrupted: bool,
    /// Main latency histogram (µs) when the scenario measures one.
    pub latency: Option<Histogram<u64>>,
    /// Scenario-specific figures, printed and put into the JSON object.
    pub extra: Map<String, Value>,
}

impl Summary {
    pub fn new(scenario: &'static str, settings: String) -> Summary {
        Summary {
            scenario,
            settings,
            seconds: 0.0,
            messages: 0,
            bytes: 0,
            interrupted: false,
            latency: None,
            extra: Map::new(),
        }
    }

    pub fn msgs_per_sec(&self) -> f64 {
        per_second(self.messages as f64, self.seconds)
    }

    pub fn mb_per_sec(&self) -> f64 {
        per_second(self.bytes as f64 / BYTES_PER_MB, self.seconds)
    }

    pub fn put(&mut self, key: &str, value: impl Into<Value>) {
        self.extra.insert(key.to_string(), value.into());
    }

    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("scenario".into(), json!(self.scenario));
        object.insert("seconds".into(), json!(self.seconds));
        object.insert("messages".into(), json!(self.messages));
        object.insert("bytes".into(), json!(self.bytes));
        object.insert("msgs_per_sec".into(), json!(self.msgs_per_sec()));
        object.insert("mb_per_sec".into(), json!(self.mb_per_sec()));
        object.insert("interrupted".into(), json!(self.interrupted));
        if let Some(hist) = &self.latency {
            object.insert("latency_us".into(), json!(LatencySummary::of(hist)));
        }
        for (key, value) in &self.extra {
            object.insert(key.clone(), value.clone());
        }
        Value::Object(object)
    }

    pub fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "== {} ({})", self.scenario, self.settings);
        if self.interrupted {
            let _ = writeln!(out, "   interrupted: figures cover the run until Ctrl-C");
        }
        let _ = writeln!(out, "   {:<30} {:>14.3}", "seconds", self.seconds);
        let _ = writeln!(out, "   {:<30} {:>14}", "records", self.messages);
        let _ = writeln!(out, "   {:<30} {:>14.1}", "records/s", self.msgs_per_sec());
        let _ = writeln!(out, "   {:<30} {:>14.3}", "MB/s", self.mb_per_sec());
        if let Some(hist) = &self.latency {
            out.push_str(&latency_lines("latency", &LatencySummary::of(hist)));
        }
        for (key, value) in &self.extra {
            let _ = writeln!(out, "   {key:<30} {:>14}", compact(value));
        }
        out
    }
}

pub fn latency_lines(label: &str, s: &LatencySummary) -> String {
    format!(
        "   {label} (us)   p50={} p90={} p99={} p99.9={} p99.99={} max={} mean={:.1} n={}\n",
        s.p50, s.p90, s.p99, s.p999, s.p9999, s.max, s.mean, s.count
    )
}

fn compact(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.3}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn per_second(amount: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        amount / seconds
    } else {
        0.0
    }
}

/// Where a summary goes.
pub struct Outputs<'a> {
    pub json: bool,
    pub hgrm_out: Option<&'a Path>,
    pub plot: Option<&'a Path>,
}

impl<'a> Outputs<'a> {
    pub fn of(common: &'a CommonArgs) -> Outputs<'a> {
        Outputs {
            json: common.json,
            hgrm_out: common.hgrm_out.as_deref(),
            plot: common.plot.as_deref(),
        }
    }
}

/// Writes the files, prints the summary and, last, the JSON line.
pub fn emit(summary: &Summary, outputs: &Outputs<'_>) -> anyhow::Result<()> {
    if let Some(hist) = &summary.latency {
        if let Some(path) = outputs.hgrm_out {
            std::fs::write(path, percentile_distribution(hist))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(path) = outputs.plot {
            write_plot(hist, path, summary.scenario)?;
        }
    } else if outputs.hgrm_out.is_some() || outputs.plot.is_some() {
        eprintln!(
            "note: {} records no latency histogram; no file written",
            summary.scenario
        );
    }
    print!("{}", summary.human());
    if outputs.json {
        println!("{}", summary.to_json());
    }
    Ok(())
}

/// The histogram as HdrHistogram's `outputPercentileDistribution` prints it,
/// values in milliseconds.
pub fn percentile_distribution(hist: &Histogram<u64>) -> String {
    let decimals = usize::from(hist.sigfig());
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total_count: u64 = 0;
    for step in hist.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total_count += step.count_since_last_iteration();
        let value = step.value_iterated_to() as f64 / US_PER_MS;
        let quantile = step.quantile_iterated_to();
        if quantile < 1.0 {
            let inverse = 1.0 / (1.0 - quantile);
            let _ = writeln!(
                out,
                "{value:>12.decimals$} {quantile:>2.12} {total_count:>10} {inverse:>14.2}"
            );
        } else {
            let _ = writeln!(
                out,
                "{value:>12.decimals$} {quantile:>2.12} {total_count:>10}"
            );
        }
    }
    footer(hist, &mut out);
    out
}

fn footer(hist: &Histogram<u64>, out: &mut String) {
    let d = usize::from(hist.sigfig());
    let (mean, stdev) = (hist.mean() / US_PER_MS, hist.stdev() / US_PER_MS);
    let max = hist.max() as f64 / US_PER_MS;
    let _ = writeln!(
        out,
        "#[Mean    = {mean:>12.d$}, StdDeviation   = {stdev:>12.d$}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:>12.d$}, Total count    = {:>12}]",
        hist.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        hist.buckets(),
        sub_bucket_count(hist.sigfig())
    );
}

/// HdrHistogram's sub-bucket count for a precision: the power of two at or
/// above `2 * 10^sigfig`.
fn sub_bucket_count(sigfig: u8) -> u64 {
    let largest = 2 * 10u64.pow(u32::from(sigfig));
    largest.next_power_of_two()
}

/// Points (1/(1-quantile), milliseconds) for the percentile plot, with the
/// x axis capped at `x_max`.
fn plot_points(hist: &Histogram<u64>, x_max: f64) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = hist
        .iter_quantiles(TICKS_PER_HALF_DISTANCE)
        .filter(|step| step.quantile_iterated_to() < 1.0)
        .map(|step| {
            (
                1.0 / (1.0 - step.quantile_iterated_to()),
                step.value_iterated_to() as f64 / US_PER_MS,
            )
        })
        .filter(|(x, _)| *x < x_max)
        .collect();
    points.push((x_max, hist.max() as f64 / US_PER_MS));
    points
}

/// The x-axis end: 10^k with k in 2..=6, enough to show the tail the
/// sample size supports.
fn plot_x_max(count: u64) -> f64 {
    let k = (count.max(1) as f64).log10().ceil().clamp(2.0, 6.0);
    10f64.powf(k)
}

fn percentile_label(x: f64) -> String {
    let percent = format!("{:.4}", 100.0 * (1.0 - 1.0 / x));
    let trimmed = percent.trim_end_matches('0').trim_end_matches('.');
    format!("{trimmed}%")
}

pub fn write_plot(hist: &Histogram<u64>, path: &Path, title: &str) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let x_max = plot_x_max(hist.len());
    let points = plot_points(hist, x_max);
    let y_max = points.iter().map(|p| p.1).fold(0.001, f64::max) * 1.1;
    let root = SVGBackend::new(path, (1024, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{title}: latency by percentile"),
            ("sans-serif", 24),
        )
        .margin(16)
        .margin_right(48)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d((1.0..x_max).log_scale(), 0.0..y_max)
        .map_err(|e| anyhow!("plot: {e}"))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            points,
            BLUE.stroke_width(2),
        )))
        .map_err(|e| anyhow!("plot: {e}"))?;
    root.present()
        .map_err(|e| anyhow!("plot {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Histogram<u64> {
        let mut hist = new_latency_histogram();
        for v in 1..=10_000u64 {
            record_latency_us(&mut hist, v * 10);
        }
        hist
    }

    #[test]
    fn summary_is_monotone_and_close() {
        let s = LatencySummary::of(&sample());
        assert!(s.is_monotone());
        assert!((49_900..=50_100).contains(&s.p50), "{s:?}");
        assert_eq!(s.count, 10_000);
        assert!(s.max >= 100_000 && s.max <= 100_100, "{s:?}");
    }

    #[test]
    fn distribution_has_table_and_footer() {
        let text = percentile_distribution(&sample());
        let mut lines = text.lines();
        let header = lines.next().expect("header");
        assert!(header.contains("Value") && header.contains("1/(1-Percentile)"));
        assert_eq!(lines.next(), Some(""));
        let rows: Vec<&str> = text
            .lines()
            .skip(2)
            .filter(|l| !l.starts_with('#'))
            .collect();
        assert!(rows.len() > 20);
        let last: Vec<&str> = rows[rows.len() - 1].split_whitespace().collect();
        assert_eq!(last.len(), 3, "last row has no 1/(1-p) column: {last:?}");
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "10000");
        let counts: Vec<u64> = rows
            .iter()
            .map(|r| {
                r.split_whitespace()
                    .nth(2)
                    .and_then(|c| c.parse().ok())
                    .expect("count")
            })
            .collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]));
        assert!(text.contains("#[Mean    = "));
        assert!(text.contains("Total count    =        10000]"));
        assert!(text.contains("SubBuckets     =         2048]"));
    }

    #[test]
    fn json_has_required_fields() {
        let mut summary = Summary::new("produce", String::new());
        summary.seconds = 2.0;
        summary.messages = 10;
        summary.bytes = 2_000_000;
        summary.latency = Some(sample());
        let value = summary.to_json();
        assert_eq!(value["msgs_per_sec"], json!(5.0));
        assert_eq!(value["mb_per_sec"], json!(1.0));
        for key in ["p50", "p90", "p99", "p999", "p9999", "max"] {
            assert!(value["latency_us"][key].is_u64(), "{key}");
        }
    }

    #[test]
    fn plot_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.svg");
        write_plot(&sample(), &path, "test").expect("plot");
        let svg = std::fs::read_to_string(&path).expect("read");
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{}",
            &svg[..200.min(svg.len())]
        );
    }

    #[test]
    fn percentile_labels() {
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(1000.0), "99.9%");
    }
}
