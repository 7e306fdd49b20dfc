//! Test certificates, generated per test run in a temporary directory
//! (never committed): a CA, a server certificate for 127.0.0.1 and
//! localhost, client certificates (trusted, expired, and one from a CA the
//! broker does not trust).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate and its key, as PEM files.
pub struct Pem {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct Pki {
    _dir: tempfile::TempDir,
    /// The CA the broker's certificate and trusted clients chain to.
    pub ca: PathBuf,
    pub server: Pem,
    /// A node's certificate for 127.0.0.1 and localhost, for both ends of
    /// inter-broker TLS (its principal: `NODE_PRINCIPAL`).
    pub node: Pem,
    /// Subject `CN=alice-client,O=Sluice Tests`.
    pub client: Pem,
    /// Signed by the CA, valid from 2020 to 2021.
    pub expired: Pem,
    /// Signed by another CA.
    pub untrusted: Pem,
}

/// The principal of `Pki::node` as the broker names it: RFC 2253 writes
/// the subject's attributes last first, and rcgen writes CN before O.
pub const NODE_PRINCIPAL: &str = "User:O=Sluice Tests,CN=sluice-node";

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("CA certificate");
    Ca { cert, key }
}

fn issue(
    dir: &Path,
    name: &str,
    by: &Ca,
    sans: Vec<String>,
    cn: &str,
    usages: Vec<ExtendedKeyUsagePurpose>,
    expired: bool,
) -> Pem {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(sans).expect("params");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Sluice Tests");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = usages;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = params
        .signed_by(&key, &by.cert, &by.key)
        .expect("sign certificate");
    let pem = Pem {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&pem.cert, cert.pem()).expect("write certificate");
    std::fs::write(&pem.key, key.serialize_pem()).expect("write key");
    pem
}

/// Generates a fresh set of certificates.
pub fn generate() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let authority = ca("Sluice Test CA");
    let other = ca("Another CA");
    let ca_path = d.join("ca.pem");
    std::fs::write(&ca_path, authority.cert.pem()).expect("write CA");
    let sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let server = issue(
        d,
        "server",
        &authority,
        sans,
        "localhost",
        vec![ExtendedKeyUsagePurpose::ServerAuth],
        false,
    );
    let node = issue(
        d,
        "node",
        &authority,
        vec!["localhost".to_string(), "127.0.0.1".to_string()],
        "sluice-node",
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        false,
    );
    let client_usage = || vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = issue(
        d,
        "client",
        &authority,
        vec![],
        "alice-client",
        client_usage(),
        false,
    );
    let expired = issue(
        d,
        "expired",
        &authority,
        vec![],
        "old-client",
        client_usage(),
        true,
    );
    let untrusted = issue(
        d,
        "untrusted",
        &other,
        vec![],
        "mallory",
        client_usage(),
        false,
    );
    Pki {
        _dir: dir,
        ca: ca_path,
        server,
        node,
        client,
        expired,
        untrusted,
    }
}
