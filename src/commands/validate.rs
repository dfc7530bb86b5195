//! `backtrack validate`: the health checks against what is deployed now, one pass, one line per
//! check; exit code 1 when any fails.

use serde::Serialize;

use super::App;
use crate::adapters::docker::{Engine, LABEL_VERSION};
use crate::error::Failure;
use crate::ops::deployed;
use crate::ops::validate::{Check, check_now};
use crate::output::{Report, render_table, table};
use crate::settings::{Project, TargetSettings};

#[derive(Debug, Serialize)]
struct ValidateReport {
    target: String,
    healthy: bool,
    checks: Vec<Check>,
}

pub async fn run(app: &App<'_>) -> anyhow::Result<()> {
    let project = app.project()?;
    let target = app.target()?;
    let engine = app.engine().await?;
    let checks = checks(&engine, project, target).await?;
    let healthy = checks.iter().all(|c| c.ok);
    app.printer.report(&ValidateReport {
        target: target.display(),
        healthy,
        checks,
    })?;
    if healthy {
        Ok(())
    } else {
        Err(Failure::Unhealthy(format!("{} failed its health checks", target.display())).into())
    }
}

/// One pass of the health checks against what `engine` runs of the target.
pub(super) async fn checks(engine: &Engine, project: &Project, target: &TargetSettings) -> anyhow::Result<Vec<Check>> {
    if target.kind == crate::settings::TargetKind::Swarm {
        return crate::ops::swarm::check_now(engine, target, &project.health).await;
    }
    let current = deployed::read(engine, target, &project.registry.display()).await?;
    let mut checks = Vec::new();
    for d in &current {
        // The version backtrack deployed, checked against what the image itself says.
        let expected = d.container.labels.get(LABEL_VERSION).cloned();
        checks.extend(
            check_now(
                engine,
                std::slice::from_ref(&d.container.name),
                &project.health,
                expected.as_deref(),
            )
            .await,
        );
    }
    if let Some(url) = &project.health.http {
        // The HTTP probe was run once per container above; keep one line of it.
        let probe = format!("GET {url}");
        let mut seen = false;
        checks.retain(|c| c.name != probe || !std::mem::replace(&mut seen, true));
    }
    Ok(checks)
}

impl Report for ValidateReport {
    fn human(&self) -> String {
        let mut t = table(["check", "result", "detail"]);
        for c in &self.checks {
            t.add_row(vec![
                c.name.clone(),
                if c.ok { "ok" } else { "FAIL" }.to_string(),
                c.detail.clone(),
            ]);
        }
        format!(
            "{}\n{}: {}",
            render_table(&t),
            self.target,
            if self.healthy { "healthy" } else { "UNHEALTHY" }
        )
    }
}
