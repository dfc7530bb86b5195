//! `backtrack prune [--policy FILE] [--dry-run]`: apply a retention policy to the registry. The
//! plan lists every image with KEEP or DELETE and every reason; deletes run concurrently, a failed
//! delete is reported and the rest go on, and running again finishes the job.

use std::collections::BTreeSet;

use anyhow::Context as _;
use chrono::Utc;
use futures::StreamExt as _;
use serde::Serialize;

use super::App;
use crate::adapters::registry::{RegistryError, RemoteImage};
use crate::adapters::state;
use crate::cli::PruneArgs;
use crate::domain::digest::Digest;
use crate::domain::history::{self, Operation, Outcome, Record};
use crate::domain::image::{ImageInfo, human_size, is_lkg_tag};
use crate::domain::retention::{self, Action, Facts, ImageEntry, Plan};
use crate::error::Failure;
use crate::ops::{deployed, targets};
use crate::output::{Report, ago, confirm, render_table, table};
use crate::settings::RegistryKind;

/// The command a Distribution registry's operator runs to free the space of deleted images.
pub const GARBAGE_COLLECT: &str = "registry garbage-collect /etc/docker/registry/config.yml";

#[derive(Debug, Serialize)]
struct PruneReport {
    dry_run: bool,
    repository: String,
    policy: String,
    #[serde(flatten)]
    plan: Plan,
    /// Deletes that failed, with the error (after a real run).
    failed: Vec<(Digest, String)>,
    /// Deletes of versions the target deployed recently (a policy without `[protect] history`).
    warnings: Vec<String>,
    /// What "freed" means on this registry.
    space: String,
    /// Table only: every reason on its own line, instead of the deciding one.
    #[serde(skip)]
    explain: bool,
}

impl Report for PruneReport {
    fn human(&self) -> String {
        let now = Utc::now();
        // Distribution records no push time: there the column is the build time, and says so.
        let pushed = self.plan.decisions.iter().any(|d| d.pushed.is_some());
        let mut t = table([
            "action",
            "tags",
            "digest",
            if pushed { "pushed" } else { "created" },
            "size",
            "reasons",
        ]);
        for d in &self.plan.decisions {
            let time = if pushed { d.pushed } else { d.created };
            let reasons = if self.explain || d.reasons.len() < 2 {
                d.reasons.join("\n")
            } else {
                format!("{} (+{} more)", d.reasons[0], d.reasons.len() - 1)
            };
            t.add_row(vec![
                match d.action {
                    Action::Keep => "keep".to_string(),
                    Action::Delete => "DELETE".to_string(),
                },
                if d.tags.is_empty() {
                    "<untagged>".into()
                } else {
                    d.tags.join(",")
                },
                d.digest.short().to_string(),
                time.map_or("-".into(), |p| ago(now, p)),
                d.size.map_or("-".into(), human_size),
                reasons,
            ]);
        }
        let mut out = render_table(&t);
        out.push_str(&format!(
            "\n{}: {} kept, {} {}, {} in the deleted images",
            self.repository,
            self.plan.kept,
            self.plan.deleted,
            if self.dry_run { "to delete" } else { "deleted" },
            human_size(self.plan.bytes_freed)
        ));
        if self.plan.deleted > 0 {
            out.push_str(&format!("\n{}", self.space));
        }
        for w in &self.warnings {
            out.push_str(&format!("\nwarning: {w}"));
        }
        for (d, e) in &self.failed {
            out.push_str(&format!("\nfailed to delete {}: {e}", d.short()));
        }
        if !self.explain && self.plan.decisions.iter().any(|d| d.reasons.len() > 1) {
            out.push_str("\n--explain shows every reason");
        }
        if self.dry_run {
            out.push_str("\ndry run: nothing was deleted");
        }
        out
    }
}

/// What deleting frees on this kind of registry.
fn space_note(kind: RegistryKind) -> String {
    match kind {
        RegistryKind::Oci => format!(
            "a Distribution registry frees the space only when its garbage collection runs, on the registry \
             host: `{GARBAGE_COLLECT}`; layers shared with kept images stay"
        ),
        RegistryKind::Ecr => "ECR frees the space of layers no kept image shares".into(),
    }
}

pub async fn run(app: &App<'_>, args: &PruneArgs) -> anyhow::Result<()> {
    if args.local {
        return super::prune_local::run(app, args).await;
    }
    let project = app.project()?;
    let path = args
        .policy
        .clone()
        .or_else(|| project.retention_policy.clone())
        .ok_or_else(|| Failure::NoPolicy {
            config: project.config_path.clone(),
        })?;
    let policy = crate::settings::policy::load(&path)?;
    // A release prunes every service's repository, each deploy-aware with that service's images.
    let registries = app.registries()?;
    let journal = app.journal()?;
    let _lock = app.lock_unless(args.dry_run, "backtrack prune")?;

    // What is deployed is protected, so not knowing it is not an option for a real run.
    let mut current = Vec::new();
    if let Ok(target) = app.target() {
        let engine = app
            .engine()
            .await
            .context("read what is deployed (prune protects it)")?;
        current = deployed::read(&engine, target, &project.registry.display()).await?;
        if let Some(d) = current.iter().find(|d| d.digest.is_none()) {
            anyhow::bail!(
                "protect what {} runs: the digest of {} is unknown in {}; refusing to prune",
                target.display(),
                d.container.name,
                project.registry.display()
            );
        }
    } else {
        app.printer
            .note("note: no [target] in the config: nothing is protected as deployed");
    }
    let ops = history::operations(&journal.read()?);
    let services: Vec<Option<&str>> = match app.target().ok().filter(|t| t.is_release()) {
        Some(t) => t.members.iter().map(|m| Some(m.name.as_str())).collect(),
        None => vec![None],
    };
    let mut planned = Vec::with_capacity(registries.len());
    for (registry, service) in registries.iter().zip(&services) {
        let deployed_digests: BTreeSet<Digest> = current
            .iter()
            .filter(|d| service.is_none() || d.service.as_deref() == *service)
            .filter_map(|d| d.digest.clone())
            .collect();
        let ops = match service {
            Some(s) => history::for_service(&ops, s),
            None => ops.clone(),
        };
        let report = plan_repository(app, registry.as_ref(), &policy, &path, deployed_digests, &ops, args).await?;
        planned.push((registry.clone(), report));
    }
    let deleting: usize = planned.iter().map(|(_, r)| r.plan.deleted).sum();
    if args.dry_run || deleting == 0 {
        return print(app, planned.into_iter().map(|(_, r)| r).collect());
    }
    if !app.settings.yes {
        for (_, r) in &planned {
            app.printer.note(r.human());
        }
        let names: Vec<String> = planned.iter().map(|(r, _)| r.name()).collect();
        let q = format!("Delete {deleting} images from {}?", names.join(" and "));
        if !confirm(&app.printer, &q, "confirm the deletes")? {
            return Err(Failure::Cancelled.into());
        }
    }
    let (mut done, mut total, mut failed) = (0, 0, 0);
    let mut reports = Vec::with_capacity(planned.len());
    for (registry, mut report) in planned {
        if report.plan.deleted > 0 {
            let (d, t) = delete_planned(app, registry.as_ref(), &journal, &path, &mut report).await?;
            done += d;
            total += t;
            failed += report.failed.len();
        }
        reports.push(report);
    }
    print(app, reports)?;
    if failed > 0 {
        return Err(Failure::Partial { done, total, failed }.into());
    }
    Ok(())
}

/// One report, or a release's: one per repository.
fn print(app: &App<'_>, mut reports: Vec<PruneReport>) -> anyhow::Result<()> {
    if reports.len() == 1 {
        return app.printer.report(&reports.remove(0));
    }
    app.printer.report(&ReleasePruneReport { repositories: reports })
}

/// A release's prune: one plan (and its deletes) per service's repository.
#[derive(Debug, Serialize)]
struct ReleasePruneReport {
    repositories: Vec<PruneReport>,
}

impl Report for ReleasePruneReport {
    fn human(&self) -> String {
        self.repositories
            .iter()
            .map(|r| r.human())
            .collect::<Vec<_>>()
            .join("\n\n")
    }
}

/// The retention plan of one repository: its images and every reason, with what `ops` (the
/// target's history, as this repository's service saw it) and the other targets built from it
/// protect, and what runs (`deployed_digests`).
async fn plan_repository(
    app: &App<'_>,
    registry: &dyn crate::adapters::registry::Registry,
    policy: &retention::Policy,
    path: &std::path::Path,
    deployed_digests: BTreeSet<Digest>,
    ops: &[history::OperationView],
    args: &PruneArgs,
) -> anyhow::Result<PruneReport> {
    let project = app.project()?;
    let images = registry
        .images()
        .await
        .with_context(|| format!("list images of {}", registry.name()))?;
    // Every image's time and size is shown and summed, so what the listing lacks is fetched
    // (Distribution lists tags only; image metadata is cached by digest).
    let need: Vec<Digest> = images
        .iter()
        .filter(|i| i.pushed.is_none() || i.size.is_none())
        .map(|i| i.digest.clone())
        .collect();
    // Age rules need every image's time; without them, an image whose metadata cannot be read is
    // shown without size and time rather than stopping the prune.
    let fetched: Vec<(Digest, Result<ImageInfo, RegistryError>)> = futures::stream::iter(need)
        .map(|d| async move {
            let info = registry.image_info(&d).await;
            (d, info)
        })
        .buffer_unordered(crate::adapters::registry::CONCURRENCY)
        .collect()
        .await;
    registry.flush_cache();
    let mut infos = std::collections::HashMap::new();
    let mut unread = Vec::new();
    for (digest, info) in fetched {
        match info {
            Ok(info) => {
                infos.insert(digest, info);
            }
            Err(e) if policy.uses_time() => {
                return Err(anyhow::Error::new(e).context(format!(
                    "read when {} was pushed (the policy's age rules need it)",
                    digest.short()
                )));
            }
            Err(e) => unread.push(format!("{}: {e}", digest.short())),
        }
    }
    if let Some(first) = unread.first() {
        app.printer.note(format!(
            "note: size and time of {} images could not be read ({first}); they show as -",
            unread.len()
        ));
    }
    let entries: Vec<ImageEntry> = images
        .iter()
        .map(|i| {
            let info = infos.get(&i.digest);
            ImageEntry {
                digest: i.digest.clone(),
                tags: i.tags.clone(),
                pushed: i.pushed.or_else(|| info.and_then(|x| x.pushed)),
                created: info.and_then(|x| x.created),
                size: i.size.or_else(|| info.and_then(|x| x.size)),
            }
        })
        .collect();
    // Other targets built from this repository (staging and prod, web and worker) keep what
    // their own journals say they run and recently ran.
    let mut other_targets = std::collections::BTreeMap::new();
    for sib in targets::siblings(&project.state_root, &registry.name(), &project.state_dir) {
        for r in history::deployed_versions(&sib.ops)
            .into_iter()
            .take(policy.protect.history)
        {
            if let Some(d) = r.digest {
                other_targets.insert(
                    d,
                    format!(
                        "among the last {} versions deployed on {}",
                        policy.protect.history, sib.meta.target
                    ),
                );
            }
        }
        if let Some(d) = history::last_committed(&sib.ops).and_then(|o| o.to.as_ref()?.digest.clone()) {
            other_targets.insert(d, format!("{} runs it (its journal)", sib.meta.target));
        }
    }
    let deployed_here = history::deployed_versions(ops);
    let facts = Facts {
        deployed: deployed_digests,
        recent_deployments: deployed_here.iter().filter_map(|r| r.digest.clone()).collect(),
        other_targets,
        now: Utc::now(),
    };
    let plan = retention::plan(policy, &entries, &facts);
    Ok(PruneReport {
        dry_run: args.dry_run,
        repository: registry.name(),
        policy: path.display().to_string(),
        warnings: retention::recent_history_warnings(&plan, &deployed_here),
        plan,
        failed: Vec::new(),
        space: space_note(project.registry.kind),
        explain: args.explain,
    })
}

/// Runs `report`'s deletes in one repository (never an image a pointer names now), recorded in
/// the journal; the report then says what was deleted and what failed. Returns (deleted, tried).
async fn delete_planned(
    app: &App<'_>,
    registry: &dyn crate::adapters::registry::Registry,
    journal: &state::Journal,
    path: &std::path::Path,
    report: &mut PruneReport,
) -> anyhow::Result<(usize, usize)> {
    let project = app.project()?;
    let images: Vec<&retention::Decision> = report.plan.decisions.iter().collect();
    // A pointer may have moved while the plan was read: never delete what one names now.
    let mut pointers: BTreeSet<String> = images
        .iter()
        .flat_map(|i| i.tags.iter().filter(|t| is_lkg_tag(t)).cloned())
        .collect();
    pointers.insert(project.lkg_tag());
    let mut lkg_now = BTreeSet::new();
    for tag in &pointers {
        if let Some(d) = registry.tag_digest(tag).await? {
            lkg_now.insert(d);
        }
    }
    let doomed: Vec<RemoteImage> = report
        .plan
        .decisions
        .iter()
        .filter(|d| d.action == Action::Delete && !lkg_now.contains(&d.digest))
        .map(|d| RemoteImage {
            digest: d.digest.clone(),
            tags: d.tags.clone(),
            pushed: d.pushed,
            size: d.size,
        })
        .collect();

    let base = Record {
        detail: Some(format!(
            "policy {} on {}: {} to delete",
            path.display(),
            registry.name(),
            doomed.len()
        )),
        ..state::begin(Operation::Prune)
    };
    journal.append(&base)?;
    let started = std::time::Instant::now();
    let bar = app.printer.interactive.then(|| {
        let b = indicatif::ProgressBar::new(doomed.len() as u64);
        b.set_message("deleting");
        b
    });
    let tick = || {
        if let Some(b) = &bar {
            b.inc(1);
        }
    };
    let results = registry.delete_many(&doomed, &tick).await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some((_, Err(e @ RegistryError::DeleteDisabled { .. }))) = results
        .iter()
        .find(|(_, r)| matches!(r, Err(RegistryError::DeleteDisabled { .. })))
    {
        let msg = e.to_string();
        journal.append(&base.finish(Utc::now(), Outcome::Failed, None, Some(msg)))?;
        return Err(RegistryError::DeleteDisabled {
            registry: registry.name(),
        }
        .into());
    }
    for (digest, r) in &results {
        if let Err(e) = r {
            report.failed.push((digest.clone(), e.to_string()));
        }
    }
    let failed_set: BTreeSet<&Digest> = report.failed.iter().map(|(d, _)| d).collect();
    let skipped = report.plan.deleted - doomed.len();
    report.plan.deleted = doomed.len() - report.failed.len();
    report.plan.kept += skipped + report.failed.len();
    report.plan.bytes_freed = doomed
        .iter()
        .filter(|i| !failed_set.contains(&i.digest))
        .filter_map(|i| i.size)
        .sum();
    let outcome = if report.failed.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Failed
    };
    let detail = format!(
        "policy {} on {}: deleted {}, failed {}",
        path.display(),
        registry.name(),
        report.plan.deleted,
        report.failed.len()
    );
    let elapsed = started.elapsed().as_millis() as u64;
    journal.append(&base.finish(Utc::now(), outcome, Some(elapsed), Some(detail)))?;
    Ok((report.plan.deleted, doomed.len()))
}
