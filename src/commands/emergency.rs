//! `backtrack emergency`.
use super::App;
use crate::cli::EmergencyArgs;
pub async fn run(_app: &App<'_>, _a: &EmergencyArgs) -> anyhow::Result<()> {
    Err(crate::error::Failure::NotBuilt {
        command: "emergency".into(),
    }
    .into())
}
