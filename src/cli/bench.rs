//! `jm bench` (being written).
use anyhow::Result;
/// Flags of `jm bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {}
/// Runs the benchmark.
pub async fn run(_args: BenchArgs) -> Result<()> {
    anyhow::bail!("not yet")
}
