//! The coordinator's state machine: the groups of one shard, their members,
//! their committed offsets and their deadlines. No I/O: answers go to
//! oneshot senders held by members; the WAL glue is in `serve`.
//!
//! States follow Kafka's classic coordinator: Empty -> PreparingRebalance
//! (members (re)join; ends when all known members joined, at the join
//! deadline, or after the initial delay for a new group) ->
//! CompletingRebalance (leader's SyncGroup awaited) -> Stable.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::mem::size_of;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;

use super::types::*;
use crate::budget::{Budget, Pool};

/// Session timeouts accepted (Kafka's group.min/max.session.timeout.ms,
/// with a lower minimum so tests can be quick).
pub const SESSION_TIMEOUT_MS_MIN: i32 = 1_000;
pub const SESSION_TIMEOUT_MS_MAX: i32 = 1_800_000;
/// Members of one group.
pub const GROUP_MEMBERS_MAX: usize = 1_000;
/// Member ids handed out with MEMBER_ID_REQUIRED and not yet used, per
/// group; the oldest is forgotten beyond this.
pub const PENDING_MEMBERS_MAX: usize = 1_000;
/// Groups one shard coordinates.
pub const GROUPS_PER_SHARD_MAX: usize = 100_000;
/// Committed offsets (group, topic, partition) one shard keeps; commits
/// that would add more are refused (retriable) until some are deleted.
pub const COMMITTED_OFFSETS_PER_SHARD_MAX: usize = 1_000_000;
/// Longest accepted offset commit metadata string.
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;
/// Bytes charged per map entry besides its key and value: node slack of
/// the `BTreeMap`/`HashMap` holding it and allocator rounding.
const ENTRY_OVERHEAD_BYTES: u64 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

struct Member {
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<Protocol>,
    assignment: Bytes,
    session_deadline: Instant,
    awaiting_join: Option<oneshot::Sender<JoinResult>>,
    awaiting_sync: Option<oneshot::Sender<SyncResult>>,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|p| p.name == protocol)
            .map(|p| p.metadata.clone())
            .unwrap_or_default()
    }
}

pub(crate) struct Group {
    state: GroupState,
    generation_id: i32,
    protocol_type: String,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    static_members: HashMap<String, String>,
    pending: VecDeque<String>,
    /// End of the join phase (PreparingRebalance only).
    join_deadline: Option<Instant>,
    /// Initial delay of a new group: time left to extend it by.
    initial_delay_left: Option<Duration>,
    joined_during_delay: bool,
    pub offsets: BTreeMap<(String, i32), CommittedOffset>,
    /// The deadline this group is indexed under in `Coordinator::deadlines`.
    indexed: Option<Instant>,
    /// Estimated bytes of `members` and `pending` (`members_bytes`).
    members_bytes: u64,
    /// Estimated bytes of `offsets`, kept up to date as they change.
    offsets_bytes: u64,
    /// Bytes charged to the `group_state` pool for this group.
    charged: u64,
}

impl Group {
    fn new() -> Group {
        Group {
            state: GroupState::Empty,
            generation_id: 0,
            protocol_type: String::new(),
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending: VecDeque::new(),
            join_deadline: None,
            initial_delay_left: None,
            joined_during_delay: false,
            offsets: BTreeMap::new(),
            indexed: None,
            members_bytes: 0,
            offsets_bytes: 0,
            charged: 0,
        }
    }

    /// Estimated bytes of the members and pending member ids: O(members).
    fn members_bytes(&self) -> u64 {
        let members: u64 = self.members.iter().map(|(id, m)| member_bytes(id, m)).sum();
        let pending: u64 = self
            .pending
            .iter()
            .map(|id| (size_of::<String>() + id.len()) as u64)
            .sum();
        members + pending
    }

    /// Estimated bytes of the whole group, from the cached parts.
    fn bytes(&self, group_id: &str) -> u64 {
        group_bytes(group_id)
            + self.protocol_type.len() as u64
            + self.members_bytes
            + self.offsets_bytes
    }

    /// The earliest moment something must happen to this group.
    fn next_deadline(&self) -> Option<Instant> {
        let sessions = self
            .members
            .values()
            .filter(|m| {
                !(self.state == GroupState::PreparingRebalance && m.awaiting_join.is_some())
            })
            .map(|m| m.session_deadline);
        sessions.chain(self.join_deadline).min()
    }

    fn is_forgettable(&self) -> bool {
        self.members.is_empty() && self.offsets.is_empty() && self.pending.is_empty()
    }

    fn max_rebalance_timeout(&self) -> Duration {
        self.members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    fn all_joined(&self) -> bool {
        self.members.values().all(|m| m.awaiting_join.is_some())
    }

    /// A protocol every member supports, chosen by the members' votes
    /// (each votes for its most preferred candidate), as Kafka does.
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|p| p.name.as_str())
            .filter(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|p| p.name == *name))
            })
            .collect();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(p) = m
                .protocols
                .iter()
                .find(|p| candidates.contains(&p.name.as_str()))
            {
                *votes.entry(p.name.as_str()).or_default() += 1;
            }
        }
        candidates
            .iter()
            .max_by_key(|c| {
                (
                    votes.get(*c).copied().unwrap_or(0),
                    std::cmp::Reverse(candidates.iter().position(|x| x == *c)),
                )
            })
            .map(|c| c.to_string())
    }

    fn supports(&self, protocol_type: &str, protocols: &[Protocol]) -> bool {
        if self.members.is_empty() {
            return !protocols.is_empty();
        }
        self.protocol_type == protocol_type
            && protocols.iter().any(|p| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|q| q.name == p.name))
            })
    }

    fn current_join_result(&self, member_id: &str) -> JoinResult {
        let protocol = self.protocol.clone().unwrap_or_default();
        let is_leader = self.leader.as_deref() == Some(member_id);
        let members = if is_leader {
            self.members
                .iter()
                .map(|(id, m)| JoinedMember {
                    member_id: id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    metadata: m.metadata_for(&protocol),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            error: None,
            generation_id: self.generation_id,
            protocol_type: Some(self.protocol_type.clone()),
            protocol_name: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members,
        }
    }

    fn sync_result(&self, assignment: Bytes) -> SyncResult {
        SyncResult {
            error: None,
            protocol_type: Some(self.protocol_type.clone()),
            protocol_name: self.protocol.clone(),
            assignment,
        }
    }

    fn prepare_rebalance(&mut self, now: Instant, initial_delay: Duration) {
        if self.state == GroupState::CompletingRebalance {
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(tx) = m.awaiting_sync.take() {
                    let _ = tx.send(SyncResult::failed(GroupError::RebalanceInProgress));
                }
            }
        }
        if self.state == GroupState::PreparingRebalance {
            return;
        }
        let rebalance = self.max_rebalance_timeout();
        if self.state == GroupState::Empty {
            let delay = initial_delay.min(rebalance);
            self.join_deadline = Some(now + delay);
            self.initial_delay_left = Some(rebalance.saturating_sub(delay));
            self.joined_during_delay = false;
        } else {
            self.join_deadline = Some(now + rebalance);
            self.initial_delay_left = None;
        }
        self.state = GroupState::PreparingRebalance;
    }

    /// Ends the join phase if every known member has joined (never during
    /// the initial delay).
    fn try_complete_join(&mut self, now: Instant) {
        if self.state == GroupState::PreparingRebalance
            && self.initial_delay_left.is_none()
            && self.all_joined()
        {
            self.complete_join(now);
        }
    }

    fn complete_join(&mut self, now: Instant) {
        let late: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.awaiting_join.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            self.drop_member(&id);
        }
        self.join_deadline = None;
        self.initial_delay_left = None;
        self.generation_id = self.generation_id.wrapping_add(1).max(1);
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        self.protocol = self.select_protocol();
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = GroupState::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let result = self.current_join_result(&id);
            if let Some(m) = self.members.get_mut(&id) {
                m.session_deadline = now + m.session_timeout;
                if let Some(tx) = m.awaiting_join.take() {
                    let _ = tx.send(result);
                }
            }
        }
    }

    /// Removes a member and answers whatever it was waiting for.
    fn drop_member(&mut self, member_id: &str) {
        let Some(mut m) = self.members.remove(member_id) else {
            return;
        };
        if let Some(instance) = &m.group_instance_id {
            if self.static_members.get(instance).map(String::as_str) == Some(member_id) {
                self.static_members.remove(instance);
            }
        }
        if let Some(tx) = m.awaiting_join.take() {
            let _ = tx.send(JoinResult::failed(GroupError::UnknownMemberId, member_id));
        }
        if let Some(tx) = m.awaiting_sync.take() {
            let _ = tx.send(SyncResult::failed(GroupError::UnknownMemberId));
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = None;
        }
    }

    /// A member left or expired: the others rebalance.
    fn remove_and_rebalance(&mut self, member_id: &str, now: Instant, initial_delay: Duration) {
        self.drop_member(member_id);
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now, initial_delay);
                self.try_complete_join(now);
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty => {}
        }
    }

    /// Deadlines passed: expire sessions, end join phases.
    fn on_deadline(&mut self, now: Instant, initial_delay: Duration) {
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| {
                m.session_deadline <= now
                    && !(self.state == GroupState::PreparingRebalance && m.awaiting_join.is_some())
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            tracing::debug!(member = %id, "group member session expired");
            self.remove_and_rebalance(&id, now, initial_delay);
        }
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        if !self.join_deadline.is_some_and(|d| d <= now) {
            return;
        }
        match self.initial_delay_left {
            Some(left) if self.joined_during_delay && !left.is_zero() => {
                let step = initial_delay.min(left);
                self.join_deadline = Some(now + step);
                self.initial_delay_left = Some(left - step);
                self.joined_during_delay = false;
            }
            _ => self.complete_join(now),
        }
    }
}

/// The groups this shard coordinates.
pub struct Coordinator {
    pub(crate) groups: HashMap<String, Group>,
    deadlines: BTreeSet<(Instant, String)>,
    initial_delay: Duration,
    member_seq: u64,
    shard_id: u32,
    /// Committed offsets held by all groups (bounded by
    /// `COMMITTED_OFFSETS_PER_SHARD_MAX`).
    offsets_total: usize,
    /// The shard's budget: every group's estimated bytes are charged to its
    /// `group_state` pool; new groups, members and offsets must fit it.
    budget: Rc<Budget>,
    /// Offsets committed inside transactions (TxnOffsetCommit), by producer
    /// id, with their charged bytes: they count once the transaction's
    /// commit marker is written to the group's offsets partition and are
    /// dropped by its abort (`complete_txn`).
    pending_txn: HashMap<i64, (Vec<TxnOffsets>, u64)>,
}

/// One TxnOffsetCommit held until its transaction ends.
type TxnOffsets = (String, Vec<(String, i32, CommittedOffset)>);

impl Coordinator {
    pub fn new(
        shard_id: u32,
        initial_rebalance_delay: Duration,
        budget: Rc<Budget>,
    ) -> Coordinator {
        Coordinator {
            groups: HashMap::new(),
            deadlines: BTreeSet::new(),
            initial_delay: initial_rebalance_delay,
            member_seq: 0,
            shard_id,
            pending_txn: HashMap::new(),
            offsets_total: 0,
            budget,
        }
    }

    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    pub fn committed_offsets(&self) -> usize {
        self.offsets_total
    }

    /// The earliest deadline of all groups.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        self.member_seq += 1;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        format!(
            "{client_id}-{}-{nanos:x}-{}",
            self.shard_id, self.member_seq
        )
    }

    /// Re-indexes the group's deadline, brings its charge to the budget up
    /// to date (its members' share is recomputed when `members_changed`),
    /// and forgets it (releasing the charge) if nothing is left.
    fn touch(&mut self, group_id: &str, members_changed: bool) {
        let Some(g) = self.groups.get_mut(group_id) else {
            return;
        };
        if members_changed {
            g.members_bytes = g.members_bytes();
        }
        let bytes = g.bytes(group_id);
        if bytes > g.charged {
            self.budget
                .charge_forced(Pool::GroupState, bytes - g.charged);
        } else {
            self.budget.discharge(Pool::GroupState, g.charged - bytes);
        }
        g.charged = bytes;
        let next = g.next_deadline();
        if g.indexed != next {
            if let Some(old) = g.indexed.take() {
                self.deadlines.remove(&(old, group_id.to_string()));
            }
            if let Some(d) = next {
                self.deadlines.insert((d, group_id.to_string()));
            }
            g.indexed = next;
        }
        if g.is_forgettable() && g.indexed.is_none() {
            if let Some(g) = self.groups.remove(group_id) {
                self.budget.discharge(Pool::GroupState, g.charged);
            }
        }
    }

    /// Serves every group whose deadline passed; returns the next deadline.
    pub fn expire(&mut self, now: Instant) -> Option<Instant> {
        while let Some((d, id)) = self.deadlines.first().cloned() {
            if d > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(g) = self.groups.get_mut(&id) {
                g.indexed = None;
                g.on_deadline(now, self.initial_delay);
            }
            self.touch(&id, true);
        }
        self.next_deadline()
    }

    fn group_mut(&mut self, group_id: &str) -> GroupResult<&mut Group> {
        if !self.groups.contains_key(group_id) && self.groups.len() >= GROUPS_PER_SHARD_MAX {
            return Err(GroupError::Shard(crate::ShardError::Busy));
        }
        Ok(self
            .groups
            .entry(group_id.to_string())
            .or_insert_with(Group::new))
    }

    pub fn join(&mut self, req: JoinRequest, now: Instant, reply: oneshot::Sender<JoinResult>) {
        let group_id = req.group_id.clone();
        if let Err(e) = self.join_inner(req, now, reply) {
            tracing::trace!(group = %group_id, error = %e, "join refused");
        }
        self.touch(&group_id, true);
    }

    fn join_inner(
        &mut self,
        req: JoinRequest,
        now: Instant,
        reply: oneshot::Sender<JoinResult>,
    ) -> GroupResult<()> {
        let fail = |reply: oneshot::Sender<JoinResult>, e: GroupError, id: &str| {
            let _ = reply.send(JoinResult::failed(e.clone(), id));
            Err(e)
        };
        if req.group_id.is_empty() {
            return fail(reply, GroupError::InvalidGroupId, &req.member_id);
        }
        if !(SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&req.session_timeout_ms) {
            return fail(reply, GroupError::InvalidSessionTimeout, &req.member_id);
        }
        let initial_delay = self.initial_delay;
        let new_id = self.new_member_id(&req.client_id);
        // A join that may add a member (or a group) must fit the budget;
        // one of a known member only updates it.
        let known = self
            .groups
            .get(&req.group_id)
            .is_some_and(|g| g.members.contains_key(&req.member_id));
        if !known {
            let group = match self.groups.get(&req.group_id) {
                Some(_) => 0,
                None => group_bytes(&req.group_id) + req.protocol_type.len() as u64,
            };
            let id_len = new_id.len().max(req.member_id.len());
            if !self
                .budget
                .admits(Pool::GroupState, group + join_bytes(&req, id_len))
            {
                return fail(
                    reply,
                    GroupError::Shard(crate::ShardError::Busy),
                    &req.member_id,
                );
            }
        }
        let group = match self.group_mut(&req.group_id) {
            Ok(g) => g,
            Err(e) => return fail(reply, e, &req.member_id),
        };
        if !group.supports(&req.protocol_type, &req.protocols) {
            return fail(reply, GroupError::InconsistentGroupProtocol, &req.member_id);
        }
        if req.member_id.is_empty() {
            if let Some(instance) = req.group_instance_id.clone() {
                if let Some(old) = group.static_members.get(&instance).cloned() {
                    return rejoin_static(group, req, &old, new_id, now, reply, initial_delay);
                }
            } else if req.require_known_member_id {
                if group.pending.len() >= PENDING_MEMBERS_MAX {
                    group.pending.pop_front();
                }
                group.pending.push_back(new_id.clone());
                return fail(reply, GroupError::MemberIdRequired, &new_id);
            }
            return add_member(group, req, new_id, now, reply, initial_delay);
        }
        if let Some(pos) = group.pending.iter().position(|p| *p == req.member_id) {
            group.pending.remove(pos);
            let id = req.member_id.clone();
            return add_member(group, req, id, now, reply, initial_delay);
        }
        if !group.members.contains_key(&req.member_id) {
            let e = fenced_or_unknown(group, &req.group_instance_id, &req.member_id);
            return fail(reply, e, &req.member_id);
        }
        update_member(group, req, now, reply, initial_delay);
        Ok(())
    }

    pub fn sync(&mut self, req: SyncRequest, now: Instant, reply: oneshot::Sender<SyncResult>) {
        let group_id = req.group_id.clone();
        self.sync_inner(req, now, reply);
        self.touch(&group_id, true);
    }

    fn sync_inner(&mut self, req: SyncRequest, now: Instant, reply: oneshot::Sender<SyncResult>) {
        let fail = |reply: oneshot::Sender<SyncResult>, e: GroupError| {
            let _ = reply.send(SyncResult::failed(e));
        };
        let Some(group) = self.groups.get_mut(&req.group_id) else {
            return fail(reply, GroupError::UnknownMemberId);
        };
        if let Err(e) = check_member(
            group,
            &req.member_id,
            &req.group_instance_id,
            req.generation_id,
        ) {
            return fail(reply, e);
        }
        match group.state {
            GroupState::Empty => fail(reply, GroupError::UnknownMemberId),
            GroupState::PreparingRebalance => fail(reply, GroupError::RebalanceInProgress),
            GroupState::Stable => {
                let assignment = group.members[&req.member_id].assignment.clone();
                let _ = reply.send(group.sync_result(assignment));
            }
            GroupState::CompletingRebalance => {
                if let Some(m) = group.members.get_mut(&req.member_id) {
                    m.awaiting_sync = Some(reply);
                    m.session_deadline = now + m.session_timeout;
                }
                if group.leader.as_deref() == Some(req.member_id.as_str()) {
                    complete_sync(group, req.assignments);
                }
            }
        }
    }

    pub fn heartbeat(&mut self, req: HeartbeatRequest, now: Instant) -> Option<GroupError> {
        let result = self.heartbeat_inner(&req, now);
        self.touch(&req.group_id, false);
        result.err()
    }

    fn heartbeat_inner(&mut self, req: &HeartbeatRequest, now: Instant) -> GroupResult<()> {
        let group = self
            .groups
            .get_mut(&req.group_id)
            .ok_or(GroupError::UnknownMemberId)?;
        check_member(
            group,
            &req.member_id,
            &req.group_instance_id,
            req.generation_id,
        )?;
        let state = group.state;
        if let Some(m) = group.members.get_mut(&req.member_id) {
            m.session_deadline = now + m.session_timeout;
        }
        match state {
            GroupState::Empty => Err(GroupError::UnknownMemberId),
            GroupState::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            GroupState::CompletingRebalance | GroupState::Stable => Ok(()),
        }
    }

    pub fn leave(&mut self, req: LeaveRequest, now: Instant) -> LeaveResult {
        let initial_delay = self.initial_delay;
        let Some(group) = self.groups.get_mut(&req.group_id) else {
            return LeaveResult {
                error: Some(GroupError::UnknownMemberId),
                members: vec![Some(GroupError::UnknownMemberId); req.members.len()],
            };
        };
        let mut members = Vec::with_capacity(req.members.len());
        for m in &req.members {
            let id = match &m.group_instance_id {
                Some(instance) => match group.static_members.get(instance) {
                    Some(id) if m.member_id.is_empty() || *id == m.member_id => Ok(id.clone()),
                    Some(_) => Err(GroupError::FencedInstanceId),
                    None => Err(GroupError::UnknownMemberId),
                },
                None if group.members.contains_key(&m.member_id) => Ok(m.member_id.clone()),
                None => Err(GroupError::UnknownMemberId),
            };
            match id {
                Ok(id) => {
                    group.remove_and_rebalance(&id, now, initial_delay);
                    members.push(None);
                }
                Err(e) => members.push(Some(e)),
            }
        }
        self.touch(&req.group_id, true);
        LeaveResult {
            error: None,
            members,
        }
    }

    /// Checks that a commit is allowed; `Ok` means: write it.
    pub fn check_commit(&mut self, req: &CommitRequest) -> GroupResult<()> {
        self.check_commit_room(req)?;
        let Some(group) = self.groups.get(&req.group_id) else {
            if req.generation_id < 0 {
                return Ok(());
            }
            return Err(GroupError::UnknownMemberId);
        };
        if req.generation_id < 0 && group.state == GroupState::Empty {
            return Ok(());
        }
        if group.state == GroupState::CompletingRebalance {
            return Err(GroupError::RebalanceInProgress);
        }
        check_member(
            group,
            &req.member_id,
            &req.group_instance_id,
            req.generation_id,
        )
    }

    /// TxnOffsetCommit's checks (Kafka's `handleTxnCommitOffsets`): the
    /// member only when one is named, the generation only when one is
    /// given, and no rebalance check (a producer commits for the group it
    /// consumes in, or for a group id alone: kafkajs, Java's
    /// `sendOffsetsToTransaction(offsets, groupId)`).
    pub fn check_txn_commit(&mut self, req: &CommitRequest) -> GroupResult<()> {
        self.check_commit_room(req)?;
        let Some(group) = self.groups.get(&req.group_id) else {
            return Ok(());
        };
        if !req.member_id.is_empty() && !group.members.contains_key(&req.member_id) {
            return Err(fenced_or_unknown(
                group,
                &req.group_instance_id,
                &req.member_id,
            ));
        }
        if req.generation_id >= 0 && req.generation_id != group.generation_id {
            return Err(GroupError::IllegalGeneration);
        }
        Ok(())
    }

    /// The bounds every commit meets: metadata size, offsets per shard, and
    /// room in the `group_state` pool.
    fn check_commit_room(&self, req: &CommitRequest) -> GroupResult<()> {
        if req.offsets.iter().any(|(_, _, c)| {
            c.metadata
                .as_ref()
                .is_some_and(|m| m.len() > OFFSET_METADATA_BYTES_MAX)
        }) {
            return Err(GroupError::OffsetMetadataTooLarge);
        }
        if self.offsets_total + req.offsets.len() > COMMITTED_OFFSETS_PER_SHARD_MAX {
            return Err(GroupError::Shard(crate::ShardError::Busy));
        }
        // As if every offset were new (an upper bound; most replace one).
        let offsets: u64 = req
            .offsets
            .iter()
            .map(|(topic, _, c)| offset_bytes(topic.len(), c))
            .sum();
        let group = match self.groups.get(&req.group_id) {
            Some(_) => 0,
            None => group_bytes(&req.group_id),
        };
        if !self.budget.admits(Pool::GroupState, group + offsets) {
            return Err(GroupError::Shard(crate::ShardError::Busy));
        }
        Ok(())
    }

    /// Applies a recovered or accepted record.
    /// Holds `offsets` of `group_id` committed in producer `producer_id`'s
    /// transaction until its marker (`complete_txn`); charged to the
    /// `group_state` pool meanwhile.
    pub(crate) fn add_txn_offsets(
        &mut self,
        producer_id: i64,
        group_id: String,
        offsets: Vec<(String, i32, CommittedOffset)>,
    ) {
        let bytes: u64 = offsets
            .iter()
            .map(|(t, _, c)| offset_bytes(t.len(), c))
            .sum::<u64>()
            + group_id.len() as u64;
        self.budget.charge_forced(Pool::GroupState, bytes);
        let held = self.pending_txn.entry(producer_id).or_default();
        held.0.push((group_id, offsets));
        held.1 += bytes;
    }

    /// The transaction of `producer_id` ended in this offsets partition:
    /// its held offsets are committed (`commit`) or dropped. Only offsets
    /// of groups in `partition_of` are touched (a producer's transaction
    /// may span several offsets partitions of this shard).
    pub(crate) fn complete_txn(
        &mut self,
        producer_id: i64,
        commit: bool,
        in_partition: impl Fn(&str) -> bool,
    ) {
        let Some((held, bytes)) = self.pending_txn.remove(&producer_id) else {
            return;
        };
        let (done, kept): (Vec<TxnOffsets>, Vec<TxnOffsets>) =
            held.into_iter().partition(|(g, _)| in_partition(g));
        let kept_bytes: u64 = kept
            .iter()
            .map(|(g, o)| {
                o.iter()
                    .map(|(t, _, c)| offset_bytes(t.len(), c))
                    .sum::<u64>()
                    + g.len() as u64
            })
            .sum();
        self.budget
            .discharge(Pool::GroupState, bytes.saturating_sub(kept_bytes));
        if !kept.is_empty() {
            self.pending_txn.insert(producer_id, (kept, kept_bytes));
        }
        if commit {
            for (group_id, offsets) in done {
                self.apply(super::record::GroupRecord::Commit { group_id, offsets });
            }
        }
    }

    /// Whether a transaction holds an offset of `group_id` for
    /// `topic`/`partition` not yet committed or aborted (OffsetFetch with
    /// `require_stable` answers UNSTABLE_OFFSET_COMMIT then).
    pub(crate) fn has_pending_txn_offset(
        &self,
        group_id: &str,
        topic: &str,
        partition: i32,
    ) -> bool {
        self.pending_txn.values().any(|(held, _)| {
            held.iter().any(|(g, o)| {
                g == group_id && o.iter().any(|(t, p, _)| t == topic && *p == partition)
            })
        })
    }

    /// Forgets held transactional offsets of the groups `pick` selects
    /// (their offsets partition is no longer led here).
    pub(crate) fn drop_txn_offsets(&mut self, pick: impl Fn(&str) -> bool) {
        let ids: Vec<i64> = self.pending_txn.keys().copied().collect();
        for id in ids {
            self.complete_txn(id, false, &pick);
        }
    }

    pub(crate) fn apply(&mut self, rec: super::record::GroupRecord) {
        use super::record::GroupRecord;
        match rec {
            GroupRecord::Commit { group_id, offsets } => {
                let Ok(g) = self.group_mut(&group_id) else {
                    return;
                };
                let before = g.offsets.len();
                for (topic, partition, c) in offsets {
                    let topic_len = topic.len();
                    g.offsets_bytes += offset_bytes(topic_len, &c);
                    if let Some(old) = g.offsets.insert((topic, partition), c) {
                        g.offsets_bytes -= offset_bytes(topic_len, &old);
                    }
                }
                self.offsets_total += g.offsets.len() - before;
                self.touch(&group_id, false);
            }
            GroupRecord::OffsetsDeleted {
                group_id,
                partitions,
            } => {
                if let Some(g) = self.groups.get_mut(&group_id) {
                    let before = g.offsets.len();
                    for key in partitions {
                        if let Some(old) = g.offsets.remove(&key) {
                            g.offsets_bytes -= offset_bytes(key.0.len(), &old);
                        }
                    }
                    self.offsets_total -= before - g.offsets.len();
                }
                self.touch(&group_id, false);
            }
            GroupRecord::GroupDeleted { group_id } => {
                if let Some(g) = self.groups.get_mut(&group_id) {
                    self.offsets_total -= g.offsets.len();
                    g.offsets.clear();
                    g.offsets_bytes = 0;
                }
                self.touch(&group_id, false);
            }
            // Loading handles it (`drop_groups`); nothing to apply live.
            GroupRecord::PartitionReset => {}
        }
    }

    /// Forgets every group `pick` selects (their coordinator moved away, or
    /// a snapshot replaces them): members waiting for a join or sync answer
    /// get `error`, deadlines go, and their `group_state` charges are
    /// released. Returns the groups dropped.
    pub fn drop_groups(&mut self, pick: impl Fn(&str) -> bool, error: GroupError) -> usize {
        let ids: Vec<String> = self.groups.keys().filter(|id| pick(id)).cloned().collect();
        for id in &ids {
            let Some(mut g) = self.groups.remove(id) else {
                continue;
            };
            if let Some(d) = g.indexed.take() {
                self.deadlines.remove(&(d, id.clone()));
            }
            for (member_id, m) in g.members.iter_mut() {
                if let Some(tx) = m.awaiting_join.take() {
                    let _ = tx.send(JoinResult::failed(error.clone(), member_id));
                }
                if let Some(tx) = m.awaiting_sync.take() {
                    let _ = tx.send(SyncResult::failed(error.clone()));
                }
            }
            self.offsets_total -= g.offsets.len();
            self.budget.discharge(Pool::GroupState, g.charged);
        }
        ids.len()
    }

    pub fn offset_fetch(&self, req: &OffsetFetchRequest) -> OffsetFetchResult {
        let group = self.groups.get(&req.group_id);
        let offsets = match &req.partitions {
            Some(parts) => parts
                .iter()
                .map(|(t, p)| {
                    let c = group.and_then(|g| g.offsets.get(&(t.clone(), *p)).cloned());
                    (t.clone(), *p, c)
                })
                .collect(),
            None => group
                .map(|g| {
                    g.offsets
                        .iter()
                        .map(|((t, p), c)| (t.clone(), *p, Some(c.clone())))
                        .collect()
                })
                .unwrap_or_default(),
        };
        let unstable = match (&req.partitions, req.require_stable) {
            (Some(parts), true) => parts
                .iter()
                .filter(|(t, p)| self.has_pending_txn_offset(&req.group_id, t, *p))
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        OffsetFetchResult {
            error: None,
            offsets,
            unstable,
        }
    }

    /// The groups `pick` selects.
    pub fn list(&self, pick: impl Fn(&str) -> bool) -> Vec<GroupListing> {
        self.groups
            .iter()
            .filter(|(id, _)| pick(id))
            .map(|(id, g)| GroupListing {
                group_id: id.clone(),
                protocol_type: g.protocol_type.clone(),
                state: g.state.name(),
            })
            .collect()
    }

    pub fn describe(&self, group_id: &str) -> GroupDescription {
        let Some(g) = self.groups.get(group_id) else {
            return GroupDescription {
                error: None,
                group_id: group_id.to_string(),
                state: "Dead",
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
            };
        };
        let protocol = g.protocol.clone().unwrap_or_default();
        let members = g
            .members
            .iter()
            .map(|(id, m)| DescribedMember {
                member_id: id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: m.metadata_for(&protocol),
                assignment: m.assignment.clone(),
            })
            .collect();
        GroupDescription {
            error: None,
            group_id: group_id.to_string(),
            state: g.state.name(),
            protocol_type: g.protocol_type.clone(),
            protocol,
            members,
        }
    }

    /// DeleteGroups: only a group without members can go.
    pub fn check_delete(&self, group_id: &str) -> GroupResult<()> {
        match self.groups.get(group_id) {
            None => Err(GroupError::GroupIdNotFound),
            Some(g) if !g.members.is_empty() => Err(GroupError::NonEmptyGroup),
            Some(_) => Ok(()),
        }
    }

    /// OffsetDelete: the group must exist; partitions of topics the
    /// members consume cannot lose their offsets (we do not parse
    /// subscriptions, so any member blocks it).
    pub fn check_offset_delete(&self, group_id: &str) -> GroupResult<()> {
        match self.groups.get(group_id) {
            None => Err(GroupError::GroupIdNotFound),
            Some(g) if !g.members.is_empty() => Err(GroupError::GroupSubscribedToTopic),
            Some(_) => Ok(()),
        }
    }
}

/// Estimated bytes of a group without members and offsets: its struct, its
/// id (the map key and the deadline index hold a copy each).
fn group_bytes(group_id: &str) -> u64 {
    (size_of::<Group>() + 2 * group_id.len()) as u64 + 2 * ENTRY_OVERHEAD_BYTES
}

/// Estimated bytes of one member: its struct, id (map key, and the static
/// member index for a static member), strings, protocols with their
/// metadata, and assignment.
fn member_bytes(member_id: &str, m: &Member) -> u64 {
    let instance = m.group_instance_id.as_ref().map_or(0, |i| {
        2 * i.len() + member_id.len() + size_of::<String>() * 2
    });
    let protocols: usize = m
        .protocols
        .iter()
        .map(|p| size_of::<Protocol>() + p.name.len() + p.metadata.len())
        .sum();
    let strings = member_id.len() + m.client_id.len() + m.client_host.len();
    (size_of::<String>()
        + size_of::<Member>()
        + strings
        + instance
        + protocols
        + m.assignment.len()) as u64
        + ENTRY_OVERHEAD_BYTES
}

/// `member_bytes` of the member a join would add (its id `id_len` long).
fn join_bytes(req: &JoinRequest, id_len: usize) -> u64 {
    let instance = req
        .group_instance_id
        .as_ref()
        .map_or(0, |i| 2 * i.len() + id_len + size_of::<String>() * 2);
    let protocols: usize = req
        .protocols
        .iter()
        .map(|p| size_of::<Protocol>() + p.name.len() + p.metadata.len())
        .sum();
    let strings = id_len + req.client_id.len() + req.client_host.len();
    (size_of::<String>() + size_of::<Member>() + strings + instance + protocols) as u64
        + ENTRY_OVERHEAD_BYTES
}

/// Estimated bytes of one committed offset of a topic named `topic_len`
/// bytes long: key, value, metadata string.
fn offset_bytes(topic_len: usize, c: &CommittedOffset) -> u64 {
    let metadata = c.metadata.as_ref().map_or(0, String::len);
    (size_of::<(String, i32)>() + size_of::<CommittedOffset>() + topic_len + metadata) as u64
        + ENTRY_OVERHEAD_BYTES
}

fn fenced_or_unknown(group: &Group, instance: &Option<String>, member_id: &str) -> GroupError {
    match instance.as_ref().and_then(|i| group.static_members.get(i)) {
        Some(id) if id != member_id => GroupError::FencedInstanceId,
        _ => GroupError::UnknownMemberId,
    }
}

fn check_member(
    group: &Group,
    member_id: &str,
    instance: &Option<String>,
    generation_id: i32,
) -> GroupResult<()> {
    if !group.members.contains_key(member_id) {
        return Err(fenced_or_unknown(group, instance, member_id));
    }
    if generation_id != group.generation_id {
        return Err(GroupError::IllegalGeneration);
    }
    Ok(())
}

fn new_member(req: &JoinRequest, now: Instant, reply: oneshot::Sender<JoinResult>) -> Member {
    let session_timeout = Duration::from_millis(req.session_timeout_ms as u64);
    let rebalance_ms = req.rebalance_timeout_ms.max(req.session_timeout_ms);
    Member {
        group_instance_id: req.group_instance_id.clone(),
        client_id: req.client_id.clone(),
        client_host: req.client_host.clone(),
        session_timeout,
        rebalance_timeout: Duration::from_millis(rebalance_ms.max(0) as u64),
        protocols: req.protocols.clone(),
        assignment: Bytes::new(),
        session_deadline: now + session_timeout,
        awaiting_join: Some(reply),
        awaiting_sync: None,
    }
}

fn add_member(
    group: &mut Group,
    req: JoinRequest,
    member_id: String,
    now: Instant,
    reply: oneshot::Sender<JoinResult>,
    initial_delay: Duration,
) -> GroupResult<()> {
    if group.members.len() >= GROUP_MEMBERS_MAX {
        let _ = reply.send(JoinResult::failed(
            GroupError::GroupMaxSizeReached,
            &member_id,
        ));
        return Err(GroupError::GroupMaxSizeReached);
    }
    if group.members.is_empty() {
        group.protocol_type = req.protocol_type.clone();
    }
    if let Some(instance) = &req.group_instance_id {
        group
            .static_members
            .insert(instance.clone(), member_id.clone());
    }
    group
        .members
        .insert(member_id, new_member(&req, now, reply));
    group.joined_during_delay = true;
    group.prepare_rebalance(now, initial_delay);
    group.try_complete_join(now);
    Ok(())
}

fn update_member(
    group: &mut Group,
    req: JoinRequest,
    now: Instant,
    reply: oneshot::Sender<JoinResult>,
    initial_delay: Duration,
) {
    let Some(m) = group.members.get_mut(&req.member_id) else {
        return;
    };
    let unchanged = m.protocols == req.protocols;
    m.protocols = req.protocols.clone();
    m.session_timeout = Duration::from_millis(req.session_timeout_ms as u64);
    m.session_deadline = now + m.session_timeout;
    let is_leader = group.leader.as_deref() == Some(req.member_id.as_str());
    match group.state {
        GroupState::CompletingRebalance | GroupState::Stable
            if unchanged && !(is_leader && group.state == GroupState::Stable) =>
        {
            let _ = reply.send(group.current_join_result(&req.member_id));
        }
        _ => {
            if let Some(m) = group.members.get_mut(&req.member_id) {
                m.awaiting_join = Some(reply);
            }
            group.prepare_rebalance(now, initial_delay);
            group.try_complete_join(now);
        }
    }
}

/// A static member came back with a new member id: it replaces the old
/// one. In a stable group with unchanged protocols no rebalance happens:
/// it gets the current generation and, through SyncGroup, its assignment.
fn rejoin_static(
    group: &mut Group,
    req: JoinRequest,
    old_id: &str,
    new_id: String,
    now: Instant,
    reply: oneshot::Sender<JoinResult>,
    initial_delay: Duration,
) -> GroupResult<()> {
    let Some(mut old) = group.members.remove(old_id) else {
        return add_member(group, req, new_id, now, reply, initial_delay);
    };
    if let Some(tx) = old.awaiting_join.take() {
        let _ = tx.send(JoinResult::failed(GroupError::FencedInstanceId, old_id));
    }
    if let Some(tx) = old.awaiting_sync.take() {
        let _ = tx.send(SyncResult::failed(GroupError::FencedInstanceId));
    }
    let unchanged = old.protocols == req.protocols;
    let mut m = new_member(&req, now, reply);
    m.assignment = old.assignment;
    if group.leader.as_deref() == Some(old_id) {
        group.leader = Some(new_id.clone());
    }
    if let Some(instance) = &req.group_instance_id {
        group
            .static_members
            .insert(instance.clone(), new_id.clone());
    }
    if group.state == GroupState::Stable && unchanged {
        let tx = m.awaiting_join.take();
        group.members.insert(new_id.clone(), m);
        if let Some(tx) = tx {
            let _ = tx.send(group.current_join_result(&new_id));
        }
        return Ok(());
    }
    group.members.insert(new_id, m);
    group.prepare_rebalance(now, initial_delay);
    group.try_complete_join(now);
    Ok(())
}

/// The leader's SyncGroup: store the assignments, answer every waiter.
fn complete_sync(group: &mut Group, assignments: Vec<(String, Bytes)>) {
    let mut by_member: HashMap<String, Bytes> = assignments.into_iter().collect();
    let ids: Vec<String> = group.members.keys().cloned().collect();
    for id in &ids {
        let a = by_member.remove(id).unwrap_or_default();
        if let Some(m) = group.members.get_mut(id) {
            m.assignment = a;
        }
    }
    group.state = GroupState::Stable;
    for id in ids {
        let Some(m) = group.members.get_mut(&id) else {
            continue;
        };
        let assignment = m.assignment.clone();
        if let Some(tx) = m.awaiting_sync.take() {
            let _ = tx.send(SyncResult {
                error: None,
                protocol_type: Some(group.protocol_type.clone()),
                protocol_name: group.protocol.clone(),
                assignment,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_millis(100);

    /// A coordinator with a 64 MiB shard budget.
    fn coordinator() -> Coordinator {
        let limits = crate::budget::BudgetLimits::derive(64 << 20, 0, 0);
        Coordinator::new(0, DELAY, Budget::new(limits))
    }

    fn join_req(member_id: &str) -> JoinRequest {
        JoinRequest {
            group_id: "g".into(),
            member_id: member_id.into(),
            group_instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: vec![Protocol {
                name: "range".into(),
                metadata: Bytes::from_static(b"m"),
            }],
            require_known_member_id: false,
        }
    }

    fn join(c: &mut Coordinator, id: &str, now: Instant) -> oneshot::Receiver<JoinResult> {
        let (tx, rx) = oneshot::channel();
        c.join(join_req(id), now, tx);
        rx
    }

    fn got<T>(rx: &mut oneshot::Receiver<T>) -> T {
        rx.try_recv().unwrap().expect("answered")
    }

    #[test]
    fn new_group_waits_for_the_initial_delay_then_syncs() {
        let mut c = coordinator();
        let t0 = Instant::now();
        let mut a = join(&mut c, "", t0);
        let mut b = join(&mut c, "", t0);
        assert!(a.try_recv().unwrap().is_none(), "held during the delay");
        assert_eq!(c.next_deadline(), Some(t0 + DELAY));
        c.expire(t0 + DELAY);
        // b joined during the delay: extended once.
        c.expire(t0 + DELAY * 2);
        let (ra, rb) = (got(&mut a), got(&mut b));
        assert_eq!(ra.generation_id, 1);
        assert_eq!(ra.leader, rb.leader);
        let leader = ra.leader.clone();
        let follower = if ra.member_id == leader {
            rb.member_id.clone()
        } else {
            ra.member_id.clone()
        };
        let (ftx, mut frx) = oneshot::channel();
        c.sync(
            SyncRequest {
                group_id: "g".into(),
                generation_id: 1,
                member_id: follower.clone(),
                group_instance_id: None,
                assignments: vec![],
            },
            t0,
            ftx,
        );
        assert!(frx.try_recv().unwrap().is_none());
        let (ltx, mut lrx) = oneshot::channel();
        c.sync(
            SyncRequest {
                group_id: "g".into(),
                generation_id: 1,
                member_id: leader.clone(),
                group_instance_id: None,
                assignments: vec![
                    (follower.clone(), Bytes::from_static(b"F")),
                    (leader.clone(), Bytes::from_static(b"L")),
                ],
            },
            t0,
            ltx,
        );
        assert_eq!(got(&mut frx).assignment, Bytes::from_static(b"F"));
        assert_eq!(got(&mut lrx).assignment, Bytes::from_static(b"L"));
        let hb = |c: &mut Coordinator, id: &str| {
            c.heartbeat(
                HeartbeatRequest {
                    group_id: "g".into(),
                    generation_id: 1,
                    member_id: id.into(),
                    group_instance_id: None,
                },
                t0,
            )
        };
        assert_eq!(hb(&mut c, &leader), None);
        // The follower leaves: the leader is told to rejoin.
        let left = c.leave(
            LeaveRequest {
                group_id: "g".into(),
                members: vec![LeavingMember {
                    member_id: follower,
                    group_instance_id: None,
                }],
            },
            t0,
        );
        assert_eq!(left.members, vec![None]);
        assert_eq!(hb(&mut c, &leader), Some(GroupError::RebalanceInProgress));
        let mut again = join(&mut c, &leader, t0);
        let r = got(&mut again);
        assert_eq!(r.generation_id, 2);
        assert_eq!(r.members.len(), 1);
    }

    #[test]
    fn sessions_expire_and_idle_groups_have_no_deadline() {
        let mut c = coordinator();
        let t0 = Instant::now();
        let mut a = join(&mut c, "", t0);
        c.expire(t0 + DELAY);
        let id = got(&mut a).member_id;
        assert!(c.next_deadline().is_some());
        c.expire(t0 + Duration::from_secs(11));
        assert_eq!(c.next_deadline(), None, "empty group: no deadline");
        assert_eq!(c.groups(), 0, "nothing committed: forgotten");
        let hb = c.heartbeat(
            HeartbeatRequest {
                group_id: "g".into(),
                generation_id: 1,
                member_id: id,
                group_instance_id: None,
            },
            t0,
        );
        assert_eq!(hb, Some(GroupError::UnknownMemberId));
    }

    #[test]
    fn member_id_required_then_accepted() {
        let mut c = coordinator();
        let t0 = Instant::now();
        let mut req = join_req("");
        req.require_known_member_id = true;
        let (tx, mut rx) = oneshot::channel();
        c.join(req.clone(), t0, tx);
        let r = got(&mut rx);
        assert_eq!(r.error, Some(GroupError::MemberIdRequired));
        req.member_id = r.member_id.clone();
        let (tx, mut rx) = oneshot::channel();
        c.join(req, t0, tx);
        c.expire(t0 + DELAY);
        assert_eq!(got(&mut rx).member_id, r.member_id);
        let mut bogus = join(&mut c, "nobody", t0);
        assert_eq!(got(&mut bogus).error, Some(GroupError::UnknownMemberId));
    }

    #[test]
    fn commits_follow_generations() {
        let mut c = coordinator();
        let commit = |gen, member: &str| CommitRequest {
            group_id: "g".into(),
            generation_id: gen,
            member_id: member.into(),
            group_instance_id: None,
            offsets: vec![],
        };
        assert!(c.check_commit(&commit(-1, "")).is_ok());
        use crate::group::record::GroupRecord;
        let off = |o| CommittedOffset {
            offset: o,
            leader_epoch: -1,
            metadata: None,
            commit_timestamp_ms: 0,
        };
        c.apply(GroupRecord::Commit {
            group_id: "g".into(),
            offsets: vec![("t".into(), 0, off(1)), ("t".into(), 1, off(2))],
        });
        c.apply(GroupRecord::Commit {
            group_id: "g".into(),
            offsets: vec![("t".into(), 0, off(3))],
        });
        assert_eq!(c.committed_offsets(), 2);
        c.apply(GroupRecord::OffsetsDeleted {
            group_id: "g".into(),
            partitions: vec![("t".into(), 1)],
        });
        assert_eq!(c.committed_offsets(), 1);
        c.apply(GroupRecord::GroupDeleted {
            group_id: "g".into(),
        });
        assert_eq!((c.committed_offsets(), c.groups()), (0, 0));
        assert_eq!(
            c.check_commit(&commit(3, "m")),
            Err(GroupError::UnknownMemberId)
        );
        c.apply(GroupRecord::GroupDeleted {
            group_id: "g".into(),
        });
        let fetch = c.offset_fetch(&OffsetFetchRequest {
            group_id: "g".into(),
            partitions: Some(vec![("t".into(), 0)]),
            require_stable: false,
        });
        assert_eq!(fetch.offsets, vec![("t".into(), 0, None)]);
    }

    fn commit_record(offsets: &[(&str, i32, i64)]) -> crate::group::record::GroupRecord {
        crate::group::record::GroupRecord::Commit {
            group_id: "g".into(),
            offsets: offsets
                .iter()
                .map(|(t, p, o)| {
                    let c = CommittedOffset {
                        offset: *o,
                        leader_epoch: -1,
                        metadata: Some("meta".into()),
                        commit_timestamp_ms: 0,
                    };
                    (t.to_string(), *p, c)
                })
                .collect(),
        }
    }

    #[test]
    fn txn_commits_check_a_member_only_when_one_is_named() {
        let mut c = coordinator();
        let t0 = Instant::now();
        let mut a = join(&mut c, "", t0);
        c.expire(t0 + DELAY);
        let member = got(&mut a).member_id;
        let commit = |gen, member: &str| CommitRequest {
            group_id: "g".into(),
            generation_id: gen,
            member_id: member.into(),
            group_instance_id: None,
            offsets: vec![],
        };
        // The group is completing its rebalance, with a member.
        assert_eq!(
            c.check_commit(&commit(-1, "")),
            Err(GroupError::RebalanceInProgress)
        );
        assert_eq!(
            c.check_txn_commit(&commit(-1, "")),
            Ok(()),
            "group id alone"
        );
        assert_eq!(c.check_txn_commit(&commit(1, &member)), Ok(()));
        assert_eq!(
            c.check_txn_commit(&commit(2, &member)),
            Err(GroupError::IllegalGeneration)
        );
        assert_eq!(
            c.check_txn_commit(&commit(1, "stranger")),
            Err(GroupError::UnknownMemberId)
        );
    }

    #[test]
    fn transactional_offsets_count_only_once_committed() {
        let budget = Budget::new(crate::budget::BudgetLimits::derive(64 << 20, 0, 0));
        let mut c = Coordinator::new(0, DELAY, budget.clone());
        let offset = |o: i64| CommittedOffset {
            offset: o,
            leader_epoch: -1,
            metadata: None,
            commit_timestamp_ms: 1,
        };
        let fetch = |c: &Coordinator, require_stable: bool| {
            c.offset_fetch(&OffsetFetchRequest {
                group_id: "g".into(),
                partitions: Some(vec![("t".into(), 0)]),
                require_stable,
            })
        };
        c.add_txn_offsets(7, "g".into(), vec![("t".into(), 0, offset(10))]);
        assert!(
            budget.used(Pool::GroupState) > 0,
            "held offsets are charged"
        );
        assert_eq!(fetch(&c, false).offsets, vec![("t".into(), 0, None)]);
        assert_eq!(fetch(&c, true).unstable, vec![("t".into(), 0)]);
        c.complete_txn(7, false, |_| true);
        assert_eq!(
            fetch(&c, true).offsets,
            vec![("t".into(), 0, None)],
            "aborted"
        );
        assert!(fetch(&c, true).unstable.is_empty());
        assert_eq!(budget.used(Pool::GroupState), 0);
        c.add_txn_offsets(7, "g".into(), vec![("t".into(), 0, offset(20))]);
        c.add_txn_offsets(7, "other".into(), vec![("t".into(), 0, offset(30))]);
        c.complete_txn(7, true, |g| g == "g");
        assert_eq!(
            fetch(&c, false).offsets[0].2.as_ref().map(|o| o.offset),
            Some(20)
        );
        assert!(
            c.has_pending_txn_offset("other", "t", 0),
            "a group of another offsets partition waits for its own marker"
        );
        c.drop_txn_offsets(|_| true);
        assert!(!c.has_pending_txn_offset("other", "t", 0));
    }

    #[test]
    fn group_state_is_charged_to_the_budget_and_released() {
        let budget = Budget::new(crate::budget::BudgetLimits::derive(64 << 20, 0, 0));
        let mut c = Coordinator::new(0, DELAY, budget.clone());
        let used = || budget.used(Pool::GroupState);
        assert_eq!(used(), 0);
        let t0 = Instant::now();
        let mut req = join_req("");
        req.protocols[0].metadata = Bytes::from(vec![7u8; 3000]);
        let (tx, mut rx) = oneshot::channel();
        c.join(req, t0, tx);
        assert!(
            used() > 3000,
            "the member's metadata is charged: {}",
            used()
        );
        c.expire(t0 + DELAY);
        let member = got(&mut rx).member_id;
        let joined = used();
        let (tx, mut rx) = oneshot::channel();
        c.sync(
            SyncRequest {
                group_id: "g".into(),
                generation_id: 1,
                member_id: member.clone(),
                group_instance_id: None,
                assignments: vec![(member.clone(), Bytes::from(vec![1u8; 2000]))],
            },
            t0,
            tx,
        );
        assert_eq!(got(&mut rx).assignment.len(), 2000);
        assert_eq!(used(), joined + 2000, "the assignment is charged");
        c.apply(commit_record(&[("t", 0, 1), ("t", 1, 1)]));
        let committed = used();
        assert!(committed > joined + 2000);
        c.apply(commit_record(&[("t", 0, 5)]));
        assert_eq!(used(), committed, "a replaced offset costs the same");
        c.leave(
            LeaveRequest {
                group_id: "g".into(),
                members: vec![LeavingMember {
                    member_id: member,
                    group_instance_id: None,
                }],
            },
            t0,
        );
        assert!(used() < joined, "the member is released");
        c.apply(crate::group::record::GroupRecord::OffsetsDeleted {
            group_id: "g".into(),
            partitions: vec![("t".into(), 1)],
        });
        c.apply(crate::group::record::GroupRecord::GroupDeleted {
            group_id: "g".into(),
        });
        assert_eq!(c.groups(), 0);
        assert_eq!(used(), 0, "a deleted group releases everything");
    }

    #[test]
    fn dropped_groups_answer_their_waiters_and_release_everything() {
        let budget = Budget::new(crate::budget::BudgetLimits::derive(64 << 20, 0, 0));
        let mut c = Coordinator::new(0, DELAY, budget.clone());
        let t0 = Instant::now();
        let mut waiting = join(&mut c, "", t0);
        c.apply(commit_record(&[("t", 0, 1), ("t", 1, 2)]));
        let mut other = commit_record(&[("t", 0, 9)]);
        if let crate::group::record::GroupRecord::Commit { group_id, .. } = &mut other {
            *group_id = "kept".into();
        }
        c.apply(other);
        assert_eq!((c.groups(), c.committed_offsets()), (2, 3));
        assert!(c.next_deadline().is_some());
        let dropped = c.drop_groups(|id| id == "g", GroupError::NotCoordinator);
        assert_eq!(dropped, 1);
        assert_eq!(
            got(&mut waiting).error,
            Some(GroupError::NotCoordinator),
            "the joining member is told"
        );
        assert_eq!((c.groups(), c.committed_offsets()), (1, 1));
        assert_eq!(c.next_deadline(), None, "its deadline is gone");
        assert_eq!(c.list(|_| true).len(), 1);
        assert_eq!(c.list(|id| id != "kept").len(), 0);
        c.drop_groups(|_| true, GroupError::NotCoordinator);
        assert_eq!(budget.used(Pool::GroupState), 0);
    }

    #[test]
    fn a_full_group_state_pool_refuses_new_members_and_offsets() {
        // 16,000 bytes of shard memory: a 1,000-byte group_state pool.
        let budget = Budget::new(crate::budget::BudgetLimits::derive(16_000, 0, 0));
        assert_eq!(budget.max(Pool::GroupState), 1_000);
        let mut c = Coordinator::new(0, DELAY, budget.clone());
        let t0 = Instant::now();
        let mut req = join_req("");
        req.protocols[0].metadata = Bytes::from(vec![7u8; 2000]);
        let (tx, mut rx) = oneshot::channel();
        c.join(req, t0, tx);
        let busy = GroupError::Shard(crate::ShardError::Busy);
        assert_eq!(got(&mut rx).error, Some(busy.clone()));
        assert_eq!(c.groups(), 0);
        let many: Vec<(String, i32, CommittedOffset)> = (0..20)
            .map(|p| {
                let c = CommittedOffset {
                    offset: 1,
                    leader_epoch: -1,
                    metadata: None,
                    commit_timestamp_ms: 0,
                };
                ("t".to_string(), p, c)
            })
            .collect();
        let commit = CommitRequest {
            group_id: "g".into(),
            generation_id: -1,
            member_id: String::new(),
            group_instance_id: None,
            offsets: many,
        };
        assert_eq!(c.check_commit(&commit), Err(busy));
        assert_eq!(budget.used(Pool::GroupState), 0);
        let refused = budget.stats()[Pool::GroupState as usize].refused;
        assert_eq!(refused, 2);
        // A small join still fits.
        let mut small = join(&mut c, "", t0);
        c.expire(t0 + DELAY);
        assert_eq!(got(&mut small).error, None);
    }
}
