//! The first SCRAM users: `SLUICE_BOOTSTRAP_USERS` (`name:password,...`)
//! and `--bootstrap-users-file` (one `name:password` per line, `#`
//! comments), read once at start. A user that has no credential yet gets
//! one per SCRAM mechanism (salted, 4096 iterations) through the
//! replicated metadata; existing users are left as they are, so a password
//! changed since (AlterUserScramCredentials) stays changed. Passwords are
//! never logged; the variable is taken out of the environment first thing
//! (`take_env`), so no child process or later reader sees it.

use anyhow::{bail, Context};
use sluice_raft::{Metadata, ScramCredential, ScramMechanism};

use crate::config::Settings;
use crate::sasl::{self, ScramAlgorithm, StoredCredential};

/// The environment variable of bootstrap users.
pub const BOOTSTRAP_USERS_ENV: &str = "SLUICE_BOOTSTRAP_USERS";
/// Iterations of the bootstrap users' credentials (Kafka's minimum).
const ITERATIONS: u32 = 4096;

/// `SLUICE_BOOTSTRAP_USERS`, taken by `take_env` before any thread starts.
static FROM_ENV: std::sync::Mutex<Option<std::ffi::OsString>> = std::sync::Mutex::new(None);

/// Takes `SLUICE_BOOTSTRAP_USERS` out of the environment; called first
/// thing in `main`, while the process has one thread (removing a variable
/// races with other threads reading the environment).
pub fn take_env() {
    if let Some(text) = std::env::var_os(BOOTSTRAP_USERS_ENV) {
        std::env::remove_var(BOOTSTRAP_USERS_ENV);
        *FROM_ENV.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
    }
}

pub fn bootstrap(settings: &Settings, meta: &Metadata) -> anyhow::Result<()> {
    let mut users = Vec::new();
    let from_env = FROM_ENV.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(text) = from_env {
        let text = text
            .into_string()
            .map_err(|_| anyhow::anyhow!("{BOOTSTRAP_USERS_ENV}: not UTF-8"))?;
        users.extend(parse(text.split(','), BOOTSTRAP_USERS_ENV)?);
    }
    if let Some(path) = &settings.bootstrap_users_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--bootstrap-users-file: cannot read {}", path.display()))?;
        let setting = format!("--bootstrap-users-file {}", path.display());
        users.extend(parse(text.lines(), &setting)?);
    }
    if users.is_empty() {
        return Ok(());
    }
    let view = meta.view();
    let mut upsertions = Vec::new();
    let mut created = Vec::new();
    for (name, password) in users {
        if view.users.contains_key(name.as_str()) || created.contains(&name) {
            continue;
        }
        for (alg, mechanism) in [
            (ScramAlgorithm::Sha256, ScramMechanism::Sha256),
            (ScramAlgorithm::Sha512, ScramMechanism::Sha512),
        ] {
            let salt = sasl::random_salt().map_err(|e| anyhow::anyhow!("bootstrap users: {e}"))?;
            let c = StoredCredential::from_password(alg, password.as_bytes(), &salt, ITERATIONS)
                .map_err(|e| anyhow::anyhow!("bootstrap user {name}: {e}"))?;
            let credential = ScramCredential {
                mechanism,
                iterations: c.iterations,
                salt: c.salt,
                stored_key: c.stored_key,
                server_key: c.server_key,
            };
            upsertions.push((name.clone(), credential));
        }
        created.push(name);
    }
    if upsertions.is_empty() {
        return Ok(());
    }
    let results = futures::executor::block_on(meta.alter_scram_credentials(upsertions, Vec::new()))
        .map_err(|e| anyhow::anyhow!("creating the bootstrap users: {e}"))?;
    if let Some(Err(e)) = results.upsertions.iter().find(|r| r.is_err()) {
        bail!("creating the bootstrap users: {e}");
    }
    tracing::info!(users = ?created, "bootstrap SCRAM users created");
    Ok(())
}

/// `name:password` items; blank items and `#` lines are skipped.
fn parse<'a>(
    items: impl Iterator<Item = &'a str>,
    setting: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (i, item) in items.enumerate() {
        let item = item.trim_end_matches('\r');
        if item.trim().is_empty() || item.trim_start().starts_with('#') {
            continue;
        }
        let Some((name, password)) = item.split_once(':') else {
            // Never echo the item: it may be a password.
            bail!("{setting}: item {} is not name:password", i + 1);
        };
        let name = name.trim();
        if name.is_empty() || password.is_empty() {
            bail!("{setting}: item {} has an empty name or password", i + 1);
        }
        out.push((name.to_string(), password.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_never_echoes_them() {
        let got = parse("admin:s3cr:et,  ,bob:pw".split(','), "X").unwrap();
        assert_eq!(
            got,
            vec![
                ("admin".to_string(), "s3cr:et".to_string()),
                ("bob".to_string(), "pw".to_string())
            ]
        );
        let lines = "# users\nalice:a b c\n\n";
        assert_eq!(parse(lines.lines(), "F").unwrap()[0].1, "a b c");
        let e = parse("hunter2".split(','), "X").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(parse(":pw".split(','), "X").is_err());
    }
}
