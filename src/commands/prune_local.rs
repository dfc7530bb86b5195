//! `backtrack prune --local`: remove this repository's images from the target's host, keeping
//! what any container uses (the target, what is set aside), the rollback candidates, every
//! `last_known_good` pointer's image and the last `[retention] local_keep` versions deployed
//! there, with a reason for each. Only this repository's references are removed, one by one:
//! never a blanket prune.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::App;
use crate::adapters::registry::Registry;
use crate::cli::PruneArgs;
use crate::domain::digest::Digest;
use crate::domain::history;
use crate::domain::image::{human_size, is_lkg_tag};
use crate::domain::local_retention::{self, LocalDecision, LocalFacts, LocalImage};
use crate::error::Failure;
use crate::ops::fleet::Host;
use crate::ops::mark::registry_repository;
use crate::ops::{catalog::Catalog, deployed, warm};
use crate::output::{Report, confirm, escape, render_table, table};

#[derive(Debug, Serialize)]
struct LocalReport {
    dry_run: bool,
    host: String,
    decisions: Vec<LocalDecision>,
    kept: usize,
    removed: usize,
    bytes_freed: u64,
    failed: Vec<(String, String)>,
}

pub async fn run(app: &App<'_>, args: &PruneArgs) -> anyhow::Result<()> {
    if let Ok(target) = app.target()
        && target.kind == crate::settings::TargetKind::Swarm
    {
        return Err(crate::error::Failure::Usage(format!(
            "prune the local images of {}: a Swarm service's images are on each node's engine, and \
             backtrack reaches only the manager; `docker image prune` on a node does it by hand",
            target.display()
        ))
        .into());
    }
    // A release: every service's repository, each with its own pointers and candidates.
    let registries = app.registries()?;
    let (hosts, _) = app
        .hosts((!args.dry_run).then_some("backtrack prune --local"), None)
        .await?;
    // What the registry says the pointers and candidates are; with the registry down, nothing is
    // removed (a candidate could not be told from the rest).
    let catalogs = Catalog::load_all(&registries).await?;
    let mut pointers = Vec::with_capacity(registries.len());
    for (registry, catalog) in registries.iter().zip(&catalogs) {
        let mut of_repository = BTreeMap::new();
        for tag in catalog.others.iter().filter(|t| is_lkg_tag(t)) {
            if let Some(d) = registry.tag_digest(tag).await? {
                of_repository.insert(d, tag.clone());
            }
        }
        pointers.push(of_repository);
    }
    let catalogs: Vec<&Catalog> = catalogs.iter().collect();
    let (registries_ref, catalogs_ref, pointers_ref) = (&registries, &catalogs, &pointers);
    let planned = app
        .on_each(&hosts, async |h| {
            plan_host(app, h, registries_ref, catalogs_ref, pointers_ref, args.dry_run).await
        })
        .await;
    let mut reports = Vec::new();
    for (address, planned) in planned {
        reports.push(if app.is_fleet() {
            planned.map_err(|e| e.context(format!("plan the removals on {address}")))?
        } else {
            planned?
        });
    }
    let removing: usize = reports.iter().map(|r| r.removed).sum();
    if args.dry_run || removing == 0 {
        return app.report_per_host(
            hosts
                .iter()
                .map(|h| h.address.clone())
                .zip(reports.into_iter().map(Ok))
                .collect(),
        );
    }
    if !app.settings.yes {
        for r in &reports {
            app.printer.note(r.human());
        }
        let on = reports.iter().map(|r| r.host.as_str()).collect::<Vec<_>>().join(", ");
        let q = format!("Remove {removing} images from {on}?");
        if !confirm(&app.printer, &q, "confirm the removals")? {
            return Err(Failure::Cancelled.into());
        }
    }
    let removals = hosts.iter().zip(reports.iter_mut()).map(|(h, report)| async move {
        for d in report.decisions.iter().filter(|d| !d.keep) {
            for r in &d.refs {
                if let Err(e) = h.engine.remove_reference(r).await {
                    report.failed.push((r.clone(), e.to_string()));
                }
            }
        }
    });
    futures::future::join_all(removals).await;
    let failed: usize = reports.iter().map(|r| r.failed.len()).sum();
    app.report_per_host(
        hosts
            .iter()
            .map(|h| h.address.clone())
            .zip(reports.into_iter().map(Ok))
            .collect(),
    )?;
    if failed > 0 {
        return Err(Failure::Partial {
            done: removing.saturating_sub(failed),
            total: removing,
            failed,
        }
        .into());
    }
    Ok(())
}

/// What `prune --local` would keep and remove on one host, with a reason for each (for a
/// release, in every service's repository).
async fn plan_host(
    app: &App<'_>,
    host: &Host,
    registries: &[std::sync::Arc<dyn Registry>],
    catalogs: &[&Catalog],
    pointers: &[BTreeMap<Digest, String>],
    dry_run: bool,
) -> anyhow::Result<LocalReport> {
    let project = app.project()?;
    let target = app.target()?;
    let engine = &host.engine;
    let ops = history::operations(&host.journal.read()?);
    let users: BTreeMap<String, Vec<String>> = engine.image_users().await?.into_iter().collect();
    let current = deployed::read(engine, target, &project.registry.display()).await?;
    let cands = warm::candidates(
        registries[0].as_ref(),
        catalogs[0],
        &ops,
        current.first().map(|d| &d.image),
        &project.lkg_tag(),
        &[],
    )
    .await;
    // Each candidate in every service's repository (one service: the candidates themselves).
    // A candidate some repository lacks has no image of it there to keep.
    let per_service = if target.is_release() {
        crate::ops::release::candidates_by_service(target, registries, catalogs, &cands)
            .await
            .0
    } else {
        vec![cands]
    };
    let mut decisions = Vec::new();
    for (i, registry) in registries.iter().enumerate() {
        let ops = match target.members.get(i) {
            Some(m) => history::for_service(&ops, &m.name),
            None => ops.clone(),
        };
        decisions.extend(
            plan_repository(
                engine,
                registry.as_ref(),
                &users,
                &per_service[i],
                &ops,
                project.local_keep,
                &pointers[i],
            )
            .await?,
        );
    }
    Ok(LocalReport {
        dry_run,
        host: engine.host().to_string(),
        kept: decisions.iter().filter(|d| d.keep).count(),
        removed: decisions.iter().filter(|d| !d.keep).count(),
        bytes_freed: decisions.iter().filter(|d| !d.keep).map(|d| d.size).sum(),
        decisions,
        failed: Vec::new(),
    })
}

/// One repository's images on the host, each kept (with why) or removed.
async fn plan_repository(
    engine: &crate::adapters::docker::Engine,
    registry: &dyn Registry,
    users: &BTreeMap<String, Vec<String>>,
    cands: &[warm::Candidate],
    ops: &[history::OperationView],
    local_keep: usize,
    pointers: &BTreeMap<Digest, String>,
) -> anyhow::Result<Vec<LocalDecision>> {
    let repo = registry_repository(registry);
    let names = [registry.name(), format!("backtrack/{repo}")];
    let listed = engine.images_of(&names).await?;
    let candidates: BTreeMap<Digest, String> = cands
        .iter()
        .filter_map(|c| Some((c.image.digest.clone()?, format!("{} ({})", c.label, c.image.display()))))
        .collect();
    let recent: Vec<Digest> = history::deployed_versions(ops)
        .into_iter()
        .filter_map(|r| r.digest)
        .collect();

    let ours = |r: &str| {
        names
            .iter()
            .any(|n| r.starts_with(&format!("{n}:")) || r.starts_with(&format!("{n}@")))
    };
    let images: Vec<LocalImage> = listed
        .iter()
        .map(|i| LocalImage {
            id: i.id.clone(),
            refs: i
                .tags
                .iter()
                .chain(&i.repo_digests)
                .filter(|r| ours(r))
                .cloned()
                .collect(),
            digests: i
                .repo_digests
                .iter()
                .filter_map(|r| Digest::parse(r.rsplit_once('@')?.1).ok())
                .collect::<BTreeSet<_>>(),
            size: i.size,
        })
        .collect();
    let facts = LocalFacts {
        in_use: users.clone(),
        recent,
        local_keep,
        pointers: pointers.clone(),
        candidates,
    };
    Ok(local_retention::plan(&images, &facts))
}

impl Report for LocalReport {
    fn human(&self) -> String {
        let mut t = table(["action", "image", "size", "reasons"]);
        for d in &self.decisions {
            t.add_row(vec![
                if d.keep { "keep".into() } else { "REMOVE".to_string() },
                escape(&d.refs.join("\n")),
                human_size(d.size),
                escape(&d.reasons.join("\n")),
            ]);
        }
        let mut out = render_table(&t);
        out.push_str(&format!(
            "\n{}: {} kept, {} {} ({})",
            self.host,
            self.kept,
            self.removed,
            if self.dry_run { "to remove" } else { "removed" },
            human_size(self.bytes_freed)
        ));
        for (r, e) in &self.failed {
            out.push_str(&format!("\nfailed to remove {r}: {e}"));
        }
        if self.dry_run {
            out.push_str("\ndry run: nothing was removed");
        }
        out
    }
}
