//! `backtrack deploy SELECTOR` and `backtrack rollback [SELECTOR]`: the same swap, forward or
//! back. Rollback defaults to `previous`; on a terminal with no selector it offers a picker and
//! asks for confirmation, like the seed's rollback session.

use anyhow::Context as _;
use serde::Serialize;

use super::App;
use crate::adapters::docker::swarm::UpdateOverrides;
use crate::adapters::state::Journal;
use crate::cli::{RollbackArgs, SwapArgs, SwapCommon};
use crate::domain::history::Record;
use crate::domain::history::{self, Operation, Outcome};
use crate::domain::image::ImageRef;
use crate::error::Failure;
use crate::ops::guard;
use crate::ops::hooks::{self, HookEnv, Hooks};
use crate::ops::mark::{MarkRequest, mark_good};
use crate::ops::rebuild;
use crate::ops::swap::{self, Plan, SwapOptions, SwapReport};
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
            "plan: {} {}\n  from   {}{}\n  to     {}{}\n  image  {}\n  containers: {}\nequivalent docker commands:\n",
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
        );
        for c in &self.commands {
            out.push_str(&format!("  {c}\n"));
        }
        out.push_str("dry run: nothing was changed");
        out
    }
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

async fn swap_command(
    app: &App<'_>,
    op: Operation,
    input: &str,
    common: &SwapCommon,
    confirm_first: bool,
) -> anyhow::Result<()> {
    if app.is_fleet() {
        return super::fleet::swap_command(app, op, input, common, confirm_first).await;
    }
    let project = app.project()?;
    let target = app.target()?;
    let swarm = target.kind == TargetKind::Swarm;
    if !swarm && (common.parallelism.is_some() || common.order.is_some()) {
        return Err(Failure::Usage(format!(
            "use --parallelism or --order on {}: they set a Swarm service's update config; \
             they apply only to kind = \"swarm\"",
            target.display()
        ))
        .into());
    }
    let registry: std::sync::Arc<dyn crate::adapters::registry::Registry> = app.registry()?.into();
    // The registry's tags do not depend on the target: they are listed while the lock is taken
    // (for a remote target, while the connection logs in).
    let tags = tokio::spawn({
        let registry = registry.clone();
        async move { Catalog::load(registry.as_ref()).await }
    });
    let journal = app.journal()?;
    let _lock = app.lock_unless(common.dry_run, &format!("backtrack {} {input}", op.as_str()))?;
    let engine = app.engine().await?;
    if common.dry_run {
        let open = history::open_operations(&journal.read()?).len();
        if open > 0 {
            app.printer.note(format!(
                "note: {open} interrupted operation(s) will be settled first by a real run"
            ));
        }
    } else if swarm {
        interrupt::install();
        if !history::open_operations(&journal.read()?).is_empty() {
            let auth = registry.pull_auth().await?;
            swarm_ops::settle(&engine, &journal, &app.printer, target, Some(&auth)).await?;
        }
    } else {
        interrupt::install();
        recover::settle(&engine, &journal, &app.printer).await?;
    }
    let ops = history::operations(&journal.read()?);
    // A Swarm service is read once: its spec for the plan, its tasks for what runs.
    let (current, service) = if swarm {
        let svc = swarm_ops::service(&engine, target).await?;
        (swarm_ops::entries(&svc, &engine.service_tasks(&svc).await?), Some(svc))
    } else {
        (deployed::read(&engine, target, &registry.name()).await?, None)
    };
    let current_ref = current.first().map(|d| d.image.clone());
    let catalog = tags.await.context("list the registry's tags")??;
    let (chosen, note) = match resolve::resolve(
        registry.as_ref(),
        &catalog,
        input,
        &ops,
        current_ref.as_ref(),
        &project.lkg_tag(),
    )
    .await
    {
        Ok(c) => (c, None),
        Err(e) => {
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
                return Ok(());
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
            let rebuilt =
                rebuild::rebuild(&engine, registry.as_ref(), &app.printer, &project.rebuild, &version).await?;
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
            (chosen, Some(note))
        }
    };

    // Already there, unless it runs there in emergency mode: then the swap leaves that mode.
    let in_emergency = |d: &deployed::Deployed| {
        d.container
            .labels
            .contains_key(crate::adapters::docker::LABEL_EMERGENCY)
    };
    if current
        .iter()
        .all(|d| d.digest.as_ref() == Some(&chosen.digest) && !in_emergency(d))
    {
        return app.printer.report(&SwapReport {
            op,
            target: target.display(),
            from: current_ref.clone().unwrap_or_default(),
            to: chosen.image.clone(),
            containers: current.iter().map(|d| d.container.name.clone()).collect(),
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
    // The migration guard: the running image may forbid versions below a floor.
    let enforce = |floor| {
        guard::enforce(
            floor,
            chosen.image.version.as_deref(),
            chosen.image.display(),
            common.force,
            common.reason.as_deref(),
            &app.printer,
        )
    };
    let image = registry.pull_reference(&chosen.digest);
    if let Some(svc) = service {
        enforce(guard::registry_floor(registry.as_ref(), &current).await)?;
        let repository = image.rsplit_once('@').map_or(image.as_str(), |(r, _)| r);
        let overrides = UpdateOverrides {
            parallelism: common.parallelism,
            order: common.order.clone(),
            force: false,
        };
        let mut plan = swarm_ops::plan(
            op,
            target,
            &svc,
            current_ref.clone().unwrap_or_default(),
            &chosen.image,
            repository,
            &overrides,
        );
        plan.note = note;
        if common.dry_run {
            return app.printer.report(&SwarmPlanReport {
                dry_run: true,
                plan: &plan,
            });
        }
        return swarm_swap(
            app,
            registry.as_ref(),
            &catalog,
            &engine,
            &journal,
            &plan,
            common,
            confirm_first,
            forward,
        )
        .await;
    }
    // A container's plan is read while the floor is (both only inspect).
    let (floor, plan) = tokio::join!(
        guard::floor(&engine, &current),
        swap::plan(&engine, op, target, &current, &chosen.image, &image)
    );
    enforce(floor)?;
    let mut plan = plan?;
    plan.note = note;
    if common.dry_run {
        return app.printer.report(&PlanReport {
            dry_run: true,
            commands: plan.manual_commands(),
            plan: &plan,
        });
    }
    let change = Change {
        op,
        target: plan.target.clone(),
        from: plan.from.clone(),
        to: plan.to.clone(),
        forward,
    };
    let hooks = confirm_and_pre(app, &journal, &change, common, confirm_first).await?;
    let auth = registry.pull_auth().await?;
    let opts = swap_options(app, registry.as_ref(), &hooks, &auth, common, forward)?;
    let mut report = swap::execute(&engine, &journal, &app.printer, &plan, &opts).await?;
    report.forward = forward;
    write_version_env(app, target, &current, &report);
    app.printer.report(&report)?;
    if !common.no_warm {
        warm_after(app, registry.as_ref(), &catalog, &engine, &journal, &report).await;
    }
    if common.mark_good {
        mark_after_validation(app, registry.as_ref(), &catalog, &engine, &journal, &report, common).await?;
    }
    Ok(())
}

/// What a swap is about to change, as the confirmation and the hooks tell it.
struct Change {
    op: Operation,
    target: String,
    from: ImageRef,
    to: ImageRef,
    forward: bool,
}

/// Asks for confirmation where needed (a picked version, a rollback that goes forward), then
/// runs the `pre` hook: a failure is recorded and stops here, before anything changed. Returns
/// the hooks for the rest of the swap.
async fn confirm_and_pre(
    app: &App<'_>,
    journal: &Journal,
    change: &Change,
    common: &SwapCommon,
    confirm_first: bool,
) -> anyhow::Result<Hooks> {
    let project = app.project()?;
    let (op, forward) = (change.op, change.forward);
    if (confirm_first || forward) && !app.settings.yes {
        let q = format!(
            "{} {} from {} to {}?",
            match op {
                Operation::Rollback if forward => "Roll forward",
                Operation::Rollback => "Roll back",
                _ => "Deploy",
            },
            change.target,
            change.from.display(),
            change.to.display()
        );
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
        hosts: Vec::new(),
        result: None,
        reason: common.reason.clone(),
    };
    if let Err(e) = hooks::run(&app.printer, "pre", hooks.pre.as_deref(), &env, &hooks).await {
        let base = Record {
            target: Some(change.target.clone()),
            from: Some(change.from.clone()),
            to: Some(change.to.clone()),
            reason: common.reason.clone(),
            ..crate::adapters::state::begin(op)
        };
        journal.append(&base)?;
        journal.append(&Record {
            notes: vec![e.to_string()],
            ..base.finish(chrono::Utc::now(), Outcome::Failed, None, Some(e.to_string()))
        })?;
        return Err(anyhow::Error::new(e).context("go on: nothing was changed"));
    }
    Ok(hooks)
}

/// How the swap runs beyond its plan, from the config and the flags.
fn swap_options<'a>(
    app: &'a App<'_>,
    registry: &dyn crate::adapters::registry::Registry,
    hooks: &'a Hooks,
    auth: &'a crate::adapters::registry::PullAuth,
    common: &'a SwapCommon,
    forward: bool,
) -> anyhow::Result<SwapOptions<'a>> {
    let project = app.project()?;
    let target = app.target()?;
    let hooks_skipped = common.no_hooks
        && project
            .hooks
            .pre
            .iter()
            .chain(&project.hooks.post)
            .chain(&project.hooks.on_revert)
            .next()
            .is_some();
    Ok(SwapOptions {
        auth: Some(auth),
        health: &project.health,
        reason: common.reason.as_deref(),
        hooks,
        hooks_skipped,
        notify: &project.notify,
        scope: target.environment.clone().unwrap_or_else(|| target.display()),
        repository: registry.name(),
        forward,
    })
}

/// The swap of a Swarm service, once planned: confirmation and `pre` hook as for containers,
/// then the service update, validated (reverted on failure), and `--mark-good`.
#[allow(clippy::too_many_arguments)]
async fn swarm_swap(
    app: &App<'_>,
    registry: &dyn crate::adapters::registry::Registry,
    catalog: &Catalog,
    engine: &crate::adapters::docker::Engine,
    journal: &Journal,
    plan: &swarm_ops::SwarmPlan,
    common: &SwapCommon,
    confirm_first: bool,
    forward: bool,
) -> anyhow::Result<()> {
    let change = Change {
        op: plan.op,
        target: plan.target.clone(),
        from: plan.from.clone(),
        to: plan.to.clone(),
        forward,
    };
    let hooks = confirm_and_pre(app, journal, &change, common, confirm_first).await?;
    let auth = registry.pull_auth().await?;
    let opts = swap_options(app, registry, &hooks, &auth, common, forward)?;
    let mut report = swarm_ops::execute(engine, journal, &app.printer, plan, &opts).await?;
    report.forward = forward;
    app.printer.report(&report)?;
    if common.mark_good {
        mark_after_validation(app, registry, catalog, engine, journal, &report, common).await?;
    }
    Ok(())
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
             (a failure puts back {})\nequivalent docker command:\n  {}\ndry run: nothing was changed",
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
            p.command,
        ) + &p
            .warning
            .as_ref()
            .map(|w| format!("\nwarning: {w}"))
            .unwrap_or_default()
    }
}

/// After a validated swap, the new rollback candidates (the version just left, last_known_good)
/// are pulled if the host lacks them, bounded in time; the success is already reported, and a
/// failure here is only a warning.
async fn warm_after(
    app: &App<'_>,
    registry: &dyn crate::adapters::registry::Registry,
    catalog: &Catalog,
    engine: &crate::adapters::docker::Engine,
    journal: &crate::adapters::state::Journal,
    report: &SwapReport,
) {
    let Ok(project) = app.project() else { return };
    let Ok(records) = journal.read() else { return };
    let ops = history::operations(&records);
    let cands = crate::ops::warm::candidates(registry, catalog, &ops, Some(&report.to), &project.lkg_tag(), &[]).await;
    let done = crate::ops::warm::warm(engine, registry, &cands, std::time::Duration::from_secs(120)).await;
    for r in &done {
        match (&r.error, r.pulled_ms) {
            (Some(e), _) => app.printer.note(format!(
                "warning: could not warm {} {}: {e}; a rollback to it will pull first",
                r.candidate.label,
                r.candidate.image.display()
            )),
            (None, Some(ms)) => app.printer.note(format!(
                "warmed {} {} in {:.1} s: a rollback to it needs no pull",
                r.candidate.label,
                r.candidate.image.display(),
                ms as f64 / 1000.0
            )),
            (None, None) => {}
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

/// `--mark-good [--soak D]`: once validated (and healthy for the soak), point last_known_good at it.
async fn mark_after_validation(
    app: &App<'_>,
    registry: &dyn crate::adapters::registry::Registry,
    catalog: &Catalog,
    engine: &crate::adapters::docker::Engine,
    journal: &Journal,
    report: &SwapReport,
    common: &SwapCommon,
) -> anyhow::Result<()> {
    let project = app.project()?;
    if let Some(soak) = &common.soak {
        let duration = crate::domain::duration::parse_wait(soak)?;
        let progress = crate::output::Progress::new(
            &app.printer,
            &format!(
                "soaking {} for {}",
                report.to.display(),
                crate::domain::duration::format(duration)
            ),
        );
        let soaked = match app.target()? {
            t if t.kind == TargetKind::Swarm => {
                let digest = report.to.digest.as_ref().map(ToString::to_string).unwrap_or_default();
                swarm_ops::soak(engine, t, &digest, &project.health, duration).await
            }
            _ => validate::soak(engine, &report.containers, &project.health, duration).await,
        };
        if let Err(invalid) = soaked {
            progress.finish(&format!(
                "{} did not stay healthy: {}",
                report.to.display(),
                invalid.why
            ));
            return Err(Failure::Unhealthy(format!(
                "soak {}: {}; last_known_good was not moved",
                report.to.display(),
                invalid.why
            ))
            .into());
        }
        progress.finish(&format!("{} stayed healthy", report.to.display()));
    }
    let ops = history::operations(&journal.read()?);
    let pointer = project.lkg_tag();
    let previous = resolve::last_known_good(registry, catalog, &ops, &pointer).await?;
    let marked = mark_good(
        registry,
        &[journal],
        // A swarm's images live on its nodes: nothing is kept on the manager's host.
        (app.target()?.kind != TargetKind::Swarm).then_some(engine),
        &app.printer,
        MarkRequest {
            image: &report.to,
            pointer: &pointer,
            previous,
            reason: common.reason.as_deref(),
        },
    )
    .await?;
    app.printer.note(marked.human());
    Ok(())
}
