//! Consumer-group APIs in raw frames, at the versions that carry the batch
//! forms: FindCoordinator v4 (many keys), JoinGroup v5 with static members,
//! LeaveGroup v3 (members by instance id), OffsetCommit/OffsetFetch v8
//! (many groups), DescribeGroups, MEMBER_ID_REQUIRED, errors.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn join_request(group: &str, member: &str, instance: Option<&str>) -> JoinGroupRequest {
    let mut p = JoinGroupRequestProtocol::default();
    p.name = s("range");
    p.metadata = Bytes::from_static(b"\x00\x01");
    let mut r = JoinGroupRequest::default();
    r.group_id = GroupId(s(group));
    r.session_timeout_ms = 10_000;
    r.rebalance_timeout_ms = 10_000;
    r.member_id = s(member);
    r.group_instance_id = instance.map(s);
    r.protocol_type = s("consumer");
    r.protocols = vec![p];
    r
}

#[test]
fn find_coordinator_batch_and_member_id_required() {
    let b = Broker::start_with(2, &["--group-initial-rebalance-delay-ms", "100"]);
    let mut c = connect(&b);
    let mut fc = FindCoordinatorRequest::default();
    fc.key_type = 0;
    fc.coordinator_keys = vec![s("a"), s("b"), s("c")];
    let resp: FindCoordinatorResponse = call(&mut c, ApiKey::FindCoordinator, 4, &fc);
    assert_eq!(resp.coordinators.len(), 3);
    for co in &resp.coordinators {
        assert_eq!(co.error_code, 0);
        assert_eq!(co.port, i32::from(b.port));
    }
    // v4+ JoinGroup: a new dynamic member first gets its id.
    let first: JoinGroupResponse =
        call(&mut c, ApiKey::JoinGroup, 5, &join_request("mr", "", None));
    assert_eq!(first.error_code, 79, "MEMBER_ID_REQUIRED");
    assert!(!first.member_id.is_empty());
    let id = first.member_id.to_string();
    let joined: JoinGroupResponse =
        call(&mut c, ApiKey::JoinGroup, 5, &join_request("mr", &id, None));
    assert_eq!(joined.error_code, 0);
    assert_eq!(
        (joined.generation_id, joined.leader.as_str()),
        (1, id.as_str())
    );
    assert_eq!(joined.members.len(), 1);
    let unknown: JoinGroupResponse = call(
        &mut c,
        ApiKey::JoinGroup,
        5,
        &join_request("mr", "stranger", None),
    );
    assert_eq!(unknown.error_code, 25, "UNKNOWN_MEMBER_ID");
    let mut hb = HeartbeatRequest::default();
    hb.group_id = GroupId(s("mr"));
    hb.generation_id = 7;
    hb.member_id = s(&id);
    let wrong_gen: HeartbeatResponse = call(&mut c, ApiKey::Heartbeat, 4, &hb);
    assert_eq!(wrong_gen.error_code, 22, "ILLEGAL_GENERATION");
}

#[test]
fn static_members_leave_in_one_batch() {
    let b = Broker::start_with(2, &["--group-initial-rebalance-delay-ms", "100"]);
    let port = b.port;
    let joins: Vec<_> = ["i1", "i2"]
        .into_iter()
        .map(|instance| {
            std::thread::spawn(move || {
                let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
                c.set_read_timeout(Some(Duration::from_secs(20)))
                    .expect("timeout");
                let r: JoinGroupResponse = call(
                    &mut c,
                    ApiKey::JoinGroup,
                    5,
                    &join_request("statics", "", Some(instance)),
                );
                r
            })
        })
        .collect();
    let results: Vec<JoinGroupResponse> =
        joins.into_iter().map(|j| j.join().expect("join")).collect();
    for r in &results {
        assert_eq!(r.error_code, 0);
        assert_eq!(r.generation_id, results[0].generation_id);
    }
    let mut c = connect(&b);
    let mut dg = DescribeGroupsRequest::default();
    dg.groups = vec![GroupId(s("statics"))];
    let described: DescribeGroupsResponse = call(&mut c, ApiKey::DescribeGroups, 5, &dg);
    assert_eq!(
        described.groups[0].group_state.as_str(),
        "CompletingRebalance"
    );
    assert_eq!(described.groups[0].members.len(), 2);

    let mut leave = LeaveGroupRequest::default();
    leave.group_id = GroupId(s("statics"));
    leave.members = ["i1", "i2", "nobody"]
        .into_iter()
        .map(|i| {
            let mut m = MemberIdentity::default();
            m.group_instance_id = Some(s(i));
            m
        })
        .collect();
    let left: LeaveGroupResponse = call(&mut c, ApiKey::LeaveGroup, 3, &leave);
    assert_eq!(left.error_code, 0);
    let codes: Vec<i16> = left.members.iter().map(|m| m.error_code).collect();
    assert_eq!(codes, vec![0, 0, 25]);
    let described: DescribeGroupsResponse = call(&mut c, ApiKey::DescribeGroups, 5, &dg);
    assert_eq!(
        described.groups[0].group_state.as_str(),
        "Dead",
        "no members, no offsets: gone"
    );
}

#[test]
fn offsets_of_many_groups_in_one_fetch() {
    let b = Broker::start_with(2, &[]);
    create_topic(&b, "multi", 2);
    let mut c = connect(&b);
    for (group, offset) in [("g-one", 11), ("g-two", 22)] {
        let mut p = OffsetCommitRequestPartition::default();
        p.partition_index = 1;
        p.committed_offset = offset;
        p.committed_metadata = Some(s("m"));
        let mut t = OffsetCommitRequestTopic::default();
        t.name = TopicName(s("multi"));
        t.partitions = vec![p];
        let mut oc = OffsetCommitRequest::default();
        oc.group_id = GroupId(s(group));
        oc.generation_id_or_member_epoch = -1;
        oc.topics = vec![t];
        let r: OffsetCommitResponse = call(&mut c, ApiKey::OffsetCommit, 8, &oc);
        assert_eq!(r.topics[0].partitions[0].error_code, 0);
    }
    let group = |g: &str| {
        let mut t = OffsetFetchRequestTopics::default();
        t.name = TopicName(s("multi"));
        t.partition_indexes = vec![0, 1];
        let mut rg = OffsetFetchRequestGroup::default();
        rg.group_id = GroupId(s(g));
        rg.topics = Some(vec![t]);
        rg
    };
    let mut of = OffsetFetchRequest::default();
    of.groups = vec![group("g-one"), group("g-two"), group("never")];
    let r: OffsetFetchResponse = call(&mut c, ApiKey::OffsetFetch, 8, &of);
    let got: Vec<(String, Vec<i64>)> = r
        .groups
        .iter()
        .map(|g| {
            assert_eq!(g.error_code, 0);
            let offsets = g.topics[0]
                .partitions
                .iter()
                .map(|p| p.committed_offset)
                .collect();
            (g.group_id.0.to_string(), offsets)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("g-one".to_string(), vec![-1, 11]),
            ("g-two".to_string(), vec![-1, 22]),
            ("never".to_string(), vec![-1, -1]),
        ]
    );
}
