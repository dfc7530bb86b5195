//! `backtrack deploy SELECTOR` and `backtrack rollback [SELECTOR]`: the same swap, forward or
//! back. Rollback defaults to `previous`; on a terminal with no selector it offers a picker and
//! asks for confirmation, like the seed's rollback session.

use anyhow::Context as _;
use serde::Serialize;

use super::App;
use crate::adapters::docker::swarm::UpdateOverrides;
use crate::adapters::state::Journal;
use crate::cli::{RollbackArgs, SwapArgs, SwapCommon};
use crate::domain::fleet::{HostStep, Strategy, Verdict};
use crate::domain::history::Record;
use crate::domain::history::{self, Operation, Outcome};
use crate::domain::image::ImageRef;
use crate::error::Failure;
use crate::ops::config::Configs;
use crate::ops::fleet::HostResult;
use crate::ops::guard;
use crate::ops::hooks::{self, HookEnv, Hooks};
use crate::ops::mark::{MarkRequest, keep_on_host, mark_good};
use crate::ops::operation::{self, Ended, Run, Slot, Unit};
use crate::ops::rebuild;
use crate::ops::release;
use crate::ops::swap::{self, Plan, SwapReport};
use crate::ops::swarm as swarm_ops;
use crate::ops::{catalog::Catalog, deployed, interrupt, recover, resolve, validate};
use crate::output::{Report, ask, confirm};
use crate::settings::TargetKind;

pub async fn run_deploy(app: &App<'_>, args: &SwapArgs) -> anyhow::Result<()> {
    swap_command(app, Operation::Deploy, &args.selector, &args.common, false).await
}

pub async fn run_rollback(app: &App<'_>, args: &RollbackArgs) -> anyhow::Result<()> {
    match &args.selector {
        Some(s) => swap_command(app, Operation::Rollback, s, &args.common, false).await,
        None if app.settings.interactive && !app.settings.yes && !app.printer.is_json() => {
            let picked = pick_version(app).await?;
            swap_command(app, Operation::Rollback, &picked, &args.common, true).await
        }
        None => swap_command(app, Operation::Rollback, "previous", &args.common, false).await,
    }
}

/// The seed's session: list versions with their dates and marks (deployed, last_known_good,
/// failed), say what the default `previous` is, read a choice (asked again until it is one).
async fn pick_version(app: &App<'_>) -> anyhow::Result<String> {
    let project = app.project()?;
    let registry = app.registry()?;
    let target = app.target()?;
    let catalog = Catalog::load(registry.as_ref()).await?;
    // On a fleet: what the first host (in lock order) runs and its history, as the rollback
    // resolves them, and on how many hosts each digest runs.
    let (current_ref, ops, placement) = if app.is_fleet() {
        super::fleet::picker_facts(app, target, &registry.name()).await?
    } else {
        let engine = app.engine().await?;
        let current = deployed::read(&engine, target, &registry.name()).await?;
        let ops = history::operations(&app.journal()?.read()?);
        let current_ref = current.first().map(|d| d.image.clone());
        let digests = current.into_iter().filter_map(|d| d.digest).collect();
        (current_ref, ops, super::versions::Placement::one_host(digests, None))
    };
    let shown: Vec<String> = catalog.versions.iter().take(15).map(|v| v.tag.clone()).collect();
    if shown.is_empty() {
        anyhow::bail!("offer versions: {} has no version tags", registry.name());
    }
    let failed = history::failed_versions(&ops);
    let pointer = project.lkg_tag();
    let mut lookup = shown.clone();
    if catalog.has_tag(&pointer) {
        lookup.push(pointer.clone());
    }
    let digests = registry.tag_digests(&lookup).await?;
    let unique: Vec<_> = digests
        .values()
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let infos = registry.image_infos(&unique).await.unwrap_or_default();
    registry.flush_cache();
    let default = resolve::resolve(
        registry.as_ref(),
        &catalog,
        "previous",
        &ops,
        current_ref.as_ref(),
        &pointer,
    )
    .await
    .ok();
    let now = chrono::Utc::now();
    app.printer.note(format!("Available versions in {}:", registry.name()));
    let mut t = crate::output::table(["", "version", "created", "marks"]);
    for (i, tag) in shown.iter().enumerate() {
        let digest = digests.get(tag);
        let mut marks = Vec::new();
        if let Some(mark) = digest.and_then(|d| placement.mark(d)) {
            marks.push(mark);
        }
        if digest.is_some() && digests.get(&pointer) == digest {
            marks.push(pointer.clone());
        }
        if failed.contains(&catalog.versions[i].version.to_string()) {
            marks.push("failed".to_string());
        }
        let created = digest
            .and_then(|d| infos.get(d))
            .and_then(|info| info.pushed.or(info.created))
            .map_or("-".into(), |c| crate::output::ago(now, c));
        t.add_row(vec![format!("{:>2})", i + 1), tag.clone(), created, marks.join(",")]);
    }
    for line in crate::output::render_table(&t).lines().skip(1) {
        app.printer.note(format!("  {line}"));
    }
    let default_shown = default.as_ref().map_or("none".into(), |c| c.image.display());
    loop {
        let answer = ask(&format!(
            "Enter a number, a version, or a selector [previous = {default_shown}]: "
        ))?;
        if answer.is_empty() {
            if default.is_none() {
                app.printer
                    .note("there is no previous version to go back to; choose one");
                continue;
            }
            return Ok("previous".into());
        }
        if let Ok(n) = answer.parse::<usize>() {
            if (1..=shown.len()).contains(&n) {
                return Ok(shown[n - 1].clone());
            }
            app.printer.note(format!("choose 1 to {}", shown.len()));
            continue;
        }
        match answer.parse::<crate::domain::selector::Selector>() {
            Ok(_) => return Ok(answer),
            Err(e) => app.printer.note(format!("{e}")),
        }
    }
}

#[derive(Debug, Serialize)]
struct PlanReport<'a> {
    dry_run: bool,
    #[serde(flatten)]
    plan: &'a Plan,
    commands: Vec<String>,
}

impl Report for PlanReport<'_> {
    fn human(&self) -> String {
        let p = self.plan;
        let mut out = format!(
            "plan: {} {}\n  from   {}{}\n  to     {}{}\n  image  {}\n  containers: {}\n  order  {}: {}\n",
            p.op.as_str(),
            p.target,
            p.from.display(),
            p.from
                .digest
                .as_ref()
                .map(|d| format!(" ({})", d.short()))
                .unwrap_or_default(),
            p.to.display(),
            p.to.digest
                .as_ref()
                .map(|d| format!(" ({})", d.short()))
                .unwrap_or_default(),
            p.image,
            p.containers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            p.order.order,
            p.order.why,
        );
        out.push_str(&config_lines(&p.config, &p.to.display()));
        out.push_str("equivalent docker commands:\n");
        for c in &self.commands {
            out.push_str(&format!("  {c}\n"));
        }
        out.push_str("dry run: nothing was changed");
        out
    }
}

/// The plan's config line and what differs, one change per line (secrets masked).
fn config_lines(config: &crate::ops::config::ConfigPlan, version: &str) -> String {
    let mut out = format!("  config {}\n", config.summary(version));
    for c in &config.config_changes {
        out.push_str(&format!("    {}\n", c.line()));
    }
    out
}

impl Report for SwapReport {
    fn human(&self) -> String {
        match self.result {
            Outcome::Unchanged => format!("{} already runs {}; nothing to do", self.target, self.to.display()),
            _ => format!(
                "{} {}: {} -> {} ({}), validated in {:.1}s",
                match self.op {
                    Operation::Rollback if self.forward => "rolled forward",
                    Operation::Rollback => "rolled back",
                    _ => "deployed",
                },
                self.target,
                self.from.display(),
                self.to.display(),
                self.to.digest.as_ref().map_or("-", |d| d.short()),
                self.duration_ms as f64 / 1000.0
            ),
        }
    }
}

/// The version to rebuild when resolution failed only because its image is gone: an exact
/// version with no tag in the registry, or a tag (from the journal) that no longer exists.
fn missing_version(err: &anyhow::Error, input: &str) -> Option<semver::Version> {
    use crate::adapters::registry::RegistryError;
    use crate::domain::selector::{ResolveError, Selector};
    use crate::domain::version::{parse_version, strip_build};
    for cause in err.chain() {
        if let Some(ResolveError::NoMatch { .. }) = cause.downcast_ref::<ResolveError>()
            && let Ok(Selector::Exact(v)) = input.parse::<Selector>()
        {
            return Some(strip_build(&v));
        }
        if let Some(RegistryError::ManifestNotFound { reference }) = cause.downcast_ref::<RegistryError>() {
            return reference
                .rsplit_once(':')
                .and_then(|(_, tag)| parse_version(tag))
                .map(|v| strip_build(&v));
        }
    }
    None
}

/// What a deploy or rollback names as its lock's holder.
pub(super) fn lock_command(op: Operation, input: &str) -> String {
    format!("backtrack {} {input}", op.as_str())
}

async fn swap_command(
    app: &App<'_>,
    op: Operation,
    input: &str,
    common: &SwapCommon,
    confirm_first: bool,
) -> anyhow::Result<()> {
    let project = app.project()?;
    let target = app.target()?;
    let swarm = target.kind == TargetKind::Swarm;
    refuse_flags_of_other_kinds(target, common)?;
    // A release's services each have their registry; the first one's resolves the selector.
    let registries = app.registries()?;
    let registry = registries[0].clone();
    // The registry's tags do not depend on the target: they are listed while the locks are taken
    // (for a remote target, while the connection logs in).
    let tags = tokio::spawn({
        let registries = registries.clone();
        async move { Catalog::load_all(&registries).await }
    });
    let command = lock_command(op, input);
    let (hosts, skipped) = app
        .hosts(
            (!common.dry_run).then_some(command.as_str()),
            Some(common.skip_unreachable),
        )
        .await?;
    let _timings = crate::ops::fleet::Timings::new(&app.printer, &hosts, app.settings.verbose > 0);
    if !common.dry_run && !swarm {
        // The gate a remote swap goes through is opened now, so it is open when the swap goes.
        for h in &hosts {
            h.ready_gate();
        }
    }
    let fleet = app.is_fleet();
    let addresses: Vec<String> = hosts.iter().map(|h| h.address.clone()).collect();
    let order = crate::domain::fleet::lock_order(&addresses);
    settle_all(app, registry.as_ref(), &hosts, common.dry_run).await?;
    // The selector is resolved once, with the history of the first host in lock order. What
    // every host runs is read at the same time as the registry's catalog.
    let first = &hosts[order[0]];
    // Each host's journal, read once: its history, and the configs its target ran with.
    let restore = restore_config(op, target, common);
    let configs: Vec<Configs> = hosts
        .iter()
        .map(|h| h.journal.read().map(|records| Configs::new(&records, restore)))
        .collect::<Result<_, _>>()?;
    let ops = configs[order[0]].ops();
    let repository = project.registry.display();
    // A Swarm service is read once: its spec for the plan, its tasks for what runs.
    // A release's: each service, as a target of its own (read at once).
    let member_targets = target.services();
    let mut services = Vec::new();
    let mut current = Vec::new();
    if swarm {
        let mut entries = Vec::new();
        for (_, svc, e) in swarm_ops::services_of(&first.engine, target).await? {
            entries.extend(e);
            services.push(svc);
        }
        current.push(entries);
    } else {
        let reads =
            futures::future::join_all(hosts.iter().map(|h| deployed::read(&h.engine, target, &repository))).await;
        for (h, d) in hosts.iter().zip(reads) {
            current.push(if fleet {
                d.map_err(|e| e.context(format!("read what {} runs on {}", target.display(), h.address)))?
            } else {
                d?
            });
        }
    }
    let current_ref = current[order[0]].first().map(|d| d.image.clone());
    let mut catalogs: Vec<Catalog> = tags.await.context("list the registry's tags")??;
    let catalog = catalogs.remove(0);
    let Some((chosen, note)) = resolve_or_rebuild(
        app,
        registry.as_ref(),
        &catalog,
        input,
        ops,
        current_ref.as_ref(),
        &first.engine,
        common,
    )
    .await?
    else {
        return Ok(());
    };

    // A release: every service's image of the chosen version (refused when one lacks it).
    let images = if target.is_release() {
        let all: Vec<&Catalog> = std::iter::once(&catalog).chain(&catalogs).collect();
        release::images_of(target, &registries, &all, &chosen.image).await?
    } else {
        Vec::new()
    };
    let image = registry.pull_reference(&chosen.digest);
    // What each container goes to (in a release, its service's image).
    let each_of = |cur: &[deployed::Deployed]| release::each(cur, &images, &chosen.image, &image);
    // Already there, unless it runs there in emergency mode: then the swap leaves that mode.
    let in_emergency = |d: &deployed::Deployed| {
        d.container
            .labels
            .contains_key(crate::adapters::docker::LABEL_EMERGENCY)
    };
    let already = |cur: &[deployed::Deployed]| release::already(cur, &each_of(cur)) && !cur.iter().any(in_emergency);
    if !fleet && (current[0].is_empty() || already(&current[0])) {
        return app.printer.report(&SwapReport {
            op,
            target: target.display(),
            from: current_ref.clone().unwrap_or_default(),
            to: chosen.image.clone(),
            containers: current[0].iter().map(|d| d.container.name.clone()).collect(),
            result: Outcome::Unchanged,
            forward: false,
            pulled: false,
            duration_ms: 0,
            detail: None,
            logs: Vec::new(),
        });
    }

    // A rollback goes back: one that would move to a higher version says so and is confirmed.
    let forward = op == Operation::Rollback && is_higher(&chosen.image, current_ref.as_ref());
    if forward {
        app.printer.note(format!(
            "note: this rollback goes forward: {} -> {} is a higher version",
            current_ref.as_ref().map_or("-".into(), ImageRef::display),
            chosen.image.display()
        ));
    }
    // What each host would do, read while the migration guard's floor is (both only inspect):
    // the running image may forbid versions below a floor, on any host.
    let mut plans: Vec<Option<Planned>> = Vec::new();
    let floor = if swarm {
        let overrides = UpdateOverrides {
            parallelism: common.parallelism,
            // `auto` (or nothing) leaves the service's own update order.
            order: common
                .order
                .or(target.order)
                .filter(|o| *o != crate::domain::order::Order::Auto)
                .map(|o| o.as_str().to_string()),
            force: false,
        };
        // One plan per service (a release's: each to its own image of the version).
        let mut planned = Vec::with_capacity(services.len());
        for (svc, t) in services.iter().zip(&member_targets) {
            let of = |d: &&deployed::Deployed| d.service.is_none() || d.service.as_ref() == Some(&t.name);
            let from = current[0]
                .iter()
                .find(of)
                .map(|d| d.image.clone())
                .or(current_ref.clone());
            let (to, pull) = images
                .iter()
                .find(|i| i.service == t.name)
                .map_or((&chosen.image, &image), |i| (&i.image, &i.pull));
            let repository = pull.rsplit_once('@').map_or(pull.as_str(), |(r, _)| r);
            let mut plan = swarm_ops::plan(op, t, svc, from.unwrap_or_default(), to, repository, &overrides)
                .with_config(&configs[order[0]])?;
            plan.note = note.clone();
            planned.push(plan);
        }
        plans.push(Some(if planned.len() == 1 {
            Planned::Service(Box::new(planned.remove(0)))
        } else {
            Planned::Services(planned)
        }));
        guard::registry_floor(registry.as_ref(), &current[0]).await
    } else {
        let order_asked = swap::order_asked(common.order, target);
        let read = futures::future::join_all(hosts.iter().zip(&current).zip(&configs).map(|((h, cur), configs)| {
            let image = &image;
            async move {
                // Whether the image is there is asked at the same time (the pull's first question).
                let (floor, plan, ()) = tokio::join!(
                    guard::floor(&h.engine, cur),
                    async {
                        if already(cur) {
                            return Ok(None);
                        }
                        swap::plan_each(&h.engine, op, target, cur, &each_of(cur), order_asked, configs)
                            .await
                            .map(Some)
                    },
                    h.engine.prefetch_image(image)
                );
                (floor, plan)
            }
        }))
        .await;
        let mut highest: Option<guard::Floor> = None;
        for ((floor, plan), h) in read.into_iter().zip(&hosts) {
            if floor.as_ref().map(|f| &f.min) > highest.as_ref().map(|f| &f.min) {
                highest = floor;
            }
            let plan = if fleet {
                plan.map_err(|e| e.context(format!("plan the swap on {}", h.address)))
            } else {
                plan
            };
            plans.push(plan?.map(|mut p| {
                p.note = note.clone();
                Planned::Containers(Box::new(p))
            }));
        }
        highest
    };
    guard::enforce(
        floor,
        chosen.image.version.as_deref(),
        chosen.image.display(),
        common.force,
        common.reason.as_deref(),
        &app.printer,
    )?;
    let strategy = common
        .strategy
        .or(target.strategy)
        .unwrap_or_else(|| Strategy::default_for(op));
    let results = |plans: &[Option<Planned>]| -> Vec<HostResult> {
        hosts
            .iter()
            .zip(plans)
            .zip(&current)
            .map(|((h, p), cur)| HostResult {
                host: h.address.clone(),
                step: if p.is_some() {
                    HostStep::NotStarted
                } else {
                    HostStep::Unchanged
                },
                from: cur.first().map(|d| d.image.clone()),
                detail: None,
                logs: Vec::new(),
            })
            .collect()
    };
    if common.dry_run {
        return match (fleet, plans.first()) {
            (false, Some(Some(Planned::Containers(plan)))) => app.printer.report(&PlanReport {
                dry_run: true,
                commands: plan.manual_commands(),
                plan,
            }),
            (false, Some(Some(Planned::Service(plan)))) => app.printer.report(&SwarmPlanReport { dry_run: true, plan }),
            (false, Some(Some(Planned::Services(plans)))) => app.printer.report(&SwarmPlansReport {
                dry_run: true,
                plans: plans
                    .iter()
                    .map(|plan| SwarmPlanReport { dry_run: true, plan })
                    .collect(),
            }),
            _ => app.printer.report(&FleetReport {
                op,
                target: target.display(),
                strategy,
                to: chosen.image.clone(),
                dry_run: true,
                hosts: results(&plans),
                skipped,
            }),
        };
    }
    // The plan always says what differs from the config the version ran with, before it acts.
    for (h, p) in hosts.iter().zip(&plans) {
        let config = match p {
            Some(Planned::Containers(p)) => &p.config,
            Some(Planned::Service(p)) => &p.config,
            Some(Planned::Services(p)) => match p
                .iter()
                .find(|p| p.config.restore_config || !p.config.config_changes.is_empty())
            {
                Some(p) => &p.config,
                None => continue,
            },
            None => continue,
        };
        if config.restore_config || !config.config_changes.is_empty() {
            let lines = config_lines(config, &chosen.image.display());
            let lines = lines.trim_end().trim_start();
            app.printer.note(if fleet {
                format!("{}: {lines}", h.address)
            } else {
                lines.to_string()
            });
        }
    }
    let moving: Vec<&crate::ops::fleet::Host> = hosts
        .iter()
        .zip(&plans)
        .filter(|(_, p)| p.is_some())
        .map(|(h, _)| h)
        .collect();
    let change = Change {
        op,
        target: target.display(),
        from: current_ref.clone().unwrap_or_default(),
        to: chosen.image.clone(),
        forward,
        hosts: if fleet {
            moving.iter().map(|h| h.address.clone()).collect()
        } else {
            Vec::new()
        },
        on: if fleet { hosts.len() } else { 0 },
    };
    let mut base = crate::adapters::state::begin(op);
    if fleet {
        base.id = format!("fleet-{}", base.id);
    }
    base.reason = common.reason.clone();
    base.target = Some(target.display());
    base.from = current_ref.clone();
    base.to = Some(chosen.image.clone());
    base.services = images.iter().map(|s| (s.service.clone(), s.image.clone())).collect();
    if !skipped.is_empty() {
        base.detail = Some(format!("fleet run without unreachable host(s): {}", skipped.join(", ")));
    }
    let journals: Vec<&Journal> = if moving.is_empty() {
        Vec::new()
    } else {
        hosts.iter().map(|h| &h.journal).collect()
    };
    let hooks = confirm_and_pre(app, &journals, &base, &change, common, confirm_first).await?;
    let auth = registry.pull_auth().await?;
    let run = Run {
        printer: &app.printer,
        health: &project.health,
        auth: Some(&auth),
        hooks: &hooks,
        hooks_skipped: hooks_skipped(project, common),
        notify: &project.notify,
        scope: target.environment.clone().unwrap_or_else(|| target.display()),
        repository: registry.name(),
        forward,
        strategy,
        batch: target.batch,
        canary_soak: target.canary_soak,
        base,
        fleet,
    };
    let result_rows = results(&plans);
    // What one host's report names: the plan's containers, or the service.
    let names: Vec<String> = match plans.get(order[0]) {
        Some(Some(Planned::Containers(p))) => p.containers.iter().map(|c| c.name.clone()).collect(),
        Some(Some(Planned::Service(p))) => vec![p.service.clone()],
        Some(Some(Planned::Services(p))) => p.iter().map(|p| p.service.clone()).collect(),
        _ => current[order[0]].iter().map(|d| d.container.name.clone()).collect(),
    };
    let mut slots: Vec<Slot<'_>> = hosts
        .iter()
        .zip(plans)
        .zip(result_rows)
        .map(|((h, plan), result)| {
            let unit: Option<Box<dyn Unit + '_>> = match plan {
                None => None,
                Some(Planned::Containers(plan)) => Some(Box::new(swap::Containers::new(h, *plan))),
                Some(Planned::Service(plan)) => Some(Box::new(swarm_ops::Service::new(
                    &h.engine,
                    &h.journal,
                    target,
                    h.address.clone(),
                    *plan,
                ))),
                // A stack's services: one unit, one intent, all or none.
                Some(Planned::Services(plans)) => {
                    let names = member_targets.iter().map(|t| t.name.clone()).collect();
                    let units = plans
                        .into_iter()
                        .zip(&member_targets)
                        .map(|(plan, t)| {
                            Box::new(swarm_ops::Service::new(
                                &h.engine,
                                &h.journal,
                                t,
                                h.address.clone(),
                                plan,
                            )) as Box<dyn Unit + '_>
                        })
                        .collect();
                    Some(Box::new(release::Together::new(units, names)))
                }
            };
            Slot::new(unit, result)
        })
        .collect();
    let ended = operation::execute(&run, &mut slots).await;
    let pulled = slots.iter().any(|s| s.pulled);
    // One host: what failed before anything changed is the answer itself.
    let early_error = slots.first_mut().and_then(|s| s.error.take()).filter(|_| !fleet);
    let why = ended
        .post_failed
        .clone()
        .or_else(|| slots.iter().find_map(|s| s.why.clone()))
        .unwrap_or_default();
    let revert_error = slots.iter().find_map(|s| s.revert_error.clone()).unwrap_or_default();
    let rows: Vec<HostResult> = slots.into_iter().map(|s| s.result).collect();
    for r in &rows {
        print_logs(&app.printer, if fleet { Some(&r.host) } else { None }, &r.logs);
    }
    if let Some(e) = early_error {
        return Err(e);
    }
    if !fleet {
        let report = SwapReport {
            op,
            target: target.display(),
            from: current_ref.clone().unwrap_or_default(),
            to: chosen.image.clone(),
            containers: names,
            result: ended.outcome,
            forward,
            pulled,
            duration_ms: ended.duration_ms,
            detail: rows[0].detail.clone(),
            logs: rows[0].logs.clone(),
        };
        match (&ended.verdict, ended.not_recorded) {
            (Verdict::Done, Some(error)) => {
                return Err(Failure::NotRecorded {
                    what: format!(
                        "the validated {} {} on {}",
                        op.as_str(),
                        chosen.image.display(),
                        target.display()
                    ),
                    error,
                }
                .into());
            }
            (Verdict::Done, None) => {
                write_version_env(app, target, &current[0], &report);
                app.printer.report(&report)?;
            }
            (Verdict::RevertedEverywhere { .. }, _) => {
                return Err(Failure::Reverted {
                    version: chosen.image.display(),
                    why,
                }
                .into());
            }
            (Verdict::NeedsAPerson { .. }, _) => {
                return Err(Failure::RevertFailed {
                    version: chosen.image.display(),
                    why,
                    revert_error,
                }
                .into());
            }
        }
    } else {
        if let Some(key) = &target.version_env {
            app.printer.note(format!(
                "warning: {key} not written: each host's compose project (and its .env) is on that host; \
                 set it there, or pick one host with --hosts"
            ));
        }
        let report = FleetReport {
            op,
            target: target.display(),
            strategy,
            to: chosen.image.clone(),
            dry_run: false,
            hosts: rows,
            skipped,
        };
        app.printer.report(&report)?;
        fleet_verdict(&report, &ended, &chosen.image)?;
    }
    if ended.outcome == Outcome::Ok && !common.no_warm && !swarm && !target.is_release() {
        warm_after(app, registry.as_ref(), &catalog, &hosts, &chosen.image).await;
    }
    if common.mark_good {
        mark_after_validation(
            app,
            registry.as_ref(),
            &catalog,
            &hosts,
            (&chosen.image, release::others(&registries, &images)),
            &current,
            common,
        )
        .await?;
    }
    Ok(())
}

/// What one host will do: swap its containers, or update the Swarm service (a release's
/// services, together).
enum Planned {
    Containers(Box<Plan>),
    Service(Box<swarm_ops::SwarmPlan>),
    Services(Vec<swarm_ops::SwarmPlan>),
}

/// The dry run of a Swarm release: each service's update.
#[derive(serde::Serialize)]
struct SwarmPlansReport<'a> {
    dry_run: bool,
    plans: Vec<SwarmPlanReport<'a>>,
}

impl Report for SwarmPlansReport<'_> {
    fn human(&self) -> String {
        let each: Vec<String> = self
            .plans
            .iter()
            .map(|p| {
                p.human()
                    .trim_end_matches("dry run: nothing was changed")
                    .trim_end()
                    .to_string()
            })
            .collect();
        format!("{}\ndry run: nothing was changed", each.join("\n"))
    }
}

/// Flags that belong to another kind of target are refused, naming the kind and what does the
/// same there: none is accepted and then ignored.
/// Whether the swap restores the config the version last ran with: `--restore-config`, else for a
/// rollback `[target] restore_config` unless `--keep-config`.
fn restore_config(op: Operation, target: &crate::settings::TargetSettings, common: &SwapCommon) -> bool {
    common.restore_config || (op == Operation::Rollback && target.restore_config && !common.keep_config)
}

fn refuse_flags_of_other_kinds(target: &crate::settings::TargetSettings, common: &SwapCommon) -> anyhow::Result<()> {
    let swarm = target.kind == TargetKind::Swarm;
    let refuse = |what: String| Err(Failure::Usage(what).into());
    if !swarm && common.parallelism.is_some() {
        return refuse(format!(
            "use --parallelism on {}: it sets a Swarm service's update config; it applies only to \
             kind = \"swarm\" (containers are swapped one at a time, hosts by --strategy)",
            target.display()
        ));
    }
    if swarm && common.strategy.is_some() {
        return refuse(format!(
            "use --strategy on {}: it orders hosts, and Swarm places a service's tasks itself; \
             --parallelism and --order set how Swarm updates them",
            target.display()
        ));
    }
    if swarm && common.no_warm {
        return refuse(format!(
            "use --no-warm on {}: a Swarm service's nodes pull as Swarm places its tasks, so nothing is \
             warmed after a swap there",
            target.display()
        ));
    }
    if swarm && common.skip_unreachable {
        return Err(skip_unreachable_on_swarm(target));
    }
    Ok(())
}

/// `--skip-unreachable` on a Swarm service (deploy, rollback, emergency): refused, naming why.
pub(super) fn skip_unreachable_on_swarm(target: &crate::settings::TargetSettings) -> anyhow::Error {
    Failure::Usage(format!(
        "use --skip-unreachable on {}: a Swarm service is reached through its manager, and Swarm \
         itself skips nodes that are down",
        target.display()
    ))
    .into()
}

/// Settles what an earlier run left open on every host (with the locks held), or says that a
/// real run will (for a dry run).
async fn settle_all(
    app: &App<'_>,
    registry: &dyn crate::adapters::registry::Registry,
    hosts: &[crate::ops::fleet::Host],
    dry_run: bool,
) -> anyhow::Result<()> {
    let target = app.target()?;
    if dry_run {
        let mut open = 0;
        for h in hosts {
            open += history::open_operations(&h.journal.read()?).len();
        }
        if open > 0 {
            app.printer.note(format!(
                "note: {open} interrupted operation(s) will be settled first by a real run"
            ));
        }
        return Ok(());
    }
    interrupt::install();
    if target.kind == TargetKind::Swarm {
        for h in hosts {
            if !history::open_operations(&h.journal.read()?).is_empty() {
                let auth = registry.pull_auth().await?;
                swarm_ops::settle(&h.engine, &h.journal, &app.printer, target, Some(&auth)).await?;
            }
        }
        return Ok(());
    }
    let settled = futures::future::join_all(
        hosts
            .iter()
            .map(|h| recover::settle(&h.engine, &h.journal, &app.printer)),
    )
    .await;
    for (h, result) in hosts.iter().zip(settled) {
        if app.is_fleet() {
            result.map_err(|e| e.context(format!("settle the last run on {}", h.address)))?;
        } else {
            result?;
        }
    }
    Ok(())
}

/// Resolves the selector to an image; when the version's image is gone from the registry but its
/// Git tag exists, rebuilds it (asked, or `--rebuild`) on `engine`'s host and pushes it. `None`:
/// a dry run said what it would rebuild.
#[allow(clippy::too_many_arguments)]
async fn resolve_or_rebuild(
    app: &App<'_>,
    registry: &dyn crate::adapters::registry::Registry,
    catalog: &Catalog,
    input: &str,
    ops: &[history::OperationView],
    current: Option<&ImageRef>,
    engine: &crate::adapters::docker::Engine,
    common: &SwapCommon,
) -> anyhow::Result<Option<(resolve::Chosen, Option<String>)>> {
    let project = app.project()?;
    let e = match resolve::resolve(registry, catalog, input, ops, current, &project.lkg_tag()).await {
        Ok(c) => return Ok(Some((c, None))),
        Err(e) => e,
    };
    let Some(version) = missing_version(&e, input) else {
        return Err(e);
    };
    let (repo, git_tag, commit) = match rebuild::git_tag_for(&project.rebuild, &version) {
        Ok(found) => found,
        Err(git_err) => {
            use crate::adapters::git::GitError;
            let why = match &git_err {
                GitError::NotARepo { path } => format!(
                    "and no Git fallback is configured ([rebuild] repo = {} is not a Git repository)",
                    path.display()
                ),
                GitError::NoSuchTag { .. } => format!("and Git has no tag for it either ({git_err})"),
                other => format!("and the Git fallback cannot help: {other}"),
            };
            app.printer
                .note(format!("{version} is not in {} {why}", registry.name()));
            return Err(e);
        }
    };
    let what = format!(
        "{version} in {}: its image is not there, but Git tag {git_tag} ({}) is in {}",
        registry.name(),
        &commit[..12.min(commit.len())],
        repo.path.display()
    );
    if common.dry_run {
        app.printer.note(format!(
            "{what}\nplan: rebuild {git_tag} from Git in a scratch worktree, push it, then swap"
        ));
        app.printer.note("dry run: nothing was changed");
        return Ok(None);
    }
    if !common.rebuild {
        let ask = app.settings.interactive && !app.settings.yes;
        if !ask {
            return Err(Failure::NeedsRebuild { what }.into());
        }
        app.printer.note(&what);
        if !confirm(
            &app.printer,
            "Rebuild it from Git, push it and deploy it?",
            "confirm the rebuild",
        )? {
            return Err(Failure::Cancelled.into());
        }
    }
    let rebuilt = rebuild::rebuild(engine, registry, &app.printer, &project.rebuild, &version).await?;
    let info = registry.image_info(&rebuilt.digest).await?;
    let note = format!(
        "rebuilt from Git tag {} (commit {})",
        rebuilt.git_tag,
        &rebuilt.commit[..12.min(rebuilt.commit.len())]
    );
    let chosen = resolve::Chosen {
        image: ImageRef {
            tag: Some(rebuilt.image_tag),
            version: Some(version.to_string()),
            digest: Some(rebuilt.digest.clone()),
        },
        digest: rebuilt.digest,
        info,
    };
    Ok(Some((chosen, Some(note))))
}

/// What a swap is about to change, as the confirmation and the hooks tell it.
struct Change {
    op: Operation,
    target: String,
    from: ImageRef,
    to: ImageRef,
    forward: bool,
    /// The hosts that change (a fleet), for the `pre` hook.
    hosts: Vec<String>,
    /// How many hosts the run is on (a fleet), for the confirmation.
    on: usize,
}

/// Asks for confirmation where needed (a picked version, a rollback that goes forward), then
/// runs the `pre` hook: a failure is recorded in every journal and stops here, before anything
/// changed. Returns the hooks for the rest of the swap.
async fn confirm_and_pre(
    app: &App<'_>,
    journals: &[&Journal],
    base: &Record,
    change: &Change,
    common: &SwapCommon,
    confirm_first: bool,
) -> anyhow::Result<Hooks> {
    let project = app.project()?;
    let (op, forward) = (change.op, change.forward);
    if (confirm_first || forward) && !app.settings.yes {
        let q = if change.on == 0 {
            format!(
                "{} {} from {} to {}?",
                match op {
                    Operation::Rollback if forward => "Roll forward",
                    Operation::Rollback => "Roll back",
                    _ => "Deploy",
                },
                change.target,
                change.from.display(),
                change.to.display()
            )
        } else {
            format!(
                "{} {} on {} host(s) to {}?",
                match op {
                    Operation::Rollback if forward => "Roll forward",
                    Operation::Rollback => "Roll back",
                    _ => "Deploy",
                },
                change.target,
                change.on,
                change.to.display()
            )
        };
        let what = if forward {
            "confirm a rollback to a higher version"
        } else {
            "confirm the rollback"
        };
        if !confirm(&app.printer, &q, what)? {
            return Err(Failure::Cancelled.into());
        }
    }
    let hooks = Hooks::from_project(project, common.no_hooks);
    let env = HookEnv {
        op: op.as_str().to_string(),
        from_version: change.from.version.clone(),
        to_version: change.to.version.clone(),
        digest: change.to.digest.as_ref().map(ToString::to_string),
        target: change.target.clone(),
        hosts: change.hosts.clone(),
        result: None,
        reason: common.reason.clone(),
    };
    if journals.is_empty() {
        return Ok(hooks);
    }
    if let Err(e) = hooks::run(&app.printer, "pre", hooks.pre.as_deref(), &env, &hooks).await {
        for journal in journals {
            journal.append(base)?;
            journal.append(&Record {
                notes: vec![e.to_string()],
                ..base.finish(chrono::Utc::now(), Outcome::Failed, None, Some(e.to_string()))
            })?;
        }
        let on = if change.hosts.is_empty() { "" } else { " on any host" };
        return Err(anyhow::Error::new(e).context(format!("go on: nothing was changed{on}")));
    }
    Ok(hooks)
}

/// Whether `--no-hooks` skipped hooks the config has (recorded in the journal).
fn hooks_skipped(project: &crate::settings::Project, common: &SwapCommon) -> bool {
    common.no_hooks
        && project
            .hooks
            .pre
            .iter()
            .chain(&project.hooks.post)
            .chain(&project.hooks.on_revert)
            .next()
            .is_some()
}

/// The last lines of a failed container's output (named by host on a fleet).
fn print_logs(printer: &crate::output::Printer, host: Option<&str>, logs: &[String]) {
    if logs.is_empty() {
        return;
    }
    match host {
        Some(h) => printer.note(format!("[{h}] last lines of the failed container's output:")),
        None => printer.note(format!("last {} lines of the failed container's output:", logs.len())),
    }
    for l in logs {
        printer.note(format!("  | {l}"));
    }
}

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

/// The error (exit code) of a fleet run that did not end on the chosen version everywhere.
fn fleet_verdict(report: &FleetReport, ended: &Ended, chosen: &ImageRef) -> anyhow::Result<()> {
    let name = |i: &usize| report.hosts[*i].host.clone();
    let rows: Vec<(&str, Option<&str>)> = report
        .hosts
        .iter()
        .map(|h| (h.host.as_str(), h.detail.as_deref()))
        .collect();
    // Nothing failed on its own: the run was interrupted between waves.
    let why = |failed: &[usize]| match failed {
        [] => "interrupted".to_string(),
        _ => crate::domain::fleet::on_hosts(&rows, failed),
    };
    match &ended.verdict {
        Verdict::Done => Ok(()),
        Verdict::RevertedEverywhere { failed } => Err(Failure::Reverted {
            version: chosen.display(),
            why: format!(
                "{}; every host runs its previous version again",
                ended.post_failed.clone().unwrap_or_else(|| why(failed))
            ),
        }
        .into()),
        Verdict::NeedsAPerson { failed, hosts } => Err(Failure::RevertFailed {
            version: chosen.display(),
            why: ended.post_failed.clone().unwrap_or_else(|| why(failed)),
            revert_error: format!(
                "a person must act on {} (what runs there is neither the previous nor the chosen version, \
                 or the host could not be reached; the next run settles it from that host's journal)",
                hosts.iter().map(name).collect::<Vec<_>>().join(", ")
            ),
        }
        .into()),
    }
}

#[derive(Debug, Serialize)]
struct SwarmPlanReport<'a> {
    dry_run: bool,
    #[serde(flatten)]
    plan: &'a swarm_ops::SwarmPlan,
}

impl Report for SwarmPlanReport<'_> {
    fn human(&self) -> String {
        let p = self.plan;
        let replicas = p.replicas.map_or("global".into(), |r| format!("{r} replica(s)"));
        format!(
            "plan: {} {}\n  from   {}\n  to     {}{}\n  image  {}\n  update {replicas}, {}, {} at a time \
             (a failure puts back {})\n{}equivalent docker command:\n  {}\ndry run: nothing was changed",
            p.op.as_str(),
            p.target,
            p.from.display(),
            p.to.display(),
            p.to.digest
                .as_ref()
                .map(|d| format!(" ({})", d.short()))
                .unwrap_or_default(),
            p.image,
            p.order,
            p.parallelism,
            p.previous_image,
            config_lines(&p.config, &p.to.display()),
            p.command,
        ) + &p
            .warning
            .as_ref()
            .map(|w| format!("\nwarning: {w}"))
            .unwrap_or_default()
    }
}

/// After a validated swap, the new rollback candidates (the version just left, last_known_good)
/// are pulled onto every host that lacks them, bounded in time; the success is already
/// reported, and a failure here is only a warning.
async fn warm_after(
    app: &App<'_>,
    registry: &dyn crate::adapters::registry::Registry,
    catalog: &Catalog,
    hosts: &[crate::ops::fleet::Host],
    to: &ImageRef,
) {
    let Ok(project) = app.project() else { return };
    let fleet = app.is_fleet();
    let warmed = hosts.iter().map(|h| async move {
        let Ok(records) = h.journal.read() else {
            return (h, Vec::new());
        };
        let ops = history::operations(&records);
        let cands = crate::ops::warm::candidates(registry, catalog, &ops, Some(to), &project.lkg_tag(), &[]).await;
        (
            h,
            crate::ops::warm::warm(&h.engine, registry, &cands, std::time::Duration::from_secs(120)).await,
        )
    });
    for (h, done) in futures::future::join_all(warmed).await {
        let on = if fleet {
            format!("[{}] ", h.address)
        } else {
            String::new()
        };
        for r in &done {
            match (&r.error, r.pulled_ms) {
                (Some(e), _) => app.printer.note(format!(
                    "{on}warning: could not warm {} {}: {e}; a rollback to it will pull first",
                    r.candidate.label,
                    r.candidate.image.display()
                )),
                (None, Some(ms)) => app.printer.note(format!(
                    "{on}warmed {} {} in {:.1} s: a rollback to it needs no pull",
                    r.candidate.label,
                    r.candidate.image.display(),
                    ms as f64 / 1000.0
                )),
                (None, None) => {}
            }
        }
    }
}

/// Whether `to` is a higher version than `from` (both known).
fn is_higher(to: &ImageRef, from: Option<&ImageRef>) -> bool {
    use crate::domain::version::{parse_version, strip_build};
    let v = |r: &ImageRef| r.version.as_deref().and_then(parse_version).map(|v| strip_build(&v));
    matches!((v(to), from.and_then(v)), (Some(t), Some(f)) if t > f)
}

/// Compose with `version_env`: the deployed tag goes to the project's `.env`, so a later
/// `docker-compose up -d` keeps it. A failure here is a warning: the swap itself is done.
fn write_version_env(
    app: &App<'_>,
    target: &crate::settings::TargetSettings,
    current: &[deployed::Deployed],
    report: &SwapReport,
) {
    let Some(key) = &target.version_env else { return };
    let Some(tag) = &report.to.tag else {
        app.printer.note(format!(
            "warning: {key} not written to .env: {} has no tag (deployed by digest)",
            report.to.display()
        ));
        return;
    };
    let dir = current
        .iter()
        .find_map(|d| d.container.labels.get(crate::ops::compose_env::WORKING_DIR_LABEL));
    let Some(dir) = dir else {
        app.printer.note(format!(
            "warning: {key} not written: the containers do not say which folder their compose project is in"
        ));
        return;
    };
    match crate::ops::compose_env::write(std::path::Path::new(dir), key, tag) {
        Ok(path) => app.printer.note(format!("wrote {key}={tag} to {}", path.display())),
        Err(e) => app.printer.note(format!(
            "warning: {e}; a later `docker-compose up -d` may go back to the old version"
        )),
    }
}

/// `--mark-good [--soak D]`: once validated (and healthy for the soak on every host), point
/// last_known_good at it: once in the registry, recorded in every host's journal, and kept on
/// every host for `emergency`.
async fn mark_after_validation(
    app: &App<'_>,
    registry: &dyn crate::adapters::registry::Registry,
    catalog: &Catalog,
    hosts: &[crate::ops::fleet::Host],
    // What to mark, and for a release the other services' images whose pointers move with it.
    (to, others): (&ImageRef, release::Others),
    current: &[Vec<deployed::Deployed>],
    common: &SwapCommon,
) -> anyhow::Result<()> {
    let project = app.project()?;
    let target = app.target()?;
    let swarm = target.kind == TargetKind::Swarm;
    if let Some(soak) = &common.soak {
        let duration = crate::domain::duration::parse_wait(soak)?;
        let progress = crate::output::Progress::new(
            &app.printer,
            &format!(
                "soaking {} for {}",
                to.display(),
                crate::domain::duration::format(duration)
            ),
        );
        // A Swarm release soaks every service on its own image (the probe is the first one's).
        let services = target.services();
        let digests: Vec<String> = std::iter::once(to)
            .chain(others.iter().map(|(_, s)| &s.image))
            .map(|i| i.digest.as_ref().map(ToString::to_string).unwrap_or_default())
            .collect();
        let unprobed = project.health.without_probe();
        let (services, digests, unprobed) = (&services, &digests, &unprobed);
        let soaks = hosts.iter().zip(current).map(|(h, cur)| async move {
            let soaked = if swarm {
                let each = services
                    .iter()
                    .zip(digests)
                    .enumerate()
                    .map(|(i, (t, digest))| async move {
                        let health = if i == 0 { &project.health } else { unprobed };
                        swarm_ops::soak(&h.engine, t, digest, health, duration)
                            .await
                            .map_err(|mut invalid| {
                                if target.is_release() {
                                    invalid.why = format!("{}: {}", t.name, invalid.why);
                                }
                                invalid
                            })
                    });
                futures::future::join_all(each)
                    .await
                    .into_iter()
                    .find(Result::is_err)
                    .unwrap_or(Ok(()))
            } else {
                let names: Vec<String> = cur.iter().map(|d| d.container.name.clone()).collect();
                validate::soak(&h.engine, &names, &project.health, duration).await
            };
            (h, soaked)
        });
        let fleet = app.is_fleet();
        let failed: Vec<String> = futures::future::join_all(soaks)
            .await
            .into_iter()
            .filter_map(|(h, soaked)| {
                let invalid = soaked.err()?;
                Some(if fleet {
                    format!("on {}: {}", h.address, invalid.why)
                } else {
                    invalid.why
                })
            })
            .collect();
        if !failed.is_empty() {
            let why = failed.join("; ");
            progress.finish(&format!("{} did not stay healthy: {why}", to.display()));
            return Err(
                Failure::Unhealthy(format!("soak {}: {why}; last_known_good was not moved", to.display())).into(),
            );
        }
        progress.finish(&format!("{} stayed healthy", to.display()));
    }
    let first = crate::domain::fleet::lock_order(&hosts.iter().map(|h| h.address.clone()).collect::<Vec<_>>())[0];
    let ops = history::operations(&hosts[first].journal.read()?);
    let pointer = project.lkg_tag();
    let previous = resolve::last_known_good(registry, catalog, &ops, &pointer).await?;
    let journals: Vec<&Journal> = hosts.iter().map(|h| &h.journal).collect();
    let marked = mark_good(
        registry,
        &journals,
        // A swarm's images live on its nodes: nothing is kept on the manager's host.
        (!swarm).then_some(&hosts[first].engine),
        &app.printer,
        MarkRequest {
            image: to,
            pointer: &pointer,
            previous,
            reason: common.reason.as_deref(),
            first: target.members.first().map(|m| m.name.clone()),
            others,
        },
    )
    .await?;
    // The image is kept on the other hosts too, so `emergency` finds it on each.
    if !swarm {
        let kept = hosts.iter().enumerate().filter(|(i, _)| *i != first).map(|(_, h)| {
            let pointer = &pointer;
            async move { (h, keep_on_host(registry, &h.engine, pointer, to).await) }
        });
        for (h, result) in futures::future::join_all(kept).await {
            if let Err(e) = result {
                app.printer.note(format!("[{}] warning: could not {e:#}", h.address));
            }
        }
    }
    app.printer.note(marked.human());
    Ok(())
}
