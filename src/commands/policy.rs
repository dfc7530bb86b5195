//! `backtrack policy`.
use super::App;
use crate::cli::PolicyCommand;
pub async fn run(_app: &App<'_>, _c: PolicyCommand) -> anyhow::Result<()> {
    Err(crate::error::Failure::NotBuilt {
        command: "policy".into(),
    }
    .into())
}
