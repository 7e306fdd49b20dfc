#[derive(clap::Args, Debug)]
pub struct WalArgs {}

pub fn run(_a: WalArgs) -> anyhow::Result<()> {
    anyhow::bail!("wal benchmark not built")
}
