//! `backtrack validate`.
use super::App;
pub async fn run(_app: &App<'_>) -> anyhow::Result<()> {
    Err(crate::error::Failure::NotBuilt {
        command: "validate".into(),
    }
    .into())
}
