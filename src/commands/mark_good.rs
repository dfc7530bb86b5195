//! `backtrack mark-good [SELECTOR]`: point `last_known_good` at a version (default: the one the
//! target runs now, on every host). A version whose last validation failed (on any host) is
//! refused unless `--force`. The pointer moves once in the registry, recorded in every host's
//! journal under one id, and the image is kept on every host for `emergency`. A config without
//! `[target]` can still mark a named version: only the registry and the repository's journal
//! are needed.

use super::App;
use crate::adapters::state::{Journal, TargetLock};
use crate::cli::MarkGoodArgs;
use crate::domain::history;
use crate::domain::image::ImageRef;
use crate::ops::fleet::Host;
use crate::ops::mark::{MarkReport, MarkRequest, keep_on_host, mark_good};
use crate::ops::{catalog::Catalog, deployed, resolve};

pub async fn run(app: &App<'_>, args: &MarkGoodArgs) -> anyhow::Result<()> {
    let project = app.project()?;
    // A release marks every service's image of one version: the first service's registry
    // resolves it, the others' pointers move with it.
    let registries = app.registries()?;
    let registry = &registries[0];
    let release = app.target().ok().filter(|t| t.is_release());
    let pointer = project.lkg_tag();
    let fleet = app.is_fleet();
    let command = "backtrack mark-good";
    // The hosts tell what is deployed, and keep the image; a named version needs none of them.
    let (hosts, _repository_lock, repository_journal): (Vec<Host>, Option<TargetLock>, Option<Journal>) =
        match app.target() {
            Ok(_) => (app.hosts((!args.dry_run).then_some(command), None).await?.0, None, None),
            Err(e) if args.selector.is_none() => return Err(e),
            Err(_) => (
                Vec::new(),
                app.lock_unless(args.dry_run, command)?,
                Some(app.journal()?),
            ),
        };
    let journals: Vec<&Journal> = hosts.iter().map(|h| &h.journal).chain(&repository_journal).collect();
    let mut ops = Vec::new();
    for (i, j) in journals.iter().enumerate() {
        let records = j.read().map_err(|e| match hosts.get(i).filter(|_| fleet) {
            Some(h) => anyhow::Error::new(e).context(format!("read the journal on {}", h.address)),
            None => e.into(),
        })?;
        ops.push(history::operations(&records));
    }
    let current = running(app, &hosts, &project.registry.display(), args.selector.is_some()).await?;
    let catalogs = Catalog::load_all(&registries).await?;
    let catalog = &catalogs[0];
    let chosen: ImageRef = match &args.selector {
        Some(s) => {
            resolve::resolve(registry.as_ref(), catalog, s, &ops[0], current.as_ref(), &pointer)
                .await?
                .image
        }
        None => {
            let c = current.ok_or_else(|| anyhow::anyhow!("find what the target runs"))?;
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
        && !args.force
        && let Some(i) = ops.iter().position(|ops| history::failed_versions(ops).contains(v))
    {
        let on = hosts
            .get(i)
            .filter(|_| fleet)
            .map(|h| format!(" on {}", h.address))
            .unwrap_or_default();
        anyhow::bail!(
            "mark {v} good: its last validation{on} failed (see `backtrack history`); pass --force if you are sure"
        );
    }
    let previous = resolve::last_known_good(registry.as_ref(), catalog, &ops[0], &pointer).await?;
    let others = match release {
        Some(t) => {
            let all: Vec<&Catalog> = catalogs.iter().collect();
            let images = crate::ops::release::images_of(t, &registries, &all, &chosen).await?;
            crate::ops::release::others(&registries, &images)
        }
        None => Vec::new(),
    };
    if args.dry_run {
        return app.printer.report(&MarkReport {
            also: others.iter().map(|(r, _)| r.name()).collect(),
            dry_run: true,
            repository: registry.name(),
            pointer,
            marked: chosen,
            previous,
            local_image: None,
        });
    }
    let mut report = mark_good(
        registry.as_ref(),
        &journals,
        None,
        &app.printer,
        MarkRequest {
            image: &chosen,
            pointer: &pointer,
            previous,
            reason: args.reason.as_deref(),
            first: release.and_then(|t| t.members.first()).map(|m| m.name.clone()),
            others,
        },
    )
    .await?;
    // A swarm's images live on its nodes: nothing is kept on the manager's host.
    if app.target().is_ok_and(|t| t.kind != crate::settings::TargetKind::Swarm) && !hosts.is_empty() {
        let keeps = hosts
            .iter()
            .map(|h| keep_on_host(registry.as_ref(), &h.engine, &pointer, &chosen));
        let mut kept = Vec::new();
        for (h, result) in hosts.iter().zip(futures::future::join_all(keeps).await) {
            match result {
                Ok(local) => kept.push(local),
                Err(e) if fleet => app.printer.note(format!("warning: [{}] could not {e:#}", h.address)),
                Err(e) => app.printer.note(format!("warning: could not {e:#}")),
            }
        }
        if kept.len() == hosts.len() {
            report.local_image = kept.pop().map(|l| {
                if fleet {
                    format!("{l} (on all {} hosts)", hosts.len())
                } else {
                    l
                }
            });
        }
    }
    app.printer.report(&report)
}

/// What the target runs (the first host's image), when every host runs one image; with a named
/// version, what runs only informs the selector, and a host that cannot say is passed over.
async fn running(app: &App<'_>, hosts: &[Host], repository: &str, named: bool) -> anyhow::Result<Option<ImageRef>> {
    let Ok(target) = app.target() else {
        return Ok(None);
    };
    let fleet = app.is_fleet();
    let reads = hosts.iter().map(|h| deployed::read(&h.engine, target, repository));
    let mut running: Vec<(&str, Vec<deployed::Deployed>)> = Vec::new();
    for (h, read) in hosts.iter().zip(futures::future::join_all(reads).await) {
        match read {
            Ok(d) => running.push((&h.address, d)),
            Err(e) if named => tracing::info!("what {} runs is unknown: {e:#}", h.address),
            Err(e) if fleet => return Err(e.context(format!("read what {} runs on {}", target.display(), h.address))),
            Err(e) => return Err(e),
        }
    }
    if !named && target.is_release() {
        // A release is marked when its services run one version.
        let services: Vec<(&str, Option<&str>)> = running
            .iter()
            .flat_map(|(_, d)| d.iter())
            .filter_map(|d| Some((d.service.as_deref()?, d.image.version.as_deref())))
            .collect();
        if let Some(drift) = crate::domain::release::drift(&services) {
            anyhow::bail!(
                "choose what to mark: the release's services run different versions ({drift}); name a version"
            );
        }
    } else if !named {
        let digests: Vec<(&str, Option<&str>)> = running
            .iter()
            .flat_map(|(h, d)| d.iter().map(|d| (*h, d.digest.as_ref().map(|d| d.as_str()))))
            .collect();
        let groups = crate::domain::fleet::by_digest(&digests);
        if groups.len() > 1 && fleet {
            let drift: Vec<String> = groups
                .iter()
                .map(|(d, hosts)| format!("{} on {}", d.unwrap_or("no digest"), hosts.join(", ")))
                .collect();
            anyhow::bail!(
                "choose what to mark: the hosts run different images ({}); name a version",
                drift.join("; ")
            );
        }
        let distinct = groups.keys().filter(|d| d.is_some()).count();
        if !fleet && distinct > 1 {
            anyhow::bail!(
                "choose what to mark: {} runs {distinct} different images; name a version",
                target.display()
            );
        }
    }
    Ok(running.first().and_then(|(_, d)| d.first()).map(|d| d.image.clone()))
}
