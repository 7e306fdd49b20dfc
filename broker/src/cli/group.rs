//! `sluice group`: ListGroups and DescribeGroups, OffsetFetch with
//! ListOffsets for the lag, DeleteGroups, and OffsetCommit for `seek`,
//! through librdkafka. Members' assignments are decoded from the consumer
//! protocol bytes with `kafka-protocol`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use bytes::Buf;
use clap::{Args, Subcommand};
use kafka_protocol::messages::ConsumerProtocolAssignment;
use kafka_protocol::protocol::Decodable;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::groups::{GroupInfo, GroupList};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use super::output::{offset_cell, OutputArgs, Report, Table};
use super::{describe_code, describe_error, ConnArgs};

/// `sluice group ...`
#[derive(Args, Debug)]
pub struct GroupArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    out: OutputArgs,
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(Subcommand, Debug)]
enum GroupCommand {
    /// List the consumer groups.
    List,
    /// State, members and their partitions, committed offsets and lag of a group.
    Describe { group: String },
    /// Delete a group (it must have no members) and its committed offsets.
    Delete { group: String },
    /// Move a group's committed offsets; refused while the group has members.
    Seek {
        group: String,
        /// TOPIC, or TOPIC:P[,P...] for some partitions (repeatable).
        #[arg(long = "topic", required = true, value_name = "TOPIC[:P[,P]]", value_parser = parse_topic_spec)]
        topics: Vec<TopicSpec>,
        /// earliest, latest, an OFFSET, @TIMESTAMP_MS, or -DURATION ago (e.g. -10m, -1h, -2d).
        #[arg(long, value_parser = parse_target, allow_hyphen_values = true)]
        to: Target,
        /// Print the old and new offsets; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// A topic and, optionally, some of its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TopicSpec {
    topic: String,
    partitions: Option<Vec<i32>>,
}

fn parse_topic_spec(s: &str) -> Result<TopicSpec, String> {
    let Some((topic, list)) = s.split_once(':') else {
        return Ok(TopicSpec {
            topic: s.to_string(),
            partitions: None,
        });
    };
    let partitions = list
        .split(',')
        .map(|p| p.parse::<i32>().ok().filter(|p| *p >= 0))
        .collect::<Option<Vec<i32>>>()
        .ok_or_else(|| format!("expected TOPIC or TOPIC:P[,P...], got {s:?}"))?;
    if topic.is_empty() {
        return Err(format!("no topic in {s:?}"));
    }
    Ok(TopicSpec {
        topic: topic.to_string(),
        partitions: Some(partitions),
    })
}

/// `--to` of `group seek`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Earliest,
    Latest,
    Offset(i64),
    /// The first record at or after this time, ms since the epoch.
    Timestamp(i64),
    /// The first record at or after this long ago.
    Ago(Duration),
}

fn parse_target(s: &str) -> Result<Target, String> {
    let bad = || {
        format!(
            "expected earliest, latest, OFFSET, @TIMESTAMP_MS or -DURATION (e.g. -10m), got {s:?}"
        )
    };
    let number = |t: &str| t.parse::<u64>().ok();
    match s {
        "earliest" => return Ok(Target::Earliest),
        "latest" => return Ok(Target::Latest),
        _ => {}
    }
    if let Some(ts) = s.strip_prefix('@') {
        return number(ts)
            .and_then(|t| i64::try_from(t).ok())
            .map(Target::Timestamp)
            .ok_or_else(bad);
    }
    if let Some(duration) = s.strip_prefix('-') {
        let split = duration
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(bad)?;
        let (n, unit) = duration.split_at(split);
        let n = number(n).ok_or_else(bad)?;
        let secs = match unit {
            "ms" => return Ok(Target::Ago(Duration::from_millis(n))),
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        return n
            .checked_mul(secs)
            .map(|s| Target::Ago(Duration::from_secs(s)))
            .ok_or_else(bad);
    }
    number(s)
        .and_then(|o| i64::try_from(o).ok())
        .map(Target::Offset)
        .ok_or_else(bad)
}

pub fn run(args: GroupArgs) -> anyhow::Result<ExitCode> {
    let conn = &args.conn;
    let report = match &args.command {
        GroupCommand::List => list(conn),
        GroupCommand::Describe { group } => describe(conn, group),
        GroupCommand::Delete { group } => delete(conn, group),
        GroupCommand::Seek {
            group,
            topics,
            to,
            dry_run,
        } => seek(conn, group, topics, *to, *dry_run),
    }?;
    report.emit(args.out.format);
    Ok(ExitCode::SUCCESS)
}

fn group_list(
    conn: &ConnArgs,
    consumer: &BaseConsumer,
    group: Option<&str>,
) -> anyhow::Result<GroupList> {
    consumer
        .fetch_group_list(group, conn.timeout())
        .map_err(|e| anyhow!(describe_error(&e)))
        .with_context(|| conn.on(group.map_or("groups".to_string(), |g| format!("group {g:?}"))))
}

fn list(conn: &ConnArgs) -> anyhow::Result<Report> {
    let consumer = conn.consumer(None, &[])?;
    let list = group_list(conn, &consumer, None)?;
    let mut groups: Vec<&GroupInfo> = list.groups().iter().collect();
    groups.sort_by(|a, b| a.name().cmp(b.name()));
    let mut table = Table::new(&["GROUP", "STATE", "PROTOCOL-TYPE", "MEMBERS"]);
    let mut json = Vec::with_capacity(groups.len());
    for g in &groups {
        table.row(vec![
            g.name().to_string(),
            g.state().to_string(),
            g.protocol_type().to_string(),
            g.members().len().to_string(),
        ]);
        json.push(json!({
            "group": g.name(),
            "state": g.state(),
            "protocol_type": g.protocol_type(),
            "members": g.members().len(),
        }));
    }
    Ok(Report {
        text: table.render(),
        json: Value::Array(json),
    })
}

fn delete(conn: &ConnArgs, group: &str) -> anyhow::Result<Report> {
    let context = || conn.on(format!("group {group:?}"));
    let admin = conn.admin()?;
    let results = futures::executor::block_on(admin.delete_groups(&[group], &conn.admin_options()))
        .map_err(|e| anyhow!(describe_error(&e)))
        .with_context(context)?;
    for result in results {
        if let Err((_, code)) = result {
            return Err(anyhow!(describe_code(code))).with_context(context);
        }
    }
    Ok(Report {
        text: format!("deleted group {group:?}\n"),
        json: json!({"group": group, "deleted": true}),
    })
}

/// A member's assigned partitions by topic; `None` when the group does
/// not use the consumer protocol or the bytes do not decode.
fn assignment(protocol_type: &str, bytes: Option<&[u8]>) -> Option<BTreeMap<String, Vec<i32>>> {
    let mut buf = bytes?;
    if protocol_type != "consumer" || buf.remaining() < 2 {
        return None;
    }
    // Newer versions only add fields: decode them as the newest known.
    let version = buf.get_i16().clamp(0, 3);
    let decoded = ConsumerProtocolAssignment::decode(&mut buf, version).ok()?;
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for tp in decoded.assigned_partitions {
        out.entry(tp.topic.0.to_string())
            .or_default()
            .extend(tp.partitions);
    }
    for partitions in out.values_mut() {
        partitions.sort_unstable();
    }
    Some(out)
}

/// One partition's row of `group describe`.
struct OffsetRow {
    topic: String,
    partition: i32,
    committed: i64,
    log_end: i64,
}

fn describe(conn: &ConnArgs, group: &str) -> anyhow::Result<Report> {
    let context = || conn.on(format!("group {group:?}"));
    let consumer = conn.consumer(Some(group), &[])?;
    let list = group_list(conn, &consumer, Some(group))?;
    let info = list
        .groups()
        .iter()
        .find(|g| g.name() == group)
        .ok_or_else(|| anyhow!(describe_code(RDKafkaErrorCode::GroupIdNotFound)))
        .with_context(context)?;
    let assignments: Vec<Option<BTreeMap<String, Vec<i32>>>> = info
        .members()
        .iter()
        .map(|m| assignment(info.protocol_type(), m.assignment()))
        .collect();
    let mut wanted: BTreeSet<(String, i32)> = assignments
        .iter()
        .flatten()
        .flat_map(|a| {
            a.iter()
                .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
        })
        .collect();
    let committed = committed_offsets(conn, &consumer, all_partitions(conn, &consumer)?)?;
    wanted.extend(
        committed
            .iter()
            .filter(|(_, o)| **o >= 0)
            .map(|(tp, _)| tp.clone()),
    );
    if info.state() == "Dead" && wanted.is_empty() {
        return Err(anyhow!(describe_code(RDKafkaErrorCode::GroupIdNotFound)))
            .with_context(context);
    }
    let mut rows = Vec::with_capacity(wanted.len());
    for (topic, partition) in wanted {
        let (_, log_end) = consumer
            .fetch_watermarks(&topic, partition, conn.timeout())
            .map_err(|e| anyhow!(describe_error(&e)))
            .with_context(|| conn.on(format!("partition {topic}:{partition}")))?;
        let committed = committed
            .get(&(topic.clone(), partition))
            .copied()
            .unwrap_or(-1);
        rows.push(OffsetRow {
            topic,
            partition,
            committed,
            log_end,
        });
    }
    Ok(describe_report(info, &assignments, &rows))
}

fn describe_report(
    info: &GroupInfo,
    assignments: &[Option<BTreeMap<String, Vec<i32>>>],
    rows: &[OffsetRow],
) -> Report {
    let lag = |r: &OffsetRow| (r.committed >= 0).then(|| (r.log_end - r.committed).max(0));
    let mut members = Table::new(&["MEMBER", "CLIENT-ID", "HOST", "PARTITIONS"]);
    let mut members_json = Vec::new();
    for (m, a) in info.members().iter().zip(assignments) {
        let cell = a.as_ref().map_or("?".to_string(), |a| {
            a.iter()
                .map(|(t, ps)| format!("{t}:{}", super::output::id_list(ps)))
                .collect::<Vec<_>>()
                .join(" ")
        });
        members.row(vec![
            m.id().to_string(),
            m.client_id().to_string(),
            m.client_host().to_string(),
            cell,
        ]);
        members_json.push(json!({
            "member_id": m.id(),
            "client_id": m.client_id(),
            "host": m.client_host(),
            "assignment": a.as_ref().map(|a| {
                a.iter()
                    .map(|(t, ps)| json!({"topic": t, "partitions": ps}))
                    .collect::<Vec<_>>()
            }),
        }));
    }
    let mut offsets = Table::new(&["TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG"]);
    for r in rows {
        offsets.row(vec![
            r.topic.clone(),
            r.partition.to_string(),
            offset_cell(r.committed),
            r.log_end.to_string(),
            lag(r).map_or("-".to_string(), |l| l.to_string()),
        ]);
    }
    let protocol = match info.protocol() {
        "" => info.protocol_type().to_string(),
        assignor => format!("{} ({assignor})", info.protocol_type()),
    };
    let members_text = if info.members().is_empty() {
        "No members.\n".to_string()
    } else {
        members.render()
    };
    let text = format!(
        "Group: {}\nState: {}\nProtocol: {protocol}\n\n{members_text}\n{}",
        info.name(),
        info.state(),
        offsets.render()
    );
    let json = json!({
        "group": info.name(),
        "state": info.state(),
        "protocol_type": info.protocol_type(),
        "protocol": info.protocol(),
        "members": members_json,
        "offsets": rows.iter().map(|r| json!({
            "topic": r.topic,
            "partition": r.partition,
            "committed": (r.committed >= 0).then_some(r.committed),
            "log_end": r.log_end,
            "lag": lag(r),
        })).collect::<Vec<_>>(),
    });
    Report { text, json }
}

/// Every partition of every topic: librdkafka's OffsetFetch names its
/// partitions, so a group's commits are found by asking for all of them.
fn all_partitions(conn: &ConnArgs, consumer: &BaseConsumer) -> anyhow::Result<Vec<(String, i32)>> {
    let metadata = conn.metadata(consumer, None)?;
    Ok(metadata
        .topics()
        .iter()
        .flat_map(|t| {
            t.partitions()
                .iter()
                .map(move |p| (t.name().to_string(), p.id()))
        })
        .collect())
}

/// The group's committed offset of each partition (-1: none).
fn committed_offsets(
    conn: &ConnArgs,
    consumer: &BaseConsumer,
    partitions: Vec<(String, i32)>,
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    if partitions.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut tpl = TopicPartitionList::with_capacity(partitions.len());
    for (topic, p) in &partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(tpl, conn.timeout())
        .map_err(|e| anyhow!(describe_error(&e)))
        .with_context(|| conn.on("committed offsets"))?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            };
            ((e.topic().to_string(), e.partition()), offset)
        })
        .collect())
}

/// The partitions `--topic` names, checked against the metadata.
fn seek_partitions(
    conn: &ConnArgs,
    consumer: &BaseConsumer,
    specs: &[TopicSpec],
) -> anyhow::Result<Vec<(String, i32)>> {
    let mut out = Vec::new();
    for spec in specs {
        let context = || conn.on(format!("topic {:?}", spec.topic));
        let metadata = conn.metadata(consumer, Some(&spec.topic))?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == spec.topic)
            .filter(|t| t.error().is_none())
            .ok_or_else(|| anyhow!(describe_code(RDKafkaErrorCode::UnknownTopicOrPartition)))
            .with_context(context)?;
        let existing: BTreeSet<i32> = topic.partitions().iter().map(|p| p.id()).collect();
        let chosen: Vec<i32> = spec
            .partitions
            .clone()
            .unwrap_or_else(|| existing.iter().copied().collect());
        for p in chosen {
            if !existing.contains(&p) {
                return Err(anyhow!(
                    "partition {p}: {}",
                    describe_code(RDKafkaErrorCode::UnknownTopicOrPartition)
                ))
                .with_context(context);
            }
            out.push((spec.topic.clone(), p));
        }
    }
    Ok(out)
}

/// The new offset of each partition; offsets past the log are clamped
/// into it, as Kafka's `kafka-consumer-groups --reset-offsets` does.
fn new_offsets(
    conn: &ConnArgs,
    consumer: &BaseConsumer,
    partitions: &[(String, i32)],
    to: Target,
) -> anyhow::Result<Vec<i64>> {
    let by_time = match to {
        Target::Timestamp(ts) => Some(ts),
        Target::Ago(ago) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            Some(i64::try_from(now.saturating_sub(ago).as_millis()).unwrap_or(i64::MAX))
        }
        _ => None,
    };
    let mut out = Vec::with_capacity(partitions.len());
    for (topic, p) in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, conn.timeout())
            .map_err(|e| anyhow!(describe_error(&e)))
            .with_context(|| conn.on(format!("partition {topic}:{p}")))?;
        let offset = match (to, by_time) {
            (Target::Earliest, _) => low,
            (Target::Latest, _) => high,
            (Target::Offset(o), _) => o.clamp(low, high),
            (_, Some(ts)) => offset_for_time(conn, consumer, (topic, *p), ts)?.unwrap_or(high),
            (_, None) => high,
        };
        out.push(offset);
    }
    Ok(out)
}

/// The first offset at or after `ts_ms`; `None` when no record is that recent.
fn offset_for_time(
    conn: &ConnArgs,
    consumer: &BaseConsumer,
    (topic, p): (&str, i32),
    ts_ms: i64,
) -> anyhow::Result<Option<i64>> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::Offset(ts_ms))
        .map_err(|e| anyhow!(describe_error(&e)))?;
    let found = consumer
        .offsets_for_times(tpl, conn.timeout())
        .map_err(|e| anyhow!(describe_error(&e)))
        .with_context(|| conn.on(format!("partition {topic}:{p}")))?;
    Ok(found.elements().first().and_then(|e| match e.offset() {
        Offset::Offset(o) if o >= 0 => Some(o),
        _ => None,
    }))
}

fn seek(
    conn: &ConnArgs,
    group: &str,
    specs: &[TopicSpec],
    to: Target,
    dry_run: bool,
) -> anyhow::Result<Report> {
    let context = || conn.on(format!("group {group:?}"));
    let consumer = conn.consumer(Some(group), &[])?;
    let members = group_list(conn, &consumer, Some(group))?
        .groups()
        .iter()
        .find(|g| g.name() == group)
        .map_or(0, |g| g.members().len());
    if members > 0 {
        bail!(
            "{}: the group has {members} active member(s); stop them first \
             (offsets of an active group cannot be moved)",
            context()
        );
    }
    let partitions = seek_partitions(conn, &consumer, specs)?;
    let old = committed_offsets(conn, &consumer, partitions.clone())?;
    let new = new_offsets(conn, &consumer, &partitions, to)?;
    if !dry_run {
        let mut tpl = TopicPartitionList::with_capacity(partitions.len());
        for ((topic, p), offset) in partitions.iter().zip(&new) {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*offset))
                .map_err(|e| anyhow!(describe_error(&e)))?;
        }
        consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| anyhow!(describe_error(&e)))
            .with_context(context)?;
    }
    let mut table = Table::new(&["TOPIC", "PARTITION", "OLD", "NEW"]);
    let mut json = Vec::with_capacity(partitions.len());
    for ((topic, p), offset) in partitions.iter().zip(&new) {
        let before = old.get(&(topic.clone(), *p)).copied().unwrap_or(-1);
        table.row(vec![
            topic.clone(),
            p.to_string(),
            offset_cell(before),
            offset.to_string(),
        ]);
        json.push(json!({
            "topic": topic,
            "partition": p,
            "old": (before >= 0).then_some(before),
            "new": offset,
        }));
    }
    let heading = if dry_run {
        "dry run, nothing changed:\n"
    } else {
        ""
    };
    Ok(Report {
        text: format!("{heading}{}", table.render()),
        json: json!({"group": group, "dry_run": dry_run, "offsets": json}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seek_targets() {
        assert_eq!(parse_target("earliest"), Ok(Target::Earliest));
        assert_eq!(parse_target("latest"), Ok(Target::Latest));
        assert_eq!(parse_target("17"), Ok(Target::Offset(17)));
        assert_eq!(
            parse_target("@1700000000000"),
            Ok(Target::Timestamp(1_700_000_000_000))
        );
        assert_eq!(
            parse_target("-10m"),
            Ok(Target::Ago(Duration::from_secs(600)))
        );
        assert_eq!(
            parse_target("-1h"),
            Ok(Target::Ago(Duration::from_secs(3600)))
        );
        assert_eq!(
            parse_target("-250ms"),
            Ok(Target::Ago(Duration::from_millis(250)))
        );
        assert!(parse_target("-10").is_err());
        assert!(parse_target("-10y").is_err());
        assert!(parse_target("soon").is_err());
    }

    #[test]
    fn topic_specs() {
        assert_eq!(
            parse_topic_spec("t:0,2"),
            Ok(TopicSpec {
                topic: "t".into(),
                partitions: Some(vec![0, 2])
            })
        );
        assert_eq!(
            parse_topic_spec("t"),
            Ok(TopicSpec {
                topic: "t".into(),
                partitions: None
            })
        );
        assert!(parse_topic_spec("t:x").is_err());
        assert!(parse_topic_spec(":1").is_err());
    }

    #[test]
    fn consumer_protocol_assignments_decode() {
        use bytes::BytesMut;
        use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
        use kafka_protocol::messages::TopicName;
        use kafka_protocol::protocol::{Encodable, StrBytes};
        let a = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            TopicPartition::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![1, 0]),
        ]);
        let mut buf = BytesMut::new();
        bytes::BufMut::put_i16(&mut buf, 3);
        a.encode(&mut buf, 3).expect("encode");
        let decoded = assignment("consumer", Some(&buf)).expect("decodes");
        assert_eq!(decoded.get("t"), Some(&vec![0, 1]));
        assert_eq!(assignment("connect", Some(&buf)), None);
    }
}
