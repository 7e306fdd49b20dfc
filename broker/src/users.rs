//! The first SCRAM users: `SLUICE_BOOTSTRAP_USERS` (`name:password,...`)
//! and `--bootstrap-users-file` (one `name:password` per line, `#`
//! comments), read once at start. A user that has no credential yet gets
//! one per SCRAM mechanism (salted, 4096 iterations) through the
//! replicated metadata; existing users are left as they are, so a password
//! changed since (AlterUserScramCredentials) stays changed: whether a user
//! exists is decided when the entry is applied, so a node behind the log
//! cannot undo a change it has not seen yet. Passwords are
//! never logged; the variable is taken out of the environment first thing
//! (`take_env`), so no child process or later reader sees it.

use anyhow::{bail, Context};
use sluice_raft::{
    MetaError, Metadata, ScramAlterResults, ScramCredential, ScramMechanism, SecurityError,
};

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
    let mut upsertions = Vec::new();
    let mut names: Vec<String> = Vec::new();
    // Users this node already knows are skipped here (no metadata entry
    // at all on a usual restart); whether the others exist is decided when
    // the entry is applied.
    let view = meta.view();
    for (name, password) in users {
        if names.contains(&name) || view.users.contains_key(name.as_str()) {
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
        names.push(name);
    }
    if names.is_empty() {
        return Ok(());
    }
    // Usually the metadata answers at once, and the users exist before the
    // node serves; without a quorum yet (a cluster's first node), they are
    // created in the background once there is one.
    match futures::executor::block_on(meta.create_scram_users(upsertions.clone())) {
        Ok(results) => created(&names, &results).map_err(|e| anyhow::anyhow!(e))?,
        Err(e) => {
            tracing::warn!(error = %e, "bootstrap SCRAM users not created yet; retrying in the background");
            let meta = meta.clone();
            // A thread of its own, unpinned and asleep between tries (no
            // shard core is taken; shards are not started yet): it waits
            // for a quorum without holding up the start, and ends once the
            // users are created (or the node stops, or `RETRY_FOR` ran out).
            std::thread::Builder::new()
                .name("sluice-users".into())
                .spawn(move || retry(&meta, upsertions, &names))
                .context("starting the bootstrap users thread")?;
        }
    }
    Ok(())
}

/// How long bootstrap users are retried without a quorum.
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(600);
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

fn retry(meta: &Metadata, upsertions: Vec<(String, ScramCredential)>, names: &[String]) {
    let deadline = std::time::Instant::now() + RETRY_FOR;
    loop {
        std::thread::sleep(RETRY_EVERY);
        match futures::executor::block_on(meta.create_scram_users(upsertions.clone())) {
            Ok(results) => {
                if let Err(e) = created(names, &results) {
                    tracing::error!(error = %e, "bootstrap SCRAM users refused");
                }
                return;
            }
            Err(MetaError::ShuttingDown) => return,
            Err(e) if std::time::Instant::now() >= deadline => {
                return tracing::error!(error = %e, "bootstrap SCRAM users not created; they are tried again at the next start");
            }
            Err(_) => {}
        }
    }
}

/// Logs which users were created; the others existed already (their
/// passwords stay as they were: the entry creates absent users only). A
/// user refused for another reason is the error.
fn created(names: &[String], results: &ScramAlterResults) -> Result<(), String> {
    // Two items per user, in order (SHA-256, SHA-512).
    let (mut new, mut kept) = (Vec::new(), 0);
    for (name, items) in names.iter().zip(results.upsertions.chunks(2)) {
        match items.first() {
            Some(Ok(())) => new.push(name.as_str()),
            Some(Err(SecurityError::DuplicateResource(_))) => kept += 1,
            Some(Err(e)) => return Err(format!("bootstrap user {name}: {e}")),
            None => {}
        }
    }
    if !new.is_empty() {
        tracing::info!(users = ?new, existing = kept, "bootstrap SCRAM users created");
    }
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
