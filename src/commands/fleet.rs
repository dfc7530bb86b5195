//! `deploy`, `rollback` and `status` of a target on several hosts (`[target] hosts`): the
//! command side of `ops::fleet`. One digest for every host, all-or-nothing, a report per host.

use serde::Serialize;

use super::App;
use crate::adapters::state::TargetMeta;
use crate::cli::SwapCommon;
use crate::domain::fleet::{self, HostStep, Strategy, Verdict};
use crate::domain::history::{self, Operation, Outcome, Record};
use crate::domain::image::ImageRef;
use crate::error::Failure;
use crate::ops::fleet::{Host, HostResult, Run, Slot};
use crate::ops::hooks::{self, HookEnv, Hooks};
use crate::ops::{catalog::Catalog, deployed, interrupt, recover, resolve, swap};
use crate::output::Report;

#[derive(Debug, Serialize)]
struct FleetReport {
    op: Operation,
    target: String,
    strategy: Strategy,
    to: ImageRef,
    dry_run: bool,
    hosts: Vec<HostResult>,
    /// Hosts left out because they could not be reached at the start (`--skip-unreachable`).
    skipped: Vec<String>,
}

impl Report for FleetReport {
    fn human(&self) -> String {
        let mut t = crate::output::table(["host", "result", "from", "to", "detail"]);
        for h in &self.hosts {
            t.add_row(vec![
                h.host.clone(),
                if self.dry_run && h.step == HostStep::NotStarted {
                    "would swap".into()
                } else {
                    h.step.as_str().to_string()
                },
                h.from.as_ref().map_or("-".into(), ImageRef::display),
                self.to.display(),
                h.detail.clone().unwrap_or_default(),
            ]);
        }
        let mut out = format!(
            "{} {} on {} host(s), {}: {} ({})\n{}",
            self.op.as_str(),
            self.target,
            self.hosts.len(),
            self.strategy.as_str(),
            self.to.display(),
            self.to.digest.as_ref().map_or("-", |d| d.short()),
            crate::output::render_table(&t)
        );
        if !self.skipped.is_empty() {
            out.push_str(&format!("\nskipped (unreachable): {}", self.skipped.join(", ")));
        }
        if self.dry_run {
            out.push_str("\ndry run: nothing was changed");
        }
        out
    }
}

/// `deploy` / `rollback` across the fleet.
/// `confirm_first`: a version picked on a terminal is confirmed before anything changes.
/// The hosts that answered; the others refuse the run, naming the host, unless `skip` (then
/// each is a warning, and listed as skipped).
pub fn reachable_hosts(
    app: &App<'_>,
    connected: Vec<(String, anyhow::Result<Host>)>,
    skip: bool,
) -> anyhow::Result<(Vec<Host>, Vec<String>)> {
    let mut hosts: Vec<Host> = Vec::new();
    let mut skipped = Vec::new();
    for (address, result) in connected {
        match result {
            Ok(h) => hosts.push(h),
            Err(e) if skip => {
                app.printer.note(format!("warning: skipping {address}: {e:#}"));
                skipped.push(address);
            }
            Err(e) => {
                return Err(e.context(format!(
                    "reach host {address} of the fleet (nothing was changed on any host; \
                     --skip-unreachable goes on without it)"
                )));
            }
        }
    }
    if hosts.is_empty() {
        anyhow::bail!("reach any host of the fleet: none answered ({})", skipped.join(", "));
    }
    Ok((hosts, skipped))
}

pub async fn swap_command(
    app: &App<'_>,
    op: Operation,
    input: &str,
    common: &SwapCommon,
    confirm_first: bool,
) -> anyhow::Result<()> {
    let project = app.project()?;
    let target = app.target()?;
    let registry = app.registry()?;
    let strategy = common
        .strategy
        .or(target.strategy)
        .unwrap_or_else(|| Strategy::default_for(op));
    let meta = |h: &crate::settings::FleetHost| TargetMeta {
        target: target.display(),
        engine: h.address.clone(),
        repository: project.registry.display(),
        environment: target.environment.clone(),
    };
    let (mut hosts, skipped) = reachable_hosts(
        app,
        crate::ops::fleet::connect_all(target, &app.settings.ssh, meta).await,
        common.skip_unreachable,
    )?;
    // Every lock before the first change, in one fixed order: two fleet runs never wait on each
    // other's half; the one that comes second is refused at its first host, holding nothing.
    let addresses: Vec<String> = hosts.iter().map(|h| h.address.clone()).collect();
    let order = fleet::lock_order(&addresses);
    if !common.dry_run {
        let command = format!("backtrack {} {input} (fleet)", op.as_str());
        for i in &order {
            let address = hosts[*i].address.clone();
            // On refusal, `hosts` drops at return: every lock taken so far is released.
            hosts[*i]
                .lock(&command)
                .map_err(|e| e.context(format!("lock the target on {address}")))?;
        }
        interrupt::install();
        let settled = futures::future::join_all(
            hosts
                .iter()
                .map(|h| recover::settle(&h.engine, &h.journal, &app.printer)),
        )
        .await;
        for (h, result) in hosts.iter().zip(settled) {
            result.map_err(|e| e.context(format!("settle the last run on {}", h.address)))?;
        }
    }
    // The selector is resolved once, with the history of the first host in lock order. What
    // every host runs and the registry's catalog are read at the same time.
    let first = &hosts[order[0]];
    let ops = history::operations(&first.journal.read()?);
    let repository = registry.name();
    let reads = futures::future::join_all(hosts.iter().map(|h| deployed::read(&h.engine, target, &repository)));
    let (reads, catalog) = tokio::join!(reads, Catalog::load(registry.as_ref()));
    let mut current = Vec::new();
    for (h, d) in hosts.iter().zip(reads) {
        current.push(d.map_err(|e| e.context(format!("read what {} runs on {}", target.display(), h.address)))?);
    }
    let current_ref = current[order[0]].first().map(|d| d.image.clone());
    let catalog = catalog?;
    let chosen = resolve::resolve(
        registry.as_ref(),
        &catalog,
        input,
        &ops,
        current_ref.as_ref(),
        &project.lkg_tag(),
    )
    .await?;
    let image = registry.pull_reference(&chosen.digest);
    let planned = futures::future::join_all(hosts.iter().zip(&current).map(|(h, cur)| {
        let image = &image;
        let chosen = &chosen;
        async move {
            let already = !cur.is_empty() && cur.iter().all(|d| d.digest.as_ref() == Some(&chosen.digest));
            if already {
                return Ok(None);
            }
            swap::plan(&h.engine, op, target, cur, &chosen.image, image)
                .await
                .map(Some)
                .map_err(|e| e.context(format!("plan the swap on {}", h.address)))
        }
    }))
    .await;
    let mut slots = Vec::new();
    for ((h, cur), plan) in hosts.iter().zip(&current).zip(planned) {
        let plan = plan?;
        slots.push(Slot {
            host: h,
            result: HostResult {
                host: h.address.clone(),
                step: if plan.is_some() {
                    HostStep::NotStarted
                } else {
                    HostStep::Unchanged
                },
                from: cur.first().map(|d| d.image.clone()),
                detail: None,
                logs: Vec::new(),
            },
            plan,
        });
    }
    let mut report = FleetReport {
        op,
        target: target.display(),
        strategy,
        to: chosen.image.clone(),
        dry_run: common.dry_run,
        hosts: Vec::new(),
        skipped: skipped.clone(),
    };
    if common.dry_run {
        report.hosts = slots.into_iter().map(|s| s.result).collect();
        return app.printer.report(&report);
    }
    if confirm_first && !app.settings.yes {
        let q = format!(
            "Roll back {} on {} host(s) to {}?",
            target.display(),
            slots.len(),
            chosen.image.display()
        );
        if !crate::output::confirm(&app.printer, &q, "confirm the rollback")? {
            return Err(Failure::Cancelled.into());
        }
    }
    let mut base = crate::adapters::state::begin(op);
    base.id = format!("fleet-{}", base.id);
    base.reason = common.reason.clone();
    base.target = Some(target.display());
    base.from = current_ref.clone();
    base.to = Some(chosen.image.clone());
    if !skipped.is_empty() {
        base.detail = Some(format!("fleet run without unreachable host(s): {}", skipped.join(", ")));
    }
    // The hooks run once for the whole fleet, on this machine, with every host named.
    let hooks = Hooks::from_project(project, common.no_hooks);
    let moving: Vec<String> = slots
        .iter()
        .filter(|s| s.plan.is_some())
        .map(|s| s.host.address.clone())
        .collect();
    let hook_env = |result: Option<Outcome>| HookEnv {
        op: op.as_str().to_string(),
        from_version: current_ref.as_ref().and_then(|r| r.version.clone()),
        to_version: chosen.image.version.clone(),
        digest: Some(chosen.digest.to_string()),
        target: target.display(),
        hosts: moving.clone(),
        result: result.map(|r| r.as_str().to_string()),
        reason: common.reason.clone(),
    };
    if !moving.is_empty()
        && let Err(e) = hooks::run(&app.printer, "pre", hooks.pre.as_deref(), &hook_env(None), &hooks).await
    {
        for h in &hosts {
            h.journal.append(&base)?;
            h.journal.append(&Record {
                notes: vec![e.to_string()],
                ..base.finish(chrono::Utc::now(), Outcome::Failed, None, Some(e.to_string()))
            })?;
        }
        return Err(anyhow::Error::new(e).context("go on: nothing was changed on any host"));
    }
    let auth = registry.pull_auth().await?;
    let run = Run {
        printer: &app.printer,
        health: &project.health,
        auth: Some(&auth),
        base,
    };
    let started = std::time::Instant::now();
    let waves = fleet::waves(slots.len(), strategy, target.batch);
    let last = waves.len().saturating_sub(1);
    for (n, wave) in waves.iter().enumerate() {
        let steps: Vec<HostStep> = slots.iter().map(|s| s.result.step).collect();
        if !fleet::may_continue(&steps) {
            break;
        }
        let mut picked: Vec<&mut Slot<'_>> = slots
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| wave.contains(i))
            .map(|(_, s)| s)
            .collect();
        futures::future::join_all(picked.iter_mut().map(|s| crate::ops::fleet::apply(&run, s))).await;
        if strategy == Strategy::Canary && n == 0 && n < last {
            for s in picked.iter_mut().filter(|s| s.result.step == HostStep::Validated) {
                crate::ops::fleet::soak(&run, s, target.canary_soak).await;
            }
        }
    }
    let steps: Vec<HostStep> = slots.iter().map(|s| s.result.step).collect();
    let mut to_revert = fleet::must_revert(&steps);
    // Every host validated: the `post` hook has the last word, for the whole fleet.
    let mut post_failed = None;
    if to_revert.is_empty()
        && steps.contains(&HostStep::Validated)
        && let Err(e) = hooks::run(&app.printer, "post", hooks.post.as_deref(), &hook_env(None), &hooks).await
    {
        to_revert = (0..steps.len()).filter(|i| steps[*i] == HostStep::Validated).collect();
        post_failed = Some(e.to_string());
    }
    if to_revert.is_empty() {
        let ms = started.elapsed().as_millis() as u64;
        futures::future::join_all(
            slots
                .iter_mut()
                .filter(|s| s.result.step == HostStep::Validated)
                .map(|s| crate::ops::fleet::commit(&run, s, ms)),
        )
        .await;
    } else {
        let failed: Vec<String> = slots
            .iter()
            .filter(|s| s.result.step.is_failure())
            .map(|s| s.host.address.clone())
            .collect();
        let because = match &post_failed {
            Some(e) => e.clone(),
            None => format!("{} failed", failed.join(", ")),
        };
        app.printer.note(format!(
            "{because}: putting the previous version back on every swapped host"
        ));
        futures::future::join_all(
            slots
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| to_revert.contains(i))
                .map(|(_, s)| crate::ops::fleet::revert(&run, s, &because)),
        )
        .await;
    }
    for s in &slots {
        if !s.result.logs.is_empty() {
            app.printer.note(format!(
                "[{}] last lines of the failed container's output:",
                s.host.address
            ));
            for l in &s.result.logs {
                app.printer.note(format!("  | {l}"));
            }
        }
    }
    let steps: Vec<HostStep> = slots.iter().map(|s| s.result.step).collect();
    let verdict = match (fleet::verdict(&steps), &post_failed) {
        // No host failed its own validation: the `post` hook did.
        (Verdict::Done, Some(_)) => Verdict::RevertedEverywhere { failed: Vec::new() },
        (v, _) => v,
    };
    let outcome = match &verdict {
        Verdict::Done => Outcome::Ok,
        Verdict::RevertedEverywhere { .. } => Outcome::Reverted,
        Verdict::NeedsAPerson { .. } => Outcome::RevertFailed,
    };
    if outcome != Outcome::Ok {
        let env = hook_env(Some(outcome));
        if let Err(e) = hooks::run(&app.printer, "on_revert", hooks.on_revert.as_deref(), &env, &hooks).await {
            app.printer.note(format!("warning: {e}"));
        }
    }
    // One notification for the fleet operation, noted in the first host's journal.
    if !moving.is_empty() {
        let why = slots
            .iter()
            .filter_map(|s| s.result.detail.as_ref().map(|d| format!("on {}: {d}", s.host.address)))
            .chain(post_failed.clone())
            .collect::<Vec<_>>();
        let event = crate::ops::notify::Event {
            hosts: moving.clone(),
            ..crate::ops::notify::Event::of(
                &run.base,
                target.environment.clone().unwrap_or_else(|| target.display()),
                registry.name(),
                outcome,
                (outcome != Outcome::Ok).then(|| why.join("; ")),
                Some(started.elapsed().as_millis() as u64),
            )
        };
        let sent = crate::ops::notify::send(&project.notify, &event).await;
        crate::ops::swap::note_delivery(&slots[order[0]].host.journal, &app.printer, &run.base, sent);
    }
    report.hosts = slots.into_iter().map(|s| s.result).collect();
    app.printer.report(&report)?;
    let name = |i: &usize| report.hosts[*i].host.clone();
    let why = |failed: &[usize]| {
        failed
            .iter()
            .map(|i| {
                format!(
                    "on {}: {}",
                    name(i),
                    report.hosts[*i].detail.clone().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    match verdict {
        Verdict::Done => Ok(()),
        Verdict::RevertedEverywhere { failed } => Err(Failure::Reverted {
            version: chosen.image.display(),
            why: format!(
                "{}; every host runs its previous version again",
                post_failed.clone().unwrap_or_else(|| why(&failed))
            ),
        }
        .into()),
        Verdict::NeedsAPerson { failed, hosts } => Err(Failure::RevertFailed {
            version: chosen.image.display(),
            why: post_failed.clone().unwrap_or_else(|| why(&failed)),
            revert_error: format!(
                "a person must act on {} (what runs there is neither the previous nor the chosen version, \
                 or the host could not be reached; the next run settles it from that host's journal)",
                hosts.iter().map(name).collect::<Vec<_>>().join(", ")
            ),
        }
        .into()),
    }
}

/// Every host of the target, connected in parallel (each a host or why it did not answer).
pub(super) async fn reach_all(app: &App<'_>) -> anyhow::Result<Vec<(String, anyhow::Result<Host>)>> {
    let project = app.project()?;
    let target = app.target()?;
    let meta = |h: &crate::settings::FleetHost| TargetMeta {
        target: target.display(),
        engine: h.address.clone(),
        repository: project.registry.display(),
        environment: target.environment.clone(),
    };
    Ok(crate::ops::fleet::connect_all(target, &app.settings.ssh, meta).await)
}

/// For `versions`: what every host runs, read in parallel, counted by digest. A host that does
/// not answer is listed, not fatal; the floor is the highest any host's image sets.
pub(super) async fn placement(
    app: &App<'_>,
    target: &crate::settings::TargetSettings,
    repository: &str,
) -> super::versions::Placement {
    match reach_all(app).await {
        Ok(hosts) => placement_of(&hosts, target, repository).await,
        Err(e) => {
            tracing::info!("deployed marks unavailable: {e:#}");
            super::versions::Placement {
                hosts: target.hosts.len(),
                ..Default::default()
            }
        }
    }
}

/// For the rollback picker: what the first host in lock order runs and its history (what
/// `previous` is resolved with), and where each digest runs.
pub(super) async fn picker_facts(
    app: &App<'_>,
    target: &crate::settings::TargetSettings,
    repository: &str,
) -> anyhow::Result<(
    Option<ImageRef>,
    Vec<history::OperationView>,
    super::versions::Placement,
)> {
    let hosts = reach_all(app).await?;
    let placement = placement_of(&hosts, target, repository).await;
    let up: Vec<&Host> = hosts.iter().filter_map(|(_, h)| h.as_ref().ok()).collect();
    let addresses: Vec<String> = up.iter().map(|h| h.address.clone()).collect();
    let Some(&first) = fleet::lock_order(&addresses).first() else {
        anyhow::bail!("reach any host of the fleet: none answered");
    };
    let first = up[first];
    let ops = history::operations(&first.journal.read()?);
    let current = deployed::read(&first.engine, target, repository)
        .await
        .map_err(|e| e.context(format!("read what {} runs on {}", target.display(), first.address)))?;
    Ok((current.first().map(|d| d.image.clone()), ops, placement))
}

/// What every host runs (read in parallel), counted by digest; the hosts that did not answer.
async fn placement_of(
    hosts: &[(String, anyhow::Result<Host>)],
    target: &crate::settings::TargetSettings,
    repository: &str,
) -> super::versions::Placement {
    let mut placement = super::versions::Placement {
        hosts: target.hosts.len(),
        ..Default::default()
    };
    let reads = hosts.iter().map(|(address, connected)| async move {
        let host = match connected {
            Ok(h) => h,
            Err(e) => return (address, Err(format!("{e:#}"))),
        };
        match deployed::read(&host.engine, target, repository).await {
            Ok(d) => {
                let floor = crate::ops::guard::floor(&host.engine, &d).await;
                (address, Ok((d, floor)))
            }
            Err(e) => (address, Err(format!("{e:#}"))),
        }
    });
    for (address, read) in futures::future::join_all(reads).await {
        match read {
            Ok((d, floor)) => {
                let digests: std::collections::BTreeSet<_> = d.into_iter().filter_map(|d| d.digest).collect();
                for digest in digests {
                    *placement.on.entry(digest).or_default() += 1;
                }
                if floor.as_ref().map(|f| &f.min) > placement.floor.as_ref().map(|f| &f.min) {
                    placement.floor = floor;
                }
            }
            Err(why) => placement.unreachable.push((address.clone(), why)),
        }
    }
    placement
}

#[derive(Debug, Serialize)]
struct FleetStatus {
    target: String,
    rows: Vec<StatusRow>,
    /// Hosts grouped by digest when they differ.
    drift: Vec<String>,
}

#[derive(Debug, Serialize)]
struct StatusRow {
    host: String,
    container: Option<String>,
    version: Option<String>,
    digest: Option<String>,
    health: Option<String>,
    error: Option<String>,
    lock: Option<String>,
}

impl Report for FleetStatus {
    fn human(&self) -> String {
        let mut t = crate::output::table(["host", "container", "version", "digest", "health", "lock"]);
        for r in &self.rows {
            t.add_row(vec![
                r.host.clone(),
                r.container.clone().unwrap_or_else(|| "-".into()),
                r.version.clone().unwrap_or_else(|| "-".into()),
                r.digest.clone().unwrap_or_else(|| "-".into()),
                r.health.clone().or(r.error.clone()).unwrap_or_else(|| "-".into()),
                r.lock.clone().unwrap_or_default(),
            ]);
        }
        let mut out = format!(
            "{} on {} hosts\n{}",
            self.target,
            self.rows.len(),
            crate::output::render_table(&t)
        );
        if self.drift.is_empty() {
            out.push_str("\nfleet: every host runs the same digest");
        } else {
            out.push_str("\nfleet drift: hosts run different digests:");
            for d in &self.drift {
                out.push_str(&format!("\n  {d}"));
            }
        }
        out
    }
}

/// `status` across the fleet: a row per host and container, and the hosts on different digests.
pub async fn status(app: &App<'_>) -> anyhow::Result<()> {
    let project = app.project()?;
    let target = app.target()?;
    let repository = project.registry.display();
    let meta = |h: &crate::settings::FleetHost| TargetMeta {
        target: target.display(),
        engine: h.address.clone(),
        repository: repository.clone(),
        environment: target.environment.clone(),
    };
    let mut rows = Vec::new();
    let mut digests: Vec<(String, Option<String>)> = Vec::new();
    for (address, connected) in crate::ops::fleet::connect_all(target, &app.settings.ssh, meta).await {
        let host = match connected {
            Ok(h) => h,
            Err(e) => {
                rows.push(StatusRow {
                    host: address,
                    container: None,
                    version: None,
                    digest: None,
                    health: None,
                    error: Some(format!("unreachable: {e:#}")),
                    lock: None,
                });
                continue;
            }
        };
        let lock = host.holder().map(|h| format!("held by {h}"));
        match deployed::read(&host.engine, target, &repository).await {
            Ok(list) if !list.is_empty() => {
                digests.push((address.clone(), list[0].digest.as_ref().map(|d| d.to_string())));
                for d in list {
                    rows.push(StatusRow {
                        host: address.clone(),
                        container: Some(d.container.name.clone()),
                        version: d.image.version.clone(),
                        digest: d.digest.as_ref().map(|x| x.short().to_string()),
                        health: Some(d.container.health.clone().unwrap_or_else(|| d.container.state.clone())),
                        error: None,
                        lock: lock.clone(),
                    });
                }
            }
            Ok(_) => rows.push(StatusRow {
                host: address.clone(),
                container: None,
                version: None,
                digest: None,
                health: None,
                error: Some("not running".into()),
                lock,
            }),
            Err(e) => rows.push(StatusRow {
                host: address.clone(),
                container: None,
                version: None,
                digest: None,
                health: None,
                error: Some(format!("{e:#}")),
                lock,
            }),
        }
    }
    let pairs: Vec<(&str, Option<&str>)> = digests.iter().map(|(h, d)| (h.as_str(), d.as_deref())).collect();
    let groups = fleet::by_digest(&pairs);
    let drift = if groups.len() > 1 {
        groups
            .iter()
            .map(|(d, hosts)| format!("{}: {}", d.map_or("-", |d| &d[..d.len().min(19)]), hosts.join(", ")))
            .collect()
    } else {
        Vec::new()
    };
    app.printer.report(&FleetStatus {
        target: target.display(),
        rows,
        drift,
    })
}
