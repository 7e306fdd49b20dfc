//! Kafka listeners: `NAME://HOST:PORT` lists (`--listeners`,
//! `--advertised-listeners`), the security protocol of each
//! (`--listener-security-protocol-map`), resolved once at start.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use anyhow::{anyhow, bail};

/// Kafka's security protocols, by their names in listener settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub const ALL: [SecurityProtocol; 4] = [
        SecurityProtocol::Plaintext,
        SecurityProtocol::Ssl,
        SecurityProtocol::SaslPlaintext,
        SecurityProtocol::SaslSsl,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// Parses Kafka's name (case-insensitive, as Kafka does).
    pub fn from_name(name: &str) -> Option<SecurityProtocol> {
        SecurityProtocol::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// Whether connections start with a TLS handshake.
    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether a client must authenticate with SASL before any request
    /// but ApiVersions, SaslHandshake and SaslAuthenticate.
    pub fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One Kafka listener of this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// Its name (upper case): a protocol's name, or one of
    /// `--listener-security-protocol-map`.
    pub name: String,
    pub protocol: SecurityProtocol,
    /// Where every shard binds it (SO_REUSEPORT).
    pub addr: SocketAddr,
    /// What Metadata answers to clients that connected to it.
    pub advertised_host: String,
    pub advertised_port: u16,
}

impl Listener {
    pub fn advertised(&self) -> String {
        format!(
            "{}://{}",
            self.name,
            host_port(&self.advertised_host, self.advertised_port)
        )
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

const LISTENERS: &str = "--listeners (SLUICE_LISTENERS, listeners)";
const ADVERTISED: &str =
    "--advertised-listeners (SLUICE_ADVERTISED_LISTENERS, advertised_listeners)";
const MAP: &str = "--listener-security-protocol-map (SLUICE_LISTENER_SECURITY_PROTOCOL_MAP, listener_security_protocol_map)";

/// `NAME:PROTOCOL,...`; every protocol name maps to itself unless named.
pub fn parse_protocol_map(
    text: Option<&str>,
) -> anyhow::Result<BTreeMap<String, SecurityProtocol>> {
    let mut map: BTreeMap<String, SecurityProtocol> = SecurityProtocol::ALL
        .into_iter()
        .map(|p| (p.name().to_string(), p))
        .collect();
    let Some(text) = text else {
        return Ok(map);
    };
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, protocol) = item
            .split_once(':')
            .ok_or_else(|| anyhow!("{MAP}: '{item}' is not NAME:PROTOCOL"))?;
        let protocol = SecurityProtocol::from_name(protocol.trim()).ok_or_else(|| {
            anyhow!("{MAP}: '{protocol}' is not PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
        })?;
        let name = listener_name(name.trim(), MAP)?;
        map.insert(name, protocol);
    }
    Ok(map)
}

fn listener_name(name: &str, setting: &str) -> anyhow::Result<String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("{setting}: '{name}' is not a listener name (letters, digits and _)");
    }
    Ok(name.to_ascii_uppercase())
}

/// Splits `NAME://HOST:PORT` into the name, host and port.
fn split_endpoint<'a>(item: &'a str, setting: &str) -> anyhow::Result<(String, &'a str, u16)> {
    let bad = || anyhow!("{setting}: '{item}' is not NAME://HOST:PORT");
    let (name, rest) = item.split_once("://").ok_or_else(bad)?;
    let name = listener_name(name, setting)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    Ok((name, host, port))
}

/// Resolves `--listeners` and `--advertised-listeners`. A listener given
/// no advertised address advertises the one it binds, which must then not
/// be a wildcard.
pub fn resolve(
    listeners: &str,
    advertised: Option<&str>,
    map: &BTreeMap<String, SecurityProtocol>,
) -> anyhow::Result<Vec<Listener>> {
    let mut out: Vec<Listener> = Vec::new();
    for item in listeners
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (name, host, port) = split_endpoint(item, LISTENERS)?;
        let protocol = *map.get(&name).ok_or_else(|| {
            anyhow!("{LISTENERS}: listener '{name}' has no security protocol (name it in {MAP})")
        })?;
        let ip: std::net::IpAddr = if host.is_empty() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            host.parse().map_err(|_| {
                anyhow!("{LISTENERS}: '{item}': the host must be an IP address to bind")
            })?
        };
        let addr = SocketAddr::new(ip, port);
        if out.iter().any(|l| l.name == name) {
            bail!("{LISTENERS}: listener '{name}' is given twice");
        }
        if out.iter().any(|l| l.addr.port() == port) {
            bail!("{LISTENERS}: port {port} is given twice");
        }
        out.push(Listener {
            name,
            protocol,
            addr,
            advertised_host: ip.to_string(),
            advertised_port: port,
        });
    }
    if out.is_empty() {
        bail!("{LISTENERS}: no listener given");
    }
    let mut advertised_names = Vec::new();
    for item in advertised
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (name, host, port) = split_endpoint(item, ADVERTISED)?;
        let listener = out
            .iter_mut()
            .find(|l| l.name == name)
            .ok_or_else(|| anyhow!("{ADVERTISED}: '{name}' is not one of --listeners"))?;
        if host.is_empty() || port == 0 {
            bail!("{ADVERTISED}: '{item}' needs a host and a port");
        }
        listener.advertised_host = host.to_string();
        listener.advertised_port = port;
        advertised_names.push(name);
    }
    for l in &out {
        if l.addr.ip().is_unspecified() && !advertised_names.contains(&l.name) {
            bail!(
                "{ADVERTISED}: required for listener {} (it binds {}, which clients cannot reach)",
                l.name,
                l.addr
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_in_kafka_form() {
        let map = parse_protocol_map(Some("INTERNAL:PLAINTEXT,EXTERNAL:SASL_SSL")).unwrap();
        let l = resolve(
            "PLAINTEXT://127.0.0.1:9092,SASL_SSL://0.0.0.0:9093,INTERNAL://127.0.0.2:9094",
            Some("SASL_SSL://broker1.example:19093"),
            &map,
        )
        .unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].protocol, SecurityProtocol::Plaintext);
        assert_eq!(l[0].advertised(), "PLAINTEXT://127.0.0.1:9092");
        assert_eq!(l[1].protocol, SecurityProtocol::SaslSsl);
        assert_eq!(l[1].advertised(), "SASL_SSL://broker1.example:19093");
        assert_eq!(l[2].protocol, SecurityProtocol::Plaintext);
        assert_eq!(l[2].name, "INTERNAL");
    }

    #[test]
    fn bad_listeners_name_the_setting() {
        let map = parse_protocol_map(None).unwrap();
        for (listeners, advertised, want) in [
            ("PLAINTEXT://0.0.0.0:9092", None, "--advertised-listeners"),
            ("FOO://127.0.0.1:9092", None, "no security protocol"),
            (
                "PLAINTEXT://127.0.0.1:9092,SSL://127.0.0.1:9092",
                None,
                "twice",
            ),
            ("PLAINTEXT://localhost:9092", None, "IP address"),
            ("PLAINTEXT:/127.0.0.1:9092", None, "NAME://HOST:PORT"),
            ("", None, "no listener"),
            (
                "PLAINTEXT://127.0.0.1:9092",
                Some("SSL://h:1"),
                "not one of --listeners",
            ),
        ] {
            let e = resolve(listeners, advertised, &map)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{listeners}: {e}");
        }
        assert!(parse_protocol_map(Some("X:TLS")).is_err());
    }
}
