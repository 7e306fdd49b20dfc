//! Requests and answers of the group coordinator, free of the wire
//! protocol: the broker converts Kafka messages to and from these.

use bytes::Bytes;

use crate::ShardError;

/// Why a group operation failed; mapped to Kafka codes by the broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("coordinator not available")]
    CoordinatorNotAvailable,
    #[error("invalid group id")]
    InvalidGroupId,
    #[error("unknown member id")]
    UnknownMemberId,
    #[error("illegal generation")]
    IllegalGeneration,
    #[error("rebalance in progress")]
    RebalanceInProgress,
    #[error("member id required")]
    MemberIdRequired,
    #[error("inconsistent group protocol")]
    InconsistentGroupProtocol,
    #[error("invalid session timeout")]
    InvalidSessionTimeout,
    #[error("fenced instance id")]
    FencedInstanceId,
    #[error("group id not found")]
    GroupIdNotFound,
    #[error("group is not empty")]
    NonEmptyGroup,
    #[error("group is full")]
    GroupMaxSizeReached,
    #[error("offset metadata too large")]
    OffsetMetadataTooLarge,
    #[error("group subscribed to topic")]
    GroupSubscribedToTopic,
    /// The group's `__consumer_offsets` partition is led here but its
    /// groups are still being loaded from its log (Kafka
    /// COORDINATOR_LOAD_IN_PROGRESS, 14; retriable).
    #[error("coordinator load in progress")]
    CoordinatorLoadInProgress,
    /// This node does not lead the group's `__consumer_offsets` partition
    /// (any more), or lost the lead while writing the group record (Kafka
    /// NOT_COORDINATOR, 16; clients look the coordinator up again).
    #[error("not coordinator")]
    NotCoordinator,
    #[error(transparent)]
    Shard(#[from] ShardError),
}

pub type GroupResult<T> = Result<T, GroupError>;

/// One protocol a joining member supports (name, opaque metadata).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protocol {
    pub name: String,
    pub metadata: Bytes,
}

#[derive(Clone, Debug)]
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<Protocol>,
    /// JoinGroup v4+: a new member first gets MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinResult {
    pub error: Option<GroupError>,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only.
    pub members: Vec<JoinedMember>,
}

impl JoinResult {
    pub fn failed(error: GroupError, member_id: &str) -> JoinResult {
        JoinResult {
            error: Some(error),
            generation_id: -1,
            member_id: member_id.to_string(),
            ..JoinResult::default()
        }
    }
}

#[derive(Clone, Debug)]
pub struct SyncRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    /// The leader's assignments (member id, opaque assignment).
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncResult {
    pub error: Option<GroupError>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    pub fn failed(error: GroupError) -> SyncResult {
        SyncResult {
            error: Some(error),
            ..SyncResult::default()
        }
    }
}

#[derive(Clone, Debug)]
pub struct HeartbeatRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
}

/// One member leaving: by member id, or by instance id (static members).
#[derive(Clone, Debug)]
pub struct LeavingMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
}

#[derive(Clone, Debug)]
pub struct LeaveRequest {
    pub group_id: String,
    pub members: Vec<LeavingMember>,
}

#[derive(Clone, Debug, Default)]
pub struct LeaveResult {
    pub error: Option<GroupError>,
    /// Per member, in request order.
    pub members: Vec<Option<GroupError>>,
}

/// A committed offset of one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_timestamp_ms: i64,
}

#[derive(Clone, Debug)]
pub struct CommitRequest {
    pub group_id: String,
    /// -1 with an empty member id: a commit from outside the group.
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub offsets: Vec<(String, i32, CommittedOffset)>,
}

/// TxnOffsetCommit: offsets committed inside a transaction. They are
/// written to the group's offsets partition as a transactional batch of
/// the producer and count once its commit marker is written there.
#[derive(Clone, Debug)]
pub struct TxnCommitRequest {
    pub commit: CommitRequest,
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

#[derive(Clone, Debug)]
pub struct CommitResult {
    pub error: Option<GroupError>,
}

#[derive(Clone, Debug)]
pub struct OffsetFetchRequest {
    pub group_id: String,
    /// `None`: every committed partition of the group.
    pub partitions: Option<Vec<(String, i32)>>,
    /// OffsetFetch v7+ `require_stable`: a partition with offsets held by
    /// an open transaction answers UNSTABLE_OFFSET_COMMIT (the consumer
    /// retries) instead of the offset the transaction may replace.
    pub require_stable: bool,
}

#[derive(Clone, Debug, Default)]
pub struct OffsetFetchResult {
    pub error: Option<GroupError>,
    /// Offset -1 for a partition with no committed offset.
    pub offsets: Vec<(String, i32, Option<CommittedOffset>)>,
    /// Requested partitions whose offsets an open transaction holds
    /// (`require_stable`).
    pub unstable: Vec<(String, i32)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    pub error: Option<GroupError>,
    pub group_id: String,
    /// Kafka's names: Empty, PreparingRebalance, CompletingRebalance,
    /// Stable, Dead.
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<DescribedMember>,
}

#[derive(Clone, Debug)]
pub struct OffsetDeleteRequest {
    pub group_id: String,
    pub partitions: Vec<(String, i32)>,
}

#[derive(Clone, Debug, Default)]
pub struct OffsetDeleteResult {
    pub error: Option<GroupError>,
    pub partitions: Vec<(String, i32, Option<GroupError>)>,
}

/// A request for a group's coordinator.
#[derive(Clone, Debug)]
pub enum GroupRequest {
    Join(JoinRequest),
    Sync(SyncRequest),
    Heartbeat(HeartbeatRequest),
    Leave(LeaveRequest),
    Commit(CommitRequest),
    TxnCommit(TxnCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    Describe(String),
    Delete(String),
    OffsetDelete(OffsetDeleteRequest),
    /// Every group of the receiving shard (not routed by group id).
    List,
}

impl GroupRequest {
    /// The group whose coordinator serves the request.
    pub fn group_id(&self) -> Option<&str> {
        Some(match self {
            GroupRequest::Join(r) => &r.group_id,
            GroupRequest::Sync(r) => &r.group_id,
            GroupRequest::Heartbeat(r) => &r.group_id,
            GroupRequest::Leave(r) => &r.group_id,
            GroupRequest::Commit(r) => &r.group_id,
            GroupRequest::TxnCommit(r) => &r.commit.group_id,
            GroupRequest::OffsetFetch(r) => &r.group_id,
            GroupRequest::Describe(g) | GroupRequest::Delete(g) => g,
            GroupRequest::OffsetDelete(r) => &r.group_id,
            GroupRequest::List => return None,
        })
    }

    /// The answer to give when the request cannot reach its coordinator.
    pub fn failed(&self, error: GroupError) -> GroupResponse {
        let e = Some(error.clone());
        match self {
            GroupRequest::Join(r) => GroupResponse::Join(JoinResult::failed(error, &r.member_id)),
            GroupRequest::Sync(_) => GroupResponse::Sync(SyncResult::failed(error)),
            GroupRequest::Heartbeat(_) => GroupResponse::Heartbeat(e),
            GroupRequest::Leave(_) => GroupResponse::Leave(LeaveResult {
                error: e,
                members: Vec::new(),
            }),
            GroupRequest::Commit(_) | GroupRequest::TxnCommit(_) => {
                GroupResponse::Commit(CommitResult { error: e })
            }
            GroupRequest::OffsetFetch(_) => GroupResponse::OffsetFetch(OffsetFetchResult {
                error: e,
                ..OffsetFetchResult::default()
            }),
            GroupRequest::Describe(g) => GroupResponse::Describe(GroupDescription {
                error: e,
                group_id: g.clone(),
                state: "Dead",
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
            }),
            GroupRequest::Delete(_) => GroupResponse::Delete(e),
            GroupRequest::OffsetDelete(_) => GroupResponse::OffsetDelete(OffsetDeleteResult {
                error: e,
                partitions: Vec::new(),
            }),
            GroupRequest::List => GroupResponse::List(Vec::new()),
        }
    }
}

/// The coordinator's answer, one variant per request kind.
#[derive(Clone, Debug)]
pub enum GroupResponse {
    Join(JoinResult),
    Sync(SyncResult),
    Heartbeat(Option<GroupError>),
    Leave(LeaveResult),
    Commit(CommitResult),
    OffsetFetch(OffsetFetchResult),
    Describe(GroupDescription),
    Delete(Option<GroupError>),
    OffsetDelete(OffsetDeleteResult),
    List(Vec<GroupListing>),
}
