//! Client quotas enforced on each shard, as Kafka's `ClientQuotaManager`
//! does: a client (user, client id) has a rate of produce bytes, fetch
//! bytes and request time (the shard's CPU time on its connections, in
//! percent of one core: `request_percentage`, Kafka's
//! `ClientRequestQuotaManager`) measured over `SAMPLES` one-second windows; a
//! request that takes it over its quota is answered at once with
//! `throttle_time_ms` = how long the client must wait for its rate to come
//! back to the quota, and its connection is not read for that long (KIP-219:
//! clients back off too).
//!
//! Quotas are per node, as Kafka's are per broker: each shard records its
//! own connections' usage and, at most every `EXCHANGE_INTERVAL` while it
//! records, publishes its rates on the node's `QuotaBoard` and reads the
//! other shards' (one `ArcSwap` per shard: no lock, and nothing at all on a
//! one-shard node). A client's rate is its samples on every shard, so its
//! connections on several shards share one quota; what another shard
//! recorded in the last interval is not seen yet. Nothing is tracked while
//! no quota is set (`Quotas::is_empty`); a client is tracked only once a
//! quota applies to it, in at most `CLIENTS_MAX` entries per shard, idle
//! ones dropped first. `connection_creation_rate` is shared the same way:
//! an IP's new connections on every shard count against one rate.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use sluice_raft::{
    Quotas, CONNECTION_CREATION_RATE, CONSUMER_BYTE_RATE, CONTROLLER_MUTATION_RATE,
    PRODUCER_BYTE_RATE, REQUEST_PERCENTAGE,
};

use crate::handlers::Ctx;
use crate::security::Session;

/// One-second windows a rate is measured over (Kafka's
/// `quota.window.num` = 11, `quota.window.size.seconds` = 1).
const SAMPLES: usize = 11;
const WINDOW: Duration = Duration::from_secs(1);
/// The longest throttle (Kafka caps it at the quota window).
const THROTTLE_MAX: Duration = Duration::from_secs(SAMPLES as u64);
/// Clients tracked per shard; over it, the longest idle is dropped.
const CLIENTS_MAX: usize = 4096;
/// How often a recording shard publishes its rates and reads the others'.
const EXCHANGE_INTERVAL: Duration = Duration::from_millis(250);
/// Kinds of rate a client has (`QuotaKind`).
const KINDS: usize = 4;

/// What a quota measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaKind {
    /// Bytes of produce requests (`producer_byte_rate`).
    Produce,
    /// Bytes of fetch responses (`consumer_byte_rate`).
    Fetch,
    /// Percent of one core's time spent on the client's requests
    /// (`request_percentage`); recorded through `record_time`.
    Request,
    /// Partitions created or deleted (`controller_mutation_rate`, KIP-599);
    /// recorded through `MutationQuota`.
    Mutation,
}

impl QuotaKind {
    fn key(self) -> &'static str {
        match self {
            QuotaKind::Produce => PRODUCER_BYTE_RATE,
            QuotaKind::Fetch => CONSUMER_BYTE_RATE,
            QuotaKind::Request => REQUEST_PERCENTAGE,
            QuotaKind::Mutation => CONTROLLER_MUTATION_RATE,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A rate over `SAMPLES` windows (Kafka's `Rate` with `SampledStat`).
#[derive(Debug, Default, Clone)]
struct Rate {
    /// (window start, value) per window; `None`: unused.
    samples: [Option<(Instant, f64)>; SAMPLES],
    current: usize,
}

impl Rate {
    fn record(&mut self, value: f64, now: Instant) {
        match &mut self.samples[self.current] {
            Some((start, v)) if now.duration_since(*start) < WINDOW => *v += value,
            _ => {
                if self.samples[self.current].is_some() {
                    self.current = (self.current + 1) % SAMPLES;
                }
                self.samples[self.current] = Some((now, value));
            }
        }
    }

    fn live(&self, now: Instant) -> impl Iterator<Item = &(Instant, f64)> {
        let horizon = WINDOW * SAMPLES as u32;
        self.samples
            .iter()
            .flatten()
            .filter(move |(start, _)| now.duration_since(*start) < horizon)
    }
}

/// Units per second over the live windows of `rates` (one client's rate of
/// one kind, on this shard and others), and the window length used: from
/// the oldest live window's start, at least one window. (Kafka counts at
/// least `SAMPLES - 1` windows, which lets a new client send ten windows'
/// worth at once, and again each time that burst ages out: a sawtooth
/// around the quota instead of the quota.)
fn measure<'a>(rates: impl Iterator<Item = &'a Rate>, now: Instant) -> (f64, Duration) {
    let (mut total, mut oldest) = (0.0, now);
    for (start, v) in rates.flat_map(|r| r.live(now)) {
        total += v;
        oldest = oldest.min(*start);
    }
    let span = now.duration_since(oldest).max(WINDOW);
    (total / span.as_secs_f64(), span)
}

/// A client's key: (user, client id) of the quota's scope.
type ClientKey = (Box<str>, Box<str>);

/// One client's rates.
#[derive(Debug, Default)]
struct Client {
    rates: [Rate; KINDS],
    /// Its rates on the other shards, as they last published them.
    elsewhere: Vec<[Rate; KINDS]>,
    last_seen: Option<Instant>,
}

/// Every shard's rates as it last published them, shared by the node's
/// shards: a client's quota holds across its connections on all shards, an
/// IP's connection rate across its connections to all shards.
pub struct QuotaBoard {
    clients: Published<ClientKey, [Rate; KINDS]>,
    ips: Published<IpAddr, Rate>,
}

impl QuotaBoard {
    pub fn new(shards: u32) -> QuotaBoard {
        QuotaBoard {
            clients: Published::new(shards),
            ips: Published::new(shards),
        }
    }
}

impl std::fmt::Debug for QuotaBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaBoard")
            .field("shards", &self.clients.shards.len())
            .finish()
    }
}

/// One kind of rate as each shard last published it (one `ArcSwap` per
/// shard: a shard swaps in its own and reads the others', no lock).
struct Published<K, V> {
    shards: Box<[ArcSwap<HashMap<K, V>>]>,
}

impl<K: Eq + Hash + Clone, V: Clone> Published<K, V> {
    fn new(shards: u32) -> Published<K, V> {
        Published {
            shards: (0..shards.max(1)).map(|_| ArcSwap::default()).collect(),
        }
    }

    /// When `clock` says it is time (never on a one-shard node): publishes
    /// `mine` of each of shard `shard`'s entries, and puts into each entry's
    /// `elsewhere` the rates the other shards published under its key.
    fn exchange<E>(
        &self,
        (shard, clock, now): (usize, &ExchangeClock, Instant),
        entries: &mut HashMap<K, E>,
        mine: impl Fn(&E) -> V,
        elsewhere: impl Fn(&mut E) -> &mut Vec<V>,
    ) {
        let Some(slot) = self.shards.get(shard) else {
            return;
        };
        if self.shards.len() < 2 || !clock.due(now) {
            return;
        }
        slot.store(Arc::new(
            entries.iter().map(|(k, e)| (k.clone(), mine(e))).collect(),
        ));
        let others: Vec<_> = (self.shards.iter().enumerate())
            .filter(|(i, _)| *i != shard)
            .map(|(_, published)| published.load_full())
            .collect();
        for (key, entry) in entries.iter_mut() {
            let rates = elsewhere(entry);
            rates.clear();
            rates.extend(others.iter().filter_map(|o| o.get(key)).cloned());
        }
    }
}

/// Paces a shard's exchanges on the board: at most one per
/// `EXCHANGE_INTERVAL`.
#[derive(Debug, Default)]
struct ExchangeClock(Cell<Option<Instant>>);

impl ExchangeClock {
    fn due(&self, now: Instant) -> bool {
        if self.0.get().is_some_and(|at| now < at) {
            return false;
        }
        self.0.set(Some(now + EXCHANGE_INTERVAL));
        true
    }
}

/// A shard's quota state.
pub struct QuotaSensors {
    clients: RefCell<HashMap<ClientKey, Client>>,
    board: Arc<QuotaBoard>,
    /// This shard's index on `board`.
    shard: usize,
    clock: ExchangeClock,
}

impl Default for QuotaSensors {
    /// Sensors of a one-shard node.
    fn default() -> QuotaSensors {
        QuotaSensors::new(Arc::new(QuotaBoard::new(1)), 0)
    }
}

impl QuotaSensors {
    pub fn new(board: Arc<QuotaBoard>, shard: u32) -> QuotaSensors {
        QuotaSensors {
            clients: Default::default(),
            board,
            shard: shard as usize,
            clock: ExchangeClock::default(),
        }
    }

    /// Records the shard's CPU time `spent` on a client's requests against
    /// its `request_percentage` (as Kafka does: 1 s of one core is 100
    /// percent-seconds) and returns how long it must be throttled.
    pub fn record_time(
        &self,
        quotas: &Quotas,
        principal: &Rc<str>,
        client_id: &str,
        spent: Duration,
    ) -> Duration {
        let value = spent.as_secs_f64() * 100.0;
        self.record(quotas, principal, client_id, QuotaKind::Request, value)
    }

    /// Records `value` (bytes; percent-seconds for `Request`) for the
    /// client and returns how long it must be throttled; zero at once when
    /// no quota applies to it (nothing is recorded then).
    pub fn record(
        &self,
        quotas: &Quotas,
        principal: &Rc<str>,
        client_id: &str,
        kind: QuotaKind,
        value: f64,
    ) -> Duration {
        if quotas.is_empty() {
            return Duration::ZERO;
        }
        let user = principal.strip_prefix("User:").unwrap_or(principal);
        let Some((bound, scope)) = quotas.resolve_scoped(user, client_id, kind.key()) else {
            return Duration::ZERO;
        };
        // Clients in one scope share one rate (a quota of user alice alone
        // holds all her client ids): changing client.id escapes nothing.
        let principal = if scope.user { &**principal } else { "" };
        let client_id = if scope.client_id { client_id } else { "" };
        let now = Instant::now();
        let mut clients = self.clients.borrow_mut();
        let key = (Box::<str>::from(principal), Box::<str>::from(client_id));
        if !clients.contains_key(&key) && clients.len() >= CLIENTS_MAX {
            evict_idlest(&mut clients);
        }
        clients.entry(key.clone()).or_default().rates[kind.index()].record(value, now);
        self.board.clients.exchange(
            (self.shard, &self.clock, now),
            &mut clients,
            |c| c.rates.clone(),
            |c| &mut c.elsewhere,
        );
        let Some(client) = clients.get_mut(&key) else {
            return Duration::ZERO;
        };
        client.last_seen = Some(now);
        let k = kind.index();
        let rates = std::iter::once(&client.rates[k]).chain(client.elsewhere.iter().map(|r| &r[k]));
        throttle(rates, bound, now)
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.clients.borrow().len()
    }
}

/// A shard's rates of new connections per client IP, for the
/// `connection_creation_rate` quota of IP entities (Kafka's KIP-612):
/// tracked only for IPs a quota applies to, at most `CLIENTS_MAX`. An IP's
/// rate is its new connections on every shard (exchanged on the
/// `QuotaBoard` as client rates are), so the quota holds per node.
#[derive(Debug)]
pub struct ConnectionRates {
    ips: RefCell<HashMap<IpAddr, IpRate>>,
    board: Arc<QuotaBoard>,
    /// This shard's index on `board`.
    shard: usize,
    clock: ExchangeClock,
}

/// One IP's new connections.
#[derive(Debug)]
struct IpRate {
    rate: Rate,
    /// Its rates on the other shards, as they last published them.
    elsewhere: Vec<Rate>,
    last_seen: Instant,
}

impl ConnectionRates {
    pub fn new(board: Arc<QuotaBoard>, shard: u32) -> ConnectionRates {
        ConnectionRates {
            ips: Default::default(),
            board,
            shard: shard as usize,
            clock: ExchangeClock::default(),
        }
    }

    /// Counts a new connection from `ip`; `Err(throttle)` when it takes the
    /// IP over its `connection_creation_rate`: the connection is refused,
    /// closed once `throttle` is over (Kafka's delayed close), so a client
    /// that reconnects at once is paced by the quota.
    pub fn admit(&self, quotas: &Quotas, ip: IpAddr) -> Result<(), Duration> {
        if quotas.is_empty() {
            return Ok(());
        }
        let Some(bound) = quotas.resolve_ip(ip, CONNECTION_CREATION_RATE) else {
            return Ok(());
        };
        let now = Instant::now();
        let mut ips = self.ips.borrow_mut();
        if !ips.contains_key(&ip) && ips.len() >= CLIENTS_MAX {
            let idlest = ips.iter().min_by_key(|(_, r)| r.last_seen).map(|(k, _)| *k);
            if let Some(k) = idlest {
                ips.remove(&k);
            }
        }
        ips.entry(ip).or_insert_with(|| IpRate {
            rate: Rate::default(),
            elsewhere: Vec::new(),
            last_seen: now,
        });
        // Exchanged before this connection is counted: a refused one is
        // never published.
        self.board.ips.exchange(
            (self.shard, &self.clock, now),
            &mut ips,
            |r| r.rate.clone(),
            |r| &mut r.elsewhere,
        );
        let Some(entry) = ips.get_mut(&ip) else {
            return Ok(());
        };
        entry.last_seen = now;
        entry.rate.record(1.0, now);
        let delay = throttle(
            std::iter::once(&entry.rate).chain(&entry.elsewhere),
            bound,
            now,
        );
        if delay.is_zero() {
            return Ok(());
        }
        // Only accepted connections count (KIP-612): a client retrying
        // while refused is not locked out for longer.
        entry.rate.record(-1.0, now);
        Err(delay)
    }
}

/// KIP-599's `controller_mutation_rate` for one CreateTopics,
/// CreatePartitions or DeleteTopics request: each topic's partitions
/// created or deleted are counted against the client's quota. With the
/// request versions that know THROTTLING_QUOTA_EXCEEDED (`strict`), a topic
/// asked while the client is over its quota is refused with it, and the
/// client backs off by the response's `throttle_time_ms`; older versions
/// are let through and their connection is not read for the throttle.
pub struct MutationQuota<'a> {
    ctx: &'a Ctx,
    session: &'a Session,
    strict: bool,
    throttle: Cell<Duration>,
}

impl<'a> MutationQuota<'a> {
    pub fn new(ctx: &'a Ctx, session: &'a Session, strict: bool) -> MutationQuota<'a> {
        MutationQuota {
            ctx,
            session,
            strict,
            throttle: Cell::new(Duration::ZERO),
        }
    }

    /// Whether a topic of `partitions` mutations may go ahead (`false`:
    /// refuse it with THROTTLING_QUOTA_EXCEEDED); its partitions are
    /// counted when it may.
    pub fn admit(&self, partitions: u32) -> bool {
        let principal = self.session.principal();
        let client_id = self.session.client_id();
        let sensors = &self.ctx.quota_sensors;
        let record = |value: f64| {
            self.ctx.meta.peek(|view| {
                sensors.record(
                    &view.quotas,
                    &principal,
                    &client_id,
                    QuotaKind::Mutation,
                    value,
                )
            })
        };
        if self.strict {
            // Over the quota already (nothing counted by asking).
            let over = record(0.0);
            if !over.is_zero() {
                self.throttle.set(self.throttle.get().max(over));
                return false;
            }
        }
        let after = record(f64::from(partitions));
        self.throttle.set(self.throttle.get().max(after));
        true
    }

    /// The response's `throttle_time_ms`; an old client's connection is
    /// muted for it (a new one backs off by itself, as KIP-599 has it).
    pub fn throttle_ms(&self) -> i32 {
        let t = self.throttle.get();
        if self.strict {
            return i32::try_from(t.as_millis()).unwrap_or(i32::MAX);
        }
        self.session.throttle(t)
    }
}

fn evict_idlest(clients: &mut HashMap<(Box<str>, Box<str>), Client>) {
    let idlest = clients
        .iter()
        .min_by_key(|(_, c)| c.last_seen)
        .map(|(k, _)| k.clone());
    if let Some(k) = idlest {
        clients.remove(&k);
    }
}

/// Kafka's `QuotaUtils.throttleTime`: how long until the rate over the
/// window is back at `bound`: (rate - bound) / bound x window.
fn throttle<'a>(rates: impl Iterator<Item = &'a Rate>, bound: f64, now: Instant) -> Duration {
    if bound <= 0.0 {
        return THROTTLE_MAX;
    }
    let (observed, span) = measure(rates, now);
    if observed <= bound {
        return Duration::ZERO;
    }
    let secs = (observed - bound) / bound * span.as_secs_f64();
    Duration::from_secs_f64(secs.min(THROTTLE_MAX.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_over_its_bound_is_throttled_by_the_excess() {
        let mut r = Rate::default();
        let t0 = Instant::now();
        // One window's worth at once: the rate is exactly the bound.
        r.record(100.0, t0);
        assert_eq!(throttle(std::iter::once(&r), 100.0, t0), Duration::ZERO);
        // Another 50 units: 150 / 1 s, 50% over: 0.5 s.
        r.record(50.0, t0);
        let t = throttle(std::iter::once(&r), 100.0, t0);
        assert!((t.as_secs_f64() - 0.5).abs() < 0.01, "{t:?}");
        // Sent at the bound for 5 s: no throttle.
        let mut steady = Rate::default();
        for s in 0..5 {
            steady.record(100.0, t0 + Duration::from_secs(s));
        }
        let at = t0 + Duration::from_secs(5);
        assert_eq!(
            throttle(std::iter::once(&steady), 100.0, at),
            Duration::ZERO
        );
        // Old windows age out: 12 s later the rate is 0.
        let later = t0 + Duration::from_secs(12);
        assert_eq!(throttle(std::iter::once(&r), 100.0, later), Duration::ZERO);
    }

    #[test]
    fn a_clients_connections_on_two_shards_share_its_quota() {
        use sluice_raft::{QuotaEntity, QuotaName};
        let board = Arc::new(QuotaBoard::new(2));
        let (a, b) = (
            QuotaSensors::new(Arc::clone(&board), 0),
            QuotaSensors::new(Arc::clone(&board), 1),
        );
        let mut quotas = Quotas::default();
        let flood = QuotaEntity {
            user: None,
            client_id: Some(QuotaName::Named("flood".into())),
            ip: None,
        };
        let set = vec![(PRODUCER_BYTE_RATE.to_string(), Some(100.0))];
        quotas.alter(&[(flood, set)]).remove(0).expect("quota set");
        let p: Rc<str> = Rc::from("User:ANONYMOUS");
        // Each shard alone is at the bound: 100 bytes in the first second.
        assert_eq!(
            a.record(&quotas, &p, "flood", QuotaKind::Produce, 100.0),
            Duration::ZERO
        );
        let on_b = b.record(&quotas, &p, "flood", QuotaKind::Produce, 100.0);
        // Shard 1 saw shard 0's 100 bytes: 200 / 1 s, 100% over: 1 s.
        assert!((on_b.as_secs_f64() - 1.0).abs() < 0.05, "{on_b:?}");
        // Shard 0 reads shard 1's rate at its next exchange.
        a.clock.0.set(None);
        let on_a = a.record(&quotas, &p, "flood", QuotaKind::Produce, 0.0);
        assert!((on_a.as_secs_f64() - 1.0).abs() < 0.05, "{on_a:?}");
        // Another client id on the same shards is not held to it.
        assert_eq!(
            a.record(&quotas, &p, "other", QuotaKind::Produce, 1e6),
            Duration::ZERO
        );
    }

    #[test]
    fn an_ips_new_connections_on_two_shards_share_its_rate() {
        use sluice_raft::QuotaEntity;
        let board = Arc::new(QuotaBoard::new(2));
        let (a, b) = (
            ConnectionRates::new(Arc::clone(&board), 0),
            ConnectionRates::new(Arc::clone(&board), 1),
        );
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let mut quotas = Quotas::default();
        let entity = QuotaEntity {
            user: None,
            client_id: None,
            ip: Some(sluice_raft::QuotaName::Named("127.0.0.1".into())),
        };
        let set = vec![(CONNECTION_CREATION_RATE.to_string(), Some(4.0))];
        quotas.alter(&[(entity, set)]).remove(0).expect("quota set");
        // Shard 0 takes 3 connections, then publishes them as it takes
        // a 4th (a shard publishes what it had before the connection).
        for _ in 0..3 {
            assert_eq!(a.admit(&quotas, ip), Ok(()));
        }
        a.clock.0.set(None);
        assert_eq!(a.admit(&quotas, ip), Ok(()));
        // Shard 1 reads shard 0's 3: its first connection is the 4th the
        // node counts, its second one over the quota of 4 a second (on
        // its own, shard 1 would be at 2).
        assert_eq!(b.admit(&quotas, ip), Ok(()));
        let refused = b.admit(&quotas, ip).expect_err("over the node's quota");
        assert!((refused.as_secs_f64() - 0.25).abs() < 0.05, "{refused:?}");
        // Another IP is not held to it.
        let other: IpAddr = "127.0.0.2".parse().expect("ip");
        assert_eq!(a.admit(&quotas, other), Ok(()));
    }

    #[test]
    fn clients_are_tracked_only_under_a_quota_and_bounded() {
        let sensors = QuotaSensors::default();
        let none = Quotas::default();
        let p: Rc<str> = Rc::from("User:alice");
        assert_eq!(
            sensors.record(&none, &p, "c", QuotaKind::Produce, 1e9),
            Duration::ZERO
        );
        assert_eq!(sensors.tracked(), 0);
    }
}
