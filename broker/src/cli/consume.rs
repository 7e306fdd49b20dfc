//! `sluice consume`: prints a topic's records, kcat-style, through
//! librdkafka's consumer: partitions assigned directly (no group, no
//! commits) or, with `--group`, as a member of a consumer group that
//! commits what it printed.
//!
//! Without `--follow` it stops at the end offsets captured when it
//! started, so it terminates on an empty topic too.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Map, Value};

use super::{describe_code, describe_error, ConnArgs};

/// One wait for records; also how often Ctrl-C is noticed.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// `group.id` of the assign mode: librdkafka wants one for assign(), but
/// nothing is ever committed under it and it never joins.
const ASSIGN_GROUP_ID: &str = "sluice-consume";

/// `sluice consume TOPIC`
#[derive(Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    conn: ConnArgs,
    topic: String,
    /// Where to start: beginning, end, an OFFSET, -N (N before the end) or @TIMESTAMP_MS. With --group only beginning or end (the group's committed offsets win).
    #[arg(long, default_value = "beginning", value_parser = parse_from, allow_hyphen_values = true)]
    from: From,
    /// Join this consumer group and commit the offsets of the records printed.
    #[arg(long, conflicts_with = "partition")]
    group: Option<String>,
    /// Stop after COUNT records.
    #[arg(short = 'n', long = "count", value_name = "COUNT")]
    count: Option<u64>,
    /// Keep waiting for new records (until Ctrl-C) instead of stopping at the end offsets seen at start.
    #[arg(long)]
    follow: bool,
    /// Read only this partition.
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    partition: Option<i32>,
    /// kcat format string (%k key, %v value, %p partition, %o offset, %t topic, %T timestamp ms, %h headers, %K/%S key/value lengths, \n \t \\ escapes, %% a percent sign) or json (one JSON object a line).
    #[arg(long, default_value = "%v\\n", value_parser = parse_format)]
    format: Output,
}

/// `--from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    Beginning,
    End,
    Offset(i64),
    /// N records before the end.
    Tail(i64),
    /// The first record at or after this time, ms since the epoch.
    Timestamp(i64),
}

fn parse_from(s: &str) -> Result<From, String> {
    let number = |t: &str| t.parse::<i64>().ok().filter(|n| *n >= 0);
    let parsed = match s {
        "beginning" => Some(From::Beginning),
        "end" => Some(From::End),
        _ => match (s.strip_prefix('@'), s.strip_prefix('-')) {
            (Some(ts), _) => number(ts).map(From::Timestamp),
            (_, Some(n)) => number(n).map(From::Tail),
            _ => number(s).map(From::Offset),
        },
    };
    parsed.ok_or_else(|| format!("expected beginning, end, OFFSET, -N or @TIMESTAMP_MS, got {s:?}"))
}

/// `--format`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Output {
    Json,
    Template(Vec<Piece>),
}

/// One part of a kcat format string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(Vec<u8>),
    Key,
    Value,
    Partition,
    Offset,
    Topic,
    Timestamp,
    Headers,
    KeyLen,
    ValueLen,
}

fn parse_format(s: &str) -> Result<Output, String> {
    if s == "json" {
        return Ok(Output::Json);
    }
    let mut pieces = Vec::new();
    let mut text = Vec::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let field = match c {
            '%' => match chars.next() {
                Some('k') => Piece::Key,
                Some('v') => Piece::Value,
                Some('p') => Piece::Partition,
                Some('o') => Piece::Offset,
                Some('t') => Piece::Topic,
                Some('T') => Piece::Timestamp,
                Some('h') => Piece::Headers,
                Some('K') => Piece::KeyLen,
                Some('S') => Piece::ValueLen,
                Some('%') => Piece::Text(b"%".to_vec()),
                other => return Err(format!("unknown format field %{}", other.unwrap_or(' '))),
            },
            '\\' => match chars.next() {
                Some('n') => Piece::Text(b"\n".to_vec()),
                Some('t') => Piece::Text(b"\t".to_vec()),
                Some('r') => Piece::Text(b"\r".to_vec()),
                Some('\\') => Piece::Text(b"\\".to_vec()),
                other => return Err(format!("unknown escape \\{}", other.unwrap_or(' '))),
            },
            c => {
                let mut buf = [0u8; 4];
                text.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                continue;
            }
        };
        match field {
            Piece::Text(t) => text.extend_from_slice(&t),
            field => {
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(field);
            }
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(Output::Template(pieces))
}

/// The consumer of `sluice consume`.
type Reader = BaseConsumer<Assignments>;

/// Whether the group gave this consumer its assignment yet: an empty one
/// (the group's other members hold every partition) ends a read without
/// `--follow` at once, where "nothing assigned yet" waits.
#[derive(Default)]
struct Assignments {
    received: AtomicBool,
}

impl ClientContext for Assignments {}

impl ConsumerContext for Assignments {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Revoked (eager rebalance): the next assignment is awaited.
        let received = matches!(rebalance, Rebalance::Assign(_));
        self.received.store(received, Ordering::Relaxed);
    }
}

/// Which partitions are read to their captured end.
struct Progress {
    /// Log end offset of each partition read, captured at start.
    ends: BTreeMap<i32, i64>,
    done: HashSet<i32>,
}

impl Progress {
    /// Whether every partition this consumer reads has reached its end.
    fn finished(&self, consumer: &Reader, group: bool) -> bool {
        if !group {
            return self.done.len() >= self.ends.len();
        }
        let Ok(assignment) = consumer.assignment() else {
            return false;
        };
        let assigned = assignment.elements();
        if assigned.is_empty() {
            return consumer.context().received.load(Ordering::Relaxed);
        }
        assigned.iter().all(|e| self.done.contains(&e.partition()))
    }

    fn saw(&mut self, partition: i32, offset: i64) {
        if self
            .ends
            .get(&partition)
            .is_some_and(|end| offset + 1 >= *end)
        {
            self.done.insert(partition);
        }
    }
}

pub fn run(args: ConsumeArgs) -> anyhow::Result<ExitCode> {
    let conn = &args.conn;
    let context = || conn.on(format!("topic {:?}", args.topic));
    if args.group.is_some() && !matches!(args.from, From::Beginning | From::End) {
        bail!("--from with --group takes beginning or end (the group's committed offsets win); move a group's offsets with `sluice group seek`");
    }
    let consumer = consumer(&args)?;
    let partitions = partitions(&args, &consumer).with_context(context)?;
    let starts = match &args.group {
        Some(_) => None,
        None => Some(start_offsets(&args, &consumer, &partitions)?),
    };
    let mut progress = Progress {
        ends: BTreeMap::new(),
        done: HashSet::new(),
    };
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(&args.topic, p, conn.timeout())
            .map_err(|e| anyhow!(describe_error(&e)))
            .with_context(|| conn.on(format!("partition {}:{p}", args.topic)))?;
        progress.ends.insert(p, high);
        let start = starts
            .as_ref()
            .and_then(|tpl| tpl.find_partition(&args.topic, p))
            .map(|e| start_position(e.offset(), (low, high)));
        if start.is_some_and(|start| start >= high) {
            progress.done.insert(p);
        }
    }
    match &starts {
        None => consumer.subscribe(&[&args.topic]),
        Some(tpl) => consumer.assign(tpl),
    }
    .map_err(|e| anyhow!(describe_error(&e)))
    .with_context(context)?;

    let stop = Arc::new(AtomicBool::new(false));
    let on_signal = Arc::clone(&stop);
    ctrlc::set_handler(move || on_signal.store(true, Ordering::Relaxed))
        .context("cannot install the Ctrl-C handler")?;
    let result = consume_loop(&args, &consumer, &mut progress, &stop).with_context(context);
    if let Some(group) = &args.group {
        let none = consumer.assignment().is_ok_and(|a| a.count() == 0);
        if result.is_ok() && none && consumer.context().received.load(Ordering::Relaxed) {
            eprintln!(
                "sluice: group {group:?} gave this consumer no partition of {:?}: its other members hold them all",
                args.topic
            );
        }
    }
    if args.group.is_some() {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            // Nothing printed, nothing to commit.
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {}
            Err(e) => {
                return Err(anyhow!(describe_error(&e))).with_context(|| {
                    conn.on(format!(
                        "committing group {:?}",
                        args.group.as_deref().unwrap_or_default()
                    ))
                });
            }
        }
    }
    result.map(|()| ExitCode::SUCCESS)
}

fn consumer(args: &ConsumeArgs) -> anyhow::Result<Reader> {
    let eof = if args.follow { "false" } else { "true" };
    match &args.group {
        Some(group) => {
            let reset = if args.from == From::End {
                "latest"
            } else {
                "earliest"
            };
            args.conn.consumer_with(
                Some(group),
                &[
                    ("enable.auto.commit", "true"),
                    // Stored after the record is printed: a commit never
                    // covers a record the operator did not see.
                    ("enable.auto.offset.store", "false"),
                    ("auto.offset.reset", reset),
                    ("enable.partition.eof", eof),
                ],
                Assignments::default(),
            )
        }
        None => args.conn.consumer_with(
            Some(ASSIGN_GROUP_ID),
            &[("enable.partition.eof", eof)],
            Assignments::default(),
        ),
    }
}

/// The partitions read: `--partition`, or all of the topic's.
fn partitions(args: &ConsumeArgs, consumer: &Reader) -> anyhow::Result<Vec<i32>> {
    let metadata = args.conn.metadata(consumer, Some(&args.topic))?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == args.topic)
        .ok_or_else(|| anyhow!(describe_code(RDKafkaErrorCode::UnknownTopicOrPartition)))?;
    if let Some(err) = topic.error() {
        bail!(describe_code(err.into()));
    }
    let mut all: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
    all.sort_unstable();
    match args.partition {
        Some(p) if all.contains(&p) => Ok(vec![p]),
        Some(p) => bail!(
            "partition {p}: {}",
            describe_code(RDKafkaErrorCode::UnknownTopicOrPartition)
        ),
        None => Ok(all),
    }
}

/// The offsets the assign mode starts at.
fn start_offsets(
    args: &ConsumeArgs,
    consumer: &Reader,
    partitions: &[i32],
) -> anyhow::Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        let offset = match args.from {
            From::Beginning => Offset::Beginning,
            From::End => Offset::End,
            From::Offset(n) => Offset::Offset(n),
            From::Tail(n) => Offset::OffsetTail(n),
            From::Timestamp(ts) => Offset::Offset(ts),
        };
        tpl.add_partition_offset(&args.topic, p, offset)
            .map_err(|e| anyhow!(describe_error(&e)))?;
    }
    if let From::Timestamp(_) = args.from {
        tpl = consumer
            .offsets_for_times(tpl, args.conn.timeout())
            .map_err(|e| anyhow!(describe_error(&e)))?;
        for e in tpl.elements() {
            e.error().map_err(|err| anyhow!(describe_error(&err)))?;
        }
    }
    Ok(tpl)
}

/// Where the assign mode starts reading a partition whose log spans
/// `low..high`, from its resolved start offset.
fn start_position(start: Offset, (low, high): (i64, i64)) -> i64 {
    match start {
        Offset::Beginning => low,
        Offset::Offset(o) => o.max(low),
        Offset::OffsetTail(n) => (high - n).max(low),
        // End, or no record at or after the asked time.
        _ => high,
    }
}

fn consume_loop(
    args: &ConsumeArgs,
    consumer: &Reader,
    progress: &mut Progress,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let mut last_progress = Instant::now();
    let idle_max = args.conn.timeout();
    while !stop.load(Ordering::Relaxed)
        && args.count.map_or(true, |n| printed < n)
        && (args.follow || !progress.finished(consumer, args.group.is_some()))
    {
        match consumer.poll(POLL_INTERVAL) {
            None => {
                if out.flush().is_err() {
                    return Ok(());
                }
                if !args.follow && last_progress.elapsed() > idle_max {
                    bail!("no record and no end of partition within {idle_max:?}");
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                progress.done.insert(p);
                last_progress = Instant::now();
            }
            Some(Err(e)) if fatal(&e) => bail!(describe_error(&e)),
            // Transient (a broker connection dropped): librdkafka retries.
            Some(Err(e)) => eprintln!("sluice: {}: {}", args.conn.brokers, describe_error(&e)),
            Some(Ok(m)) => {
                let written = write_record(&mut out, &args.format, &m).and_then(|()| {
                    if args.follow {
                        out.flush()
                    } else {
                        Ok(())
                    }
                });
                if written.is_err() {
                    // stdout closed (`| head`): the reader is done.
                    return Ok(());
                }
                if args.group.is_some() {
                    consumer
                        .store_offset_from_message(&m)
                        .map_err(|e| anyhow!(describe_error(&e)))?;
                }
                progress.saw(m.partition(), m.offset());
                printed += 1;
                last_progress = Instant::now();
            }
        }
    }
    let _ = out.flush();
    Ok(())
}

/// Errors that no retry by librdkafka will cure.
fn fatal(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::Fatal
        )
    )
}

fn write_record(
    out: &mut impl Write,
    format: &Output,
    m: &BorrowedMessage<'_>,
) -> std::io::Result<()> {
    let pieces = match format {
        Output::Json => {
            return writeln!(out, "{}", record_json(m));
        }
        Output::Template(pieces) => pieces,
    };
    let len = |b: Option<&[u8]>| b.map_or(-1, |b| i64::try_from(b.len()).unwrap_or(i64::MAX));
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.write_all(t)?,
            Piece::Key => out.write_all(m.key().unwrap_or_default())?,
            Piece::Value => out.write_all(m.payload().unwrap_or_default())?,
            Piece::Partition => write!(out, "{}", m.partition())?,
            Piece::Offset => write!(out, "{}", m.offset())?,
            Piece::Topic => out.write_all(m.topic().as_bytes())?,
            Piece::Timestamp => write!(out, "{}", m.timestamp().to_millis().unwrap_or(-1))?,
            Piece::KeyLen => write!(out, "{}", len(m.key()))?,
            Piece::ValueLen => write!(out, "{}", len(m.payload()))?,
            Piece::Headers => {
                for (i, h) in m.headers().into_iter().flat_map(|hs| hs.iter()).enumerate() {
                    if i > 0 {
                        out.write_all(b",")?;
                    }
                    write!(out, "{}=", h.key)?;
                    out.write_all(h.value.unwrap_or_default())?;
                }
            }
        }
    }
    Ok(())
}

/// A record as one JSON object, its fields in kcat's order; key, value
/// and header values as text (invalid UTF-8 replaced), headers as an
/// object (a repeated key keeps its last value).
fn record_json(m: &BorrowedMessage<'_>) -> String {
    let text = |b: Option<&[u8]>| json!(b.map(|b| String::from_utf8_lossy(b).into_owned()));
    let mut headers = Map::new();
    for h in m.headers().into_iter().flat_map(|hs| hs.iter()) {
        headers.insert(h.key.to_string(), text(h.value));
    }
    // serde_json sorts an object's keys; the line is assembled by hand to
    // keep the fields in the documented order.
    format!(
        "{{\"topic\":{},\"partition\":{},\"offset\":{},\"timestamp\":{},\"key\":{},\"value\":{},\"headers\":{}}}",
        json!(m.topic()),
        m.partition(),
        m.offset(),
        json!(m.timestamp().to_millis()),
        text(m.key()),
        text(m.payload()),
        Value::Object(headers)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_values() {
        assert_eq!(parse_from("beginning"), Ok(From::Beginning));
        assert_eq!(parse_from("end"), Ok(From::End));
        assert_eq!(parse_from("42"), Ok(From::Offset(42)));
        assert_eq!(parse_from("-10"), Ok(From::Tail(10)));
        assert_eq!(
            parse_from("@1700000000000"),
            Ok(From::Timestamp(1_700_000_000_000))
        );
        assert!(parse_from("@-1").is_err());
        assert!(parse_from("soon").is_err());
    }

    #[test]
    fn start_positions_lie_in_the_log() {
        let log = (10, 20);
        assert_eq!(start_position(Offset::Beginning, log), 10);
        assert_eq!(start_position(Offset::End, log), 20);
        assert_eq!(start_position(Offset::Offset(3), log), 10);
        assert_eq!(start_position(Offset::Offset(15), log), 15);
        assert_eq!(start_position(Offset::OffsetTail(4), log), 16);
        assert_eq!(start_position(Offset::OffsetTail(40), log), 10);
    }

    #[test]
    fn kcat_format_strings() {
        assert_eq!(
            parse_format("%k=%v\\n"),
            Ok(Output::Template(vec![
                Piece::Key,
                Piece::Text(b"=".to_vec()),
                Piece::Value,
                Piece::Text(b"\n".to_vec()),
            ]))
        );
        assert_eq!(
            parse_format("100%% %p\\t"),
            Ok(Output::Template(vec![
                Piece::Text(b"100% ".to_vec()),
                Piece::Partition,
                Piece::Text(b"\t".to_vec()),
            ]))
        );
        assert_eq!(parse_format("json"), Ok(Output::Json));
        assert!(parse_format("%q").is_err());
        assert!(parse_format("\\x").is_err());
    }
}
