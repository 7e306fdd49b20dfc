//! `groups`: consumer-group coordination latency through librdkafka.
//!
//! Each run starts `--members` consumers in a fresh group subscribed to the
//! topic and measures (1) join: from the first subscribe until every
//! member holds its share of the partitions, and (2) recovery: from the
//! moment one member starts closing (LeaveGroup) until the others hold all
//! partitions again. Prints p50/p90/max over `--runs` runs. The broker's
//! initial rebalance delay (group.initial.rebalance.delay.ms) is part of
//! the join time: report it alongside.
//!
//! Bounds: `--runs` runs, each waiting at most `RUN_WAIT` per phase.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::bail;
use rdkafka::consumer::Consumer;

use crate::args::CommonArgs;
use crate::client::{ensure_topic, BenchConsumer, BenchContext};
use crate::control::stop_requested;

const RUN_WAIT: Duration = Duration::from_secs(60);
const POLL_TIMEOUT: Duration = Duration::from_millis(5);

#[derive(clap::Args, Debug, Clone)]
pub struct GroupsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Consumers per group.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=64))]
    pub members: u32,
    /// Runs (one fresh group each).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub runs: u32,
}

fn member(common: &CommonArgs, group: &str) -> anyhow::Result<BenchConsumer> {
    let mut config = common.consumer_config(group);
    config.set("session.timeout.ms", "6000");
    config.set("heartbeat.interval.ms", "100");
    Ok(config.create_with_context(BenchContext::default())?)
}

fn assignment(c: &BenchConsumer) -> BTreeSet<i32> {
    c.assignment()
        .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

/// Polls until the members hold every partition, each an even share.
fn settle(members: &[BenchConsumer], partitions: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let share_max = partitions.div_ceil(members.len());
    loop {
        for c in members {
            let _ = c.poll(POLL_TIMEOUT);
        }
        let sets: Vec<BTreeSet<i32>> = members.iter().map(assignment).collect();
        let covered: BTreeSet<i32> = sets.iter().flatten().copied().collect();
        let total: usize = sets.iter().map(BTreeSet::len).sum();
        if covered.len() == partitions
            && total == partitions
            && sets.iter().all(|s| s.len() <= share_max)
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > RUN_WAIT || stop_requested() {
            bail!("assignments did not settle: {sets:?}");
        }
    }
}

fn one_run(args: &GroupsArgs, run: u32, partitions: usize) -> anyhow::Result<(Duration, Duration)> {
    let group = format!("sluice-bench-groups-{}-{run}", std::process::id());
    let mut members = (0..args.members)
        .map(|_| member(&args.common, &group))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for c in &members {
        c.subscribe(&[&args.common.topic])?;
    }
    let join = settle(&members, partitions)?;
    let leaver = members.pop().expect("at least two members");
    let left = Instant::now();
    drop(leaver);
    settle(&members, partitions)?;
    Ok((join, left.elapsed()))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn line(name: &str, mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "{name}: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms over {} runs",
        percentile(&v, 0.5).as_secs_f64() * 1e3,
        percentile(&v, 0.9).as_secs_f64() * 1e3,
        v.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        v.len()
    )
}

pub fn run(args: GroupsArgs) -> anyhow::Result<()> {
    let partitions = ensure_topic(&args.common)?.len();
    println!(
        "groups: {} members, {} partitions, {} runs; {}",
        args.members,
        partitions,
        args.runs,
        args.common.describe()
    );
    let (mut joins, mut recoveries) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        if stop_requested() {
            break;
        }
        let (join, recovery) = one_run(&args, run, partitions)?;
        joins.push(join);
        recoveries.push(recovery);
    }
    if joins.is_empty() {
        bail!("no run completed");
    }
    println!("{}", line("join (subscribe -> all assigned)", joins));
    println!("{}", line("recovery (leave -> rest hold all)", recoveries));
    Ok(())
}
