"""TLS, SASL and ACLs of the real sluice binary, driven by kafka-python and
confluent-kafka (librdkafka).

One broker serves the module: four listeners (PLAINTEXT, SASL_SSL,
SASL_PLAINTEXT, SSL with required client certificates), the authorizer on,
`User:admin` a super user created from the bootstrap users file. The
certificates are made with the openssl CLI in the module's temporary
directory (security_pki.py).

- SCRAM-SHA-512 over SASL_SSL and PLAIN over SASL_PLAINTEXT as admin, and a
  client certificate over SSL whose RFC 2253 subject is the principal the
  ACLs name: topic created, produce, consume in a group, commit; Metadata
  gives each client the address of the listener it came in on.
- Refusals: a wrong password, an unknown user, a certificate of an untrusted
  CA, no certificate at all; good clients still work afterwards.
- SCRAM credentials through the admin API: upsert, describe (mechanisms and
  iterations), log in, delete one mechanism, refusals of a non-super user.
- ACLs through both admin clients: literal, prefixed, DENY over ALLOW, group
  ACLs, Metadata hiding what the principal may not describe, describe with
  LITERAL / PREFIXED / MATCH / ANY filters, delete.
- SIGKILL and restart on the same data dir and ports: ACLs and SCRAM users
  are still there.

The tests run in file order; each creates what it uses (users, topics,
ACLs), and the restart test compares everything the earlier ones left.
Every client call has a timeout; every wait has a deadline.

Two kafka-python 3.0.12 habits shape the checks: a refused bootstrap is
retried until bootstrap_timeout_ms and ends in KafkaTimeoutError, the
SaslAuthenticationFailedError (or TLS alert) only logged
(`bootstrap_refused` reads it from the log); and its consumer, assigned a
topic the principal may not describe, keeps refreshing metadata without
raising (`describe_refused` checks the Metadata answer instead).
"""

import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import KafkaException
from confluent_kafka import admin as rd
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    NewTopic,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)
from kafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaTimeoutError,
    SaslAuthenticationFailedError,
    TopicAuthorizationFailedError,
)

from ports import free_port
from security_pki import CAROL_PRINCIPAL, Pki

START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
WAIT_S = 15  # bound of every client call and every wait
WAIT_MS = WAIT_S * 1000
# A refused client's bootstrap: kafka-python retries a failed bootstrap
# connection until this runs out (the broker answers a failed SASL exchange
# after --failed-authentication-delay-ms, 100 ms by default).
REFUSAL_WAIT_MS = 3000
REFUSED_CLIENTS_MAX = 5
LISTENERS = ("PLAINTEXT", "SASL_SSL", "SASL_PLAINTEXT", "SSL")
ADMIN_PASSWORD = "admin-secret"
BOB = "bob"
BOB_PASSWORD = "bob-secret"
BOB_PRINCIPAL = "User:bob"


class SecureBroker:
    """One sluice node with every kind of listener, restartable on the same
    data dir and ports."""

    def __init__(self, root, pki):
        binary = os.environ.get("SLUICE_BIN")
        if not binary:
            pytest.fail("set SLUICE_BIN to the sluice binary")
        self.root = root
        self.pki = pki
        self.ports = {name: free_port() for name in LISTENERS}
        self.admin_port = free_port()
        users = os.path.join(root, "users.txt")
        with open(users, "w") as f:
            f.write(f"admin:{ADMIN_PASSWORD}\n")
        listeners = ",".join(f"{name}://127.0.0.1:{port}" for name, port in self.ports.items())
        self.args = [
            binary, "start",
            "--data-dir", os.path.join(root, "data"),
            "--listeners", listeners,
            "--admin-listen", f"127.0.0.1:{self.admin_port}",
            "--shards", "2",
            "--memory", "512MiB",
            "--group-initial-rebalance-delay-ms", "200",
            "--tls-cert-file", pki.server_cert,
            "--tls-key-file", pki.server_key,
            "--tls-client-ca-file", pki.ca,
            "--bootstrap-users-file", users,
            "--authorizer", "true",
            "--super-users", "User:admin",
            "--allow-everyone-if-no-acl-found", "false",
        ]
        self.starts = 0
        self.proc = None
        self.log = None
        self.start()

    def start(self):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        self.log_path = os.path.join(self.root, f"sluice-{self.starts}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"sluice exited ({self.proc.returncode}):\n{self.log_text()}")
            # Probing the plaintext listener only: a probe of a TLS one is a
            # failed handshake (a warning and a count) in the broker.
            if "sluice ready" in self.log_text() and self._accepts(self.ports["PLAINTEXT"]):
                return
            time.sleep(0.05)
        pytest.fail(f"sluice did not start:\n{self.log_text()}")

    @staticmethod
    def _accepts(port):
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def log_text(self):
        with open(self.log_path) as f:
            return f.read()

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.log.close()

    def stop(self):
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)
            code = None
        self.log.close()
        return code

    def address(self, listener):
        return f"127.0.0.1:{self.ports[listener]}"

    def metric_total(self, name):
        """Sum over shards of a counter of the admin port's /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=WAIT_S) as r:
            text = r.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))

    # Client settings: kafka-python keyword arguments.

    def sasl(self, user, password, mechanism="SCRAM-SHA-512", listener="SASL_SSL"):
        kw = dict(
            bootstrap_servers=self.address(listener),
            security_protocol=listener,
            sasl_mechanism=mechanism,
            sasl_plain_username=user,
            sasl_plain_password=password,
        )
        if listener == "SASL_SSL":
            kw["ssl_cafile"] = self.pki.ca
        return self._bounded(kw)

    def cert(self, name):
        """A client presenting the certificate of `name` ("carol" or
        "mallory"), or none when name is None, on the SSL listener."""
        kw = dict(bootstrap_servers=self.address("SSL"), security_protocol="SSL", ssl_cafile=self.pki.ca)
        if name is not None:
            kw["ssl_certfile"], kw["ssl_keyfile"] = self.pki.client(name)
        return self._bounded(kw)

    def anonymous(self):
        return self._bounded(dict(bootstrap_servers=self.address("PLAINTEXT")))

    def admin(self):
        return self.sasl("admin", ADMIN_PASSWORD)

    @staticmethod
    def _bounded(kw):
        kw.update(request_timeout_ms=WAIT_MS, bootstrap_timeout_ms=WAIT_MS)
        return kw

    # confluent-kafka (librdkafka) settings.

    def rd_sasl(self, user, password, mechanism="SCRAM-SHA-512"):
        return {
            "bootstrap.servers": self.address("SASL_SSL"),
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": mechanism,
            "sasl.username": user,
            "sasl.password": password,
            "ssl.ca.location": self.pki.ca,
            "socket.timeout.ms": WAIT_MS,
        }

    def rd_admin(self):
        return rd.AdminClient(self.rd_sasl("admin", ADMIN_PASSWORD))


@pytest.fixture(scope="module")
def broker():
    tmp = tempfile.TemporaryDirectory(prefix="sluice-security-")
    b = SecureBroker(tmp.name, Pki(os.path.join(tmp.name, "pki")))
    yield b
    running = b.proc.poll() is None  # else a (failed) start already reported it
    code = b.stop()
    logs = "".join(open(os.path.join(tmp.name, f"sluice-{i}.log")).read() for i in range(1, b.starts + 1))
    tmp.cleanup()
    assert code == 0 or not running, f"sluice exit code {code}"
    bad = [line for line in logs.splitlines() if " ERROR " in line or "panicked" in line]
    assert not bad, "unexpected broker errors:\n" + "\n".join(bad)


# ---------------------------------------------------------------------------
# kafka-python helpers


def admin_client(kw):
    return KafkaAdminClient(**kw)


def create_topics(broker, partitions_by_name):
    a = admin_client(broker.admin())
    try:
        a.create_topics(
            [NewTopic(name=n, num_partitions=p, replication_factor=1) for n, p in partitions_by_name.items()],
            timeout_ms=WAIT_MS,
        )
    finally:
        a.close()


def produce(kw, topic, values):
    """Sends values (kafka-python 3's default idempotent producer, acks=all)
    and waits for every acknowledgement; returns the offsets."""
    p = KafkaProducer(acks="all", linger_ms=5, max_block_ms=WAIT_MS, delivery_timeout_ms=2 * WAIT_MS, **kw)
    try:
        futures = [p.send(topic, value=v.encode()) for v in values]
        return [f.get(timeout=WAIT_S).offset for f in futures]
    finally:
        p.close(timeout=WAIT_S)


def produce_refused(kw, topic):
    """The error of a send to topic (which must fail)."""
    p = KafkaProducer(acks="all", max_block_ms=WAIT_MS, delivery_timeout_ms=2 * WAIT_MS, **kw)
    try:
        with pytest.raises(Exception) as refused:
            p.send(topic, value=b"refused").get(timeout=WAIT_S)
        return refused.value
    finally:
        p.close(timeout=WAIT_S)


def consumer(kw, group=None):
    return KafkaConsumer(
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,
        **kw,
    )


def poll_values(c, count):
    """Polls c until it returned count records (a bounded wait)."""
    got = []
    deadline = time.time() + WAIT_S
    while len(got) < count:
        assert time.time() < deadline, f"read {got}, wanted {count} records"
        for records in c.poll(timeout_ms=200).values():
            got.extend(r.value.decode() for r in records)
    return got


def poll_error(c, error):
    """Polls c until it raises error (a bounded wait); returns it."""
    deadline = time.time() + WAIT_S
    while time.time() < deadline:
        try:
            records = c.poll(timeout_ms=200)
        except error as e:
            return e
        assert not records, f"records where {error.__name__} was expected: {records}"
    pytest.fail(f"no {error.__name__} within {WAIT_S} s")


def read_assigned(kw, topic, count, partitions=1):
    """Reads count records of topic from the beginning without a group."""
    c = consumer(kw)
    try:
        c.assign([TopicPartition(topic, p) for p in range(partitions)])
        c.seek_to_beginning()
        return poll_values(c, count)
    finally:
        c.close(timeout_ms=WAIT_MS)


def read_refused(kw, topic, error):
    c = consumer(kw)
    try:
        c.assign([TopicPartition(topic, 0)])
        return poll_error(c, error)
    finally:
        c.close(timeout_ms=WAIT_MS)


def consume_in_group(kw, topic, group, count, partitions=1):
    """Subscribes in group, reads count records, commits them; returns the
    values and the committed offsets the broker gives back."""
    c = consumer(kw, group)
    try:
        c.subscribe([topic])
        values = poll_values(c, count)
        c.commit()
        committed = {p: c.committed(TopicPartition(topic, p)) for p in range(partitions)}
        return values, committed
    finally:
        c.close(timeout_ms=WAIT_MS)


def group_refused(kw, topic, group):
    c = consumer(kw, group)
    try:
        c.subscribe([topic])
        return poll_error(c, GroupAuthorizationFailedError)
    finally:
        c.close(timeout_ms=WAIT_MS)


def list_topics(kw):
    a = admin_client(kw)
    try:
        return set(a.list_topics())
    finally:
        a.close()


def describe_refused(kw, topic):
    """Metadata of topic is answered TOPIC_AUTHORIZATION_FAILED, without
    its partitions."""
    a = admin_client(kw)
    try:
        described = a.describe_topics([topic])
    finally:
        a.close()
    assert [(t["name"], t["error_code"], t["partitions"]) for t in described] == [
        (topic, TopicAuthorizationFailedError.errno, [])
    ], described


def logs_in(kw):
    """True when the client authenticates (bootstrap: ApiVersions, SASL,
    Metadata)."""
    a = admin_client(kw)
    a.close()
    return True


class RefusedAdminClient(KafkaAdminClient):
    """A KafkaAdminClient that closes itself (its IO thread) when its
    bootstrap in the constructor fails."""

    def __init__(self, **kw):
        try:
            super().__init__(**kw)
        except BaseException:
            self._closed = False
            self.close()
            raise


def bootstrap_refused(kw, caplog):
    """Bootstraps a kafka-python client that the broker must refuse.
    kafka-python 3.0.12 retries a failed bootstrap connection until
    bootstrap_timeout_ms, then raises KafkaTimeoutError; it logs each failed
    connection with its exception: returns those exceptions."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kafka.net.manager"):
        with pytest.raises(KafkaTimeoutError):
            RefusedAdminClient(**{**kw, "bootstrap_timeout_ms": REFUSAL_WAIT_MS})
    errors = [r.args[1] for r in caplog.records if r.msg.startswith("Bootstrap connection to %s failed")]
    assert errors, "no failed bootstrap connection was logged"
    return errors


def assert_sasl_refused(kw, caplog, message):
    """The broker answers the client's SASL exchange with
    SASL_AUTHENTICATION_FAILED and message. kafka-python 3.0.12 drops an
    answer that it reads in the same wakeup as the connection's close
    (net/transport.py aborts on the EOF and discards the bytes read before
    it), so some attempts end in "socket disconnected" instead: up to
    REFUSED_CLIENTS_MAX clients, until one has read the broker's answer."""
    for _ in range(REFUSED_CLIENTS_MAX):
        errors = bootstrap_refused(kw, caplog)
        answered = [e for e in errors if isinstance(e, SaslAuthenticationFailedError)]
        for e in errors:
            if e in answered:
                assert message in str(e), e
            else:
                assert isinstance(e, KafkaConnectionError) and "socket disconnected" in str(e), e
        if answered:
            return
    pytest.fail(f"no SASL_AUTHENTICATION_FAILED answer read in {REFUSED_CLIENTS_MAX} clients")


def topic_acl(principal, operation, name, pattern=ACLResourcePatternType.LITERAL, permission=ACLPermissionType.ALLOW):
    return ACL(principal, "*", operation, permission, ResourcePattern(ResourceType.TOPIC, name, pattern))


def group_acl(principal, operation, name):
    return ACL(principal, "*", operation, ACLPermissionType.ALLOW, ResourcePattern(ResourceType.GROUP, name))


def acl_filter(principal=None, resource_type=ResourceType.ANY, name=None, pattern=ACLResourcePatternType.ANY):
    return ACLFilter(
        principal, None, ACLOperation.ANY, ACLPermissionType.ANY, ResourcePatternFilter(resource_type, name, pattern)
    )


def binding(kind, name, pattern, principal, operation, permission):
    """The comparable form of an ACL binding in both libraries."""
    return (kind, name, pattern, principal, "*", operation, permission)


def kp_binding(acl):
    p = acl.resource_pattern
    kind, pattern = p.resource_type.name, p.pattern_type.name
    operation, permission = acl.operation.name, acl.permission_type.name
    return binding(kind, p.resource_name, pattern, acl.principal, operation, permission), acl.host


def kp_describe(admin, flt):
    acls, error = admin.describe_acls(flt)
    assert error.__name__ == "NoError", error
    pairs = [kp_binding(a) for a in acls]
    assert all(host == "*" for _, host in pairs), pairs
    return {b for b, _ in pairs}


def kp_create_acls(admin, acls):
    result = admin.create_acls(acls)
    assert result["failed"] == [] and len(result["succeeded"]) == len(acls), result


def rd_binding(b):
    assert b.host == "*", b
    return binding(
        b.restype.name, b.name, b.resource_pattern_type.name, b.principal, b.operation.name, b.permission_type.name
    )


def rd_filter(principal=None, restype=rd.ResourceType.ANY, name=None, pattern=rd.ResourcePatternType.ANY):
    return rd.AclBindingFilter(restype, name, pattern, principal, None, rd.AclOperation.ANY, rd.AclPermissionType.ANY)


def rd_describe(admin, flt):
    return {rd_binding(b) for b in admin.describe_acls(flt, request_timeout=WAIT_S).result(timeout=WAIT_S)}


def ensure_bob(admin):
    """bob has a SCRAM-SHA-256 credential with BOB_PASSWORD (idempotent)."""
    result = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(BOB, ScramMechanism.SCRAM_SHA_256, BOB_PASSWORD)]
    )
    assert result == {BOB: None}, result


def bob(broker, mechanism="SCRAM-SHA-256", password=BOB_PASSWORD):
    return broker.sasl(BOB, password, mechanism)


def metadata_ports(kw):
    a = admin_client(kw)
    try:
        return [(b["host"], b["port"]) for b in a.describe_cluster()["brokers"]]
    finally:
        a.close()


# ---------------------------------------------------------------------------
# 1. The three ways in.


def test_metadata_answers_with_the_listener_the_client_came_in_on(broker):
    assert metadata_ports(broker.anonymous()) == [("127.0.0.1", broker.ports["PLAINTEXT"])]
    assert metadata_ports(broker.admin()) == [("127.0.0.1", broker.ports["SASL_SSL"])]
    assert metadata_ports(broker.sasl("admin", ADMIN_PASSWORD, "PLAIN", "SASL_PLAINTEXT")) == [
        ("127.0.0.1", broker.ports["SASL_PLAINTEXT"])
    ]
    assert metadata_ports(broker.cert("carol")) == [("127.0.0.1", broker.ports["SSL"])]


def test_admin_scram_sha_512_over_sasl_ssl(broker):
    topic = "sec-sasl-ssl"
    create_topics(broker, {topic: 2})
    values = [f"ssl-{i}" for i in range(20)]
    produce(broker.admin(), topic, values)
    got, committed = consume_in_group(broker.admin(), topic, "sec-admin-group", len(values), partitions=2)
    assert sorted(got) == sorted(values)
    assert sum(c for c in committed.values()) == len(values), committed


def test_admin_plain_over_sasl_plaintext(broker):
    topic = "sec-sasl-plain"
    kw = broker.sasl("admin", ADMIN_PASSWORD, "PLAIN", "SASL_PLAINTEXT")
    create_topics(broker, {topic: 1})
    values = [f"plain-{i}" for i in range(10)]
    assert produce(kw, topic, values) == list(range(10))
    got, committed = consume_in_group(kw, topic, "sec-plain-group", len(values))
    assert got == values
    assert committed == {0: 10}


def test_client_certificate_principal_over_ssl(broker):
    topic, group = "sec-carol", "carol-group"
    create_topics(broker, {topic: 1})
    carol = broker.cert("carol")
    # Without ACLs carol (not a super user, no ANONYMOUS fallback) sees and
    # may do nothing.
    assert list_topics(carol) == set()
    assert isinstance(produce_refused(carol, topic), TopicAuthorizationFailedError)

    # ACLs naming the certificate's subject in RFC 2253 order.
    a = admin_client(broker.admin())
    try:
        kp_create_acls(
            a,
            [
                topic_acl(CAROL_PRINCIPAL, ACLOperation.WRITE, topic),
                topic_acl(CAROL_PRINCIPAL, ACLOperation.READ, topic),
                group_acl(CAROL_PRINCIPAL, ACLOperation.READ, group),
            ],
        )
    finally:
        a.close()
    assert list_topics(carol) == {topic}
    values = [f"carol-{i}" for i in range(5)]
    assert produce(carol, topic, values) == list(range(5))
    got, committed = consume_in_group(carol, topic, group, len(values))
    assert got == values
    assert committed == {0: 5}


# ---------------------------------------------------------------------------
# 2. Refusals.


def test_refused_credentials_and_certificates(broker, caplog):
    topic = "sec-refusals"
    create_topics(broker, {topic: 1})
    scram_refused = "Authentication failed during authentication due to invalid credentials with SASL mechanism"
    assert_sasl_refused(broker.sasl("admin", "wrong-password"), caplog, scram_refused + " SCRAM-SHA-512")
    assert_sasl_refused(broker.sasl("nobody", "whatever", "SCRAM-SHA-256"), caplog, scram_refused + " SCRAM-SHA-256")
    plain_refused = "Invalid username or password"
    kw = broker.sasl("admin", "wrong-password", "PLAIN", "SASL_PLAINTEXT")
    assert_sasl_refused(kw, caplog, plain_refused)
    assert_sasl_refused(broker.sasl("nobody", "whatever", "PLAIN", "SASL_PLAINTEXT"), caplog, plain_refused)

    # librdkafka reports the same refusal as an authentication error.
    errors = []
    a = rd.AdminClient({**broker.rd_sasl("admin", "wrong-password"), "error_cb": errors.append})
    with pytest.raises(KafkaException):
        a.list_topics(timeout=3)
    deadline = time.time() + WAIT_S
    while not errors and time.time() < deadline:
        a.poll(0.2)  # serves error_cb
    assert any(e.code() == RdKafkaError._AUTHENTICATION for e in errors), errors
    assert any("Authentication failed" in e.str() for e in errors), errors
    del a  # else librdkafka keeps retrying in the background

    # The broker refuses a certificate of an untrusted CA, and a client
    # without one on a listener that requires it (TLS alerts from the server).
    failed_before = broker.metric_total("sluice_shard_tls_handshakes_failed_total")
    errors = bootstrap_refused(broker.cert("mallory"), caplog)
    assert all(isinstance(e, KafkaConnectionError) for e in errors), errors
    assert all("unknown ca" in str(e).lower() for e in errors), errors
    errors = bootstrap_refused(broker.cert(None), caplog)
    assert all(isinstance(e, KafkaConnectionError) for e in errors), errors
    assert all("certificate required" in str(e).lower() for e in errors), errors
    assert broker.metric_total("sluice_shard_tls_handshakes_failed_total") >= failed_before + 2

    # ANONYMOUS on the plaintext listener: no ACL, so nothing.
    anonymous = broker.anonymous()
    assert list_topics(anonymous) == set()
    assert isinstance(produce_refused(anonymous, topic), TopicAuthorizationFailedError)

    # Good clients still get in.
    assert topic in list_topics(broker.admin())
    assert logs_in(broker.sasl("admin", ADMIN_PASSWORD, "PLAIN", "SASL_PLAINTEXT"))
    assert logs_in(broker.cert("carol"))


# ---------------------------------------------------------------------------
# 3. SCRAM credentials through the admin API.


def scram_infos(description):
    assert description["error"] is None, description
    return {(ci["mechanism"], ci["iterations"]) for ci in description["credential_infos"]}


def scram_table(described):
    return {user: scram_infos(d) for user, d in described.items()}


def test_scram_credentials_admin(broker, caplog):
    a = admin_client(broker.admin())
    try:
        result = a.alter_user_scram_credentials(
            [
                UserScramCredentialUpsertion(BOB, ScramMechanism.SCRAM_SHA_256, BOB_PASSWORD, iterations=4096),
                UserScramCredentialUpsertion(BOB, ScramMechanism.SCRAM_SHA_512, BOB_PASSWORD, iterations=8192),
            ]
        )
        assert result == {BOB: None}
        described = a.describe_user_scram_credentials([BOB])
        assert scram_infos(described[BOB]) == {
            (ScramMechanism.SCRAM_SHA_256, 4096),
            (ScramMechanism.SCRAM_SHA_512, 8192),
        }
        everyone = a.describe_user_scram_credentials()
        assert set(everyone) == {"admin", BOB}, everyone
        assert {m for m, _ in scram_infos(everyone["admin"])} == {
            ScramMechanism.SCRAM_SHA_256,
            ScramMechanism.SCRAM_SHA_512,
        }
        unknown = a.describe_user_scram_credentials(["nobody"])
        assert unknown["nobody"]["error"], unknown
        # Kafka refuses fewer than 4096 iterations (UNACCEPTABLE_CREDENTIAL).
        weak = a.alter_user_scram_credentials(
            [UserScramCredentialUpsertion("weak", ScramMechanism.SCRAM_SHA_256, "pw", iterations=1000)]
        )
        assert weak["weak"], weak
        assert "weak" not in a.describe_user_scram_credentials()
    finally:
        a.close()

    assert logs_in(bob(broker, "SCRAM-SHA-256"))
    assert logs_in(bob(broker, "SCRAM-SHA-512"))
    assert logs_in(broker.sasl(BOB, BOB_PASSWORD, "PLAIN", "SASL_PLAINTEXT"))
    # bob is no super user: the credential APIs need the cluster ALTER and
    # DESCRIBE operations.
    bob_admin = admin_client(bob(broker))
    try:
        with pytest.raises(ClusterAuthorizationFailedError):
            bob_admin.describe_user_scram_credentials()
    finally:
        bob_admin.close()
    rd_bob = rd.AdminClient(broker.rd_sasl(BOB, BOB_PASSWORD, "SCRAM-SHA-256"))
    futures = rd_bob.alter_user_scram_credentials(
        [rd.UserScramCredentialDeletion(BOB, rd.ScramMechanism.SCRAM_SHA_512)], request_timeout=WAIT_S
    )
    with pytest.raises(KafkaException) as refused:
        futures[BOB].result(timeout=WAIT_S)
    assert refused.value.args[0].code() == RdKafkaError.CLUSTER_AUTHORIZATION_FAILED, refused.value
    del rd_bob, futures

    a = admin_client(broker.admin())
    try:
        assert a.alter_user_scram_credentials([UserScramCredentialDeletion(BOB, ScramMechanism.SCRAM_SHA_512)]) == {
            BOB: None
        }
        assert scram_infos(a.describe_user_scram_credentials([BOB])[BOB]) == {(ScramMechanism.SCRAM_SHA_256, 4096)}
    finally:
        a.close()
    assert_sasl_refused(
        bob(broker, "SCRAM-SHA-512"),
        caplog,
        "Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512",
    )
    assert logs_in(bob(broker, "SCRAM-SHA-256"))
    assert logs_in(broker.sasl(BOB, BOB_PASSWORD, "PLAIN", "SASL_PLAINTEXT"))


# ---------------------------------------------------------------------------
# 4. ACLs through both admin clients.

ORDERS_WRITE = binding("TOPIC", "orders", "LITERAL", BOB_PRINCIPAL, "WRITE", "ALLOW")
G1_READ = binding("GROUP", "g1", "LITERAL", BOB_PRINCIPAL, "READ", "ALLOW")
ORDERS_PREFIX_READ = binding("TOPIC", "orders", "PREFIXED", BOB_PRINCIPAL, "READ", "ALLOW")
SECRET_DENY = binding("TOPIC", "orders-secret", "LITERAL", BOB_PRINCIPAL, "READ", "DENY")


def test_acls(broker):
    topics = ["orders", "orders-eu", "orders-secret", "payments"]
    create_topics(broker, {t: 1 for t in topics})
    for t in topics:
        produce(broker.admin(), t, [f"{t}-by-admin"])

    a = admin_client(broker.admin())
    r = broker.rd_admin()
    try:
        ensure_bob(a)
        # kafka-python creates the literal ones, librdkafka the others.
        kp_create_acls(
            a,
            [topic_acl(BOB_PRINCIPAL, ACLOperation.WRITE, "orders"), group_acl(BOB_PRINCIPAL, ACLOperation.READ, "g1")],
        )
        created = r.create_acls(
            [
                rd.AclBinding(
                    rd.ResourceType.TOPIC, "orders", rd.ResourcePatternType.PREFIXED, BOB_PRINCIPAL, "*",
                    rd.AclOperation.READ, rd.AclPermissionType.ALLOW,
                ),
                rd.AclBinding(
                    rd.ResourceType.TOPIC, "orders-secret", rd.ResourcePatternType.LITERAL, BOB_PRINCIPAL, "*",
                    rd.AclOperation.READ, rd.AclPermissionType.DENY,
                ),
            ],
            request_timeout=WAIT_S,
        )
        for f in created.values():
            assert f.result(timeout=WAIT_S) is None
        check_describe_filters(a, r)
    finally:
        a.close()

    kw = bob(broker)
    # Metadata of all topics: what bob may describe (WRITE and READ imply
    # DESCRIBE; the DENY is on READ only), never payments.
    assert list_topics(kw) == {"orders", "orders-eu", "orders-secret"}
    assert produce(kw, "orders", ["by-bob"]) == [1]
    assert isinstance(produce_refused(kw, "payments"), TopicAuthorizationFailedError)
    got, committed = consume_in_group(kw, "orders", "g1", 2)
    assert got == ["orders-by-admin", "by-bob"]
    assert committed == {0: 2}
    group_refused(kw, "orders", "g2")
    assert read_assigned(kw, "orders-eu", 1) == ["orders-eu-by-admin"]  # the PREFIXED ALLOW
    read_refused(kw, "orders-secret", TopicAuthorizationFailedError)  # DENY beats the PREFIXED ALLOW
    # Reading payments: Metadata of the topic is answered
    # TOPIC_AUTHORIZATION_FAILED (a consumer assigned to it goes no further;
    # kafka-python's keeps asking without raising).
    describe_refused(kw, "payments")

    # librdkafka deletes the DENY: orders-secret becomes readable through
    # the prefixed ALLOW; then the prefixed ALLOW.
    secret = rd_filter(BOB_PRINCIPAL, rd.ResourceType.TOPIC, "orders-secret", rd.ResourcePatternType.LITERAL)
    deleted = rd_delete(r, secret)
    assert deleted == {SECRET_DENY}
    assert read_assigned(kw, "orders-secret", 1) == ["orders-secret-by-admin"]
    deleted = rd_delete(r, rd_filter(BOB_PRINCIPAL, rd.ResourceType.TOPIC, "orders", rd.ResourcePatternType.PREFIXED))
    assert deleted == {ORDERS_PREFIX_READ}
    # kafka-python deletes the rest (the literal topic and the group ACL).
    a = admin_client(broker.admin())
    try:
        results = a.delete_acls(
            [
                acl_filter(BOB_PRINCIPAL, ResourceType.TOPIC, "orders", ACLResourcePatternType.LITERAL),
                acl_filter(BOB_PRINCIPAL, ResourceType.GROUP, "g1", ACLResourcePatternType.LITERAL),
            ]
        )
        assert [(e.__name__, {kp_binding(m)[0] for m in matched}) for _, matched, e in results] == [
            ("NoError", {ORDERS_WRITE}),
            ("NoError", {G1_READ}),
        ]
        assert kp_describe(a, acl_filter(BOB_PRINCIPAL)) == set()
    finally:
        a.close()
    assert rd_describe(r, rd_filter(BOB_PRINCIPAL)) == set()
    del r  # librdkafka's client ends with its last reference

    # Refused again.
    assert list_topics(kw) == set()
    assert isinstance(produce_refused(kw, "orders"), TopicAuthorizationFailedError)
    group_refused(kw, "orders", "g1")
    describe_refused(kw, "orders-eu")


def check_describe_filters(a, r):
    """The same filters through kafka-python (a) and librdkafka (r)."""
    everything_of_bob = {ORDERS_WRITE, G1_READ, ORDERS_PREFIX_READ, SECRET_DENY}
    cases = [
        # (principal, resource type, name, pattern) -> expected
        ((BOB_PRINCIPAL, "ANY", None, "ANY"), everything_of_bob),
        ((None, "TOPIC", "orders", "LITERAL"), {ORDERS_WRITE}),
        ((None, "TOPIC", "orders", "PREFIXED"), {ORDERS_PREFIX_READ}),
        ((None, "TOPIC", "orders", "MATCH"), {ORDERS_WRITE, ORDERS_PREFIX_READ}),
        ((None, "TOPIC", "orders-secret", "MATCH"), {SECRET_DENY, ORDERS_PREFIX_READ}),
        ((None, "TOPIC", "orders-eu", "MATCH"), {ORDERS_PREFIX_READ}),
        ((None, "TOPIC", "orders-eu", "LITERAL"), set()),
        ((None, "TOPIC", None, "ANY"), {ORDERS_WRITE, ORDERS_PREFIX_READ, SECRET_DENY}),
        ((BOB_PRINCIPAL, "GROUP", None, "ANY"), {G1_READ}),
        ((None, "GROUP", "g1", "MATCH"), {G1_READ}),
    ]
    for (principal, kind, name, pattern), expected in cases:
        kp = kp_describe(a, acl_filter(principal, ResourceType[kind], name, ACLResourcePatternType[pattern]))
        if principal is None:  # carol's ACLs of test 1 are on other resources
            kp = {b for b in kp if b[3] == BOB_PRINCIPAL}
        assert kp == expected, f"kafka-python describe_acls {principal} {kind} {name} {pattern}"
        got = rd_describe(r, rd_filter(principal, rd.ResourceType[kind], name, rd.ResourcePatternType[pattern]))
        if principal is None:
            got = {b for b in got if b[3] == BOB_PRINCIPAL}
        assert got == expected, f"confluent-kafka describe_acls {principal} {kind} {name} {pattern}"


def rd_delete(r, flt):
    futures = r.delete_acls([flt], request_timeout=WAIT_S)
    return {rd_binding(b) for b in futures[flt].result(timeout=WAIT_S)}


# ---------------------------------------------------------------------------
# 5. Restart.


def test_acls_and_users_survive_sigkill(broker, caplog):
    a = admin_client(broker.admin())
    try:
        ensure_bob(a)
        # A second mechanism with another password, then an ACL created and
        # one created and deleted: what the restart must keep.
        result = a.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(BOB, ScramMechanism.SCRAM_SHA_512, "bob-512", iterations=5000)]
        )
        assert result == {BOB: None}
        kp_create_acls(
            a,
            [topic_acl(BOB_PRINCIPAL, ACLOperation.WRITE, "orders"), group_acl(BOB_PRINCIPAL, ACLOperation.READ, "g1")],
        )
        results = a.delete_acls([acl_filter(BOB_PRINCIPAL, ResourceType.GROUP, "g1", ACLResourcePatternType.LITERAL)])
        assert [(e.__name__, len(m)) for _, m, e in results] == [("NoError", 1)]
        acls_before = kp_describe(a, acl_filter())
        users_before = a.describe_user_scram_credentials()
    finally:
        a.close()
    assert ORDERS_WRITE in acls_before and G1_READ not in acls_before
    assert scram_infos(users_before[BOB]) == {
        (ScramMechanism.SCRAM_SHA_256, 4096),
        (ScramMechanism.SCRAM_SHA_512, 5000),
    }

    broker.kill()
    broker.start()

    a = admin_client(broker.admin())
    try:
        assert kp_describe(a, acl_filter()) == acls_before
        assert scram_table(a.describe_user_scram_credentials()) == scram_table(users_before)
    finally:
        a.close()
    kw = bob(broker)
    assert list_topics(kw) == {"orders"}
    assert produce(kw, "orders", ["after-restart"]) == [2]
    assert isinstance(produce_refused(kw, "payments"), TopicAuthorizationFailedError)
    group_refused(kw, "orders", "g1")
    assert logs_in(bob(broker, "SCRAM-SHA-512", "bob-512"))
    assert_sasl_refused(
        bob(broker, "SCRAM-SHA-512"),
        caplog,
        "Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512",
    )
    # The certificate principal's ACLs too.
    assert list_topics(broker.cert("carol")) == {"sec-carol"}
