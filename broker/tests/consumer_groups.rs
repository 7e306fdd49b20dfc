//! Consumer groups through librdkafka against the real binary: assignment
//! split and take-over after a clean leave (no committed record read
//! twice), committed offsets across SIGKILL, cooperative-sticky, static
//! membership. The initial rebalance delay is set low (200 ms).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

const DELAY_ARGS: &[&str] = &["--group-initial-rebalance-delay-ms", "200"];
const WAIT: Duration = Duration::from_secs(60);

fn group_consumer(b: &Broker, group: &str, extra: &[(&str, &str)]) -> BaseConsumer {
    let mut c = client_config(b);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "300")
        .set("enable.partition.eof", "false");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().expect("group consumer")
}

fn assigned(c: &BaseConsumer) -> BTreeSet<i32> {
    c.assignment()
        .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

/// Polls every consumer until each one's assignment satisfies `done`.
fn poll_until(cs: &[&BaseConsumer], done: impl Fn(&[BTreeSet<i32>]) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        for c in cs {
            if let Some(Err(e)) = c.poll(Duration::from_millis(20)) {
                panic!("consumer error: {e}");
            }
        }
        let now: Vec<BTreeSet<i32>> = cs.iter().map(|c| assigned(c)).collect();
        if done(&now) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < WAIT,
            "assignments never settled: {now:?}"
        );
    }
}

/// Each consumer holds `per` partitions and together they cover `total`.
fn split_evenly(per: usize, total: i32) -> impl Fn(&[BTreeSet<i32>]) -> bool {
    move |sets| {
        let all: BTreeSet<i32> = sets.iter().flatten().copied().collect();
        sets.iter().all(|s| s.len() == per)
            && all.len() == total as usize
            && sets.iter().map(|s| s.len()).sum::<usize>() == total as usize
    }
}

fn produce_n(b: &Broker, topic: &str, partitions: i32, per_partition: usize, tag: &str) {
    let p = producer(b, &[("acks", "all"), ("enable.idempotence", "false")]);
    let records: Vec<_> = (0..partitions)
        .flat_map(|part| {
            (0..per_partition)
                .map(move |i| (part, format!("k{i}"), format!("{tag}-{part}-{i}"), None))
        })
        .collect();
    produce_all(&p, topic, &records);
}

/// Consumes from every consumer, committing each record synchronously,
/// until `want` records were read in total.
fn consume_committing(cs: &[&BaseConsumer], want: usize, seen: &mut Vec<(i32, i64)>) {
    let deadline = Instant::now() + WAIT;
    let mut got = 0;
    while got < want {
        assert!(Instant::now() < deadline, "consumed {got} of {want}");
        for c in cs {
            match c.poll(Duration::from_millis(20)) {
                Some(Ok(m)) => {
                    seen.push((m.partition(), m.offset()));
                    c.commit_message(&m, CommitMode::Sync).expect("commit");
                    got += 1;
                }
                Some(Err(e)) => panic!("consume error: {e}"),
                None => {}
            }
        }
    }
}

#[test]
fn three_members_split_then_two_take_over_without_rereading() {
    let b = Broker::start_with(2, DELAY_ARGS);
    create_topic(&b, "g6", 6);
    produce_n(&b, "g6", 6, 10, "first");
    let cs: Vec<BaseConsumer> = (0..3).map(|_| group_consumer(&b, "trio", &[])).collect();
    for c in &cs {
        c.subscribe(&["g6"]).expect("subscribe");
    }
    let refs: Vec<&BaseConsumer> = cs.iter().collect();
    let joined = poll_until(&refs, split_evenly(2, 6));
    eprintln!("3-member group assigned in {joined:?}");
    let mut seen = Vec::new();
    consume_committing(&refs, 60, &mut seen);
    produce_n(&b, "g6", 6, 5, "second");
    let mut cs = cs;
    let leaver = cs.pop().expect("three consumers");
    let left_partitions = assigned(&leaver);
    // Drain what the leaver can still read, committed, then leave cleanly.
    let drain_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < drain_until {
        if let Some(Ok(m)) = leaver.poll(Duration::from_millis(20)) {
            seen.push((m.partition(), m.offset()));
            leaver.commit_message(&m, CommitMode::Sync).expect("commit");
        }
    }
    let left_at = Instant::now();
    drop(leaver);
    let refs: Vec<&BaseConsumer> = cs.iter().collect();
    let recovered = poll_until(&refs, split_evenly(3, 6));
    eprintln!(
        "group recovered {:?} after the leave (close took {:?}); leaver had {left_partitions:?}",
        recovered,
        left_at.elapsed() - recovered
    );
    let remaining = 90 - seen.len();
    consume_committing(&refs, remaining, &mut seen);
    let unique: BTreeSet<(i32, i64)> = seen.iter().copied().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "a committed record was read twice"
    );
    assert_eq!(unique.len(), 90);
}

fn committed(c: &BaseConsumer, topic: &str, partitions: i32) -> BTreeMap<i32, Offset> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    got.elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect()
}

/// After SIGKILL the kernel releases the io_uring-held listening socket a
/// little later than the process; the start-up probe would refuse it.
fn wait_port_closed(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "port {port} still accepts after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn committed_offsets_survive_sigkill() {
    let mut b = Broker::start_with(2, DELAY_ARGS);
    create_topic(&b, "durable-offsets", 3);
    let c = group_consumer(&b, "keeper", &[]);
    let fresh = committed(&c, "durable-offsets", 3);
    assert!(
        fresh.values().all(|o| *o == Offset::Invalid),
        "never committed: offset -1, got {fresh:?}"
    );
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("durable-offsets", 0, Offset::Offset(5))
        .expect("tpl");
    tpl.add_partition_offset("durable-offsets", 2, Offset::Offset(42))
        .expect("tpl");
    c.commit(&tpl, CommitMode::Sync).expect("commit");
    drop(c);
    b.kill();
    wait_port_closed(b.port);
    b.restart();
    let c = group_consumer(&b, "keeper", &[]);
    let after = committed(&c, "durable-offsets", 3);
    assert_eq!(after[&0], Offset::Offset(5));
    assert_eq!(after[&1], Offset::Invalid);
    assert_eq!(after[&2], Offset::Offset(42));
}

#[test]
fn cooperative_sticky_members_share_and_take_over() {
    let b = Broker::start_with(2, DELAY_ARGS);
    create_topic(&b, "coop", 4);
    let strategy = [("partition.assignment.strategy", "cooperative-sticky")];
    let a = group_consumer(&b, "coop-group", &strategy);
    let c = group_consumer(&b, "coop-group", &strategy);
    a.subscribe(&["coop"]).expect("subscribe");
    c.subscribe(&["coop"]).expect("subscribe");
    poll_until(&[&a, &c], split_evenly(2, 4));
    drop(c);
    poll_until(&[&a], split_evenly(4, 4));
}

#[test]
fn static_member_restart_keeps_its_assignment_without_rebalance() {
    let b = Broker::start_with(1, DELAY_ARGS);
    create_topic(&b, "static", 4);
    let make = |id: &str| group_consumer(&b, "static-group", &[("group.instance.id", id)]);
    let a = make("a");
    let s = make("s");
    a.subscribe(&["static"]).expect("subscribe");
    s.subscribe(&["static"]).expect("subscribe");
    poll_until(&[&a, &s], split_evenly(2, 4));
    let before = assigned(&s);
    // A static member closing does not leave the group: no rebalance, and
    // the restarted instance gets the same partitions.
    drop(s);
    let s = make("s");
    s.subscribe(&["static"]).expect("subscribe");
    poll_until(&[&a, &s], split_evenly(2, 4));
    assert_eq!(assigned(&s), before);
}

#[test]
fn a_silent_static_member_expires_after_its_session_timeout() {
    let b = Broker::start_with(1, DELAY_ARGS);
    create_topic(&b, "expiry", 2);
    let a = group_consumer(&b, "expiry-group", &[]);
    let s = group_consumer(
        &b,
        "expiry-group",
        &[
            ("group.instance.id", "gone"),
            ("session.timeout.ms", "2000"),
        ],
    );
    a.subscribe(&["expiry"]).expect("subscribe");
    s.subscribe(&["expiry"]).expect("subscribe");
    poll_until(&[&a, &s], split_evenly(1, 2));
    // A static member closing sends no LeaveGroup: only its session
    // deadline (served by the shard's one group timer) frees its partition.
    let closed = Instant::now();
    drop(s);
    let took = poll_until(&[&a], split_evenly(2, 2));
    let since_close = closed.elapsed();
    eprintln!("survivor took over {took:?} after the close ({since_close:?} since)");
    assert!(
        since_close >= Duration::from_millis(1500),
        "taken over before the session expired"
    );
}
