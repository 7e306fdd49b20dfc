//! `sluice`: the broker process of Sluice, a Kafka-compatible message broker.
//!
//! # Role
//! CLI and configuration (`config`), start-up and shutdown (`server`), the
//! Kafka protocol front end (`connection` + `handlers`, codecs from the
//! `kafka-protocol` crate), the mapping of internal errors to Kafka codes
//! (`errors`) and the admin HTTP server (`admin`, with `/metrics` and
//! `/admin/memory` from `metrics`, fed by per-shard `probe` tasks). The data plane
//! (partitions, WAL) is `sluice-shard` behind `plane`; metadata is
//! `sluice-raft`. The same binary is the operator's tool: Kafka client
//! subcommands over librdkafka (`cli`), the host check (`check`), shell
//! completions and man pages (`completions`); and tells systemd how the
//! node is (`systemd`).
//!
//! # Threads and cores
//! - main thread: start-up, then waits for SIGTERM/SIGINT;
//! - `sluice-control`: the metadata service (Raft, tokio current-thread);
//! - `sluice-shard-N`: one glommio executor per shard (pinned to core N+1
//!   with `--pin-cores`), each with its own SO_REUSEPORT Kafka listener and
//!   the connections it accepted and, in a cluster, its replica fetcher
//!   (`replica`: one task, at most one connection per leader node) and its
//!   transaction marker client (`markers`: at most one connection per other
//!   node, a task only while markers wait);
//! - `sluice-admin`: admin HTTP (tokio current-thread).
//!
//! # Invariants
//! - Connection and shard state is core-local (`Rc`); nothing is shared
//!   across shards except the read-only `NodeInfo` and the metadata handle.
//! - Responses on a connection leave in request order; acks=0 produces get
//!   none.
//! - Bad input never panics: it gets a Kafka error code, or the connection
//!   is closed with a rate-limited warning.
//! - Frames are bounded by `--request-max-bytes`, connections per shard by
//!   `--connections-per-shard-max` (over it: closed at accept, a rate-limited
//!   warning, `sluice_shard_connections_refused_total`).
//! - Per-request logging is `trace!`.

mod admin;
mod check;
mod cli;
mod completions;
mod config;
mod connection;
mod errors;
mod frame_check;
#[cfg(test)]
mod fuzz;
mod handlers;
mod kafka_client;
mod markers;
mod metrics;
mod plane;
mod probe;
mod replica;
pub mod sasl;
mod search;
mod security;
mod server;
mod systemd;
mod topic_config;
mod users;
#[cfg(test)]
mod wire_tests;

use clap::{CommandFactory, FromArgMatches};
use tracing_subscriber::EnvFilter;

use crate::config::{Cli, Command, Settings, StartArgs};

fn main() -> std::process::ExitCode {
    users::take_env();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Start(args) => {
            let Some(("start", sub)) = matches.subcommand() else {
                unreachable!("clap parsed the start subcommand");
            };
            match start(args, sub) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    // Also before logging is set up (bad settings): plain stderr.
                    eprintln!("sluice: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Client(command) => cli::run(command),
        Command::Check(args) => {
            let Some(("check", sub)) = matches.subcommand() else {
                unreachable!("clap parsed the check subcommand");
            };
            check::run(args, sub).unwrap_or_else(|e| {
                eprintln!("sluice: {e:#}");
                std::process::ExitCode::FAILURE
            })
        }
        Command::Completions { shell } => exit_code(completions::completions(shell)),
        Command::Manpage { dir } => exit_code(completions::manpages(dir.as_deref())),
    }
}

/// Exit status of a subcommand that has nothing to report but errors.
fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start(args: StartArgs, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    let settings = Settings::resolve(args.merge_file(matches)?)?;
    // openraft logs every election step at info and every failed call to
    // an unreachable peer (twice a second) at warn and error; the metadata
    // service reports elections, unreachable peers (rate-limited) and
    // failures itself. A filter that names openraft still wins (a later
    // directive for the same target does).
    let directives = format!("openraft=off,{}", settings.log_level);
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(directives));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    server::run(settings)
}
