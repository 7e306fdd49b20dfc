//! Who a connection is and what it may do: listeners and their security
//! protocols (`listeners`), TLS (`tls`), the connection's `Session`
//! (principal, SASL state), and the node's security settings.
//!
//! Everything here is read-only once started and shared by the shards
//! (`Arc<Security>` in `NodeInfo`), except a `Session`, which belongs to its
//! connection (one task on one shard). Authentication runs on the
//! connection's shard; nothing here takes a lock on the request path.

pub mod listeners;
pub mod quota;
pub mod tls;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use listeners::{Listener, SecurityProtocol};
use sluice_raft::MetadataView;
pub use sluice_raft::{AclDecision, AclOperation, AclResourceType};

use crate::sasl;

/// The principal of a connection that did not authenticate (plaintext, or
/// TLS without a client certificate), as Kafka names it.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// The name of the cluster resource in ACLs, as Kafka names it.
pub const CLUSTER: &str = "kafka-cluster";

/// SASL mechanisms this broker serves, in the order SaslHandshake lists
/// them.
pub const SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// The node's security settings, resolved at start.
#[derive(Debug)]
pub struct Security {
    /// The node's listeners; a connection knows its own by index.
    pub listeners: Vec<Listener>,
    /// Set when a listener uses TLS.
    pub tls: Option<tls::Tls>,
    /// Mechanisms a SASL listener accepts (`--sasl-enabled-mechanisms`).
    pub sasl_mechanisms: Vec<&'static str>,
    /// KIP-368: how long an authentication lasts before the client must
    /// authenticate again on the same connection (`connections.max.reauth.ms`);
    /// 0: forever.
    pub reauth_ms: u64,
    /// How long a failed authentication waits before its answer
    /// (`connection.failed.authentication.delay.ms`).
    pub failed_auth_delay: Duration,
    /// `--authorizer true`: ACLs are checked.
    pub authorizer: Option<Authorizer>,
    /// Open connections one peer IP may have on a shard
    /// (`--max-connections-per-ip`).
    pub connections_per_ip_max: u32,
    /// The inter-broker listener is `SSL` or `SASL_SSL`: this node
    /// connects to the others over TLS with its certificate
    /// (`tls::Tls::connector`).
    pub inter_broker_tls: bool,
    /// The inter-broker listener is `SASL_*`: this node authenticates to
    /// the others with these (`kafka_client`).
    pub inter_broker_sasl: Option<Arc<crate::sasl::client::ClientCredentials>>,
}

impl Default for Security {
    /// One plaintext loopback listener, no authorizer: what tests of
    /// handlers run with.
    fn default() -> Security {
        Security {
            listeners: vec![Listener {
                name: "PLAINTEXT".into(),
                protocol: SecurityProtocol::Plaintext,
                addr: "127.0.0.1:9092".parse().expect("literal address"),
                advertised_host: "127.0.0.1".into(),
                advertised_port: 9092,
            }],
            tls: None,
            sasl_mechanisms: SASL_MECHANISMS.to_vec(),
            reauth_ms: 0,
            failed_auth_delay: Duration::from_millis(100),
            authorizer: None,
            connections_per_ip_max: u32::MAX,
            inter_broker_tls: false,
            inter_broker_sasl: None,
        }
    }
}

/// Mutual TLS of the cluster (Raft) links, for the metadata service
/// (`--cluster-tls`): the listeners' certificate and `--tls-client-ca-file`
/// as in use now (a SIGHUP reload reaches new links). A peer is admitted
/// when its certificate's principal is one of `--super-users` under the
/// authorizer; without it, any certificate of the CA is.
#[derive(Debug)]
pub struct ClusterLinks(pub Arc<Security>);

impl ClusterLinks {
    fn configs(&self) -> std::io::Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)> {
        (self.0.tls.as_ref())
            .and_then(tls::Tls::cluster_configs)
            .ok_or_else(|| std::io::Error::other("cluster TLS needs --tls-client-ca-file"))
    }
}

impl sluice_raft::ClusterTls for ClusterLinks {
    fn server_config(&self) -> std::io::Result<Arc<rustls::ServerConfig>> {
        self.configs().map(|(server, _)| server)
    }

    fn client_config(&self) -> std::io::Result<Arc<rustls::ClientConfig>> {
        self.configs().map(|(_, client)| client)
    }

    fn admit(&self, chain: &[rustls::pki_types::CertificateDer<'_>]) -> Result<(), String> {
        let Some(authorizer) = &self.0.authorizer else {
            return Ok(());
        };
        let cert = chain.first().ok_or("no certificate")?;
        let principal =
            tls::principal_of(cert).ok_or("the certificate's subject cannot be read")?;
        if authorizer.is_super_user(&principal) {
            Ok(())
        } else {
            Err(format!(
                "{principal} is not one of --super-users (nodes speak for the cluster)"
            ))
        }
    }
}

/// The authorizer's settings (Kafka's `StandardAuthorizer`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Authorizer {
    /// Principals allowed everything (`super.users`).
    pub super_users: Vec<String>,
    /// `allow.everyone.if.no.acl.found`.
    pub allow_if_no_acl: bool,
}

impl Authorizer {
    /// Whether `principal` (`User:...`) is one of `super.users`.
    pub fn is_super_user(&self, principal: &str) -> bool {
        self.super_users.iter().any(|s| s == principal)
    }
}

/// Where a connection's SASL authentication stands.
pub enum SaslState {
    /// No SaslHandshake yet (or the last exchange completed).
    Idle,
    /// SaslHandshake chose a mechanism; SaslAuthenticate steps it.
    Exchanging(sasl::Exchange),
}

/// One connection's identity. Owned by the connection's task.
pub struct Session {
    /// Index of the listener in `Security::listeners`.
    pub listener: usize,
    pub protocol: SecurityProtocol,
    /// The peer's IP address, as logs name it.
    pub host: String,
    /// The same, as ACLs match it.
    pub ip: std::net::IpAddr,
    principal: RefCell<Rc<str>>,
    /// Whether the connection may send any request: not a SASL listener,
    /// or authenticated there.
    authenticated: Cell<bool>,
    /// When the authentication expires (KIP-368); `None`: never.
    expires: Cell<Option<Instant>>,
    /// The authentication's lifetime, and how much `extend_expiry` added.
    lifetime: Cell<Option<Duration>>,
    extended: Cell<Duration>,
    pub sasl: RefCell<SaslState>,
    /// A quota throttle: the connection is not read until then.
    pub throttled_until: Cell<Option<Instant>>,
    /// The shard's time spent running this connection since its last
    /// request was charged to the `request_percentage` quota.
    pub cpu: Cell<Duration>,
    /// A quota was set at the connection's last request: its time is
    /// measured (`cpu`).
    pub metered: Cell<bool>,
    /// The client id of the connection's latest request header (what
    /// DescribeGroups shows of a member).
    client_id: RefCell<Rc<str>>,
    /// Another node's replica fetcher is the peer (it sent a follower
    /// Fetch or OffsetForLeaderEpoch).
    replica: Cell<bool>,
}

impl Session {
    /// A new connection's session; `principal` is the TLS client
    /// certificate's, if any.
    pub fn new(
        listener: usize,
        protocol: SecurityProtocol,
        host: String,
        principal: Option<String>,
    ) -> Session {
        let principal: Rc<str> = Rc::from(principal.as_deref().unwrap_or(ANONYMOUS));
        let ip = host
            .parse()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        Session {
            listener,
            protocol,
            host,
            ip,
            principal: RefCell::new(principal),
            authenticated: Cell::new(!protocol.sasl()),
            expires: Cell::new(None),
            lifetime: Cell::new(None),
            extended: Cell::new(Duration::ZERO),
            sasl: RefCell::new(SaslState::Idle),
            throttled_until: Cell::new(None),
            cpu: Cell::new(Duration::ZERO),
            metered: Cell::new(false),
            client_id: RefCell::new(Rc::from("")),
            replica: Cell::new(false),
        }
    }

    /// A session for requests not from a client connection (tests, internal
    /// callers): anonymous on plaintext.
    #[cfg(test)]
    pub fn anonymous() -> Session {
        Session::new(0, SecurityProtocol::Plaintext, "127.0.0.1".into(), None)
    }

    pub fn principal(&self) -> Rc<str> {
        Rc::clone(&self.principal.borrow())
    }

    /// Keeps the client id of a request header (allocates only when it
    /// changes, which clients do not do on one connection).
    pub fn set_client_id(&self, client_id: &str) {
        if *self.client_id.borrow().as_ref() != *client_id {
            *self.client_id.borrow_mut() = Rc::from(client_id);
        }
    }

    /// A quota throttle of `t`: the connection is not read until it ends
    /// (KIP-219); returns it in ms for the response's `throttle_time_ms`.
    pub fn throttle(&self, t: Duration) -> i32 {
        if t.is_zero() {
            return 0;
        }
        let until = Instant::now() + t;
        let later = self.throttled_until.get().map_or(until, |u| u.max(until));
        self.throttled_until.set(Some(later));
        i32::try_from(t.as_millis()).unwrap_or(i32::MAX)
    }

    pub fn replica(&self) -> bool {
        self.replica.get()
    }

    /// Marks the peer as another node's replica fetcher; true the first
    /// time.
    pub fn mark_replica(&self) -> bool {
        !self.replica.replace(true)
    }

    pub fn client_id(&self) -> Rc<str> {
        Rc::clone(&self.client_id.borrow())
    }

    pub fn authenticated(&self) -> bool {
        self.authenticated.get()
    }

    /// Whether the authentication's lifetime ran out (KIP-368).
    pub fn expired(&self, now: Instant) -> bool {
        self.expires.get().is_some_and(|at| now >= at)
    }

    /// Moves the authentication's expiry (if any) `by` later, by at most
    /// one lifetime in all: a throttled client cannot put its
    /// re-authentication off for ever.
    pub fn extend_expiry(&self, by: Duration) {
        let (Some(at), Some(lifetime)) = (self.expires.get(), self.lifetime.get()) else {
            return;
        };
        let by = by.min(lifetime.saturating_sub(self.extended.get()));
        self.extended.set(self.extended.get() + by);
        self.expires.set(Some(at + by));
    }

    /// Records a completed SASL authentication of `principal`, valid for
    /// `lifetime` (`None`: forever).
    pub fn authenticate(&self, principal: &str, lifetime: Option<Duration>) {
        *self.principal.borrow_mut() = Rc::from(principal);
        self.authenticated.set(true);
        self.expires.set(lifetime.map(|l| Instant::now() + l));
        self.lifetime.set(lifetime);
        self.extended.set(Duration::ZERO);
    }
}

impl Security {
    /// Whether `session` may do `op` on the resource (Kafka's
    /// StandardAuthorizer): always without `--authorizer`; super users
    /// may do everything; else the ACLs of `view` decide, DENY over ALLOW,
    /// and a resource no ACL names is allowed only with
    /// `--allow-everyone-if-no-acl-found`. No allocation, no lock.
    pub fn authorize(
        &self,
        view: &MetadataView,
        session: &Session,
        op: AclOperation,
        resource: AclResourceType,
        name: &str,
    ) -> bool {
        let Some(authorizer) = &self.authorizer else {
            return true;
        };
        let principal = session.principal.borrow();
        if authorizer.is_super_user(&principal) {
            return true;
        }
        match view
            .acls
            .authorize(&principal, session.ip, op, resource, name)
        {
            AclDecision::Allow => true,
            AclDecision::Deny => false,
            AclDecision::NoAclsForResource => authorizer.allow_if_no_acl,
        }
    }
}
