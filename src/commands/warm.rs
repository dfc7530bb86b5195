//! `backtrack warm [SELECTOR...]`: pull the rollback candidates (default `previous` and the
//! target's `last_known_good`) by digest onto the target's host, in parallel, so that a rollback
//! to them is a swap and never a pull.

use serde::Serialize;

use super::App;
use crate::cli::WarmArgs;
use crate::domain::history;
use crate::ops::warm::{self, Readiness};
use crate::ops::{catalog::Catalog, deployed};
use crate::output::{Progress, Report, render_table, table};

#[derive(Debug, Serialize)]
struct WarmReport {
    target: String,
    candidates: Vec<Readiness>,
}

pub async fn run(app: &App<'_>, args: &WarmArgs) -> anyhow::Result<()> {
    if let Ok(target) = app.target()
        && target.kind == crate::settings::TargetKind::Swarm
    {
        return Err(crate::error::Failure::Usage(format!(
            "warm the nodes of {}: not built yet; Swarm pulls on each node as it places a task (`docker pull IMAGE` on a node warms it by hand)",
            target.display()
        ))
        .into());
    }
    let project = app.project()?;
    let target = app.target()?;
    let registry = app.registry()?;
    let engine = app.engine().await?;
    let ops = history::operations(&app.journal()?.read()?);
    let current = deployed::read(&engine, target, &registry.name()).await?;
    let catalog = Catalog::load(registry.as_ref()).await?;
    let cands = warm::candidates(
        registry.as_ref(),
        &catalog,
        &ops,
        current.first().map(|d| &d.image),
        &project.lkg_tag(),
        &args.selectors,
    )
    .await;
    if cands.is_empty() {
        anyhow::bail!(
            "find rollback candidates for {}: no previous version and no {} yet; name versions to warm",
            target.display(),
            project.lkg_tag()
        );
    }
    let limit = crate::domain::duration::parse_wait(&args.timeout)?;
    let progress = Progress::new(
        &app.printer,
        &format!(
            "pulling {} onto {}",
            cands.iter().map(|c| c.image.display()).collect::<Vec<_>>().join(", "),
            engine.host()
        ),
    );
    let done = warm::warm(&engine, registry.as_ref(), &cands, limit).await;
    progress.finish("done");
    let failed = done.iter().filter(|r| r.error.is_some()).count();
    app.printer.report(&WarmReport {
        target: target.display(),
        candidates: done,
    })?;
    if failed > 0 {
        return Err(crate::error::Failure::Partial {
            done: cands.len() - failed,
            total: cands.len(),
            failed,
        }
        .into());
    }
    Ok(())
}

impl Report for WarmReport {
    fn human(&self) -> String {
        let mut t = table(["candidate", "version", "digest", "state"]);
        for r in &self.candidates {
            let state = match (&r.error, r.present, r.pulled_ms) {
                (Some(e), _, _) => format!("FAILED: {e}"),
                (None, true, _) => "already on the host".into(),
                (None, false, Some(ms)) => format!("pulled in {:.1} s", ms as f64 / 1000.0),
                (None, false, None) => "-".into(),
            };
            t.add_row(vec![
                r.candidate.label.clone(),
                r.candidate.image.display(),
                r.candidate
                    .image
                    .digest
                    .as_ref()
                    .map_or("-".into(), |d| d.short().to_string()),
                state,
            ]);
        }
        format!(
            "{}\n{}: a rollback to these is a swap, no pull",
            render_table(&t),
            self.target
        )
    }
}
