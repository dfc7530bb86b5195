//! `backtrack prune`.
use super::App;
use crate::cli::PruneArgs;
pub async fn run(_app: &App<'_>, _a: &PruneArgs) -> anyhow::Result<()> {
    Err(crate::error::Failure::NotBuilt {
        command: "prune".into(),
    }
    .into())
}
