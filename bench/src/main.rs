//! `sluice-bench`: measures a Kafka-compatible broker (Sluice or any other)
//! only through the Kafka protocol, with librdkafka as the client, plus a
//! storage benchmark of Sluice's WAL (`wal`, in `wal.rs`); `search` also
//! reaches the Elasticsearch-compatible search API over HTTP.
//!
//! Role: a program that prints numbers (throughput, latency percentiles,
//! broker memory and CPU), never a pass/fail timing test, except where a
//! scenario verifies data (`many-topics`) and fails loudly when it is wrong.
//!
//! Threads: the scenarios run on the main thread; `e2e` adds one consumer
//! thread and `many-topics --broker-pid` one sampling thread. librdkafka
//! runs its own internal threads.
//!
//! Invariants:
//! - every run is bounded in time (warm-up + seconds + a drain of at most
//!   `args::DRAIN_SECONDS_MAX`) and in count (`--records-max`);
//! - with `--json`, the last line on stdout is one JSON object;
//! - Ctrl-C stops a run cleanly and it reports what it measured so far.

mod args;
mod client;
mod compare;
mod consume;
mod control;
mod e2e;
mod groups;
mod many_topics;
mod mixed_retention;
mod payload;
mod procstat;
mod produce;
mod report;
mod search;
mod wal;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "sluice-bench",
    version,
    about = "Benchmarks a Kafka-compatible broker through the Kafka protocol",
    // A later value of an option replaces an earlier one (compare's
    // --a-arg/--b-arg rely on it).
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Producer throughput (closed loop) or latency at a fixed rate (open loop).
    Produce(produce::ProduceArgs),
    /// Read a topic from the beginning as fast as possible.
    Consume(consume::ConsumeArgs),
    /// End-to-end latency: producer at a fixed rate and a consumer together.
    E2e(e2e::E2eArgs),
    /// Create many topics, write one record to every partition, verify all.
    ManyTopics(many_topics::ManyTopicsArgs),
    /// WAL disk use over time with a short- and a long-retention topic.
    MixedRetention(mixed_retention::MixedRetentionArgs),
    /// Run one scenario against two brokers alternately and compare medians.
    Compare(compare::CompareArgs),
    /// Consumer-group join and leave-recovery latency (p50 over runs).
    Groups(groups::GroupsArgs),
    /// Benchmark the write-ahead log directly (no network).
    Wal(wal::WalArgs),
    /// Indexing lag, indexing rate and query latency of the search API.
    Search(search::SearchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    control::install_ctrlc()?;
    match cli.command {
        Command::Produce(args) => produce::run(args),
        Command::Consume(args) => consume::run(args),
        Command::E2e(args) => e2e::run(args),
        Command::ManyTopics(args) => many_topics::run(args),
        Command::MixedRetention(args) => mixed_retention::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Wal(args) => wal::run(args),
        Command::Groups(args) => groups::run(args),
        Command::Search(args) => search::run(args),
    }
}
