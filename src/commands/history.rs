//! `backtrack history`.
use super::App;
use crate::cli::HistoryArgs;
pub async fn run(_app: &App<'_>, _a: &HistoryArgs) -> anyhow::Result<()> {
    Err(crate::error::Failure::NotBuilt {
        command: "history".into(),
    }
    .into())
}
