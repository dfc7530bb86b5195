//! `backtrack deploy` and `rollback`.
use super::App;
use crate::cli::{RollbackArgs, SwapArgs};
pub async fn run_deploy(_app: &App<'_>, _a: &SwapArgs) -> anyhow::Result<()> {
    Err(crate::error::Failure::NotBuilt {
        command: "deploy".into(),
    }
    .into())
}
pub async fn run_rollback(_app: &App<'_>, _a: &RollbackArgs) -> anyhow::Result<()> {
    Err(crate::error::Failure::NotBuilt {
        command: "rollback".into(),
    }
    .into())
}
