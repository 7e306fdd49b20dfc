//! The client subcommands (`sluice topic|produce|consume|group|cluster`)
//! run as the real binary against one real broker shared by every test of
//! this binary (each test uses its own topic and group names): outputs
//! compared exactly (volatile fields normalised), exit codes checked.

mod common;

use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{client_config, create_topic, produce_all, producer, run_bounded, Broker};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use serde_json::{json, Value};

/// Longest a single `sluice` client command may run.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);
/// Bound of the loops that wait for a group to settle or records to arrive.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

static BROKER: OnceLock<Broker> = OnceLock::new();

/// The shared broker, started on first use and killed when the test
/// process exits (statics are never dropped).
fn broker() -> &'static Broker {
    BROKER.get_or_init(|| {
        let b = Broker::start(2);
        // SAFETY: registers a plain function; atexit has no other precondition.
        unsafe { libc::atexit(kill_broker) };
        b
    })
}

extern "C" fn kill_broker() {
    if let Some(b) = BROKER.get() {
        if let Some(pid) = b.pid().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(tmp) = b.data_dir.parent() {
            let _ = std::fs::remove_dir_all(tmp);
        }
    }
}

/// Runs `sluice ARGS --brokers <the broker>` with `stdin`.
fn sluice(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let b = broker();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args)
        .args(["--brokers", &b.bootstrap(), "--timeout", "60"])
        .env_remove("SLUICE_BROKERS");
    run_bounded(&mut cmd, stdin, COMMAND_LIMIT)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command that must succeed; returns its stdout.
fn ok(args: &[&str], stdin: Option<&[u8]>) -> String {
    let o = sluice(args, stdin);
    assert_eq!(
        o.status.code(),
        Some(0),
        "sluice {args:?}:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Runs a command that must exit with `code`; returns its stderr.
fn fails(args: &[&str], code: i32) -> String {
    let o = sluice(args, None);
    assert_eq!(
        o.status.code(),
        Some(code),
        "sluice {args:?}:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    stderr(&o)
}

fn ok_json(args: &[&str]) -> Value {
    let text = ok(args, None);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("sluice {args:?}: {e}:\n{text}"))
}

/// `"timestamp":<digits>` replaced by `"timestamp":T`.
fn without_timestamps(lines: &str) -> String {
    let mut out = String::new();
    let mut rest = lines;
    while let Some(at) = rest.find("\"timestamp\":") {
        let (head, tail) = rest.split_at(at + "\"timestamp\":".len());
        out.push_str(head);
        out.push('T');
        let digits = tail
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(tail.len());
        assert!(digits > 0, "a timestamp in {lines}");
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

#[test]
fn topic_lifecycle() {
    let addr = broker().bootstrap();
    let t = "cli-life";
    assert_eq!(
        ok(
            &[
                "topic",
                "create",
                t,
                "--partitions",
                "2",
                "--config",
                "retention.ms=3600000"
            ],
            None
        ),
        "created topic \"cli-life\"\n"
    );
    assert_eq!(
        fails(&["topic", "create", t], 1),
        format!("sluice: topic \"cli-life\" on {addr}: TOPIC_ALREADY_EXISTS (Broker: Topic already exists)\n")
    );

    let list = ok_json(&["topic", "list", "--format", "json"]);
    let listed: Vec<&Value> = list
        .as_array()
        .expect("array")
        .iter()
        .filter(|t| t["topic"] == "cli-life")
        .collect();
    assert_eq!(
        listed,
        vec![&json!({"topic": "cli-life", "partitions": 2, "replication_factor": 1})]
    );

    let text = ok(&["topic", "describe", t], None);
    assert!(
        text.starts_with(
            "Topic: cli-life\n\
             PARTITION  LEADER  REPLICAS  ISR  LOG-START  LOG-END\n\
             0          1       1         1    0          0\n\
             1          1       1         1    0          0\n\
             \n\
             CONFIG"
        ),
        "{text}"
    );
    let dynamic = |v: &Value| -> Vec<Value> {
        v["configs"]
            .as_array()
            .expect("configs")
            .iter()
            .filter(|c| c["source"] == "DYNAMIC_TOPIC_CONFIG")
            .cloned()
            .collect()
    };
    let described = ok_json(&["topic", "describe", t, "--format", "json"]);
    assert_eq!(
        dynamic(&described),
        vec![
            json!({"name": "retention.ms", "value": "3600000", "source": "DYNAMIC_TOPIC_CONFIG", "read_only": false, "sensitive": false})
        ]
    );

    assert_eq!(
        ok_json(&[
            "topic",
            "alter-config",
            t,
            "--set",
            "retention.bytes=1048576",
            "--delete",
            "retention.ms",
            "--format",
            "json"
        ]),
        json!({"topic": "cli-life", "configs": {"retention.bytes": "1048576"}})
    );
    let described = ok_json(&["topic", "describe", t, "--format", "json"]);
    assert_eq!(dynamic(&described).len(), 1, "{described}");
    assert_eq!(dynamic(&described)[0]["name"], "retention.bytes");
    assert!(
        fails(&["topic", "alter-config", t, "--delete", "retention.ms"], 1)
            .contains("config \"retention.ms\" is not set")
    );
    // The broker's refusal of a value, with its message.
    let refused = fails(
        &["topic", "alter-config", t, "--set", "retention.ms=lots"],
        1,
    );
    assert!(
        refused.starts_with(&format!(
            "sluice: topic \"cli-life\" on {addr}: INVALID_CONFIG ("
        )) && refused.contains("retention.ms"),
        "{refused}"
    );
    assert_eq!(
        dynamic(&ok_json(&["topic", "describe", t, "--format", "json"])).len(),
        1
    );

    assert_eq!(
        ok(&["topic", "add-partitions", t, "--count", "3"], None),
        "topic \"cli-life\" now has 3 partitions\n"
    );
    let described = ok_json(&["topic", "describe", t, "--format", "json"]);
    assert_eq!(described["partitions"].as_array().map(Vec::len), Some(3));

    assert_eq!(
        ok(&["topic", "delete", t], None),
        "deleted topic \"cli-life\"\n"
    );
    assert_eq!(
        fails(&["topic", "describe", t], 1),
        format!("sluice: topic \"cli-life\" on {addr}: UNKNOWN_TOPIC_OR_PARTITION (Broker: Unknown topic or partition)\n")
    );
}

#[test]
fn produce_then_consume_round_trip() {
    let t = "cli-rt";
    ok(&["topic", "create", t, "--partitions", "1"], None);
    let o = sluice(
        &[
            "produce",
            t,
            "--key-separator",
            ":",
            "--header",
            "h=v",
            "--header",
            "n=2",
            "--compression",
            "gzip",
        ],
        Some(b"a:1\nb:2:x\nno-key\n"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    assert_eq!(stderr(&o), "sluice: produced 3 records to \"cli-rt\"\n");

    assert_eq!(
        ok(
            &[
                "consume",
                t,
                "--from",
                "beginning",
                "-n",
                "3",
                "--format",
                "%k=%v\\n"
            ],
            None
        ),
        "a=1\nb=2:x\n=no-key\n"
    );
    assert_eq!(
        ok(
            &["consume", t, "--format", "%t %p:%o %K %S %h\\t|\\n"],
            None
        ),
        "cli-rt 0:0 1 1 h=v,n=2\t|\ncli-rt 0:1 1 3 h=v,n=2\t|\ncli-rt 0:2 -1 6 h=v,n=2\t|\n"
    );
    assert_eq!(
        without_timestamps(&ok(&["consume", t, "--format", "json"], None)),
        "{\"topic\":\"cli-rt\",\"partition\":0,\"offset\":0,\"timestamp\":T,\"key\":\"a\",\"value\":\"1\",\"headers\":{\"h\":\"v\",\"n\":\"2\"}}\n\
         {\"topic\":\"cli-rt\",\"partition\":0,\"offset\":1,\"timestamp\":T,\"key\":\"b\",\"value\":\"2:x\",\"headers\":{\"h\":\"v\",\"n\":\"2\"}}\n\
         {\"topic\":\"cli-rt\",\"partition\":0,\"offset\":2,\"timestamp\":T,\"key\":null,\"value\":\"no-key\",\"headers\":{\"h\":\"v\",\"n\":\"2\"}}\n"
    );
    // Start positions: an offset, the last record, the end, a time to come.
    assert_eq!(ok(&["consume", t, "--from", "1", "-n", "1"], None), "2:x\n");
    assert_eq!(
        ok(&["consume", t, "--from", "-1", "--partition", "0"], None),
        "no-key\n"
    );
    assert_eq!(ok(&["consume", t, "--from", "end"], None), "");
    assert_eq!(ok(&["consume", t, "--from", "@4000000000000"], None), "");
    assert_eq!(ok(&["consume", t, "--from", "@0", "-n", "1"], None), "1\n");
}

#[test]
fn produce_options_and_failures() {
    let t = "cli-opts";
    ok(&["topic", "create", t, "--partitions", "2"], None);
    for (compression, acks) in [
        ("snappy", "1"),
        ("lz4", "all"),
        ("zstd", "0"),
        ("none", "1"),
    ] {
        let line = format!("{compression}\n");
        let o = sluice(
            &[
                "produce",
                t,
                "--partition",
                "1",
                "--compression",
                compression,
                "--acks",
                acks,
            ],
            Some(line.as_bytes()),
        );
        assert_eq!(o.status.code(), Some(0), "{compression}: {}", stderr(&o));
    }
    assert_eq!(
        ok(&["consume", t, "--format", "%p %v\\n"], None),
        "1 snappy\n1 lz4\n1 zstd\n1 none\n"
    );
    assert_eq!(ok(&["consume", t, "--partition", "0"], None), "");

    // A partition the topic does not have: every record fails, exit 1.
    let o = sluice(&["produce", t, "--partition", "7"], Some(b"x\n"));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("UNKNOWN_PARTITION"), "{}", stderr(&o));
    // Client settings reach librdkafka: an unknown one is refused by it.
    let err = fails(&["topic", "list", "-X", "no.such.setting=1"], 1);
    assert!(err.contains("no.such.setting"), "{err}");
    ok(
        &[
            "consume",
            t,
            "-X",
            "fetch.wait.max.ms=10",
            "-X",
            "client.id=cli-x",
        ],
        None,
    );
}

#[test]
fn consume_terminates_on_an_empty_topic_and_refuses_unknown_topics() {
    let addr = broker().bootstrap();
    ok(&["topic", "create", "cli-empty", "--partitions", "3"], None);
    assert_eq!(ok(&["consume", "cli-empty"], None), "");
    assert_eq!(ok(&["consume", "cli-empty", "--format", "json"], None), "");
    assert_eq!(
        fails(&["consume", "cli-nope"], 1),
        format!("sluice: topic \"cli-nope\" on {addr}: UNKNOWN_TOPIC_OR_PARTITION (Broker: Unknown topic or partition)\n")
    );
}

#[test]
fn consume_with_a_group_commits_what_it_printed() {
    let t = "cli-cg";
    let g = "cli-cg-group";
    ok(&["topic", "create", t, "--partitions", "1"], None);
    ok(&["produce", t], Some(b"1\n2\n3\n4\n"));
    assert_eq!(ok(&["consume", t, "--group", g, "-n", "2"], None), "1\n2\n");
    let described = ok_json(&["group", "describe", g, "--format", "json"]);
    assert_eq!(
        described["offsets"],
        json!([{"topic": t, "partition": 0, "committed": 2, "log_end": 4, "lag": 2}])
    );
    // Resumes at the commit and stops at the end.
    assert_eq!(ok(&["consume", t, "--group", g], None), "3\n4\n");
    let described = ok_json(&["group", "describe", g, "--format", "json"]);
    assert_eq!(described["offsets"][0]["lag"], 0, "{described}");
}

#[test]
fn consume_with_a_group_that_assigns_it_nothing_ends_once_assigned() {
    let (t, g) = ("cli-crowded", "cli-crowded-group");
    ok(&["topic", "create", t, "--partitions", "1"], None);
    ok(&["produce", t], Some(b"held\n"));
    let member = group_member(g, t);
    assert_eq!(poll_records(&member, 1), [(0, 0)]);
    // The member keeps polling, so that it rejoins when the command's
    // consumer joins. The range assignor orders members by id, which
    // starts with the client id: "cli-member" keeps the one partition.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (out, took) = std::thread::scope(|scope| {
        scope.spawn(|| {
            let deadline = Instant::now() + COMMAND_LIMIT;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                if let Some(Err(e)) = member.poll(Duration::from_millis(100)) {
                    panic!("member: {e}");
                }
            }
        });
        let started = Instant::now();
        let out = sluice(
            &["consume", t, "--group", g, "-X", "client.id=sluice-cli"],
            None,
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, started.elapsed())
    });
    eprintln!("ended after {took:?}");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        format!("sluice: group \"{g}\" gave this consumer no partition of \"{t}\": its other members hold them all\n")
    );
    // Well before --timeout: it ended on the empty assignment.
    assert!(took < Duration::from_secs(50), "took {took:?}");
}

/// A member of `group` subscribed to `topic`, through the harness's
/// rdkafka configuration.
fn group_member(group: &str, topic: &str) -> BaseConsumer {
    let mut config = client_config(broker());
    config
        .set("group.id", group)
        .set("client.id", "cli-member")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "30000");
    let c: BaseConsumer = config.create().expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    c
}

/// Polls `c` until `n` records arrived; returns their (partition, offset).
fn poll_records(c: &BaseConsumer, n: usize) -> Vec<(i32, i64)> {
    let deadline = Instant::now() + WAIT_LIMIT;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.expect("record");
            got.push((m.partition(), m.offset()));
        }
    }
    assert_eq!(got.len(), n, "records within {WAIT_LIMIT:?}: {got:?}");
    got
}

/// `group describe --format json` without the volatile or broker-specific
/// member fields.
fn describe_group(group: &str) -> Value {
    let mut v = ok_json(&["group", "describe", group, "--format", "json"]);
    for m in v["members"].as_array_mut().expect("members") {
        let m = m.as_object_mut().expect("member");
        assert!(m
            .remove("member_id")
            .is_some_and(|id| id.as_str().is_some_and(|s| !s.is_empty())));
        // Every member here is `group_member`'s, from this host.
        assert_eq!(m.remove("host"), Some(json!("/127.0.0.1")));
        assert_eq!(m.remove("client_id"), Some(json!("cli-member")));
    }
    v
}

#[test]
fn group_seek_moves_a_real_groups_offsets() {
    let b = broker();
    let (t, g) = ("cli-seek", "cli-seek-group");
    create_topic(b, t, 2);
    let records: Vec<(i32, String, String, Option<i64>)> = (0..6)
        .map(|i| (i % 2, format!("k{i}"), format!("v{i}"), None))
        .collect();
    produce_all(&producer(b, &[]), t, &records);

    let member = group_member(g, t);
    poll_records(&member, 6);
    member
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");
    let described = describe_group(g);
    assert_eq!(described["state"], "Stable", "{described}");
    assert_eq!(
        described["members"],
        json!([{"assignment": [{"topic": t, "partitions": [0, 1]}]}])
    );
    let err = fails(&["group", "seek", g, "--topic", t, "--to", "earliest"], 1);
    assert_eq!(
        err,
        format!("sluice: group \"{g}\" on {}: the group has 1 active member(s); stop them first (offsets of an active group cannot be moved)\n", b.bootstrap())
    );
    drop(member);

    // The member left: the group empties (bounded wait for the broker's
    // view to settle).
    let deadline = Instant::now() + WAIT_LIMIT;
    while describe_group(g)["state"] != "Empty" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let committed = json!([
        {"topic": t, "partition": 0, "committed": 3, "log_end": 3, "lag": 0},
        {"topic": t, "partition": 1, "committed": 3, "log_end": 3, "lag": 0},
    ]);
    assert_eq!(describe_group(g)["offsets"], committed);

    let table =
        "TOPIC     PARTITION  OLD  NEW\ncli-seek  0          3    0\ncli-seek  1          3    0\n";
    assert_eq!(
        ok(
            &[
                "group",
                "seek",
                g,
                "--topic",
                t,
                "--to",
                "earliest",
                "--dry-run"
            ],
            None
        ),
        format!("dry run, nothing changed:\n{table}")
    );
    assert_eq!(describe_group(g)["offsets"], committed);
    let planned = |to: &str| {
        ok_json(&[
            "group",
            "seek",
            g,
            "--topic",
            &format!("{t}:1"),
            "--to",
            to,
            "--dry-run",
            "--format",
            "json",
        ])["offsets"][0]["new"]
            .clone()
    };
    assert_eq!(planned("latest"), 3);
    assert_eq!(planned("-1h"), 0);
    assert_eq!(planned("@4000000000000"), 3);
    assert_eq!(planned("2"), 2);
    assert_eq!(planned("99"), 3);

    assert_eq!(
        ok(
            &["group", "seek", g, "--topic", t, "--to", "earliest"],
            None
        ),
        table
    );
    assert_eq!(
        describe_group(g)["offsets"],
        json!([
            {"topic": t, "partition": 0, "committed": 0, "log_end": 3, "lag": 3},
            {"topic": t, "partition": 1, "committed": 0, "log_end": 3, "lag": 3},
        ])
    );
    let text = ok(&["group", "describe", g], None);
    assert_eq!(
        text,
        "Group: cli-seek-group\nState: Empty\nProtocol: consumer\n\nNo members.\n\n\
         TOPIC     PARTITION  COMMITTED  LOG-END  LAG\n\
         cli-seek  0          0          3        3\n\
         cli-seek  1          0          3        3\n"
    );

    // A new member starts where the seek put the group.
    let member = group_member(g, t);
    let mut got = poll_records(&member, 6);
    got.sort_unstable();
    assert_eq!(got, vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]);
    drop(member);

    let listed = ok_json(&["group", "list", "--format", "json"]);
    assert!(
        listed
            .as_array()
            .expect("groups")
            .iter()
            .any(|x| x["group"] == g),
        "{listed}"
    );
    let deadline = Instant::now() + WAIT_LIMIT;
    while describe_group(g)["state"] != "Empty" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        ok(&["group", "delete", g], None),
        format!("deleted group \"{g}\"\n")
    );
    assert!(fails(&["group", "describe", g], 1).contains("GROUP_ID_NOT_FOUND"));
}

#[test]
fn cluster_info_health_and_metrics() {
    let b = broker();
    let info = ok(&["cluster", "info"], None);
    assert!(info.contains("\nController: 1\n"), "{info}");
    assert!(
        info.contains("\nPartitions without a leader: 0\nUnder-replicated partitions: 0\n"),
        "{info}"
    );
    assert!(
        info.ends_with(&format!("\n\nBROKER  ADDRESS\n1       {}\n", b.bootstrap())),
        "{info}"
    );
    let health = sluice(&["cluster", "health"], None);
    assert_eq!(health.status.code(), Some(0), "{}", stdout(&health));
    assert!(
        stdout(&health).ends_with("\nhealthy\n"),
        "{}",
        stdout(&health)
    );
    let health = ok_json(&["cluster", "health", "--format", "json"]);
    assert_eq!(
        (&health["healthy"], &health["problems"]),
        (&json!(true), &json!([]))
    );
    assert_eq!(
        health["brokers"],
        json!([{"id": 1, "host": "127.0.0.1", "port": b.port}])
    );

    // Something has run through the broker by now: at least this test's own metadata requests.
    ok(&["produce", "cli-metrics"], Some(b"m\n"));
    let admin = format!("127.0.0.1:{}", b.admin_port);
    let text = ok(&["cluster", "metrics", "--admin", &admin], None);
    for heading in [
        "Memory by pool (all shards)\nPOOL  ",
        "\nFigures (all shards; counters since start)\nFIGURE  ",
        "\nLatency (bucket upper bounds)\nOPERATION  COUNT  P50  ",
        "\ntail_cache  ",
        "\nproduce requests  ",
        "\nproduce  ",
    ] {
        assert!(text.contains(heading), "{heading:?} in:\n{text}");
    }
    let json = ok_json(&["cluster", "metrics", "--admin", &admin, "--format", "json"]);
    assert!(
        json["figures"]["sluice_shard_produce_requests_total"].as_f64() >= Some(1.0),
        "{json}"
    );
    assert!(
        json["pools"]["tail_cache"]["limit_bytes"].as_f64() > Some(0.0),
        "{json}"
    );

    // Nothing listens on port 1.
    assert!(fails(&["cluster", "metrics", "--admin", "127.0.0.1:1"], 1)
        .contains("GET http://127.0.0.1:1/metrics"));
    let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["cluster", "health", "--timeout", "2"])
        .env("SLUICE_BROKERS", "127.0.0.1:1")
        .output()
        .expect("run sluice");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("sluice: metadata on 127.0.0.1:1: "),
        "{}",
        stderr(&o)
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["topic", "create"][..],
        &["topic", "list", "--bogus"],
        &["topic", "create", "x", "--partitions", "0"],
        &["consume", "t", "--format", "%q"],
        &["consume", "t", "--from", "soon"],
        &["consume", "t", "--group", "g", "--partition", "0"],
        &["produce", "t", "--acks", "2"],
        &["produce", "t", "--compression", "brotli"],
        &["group", "seek", "g", "--topic", "t", "--to", "soon"],
        &["group", "seek", "g", "--to", "earliest"],
        &["cluster", "nothing"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .output()
            .expect("run sluice");
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}
