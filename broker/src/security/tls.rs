//! TLS of the `SSL` and `SASL_SSL` listeners (rustls, ring provider):
//! the certificate chain and key from PEM files, optional client
//! certificates checked against `--tls-client-ca-file` (the connection's
//! principal is then the certificate's subject, as Kafka names it), and
//! the reload on SIGHUP. With an `SSL` inter-broker listener, the client
//! side too: a node connects to the others with its own certificate (its
//! principal there) and trusts theirs through `--tls-client-ca-file`.
//!
//! The configuration in use is one `Arc` behind an `ArcSwap`: a shard
//! loads it once per accepted connection (no lock), and a reload swaps it
//! for new connections while open ones keep theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use arc_swap::ArcSwap;
use futures_rustls::{TlsAcceptor, TlsConnector};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Kafka's `ssl.client.auth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// Asked for; a client without one is `User:ANONYMOUS`, one with an
    /// untrusted certificate is refused.
    Requested,
    /// A trusted client certificate is needed to connect.
    Required,
}

impl ClientAuth {
    pub fn from_name(name: &str) -> Option<ClientAuth> {
        match name.to_ascii_lowercase().as_str() {
            "none" => Some(ClientAuth::None),
            "requested" => Some(ClientAuth::Requested),
            "required" => Some(ClientAuth::Required),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ClientAuth::None => "none",
            ClientAuth::Requested => "requested",
            ClientAuth::Required => "required",
        }
    }
}

/// Where the TLS material is read from (at start and on every reload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

/// The TLS configurations of this node's listeners, reloadable: `SSL`
/// listeners ask for client certificates as `--tls-client-auth` says;
/// `SASL_SSL` listeners never do (clients authenticate with SASL there), as
/// Kafka applies `ssl.client.auth` to SSL listeners only.
pub struct Tls {
    files: TlsFiles,
    current: ArcSwap<Configs>,
}

struct Configs {
    ssl: Arc<ServerConfig>,
    sasl_ssl: Arc<ServerConfig>,
    /// Connections to the other nodes (with a client CA only).
    inter_broker: Option<Arc<ClientConfig>>,
    /// The cluster listener's side of mutual TLS: a certificate of the
    /// client CA required whatever `--tls-client-auth` says (with a client
    /// CA only).
    cluster: Option<Arc<ServerConfig>>,
}

fn configs(files: &TlsFiles) -> anyhow::Result<Configs> {
    let inter_broker = match &files.client_ca {
        Some(ca) => Some(Arc::new(client_config(files, ca)?)),
        None => None,
    };
    let ssl = Arc::new(server_config(files)?);
    let cluster = match &files.client_ca {
        None => None,
        Some(_) if files.client_auth == ClientAuth::Required => Some(Arc::clone(&ssl)),
        Some(_) => Some(Arc::new(server_config(&TlsFiles {
            client_auth: ClientAuth::Required,
            ..files.clone()
        })?)),
    };
    let sasl_ssl = if files.client_auth == ClientAuth::None {
        Arc::clone(&ssl)
    } else {
        let plain = TlsFiles {
            client_auth: ClientAuth::None,
            ..files.clone()
        };
        Arc::new(server_config(&plain)?)
    };
    Ok(Configs {
        ssl,
        sasl_ssl,
        inter_broker,
        cluster,
    })
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Reads the files; every error names the file and what is wrong.
    pub fn load(files: TlsFiles) -> anyhow::Result<Tls> {
        let current = ArcSwap::from_pointee(configs(&files)?);
        Ok(Tls { files, current })
    }

    /// Reads the files again; new connections get the new configuration,
    /// open ones keep theirs. On an error the configuration in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        self.current.store(Arc::new(configs(&self.files)?));
        Ok(())
    }

    /// The configuration in use for the admin port (`--admin-tls`): no
    /// client certificate (its clients authenticate with the bearer token).
    pub fn admin_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.load().sasl_ssl)
    }

    /// A connector to the other nodes' `SSL` or `SASL_SSL` inter-broker
    /// listener, with this node's certificate; `None` without
    /// `--tls-client-ca-file`.
    pub fn connector(&self) -> Option<TlsConnector> {
        let current = self.current.load();
        current
            .inter_broker
            .as_ref()
            .map(|c| TlsConnector::from(Arc::clone(c)))
    }

    /// The configurations in use for mutual TLS between the nodes' cluster
    /// (Raft) links: (listening side, connecting side); `None` without
    /// `--tls-client-ca-file`.
    pub fn cluster_configs(&self) -> Option<(Arc<ServerConfig>, Arc<ClientConfig>)> {
        let current = self.current.load();
        Some((
            Arc::clone(current.cluster.as_ref()?),
            Arc::clone(current.inter_broker.as_ref()?),
        ))
    }

    /// An acceptor with the configuration in use for a listener of
    /// `protocol`.
    pub fn acceptor(&self, protocol: super::SecurityProtocol) -> TlsAcceptor {
        let current = self.current.load();
        let config = match protocol {
            super::SecurityProtocol::SaslSsl => &current.sasl_ssl,
            _ => &current.ssl,
        };
        TlsAcceptor::from(Arc::clone(config))
    }
}

fn read_key(files: &TlsFiles) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        anyhow!(
            "--tls-key-file {}: no private key read: {e}",
            files.key.display()
        )
    })
}

fn read_roots(ca: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca, "--tls-client-ca-file")? {
        roots.add(cert).map_err(|e| {
            anyhow!(
                "--tls-client-ca-file {}: not a CA certificate: {e}",
                ca.display()
            )
        })?;
    }
    Ok(roots)
}

/// The client side of inter-broker TLS: the other nodes' certificates must
/// chain to `ca`; this node presents its own.
fn client_config(files: &TlsFiles, ca: &Path) -> anyhow::Result<ClientConfig> {
    let chain = read_certs(&files.cert, "--tls-cert-file")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(read_roots(ca)?)
        .with_client_auth_cert(chain, read_key(files)?)
        .map_err(|e| {
            anyhow!(
                "--tls-cert-file {} / --tls-key-file {}: {e}",
                files.cert.display(),
                files.key.display()
            )
        })
}

fn server_config(files: &TlsFiles) -> anyhow::Result<ServerConfig> {
    let chain = read_certs(&files.cert, "--tls-cert-file")?;
    let key = read_key(files)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match (&files.client_ca, files.client_auth) {
        (_, ClientAuth::None) | (None, _) => builder.with_no_client_auth(),
        (Some(ca), auth) => {
            let roots = read_roots(ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == ClientAuth::Requested {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| anyhow!("--tls-client-ca-file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder.with_single_cert(chain, key).map_err(|e| {
        anyhow!(
            "--tls-cert-file {} / --tls-key-file {}: {e}",
            files.cert.display(),
            files.key.display()
        )
    })
}

fn read_certs(path: &Path, setting: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow!("{setting} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("{setting} {}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{setting} {}: no certificate in it", path.display());
    }
    Ok(certs)
}

/// Kafka's principal for a client certificate: `User:` and the subject's
/// distinguished name as RFC 2253 writes it (most specific attribute
/// first, `CN=client,OU=eng,O=Example`), as Kafka's default principal
/// builder does.
pub fn principal_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let mut name = String::from("User:");
    let rdns: Vec<_> = parsed.subject().iter_rdn().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            name.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                name.push('+');
            }
            let oid = attr.attr_type();
            let keyword =
                x509_parser::objects::oid2abbrev(oid, x509_parser::objects::oid_registry())
                    .ok()
                    .filter(|s| RFC2253_KEYWORDS.contains(s));
            name.push_str(&keyword.map_or_else(|| oid.to_id_string(), str::to_string));
            name.push('=');
            // As Java's X500Principal writes RFC 2253: a string value of a
            // keyword escaped, anything else `#` and the hex of its DER.
            match keyword.and_then(|_| string_value(attr.attr_value())) {
                Some(value) => escape_into(&mut name, &value),
                None => hex_der_into(&mut name, attr.attr_value()),
            }
        }
    }
    Some(name)
}

/// An attribute value of a string type, decoded (the types Java counts as
/// strings there); `None` for any other type.
fn string_value(value: &x509_parser::der_parser::asn1_rs::Any<'_>) -> Option<String> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let data = value.data;
    match value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String => {
            std::str::from_utf8(data).ok().map(str::to_string)
        }
        // Latin-1, as Java decodes them.
        Tag::T61String | Tag::GeneralString => Some(data.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString if data.len() % 2 == 0 => {
            let units = data
                .chunks_exact(2)
                .map(|u| u16::from_be_bytes([u[0], u[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        Tag::UniversalString if data.len() % 4 == 0 => data
            .chunks_exact(4)
            .map(|u| char::from_u32(u32::from_be_bytes([u[0], u[1], u[2], u[3]])))
            .collect(),
        _ => None,
    }
}

/// `#` and the hex of the value's DER encoding (tag, length, contents).
fn hex_der_into(out: &mut String, value: &x509_parser::der_parser::asn1_rs::Any<'_>) {
    use std::fmt::Write;
    let mut der = Vec::with_capacity(value.data.len() + 6);
    match value.header.raw_tag() {
        Some(tag) => der.extend_from_slice(tag),
        None => {
            // Low tag numbers (every universal type) fit the first byte.
            let class = (value.class() as u8) << 6;
            let constructed = if value.header.is_constructed() {
                0x20
            } else {
                0
            };
            der.push(class | constructed | (value.tag().0 as u8 & 0x1f));
        }
    }
    let len = value.data.len();
    if len < 0x80 {
        der.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        der.push(0x80 | (bytes.len() - skip) as u8);
        der.extend_from_slice(&bytes[skip..]);
    }
    der.extend_from_slice(value.data);
    out.push('#');
    for b in der {
        let _ = write!(out, "{b:02x}");
    }
}

/// The attribute names RFC 2253 writes by keyword; others by OID.
const RFC2253_KEYWORDS: [&str; 9] = ["CN", "L", "ST", "O", "OU", "C", "STREET", "DC", "UID"];

fn escape_into(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == ' ' || c == '#'))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_is_the_subject_most_specific_first() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "US");
        dn.push(rcgen::DnType::OrganizationName, "Example, Inc");
        dn.push(rcgen::DnType::OrganizationalUnitName, "eng");
        dn.push(rcgen::DnType::CommonName, "alice");
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = CertificateDer::from(cert.der().to_vec());
        assert_eq!(
            principal_of(&der).unwrap(),
            "User:CN=alice,OU=eng,O=Example\\, Inc,C=US"
        );
        assert!(principal_of(&CertificateDer::from(vec![1u8, 2, 3])).is_none());
    }

    #[test]
    fn other_string_types_are_decoded_and_other_attributes_written_in_hex() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        // emailAddress has no RFC 2253 keyword: its OID and the hex of its
        // DER (an IA5String), as Java writes it.
        let email = rcgen::Ia5String::try_from("a@b.c").unwrap();
        dn.push(
            rcgen::DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
            rcgen::DnValue::Ia5String(email),
        );
        let bmp = rcgen::BmpString::try_from("Zoë").unwrap();
        dn.push(
            rcgen::DnType::OrganizationName,
            rcgen::DnValue::BmpString(bmp),
        );
        let teletex = rcgen::TeletexString::try_from("ops").unwrap();
        dn.push(
            rcgen::DnType::CommonName,
            rcgen::DnValue::TeletexString(teletex),
        );
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = CertificateDer::from(cert.der().to_vec());
        assert_eq!(
            principal_of(&der).unwrap(),
            "User:CN=ops,O=Zoë,1.2.840.113549.1.9.1=#16056140622e63"
        );
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("missing.pem"),
            key: dir.path().join("key.pem"),
            client_ca: None,
            client_auth: ClientAuth::None,
        };
        let e = Tls::load(files).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }
}
