//! Client quotas (KIP-55, KIP-546; IP entities of KIP-612): values by
//! entity, Kafka's precedence to resolve one, and DescribeClientQuotas'
//! filters.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{SecurityError, QUOTA_ENTITIES_MAX};

/// Bytes/s a producer may send (user and client-id entities; integral).
pub const PRODUCER_BYTE_RATE: &str = "producer_byte_rate";
/// Bytes/s a consumer may fetch (user and client-id entities; integral).
pub const CONSUMER_BYTE_RATE: &str = "consumer_byte_rate";
/// Percent of a request handler thread (user and client-id entities).
pub const REQUEST_PERCENTAGE: &str = "request_percentage";
/// Partition mutations/s (user and client-id entities).
pub const CONTROLLER_MUTATION_RATE: &str = "controller_mutation_rate";
/// Connections/s (IP entities only; integral).
pub const CONNECTION_CREATION_RATE: &str = "connection_creation_rate";

/// The keys of user / client-id entities, and whether each is integral
/// (Kafka's LONG keys).
const CLIENT_KEYS: [(&str, bool); 4] = [
    (PRODUCER_BYTE_RATE, true),
    (CONSUMER_BYTE_RATE, true),
    (REQUEST_PERCENTAGE, false),
    (CONTROLLER_MUTATION_RATE, false),
];
/// The keys of IP entities (Kafka's INT key).
const IP_KEYS: [(&str, bool); 1] = [(CONNECTION_CREATION_RATE, true)];

/// The name of one entity component: Kafka's `<default>` (a null name on
/// the wire) or a name.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub enum QuotaName {
    Default,
    Named(String),
}

impl QuotaName {
    fn as_ref(&self) -> NameRef<'_> {
        match self {
            QuotaName::Default => NameRef::Default,
            QuotaName::Named(n) => NameRef::Named(n),
        }
    }
}

/// A quota entity: user and/or client-id, or an IP alone.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct QuotaEntity {
    pub user: Option<QuotaName>,
    pub client_id: Option<QuotaName>,
    /// Only with neither `user` nor `client_id` (connection_creation_rate).
    pub ip: Option<QuotaName>,
}

/// One component type of a quota entity (Kafka's entity type strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum QuotaEntityType {
    User,
    ClientId,
    Ip,
}

impl QuotaEntityType {
    /// `"user"`, `"client-id"`, `"ip"`.
    pub fn name(self) -> &'static str {
        match self {
            QuotaEntityType::User => "user",
            QuotaEntityType::ClientId => "client-id",
            QuotaEntityType::Ip => "ip",
        }
    }

    pub fn from_name(name: &str) -> Option<QuotaEntityType> {
        match name {
            "user" => Some(QuotaEntityType::User),
            "client-id" => Some(QuotaEntityType::ClientId),
            "ip" => Some(QuotaEntityType::Ip),
            _ => None,
        }
    }
}

impl QuotaEntity {
    /// The component of `kind`.
    pub fn get(&self, kind: QuotaEntityType) -> Option<&QuotaName> {
        match kind {
            QuotaEntityType::User => self.user.as_ref(),
            QuotaEntityType::ClientId => self.client_id.as_ref(),
            QuotaEntityType::Ip => self.ip.as_ref(),
        }
    }

    /// Components present.
    fn width(&self) -> usize {
        [&self.user, &self.client_id, &self.ip]
            .iter()
            .filter(|c| c.is_some())
            .count()
    }

    fn key(&self) -> EntityRef<'_> {
        EntityRef {
            user: self.user.as_ref().map(QuotaName::as_ref),
            client_id: self.client_id.as_ref().map(QuotaName::as_ref),
            ip: self.ip.as_ref().map(QuotaName::as_ref),
        }
    }
}

// Lookups without allocation: the map's key `QuotaEntity` borrows as
// `dyn EntityKey`, which a borrowed `EntityRef` of `&str`s also is; both
// order by `EntityRef`, so the map's order is the same either way.

/// A borrowed entity name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum NameRef<'a> {
    Default,
    Named(&'a str),
}

/// A borrowed entity; its order is the order of `QuotaEntity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct EntityRef<'a> {
    user: Option<NameRef<'a>>,
    client_id: Option<NameRef<'a>>,
    ip: Option<NameRef<'a>>,
}

trait EntityKey {
    fn key(&self) -> EntityRef<'_>;
}

impl EntityKey for QuotaEntity {
    fn key(&self) -> EntityRef<'_> {
        QuotaEntity::key(self)
    }
}

impl EntityKey for EntityRef<'_> {
    fn key(&self) -> EntityRef<'_> {
        *self
    }
}

impl<'a> Borrow<dyn EntityKey + 'a> for QuotaEntity {
    fn borrow(&self) -> &(dyn EntityKey + 'a) {
        self
    }
}

impl PartialEq for dyn EntityKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for dyn EntityKey + '_ {}

impl PartialOrd for dyn EntityKey + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn EntityKey + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for QuotaEntity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for QuotaEntity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// An entity's quotas by key.
pub type QuotaValues = BTreeMap<String, f64>;

/// The changes of one entity's quotas: per key, a value to set or `None`
/// to remove it.
pub type QuotaOps = Vec<(String, Option<f64>)>;

/// One entity's changes, as AlterClientQuotas carries them.
pub type QuotaAlteration = (QuotaEntity, QuotaOps);

/// Quotas by entity: a persistent map, cloned in O(1).
pub type QuotaMap = imbl::OrdMap<QuotaEntity, Arc<QuotaValues>>;

/// Which parts of a client's identity its quota applies to
/// (`Quotas::resolve_scoped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaScope {
    pub user: bool,
    pub client_id: bool,
}

/// How a DescribeClientQuotas filter component matches names (Kafka's
/// match types EXACT, DEFAULT, SPECIFIED).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuotaMatch {
    Exact(String),
    Default,
    /// Any name, `<default>` included (Kafka's SPECIFIED: the entity has
    /// this component).
    Specified,
}

/// One component of a DescribeClientQuotas filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaFilterComponent {
    pub entity_type: QuotaEntityType,
    pub matching: QuotaMatch,
}

/// A DescribeClientQuotas filter: every component must match; `strict`:
/// the entity has no other component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaFilter {
    pub components: Vec<QuotaFilterComponent>,
    pub strict: bool,
}

/// Every client quota. Cloning is O(1).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quotas {
    entities: QuotaMap,
}

impl Quotas {
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    /// Entities with at least one quota.
    pub fn len(&self) -> usize {
        self.entities.len()
    }

    /// Every entity and its quotas, in entity order.
    pub fn entities(&self) -> &QuotaMap {
        &self.entities
    }

    /// The quotas of exactly `entity`.
    pub fn get(&self, entity: &QuotaEntity) -> Option<&Arc<QuotaValues>> {
        self.entities.get(entity)
    }

    fn value(&self, entity: EntityRef<'_>, key: &str) -> Option<f64> {
        let values = self.entities.get(&entity as &dyn EntityKey)?;
        values.get(key).copied()
    }

    /// The quota `key` of a client, by Kafka's precedence, most specific
    /// first: (user, client-id), (user, default client), (user), (default
    /// user, client-id), (default user, default client), (default user),
    /// (client-id), (default client). No allocation.
    pub fn resolve(&self, user: &str, client_id: &str, key: &str) -> Option<f64> {
        self.resolve_scoped(user, client_id, key).map(|(v, _)| v)
    }

    /// As `resolve`, with the scope of the quota found: whether its entity
    /// names a user and a client id (a default counts). Clients that share
    /// a scope share the quota, as Kafka's quota metric tags do: a quota
    /// of user `alice` alone holds all her client ids together.
    pub fn resolve_scoped(
        &self,
        user: &str,
        client_id: &str,
        key: &str,
    ) -> Option<(f64, QuotaScope)> {
        if self.entities.is_empty() {
            return None;
        }
        let (u, c) = (NameRef::Named(user), NameRef::Named(client_id));
        let d = NameRef::Default;
        let order = [
            (Some(u), Some(c)),
            (Some(u), Some(d)),
            (Some(u), None),
            (Some(d), Some(c)),
            (Some(d), Some(d)),
            (Some(d), None),
            (None, Some(c)),
            (None, Some(d)),
        ];
        order.into_iter().find_map(|(user, client_id)| {
            let scope = QuotaScope {
                user: user.is_some(),
                client_id: client_id.is_some(),
            };
            let entity = EntityRef {
                user,
                client_id,
                ip: None,
            };
            self.value(entity, key).map(|v| (v, scope))
        })
    }

    /// The quota `key` (`connection_creation_rate`) of connections from
    /// `ip`: the IP's own, else the default IP's.
    pub fn resolve_ip(&self, ip: IpAddr, key: &str) -> Option<f64> {
        if self.entities.is_empty() {
            return None;
        }
        let name = ip.to_canonical().to_string();
        let found = [NameRef::Named(&name), NameRef::Default]
            .into_iter()
            .find_map(|ip| {
                let entity = EntityRef {
                    user: None,
                    client_id: None,
                    ip: Some(ip),
                };
                self.value(entity, key)
            });
        found
    }

    /// DescribeClientQuotas: the entities `filter` matches, with their
    /// quotas, in entity order (at most `len()`). A component type given
    /// twice, or IP with user or client-id: `InvalidRequest`. O(entities),
    /// as Kafka's.
    pub fn describe(
        &self,
        filter: &QuotaFilter,
    ) -> Result<Vec<(QuotaEntity, Arc<QuotaValues>)>, SecurityError> {
        let bad = |m: String| Err(SecurityError::InvalidRequest(m));
        let mut kinds = BTreeSet::new();
        for c in &filter.components {
            if !kinds.insert(c.entity_type) {
                return bad(format!(
                    "Entity type {} cannot appear more than once in the filter.",
                    c.entity_type.name()
                ));
            }
        }
        if kinds.contains(&QuotaEntityType::Ip) && kinds.len() > 1 {
            return bad("Invalid entity filter component combination. IP filter component should not be used with user or clientId filter component.".into());
        }
        let components: Vec<(QuotaEntityType, QuotaMatch)> = filter
            .components
            .iter()
            .map(|c| (c.entity_type, normalized_match(c)))
            .collect();
        let out: Vec<(QuotaEntity, Arc<QuotaValues>)> = self
            .entities
            .iter()
            .filter(|(e, _)| !filter.strict || e.width() == components.len())
            .filter(|(e, _)| components.iter().all(|(k, m)| matches(e.get(*k), m)))
            .map(|(e, v)| (e.clone(), Arc::clone(v)))
            .collect();
        assert!(out.len() <= self.entities.len());
        Ok(out)
    }

    /// Applies one `AlterClientQuotas` entry: one result per entity, in
    /// order. An entity's keys change together or not at all; an entity
    /// named twice is refused the second time (as Kafka's); an entity left
    /// without keys is removed.
    pub fn alter(&mut self, alterations: &[QuotaAlteration]) -> Vec<Result<(), SecurityError>> {
        let mut seen = BTreeSet::new();
        let results: Vec<Result<(), SecurityError>> = alterations
            .iter()
            .map(|(entity, ops)| {
                let entity = validated(entity, ops)?;
                if !seen.insert(entity.clone()) {
                    return Err(SecurityError::InvalidRequest(format!(
                        "Ignoring duplicate entity {entity:?}"
                    )));
                }
                self.apply(entity, ops)
            })
            .collect();
        assert_eq!(results.len(), alterations.len());
        results
    }

    fn apply(
        &mut self,
        entity: QuotaEntity,
        ops: &[(String, Option<f64>)],
    ) -> Result<(), SecurityError> {
        let old = self.entities.get(&entity);
        if old.is_none() && self.entities.len() >= QUOTA_ENTITIES_MAX {
            return Err(SecurityError::InvalidRequest(format!(
                "at most {QUOTA_ENTITIES_MAX} client quota entities"
            )));
        }
        let mut values = old.map_or_else(QuotaValues::new, |v| QuotaValues::clone(v));
        for (key, value) in ops {
            match value {
                Some(v) => values.insert(key.clone(), *v),
                None => values.remove(key),
            };
        }
        if values.is_empty() {
            self.entities.remove(&entity);
        } else {
            self.entities.insert(entity, Arc::new(values));
        }
        Ok(())
    }

    /// The quotas of a snapshot (trusted: written valid).
    pub(crate) fn from_entries(
        entries: impl IntoIterator<Item = (QuotaEntity, QuotaValues)>,
    ) -> Quotas {
        let mut quotas = Quotas::default();
        for (entity, values) in entries {
            if !values.is_empty() {
                quotas.entities.insert(entity, Arc::new(values));
            }
        }
        quotas
    }
}

/// An EXACT IP name as stored (canonical), so that any spelling matches.
fn normalized_match(c: &QuotaFilterComponent) -> QuotaMatch {
    match (&c.matching, c.entity_type) {
        (QuotaMatch::Exact(name), QuotaEntityType::Ip) => match name.parse::<IpAddr>() {
            Ok(ip) => QuotaMatch::Exact(ip.to_canonical().to_string()),
            Err(_) => c.matching.clone(),
        },
        (m, _) => m.clone(),
    }
}

fn matches(name: Option<&QuotaName>, m: &QuotaMatch) -> bool {
    match (name, m) {
        (None, _) => false,
        (Some(_), QuotaMatch::Specified) => true,
        (Some(QuotaName::Default), QuotaMatch::Default) => true,
        (Some(QuotaName::Named(n)), QuotaMatch::Exact(want)) => n == want,
        _ => false,
    }
}

/// Checks one alteration of AlterClientQuotas as Kafka does (entity shape,
/// names, keys valid for the entity, duplicate keys, integral values) and
/// also refuses negative and non-finite values. The broker can call it to
/// answer `validate_only`. A removal (`None`) of any key is accepted.
pub fn validate_quota_alteration(
    entity: &QuotaEntity,
    ops: &[(String, Option<f64>)],
) -> Result<(), SecurityError> {
    validated(entity, ops).map(|_| ())
}

/// `validate_quota_alteration`, returning the entity as stored (an IP
/// name canonical).
fn validated(
    entity: &QuotaEntity,
    ops: &[(String, Option<f64>)],
) -> Result<QuotaEntity, SecurityError> {
    let bad = |m: String| Err(SecurityError::InvalidRequest(m));
    let entity = validated_entity(entity)?;
    let keys: &[(&str, bool)] = if entity.ip.is_some() {
        &IP_KEYS
    } else {
        &CLIENT_KEYS
    };
    let mut seen = BTreeSet::new();
    for (key, value) in ops {
        if !seen.insert(key.as_str()) {
            return bad(format!(
                "Duplicate quota key {key} not updating quota for this entity"
            ));
        }
        let Some(v) = *value else {
            continue;
        };
        let Some(&(_, integral)) = keys.iter().find(|(k, _)| k == key) else {
            return bad(format!("Invalid configuration key {key}"));
        };
        if !v.is_finite() || v < 0.0 {
            return bad(format!("Quota {key} must be a finite, non-negative number"));
        }
        if integral && v.fract() != 0.0 {
            return bad(format!("Configuration {key} must be a Long value"));
        }
    }
    Ok(entity)
}

fn validated_entity(entity: &QuotaEntity) -> Result<QuotaEntity, SecurityError> {
    let bad = |m: &str| Err(SecurityError::InvalidRequest(m.to_string()));
    let empty = |n: &Option<QuotaName>| matches!(n, Some(QuotaName::Named(s)) if s.is_empty());
    if entity.width() == 0 {
        return bad("Invalid empty client quota entity");
    }
    if entity.ip.is_some() && entity.width() > 1 {
        return bad("Invalid quota entity combination, IP entity should not be combined with User or ClientId");
    }
    if empty(&entity.user) || empty(&entity.client_id) || empty(&entity.ip) {
        return bad("Empty entity name not supported");
    }
    let mut out = entity.clone();
    if let Some(QuotaName::Named(ip)) = &entity.ip {
        let Ok(parsed) = ip.parse::<IpAddr>() else {
            return Err(SecurityError::InvalidRequest(format!(
                "{ip} is not a valid IP"
            )));
        };
        out.ip = Some(QuotaName::Named(parsed.to_canonical().to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(s: &str) -> Option<QuotaName> {
        Some(QuotaName::Named(s.into()))
    }

    const DEFAULT: Option<QuotaName> = Some(QuotaName::Default);

    fn entity(user: Option<QuotaName>, client_id: Option<QuotaName>) -> QuotaEntity {
        QuotaEntity {
            user,
            client_id,
            ip: None,
        }
    }

    fn ip_entity(ip: Option<QuotaName>) -> QuotaEntity {
        QuotaEntity {
            user: None,
            client_id: None,
            ip,
        }
    }

    fn set(key: &str, v: f64) -> (String, Option<f64>) {
        (key.to_string(), Some(v))
    }

    fn unset(key: &str) -> (String, Option<f64>) {
        (key.to_string(), None)
    }

    fn alter_one(
        q: &mut Quotas,
        e: QuotaEntity,
        ops: Vec<(String, Option<f64>)>,
    ) -> Result<(), SecurityError> {
        q.alter(&[(e, ops)]).remove(0)
    }

    /// Kafka's eight levels, most specific first: each added level (from
    /// the least specific) takes over.
    #[test]
    fn resolution_follows_kafkas_precedence() {
        let levels = [
            entity(None, DEFAULT),
            entity(None, named("c")),
            entity(DEFAULT, None),
            entity(DEFAULT, DEFAULT),
            entity(DEFAULT, named("c")),
            entity(named("u"), None),
            entity(named("u"), DEFAULT),
            entity(named("u"), named("c")),
        ];
        let mut q = Quotas::default();
        assert_eq!(q.resolve("u", "c", PRODUCER_BYTE_RATE), None);
        for (i, e) in levels.iter().enumerate() {
            alter_one(&mut q, e.clone(), vec![set(PRODUCER_BYTE_RATE, i as f64)]).expect("set");
            assert_eq!(
                q.resolve("u", "c", PRODUCER_BYTE_RATE),
                Some(i as f64),
                "{e:?}"
            );
        }
        assert_eq!(q.len(), 8);
        assert_eq!(q.resolve("u", "c", CONSUMER_BYTE_RATE), None, "per key");
        // Other clients fall to the levels that apply to them.
        assert_eq!(q.resolve("u", "other", PRODUCER_BYTE_RATE), Some(6.0));
        assert_eq!(q.resolve("v", "c", PRODUCER_BYTE_RATE), Some(4.0));
        assert_eq!(q.resolve("v", "other", PRODUCER_BYTE_RATE), Some(3.0));
        // Removing the most specific level uncovers the next one.
        alter_one(&mut q, levels[7].clone(), vec![unset(PRODUCER_BYTE_RATE)]).expect("unset");
        assert_eq!(q.len(), 7, "an entity without keys is removed");
        assert_eq!(q.resolve("u", "c", PRODUCER_BYTE_RATE), Some(6.0));
        // A key missing at a specific level is looked up further down.
        alter_one(
            &mut q,
            levels[6].clone(),
            vec![set(REQUEST_PERCENTAGE, 50.0), unset(PRODUCER_BYTE_RATE)],
        )
        .expect("swap keys");
        assert_eq!(q.resolve("u", "c", PRODUCER_BYTE_RATE), Some(5.0));
        assert_eq!(q.resolve("u", "c", REQUEST_PERCENTAGE), Some(50.0));
    }

    #[test]
    fn ip_quotas_resolve_by_address() {
        let mut q = Quotas::default();
        let rate = |v| vec![set(CONNECTION_CREATION_RATE, v)];
        alter_one(&mut q, ip_entity(named("0:0:0:0:0:0:0:1")), rate(5.0)).expect("v6");
        alter_one(&mut q, ip_entity(named("10.0.0.1")), rate(7.0)).expect("v4");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(q.resolve_ip(ip("::1"), CONNECTION_CREATION_RATE), Some(5.0));
        assert_eq!(
            q.resolve_ip(ip("::ffff:10.0.0.1"), CONNECTION_CREATION_RATE),
            Some(7.0)
        );
        assert_eq!(q.resolve_ip(ip("10.0.0.2"), CONNECTION_CREATION_RATE), None);
        alter_one(&mut q, ip_entity(DEFAULT), rate(1.0)).expect("default");
        assert_eq!(
            q.resolve_ip(ip("10.0.0.2"), CONNECTION_CREATION_RATE),
            Some(1.0)
        );
        assert!(
            q.get(&ip_entity(named("::1"))).is_some(),
            "stored canonical"
        );
        assert_eq!(q.resolve("u", "c", CONNECTION_CREATION_RATE), None);
    }

    #[test]
    fn alterations_are_validated_per_entity() {
        let mut q = Quotas::default();
        let invalid = |e: QuotaEntity, ops: Vec<(String, Option<f64>)>| {
            let r = validate_quota_alteration(&e, &ops);
            assert!(
                matches!(r, Err(SecurityError::InvalidRequest(_))),
                "{e:?} {ops:?}: {r:?}"
            );
        };
        let u = || entity(named("u"), None);
        invalid(u(), vec![set("unknown_rate", 1.0)]);
        invalid(u(), vec![set(PRODUCER_BYTE_RATE, -1.0)]);
        invalid(u(), vec![set(PRODUCER_BYTE_RATE, f64::NAN)]);
        invalid(u(), vec![set(REQUEST_PERCENTAGE, f64::INFINITY)]);
        invalid(u(), vec![set(PRODUCER_BYTE_RATE, 1.5)]);
        invalid(u(), vec![set(CONNECTION_CREATION_RATE, 1.0)]);
        invalid(
            u(),
            vec![set(REQUEST_PERCENTAGE, 1.0), unset(REQUEST_PERCENTAGE)],
        );
        invalid(entity(None, None), vec![set(PRODUCER_BYTE_RATE, 1.0)]);
        invalid(entity(named(""), None), vec![set(PRODUCER_BYTE_RATE, 1.0)]);
        invalid(entity(None, named("")), vec![set(PRODUCER_BYTE_RATE, 1.0)]);
        invalid(
            ip_entity(named("host.example")),
            vec![set(CONNECTION_CREATION_RATE, 1.0)],
        );
        invalid(
            ip_entity(named("10.0.0.1")),
            vec![set(PRODUCER_BYTE_RATE, 1.0)],
        );
        invalid(
            QuotaEntity {
                ip: named("10.0.0.1"),
                ..u()
            },
            vec![set(CONNECTION_CREATION_RATE, 1.0)],
        );
        validate_quota_alteration(
            &u(),
            &[set(REQUEST_PERCENTAGE, 12.5), set(PRODUCER_BYTE_RATE, 0.0)],
        )
        .expect("valid");
        validate_quota_alteration(&u(), &[unset("anything")]).expect("removals are not checked");
        // One bad key: the entity is not changed; the next entity is.
        let results = q.alter(&[
            (u(), vec![set(CONSUMER_BYTE_RATE, 100.0), set("bad", 1.0)]),
            (
                entity(None, named("c")),
                vec![set(CONSUMER_BYTE_RATE, 100.0)],
            ),
            (
                entity(None, named("c")),
                vec![set(CONSUMER_BYTE_RATE, 200.0)],
            ),
        ]);
        assert!(results[0].is_err());
        assert_eq!(results[1], Ok(()));
        assert!(
            matches!(&results[2], Err(SecurityError::InvalidRequest(m)) if m.contains("duplicate"))
        );
        assert!(q.get(&u()).is_none());
        assert_eq!(q.resolve("x", "c", CONSUMER_BYTE_RATE), Some(100.0));
        // Removing keys of an entity that has none is a no-op.
        assert_eq!(
            q.alter(&[(u(), vec![unset(PRODUCER_BYTE_RATE)])]),
            vec![Ok(())]
        );
        assert_eq!(q.len(), 1);
    }

    fn describe(
        q: &Quotas,
        components: &[(QuotaEntityType, QuotaMatch)],
        strict: bool,
    ) -> Vec<QuotaEntity> {
        let filter = QuotaFilter {
            components: components
                .iter()
                .map(|(entity_type, matching)| QuotaFilterComponent {
                    entity_type: *entity_type,
                    matching: matching.clone(),
                })
                .collect(),
            strict,
        };
        let found = q.describe(&filter).expect("describe");
        found.into_iter().map(|(e, _)| e).collect()
    }

    #[test]
    fn describe_filters_like_kafka() {
        use QuotaEntityType::{ClientId, Ip, User};
        use QuotaMatch::{Default, Exact, Specified};
        let mut q = Quotas::default();
        let all = [
            entity(named("u"), None),
            entity(named("u"), named("c")),
            entity(DEFAULT, None),
            entity(DEFAULT, named("c")),
            entity(None, named("c")),
        ];
        for e in &all {
            alter_one(&mut q, e.clone(), vec![set(PRODUCER_BYTE_RATE, 1.0)]).expect("set");
        }
        alter_one(
            &mut q,
            ip_entity(named("10.0.0.1")),
            vec![set(CONNECTION_CREATION_RATE, 2.0)],
        )
        .expect("ip");
        let exact_u = (User, Exact("u".into()));
        assert_eq!(
            describe(&q, std::slice::from_ref(&exact_u), false),
            vec![all[0].clone(), all[1].clone()]
        );
        assert_eq!(
            describe(&q, std::slice::from_ref(&exact_u), true),
            vec![all[0].clone()]
        );
        assert_eq!(
            describe(&q, &[(User, Default)], false),
            vec![all[2].clone(), all[3].clone()]
        );
        assert_eq!(
            describe(&q, &[(User, Specified)], false).len(),
            4,
            "SPECIFIED matches the default too (Kafka's ClientQuotasImage)"
        );
        assert_eq!(
            describe(
                &q,
                &[(User, Specified), (ClientId, Exact("c".into()))],
                true
            )
            .len(),
            2
        );
        assert_eq!(
            describe(&q, &[(ClientId, Specified)], true),
            vec![all[4].clone()]
        );
        assert_eq!(describe(&q, &[], false).len(), 6);
        assert!(describe(&q, &[], true).is_empty());
        assert_eq!(
            describe(&q, &[(Ip, Exact("::ffff:10.0.0.1".into()))], true).len(),
            1
        );
        let bad = |components: Vec<QuotaFilterComponent>| {
            let r = q.describe(&QuotaFilter {
                components,
                strict: false,
            });
            assert!(matches!(r, Err(SecurityError::InvalidRequest(_))), "{r:?}");
        };
        let c = |entity_type, matching| QuotaFilterComponent {
            entity_type,
            matching,
        };
        bad(vec![c(User, Default), c(User, Specified)]);
        bad(vec![c(Ip, Specified), c(ClientId, Specified)]);
    }

    #[test]
    fn borrowed_lookups_agree_with_the_owned_order() {
        let mut entities = vec![
            entity(None, DEFAULT),
            entity(None, named("")),
            entity(None, named("a")),
            entity(DEFAULT, None),
            entity(named("a"), named("b")),
            entity(named("a"), None),
            entity(named("b"), DEFAULT),
            ip_entity(DEFAULT),
            ip_entity(named("1.2.3.4")),
        ];
        entities.sort();
        let mut map = QuotaMap::new();
        for (i, e) in entities.iter().enumerate() {
            map.insert(
                e.clone(),
                Arc::new(QuotaValues::from([("k".to_string(), i as f64)])),
            );
        }
        for (i, e) in entities.iter().enumerate() {
            let probe = e.key();
            let found = map
                .get(&probe as &dyn EntityKey)
                .expect("found by reference");
            assert_eq!(found["k"], i as f64);
            for (j, other) in entities.iter().enumerate() {
                assert_eq!(e.cmp(other), i.cmp(&j));
            }
        }
    }
}
