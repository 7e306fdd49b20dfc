//! The security administration APIs (DescribeAcls, CreateAcls, DeleteAcls,
//! DescribeClientQuotas, AlterClientQuotas, DescribeUserScramCredentials,
//! AlterUserScramCredentials) over a real data plane and metadata service
//! (`wire_tests::on_one_shard`): what each writes and answers, Kafka's
//! codes for bad input, their refusal with `--authorizer`, and their
//! dispatch from encoded requests. Every response is encoded at each
//! version it is asserted for.

use std::num::NonZeroU32;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::alter_client_quotas_request::{
    EntityData as AlterEntity, EntryData as AlterEntry, OpData,
};
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::describe_client_quotas_request::ComponentData;
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Encodable;
use sluice_raft::ScramMechanism;

use super::{
    alter_client_quotas, alter_user_scram_credentials, create_acls, delete_acls, describe_acls,
    describe_client_quotas, describe_user_scram_credentials, dispatch, str_bytes, Ctx,
};
use crate::config::Settings;
use crate::sasl::{ScramAlgorithm, StoredCredential};
use crate::security::{Authorizer, Security, SecurityProtocol, Session};
use crate::wire_tests::on_one_shard;

const NONE: i16 = 0;
const CLUSTER_FAILED: i16 = 31;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const UNSUPPORTED_VERSION: i16 = 35;
const INVALID_REQUEST: i16 = 42;
const RESOURCE_NOT_FOUND: i16 = 91;
const DUPLICATE_RESOURCE: i16 = 92;
const UNACCEPTABLE_CREDENTIAL: i16 = 93;

// ACL wire codes.
const ANY: i8 = 1;
const TOPIC: i8 = 2;
const GROUP: i8 = 3;
const CLUSTER_TYPE: i8 = 4;
const MATCH: i8 = 2;
const LITERAL: i8 = 3;
const PREFIXED: i8 = 4;
const READ: i8 = 3;
const WRITE: i8 = 4;
const ALTER: i8 = 7;
const DENY: i8 = 2;
const ALLOW: i8 = 3;

const ADMIN: &str = "User:admin";

fn session(principal: &str) -> Session {
    let s = Session::new(0, SecurityProtocol::SaslPlaintext, "127.0.0.1".into(), None);
    s.authenticate(principal, None);
    s
}

/// `ctx` with `--authorizer` on: `User:admin` a super user, a resource no
/// ACL names denied.
fn authorizing(ctx: &Ctx, settings: &Settings) -> Ctx {
    let mut node = crate::server::node_info(settings);
    node.cluster_id = "test".into();
    node.security = Arc::new(Security {
        authorizer: Some(Authorizer {
            super_users: vec![ADMIN.into()],
            allow_if_no_acl: false,
        }),
        ..Security::default()
    });
    Ctx::new(Rc::clone(&ctx.shard), ctx.meta.clone(), Arc::new(node))
}

fn encodes<T: Encodable>(body: &T, versions: std::ops::RangeInclusive<i16>) {
    for version in versions {
        let mut buf = BytesMut::new();
        body.encode(&mut buf, version)
            .unwrap_or_else(|e| panic!("encode at v{version}: {e:#}"));
    }
}

// ---- ACLs ----

fn creation(rt: i8, name: &str, pt: i8, principal: &str, op: i8, perm: i8) -> AclCreation {
    let mut c = AclCreation::default();
    c.resource_type = rt;
    c.resource_name = str_bytes(name);
    c.resource_pattern_type = pt;
    c.principal = str_bytes(principal);
    c.host = str_bytes("*");
    c.operation = op;
    c.permission_type = perm;
    c
}

fn creations(list: Vec<AclCreation>) -> CreateAclsRequest {
    let mut r = CreateAclsRequest::default();
    r.creations = list;
    r
}

fn describe_filter(
    rt: i8,
    name: Option<&str>,
    pt: i8,
    principal: Option<&str>,
) -> DescribeAclsRequest {
    let mut r = DescribeAclsRequest::default();
    r.resource_type_filter = rt;
    r.resource_name_filter = name.map(str_bytes);
    r.pattern_type_filter = pt;
    r.principal_filter = principal.map(str_bytes);
    r.host_filter = None;
    r.operation = ANY;
    r.permission_type = ANY;
    r
}

fn delete_filter(rt: i8, name: Option<&str>, pt: i8, principal: Option<&str>) -> DeleteAclsFilter {
    let mut f = DeleteAclsFilter::default();
    f.resource_type_filter = rt;
    f.resource_name_filter = name.map(str_bytes);
    f.pattern_type_filter = pt;
    f.principal_filter = principal.map(str_bytes);
    f.host_filter = None;
    f.operation = ANY;
    f.permission_type = ANY;
    f
}

/// Each resource as `type:name:pattern` with its entries' principals.
fn resources(resp: &DescribeAclsResponse) -> Vec<String> {
    assert_eq!(resp.error_code, NONE, "{:?}", resp.error_message);
    resp.resources
        .iter()
        .map(|r| {
            let who: Vec<&str> = r.acls.iter().map(|a| a.principal.as_str()).collect();
            format!(
                "{}:{}:{}:{}",
                r.resource_type,
                r.resource_name.as_str(),
                r.pattern_type,
                who.join(",")
            )
        })
        .collect()
}

async fn describe(ctx: &Ctx, req: DescribeAclsRequest, version: i16) -> DescribeAclsResponse {
    let resp = describe_acls::handle(req, version, ctx, &session(ADMIN));
    encodes(&resp, version..=version);
    resp
}

fn created_codes(resp: &CreateAclsResponse) -> Vec<(i16, Option<String>)> {
    resp.results
        .iter()
        .map(|r| {
            (
                r.error_code,
                r.error_message.as_ref().map(|m| m.to_string()),
            )
        })
        .collect()
}

#[test]
fn acls_are_created_described_and_deleted() {
    on_one_shard(&[], |ctx, _| async move {
        let admin = session(ADMIN);
        let good = vec![
            creation(TOPIC, "orders", LITERAL, "User:alice", READ, ALLOW),
            creation(TOPIC, "*", LITERAL, "User:bob", READ, ALLOW),
            creation(TOPIC, "app-", PREFIXED, "User:carol", WRITE, ALLOW),
            creation(GROUP, "g1", LITERAL, "User:alice", READ, ALLOW),
            creation(
                CLUSTER_TYPE,
                "kafka-cluster",
                LITERAL,
                "User:ops",
                ALTER,
                ALLOW,
            ),
            creation(TOPIC, "orders", LITERAL, "User:alice", WRITE, DENY),
        ];
        let bad = vec![
            creation(ANY, "t", LITERAL, "User:x", READ, ALLOW),
            creation(TOPIC, "t", MATCH, "User:x", READ, ALLOW),
            creation(TOPIC, "t", LITERAL, "User:x", ANY, ALLOW),
            creation(TOPIC, "t", LITERAL, "User:x", READ, ANY),
            creation(0, "t", LITERAL, "User:x", READ, ALLOW),
            creation(6, "t", LITERAL, "User:x", READ, ALLOW),
            creation(CLUSTER_TYPE, "other", LITERAL, "User:x", ALTER, ALLOW),
            creation(TOPIC, "t", LITERAL, "alice", READ, ALLOW),
            creation(TOPIC, "", LITERAL, "User:x", READ, ALLOW),
        ];
        let n_bad = bad.len();
        let req = creations(good.into_iter().chain(bad).collect());
        let resp = create_acls::handle(req, 3, &ctx, &admin).await;
        encodes(&resp, 0..=3);
        let codes = created_codes(&resp);
        assert!(codes[..6].iter().all(|c| *c == (NONE, None)), "{codes:?}");
        assert!(codes[6..]
            .iter()
            .all(|(c, m)| *c == INVALID_REQUEST && m.is_some()));
        assert_eq!(codes.len(), 6 + n_bad);
        let message = |i: usize| codes[6 + i].1.clone().expect("message");
        assert_eq!(message(0), "Invalid resourceType ANY");
        assert_eq!(message(1), "Invalid patternType MATCH");
        assert_eq!(message(2), "Invalid operation ANY");
        assert_eq!(message(3), "Invalid permissionType ANY");
        assert_eq!(message(4), "Invalid resourceType UNKNOWN");
        assert!(message(5).contains("DELEGATION_TOKEN"), "{}", message(5));
        assert!(message(6).contains("kafka-cluster"), "{}", message(6));
        assert!(
            message(7).contains("Could not parse principal"),
            "{}",
            message(7)
        );
        assert_eq!(ctx.view().acls.len(), 6);
        // Creating an existing binding again is no error and adds nothing.
        let again = creations(vec![creation(
            TOPIC,
            "orders",
            LITERAL,
            "User:alice",
            READ,
            ALLOW,
        )]);
        let resp = create_acls::handle(again, 0, &ctx, &admin).await;
        assert_eq!(created_codes(&resp), vec![(NONE, None)]);
        assert_eq!(ctx.view().acls.len(), 6);

        let all = describe(&ctx, describe_filter(ANY, None, ANY, None), 3).await;
        assert_eq!(
            resources(&all),
            vec![
                "2:*:3:User:bob",
                "2:orders:3:User:alice,User:alice",
                "2:app-:4:User:carol",
                "3:g1:3:User:alice",
                "4:kafka-cluster:3:User:ops",
            ]
        );
        let literal = describe(
            &ctx,
            describe_filter(TOPIC, Some("orders"), LITERAL, None),
            1,
        )
        .await;
        assert_eq!(
            resources(&literal),
            vec!["2:orders:3:User:alice,User:alice"]
        );
        let prefixed = describe(&ctx, describe_filter(TOPIC, None, PREFIXED, None), 2).await;
        assert_eq!(resources(&prefixed), vec!["2:app-:4:User:carol"]);
        let matching = describe(&ctx, describe_filter(TOPIC, Some("app-1"), MATCH, None), 3).await;
        assert_eq!(
            resources(&matching),
            vec!["2:*:3:User:bob", "2:app-:4:User:carol"]
        );
        let alice = describe(&ctx, describe_filter(ANY, None, ANY, Some("User:alice")), 3).await;
        assert_eq!(
            resources(&alice),
            vec!["2:orders:3:User:alice,User:alice", "3:g1:3:User:alice"]
        );
        // v0 carries no pattern type: its filter is LITERAL.
        let v0 = describe(&ctx, describe_filter(ANY, None, LITERAL, None), 0).await;
        assert_eq!(resources(&v0).len(), 4);
        let bad = describe(&ctx, describe_filter(TOPIC, None, 0, None), 3).await;
        assert_eq!(bad.error_code, INVALID_REQUEST);
        assert_eq!(bad.error_message.as_deref(), Some("Unknown patternFilter."));
        let mut bad_op = describe_filter(TOPIC, None, ANY, None);
        bad_op.operation = 0;
        let bad_op = describe(&ctx, bad_op, 3).await;
        assert_eq!(bad_op.error_code, INVALID_REQUEST);
        let nothing = describe(&ctx, describe_filter(7, None, ANY, None), 3).await;
        assert!(resources(&nothing).is_empty(), "USER resources: none here");

        let mut unknown_op = delete_filter(ANY, None, ANY, None);
        unknown_op.operation = 0;
        let mut deny_on_orders = delete_filter(TOPIC, Some("orders"), MATCH, None);
        deny_on_orders.permission_type = DENY;
        let mut req = DeleteAclsRequest::default();
        req.filters = vec![
            delete_filter(ANY, None, ANY, Some("User:carol")),
            unknown_op,
            deny_on_orders,
            delete_filter(7, None, ANY, None),
            delete_filter(GROUP, Some("nope"), LITERAL, None),
        ];
        let resp = delete_acls::handle(req, 3, &ctx, &admin).await;
        encodes(&resp, 1..=3);
        let outcome: Vec<(i16, usize)> = resp
            .filter_results
            .iter()
            .map(|r| (r.error_code, r.matching_acls.len()))
            .collect();
        assert_eq!(
            outcome,
            vec![
                (NONE, 1),
                (INVALID_REQUEST, 0),
                (NONE, 1),
                (NONE, 0),
                (NONE, 0)
            ]
        );
        assert_eq!(
            resp.filter_results[1].error_message.as_deref(),
            Some("Unknown entryFilter.")
        );
        let gone = &resp.filter_results[0].matching_acls[0];
        assert_eq!(
            (
                gone.resource_name.as_str(),
                gone.pattern_type,
                gone.operation
            ),
            ("app-", PREFIXED, WRITE)
        );
        let denied = &resp.filter_results[2].matching_acls[0];
        assert_eq!((denied.permission_type, denied.operation), (DENY, WRITE));
        assert_eq!(ctx.view().acls.len(), 4);
        let left = describe(&ctx, describe_filter(TOPIC, Some("app-1"), MATCH, None), 3).await;
        assert_eq!(resources(&left), vec!["2:*:3:User:bob"]);
    });
}

// ---- Client quotas ----

fn alter_entry(entity: &[(&str, Option<&str>)], ops: &[(&str, Option<f64>)]) -> AlterEntry {
    let mut e = AlterEntry::default();
    e.entity = entity
        .iter()
        .map(|(kind, name)| {
            let mut d = AlterEntity::default();
            d.entity_type = str_bytes(*kind);
            d.entity_name = name.map(str_bytes);
            d
        })
        .collect();
    e.ops = ops
        .iter()
        .map(|(key, value)| {
            let mut op = OpData::default();
            op.key = str_bytes(*key);
            op.value = value.unwrap_or(0.0);
            op.remove = value.is_none();
            op
        })
        .collect();
    e
}

async fn alter_quotas(
    ctx: &Ctx,
    entries: Vec<AlterEntry>,
    validate_only: bool,
) -> Vec<(i16, Option<String>)> {
    let mut req = AlterClientQuotasRequest::default();
    req.entries = entries;
    req.validate_only = validate_only;
    let n = req.entries.len();
    let resp = alter_client_quotas::handle(req, 1, ctx, &session(ADMIN)).await;
    encodes(&resp, 0..=1);
    assert_eq!(resp.entries.len(), n);
    resp.entries
        .iter()
        .map(|e| {
            (
                e.error_code,
                e.error_message.as_ref().map(|m| m.to_string()),
            )
        })
        .collect()
}

fn component(kind: &str, match_type: i8, name: Option<&str>) -> ComponentData {
    let mut c = ComponentData::default();
    c.entity_type = str_bytes(kind);
    c.match_type = match_type;
    c._match = name.map(str_bytes);
    c
}

fn describe_quotas(
    ctx: &Ctx,
    components: Vec<ComponentData>,
    strict: bool,
) -> DescribeClientQuotasResponse {
    let mut req = DescribeClientQuotasRequest::default();
    req.components = components;
    req.strict = strict;
    let resp = describe_client_quotas::handle(req, 1, ctx, &session(ADMIN));
    encodes(&resp, 0..=1);
    resp
}

/// Each entry as `type=name,...` (`<default>` for a null name) and its
/// values `key=value,...`.
fn quota_entries(resp: &DescribeClientQuotasResponse) -> Vec<(String, String)> {
    assert_eq!(resp.error_code, NONE, "{:?}", resp.error_message);
    resp.entries
        .as_ref()
        .expect("entries")
        .iter()
        .map(|e| {
            let entity: Vec<String> = e
                .entity
                .iter()
                .map(|c| {
                    let name = c.entity_name.as_deref().unwrap_or("<default>");
                    format!("{}={name}", c.entity_type.as_str())
                })
                .collect();
            let values: Vec<String> = e
                .values
                .iter()
                .map(|v| format!("{}={}", v.key.as_str(), v.value))
                .collect();
            (entity.join(","), values.join(","))
        })
        .collect()
}

const EXACT: i8 = 0;
const DEFAULT: i8 = 1;
const SPECIFIED: i8 = 2;

#[test]
fn client_quotas_are_altered_and_described() {
    on_one_shard(&[], |ctx, _| async move {
        let results = alter_quotas(
            &ctx,
            vec![
                alter_entry(
                    &[("user", Some("alice"))],
                    &[("producer_byte_rate", Some(1024.0))],
                ),
                alter_entry(&[("user", None)], &[("consumer_byte_rate", Some(2048.0))]),
                alter_entry(
                    &[("user", Some("alice")), ("client-id", Some("c1"))],
                    &[("request_percentage", Some(50.0))],
                ),
                alter_entry(&[("ip", None)], &[("connection_creation_rate", Some(10.0))]),
                alter_entry(&[("client-id", None)], &[("producer_byte_rate", Some(5.5))]),
                alter_entry(
                    &[("user", Some("alice"))],
                    &[("consumer_byte_rate", Some(1.0))],
                ),
                alter_entry(
                    &[("group", Some("g"))],
                    &[("producer_byte_rate", Some(1.0))],
                ),
                alter_entry(
                    &[("user", Some("x")), ("ip", Some("10.0.0.1"))],
                    &[("connection_creation_rate", Some(1.0))],
                ),
                alter_entry(&[], &[("producer_byte_rate", Some(1.0))]),
            ],
            false,
        )
        .await;
        let codes: Vec<i16> = results.iter().map(|r| r.0).collect();
        assert_eq!(codes, vec![0, 0, 0, 0, 42, 42, 42, 42, 42], "{results:?}");
        assert!(results[0].1.is_none());
        let duplicate = results[5].1.as_deref().expect("message");
        assert!(
            duplicate.starts_with("Ignoring duplicate entity"),
            "{duplicate}"
        );
        assert_eq!(ctx.view().quotas.len(), 4);

        // validate_only writes nothing, and answers what a write would.
        let checked = alter_quotas(
            &ctx,
            vec![
                alter_entry(
                    &[("user", Some("bob"))],
                    &[("producer_byte_rate", Some(1.0))],
                ),
                alter_entry(&[("user", Some("bob"))], &[("no_such_key", Some(1.0))]),
            ],
            true,
        )
        .await;
        assert_eq!(checked.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 42]);
        assert_eq!(ctx.view().quotas.len(), 4);
        let bob = describe_quotas(&ctx, vec![component("user", EXACT, Some("bob"))], false);
        assert!(quota_entries(&bob).is_empty());

        let alice = describe_quotas(&ctx, vec![component("user", EXACT, Some("alice"))], false);
        assert_eq!(
            quota_entries(&alice),
            vec![
                ("user=alice".into(), "producer_byte_rate=1024".into()),
                (
                    "user=alice,client-id=c1".into(),
                    "request_percentage=50".into()
                ),
            ]
        );
        let strict = describe_quotas(&ctx, vec![component("user", EXACT, Some("alice"))], true);
        assert_eq!(
            quota_entries(&strict),
            vec![("user=alice".into(), "producer_byte_rate=1024".into())]
        );
        let default_user = describe_quotas(&ctx, vec![component("user", DEFAULT, None)], false);
        assert_eq!(
            quota_entries(&default_user),
            vec![("user=<default>".into(), "consumer_byte_rate=2048".into())]
        );
        let with_client =
            describe_quotas(&ctx, vec![component("client-id", SPECIFIED, None)], false);
        assert_eq!(quota_entries(&with_client).len(), 1);
        let ips = describe_quotas(&ctx, vec![component("ip", SPECIFIED, None)], true);
        assert_eq!(
            quota_entries(&ips),
            vec![("ip=<default>".into(), "connection_creation_rate=10".into())]
        );
        assert_eq!(
            quota_entries(&describe_quotas(&ctx, vec![], false)).len(),
            4
        );
        assert!(quota_entries(&describe_quotas(&ctx, vec![], true)).is_empty());

        let refused = |components: Vec<ComponentData>| {
            let resp = describe_quotas(&ctx, components, false);
            assert!(resp.entries.is_none());
            assert!(resp.error_message.is_some());
            resp.error_code
        };
        assert_eq!(
            refused(vec![component("", EXACT, Some("a"))]),
            INVALID_REQUEST
        );
        assert_eq!(
            refused(vec![component("group", EXACT, Some("a"))]),
            UNSUPPORTED_VERSION
        );
        assert_eq!(refused(vec![component("user", 7, None)]), INVALID_REQUEST);
        assert_eq!(
            refused(vec![component("user", EXACT, None)]),
            INVALID_REQUEST
        );
        assert_eq!(
            refused(vec![component("user", DEFAULT, Some("a"))]),
            INVALID_REQUEST
        );
        assert_eq!(
            refused(vec![
                component("user", SPECIFIED, None),
                component("user", DEFAULT, None)
            ]),
            INVALID_REQUEST
        );
        assert_eq!(
            refused(vec![
                component("user", SPECIFIED, None),
                component("ip", SPECIFIED, None)
            ]),
            INVALID_REQUEST
        );

        // Removing an entity's last key removes the entity.
        let removed = alter_quotas(
            &ctx,
            vec![alter_entry(
                &[("user", Some("alice"))],
                &[("producer_byte_rate", None)],
            )],
            false,
        )
        .await;
        assert_eq!(removed, vec![(NONE, None)]);
        let strict = describe_quotas(&ctx, vec![component("user", EXACT, Some("alice"))], true);
        assert!(quota_entries(&strict).is_empty());
        assert_eq!(ctx.view().quotas.len(), 3);
    });
}

// ---- SCRAM credentials ----

const PASSWORD: &[u8] = b"secret";
const SALT: &[u8] = b"0123456789abcdef";

/// SaltedPassword as a Kafka client computes it (PBKDF2).
fn salted(alg: ScramAlgorithm, iterations: u32) -> Bytes {
    let (pbkdf2, len) = match alg {
        ScramAlgorithm::Sha256 => (ring::pbkdf2::PBKDF2_HMAC_SHA256, 32),
        ScramAlgorithm::Sha512 => (ring::pbkdf2::PBKDF2_HMAC_SHA512, 64),
    };
    let mut out = vec![0u8; len];
    let n = NonZeroU32::new(iterations).expect("iterations");
    ring::pbkdf2::derive(pbkdf2, n, SALT, PASSWORD, &mut out);
    Bytes::from(out)
}

fn upsertion(user: &str, mechanism: i8, iterations: i32) -> ScramCredentialUpsertion {
    let alg = if mechanism == 2 {
        ScramAlgorithm::Sha512
    } else {
        ScramAlgorithm::Sha256
    };
    let mut u = ScramCredentialUpsertion::default();
    u.name = str_bytes(user);
    u.mechanism = mechanism;
    u.iterations = iterations;
    u.salt = Bytes::from_static(SALT);
    u.salted_password = salted(
        alg,
        u32::try_from(iterations).unwrap_or(4096).clamp(1, 16384),
    );
    u
}

fn deletion(user: &str, mechanism: i8) -> ScramCredentialDeletion {
    let mut d = ScramCredentialDeletion::default();
    d.name = str_bytes(user);
    d.mechanism = mechanism;
    d
}

async fn alter_scram(
    ctx: &Ctx,
    upsertions: Vec<ScramCredentialUpsertion>,
    deletions: Vec<ScramCredentialDeletion>,
) -> Vec<(String, i16, Option<String>)> {
    let mut req = AlterUserScramCredentialsRequest::default();
    req.upsertions = upsertions;
    req.deletions = deletions;
    let resp = alter_user_scram_credentials::handle(req, 0, ctx, &session(ADMIN)).await;
    encodes(&resp, 0..=0);
    resp.results
        .iter()
        .map(|r| {
            let message = r.error_message.as_ref().map(|m| m.to_string());
            (r.user.to_string(), r.error_code, message)
        })
        .collect()
}

fn describe_scram(ctx: &Ctx, users: Option<&[&str]>) -> DescribeUserScramCredentialsResponse {
    let mut req = DescribeUserScramCredentialsRequest::default();
    req.users = users.map(|list| {
        list.iter()
            .map(|u| {
                let mut n = UserName::default();
                n.name = str_bytes(*u);
                n
            })
            .collect()
    });
    let resp = describe_user_scram_credentials::handle(req, 0, ctx, &session(ADMIN));
    encodes(&resp, 0..=0);
    resp
}

/// A described user: (user, code, [(mechanism, iterations)]).
type Described = (String, i16, Vec<(i8, i32)>);

fn scram_infos(resp: &DescribeUserScramCredentialsResponse) -> Vec<Described> {
    assert_eq!(resp.error_code, NONE);
    resp.results
        .iter()
        .map(|r| {
            let infos = r
                .credential_infos
                .iter()
                .map(|c| (c.mechanism, c.iterations))
                .collect();
            (r.user.to_string(), r.error_code, infos)
        })
        .collect()
}

fn codes_of(results: &[(String, i16, Option<String>)]) -> Vec<(&str, i16)> {
    results.iter().map(|(u, c, _)| (u.as_str(), *c)).collect()
}

#[test]
fn scram_credentials_are_altered_and_described() {
    on_one_shard(&[], |ctx, _| async move {
        let results = alter_scram(
            &ctx,
            vec![
                upsertion("alice", 1, 4096),
                upsertion("alice", 2, 8192),
                upsertion("bob", 1, 4096),
            ],
            vec![],
        )
        .await;
        assert_eq!(codes_of(&results), vec![("alice", NONE), ("bob", NONE)]);
        // The broker keeps the keys of the password, not the salted password.
        let view = ctx.view();
        let stored = view
            .users
            .get("alice")
            .expect("alice")
            .get(ScramMechanism::Sha256)
            .cloned();
        let stored = stored.expect("SHA-256");
        let want = StoredCredential::from_password(ScramAlgorithm::Sha256, PASSWORD, SALT, 4096)
            .expect("credential");
        assert_eq!(stored.stored_key, want.stored_key);
        assert_eq!(stored.server_key, want.server_key);
        assert_eq!((stored.salt.as_slice(), stored.iterations), (SALT, 4096));
        assert_ne!(
            stored.server_key.as_slice(),
            &salted(ScramAlgorithm::Sha256, 4096)[..]
        );

        let mut short = upsertion("erin", 1, 4096);
        short.salted_password = Bytes::from_static(b"0123456789");
        let mut no_salt = upsertion("hank", 2, 4096);
        no_salt.salt = Bytes::new();
        let results = alter_scram(
            &ctx,
            vec![
                upsertion("carol", 1, 1000),
                upsertion("dave", 2, 20000),
                short,
                upsertion("frank", 3, 4096),
                upsertion("gina", 1, 4096),
                upsertion("gina", 1, 4096),
                no_salt,
                // Refused with its user's other item: alice keeps SHA-512.
                upsertion("alice", 1, 100),
                upsertion("", 1, 4096),
            ],
            vec![deletion("nobody", 1), deletion("alice", 2)],
        )
        .await;
        assert_eq!(
            codes_of(&results),
            vec![
                ("nobody", RESOURCE_NOT_FOUND),
                ("alice", UNACCEPTABLE_CREDENTIAL),
                ("carol", UNACCEPTABLE_CREDENTIAL),
                ("dave", UNACCEPTABLE_CREDENTIAL),
                ("erin", UNACCEPTABLE_CREDENTIAL),
                ("frank", UNSUPPORTED_SASL_MECHANISM),
                ("gina", DUPLICATE_RESOURCE),
                ("hank", UNACCEPTABLE_CREDENTIAL),
                ("", UNACCEPTABLE_CREDENTIAL),
            ]
        );
        let message = |user: &str| {
            let found = results.iter().find(|r| r.0 == user).expect("result");
            found.2.clone().expect("message")
        };
        assert_eq!(message("carol"), "Too few iterations");
        assert_eq!(message("dave"), "Too many iterations");
        assert_eq!(message("alice"), "Too few iterations");
        assert!(message("erin").contains("32 bytes"), "{}", message("erin"));
        assert!(
            message("nobody").contains("does not exist"),
            "{}",
            message("nobody")
        );

        let all = describe_scram(&ctx, None);
        assert_eq!(
            scram_infos(&all),
            vec![
                ("alice".into(), NONE, vec![(1, 4096), (2, 8192)]),
                ("bob".into(), NONE, vec![(1, 4096)]),
            ]
        );
        assert_eq!(scram_infos(&describe_scram(&ctx, Some(&[]))).len(), 2);

        let results =
            alter_scram(&ctx, vec![], vec![deletion("bob", 1), deletion("alice", 2)]).await;
        assert_eq!(codes_of(&results), vec![("bob", NONE), ("alice", NONE)]);
        let bob = describe_scram(&ctx, Some(&["bob", "alice", "zed", "alice"]));
        assert_eq!(
            scram_infos(&bob),
            vec![
                ("bob".into(), RESOURCE_NOT_FOUND, vec![]),
                ("alice".into(), DUPLICATE_RESOURCE, vec![]),
                ("zed".into(), RESOURCE_NOT_FOUND, vec![]),
            ]
        );
        let missing = bob.results[0].error_message.as_deref().expect("message");
        assert!(
            missing.contains("attempt to describe a user credential that does not exist"),
            "{missing}"
        );
        let alice = describe_scram(&ctx, Some(&["alice"]));
        assert_eq!(
            scram_infos(&alice),
            vec![("alice".into(), NONE, vec![(1, 4096)])]
        );
    });
}

// ---- Authorization ----

#[test]
fn a_user_without_acls_is_refused_everything() {
    on_one_shard(&[], |ctx, settings| async move {
        let ctx = authorizing(&ctx, &settings);
        let eve = session("User:eve");
        let resp = describe_acls::handle(describe_filter(ANY, None, ANY, None), 3, &ctx, &eve);
        assert_eq!((resp.error_code, resp.resources.len()), (CLUSTER_FAILED, 0));
        let two = || {
            creations(vec![
                creation(TOPIC, "t", LITERAL, "User:eve", READ, ALLOW),
                creation(GROUP, "g", LITERAL, "User:eve", READ, ALLOW),
            ])
        };
        let resp = create_acls::handle(two(), 3, &ctx, &eve).await;
        assert!(created_codes(&resp)
            .iter()
            .all(|(c, _)| *c == CLUSTER_FAILED));
        assert_eq!((resp.results.len(), ctx.view().acls.len()), (2, 0));
        let mut req = DeleteAclsRequest::default();
        req.filters = vec![delete_filter(ANY, None, ANY, None)];
        let resp = delete_acls::handle(req, 3, &ctx, &eve).await;
        assert_eq!(resp.filter_results[0].error_code, CLUSTER_FAILED);

        let resp = describe_client_quotas::handle(Default::default(), 1, &ctx, &eve);
        assert_eq!(
            (resp.error_code, resp.entries.is_none()),
            (CLUSTER_FAILED, true)
        );
        encodes(&resp, 0..=1);
        let mut req = AlterClientQuotasRequest::default();
        req.entries = vec![alter_entry(
            &[("user", Some("eve"))],
            &[("producer_byte_rate", Some(1.0))],
        )];
        let resp = alter_client_quotas::handle(req, 1, &ctx, &eve).await;
        assert_eq!(resp.entries[0].error_code, CLUSTER_FAILED);
        assert_eq!(
            resp.entries[0].entity[0].entity_name.as_deref(),
            Some("eve")
        );
        assert!(ctx.view().quotas.is_empty());

        let mut req = DescribeUserScramCredentialsRequest::default();
        let mut name = UserName::default();
        name.name = str_bytes("eve");
        req.users = Some(vec![name]);
        let resp = describe_user_scram_credentials::handle(req, 0, &ctx, &eve);
        assert_eq!(resp.error_code, CLUSTER_FAILED);
        assert_eq!(resp.results[0].error_code, CLUSTER_FAILED);
        let mut req = AlterUserScramCredentialsRequest::default();
        req.upsertions = vec![upsertion("eve", 1, 4096), upsertion("eve", 2, 4096)];
        let resp = alter_user_scram_credentials::handle(req, 0, &ctx, &eve).await;
        assert_eq!(resp.results.len(), 1, "one result per user");
        assert_eq!(resp.results[0].error_code, CLUSTER_FAILED);
        assert!(ctx.view().users.is_empty());

        // The super user may; ALTER on the cluster lets alice manage ACLs
        // (and describe them: ALTER implies DESCRIBE) but not read quotas
        // (DESCRIBE_CONFIGS is implied by ALTER_CONFIGS only).
        let grant = creations(vec![creation(
            CLUSTER_TYPE,
            "kafka-cluster",
            LITERAL,
            "User:alice",
            ALTER,
            ALLOW,
        )]);
        let resp = create_acls::handle(grant, 3, &ctx, &session(ADMIN)).await;
        assert_eq!(created_codes(&resp), vec![(NONE, None)]);
        let alice = session("User:alice");
        let resp = create_acls::handle(two(), 3, &ctx, &alice).await;
        assert!(created_codes(&resp).iter().all(|(c, _)| *c == NONE));
        let resp = describe_acls::handle(describe_filter(ANY, None, ANY, None), 3, &ctx, &alice);
        assert_eq!((resp.error_code, resp.resources.len()), (NONE, 3));
        let resp = describe_client_quotas::handle(Default::default(), 1, &ctx, &alice);
        assert_eq!(resp.error_code, CLUSTER_FAILED);
        let results = alter_scram(&ctx, vec![upsertion("eve", 1, 4096)], vec![]).await;
        assert_eq!(codes_of(&results), vec![("eve", NONE)]);
    });
}

// ---- Dispatch ----

async fn dispatched<T: Encodable>(ctx: &Ctx, key: ApiKey, version: i16, req: &T) -> ResponseKind {
    let mut buf = BytesMut::new();
    req.encode(&mut buf, version).expect("encode request");
    let mut body = buf.freeze();
    let resp = dispatch(key, version, &mut body, ctx, &session(ADMIN)).await;
    let resp = resp.expect("decoded").expect("a response");
    assert!(body.is_empty(), "{key:?} read the whole body");
    resp.body
}

#[test]
fn the_seven_apis_are_dispatched() {
    on_one_shard(&[], |ctx, _| async move {
        let create = creations(vec![creation(TOPIC, "t", LITERAL, "User:a", READ, ALLOW)]);
        for version in 0..=3 {
            let r = dispatched(&ctx, ApiKey::CreateAcls, version, &create).await;
            let ResponseKind::CreateAcls(r) = r else {
                panic!("{r:?}")
            };
            assert_eq!(r.results[0].error_code, NONE, "v{version}");
            let filter = describe_filter(TOPIC, Some("t"), LITERAL, None);
            let r = dispatched(&ctx, ApiKey::DescribeAcls, version, &filter).await;
            let ResponseKind::DescribeAcls(r) = r else {
                panic!("{r:?}")
            };
            assert_eq!(resources(&r), vec!["2:t:3:User:a"], "v{version}");
        }
        let mut delete = DeleteAclsRequest::default();
        delete.filters = vec![delete_filter(TOPIC, Some("t"), LITERAL, None)];
        let r = dispatched(&ctx, ApiKey::DeleteAcls, 0, &delete).await;
        let ResponseKind::DeleteAcls(r) = r else {
            panic!("{r:?}")
        };
        assert_eq!(r.filter_results[0].matching_acls.len(), 1);

        let mut alter = AlterClientQuotasRequest::default();
        alter.entries = vec![alter_entry(
            &[("client-id", None)],
            &[("producer_byte_rate", Some(1.0))],
        )];
        for version in 0..=1 {
            let r = dispatched(&ctx, ApiKey::AlterClientQuotas, version, &alter).await;
            let ResponseKind::AlterClientQuotas(r) = r else {
                panic!("{r:?}")
            };
            assert_eq!(r.entries[0].error_code, NONE);
            let mut describe = DescribeClientQuotasRequest::default();
            describe.components = vec![component("client-id", DEFAULT, None)];
            let r = dispatched(&ctx, ApiKey::DescribeClientQuotas, version, &describe).await;
            let ResponseKind::DescribeClientQuotas(r) = r else {
                panic!("{r:?}")
            };
            assert_eq!(quota_entries(&r).len(), 1);
        }

        let mut alter = AlterUserScramCredentialsRequest::default();
        alter.upsertions = vec![upsertion("u", 2, 4096)];
        let r = dispatched(&ctx, ApiKey::AlterUserScramCredentials, 0, &alter).await;
        let ResponseKind::AlterUserScramCredentials(r) = r else {
            panic!("{r:?}")
        };
        assert_eq!(r.results[0].error_code, NONE);
        let describe = DescribeUserScramCredentialsRequest::default();
        let r = dispatched(&ctx, ApiKey::DescribeUserScramCredentials, 0, &describe).await;
        let ResponseKind::DescribeUserScramCredentials(r) = r else {
            panic!("{r:?}")
        };
        assert_eq!(scram_infos(&r), vec![("u".into(), NONE, vec![(2, 4096)])]);
    });
}

#[test]
fn other_brokers_are_given_by_the_address_of_the_clients_listener() {
    use crate::security::listeners::Listener;
    use crate::security::{Security, SecurityProtocol, Session};
    use sluice_raft::{BrokerMeta, Endpoint, MetadataView};
    on_one_shard(&[], |ctx, settings| async move {
        let listener = |name: &str, port: u16| Listener {
            name: name.into(),
            protocol: SecurityProtocol::Plaintext,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            advertised_host: "127.0.0.1".into(),
            advertised_port: port,
        };
        let mut node = crate::server::node_info(&settings);
        node.security = Arc::new(Security {
            listeners: vec![listener("INTERNAL", 9092), listener("EXTERNAL", 19092)],
            ..Security::default()
        });
        let ctx = Ctx::new(Rc::clone(&ctx.shard), ctx.meta.clone(), Arc::new(node));
        let mut view = MetadataView::default();
        let endpoint = |listener: &str, host: &str, port| Endpoint {
            listener: listener.into(),
            host: host.into(),
            port,
        };
        view.brokers.insert(
            2,
            Arc::new(BrokerMeta {
                id: 2,
                host: "10.0.0.2".into(),
                port: 9092,
                fenced: false,
                endpoints: vec![
                    endpoint("INTERNAL", "10.0.0.2", 9092),
                    endpoint("EXTERNAL", "broker-2.example", 19092),
                ],
            }),
        );
        let on = |index| Session::new(index, SecurityProtocol::Plaintext, "127.0.0.1".into(), None);
        let external = ctx.broker(&view, 2, &on(1)).expect("broker 2");
        assert_eq!(
            (external.host.as_str(), external.port),
            ("broker-2.example", 19092)
        );
        let internal = ctx.broker(&view, 2, &on(0)).expect("broker 2");
        assert_eq!((internal.host.as_str(), internal.port), ("10.0.0.2", 9092));
        // A broker registered without its listeners: its registered address.
        view.brokers.insert(
            3,
            Arc::new(BrokerMeta {
                id: 3,
                host: "10.0.0.3".into(),
                port: 9092,
                fenced: false,
                endpoints: Vec::new(),
            }),
        );
        let old = ctx.broker(&view, 3, &on(1)).expect("broker 3");
        assert_eq!((old.host.as_str(), old.port), ("10.0.0.3", 9092));
    });
}

#[test]
fn controller_mutations_over_the_quota_are_refused_or_throttled() {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    on_one_shard(&[], |ctx, _| async move {
        let results = alter_quotas(
            &ctx,
            vec![alter_entry(
                &[("user", Some("carol"))],
                &[("controller_mutation_rate", Some(2.0))],
            )],
            false,
        )
        .await;
        assert_eq!(results[0].0, 0, "{results:?}");
        let carol = session("User:carol");
        let topic = |name: &'static str, partitions| {
            CreatableTopic::default()
                .with_name(TopicName(str_bytes(name)))
                .with_num_partitions(partitions)
                .with_replication_factor(-1)
        };
        // Version 7: the first topic (4 partitions, under the quota when
        // asked) is created; the next one, asked over it, is refused.
        let req =
            CreateTopicsRequest::default().with_topics(vec![topic("mut-a", 4), topic("mut-b", 1)]);
        let r = super::create_topics::handle(req, 7, &ctx, &carol).await;
        let codes: Vec<i16> = r.topics.iter().map(|t| t.error_code).collect();
        assert_eq!(codes, vec![0, 89], "{r:?}");
        assert!(r.throttle_time_ms > 0, "{r:?}");
        assert!(
            carol.throttled_until.get().is_none(),
            "a v7 client backs off itself"
        );
        // Version 5 knows no such error: let through, and throttled.
        let req = CreateTopicsRequest::default().with_topics(vec![topic("mut-c", 1)]);
        let r = super::create_topics::handle(req, 5, &ctx, &carol).await;
        assert_eq!(r.topics[0].error_code, 0, "{r:?}");
        assert!(r.throttle_time_ms > 0, "{r:?}");
        assert!(
            carol.throttled_until.get().is_some(),
            "an old client is muted"
        );
        // Deleting counts too: still over the quota, refused (v6).
        let req = DeleteTopicsRequest::default().with_topics(vec![
            kafka_protocol::messages::delete_topics_request::DeleteTopicState::default()
                .with_name(Some(TopicName(str_bytes("mut-a")))),
        ]);
        let r = super::delete_topics::handle(req, 6, &ctx, &carol).await;
        assert_eq!(r.responses[0].error_code, 89, "{r:?}");
        assert!(ctx.topic("mut-a").is_some(), "not deleted");
        // Another user has no quota.
        let dave = session("User:dave");
        let req = CreateTopicsRequest::default().with_topics(vec![topic("mut-d", 8)]);
        let r = super::create_topics::handle(req, 7, &ctx, &dave).await;
        assert_eq!(
            (r.topics[0].error_code, r.throttle_time_ms),
            (0, 0),
            "{r:?}"
        );
    });
}
