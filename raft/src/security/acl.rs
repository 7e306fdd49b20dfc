//! Kafka ACLs (with KIP-290 prefixed patterns) and their check.
//!
//! `Acls` keeps one persistent map per (resource type, pattern type), from
//! resource name to the entries of that pattern. A check looks up the
//! literal name, the literal wildcard `"*"`, and each prefix of the name
//! (at char boundaries) among the prefixed patterns, only when that type
//! has any: O(name length x log patterns), no allocation, no scan.

use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{SecurityError, ACLS_MAX};

/// The literal resource name that matches every name.
pub const WILDCARD_RESOURCE: &str = "*";
/// The principal that matches every user.
pub const WILDCARD_PRINCIPAL: &str = "User:*";
/// The host that matches every host.
pub const WILDCARD_HOST: &str = "*";
/// The one name of the cluster resource.
pub const CLUSTER_RESOURCE: &str = "kafka-cluster";

macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $code:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash,
            Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
        )]
        #[repr(i8)]
        pub enum $name {
            $($variant = $code),+
        }

        impl $name {
            /// Every value, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Kafka's wire code.
            pub fn code(self) -> i8 {
                self as i8
            }

            /// The value of a wire code; `None` for UNKNOWN, ANY (MATCH)
            /// and codes Kafka does not define.
            pub fn from_code(code: i8) -> Option<$name> {
                match code {
                    $($code => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

wire_enum!(
    /// Kafka's `ResourceType` codes (ANY = 1 is a filter's `None`).
    AclResourceType { Topic = 2, Group = 3, Cluster = 4, TransactionalId = 5 }
);
wire_enum!(
    /// Kafka's `PatternType` codes of a binding (ANY = 1 and MATCH = 2 are
    /// filter kinds: `PatternFilter`).
    AclPatternType { Literal = 3, Prefixed = 4 }
);
wire_enum!(
    /// Kafka's `AclOperation` codes (ANY = 1 is a filter's `None`).
    AclOperation {
        All = 2,
        Read = 3,
        Write = 4,
        Create = 5,
        Delete = 6,
        Alter = 7,
        Describe = 8,
        ClusterAction = 9,
        DescribeConfigs = 10,
        AlterConfigs = 11,
        IdempotentWrite = 12,
    }
);
wire_enum!(
    /// Kafka's `AclPermissionType` codes (ANY = 1 is a filter's `None`).
    AclPermission { Deny = 2, Allow = 3 }
);

impl AclOperation {
    /// Whether an ACL granting `self` allows `op`: the same operation, ALL,
    /// or one that implies it (DESCRIBE by READ, WRITE, DELETE, ALTER;
    /// DESCRIBE_CONFIGS by ALTER_CONFIGS), as Kafka's authorizer.
    pub fn grants(self, op: AclOperation) -> bool {
        use AclOperation::*;
        self == All
            || self == op
            || (op == Describe && matches!(self, Read | Write | Delete | Alter))
            || (op == DescribeConfigs && self == AlterConfigs)
    }
}

/// One ACL as Kafka's `AclBinding`: a resource pattern and an access
/// control entry.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct AclBinding {
    pub resource_type: AclResourceType,
    pub resource_name: String,
    pub pattern_type: AclPatternType,
    /// `"User:alice"`, or `"User:*"` for every user.
    pub principal: String,
    /// An IP address, or `"*"` for every host.
    pub host: String,
    pub operation: AclOperation,
    pub permission: AclPermission,
}

impl AclBinding {
    /// The checks of Kafka's CreateAcls: a resource name (the cluster's is
    /// `kafka-cluster`), no prefixed `*`, a principal `Type:name`, a host.
    pub fn validate(&self) -> Result<(), SecurityError> {
        let bad = |m: String| Err(SecurityError::InvalidRequest(m));
        let name = self.resource_name.as_str();
        if name.is_empty() {
            return bad("Resource name should not be empty".into());
        }
        if self.pattern_type == AclPatternType::Prefixed && name == WILDCARD_RESOURCE {
            return bad("A prefixed pattern cannot be the wildcard '*'".into());
        }
        if self.resource_type == AclResourceType::Cluster && name != CLUSTER_RESOURCE {
            return bad(format!(
                "The only valid name for the CLUSTER resource is {CLUSTER_RESOURCE}"
            ));
        }
        if !self.principal.contains(':') {
            return bad(format!(
                "Could not parse principal from `{}` (no colon is present separating the principal type from the principal name)",
                self.principal
            ));
        }
        if self.host.is_empty() {
            return bad("The host should not be empty (use '*' for any host)".into());
        }
        Ok(())
    }

    fn entry(&self) -> AclEntry {
        AclEntry::new(
            self.principal.clone(),
            self.host.clone(),
            self.operation,
            self.permission,
        )
    }
}

/// The access control entry of an ACL (its resource pattern is the key it
/// is stored under).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclEntry {
    pub principal: String,
    pub host: String,
    pub operation: AclOperation,
    pub permission: AclPermission,
    /// `host` parsed (canonical: an IPv4-mapped IPv6 address is IPv4);
    /// `None` for `*` and for a host that is no IP (it never matches, as in
    /// Kafka, which compares strings).
    host_ip: Option<IpAddr>,
}

impl AclEntry {
    fn new(principal: String, host: String, op: AclOperation, perm: AclPermission) -> AclEntry {
        let host_ip = host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
        AclEntry {
            principal,
            host,
            operation: op,
            permission: perm,
            host_ip,
        }
    }

    /// Whether the entry names this principal (or every user) and this
    /// host (or every host). `host` is canonical.
    fn applies_to(&self, principal: &str, host: IpAddr) -> bool {
        (self.principal == principal || self.principal == WILDCARD_PRINCIPAL)
            && (self.host == WILDCARD_HOST || self.host_ip == Some(host))
    }

    fn same_as(&self, other: &AclEntry) -> bool {
        (&self.principal, &self.host, self.operation, self.permission)
            == (
                &other.principal,
                &other.host,
                other.operation,
                other.permission,
            )
    }
}

/// What the ACLs say about one operation on one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclDecision {
    Allow,
    Deny,
    /// No ACL at all names the resource (for any principal, host or
    /// operation): the broker applies `allow.everyone.if.no.acl.found`.
    NoAclsForResource,
}

/// The resource pattern part of an `AclFilter` (Kafka's pattern types
/// ANY, MATCH, LITERAL and PREFIXED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PatternFilter {
    /// Either pattern type; with a name, the pattern's name equals it.
    Any,
    /// The patterns that apply to the name: literal equal, literal `*`, or
    /// a prefixed pattern that is a prefix of it (with no name: every one).
    Match,
    Literal,
    Prefixed,
}

impl PatternFilter {
    fn admits(self, pattern: AclPatternType) -> bool {
        match self {
            PatternFilter::Any | PatternFilter::Match => true,
            PatternFilter::Literal => pattern == AclPatternType::Literal,
            PatternFilter::Prefixed => pattern == AclPatternType::Prefixed,
        }
    }
}

/// Kafka's `AclBindingFilter` (DescribeAcls, DeleteAcls): `None` is ANY
/// (or a null string); the entry fields match by equality, without
/// wildcard semantics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclFilter {
    pub resource_type: Option<AclResourceType>,
    pub resource_name: Option<String>,
    pub pattern: PatternFilter,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Option<AclOperation>,
    pub permission: Option<AclPermission>,
}

impl AclFilter {
    /// The filter that matches every binding.
    pub fn any() -> AclFilter {
        AclFilter {
            resource_type: None,
            resource_name: None,
            pattern: PatternFilter::Any,
            principal: None,
            host: None,
            operation: None,
            permission: None,
        }
    }

    fn admits_entry(&self, e: &AclEntry) -> bool {
        self.principal.as_ref().map_or(true, |p| *p == e.principal)
            && self.host.as_ref().map_or(true, |h| *h == e.host)
            && self.operation.map_or(true, |o| o == e.operation)
            && self.permission.map_or(true, |p| p == e.permission)
    }
}

/// Entries of one resource pattern, by resource name.
type AclTable = imbl::OrdMap<String, Arc<[AclEntry]>>;

/// Tables: one per (resource type, pattern type).
const TABLES: usize = 8;

fn table_index(resource: AclResourceType, pattern: AclPatternType) -> usize {
    let r = (resource.code() - AclResourceType::Topic.code()) as usize;
    let p = (pattern.code() - AclPatternType::Literal.code()) as usize;
    let i = r * 2 + p;
    assert!(i < TABLES);
    i
}

/// Every ACL binding, indexed for `authorize`. Cloning is O(1).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Acls {
    tables: [AclTable; TABLES],
    /// Bindings over all tables.
    len: usize,
}

impl Acls {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bindings held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Kafka's AclAuthorizer decision for `principal` (`"User:alice"`)
    /// connected from `host` doing `op` on a resource: a matching DENY for
    /// `op` or ALL wins; else a matching ALLOW that grants `op` (see
    /// `AclOperation::grants`) allows; else deny, or `NoAclsForResource`
    /// when no ACL names the resource at all. No allocation.
    pub fn authorize(
        &self,
        principal: &str,
        host: IpAddr,
        op: AclOperation,
        resource_type: AclResourceType,
        name: &str,
    ) -> AclDecision {
        let host = host.to_canonical();
        let (mut found, mut allowed) = (false, false);
        let denied = self.each_applying(resource_type, name, |entries| {
            found |= !entries.is_empty();
            for e in entries.iter().filter(|e| e.applies_to(principal, host)) {
                match e.permission {
                    AclPermission::Deny
                        if e.operation == op || e.operation == AclOperation::All =>
                    {
                        return ControlFlow::Break(());
                    }
                    AclPermission::Allow => allowed |= e.operation.grants(op),
                    AclPermission::Deny => {}
                }
            }
            ControlFlow::Continue(())
        });
        match (denied.is_break(), allowed, found) {
            (true, _, _) => AclDecision::Deny,
            (false, true, _) => AclDecision::Allow,
            (false, false, true) => AclDecision::Deny,
            (false, false, false) => AclDecision::NoAclsForResource,
        }
    }

    /// Calls `f` with the entries of every pattern that applies to `name`:
    /// the literal name, the literal `*`, the prefixed prefixes of `name`.
    fn each_applying(
        &self,
        resource_type: AclResourceType,
        name: &str,
        mut f: impl FnMut(&[AclEntry]) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let literal = &self.tables[table_index(resource_type, AclPatternType::Literal)];
        if let Some(entries) = literal.get(name) {
            f(entries)?;
        }
        if name != WILDCARD_RESOURCE {
            if let Some(entries) = literal.get(WILDCARD_RESOURCE) {
                f(entries)?;
            }
        }
        let prefixed = &self.tables[table_index(resource_type, AclPatternType::Prefixed)];
        if prefixed.is_empty() {
            return ControlFlow::Continue(());
        }
        for (i, c) in name.char_indices() {
            if let Some(entries) = prefixed.get(&name[..i + c.len_utf8()]) {
                f(entries)?;
            }
        }
        ControlFlow::Continue(())
    }

    /// The bindings `filter` matches, in (resource type, pattern type,
    /// name, creation) order; at most `len()`.
    pub fn matching(&self, filter: &AclFilter) -> Vec<AclBinding> {
        let mut out = Vec::new();
        for &resource_type in AclResourceType::ALL {
            if filter.resource_type.is_some_and(|t| t != resource_type) {
                continue;
            }
            for &pattern_type in AclPatternType::ALL {
                if filter.pattern.admits(pattern_type) {
                    self.matching_in(filter, resource_type, pattern_type, &mut out);
                }
            }
        }
        assert!(out.len() <= self.len);
        out
    }

    fn matching_in(
        &self,
        filter: &AclFilter,
        resource_type: AclResourceType,
        pattern_type: AclPatternType,
        out: &mut Vec<AclBinding>,
    ) {
        let table = &self.tables[table_index(resource_type, pattern_type)];
        let mut push = |name: &str, entries: &[AclEntry]| {
            for e in entries.iter().filter(|e| filter.admits_entry(e)) {
                out.push(binding(resource_type, name, pattern_type, e));
            }
        };
        let Some(name) = filter.resource_name.as_deref() else {
            table.iter().for_each(|(n, entries)| push(n, entries));
            return;
        };
        match (filter.pattern, pattern_type) {
            (PatternFilter::Match, AclPatternType::Literal) => {
                // In name order, `*` once.
                let (first, second) = if name <= WILDCARD_RESOURCE {
                    (name, WILDCARD_RESOURCE)
                } else {
                    (WILDCARD_RESOURCE, name)
                };
                for n in [first, second] {
                    if let Some(entries) = table.get(n) {
                        push(n, entries);
                    }
                    if name == WILDCARD_RESOURCE {
                        break;
                    }
                }
            }
            (PatternFilter::Match, AclPatternType::Prefixed) => {
                for (i, c) in name.char_indices() {
                    let prefix = &name[..i + c.len_utf8()];
                    if let Some(entries) = table.get(prefix) {
                        push(prefix, entries);
                    }
                }
            }
            _ => {
                if let Some(entries) = table.get(name) {
                    push(name, entries);
                }
            }
        }
    }

    /// Applies one `CreateAcls` entry: one result per binding. A binding
    /// that exists already is not added again (still `Ok`).
    pub(crate) fn create(&mut self, bindings: &[AclBinding]) -> Vec<Result<(), SecurityError>> {
        let results: Vec<Result<(), SecurityError>> = bindings
            .iter()
            .map(|b| {
                b.validate()?;
                if self.contains(b) {
                    return Ok(());
                }
                if self.len >= ACLS_MAX {
                    return Err(SecurityError::InvalidRequest(format!(
                        "at most {ACLS_MAX} ACLs"
                    )));
                }
                self.insert(b);
                Ok(())
            })
            .collect();
        assert_eq!(results.len(), bindings.len());
        results
    }

    /// Applies one `DeleteAcls` entry: per filter, the bindings it matched
    /// before the entry (a binding two filters match is listed by both and
    /// deleted once, as in Kafka).
    pub(crate) fn delete(&mut self, filters: &[AclFilter]) -> Vec<Vec<AclBinding>> {
        let deleted: Vec<Vec<AclBinding>> = filters.iter().map(|f| self.matching(f)).collect();
        for b in deleted.iter().flatten() {
            self.remove(b);
        }
        deleted
    }

    /// Every binding (the snapshot's).
    pub(crate) fn bindings(&self) -> Vec<AclBinding> {
        self.matching(&AclFilter::any())
    }

    /// The bindings of a snapshot (trusted: written valid; duplicates are
    /// dropped, and nothing is refused by the bound).
    pub(crate) fn from_bindings(bindings: impl IntoIterator<Item = AclBinding>) -> Acls {
        let mut acls = Acls::default();
        for b in bindings {
            if !acls.contains(&b) {
                acls.insert(&b);
            }
        }
        acls
    }

    fn table_of(&self, b: &AclBinding) -> &AclTable {
        &self.tables[table_index(b.resource_type, b.pattern_type)]
    }

    fn contains(&self, b: &AclBinding) -> bool {
        let entry = b.entry();
        self.table_of(b)
            .get(b.resource_name.as_str())
            .is_some_and(|entries| entries.iter().any(|e| e.same_as(&entry)))
    }

    /// Adds a binding that is not there (the caller checked).
    fn insert(&mut self, b: &AclBinding) {
        let table = &mut self.tables[table_index(b.resource_type, b.pattern_type)];
        let mut entries: Vec<AclEntry> = table
            .get(b.resource_name.as_str())
            .map_or_else(Vec::new, |e| e.to_vec());
        entries.push(b.entry());
        table.insert(b.resource_name.clone(), Arc::from(entries));
        self.len += 1;
    }

    fn remove(&mut self, b: &AclBinding) {
        let entry = b.entry();
        let table = &mut self.tables[table_index(b.resource_type, b.pattern_type)];
        let Some(old) = table.get(b.resource_name.as_str()) else {
            return;
        };
        let kept: Vec<AclEntry> = old.iter().filter(|e| !e.same_as(&entry)).cloned().collect();
        let removed = old.len() - kept.len();
        if removed == 0 {
            return;
        }
        if kept.is_empty() {
            table.remove(b.resource_name.as_str());
        } else {
            table.insert(b.resource_name.clone(), Arc::from(kept));
        }
        self.len -= removed;
    }
}

fn binding(
    resource_type: AclResourceType,
    name: &str,
    pattern_type: AclPatternType,
    e: &AclEntry,
) -> AclBinding {
    AclBinding {
        resource_type,
        resource_name: name.to_string(),
        pattern_type,
        principal: e.principal.clone(),
        host: e.host.clone(),
        operation: e.operation,
        permission: e.permission,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AclDecision::{Allow, Deny, NoAclsForResource};
    use AclOperation::*;
    use AclResourceType::{Cluster, Group, Topic};

    fn b(
        resource_type: AclResourceType,
        name: &str,
        pattern_type: AclPatternType,
        principal: &str,
        host: &str,
        operation: AclOperation,
        permission: AclPermission,
    ) -> AclBinding {
        AclBinding {
            resource_type,
            resource_name: name.into(),
            pattern_type,
            principal: principal.into(),
            host: host.into(),
            operation,
            permission,
        }
    }

    fn allow(
        rt: AclResourceType,
        name: &str,
        pt: AclPatternType,
        who: &str,
        op: AclOperation,
    ) -> AclBinding {
        b(rt, name, pt, who, "*", op, AclPermission::Allow)
    }

    fn deny(
        rt: AclResourceType,
        name: &str,
        pt: AclPatternType,
        who: &str,
        op: AclOperation,
    ) -> AclBinding {
        b(rt, name, pt, who, "*", op, AclPermission::Deny)
    }

    const LIT: AclPatternType = AclPatternType::Literal;
    const PRE: AclPatternType = AclPatternType::Prefixed;

    fn acls(bindings: &[AclBinding]) -> Acls {
        let mut acls = Acls::default();
        let results = acls.create(bindings);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        acls
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn check(
        acls: &Acls,
        who: &str,
        op: AclOperation,
        rt: AclResourceType,
        name: &str,
    ) -> AclDecision {
        acls.authorize(who, ip("10.0.0.1"), op, rt, name)
    }

    #[test]
    fn wire_codes_round_trip_and_unknown_codes_are_none() {
        for &op in AclOperation::ALL {
            assert_eq!(AclOperation::from_code(op.code()), Some(op));
        }
        for &rt in AclResourceType::ALL {
            assert_eq!(AclResourceType::from_code(rt.code()), Some(rt));
        }
        assert_eq!(AclOperation::from_code(12), Some(IdempotentWrite));
        assert_eq!(AclPermission::from_code(3), Some(AclPermission::Allow));
        assert_eq!(AclPatternType::from_code(4), Some(PRE));
        for code in [-1, 0, 1, 13] {
            assert_eq!(AclOperation::from_code(code), None, "{code}");
        }
        for code in [0, 1, 2, 5] {
            assert_eq!(AclPatternType::from_code(code), None, "{code}");
        }
        assert_eq!(AclResourceType::from_code(1), None, "ANY");
        assert_eq!(AclResourceType::from_code(6), None, "DELEGATION_TOKEN");
        assert_eq!(AclPermission::from_code(1), None, "ANY");
    }

    #[test]
    fn literal_wildcard_and_prefixed_patterns() {
        let a = acls(&[
            allow(Topic, "orders", LIT, "User:alice", Read),
            allow(Topic, "*", LIT, "User:bob", Write),
            allow(Topic, "app-", PRE, "User:carol", Read),
            allow(Topic, "é", PRE, "User:dave", Read),
        ]);
        assert_eq!(a.len(), 4);
        assert_eq!(check(&a, "User:alice", Read, Topic, "orders"), Allow);
        assert_eq!(check(&a, "User:alice", Write, Topic, "orders"), Deny);
        assert_eq!(
            check(&a, "User:alice", Read, Topic, "other"),
            Deny,
            "bob's * names it"
        );
        assert_eq!(check(&a, "User:bob", Write, Topic, "anything"), Allow);
        assert_eq!(check(&a, "User:bob", Write, Topic, "*"), Allow);
        assert_eq!(check(&a, "User:carol", Read, Topic, "app-x"), Allow);
        assert_eq!(
            check(&a, "User:carol", Read, Topic, "app-"),
            Allow,
            "a prefix of itself"
        );
        assert_eq!(check(&a, "User:carol", Read, Topic, "ap"), Deny);
        assert_eq!(
            check(&a, "User:dave", Read, Topic, "éa"),
            Allow,
            "char boundaries"
        );
        assert_eq!(check(&a, "User:dave", Read, Topic, "e"), Deny);
        // Other resource types share nothing with topics.
        assert_eq!(
            check(&a, "User:alice", Read, Group, "orders"),
            NoAclsForResource
        );
        let p = acls(&[allow(Topic, "app-", PRE, "User:carol", Read)]);
        assert_eq!(
            check(&p, "User:carol", Read, Topic, "ap"),
            NoAclsForResource
        );
        assert_eq!(check(&p, "User:x", Read, Topic, "app-1"), Deny);
        assert_eq!(check(&p, "User:x", Read, Topic, ""), NoAclsForResource);
        assert_eq!(
            check(&Acls::default(), "User:x", Read, Topic, "t"),
            NoAclsForResource
        );
    }

    #[test]
    fn principal_and_host_wildcards() {
        let a = acls(&[
            allow(Group, "g", LIT, "User:*", Read),
            b(
                Topic,
                "t",
                LIT,
                "User:alice",
                "10.0.0.1",
                Write,
                AclPermission::Allow,
            ),
            b(
                Topic,
                "v6",
                LIT,
                "User:alice",
                "0:0:0:0:0:0:0:1",
                Write,
                AclPermission::Allow,
            ),
            b(
                Topic,
                "named",
                LIT,
                "User:alice",
                "localhost",
                Write,
                AclPermission::Allow,
            ),
        ]);
        assert_eq!(check(&a, "User:anyone", Read, Group, "g"), Allow);
        assert_eq!(check(&a, "User:anyone", Describe, Group, "g"), Allow);
        let from = |host: &str, name: &str| a.authorize("User:alice", ip(host), Write, Topic, name);
        assert_eq!(from("10.0.0.1", "t"), Allow);
        assert_eq!(from("10.0.0.2", "t"), Deny);
        assert_eq!(from("::ffff:10.0.0.1", "t"), Allow, "IPv4-mapped");
        assert_eq!(from("::1", "v6"), Allow, "any spelling of the address");
        assert_eq!(
            from("127.0.0.1", "named"),
            Deny,
            "a host name never matches"
        );
        // A wildcard principal only matches users.
        assert_eq!(check(&a, "User:*", Read, Group, "g"), Allow);
    }

    #[test]
    fn deny_wins_and_operations_imply_describe() {
        let a = acls(&[
            allow(Topic, "t", LIT, "User:alice", All),
            deny(Topic, "t", LIT, "User:alice", Write),
            allow(Topic, "r", LIT, "User:alice", Read),
            allow(Topic, "c", LIT, "User:alice", AlterConfigs),
            allow(Topic, "d", LIT, "User:alice", Describe),
            deny(Topic, "x", PRE, "User:*", All),
            allow(Topic, "xy", LIT, "User:alice", Read),
            allow(Cluster, CLUSTER_RESOURCE, LIT, "User:admin", ClusterAction),
        ]);
        assert_eq!(check(&a, "User:alice", Write, Topic, "t"), Deny);
        assert_eq!(check(&a, "User:alice", Read, Topic, "t"), Allow);
        assert_eq!(check(&a, "User:alice", Describe, Topic, "t"), Allow);
        assert_eq!(
            check(&a, "User:alice", Describe, Topic, "r"),
            Allow,
            "READ implies DESCRIBE"
        );
        assert_eq!(check(&a, "User:alice", Write, Topic, "r"), Deny);
        assert_eq!(check(&a, "User:alice", DescribeConfigs, Topic, "c"), Allow);
        assert_eq!(check(&a, "User:alice", Describe, Topic, "c"), Deny);
        assert_eq!(
            check(&a, "User:alice", Read, Topic, "d"),
            Deny,
            "DESCRIBE implies nothing"
        );
        assert_eq!(
            check(&a, "User:alice", Read, Topic, "xy"),
            Deny,
            "a prefixed DENY ALL wins"
        );
        assert_eq!(
            check(&a, "User:admin", ClusterAction, Cluster, CLUSTER_RESOURCE),
            Allow
        );
        assert_eq!(
            check(&a, "User:admin", Alter, Cluster, CLUSTER_RESOURCE),
            Deny
        );
        // A DENY of READ does not deny DESCRIBE.
        let d = acls(&[
            allow(Topic, "t", LIT, "User:alice", Describe),
            deny(Topic, "t", LIT, "User:alice", Read),
        ]);
        assert_eq!(check(&d, "User:alice", Describe, Topic, "t"), Allow);
        assert_eq!(check(&d, "User:alice", Read, Topic, "t"), Deny);
    }

    #[test]
    fn create_is_idempotent_and_validated() {
        let mut a = Acls::default();
        let one = allow(Topic, "t", LIT, "User:alice", Read);
        assert_eq!(a.create(&[one.clone(), one.clone()]), vec![Ok(()), Ok(())]);
        assert_eq!(a.create(std::slice::from_ref(&one)), vec![Ok(())]);
        assert_eq!(a.len(), 1);
        let bad = [
            allow(Topic, "", LIT, "User:alice", Read),
            allow(Topic, "*", PRE, "User:alice", Read),
            allow(Topic, "", PRE, "User:alice", Read),
            allow(Cluster, "other", LIT, "User:alice", Alter),
            allow(Topic, "t", LIT, "alice", Read),
            b(
                Topic,
                "t",
                LIT,
                "User:alice",
                "",
                Read,
                AclPermission::Allow,
            ),
        ];
        for r in a.create(&bad) {
            assert!(matches!(r, Err(SecurityError::InvalidRequest(_))), "{r:?}");
        }
        assert_eq!(a.len(), 1);
        // The same pattern with another host or permission is another ACL.
        let other_host = b(
            Topic,
            "t",
            LIT,
            "User:alice",
            "10.0.0.9",
            Read,
            AclPermission::Allow,
        );
        let other_perm = deny(Topic, "t", LIT, "User:alice", Read);
        assert_eq!(a.create(&[other_host, other_perm]), vec![Ok(()), Ok(())]);
        assert_eq!(a.len(), 3);
        let back = Acls::from_bindings(a.bindings());
        assert_eq!(back, a);
    }

    fn names(bindings: &[AclBinding]) -> Vec<String> {
        bindings
            .iter()
            .map(|b| {
                format!(
                    "{:?}:{}:{:?}:{}",
                    b.resource_type, b.resource_name, b.pattern_type, b.principal
                )
            })
            .collect()
    }

    fn sample() -> Acls {
        acls(&[
            allow(Topic, "foo", LIT, "User:a", Read),
            allow(Topic, "*", LIT, "User:b", Read),
            allow(Topic, "fo", PRE, "User:c", Read),
            allow(Topic, "foo", PRE, "User:d", Write),
            allow(Topic, "bar", LIT, "User:e", Read),
            allow(Group, "foo", LIT, "User:f", Read),
        ])
    }

    #[test]
    fn filters_match_like_kafka() {
        let a = sample();
        let filter =
            |rt: Option<AclResourceType>, name: Option<&str>, pattern: PatternFilter| AclFilter {
                resource_type: rt,
                resource_name: name.map(str::to_string),
                pattern,
                ..AclFilter::any()
            };
        assert_eq!(a.matching(&AclFilter::any()).len(), 6);
        assert_eq!(
            names(&a.matching(&filter(Some(Topic), Some("foo"), PatternFilter::Match))),
            vec![
                "Topic:*:Literal:User:b",
                "Topic:foo:Literal:User:a",
                "Topic:fo:Prefixed:User:c",
                "Topic:foo:Prefixed:User:d"
            ]
        );
        assert_eq!(
            names(&a.matching(&filter(None, Some("foo"), PatternFilter::Any))),
            vec![
                "Topic:foo:Literal:User:a",
                "Topic:foo:Prefixed:User:d",
                "Group:foo:Literal:User:f"
            ]
        );
        assert_eq!(
            names(&a.matching(&filter(Some(Topic), Some("foo"), PatternFilter::Literal))),
            vec!["Topic:foo:Literal:User:a"]
        );
        assert_eq!(
            names(&a.matching(&filter(Some(Topic), Some("fo"), PatternFilter::Prefixed))),
            vec!["Topic:fo:Prefixed:User:c"]
        );
        assert_eq!(
            a.matching(&filter(Some(Topic), None, PatternFilter::Prefixed))
                .len(),
            2
        );
        assert_eq!(
            a.matching(&filter(Some(Topic), None, PatternFilter::Match))
                .len(),
            5
        );
        assert_eq!(
            names(&a.matching(&filter(Some(Topic), Some("*"), PatternFilter::Match))),
            vec!["Topic:*:Literal:User:b"]
        );
        let by_entry = AclFilter {
            principal: Some("User:d".into()),
            operation: Some(Write),
            permission: Some(AclPermission::Allow),
            host: Some("*".into()),
            ..AclFilter::any()
        };
        assert_eq!(
            names(&a.matching(&by_entry)),
            vec!["Topic:foo:Prefixed:User:d"]
        );
        let wildcard_principal = AclFilter {
            principal: Some("User:*".into()),
            ..AclFilter::any()
        };
        assert!(
            a.matching(&wildcard_principal).is_empty(),
            "no wildcard semantics in filters"
        );
        let deny_only = AclFilter {
            permission: Some(AclPermission::Deny),
            ..AclFilter::any()
        };
        assert!(a.matching(&deny_only).is_empty());
    }

    #[test]
    fn delete_answers_per_filter_and_removes() {
        let mut a = sample();
        let topic_foo = AclFilter {
            resource_type: Some(Topic),
            resource_name: Some("foo".into()),
            pattern: PatternFilter::Match,
            ..AclFilter::any()
        };
        let user_a = AclFilter {
            principal: Some("User:a".into()),
            ..AclFilter::any()
        };
        let none = AclFilter {
            principal: Some("User:nobody".into()),
            ..AclFilter::any()
        };
        let deleted = a.delete(&[topic_foo.clone(), user_a, none]);
        assert_eq!(deleted[0].len(), 4);
        assert_eq!(
            names(&deleted[1]),
            vec!["Topic:foo:Literal:User:a"],
            "listed by both"
        );
        assert!(deleted[2].is_empty());
        assert_eq!(a.len(), 2);
        assert!(a.matching(&topic_foo).is_empty());
        assert_eq!(check(&a, "User:e", Read, Topic, "bar"), Allow);
        assert_eq!(check(&a, "User:b", Read, Topic, "foo"), NoAclsForResource);
        assert_eq!(a.delete(&[AclFilter::any()])[0].len(), 2);
        assert!(a.is_empty());
        assert_eq!(a, Acls::default(), "empty tables are dropped");
    }
}
