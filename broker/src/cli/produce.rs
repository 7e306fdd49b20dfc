//! `sluice produce`: the lines of stdin as records, through librdkafka's
//! producer; waits for every delivery report before it exits.

use std::io::{BufRead, Read};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

use super::{describe_error, parse_key_value, ConnArgs};

/// How long one wait for room in librdkafka's queue lasts; the whole wait
/// for room is bounded by `--timeout`.
const QUEUE_FULL_POLL: Duration = Duration::from_millis(100);
/// Longest line read from stdin: a record larger than Kafka's default
/// `message.max.bytes` (1 MiB) would be refused by the broker anyway.
const LINE_BYTES_MAX: usize = 16 << 20;

/// `sluice produce TOPIC`
#[derive(Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    conn: ConnArgs,
    topic: String,
    /// Split each line at the first SEP: key before, value after (a line without SEP has no key).
    #[arg(long, value_name = "SEP", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    key_separator: Option<String>,
    /// A header on every record (repeatable).
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    headers: Vec<(String, String)>,
    /// Send every record to this partition (default: the partitioner's choice).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    partition: Option<i32>,
    /// Compression of the record batches.
    #[arg(long, value_enum, default_value_t = Compression::None)]
    compression: Compression,
    /// Acknowledgements each batch waits for: 0, 1 or all.
    #[arg(long, default_value = "all", value_parser = ["0", "1", "all"])]
    acks: String,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Counts delivery reports; runs on the thread that polls the producer
/// (this one).
#[derive(Default)]
struct Deliveries {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| describe_error(e));
                }
            }
        }
    }
}

pub fn run(args: ProduceArgs) -> anyhow::Result<ExitCode> {
    let conn = &args.conn;
    let context = || conn.on(format!("topic {:?}", args.topic));
    let timeout_ms = conn.timeout().as_millis().to_string();
    let config = conn.config(&[
        ("acks", args.acks.as_str()),
        ("compression.type", args.compression.name()),
        ("linger.ms", "5"),
        ("message.timeout.ms", timeout_ms.as_str()),
    ]);
    let producer: BaseProducer<Deliveries> = config
        .create_with_context(Deliveries::default())
        .map_err(|e| anyhow!(describe_error(&e)))
        .context("cannot create the producer")?;

    let sent = send_lines(&args, &producer).with_context(context)?;
    // flush() polls: the remaining delivery reports run `delivery` here.
    let flushed = producer.flush(conn.timeout());
    let deliveries = producer.context();
    let delivered = deliveries.delivered.load(Ordering::Relaxed);
    let failed = deliveries.failed.load(Ordering::Relaxed);
    if let Err(e) = flushed {
        bail!(
            "{}: {} of {sent} records unconfirmed: {}",
            context(),
            sent - delivered - failed,
            describe_error(&e)
        );
    }
    if failed > 0 {
        let first = deliveries
            .first_error
            .lock()
            .ok()
            .and_then(|f| f.clone())
            .unwrap_or_default();
        bail!("{}: {failed} of {sent} records failed: {first}", context());
    }
    eprintln!("sluice: produced {delivered} records to {:?}", args.topic);
    Ok(ExitCode::SUCCESS)
}

/// Sends every line of stdin; returns how many were sent.
fn send_lines(args: &ProduceArgs, producer: &BaseProducer<Deliveries>) -> anyhow::Result<u64> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut line = Vec::new();
    let mut sent = 0u64;
    loop {
        line.clear();
        let n = (&mut input)
            .take(u64::try_from(LINE_BYTES_MAX).unwrap_or(u64::MAX) + 1)
            .read_until(b'\n', &mut line)
            .context("reading stdin")?;
        if n == 0 {
            return Ok(sent);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() > LINE_BYTES_MAX {
            bail!("line {} is longer than {LINE_BYTES_MAX} bytes", sent + 1);
        }
        let (key, value) = split_key(&line, args.key_separator.as_deref());
        let mut record = BaseRecord::to(&args.topic).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(partition) = args.partition {
            record = record.partition(partition);
        }
        if !args.headers.is_empty() {
            record = record.headers(headers(&args.headers));
        }
        send(producer, record, args.conn.timeout())?;
        sent += 1;
        // Runs the delivery reports that have arrived.
        producer.poll(Duration::ZERO);
    }
}

/// Sends one record, waiting (bounded by `timeout`) while librdkafka's
/// queue is full.
fn send<'a>(
    producer: &BaseProducer<Deliveries>,
    mut record: BaseRecord<'a, [u8], [u8]>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if Instant::now() < deadline =>
            {
                record = back;
                producer.poll(QUEUE_FULL_POLL);
            }
            Err((e, _)) => return Err(anyhow!(describe_error(&e))),
        }
    }
}

/// Key and value of a line: split at the first `separator`, if given and
/// present.
fn split_key<'l>(line: &'l [u8], separator: Option<&str>) -> (Option<&'l [u8]>, &'l [u8]) {
    let Some(sep) = separator.map(str::as_bytes) else {
        return (None, line);
    };
    match line.windows(sep.len()).position(|w| w == sep) {
        Some(at) => (Some(&line[..at]), &line[at + sep.len()..]),
        None => (None, line),
    }
}

fn headers(pairs: &[(String, String)]) -> OwnedHeaders {
    pairs.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_at_the_first_separator() {
        assert_eq!(
            split_key(b"k::v::w", Some("::")),
            (Some(&b"k"[..]), &b"v::w"[..])
        );
        assert_eq!(split_key(b"no-sep", Some("::")), (None, &b"no-sep"[..]));
        assert_eq!(split_key(b"a:b", None), (None, &b"a:b"[..]));
        assert_eq!(split_key(b":v", Some(":")), (Some(&b""[..]), &b"v"[..]));
    }
}
