//! `backtrack warm [SELECTOR...]`: pull the rollback candidates (default `previous` and the
//! target's `last_known_good`) by digest onto the target's host, in parallel, so that a rollback
//! to them is a swap and never a pull.

use std::sync::Arc;

use serde::Serialize;

use super::App;
use crate::adapters::registry::Registry;
use crate::cli::WarmArgs;
use crate::domain::history;
use crate::ops::fleet::Host;
use crate::ops::warm::{self, Readiness};
use crate::ops::{catalog::Catalog, deployed};
use crate::output::{Report, render_table, table};

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
            "warm the nodes of {}: a Swarm service's images are pulled by each node's engine as Swarm \
             places a task, and backtrack reaches only the manager; `docker pull IMAGE` on a node warms it by hand",
            target.display()
        ))
        .into());
    }
    // A release's candidates are resolved in its first service's repository, and warmed in
    // every service's.
    let registries = app.registries()?;
    let limit = crate::domain::duration::parse_wait(&args.timeout)?;
    let (hosts, _) = app.hosts(None, None).await?;
    let catalogs = Catalog::load_all(&registries).await?;
    let (registries, catalogs) = (&registries, &catalogs.iter().collect::<Vec<_>>());
    let results = app
        .on_each(&hosts, async |h| {
            warm_host(app, h, registries, catalogs, args, limit).await
        })
        .await;
    let (total, failed) = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .flat_map(|r| &r.candidates)
        .fold((0, 0), |(t, f), c| (t + 1, f + usize::from(c.error.is_some())));
    app.report_per_host(results)?;
    if failed > 0 {
        return Err(crate::error::Failure::Partial {
            done: total - failed,
            total,
            failed,
        }
        .into());
    }
    Ok(())
}

/// Pulls one host's rollback candidates (they depend on its history and what it runs).
async fn warm_host(
    app: &App<'_>,
    host: &Host,
    registries: &[Arc<dyn Registry>],
    catalogs: &[&Catalog],
    args: &WarmArgs,
    limit: std::time::Duration,
) -> anyhow::Result<WarmReport> {
    let project = app.project()?;
    let target = app.target()?;
    let engine = &host.engine;
    let (registry, catalog) = (registries[0].as_ref(), catalogs[0]);
    let ops = history::operations(&host.journal.read()?);
    let current = deployed::read(engine, target, &project.registry.display()).await?;
    let cands = warm::candidates(
        registry,
        catalog,
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
    let progress = app.progress(&format!(
        "pulling {} onto {}",
        cands.iter().map(|c| c.image.display()).collect::<Vec<_>>().join(", "),
        engine.host()
    ));
    let done = if target.is_release() {
        warm_release(engine, target, registries, catalogs, &cands, limit).await?
    } else {
        warm::warm(engine, registry, &cands, limit).await
    };
    progress.finish("done");
    Ok(WarmReport {
        target: target.display(),
        candidates: done,
    })
}

/// A release's candidates in every service's repository (each service's image of the version),
/// pulled at once; every row names its service. A candidate some repository lacks is refused.
async fn warm_release(
    engine: &crate::adapters::docker::Engine,
    target: &crate::settings::TargetSettings,
    registries: &[Arc<dyn Registry>],
    catalogs: &[&Catalog],
    cands: &[warm::Candidate],
    limit: std::time::Duration,
) -> anyhow::Result<Vec<Readiness>> {
    let (per_service, lacking) = crate::ops::release::candidates_by_service(target, registries, catalogs, cands).await;
    if let Some(e) = lacking.into_iter().next() {
        return Err(e);
    }
    let pulls = registries
        .iter()
        .zip(&per_service)
        .map(|(r, cands)| warm::warm(engine, r.as_ref(), cands, limit));
    Ok(futures::future::join_all(pulls).await.into_iter().flatten().collect())
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
