//! Runs every Kafka scenario of `sluice-bench` against a real `sluice`
//! broker and checks the reported figures against the broker's own end
//! offsets.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::{
    assert_common_fields, assert_percentiles_monotone, records_in_topic, run_bench, Broker,
};

#[test]
fn closed_loop_produce_count_equals_end_offsets() {
    let broker = Broker::start();
    let run = run_bench(&[
        "produce",
        "--bootstrap",
        &broker.bootstrap,
        "--topic",
        "closed",
        "--partitions",
        "3",
        "--seconds",
        "2",
        "--warmup-seconds",
        "0",
        "--record-bytes",
        "200",
        "--in-flight-max",
        "2000",
        "--json",
    ]);
    let json = run.json();
    assert_common_fields(&json);
    assert_percentiles_monotone(&json);
    let messages = json["messages"].as_u64().expect("messages");
    assert!(messages > 0, "{json}");
    assert_eq!(
        messages,
        records_in_topic(&broker.bootstrap, "closed"),
        "{json}"
    );
    assert_eq!(json["records_failed"], 0, "{json}");
    assert!(
        run.stderr.contains("produce"),
        "progress lines on stderr: {}",
        run.stderr
    );
}

#[test]
fn open_loop_produce_sends_exactly_the_rate_and_writes_files() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (hgrm, svg) = (dir.path().join("lat.hgrm"), dir.path().join("lat.svg"));
    let run = run_bench(&[
        "produce",
        "--bootstrap",
        &broker.bootstrap,
        "--topic",
        "open",
        "--partitions",
        "2",
        "--rate",
        "500",
        "--seconds",
        "2",
        "--warmup-seconds",
        "1",
        "--record-bytes",
        "100",
        "--hgrm-out",
        hgrm.to_str().expect("utf-8"),
        "--plot",
        svg.to_str().expect("utf-8"),
        "--json",
    ]);
    let json = run.json();
    assert_percentiles_monotone(&json);
    assert_eq!(json["records_sent"], 1500, "{json}");
    assert_eq!(
        json["messages"], 1000,
        "warm-up records are not counted: {json}"
    );
    assert_eq!(json["messages_total_acked"], 1500, "{json}");
    assert_eq!(records_in_topic(&broker.bootstrap, "open"), 1500);
    let rate = json["msgs_per_sec"].as_f64().expect("rate");
    assert!(
        (350.0..=520.0).contains(&rate),
        "open loop holds its rate: {json}"
    );
    let table = std::fs::read_to_string(&hgrm).expect("hgrm written");
    assert!(
        table.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"),
        "{table}"
    );
    assert!(
        table.contains("#[Max     =") && table.contains("Total count    =         1000]"),
        "{table}"
    );
    let plot = std::fs::read_to_string(&svg).expect("svg written");
    assert!(plot.starts_with("<svg"), "{plot}");
}

#[test]
fn consume_reads_every_record_up_to_the_end_offsets() {
    let broker = Broker::start();
    let run = run_bench(&[
        "consume",
        "--bootstrap",
        &broker.bootstrap,
        "--topic",
        "reads",
        "--partitions",
        "2",
        "--fill-records",
        "5000",
        "--seconds",
        "30",
        "--warmup-seconds",
        "0",
        "--record-bytes",
        "300",
        "--json",
    ]);
    let json = run.json();
    assert_common_fields(&json);
    assert_eq!(json["messages"], 5000, "{json}");
    assert_eq!(records_in_topic(&broker.bootstrap, "reads"), 5000);
    assert_eq!(json["bytes"], 5000 * 300, "{json}");
}

#[test]
fn e2e_receives_every_record_and_reports_latency() {
    let broker = Broker::start();
    let run = run_bench(&[
        "e2e",
        "--bootstrap",
        &broker.bootstrap,
        "--topic",
        "e2e",
        "--partitions",
        "2",
        "--rate",
        "400",
        "--seconds",
        "2",
        "--warmup-seconds",
        "0",
        "--record-bytes",
        "64",
        "--json",
    ]);
    let json = run.json();
    assert_common_fields(&json);
    assert_percentiles_monotone(&json);
    assert_eq!(json["messages"], 800, "{json}");
    assert_eq!(json["messages_missing"], 0, "{json}");
    assert_eq!(records_in_topic(&broker.bootstrap, "e2e"), 800);
    // Same clock at both ends: end-to-end latency includes the produce ack.
    let e2e_max = json["latency_us"]["max"].as_u64().expect("max");
    assert!(e2e_max > 0 && e2e_max < 30_000_000, "{json}");
}

#[test]
fn many_topics_verifies_every_partition() {
    let broker = Broker::start();
    let pid = broker.pid().to_string();
    let run = run_bench(&[
        "many-topics",
        "--bootstrap",
        &broker.bootstrap,
        "--topic",
        "mt",
        "--topics",
        "20",
        "--partitions",
        "2",
        "--broker-pid",
        &pid,
        "--idle-seconds",
        "1",
        "--client-topics-max",
        "3",
        "--json",
    ]);
    let json = run.json();
    assert_common_fields(&json);
    assert_percentiles_monotone(&json);
    // 20 topics through clients of 3 topics each: 7 producers, 7 consumers.
    assert_eq!(json["client_topics_max"], 3, "{json}");
    assert_eq!(json["records_acked"], 40, "{json}");
    assert_eq!(json["records_verified"], 40, "{json}");
    assert_eq!(json["messages"], 40, "{json}");
    assert_eq!(json["records_missing"], 0, "{json}");
    assert_eq!(json["verified"], true, "{json}");
    assert_eq!(
        json["latency_us"]["count"], 20,
        "one CreateTopics per topic: {json}"
    );
    assert!(
        json["broker_rss_kb_before"].as_u64().unwrap_or(0) > 0,
        "{json}"
    );
    assert!(json["broker_idle_cpu_percent"].is_number(), "{json}");
}

#[test]
fn compare_runs_both_sides_and_reports_ratios() {
    let broker = Broker::start();
    let run = run_bench(&[
        "compare",
        "--a",
        &broker.bootstrap,
        "--b",
        &broker.bootstrap,
        "--rounds",
        "1",
        "--json",
        "--",
        "produce",
        "--topic",
        "cmp",
        "--rate",
        "200",
        "--seconds",
        "1",
        "--warmup-seconds",
        "0",
    ]);
    let json = run.json();
    assert_common_fields(&json);
    assert_eq!(json["rounds"], 1, "{json}");
    assert_eq!(json["a"]["messages"], 200.0, "{json}");
    assert_eq!(json["b"]["messages"], 200.0, "{json}");
    assert_eq!(json["ratio"]["messages"], 1.0, "{json}");
    assert!(json["ratio"]["latency_us.p99"].is_number(), "{json}");
    assert_eq!(records_in_topic(&broker.bootstrap, "cmp"), 400);
}

#[test]
fn interrupt_stops_cleanly_and_reports_what_was_measured() {
    let broker = Broker::start();
    let mut child = common::bench_command(&[
        "produce",
        "--bootstrap",
        &broker.bootstrap,
        "--topic",
        "sigint",
        "--seconds",
        "120",
        "--warmup-seconds",
        "0",
        "--rate",
        "1000",
        "--json",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    // Interrupt once the producer has been sending for about two seconds.
    let mut progress_lines = 0;
    while progress_lines < 2 {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("progress lines on stderr");
        progress_lines += usize::from(line.contains("produce") && line.contains("/s,"));
    }
    // SAFETY: signalling a child process this test started.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0);
    let output = child.wait_with_output().expect("wait");
    reader.join().expect("stderr reader");
    let stderr_rest: Vec<String> = lines_rx.try_iter().collect();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        stderr_rest.join("\n")
    );
    let last = stdout.lines().last().expect("output");
    let json: serde_json::Value = serde_json::from_str(last).expect("json");
    assert_eq!(json["interrupted"], true, "{json}");
    let messages = json["messages"].as_u64().expect("messages");
    assert!((1000..60_000).contains(&messages), "{json}");
    assert_eq!(
        messages,
        records_in_topic(&broker.bootstrap, "sigint"),
        "{json}"
    );
}

#[test]
fn transactional_produce_and_e2e_commit_at_the_interval() {
    let broker = Broker::start();
    let run = run_bench(&[
        "produce",
        "--bootstrap",
        &broker.bootstrap,
        "--topic",
        "txn",
        "--partitions",
        "2",
        "--rate",
        "400",
        "--seconds",
        "2",
        "--warmup-seconds",
        "0",
        "--record-bytes",
        "100",
        "--transactional-commit-ms",
        "200",
        "--json",
    ]);
    let json = run.json();
    assert_common_fields(&json);
    assert_percentiles_monotone(&json);
    assert_eq!(json["messages"], 800, "{json}");
    assert_eq!(json["records_failed"], 0, "{json}");
    assert_eq!(json["transactional_commit_ms"], 200, "{json}");
    assert_eq!(json["transactions_aborted"], 0, "{json}");
    assert_eq!(json["records_aborted"], 0, "{json}");
    let commits = json["transactions_committed"]
        .as_u64()
        .expect("transactions_committed");
    // One every 200 ms at most (a commit blocks the sender), plus the last.
    assert!((1..=12).contains(&commits), "{json}");
    assert_eq!(json["commit_latency_us"]["count"], commits, "{json}");
    // A commit on loopback takes a few milliseconds (flush and EndTxn).
    // rdkafka's own `commit_transaction` flushed by polling in 100 ms
    // slices that always ran out, so every commit took over 100 ms.
    let commit_p50_us = json["commit_latency_us"]["p50"]
        .as_u64()
        .expect("commit_latency_us.p50");
    assert!(commit_p50_us < 50_000, "{json}");
    assert!(
        run.stdout.contains("transactional, commit every 200 ms"),
        "{}",
        run.stdout
    );
    // The log holds the records and one marker per transaction and
    // partition it wrote to.
    let in_log = records_in_topic(&broker.bootstrap, "txn");
    assert!(
        in_log > 800 && in_log <= 800 + 2 * commits,
        "{in_log} offsets in the log for {commits} transactions: {json}"
    );

    let run = run_bench(&[
        "e2e",
        "--bootstrap",
        &broker.bootstrap,
        "--topic",
        "txn-e2e",
        "--partitions",
        "2",
        "--rate",
        "400",
        "--seconds",
        "2",
        "--warmup-seconds",
        "0",
        "--record-bytes",
        "64",
        "--transactional-commit-ms",
        "200",
        "--json",
    ]);
    let json = run.json();
    assert_common_fields(&json);
    assert_percentiles_monotone(&json);
    assert_eq!(json["messages"], 800, "{json}");
    assert_eq!(json["messages_missing"], 0, "{json}");
    assert_eq!(json["consumer_isolation_level"], "read_committed", "{json}");
    assert_eq!(json["transactions_aborted"], 0, "{json}");
    assert!(json["transactions_committed"].as_u64() >= Some(1), "{json}");
}

#[test]
fn transactional_commit_needs_acks_all() {
    let output = common::bench_command(&[
        "produce",
        "--bootstrap",
        "127.0.0.1:1",
        "--acks",
        "1",
        "--transactional-commit-ms",
        "100",
    ])
    .output()
    .expect("running sluice-bench");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("needs --acks all"), "{stderr}");
}
