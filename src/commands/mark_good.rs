//! `backtrack mark-good [SELECTOR]`: point `last_known_good` at a version (default: the one the
//! target runs now). A version whose last validation failed is refused unless `--force`.

use super::App;
use crate::cli::MarkGoodArgs;
use crate::domain::history;
use crate::domain::image::ImageRef;
use crate::ops::mark::{MarkReport, MarkRequest, mark_good};
use crate::ops::{catalog::Catalog, deployed, resolve};

pub async fn run(app: &App<'_>, args: &MarkGoodArgs) -> anyhow::Result<()> {
    let project = app.project()?;
    let registry = app.registry()?;
    let journal = app.journal()?;
    let _lock = app.lock_unless(args.dry_run, "backtrack mark-good")?;
    let ops = history::operations(&journal.read()?);
    let pointer = project.lkg_tag();
    // The engine is needed to know what is deployed, and to keep the image on this host.
    let engine = match app.target() {
        Ok(_) => Some(app.engine().await?),
        Err(e) if args.selector.is_none() => return Err(e),
        Err(_) => None,
    };
    let current: Option<ImageRef> = match (&engine, app.target()) {
        (Some(engine), Ok(target)) => {
            let d = match deployed::read(engine, target, &registry.name()).await {
                Ok(d) => d,
                // A named version needs nothing from the target.
                Err(e) if args.selector.is_some() => {
                    tracing::info!("what the target runs is unknown: {e:#}");
                    Vec::new()
                }
                Err(e) => return Err(e),
            };
            let digests: std::collections::BTreeSet<_> = d.iter().filter_map(|d| d.digest.clone()).collect();
            if args.selector.is_none() && digests.len() > 1 {
                anyhow::bail!(
                    "choose what to mark: {} runs {} different images; name a version",
                    target.display(),
                    digests.len()
                );
            }
            d.first().map(|d| d.image.clone())
        }
        _ => None,
    };
    let catalog = Catalog::load(registry.as_ref()).await?;
    let chosen: ImageRef = match &args.selector {
        Some(s) => {
            resolve::resolve(registry.as_ref(), &catalog, s, &ops, current.as_ref(), &pointer)
                .await?
                .image
        }
        None => {
            let c = current
                .clone()
                .ok_or_else(|| anyhow::anyhow!("find what the target runs"))?;
            if c.digest.is_none() {
                anyhow::bail!(
                    "mark the deployed image: its digest in {} is unknown (it was not pulled from there); name a version",
                    registry.name()
                );
            }
            c
        }
    };
    if let Some(v) = &chosen.version
        && history::failed_versions(&ops).contains(v)
        && !args.force
    {
        anyhow::bail!(
            "mark {v} good: its last validation failed (see `backtrack history`); pass --force if you are sure"
        );
    }
    let previous = resolve::last_known_good(registry.as_ref(), &catalog, &ops, &pointer).await?;
    if args.dry_run {
        return app.printer.report(&MarkReport {
            dry_run: true,
            repository: registry.name(),
            pointer,
            marked: chosen,
            previous,
            local_image: None,
        });
    }
    let report = mark_good(
        registry.as_ref(),
        &[&journal],
        // A swarm's images live on its nodes: nothing is kept on the manager's host.
        engine
            .as_ref()
            .filter(|_| app.target().is_ok_and(|t| t.kind != crate::settings::TargetKind::Swarm)),
        &app.printer,
        MarkRequest {
            image: &chosen,
            pointer: &pointer,
            previous,
            reason: args.reason.as_deref(),
        },
    )
    .await?;
    app.printer.report(&report)
}
