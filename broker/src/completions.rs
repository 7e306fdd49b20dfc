//! `sluice completions` and `sluice manpage`: shell completion scripts and
//! man pages generated from the clap definitions of the command line, so
//! they always match the flags this binary takes.
//!
//! Runs on the main thread only, instead of a broker.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::config::Cli;

/// Prints the completion script for `shell` to stdout.
pub fn completions(shell: Shell) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_string();
    // Rendered whole first: the generator panics on a failed write, and a
    // reader such as `head` may close the pipe early.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    to_stdout(&script)
}

/// Writes `sluice.1` and one page per subcommand (`sluice-start.1`, ...)
/// into `dir`, creating it; without `dir`, prints the top page to stdout.
pub fn manpages(dir: Option<&Path>) -> anyhow::Result<()> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut page)
            .context("rendering the man page")?;
        return to_stdout(&page);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("writing man pages to {}", dir.display()))?;
    eprintln!("sluice: man pages written to {}", dir.display());
    Ok(())
}

/// Writes `bytes` to stdout; a reader that closed the pipe early is not an
/// error.
fn to_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}
