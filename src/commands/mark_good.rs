//! `backtrack mark_good`.
use super::App;
use crate::cli::MarkGoodArgs;
pub async fn run(_app: &App<'_>, _a: &MarkGoodArgs) -> anyhow::Result<()> {
    Err(crate::error::Failure::NotBuilt {
        command: "mark_good".into(),
    }
    .into())
}
