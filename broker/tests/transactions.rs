//! Kafka transactions (KIP-98) against the real binary with librdkafka, on
//! a broker of two shards (topics of four partitions, so partitions led by
//! both shards take part in every transaction):
//! - commits and aborts alternately: a read_committed consumer sees exactly
//!   the committed records, in order, and reaches the end of every
//!   partition (the LSO reaches the HW once the last transaction committed;
//!   while one is open the LSO stays at its first offset); a
//!   read_uncommitted consumer sees every record;
//! - fencing: a second producer with the same `transactional.id` aborts the
//!   first one's open transaction, the first one's commit fails, its later
//!   sends never reach the log, and the second one commits;
//! - timeout: a producer that vanishes mid-transaction (leaked, never
//!   dropped) has its transaction aborted by the coordinator after
//!   `transaction.timeout.ms` (3 s), after which the LSO moves on and
//!   another producer's committed records become readable;
//! - consume-transform-produce with the consumed offsets sent to each
//!   transaction, across three SIGKILLs of the broker (each followed by a
//!   restart on the same data dir and port, and the loop restarted with a
//!   fresh producer of the same `transactional.id` and a fresh consumer of
//!   the same group whenever it failed): the output read with
//!   read_committed holds every input record exactly once, in order, and
//!   the group's committed offsets are the input's end offsets.
//!
//! All tests share one broker and run one at a time (the SIGKILL test
//! restarts it on the same port, which a broker starting in parallel could
//! take meanwhile).

mod common;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// Partitions of every topic (two shards lead two each).
const PARTITIONS: i32 = 4;
/// Bound of every wait for a condition (a read, the LSO, a restart).
const WAIT: Duration = Duration::from_secs(30);
/// Timeout handed to librdkafka's transactional calls.
const TXN_CALL: Duration = Duration::from_secs(30);
/// Timeout of one `init_transactions` call (it is called again while it
/// fails with a retriable error, within `WAIT`).
const INIT_CALL: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------- the shared broker

static SHARED: OnceLock<Mutex<Option<Broker>>> = OnceLock::new();

/// Stops the shared broker when the test binary exits (a static is never
/// dropped, and the broker must not outlive its tests).
extern "C" fn stop_shared() {
    if let Some(m) = SHARED.get() {
        let mut guard = m.lock().unwrap_or_else(|e| e.into_inner());
        drop(guard.take());
    }
}

/// Runs `f` with the shared broker, alone; starts it on first use, and
/// again when an earlier test left it dead. A failure prints the end of the
/// broker's log, then fails the test.
fn with_shared(f: impl FnOnce(&mut Broker)) {
    let m = SHARED.get_or_init(|| {
        // A new consumer group starts soon instead of waiting 3 s for members.
        let b = Broker::start_with(2, &["--group-initial-rebalance-delay-ms", "200"]);
        // SAFETY: registers a plain function to run at exit.
        assert_eq!(unsafe { libc::atexit(stop_shared) }, 0, "atexit");
        Mutex::new(Some(b))
    });
    let mut guard = m.lock().unwrap_or_else(|e| e.into_inner());
    let b = guard.as_mut().expect("shared broker");
    if !b.alive() {
        eprintln!("the shared broker died in an earlier test; starting it again");
        b.kill();
        b.restart();
    }
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(b))) {
        eprintln!("---- end of sluice log ----\n{}", log_tail(b, 120));
        resume_unwind(panic);
    }
}

fn log_tail(b: &Broker, lines: usize) -> String {
    let text = b.log_text();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------- clients

/// `common::client_config` for a bootstrap address (threads get no `Broker`).
fn config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("socket.timeout.ms", "10000")
        .set("message.timeout.ms", "20000");
    c
}

/// A transactional producer (idempotence and acks=all follow from
/// `transactional.id`); `extra` is applied last.
fn txn_producer(bootstrap: &str, id: &str, extra: &[(&str, &str)]) -> FutureProducer {
    let mut c = config(bootstrap);
    c.set("transactional.id", id).set("linger.ms", "5");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().expect("transactional producer")
}

fn txn_error(e: &KafkaError) -> Option<&RDKafkaError> {
    match e {
        KafkaError::Transaction(t) => Some(t),
        _ => None,
    }
}

fn describe(e: &KafkaError) -> String {
    match txn_error(e) {
        Some(t) => format!(
            "{e} (code {:?}, fatal {}, abortable {}, retriable {})",
            t.code(),
            t.is_fatal(),
            t.txn_requires_abort(),
            t.is_retriable()
        ),
        None => e.to_string(),
    }
}

/// `init_transactions`, called again while it fails with a retriable error
/// (the coordinator may still be finishing an earlier transaction of the
/// id, or be loading after a restart); returns how many calls it took.
fn init_transactions(p: &FutureProducer) -> Result<u32, KafkaError> {
    let deadline = Instant::now() + WAIT;
    let mut calls = 0;
    loop {
        calls += 1;
        match p.init_transactions(INIT_CALL) {
            Ok(()) => return Ok(calls),
            Err(e)
                if txn_error(&e).is_some_and(|t| t.is_retriable()) && Instant::now() < deadline =>
            {
                eprintln!("init_transactions: {}; calling it again", describe(&e));
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A consumer assigned by hand, of the given `isolation.level`.
fn reader(bootstrap: &str, isolation: &str) -> BaseConsumer {
    let mut c = config(bootstrap);
    c.set("group.id", "txn-tests-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", isolation);
    c.create().expect("reader")
}

/// End offsets as a client of `c`'s isolation level sees them: librdkafka's
/// ListOffsets carries the isolation level, so this is the high watermark
/// (log end, markers included) for read_uncommitted and the last stable
/// offset for read_committed.
fn ends(c: &BaseConsumer, topic: &str) -> Vec<i64> {
    (0..PARTITIONS)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"))
                .1
        })
        .collect()
}

/// The LSO and the HW of every partition.
struct Marks {
    lso: BaseConsumer,
    hw: BaseConsumer,
}

impl Marks {
    fn new(bootstrap: &str) -> Marks {
        Marks {
            lso: reader(bootstrap, "read_committed"),
            hw: reader(bootstrap, "read_uncommitted"),
        }
    }

    fn get(&self, topic: &str) -> (Vec<i64>, Vec<i64>) {
        (ends(&self.lso, topic), ends(&self.hw, topic))
    }

    /// Waits until no transaction is open on `topic` (LSO == HW on every
    /// partition: the last markers are written, EndTxn answers before
    /// that); returns the HW.
    fn wait_stable(&self, topic: &str) -> Vec<i64> {
        let deadline = Instant::now() + WAIT;
        loop {
            let (lso, hw) = self.get(topic);
            if lso == hw {
                return hw;
            }
            assert!(
                Instant::now() < deadline,
                "{topic}: LSO {lso:?} never reached HW {hw:?} within {WAIT:?}"
            );
            std::thread::sleep(POLL);
        }
    }
}

/// The next offset each assigned partition will deliver (`None` before the
/// first record since the assignment).
fn positions<C: ConsumerContext>(c: &BaseConsumer<C>) -> BTreeMap<i32, Option<i64>> {
    c.position()
        .expect("position")
        .elements()
        .iter()
        .map(|e| {
            let at = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            (e.partition(), at)
        })
        .collect()
}

fn consumed(m: &impl Message) -> Consumed {
    Consumed {
        partition: m.partition(),
        offset: m.offset(),
        key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
        value: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
        timestamp: m.timestamp().to_millis(),
    }
}

/// Reads every partition of `topic` from the beginning with `isolation`
/// until each one's position reaches `ends` (a position moves past control
/// records too, so reaching the HW with read_committed means the LSO got
/// there); panics when that takes longer than `WAIT`.
fn read_to_end(bootstrap: &str, topic: &str, ends: &[i64], isolation: &str) -> Vec<Consumed> {
    let c = reader(bootstrap, isolation);
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    loop {
        match c.poll(POLL) {
            Some(Ok(m)) => out.push(consumed(&m)),
            Some(Err(e)) => panic!("{isolation} read of {topic}: {e}"),
            None => {}
        }
        let at = positions(&c);
        let reached = (0..PARTITIONS).all(|p| {
            let end = ends[p as usize];
            end == 0 || at.get(&p).copied().flatten().is_some_and(|o| o >= end)
        });
        if reached {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{isolation} read of {topic} stopped at {at:?}, ends {ends:?}, {} records read",
            out.len()
        );
    }
}

/// `(offset, value)` per partition, in read order.
fn by_partition(records: &[Consumed]) -> BTreeMap<i32, Vec<(i64, String)>> {
    let mut out: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for r in records {
        out.entry(r.partition)
            .or_default()
            .push((r.offset, r.value.clone()));
    }
    out
}

fn values(records: &[Consumed]) -> BTreeMap<i32, Vec<String>> {
    by_partition(records)
        .into_iter()
        .map(|(p, v)| (p, v.into_iter().map(|(_, value)| value).collect()))
        .collect()
}

/// `per` records for each partition, values `{tag}-p{partition}-{i}`.
fn records(tag: &str, partitions: &[i32], per: usize) -> Vec<(i32, String, String, Option<i64>)> {
    partitions
        .iter()
        .flat_map(|&p| (0..per).map(move |i| (p, format!("k{i}"), format!("{tag}-p{p}-{i}"), None)))
        .collect()
}

fn all_partitions() -> Vec<i32> {
    (0..PARTITIONS).collect()
}

// ---------------------------------------------------------------- a: commit and abort

/// Transactions of the alternating test; even ones commit, odd ones abort,
/// so the first and the last commit.
const ROUNDS: usize = 9;
/// Records per partition and transaction.
const PER_ROUND: usize = 5;

#[test]
fn read_committed_sees_exactly_the_committed_records_and_reaches_the_end() {
    with_shared(|b| {
        let topic = "txn-mixed";
        let bs = b.bootstrap();
        create_topic(b, topic, PARTITIONS);
        let marks = Marks::new(&bs);
        let p = txn_producer(&bs, "txn-mixed-1", &[]);
        init_transactions(&p).unwrap_or_else(|e| panic!("init_transactions: {}", describe(&e)));
        let mut committed: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
        let mut all: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
        for round in 0..ROUNDS {
            let commit = round % 2 == 0;
            p.begin_transaction()
                .unwrap_or_else(|e| panic!("begin {round}: {}", describe(&e)));
            let sent = records(&format!("r{round}"), &all_partitions(), PER_ROUND);
            // Every record is acknowledged, so it is in the log before the
            // transaction ends either way.
            let acked = produce_all(&p, topic, &sent);
            let (lso, hw) = marks.get(topic);
            for part in 0..PARTITIONS {
                let first = acked
                    .iter()
                    .filter(|(ap, _)| *ap == part)
                    .map(|(_, o)| *o)
                    .min()
                    .expect("records in every partition");
                // The earlier transactions are complete (a new one cannot
                // add partitions before), this one holds the LSO.
                assert_eq!(
                    lso[part as usize], first,
                    "round {round}, partition {part}: LSO while the transaction is open (HW {hw:?})"
                );
                assert!(hw[part as usize] > first, "round {round}: HW {hw:?}");
            }
            let end = if commit {
                p.commit_transaction(TXN_CALL)
            } else {
                p.abort_transaction(TXN_CALL)
            };
            end.unwrap_or_else(|e| {
                panic!("end of round {round} (commit {commit}): {}", describe(&e))
            });
            for ((part, _, value, _), (ap, offset)) in sent.iter().zip(&acked) {
                assert_eq!(part, ap, "delivered to the partition asked for");
                all.entry(*ap).or_default().push((*offset, value.clone()));
                if commit {
                    committed
                        .entry(*ap)
                        .or_default()
                        .push((*offset, value.clone()));
                }
            }
        }
        let hw = marks.wait_stable(topic);
        for part in 0..PARTITIONS {
            assert_eq!(
                hw[part as usize],
                (ROUNDS * (PER_ROUND + 1)) as i64,
                "partition {part}: each transaction adds its records and one marker"
            );
        }
        let read = read_to_end(&bs, topic, &hw, "read_committed");
        assert_eq!(
            by_partition(&read),
            committed,
            "read_committed: the committed records, in order, and nothing else"
        );
        let read = read_to_end(&bs, topic, &hw, "read_uncommitted");
        assert_eq!(
            by_partition(&read),
            all,
            "read_uncommitted: every record, in order"
        );
    });
}

// ---------------------------------------------------------------- b: fencing

fn is_fenced(t: &RDKafkaError) -> bool {
    matches!(
        t.code(),
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fenced
    )
}

#[test]
fn a_second_producer_with_the_same_id_fences_the_first() {
    with_shared(|b| {
        let topic = "txn-fence";
        let bs = b.bootstrap();
        create_topic(b, topic, PARTITIONS);
        let marks = Marks::new(&bs);
        let a = txn_producer(&bs, "txn-fence-x", &[]);
        init_transactions(&a).unwrap_or_else(|e| panic!("A init: {}", describe(&e)));
        a.begin_transaction().expect("A begin");
        let a_open = records("a-open", &[0, 1], 3);
        produce_all(&a, topic, &a_open);

        // B's InitProducerId aborts A's open transaction and bumps the epoch.
        let bp = txn_producer(&bs, "txn-fence-x", &[]);
        let calls = init_transactions(&bp).unwrap_or_else(|e| panic!("B init: {}", describe(&e)));
        eprintln!("B's init_transactions took {calls} call(s)");

        // A's later records: to partitions already in its transaction
        // (produce with the old epoch) and to new ones (AddPartitionsToTxn
        // with the old epoch); none may reach the log, and the commit fails.
        let late = records("a-late", &all_partitions(), 2);
        let mut refused_at_send = 0;
        let futures: Vec<_> = late
            .iter()
            .filter_map(|(p, k, v, _)| {
                let r = FutureRecord::to(topic).partition(*p).key(k).payload(v);
                match a.send_result(r) {
                    Ok(f) => Some(f),
                    Err((e, _)) => {
                        refused_at_send += 1;
                        eprintln!("A's late send refused at once: {e}");
                        None
                    }
                }
            })
            .collect();
        let e = a
            .commit_transaction(TXN_CALL)
            .expect_err("the fenced producer's commit must fail");
        let t = txn_error(&e).unwrap_or_else(|| panic!("not a transaction error: {e}"));
        assert!(
            t.is_fatal() || t.txn_requires_abort() || is_fenced(t),
            "A's commit failed, but not as fenced: {}",
            describe(&e)
        );
        eprintln!(
            "A's commit: {}; fatal error: {:?}; {refused_at_send} late sends refused at once",
            describe(&e),
            a.client().fatal_error()
        );
        drop(futures);
        drop(a);

        bp.begin_transaction().expect("B begin");
        let b_records = records("b", &all_partitions(), 3);
        produce_all(&bp, topic, &b_records);
        bp.commit_transaction(TXN_CALL)
            .unwrap_or_else(|e| panic!("B commit: {}", describe(&e)));

        let hw = marks.wait_stable(topic);
        let mut want: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for (p, _, v, _) in &b_records {
            want.entry(*p).or_default().push(v.clone());
        }
        let read = read_to_end(&bs, topic, &hw, "read_committed");
        assert_eq!(
            values(&read),
            want,
            "read_committed: B's records only, A's aborted"
        );
        let read = read_to_end(&bs, topic, &hw, "read_uncommitted");
        let seen: Vec<&str> = read.iter().map(|r| r.value.as_str()).collect();
        for (_, _, v, _) in a_open.iter().chain(&b_records) {
            assert!(seen.contains(&v.as_str()), "{v} is in the log");
        }
        let leaked: Vec<&&str> = seen.iter().filter(|v| v.starts_with("a-late")).collect();
        assert!(
            leaked.is_empty(),
            "records of the fenced producer reached the log: {leaked:?}"
        );
        assert_eq!(seen.len(), a_open.len() + b_records.len(), "{seen:?}");
    });
}

// ---------------------------------------------------------------- c: timeout

/// `transaction.timeout.ms` of the vanishing producer.
const TXN_TIMEOUT: Duration = Duration::from_millis(6000);
/// How much earlier than its timeout the coordinator may seem to abort
/// (the timeout starts with AddPartitionsToTxn, after the clock here).
const EARLY_MARGIN: Duration = Duration::from_millis(500);

#[test]
fn a_vanished_producer_is_aborted_after_its_transaction_timeout() {
    with_shared(|b| {
        let topic = "txn-timeout";
        let bs = b.bootstrap();
        create_topic(b, topic, PARTITIONS);
        let marks = Marks::new(&bs);
        let ms = TXN_TIMEOUT.as_millis().to_string();
        // socket.timeout.ms and message.timeout.ms may not exceed the
        // transaction timeout in librdkafka.
        let vanishing = txn_producer(
            &bs,
            "txn-timeout-1",
            &[
                ("transaction.timeout.ms", &ms),
                ("socket.timeout.ms", &ms),
                ("message.timeout.ms", &ms),
            ],
        );
        init_transactions(&vanishing).unwrap_or_else(|e| panic!("init: {}", describe(&e)));
        vanishing.begin_transaction().expect("begin");
        let started = Instant::now();
        let open = records("leaked", &all_partitions(), 3);
        let acked = produce_all(&vanishing, topic, &open);
        // Never dropped: no EndTxn, no purge; the application is gone as
        // far as the broker can tell.
        let vanished: &'static FutureProducer = Box::leak(Box::new(vanishing));

        let (lso, hw) = marks.get(topic);
        for part in 0..PARTITIONS {
            let first = acked
                .iter()
                .filter(|(ap, _)| *ap == part)
                .map(|(_, o)| *o)
                .min()
                .expect("records in every partition");
            assert!(
                lso[part as usize] <= first && hw[part as usize] > first,
                "partition {part}: the open transaction holds the LSO (LSO {lso:?}, HW {hw:?}, first {first})"
            );
        }

        // Another producer commits meanwhile; its records stay invisible
        // to read_committed until the vanished one's transaction ends.
        let other = txn_producer(&bs, "txn-timeout-2", &[]);
        init_transactions(&other).unwrap_or_else(|e| panic!("other init: {}", describe(&e)));
        other.begin_transaction().expect("other begin");
        let after = records("after", &all_partitions(), 3);
        produce_all(&other, topic, &after);
        other
            .commit_transaction(TXN_CALL)
            .unwrap_or_else(|e| panic!("other commit: {}", describe(&e)));

        let hw = marks.wait_stable(topic);
        let aborted_after = started.elapsed();
        eprintln!(
            "the coordinator aborted the vanished producer's transaction after {aborted_after:?}"
        );
        assert!(
            aborted_after + EARLY_MARGIN >= TXN_TIMEOUT,
            "aborted after {aborted_after:?}, before its timeout of {TXN_TIMEOUT:?}"
        );
        let read = read_to_end(&bs, topic, &hw, "read_committed");
        let mut want: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for (p, _, v, _) in &after {
            want.entry(*p).or_default().push(v.clone());
        }
        assert_eq!(
            values(&read),
            want,
            "read_committed: the other producer's records, none of the aborted ones"
        );
        let read = read_to_end(&bs, topic, &hw, "read_uncommitted");
        assert_eq!(read.len(), open.len() + after.len());

        // The coordinator bumped the epoch: the vanished producer cannot
        // commit what was aborted.
        match vanished.commit_transaction(Duration::from_secs(10)) {
            Ok(()) => panic!("the timed-out transaction was reported committed"),
            Err(e) => eprintln!("the vanished producer's late commit: {}", describe(&e)),
        }

        // The id is usable again by a new producer.
        let revived = txn_producer(&bs, "txn-timeout-1", &[]);
        init_transactions(&revived).unwrap_or_else(|e| panic!("revived init: {}", describe(&e)));
        revived.begin_transaction().expect("revived begin");
        let again = records("revived", &[0, 3], 2);
        produce_all(&revived, topic, &again);
        revived
            .commit_transaction(TXN_CALL)
            .unwrap_or_else(|e| panic!("revived commit: {}", describe(&e)));
        let hw = marks.wait_stable(topic);
        for (p, _, v, _) in &again {
            want.entry(*p).or_default().push(v.clone());
        }
        let read = read_to_end(&bs, topic, &hw, "read_committed");
        assert_eq!(values(&read), want);
    });
}

// ---------------------------------------------------------------- d: consume-transform-produce

const CTP_IN: &str = "ctp-in";
const CTP_OUT: &str = "ctp-out";
const CTP_GROUP: &str = "ctp-group";
const CTP_TXN_ID: &str = "ctp-txn";
/// Input records, spread evenly over the partitions.
const CTP_RECORDS: u64 = 2000;
/// Records per transaction at most.
const COMMIT_EVERY: usize = 50;
/// How long the loop gathers records for one transaction at most.
const GATHER: Duration = Duration::from_millis(300);
/// Pause of each transaction between its records being acknowledged and
/// its commit, so the broker is killed mid-transaction.
const PACE: Duration = Duration::from_millis(20);
const KILLS: u64 = 3;
/// How long a kill waits for a moment when a transaction is open.
const OPEN_WAIT: Duration = Duration::from_secs(2);
/// Bound of the whole consume-transform-produce run.
const CTP_MAX: Duration = Duration::from_secs(150);

/// Counts the partition revocations of a group consumer: records gathered
/// before one belong to the old assignment and are dropped (the new
/// assignment starts again at the committed offsets).
#[derive(Default)]
struct Revocations(AtomicU64);

impl ClientContext for Revocations {}

impl ConsumerContext for Revocations {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Revoke(_)) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The group's committed offsets of the input, per partition (`None` when
/// the coordinator does not answer).
fn input_committed(c: &BaseConsumer<Revocations>) -> Option<Vec<Offset>> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(CTP_IN, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(5)).ok()?;
    let mut out = vec![Offset::Invalid; PARTITIONS as usize];
    for e in committed.elements() {
        out[e.partition() as usize] = e.offset();
    }
    Some(out)
}

/// Whether the group's committed offsets of the input are its end offsets.
fn input_done(c: &BaseConsumer<Revocations>, ends: &[i64]) -> bool {
    input_committed(c).is_some_and(|at| {
        at.iter()
            .zip(ends)
            .all(|(o, end)| *o == Offset::Offset(*end))
    })
}

/// One life of the consume-transform-produce loop, with a fresh consumer
/// and a fresh producer: for each input record, one output record to the
/// same partition (key `partition:offset`, value `out-` + input value),
/// committed with the consumed positions every `COMMIT_EVERY` records.
/// `Ok` once the group's committed offsets reach the input's end; `Err` on
/// the first failure, when the test is `over`, or when told to `abandon`
/// (the application dies with the broker: checked before each commit, so
/// an open transaction is left behind). The caller then starts a fresh
/// life, whose `init_transactions` aborts what this one left open.
fn ctp_life(
    bootstrap: &str,
    over: &AtomicBool,
    abandon: &AtomicBool,
    progress: &AtomicU64,
    in_ends: &[i64],
) -> Result<(), String> {
    let mut cc = config(bootstrap);
    cc.set("group.id", CTP_GROUP)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "300")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer<Revocations> = cc
        .create_with_context(Revocations::default())
        .map_err(|e| format!("consumer: {e}"))?;
    consumer
        .subscribe(&[CTP_IN])
        .map_err(|e| format!("subscribe: {e}"))?;
    let producer = txn_producer(
        bootstrap,
        CTP_TXN_ID,
        &[("transaction.timeout.ms", "30000")],
    );
    init_transactions(&producer).map_err(|e| format!("init_transactions: {}", describe(&e)))?;
    let mut revocations = consumer.context().0.load(Ordering::SeqCst);
    let mut consumer_errors = 0u32;
    let quit = || over.load(Ordering::Relaxed) || abandon.load(Ordering::Relaxed);
    while !quit() {
        let mut batch: Vec<(i32, i64, String)> = Vec::new();
        let gather_until = Instant::now() + GATHER;
        while batch.len() < COMMIT_EVERY && Instant::now() < gather_until {
            let polled = consumer.poll(Duration::from_millis(50));
            let now = consumer.context().0.load(Ordering::SeqCst);
            if now != revocations {
                batch.clear();
                revocations = now;
            }
            match polled {
                Some(Ok(m)) => {
                    let value = String::from_utf8_lossy(m.payload().unwrap_or_default());
                    batch.push((m.partition(), m.offset(), value.into_owned()));
                }
                // Transport errors while the broker is down; librdkafka
                // reconnects by itself.
                Some(Err(e)) => {
                    consumer_errors += 1;
                    if consumer_errors <= 5 {
                        eprintln!("loop consumer: {e}");
                    }
                }
                None => {}
            }
        }
        if batch.is_empty() {
            if input_done(&consumer, in_ends) {
                return Ok(());
            }
            continue;
        }
        producer
            .begin_transaction()
            .map_err(|e| format!("begin: {}", describe(&e)))?;
        for (p, offset, value) in &batch {
            let key = format!("{p}:{offset}");
            let value = format!("out-{value}");
            // The delivery future is dropped: commit_transaction waits for
            // every delivery and fails when one failed.
            producer
                .send_result(
                    FutureRecord::to(CTP_OUT)
                        .partition(*p)
                        .key(&key)
                        .payload(&value),
                )
                .map_err(|(e, _)| format!("send: {e}"))?;
        }
        let at = consumer.position().map_err(|e| format!("position: {e}"))?;
        let group = consumer
            .group_metadata()
            .ok_or_else(|| "no group metadata".to_string())?;
        producer
            .send_offsets_to_transaction(&at, &group, TXN_CALL)
            .map_err(|e| format!("send_offsets_to_transaction: {}", describe(&e)))?;
        // The records are in the log (acknowledged), the transaction is
        // open for a moment: the test kills the broker in such a moment.
        producer
            .flush(TXN_CALL)
            .map_err(|e| format!("flush: {e}"))?;
        std::thread::sleep(PACE);
        if quit() {
            return Err("abandoned with a transaction open".into());
        }
        producer
            .commit_transaction(TXN_CALL)
            .map_err(|e| format!("commit: {}", describe(&e)))?;
        progress.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
    Err("stopped".into())
}

/// Sets the flag when dropped (the test ended, passed or not).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn consume_transform_produce_across_sigkills_is_exactly_once() {
    with_shared(|b| {
        let bs = b.bootstrap();
        create_topic(b, CTP_IN, PARTITIONS);
        create_topic(b, CTP_OUT, PARTITIONS);
        let per_partition = CTP_RECORDS / PARTITIONS as u64;
        let input: Vec<_> = (0..per_partition)
            .flat_map(|i| {
                (0..PARTITIONS).map(move |p| (p, format!("k{i}"), format!("in-{p}-{i}"), None))
            })
            .collect();
        let plain = producer(b, &[("acks", "all")]);
        produce_all(&plain, CTP_IN, &input);
        drop(plain);
        let marks = Marks::new(&bs);
        let in_ends = marks.wait_stable(CTP_IN);
        assert_eq!(in_ends, vec![per_partition as i64; PARTITIONS as usize]);

        let over = Arc::new(AtomicBool::new(false));
        let _over = StopOnDrop(Arc::clone(&over));
        let mut abandon = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + CTP_MAX;
        let mut life: Option<JoinHandle<Result<(), String>>> = None;
        let (mut kills, mut lives, mut kills_open) = (0u64, 0u32, 0u32);
        loop {
            assert!(
                Instant::now() < deadline,
                "not done within {CTP_MAX:?}: {} records in acknowledged commits, {kills} kills, {lives} lives",
                progress.load(Ordering::Relaxed)
            );
            match life.take() {
                None => {
                    lives += 1;
                    abandon = Arc::new(AtomicBool::new(false));
                    let (bs, over, abandon, progress, in_ends) = (
                        bs.clone(),
                        Arc::clone(&over),
                        Arc::clone(&abandon),
                        Arc::clone(&progress),
                        in_ends.clone(),
                    );
                    // A test thread, not a shard: the worker blocks in
                    // librdkafka calls while the test SIGKILLs and restarts
                    // the broker, and is joined (or abandoned) each life.
                    life = Some(std::thread::spawn(move || {
                        ctp_life(&bs, &over, &abandon, &progress, &in_ends)
                    }));
                }
                Some(h) if h.is_finished() => match h.join().expect("the loop panicked") {
                    Ok(()) => break,
                    Err(e) => {
                        eprintln!("life {lives} of the loop ended: {e}; starting a fresh one");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                },
                Some(h) => life = Some(h),
            }
            let threshold = (kills + 1) * CTP_RECORDS / (KILLS + 2);
            if kills < KILLS && progress.load(Ordering::Relaxed) >= threshold {
                // Preferably while a transaction has records in the output
                // log (LSO < HW somewhere), so recovery has to abort them.
                let open_until = Instant::now() + OPEN_WAIT;
                let mut open = false;
                while !open && Instant::now() < open_until {
                    let (lso, hw) = marks.get(CTP_OUT);
                    open = lso.iter().zip(&hw).any(|(l, h)| l < h);
                }
                // The application dies too: the life stops before its
                // next commit, and a fresh one takes over.
                abandon.store(true, Ordering::Relaxed);
                b.kill();
                std::thread::sleep(Duration::from_millis(300));
                b.restart();
                kills += 1;
                kills_open += u32::from(open);
                eprintln!(
                    "kill {kills} after {} records in acknowledged commits, {}",
                    progress.load(Ordering::Relaxed),
                    if open {
                        "with records of an open transaction in the output"
                    } else {
                        "between transactions"
                    }
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            kills, KILLS,
            "the input was processed before the broker was killed {KILLS} times"
        );
        eprintln!(
            "done after {lives} lives of the loop and {kills} kills, {kills_open} of them with a transaction open"
        );

        let out_hw = marks.wait_stable(CTP_OUT);
        let read = read_to_end(&bs, CTP_OUT, &out_hw, "read_committed");
        let mut count: BTreeMap<&str, u32> = BTreeMap::new();
        for r in &read {
            *count.entry(r.key.as_str()).or_default() += 1;
        }
        let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
        let mut missing = Vec::new();
        for p in 0..PARTITIONS {
            for i in 0..per_partition {
                let key = format!("{p}:{i}");
                if !count.contains_key(key.as_str()) {
                    missing.push(key);
                }
            }
        }
        assert!(
            twice.is_empty() && missing.is_empty() && read.len() as u64 == CTP_RECORDS,
            "output: {} records, {} keys more than once ({:?}...), {} missing ({:?}...)",
            read.len(),
            twice.len(),
            &twice[..twice.len().min(10)],
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        for p in 0..PARTITIONS {
            let got: Vec<(String, String)> = read
                .iter()
                .filter(|r| r.partition == p)
                .map(|r| (r.key.clone(), r.value.clone()))
                .collect();
            let want: Vec<(String, String)> = (0..per_partition)
                .map(|i| (format!("{p}:{i}"), format!("out-in-{p}-{i}")))
                .collect();
            assert!(
                got == want,
                "output partition {p} is not the input in order"
            );
        }
        let all = read_to_end(&bs, CTP_OUT, &out_hw, "read_uncommitted");
        eprintln!(
            "{} output records of aborted attempts stay in the log, invisible to read_committed",
            all.len() - read.len()
        );

        let mut cc = config(&bs);
        cc.set("group.id", CTP_GROUP)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        let c: BaseConsumer<Revocations> = cc
            .create_with_context(Revocations::default())
            .expect("consumer");
        let deadline = Instant::now() + WAIT;
        while !input_done(&c, &in_ends) {
            assert!(
                Instant::now() < deadline,
                "the group's committed offsets {:?} never reached the input's end {in_ends:?}",
                input_committed(&c)
            );
            std::thread::sleep(POLL);
        }
    });
}

// ------------------------------------------------- e: describe and list

/// DescribeTransactions and ListTransactions over raw frames (librdkafka
/// has no admin call for them): a committed transaction's id shows its
/// state, producer id and epoch, and the partitions of an open one.
#[test]
fn describe_and_list_transactions_show_each_ids_state() {
    use kafka_protocol::messages::{
        ApiKey, DescribeTransactionsRequest, DescribeTransactionsResponse, ListTransactionsRequest,
        ListTransactionsResponse, TransactionalId,
    };
    use kafka_protocol::protocol::StrBytes;
    const TRANSACTIONAL_ID_NOT_FOUND: i16 = 105;
    let describe_state = |b: &Broker, id: &str| {
        let mut r = DescribeTransactionsRequest::default();
        r.transactional_ids = vec![TransactionalId(StrBytes::from_string(id.to_string()))];
        let mut s = connect(b);
        let resp: DescribeTransactionsResponse = call(&mut s, ApiKey::DescribeTransactions, 0, &r);
        resp.transaction_states
            .into_iter()
            .next()
            .expect("one state")
    };
    let list = |b: &Broker, states: &[&str]| {
        let mut r = ListTransactionsRequest::default();
        r.state_filters = states
            .iter()
            .map(|s| StrBytes::from_string(s.to_string()))
            .collect();
        r.duration_filter = -1;
        let mut s = connect(b);
        let resp: ListTransactionsResponse = call(&mut s, ApiKey::ListTransactions, 1, &r);
        resp
    };
    let describe_error = describe;
    let describe = describe_state;
    with_shared(|b| {
        let topic = "txn-describe";
        let bs = b.bootstrap();
        create_topic(b, topic, PARTITIONS);
        let p = txn_producer(&bs, "txn-describe-1", &[]);
        init_transactions(&p).unwrap_or_else(|e| panic!("init: {}", describe_error(&e)));
        p.begin_transaction().expect("begin");
        produce_all(&p, topic, &records("d", &[1, 3], 2));
        let open = describe(b, "txn-describe-1");
        assert_eq!(open.error_code, 0);
        assert_eq!(open.transaction_state.as_str(), "Ongoing");
        assert!(open.producer_id.0 >= 0 && open.transaction_start_time_ms > 0);
        let parts: Vec<(String, Vec<i32>)> = open
            .topics
            .iter()
            .map(|t| (t.topic.0.to_string(), t.partitions.clone()))
            .collect();
        assert_eq!(parts, vec![(topic.to_string(), vec![1, 3])]);
        let ongoing = list(b, &["Ongoing"]);
        assert!(
            ongoing
                .transaction_states
                .iter()
                .any(|t| t.transactional_id.0.as_str() == "txn-describe-1"),
            "{ongoing:?}"
        );
        p.commit_transaction(TXN_CALL).expect("commit");
        // The commit is answered once decided (PrepareCommit); the markers
        // follow, then CompleteCommit.
        let deadline = Instant::now() + WAIT;
        let done = loop {
            let d = describe(b, "txn-describe-1");
            if d.transaction_state.as_str() != "PrepareCommit" || Instant::now() > deadline {
                break d;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(done.transaction_state.as_str(), "CompleteCommit");
        assert_eq!(
            (done.producer_id, done.producer_epoch),
            (open.producer_id, open.producer_epoch)
        );
        assert!(done.topics.is_empty());
        let listed = list(b, &[]);
        let mine = listed
            .transaction_states
            .iter()
            .find(|t| t.transactional_id.0.as_str() == "txn-describe-1")
            .expect("listed");
        assert_eq!(mine.transaction_state.as_str(), "CompleteCommit");
        assert!(list(b, &["Ongoing"]).transaction_states.iter().all(|t| t
            .transactional_id
            .0
            .as_str()
            != "txn-describe-1"));
        let unknown = list(b, &["NoSuchState"]);
        assert_eq!(unknown.unknown_state_filters.len(), 1);
        assert_eq!(
            describe(b, "txn-describe-never").error_code,
            TRANSACTIONAL_ID_NOT_FOUND
        );
    });
}
