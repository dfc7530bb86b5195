//! The swap: move the target's containers onto another image, validate, and put the previous
//! containers back if validation fails.
//!
//! Per container: create the clone on the new image under a temporary name
//! (`NAME-backtrack-next`) while the old one stops, rename the old one aside
//! (`NAME-backtrack-prev`, restart policy off so a daemon restart cannot start it) and the new one
//! to the old name, start it, validate. The old container is removed only after every container validated, so a revert
//! is a rename and a start, never a pull. The journal gets the intent before the first change,
//! a `committed` record once validation passed, and the result at the end.

use std::collections::BTreeMap;
use std::time::Instant;

use bollard::models::{ContainerCreateBody, ContainerInspectResponse, EndpointSettings};
use chrono::Utc;
use serde::Serialize;

use crate::adapters::docker::clone::{clone_config, docker_run_command};
use crate::adapters::docker::{
    BACKUP_SUFFIX, Engine, EngineError, LABEL_EMERGENCY, LABEL_TAG, LABEL_VERSION, NEXT_SUFFIX, PRE_EMERGENCY_SUFFIX,
    parse_restart_policy, restart_policy_of,
};
use crate::adapters::registry::PullAuth;
use crate::adapters::state::{self, Journal};
use crate::domain::history::{Operation, Outcome, Phase, Record};
use crate::domain::image::ImageRef;
use crate::error::Failure;
use crate::ops::deployed::Deployed;
use crate::ops::hooks::{self, HookEnv, Hooks};
use crate::ops::{interrupt, notify, validate};
use crate::output::{Printer, Progress};
use crate::settings::{HealthSettings, NotifySection, TargetSettings};

/// One container's part of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerPlan {
    pub name: String,
    /// The current container's id: it keeps it when it is renamed.
    #[serde(skip)]
    id: String,
    pub from: ImageRef,
    /// The equivalent `docker run` for the new container.
    pub docker_run: String,
    #[serde(skip)]
    body: ContainerCreateBody,
    #[serde(skip)]
    extra_networks: Vec<(String, EndpointSettings)>,
    #[serde(skip)]
    stop_timeout: i32,
    #[serde(skip)]
    pub(crate) restart_policy: String,
}

/// Everything the swap will do, computed without changing anything.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub op: Operation,
    pub target: String,
    pub from: ImageRef,
    pub to: ImageRef,
    pub image: String,
    pub containers: Vec<ContainerPlan>,
    /// How the image came to be, for the journal (e.g. rebuilt from Git).
    pub note: Option<String>,
}

impl Plan {
    /// The docker commands a person could run by hand for the same change.
    pub fn manual_commands(&self) -> Vec<String> {
        let mut cmds = vec![format!("docker pull {}", self.image)];
        for c in &self.containers {
            cmds.push(format!(
                "docker stop {0} && docker rename {0} {0}{BACKUP_SUFFIX}",
                c.name
            ));
            cmds.push(c.docker_run.clone());
        }
        cmds.push("# validate, then:".into());
        for c in &self.containers {
            cmds.push(format!("docker rm {}{BACKUP_SUFFIX}", c.name));
        }
        cmds
    }
}

/// Computes the plan: inspects the current containers and derives each clone.
pub async fn plan(
    engine: &Engine,
    op: Operation,
    target: &TargetSettings,
    current: &[Deployed],
    to: &ImageRef,
    image: &str,
) -> anyhow::Result<Plan> {
    let mut containers = Vec::with_capacity(current.len());
    for d in current {
        let name = &d.container.name;
        let backup = format!("{name}{BACKUP_SUFFIX}");
        let (old, left) = tokio::join!(engine.inspect(name), engine.inspect(&backup));
        let old = old?.ok_or_else(|| EngineError::TargetNotFound {
            what: format!("container {name}"),
        })?;
        if left?.is_some() {
            return Err(EngineError::Container {
                action: "swap",
                container: name.clone(),
                message: format!(
                    "{backup} is left from an earlier run; look at it (`docker inspect {backup}`) and remove it \
                     (`docker rm {backup}`) before swapping again"
                ),
            }
            .into());
        }
        if old.host_config.as_ref().and_then(|h| h.auto_remove) == Some(true) {
            return Err(EngineError::Container {
                action: "swap",
                container: name.clone(),
                message: "it runs with --rm, so stopping it would delete it and leave nothing to revert to; \
                          recreate it without --rm"
                    .into(),
            }
            .into());
        }
        let (body, extra_networks) = clone_onto(engine, &old, &d.container.image_id, to, image).await?;
        let stop_timeout = old.config.as_ref().and_then(|c| c.stop_timeout).unwrap_or(10) as i32;
        let restart_policy = restart_policy_of(&old);
        containers.push(ContainerPlan {
            name: name.clone(),
            id: old.id.clone().unwrap_or_else(|| name.clone()),
            from: d.image.clone(),
            docker_run: docker_run_command(name, &body),
            body,
            extra_networks,
            stop_timeout,
            restart_policy,
        });
    }
    Ok(Plan {
        op,
        target: target.display(),
        from: current.first().map(|d| d.image.clone()).unwrap_or_default(),
        to: to.clone(),
        image: image.to_string(),
        containers,
        note: None,
    })
}

/// The create body (and the networks to connect after creation) of a container like `old` (whose
/// image is `image_id`) on `image`, labelled with `to`'s version and tag: what a swap creates, and
/// what `drill` starts as its scratch copy.
pub async fn clone_onto(
    engine: &Engine,
    old: &ContainerInspectResponse,
    image_id: &str,
    to: &ImageRef,
    image: &str,
) -> Result<(ContainerCreateBody, Vec<(String, EndpointSettings)>), EngineError> {
    let old_image = engine.image(image_id).await?.and_then(|i| i.config).unwrap_or_default();
    let mut labels = Vec::new();
    if let Some(v) = &to.version {
        labels.push((LABEL_VERSION, v.clone()));
    }
    if let Some(tag) = &to.tag {
        labels.push((LABEL_TAG, tag.clone()));
    }
    let (mut body, extra_networks) = clone_config(old, &old_image, image, &labels);
    if let Some(l) = body.labels.as_mut() {
        // A swap leaves emergency mode; a digest-only deploy names no tag.
        l.remove(LABEL_EMERGENCY);
        if to.tag.is_none() {
            l.remove(LABEL_TAG);
        }
        if to.version.is_none() {
            l.remove(LABEL_VERSION);
        }
    }
    Ok((body, extra_networks))
}

/// What happened, for the report and the journal.
#[derive(Debug, Clone, Serialize)]
pub struct SwapReport {
    pub op: Operation,
    pub target: String,
    pub from: ImageRef,
    pub to: ImageRef,
    pub containers: Vec<String>,
    pub result: Outcome,
    /// A rollback to a higher version than what ran (confirmed by the user or `--yes`).
    pub forward: bool,
    pub pulled: bool,
    pub duration_ms: u64,
    pub detail: Option<String>,
    /// The last lines of output of a container that failed validation.
    pub logs: Vec<String>,
}

/// How a swap runs beyond its plan: credentials, checks, hooks and who hears about it.
#[derive(Debug)]
pub struct SwapOptions<'a> {
    pub auth: Option<&'a PullAuth>,
    pub health: &'a HealthSettings,
    pub reason: Option<&'a str>,
    /// `post` runs once every container validated (a failure reverts), `on_revert` after a revert.
    pub hooks: &'a Hooks,
    /// Whether `--no-hooks` skipped configured hooks (recorded in the journal).
    pub hooks_skipped: bool,
    pub notify: &'a NotifySection,
    /// How notifications name the target: its environment, else the target.
    pub scope: String,
    /// `host/repository`, for notifications.
    pub repository: String,
    pub forward: bool,
}

/// Runs the plan. `Ok` with `Outcome::Ok` when every container validated; on failure the previous
/// containers run again and the error says whether restoring worked.
pub async fn execute(
    engine: &Engine,
    journal: &Journal,
    printer: &Printer,
    plan: &Plan,
    opts: &SwapOptions<'_>,
) -> anyhow::Result<SwapReport> {
    let (auth, health, reason) = (opts.auth, opts.health, opts.reason);
    let started = Instant::now();
    let progress = Progress::new(printer, &format!("pulling {}", plan.image));
    let pulled = engine
        .pull(&plan.image, auth, |line| progress.set(&format!("pulling: {line}")))
        .await?;
    progress.finish(&if pulled {
        format!("pulled {}", plan.image)
    } else {
        format!("{} is already present", plan.image)
    });
    if interrupt::requested() {
        return Err(Failure::Interrupted.into());
    }

    let names: Vec<String> = plan.containers.iter().map(|c| c.name.clone()).collect();
    interrupt::arm();
    let base = Record {
        target: Some(plan.target.clone()),
        from: Some(plan.from.clone()),
        to: Some(plan.to.clone()),
        reason: reason.map(str::to_string),
        detail: plan.note.clone(),
        ..state::begin(plan.op)
    };
    let mut notes = Vec::new();
    if opts.hooks_skipped {
        notes.push("hooks skipped (--no-hooks)".to_string());
    }
    journal.append(&Record {
        containers: names.clone(),
        notes: notes.clone(),
        saved: plan
            .containers
            .iter()
            .map(|c| (c.name.clone(), c.restart_policy.clone()))
            .collect::<BTreeMap<_, _>>(),
        ..base.clone()
    })?;

    let mut swapped: Vec<&ContainerPlan> = Vec::new();
    // Why, the failed container's last lines, and whether only an unreachable probe failed.
    let mut failure: Option<(String, Vec<String>, bool)> = None;
    for c in &plan.containers {
        printer.note(format!(
            "swapping {}: {} -> {}",
            c.name,
            c.from.display(),
            plan.to.display()
        ));
        swapped.push(c);
        // The probe's route (a forward over SSH) is made while the container is swapped.
        let (swap, ()) = tokio::join!(swap_one(engine, c), engine.prepare_probe(health.http.as_deref()));
        if let Err(e) = swap {
            failure = Some((format!("swap {}: {e}", c.name), Vec::new(), false));
            break;
        }
        let progress = Progress::new(
            printer,
            &format!(
                "validating {} (timeout {})",
                c.name,
                crate::domain::duration::format(health.timeout)
            ),
        );
        let result = validate::wait_valid(
            engine,
            std::slice::from_ref(&c.name),
            health,
            plan.to.version.as_deref(),
            |s| progress.set(&format!("validating {}: {s}", c.name)),
        )
        .await;
        match result {
            Ok(()) => progress.finish(&format!("{} is healthy on {}", c.name, plan.to.display())),
            Err(invalid) => {
                progress.finish(&format!("{} failed validation: {}", c.name, invalid.why));
                let logs = engine.logs_tail(&c.name, 20).await;
                failure = Some((invalid.why, logs, invalid.probe_unreachable));
                break;
            }
        }
    }

    // Every container validated: the `post` hook has the last word before the commit.
    if failure.is_none() {
        let env = hook_env(plan, opts, None);
        match hooks::run(printer, "post", opts.hooks.post.as_deref(), &env, opts.hooks).await {
            Ok(done) => notes.extend(done),
            Err(e) => {
                notes.push(e.to_string());
                failure = Some((format!("{e}"), Vec::new(), false));
            }
        }
    }

    if let Some((why, logs, probe_unreachable)) = failure {
        printer.note(format!("putting the previous version back on {}", names.join(", ")));
        let mut revert_errors = Vec::new();
        for c in swapped.iter().rev() {
            if let Err(e) = revert_one(engine, &c.name, Some(&c.restart_policy)).await {
                revert_errors.push(format!("{}: {e}", c.name));
            }
        }
        let ending = Ending {
            version: plan.to.display(),
            why,
            probe_unreachable,
            revert_error: (!revert_errors.is_empty()).then(|| revert_errors.join("; ")),
            logs,
            notes,
        };
        let env = |outcome| hook_env(plan, opts, Some(outcome));
        return Err(conclude_reverted(journal, printer, &base, opts, env, ending, started.elapsed()).await);
    }

    // Every container validated: the point of no return.
    let commit = Record {
        at: Utc::now(),
        phase: Phase::Committed,
        ..base.clone()
    };
    let committed = if let [only] = plan.containers.as_slice() {
        // One container: its set-aside one goes while the record is written. A run that ends in
        // between leaves the record, or the target on the new digest with nothing set aside,
        // which the next run records as done (`recover`); with several containers, one without
        // its set-aside container and another with it could only be half put back. The removal's
        // request is on its way before the append (which blocks) starts.
        let ((), committed) =
            tokio::join!(biased; remove_leftovers(engine, printer, only), async { journal.append(&commit) });
        committed
    } else {
        let committed = journal.append(&commit);
        for c in &plan.containers {
            remove_leftovers(engine, printer, c).await;
        }
        committed
    };
    // With the set-aside containers gone, a lost record leaves the validated version in place:
    // the next run finds the target on the new digest with nothing to put back and records it.
    let what = format!(
        "the validated {} {} on {}",
        plan.op.as_str(),
        plan.to.display(),
        plan.target
    );
    let record = conclude_validated(journal, printer, &base, opts, committed, notes, started.elapsed(), what).await?;
    Ok(SwapReport {
        op: plan.op,
        target: plan.target.clone(),
        from: plan.from.clone(),
        to: plan.to.clone(),
        containers: names,
        result: Outcome::Ok,
        forward: false,
        pulled,
        duration_ms: record.duration_ms.unwrap_or_default(),
        detail: None,
        logs: Vec::new(),
    })
}

/// Finishes a swap that validated (its `committed` record was written, or tried, as
/// `committed`): the `finished` record, the notification, or `NotRecorded` (exit 1) when either
/// record could not be written. Shared by containers and Swarm services.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn conclude_validated(
    journal: &Journal,
    printer: &Printer,
    base: &Record,
    opts: &SwapOptions<'_>,
    committed: Result<(), state::StateError>,
    notes: Vec<String>,
    elapsed: std::time::Duration,
    what: String,
) -> anyhow::Result<Record> {
    let record = Record {
        notes,
        ..base.finish(Utc::now(), Outcome::Ok, Some(elapsed.as_millis() as u64), None)
    };
    let finished = journal.append(&record);
    if let Err(e) = committed.and(finished) {
        return Err(Failure::NotRecorded {
            what,
            error: e.to_string(),
        }
        .into());
    }
    announce(journal, printer, base, opts, Outcome::Ok, None, record.duration_ms).await;
    Ok(record)
}

/// How a swap that failed validation ended, once the revert was tried.
pub(crate) struct Ending {
    pub version: String,
    pub why: String,
    /// Only the probe failed, and it never reached anything: the version is not marked failed.
    pub probe_unreachable: bool,
    /// Why putting the previous version back failed, if it did.
    pub revert_error: Option<String>,
    /// The failed container's (or task's) last lines.
    pub logs: Vec<String>,
    /// Notes so far (hooks, `--no-hooks`).
    pub notes: Vec<String>,
}

/// Finishes a swap that failed validation, after the revert: the `on_revert` hook (told the
/// outcome through `env`), the journal's record, the last lines, the notification, and the error
/// (exit 6, or 7 when the revert failed too). Shared by containers and Swarm services.
pub(crate) async fn conclude_reverted(
    journal: &Journal,
    printer: &Printer,
    base: &Record,
    opts: &SwapOptions<'_>,
    env: impl Fn(Outcome) -> HookEnv,
    ending: Ending,
    elapsed: std::time::Duration,
) -> anyhow::Error {
    let Ending {
        version,
        why,
        probe_unreachable,
        revert_error,
        logs,
        mut notes,
    } = ending;
    let outcome = match (&revert_error, probe_unreachable) {
        (Some(_), _) => Outcome::RevertFailed,
        (None, true) => Outcome::RevertedProbeUnreachable,
        (None, false) => Outcome::Reverted,
    };
    match hooks::run(
        printer,
        "on_revert",
        opts.hooks.on_revert.as_deref(),
        &env(outcome),
        opts.hooks,
    )
    .await
    {
        Ok(done) => notes.extend(done),
        Err(e) => {
            printer.note(format!("warning: {e}"));
            notes.push(e.to_string());
        }
    }
    let detail = match &revert_error {
        None => why.clone(),
        Some(e) => format!("{why}; revert: {e}"),
    };
    let record = Record {
        notes,
        logs: logs.clone(),
        ..base.finish(Utc::now(), outcome, Some(elapsed.as_millis() as u64), Some(detail))
    };
    if let Err(e) = journal.append(&record) {
        return e.into();
    }
    print_logs(printer, &logs);
    announce(
        journal,
        printer,
        base,
        opts,
        outcome,
        Some(why.clone()),
        record.duration_ms,
    )
    .await;
    match revert_error {
        None => Failure::Reverted { version, why }.into(),
        Some(revert_error) => Failure::RevertFailed {
            version,
            why,
            revert_error,
        }
        .into(),
    }
}

/// What hooks are told about this swap.
fn hook_env(plan: &Plan, opts: &SwapOptions<'_>, result: Option<Outcome>) -> HookEnv {
    HookEnv {
        op: plan.op.as_str().to_string(),
        from_version: plan.from.version.clone(),
        to_version: plan.to.version.clone(),
        digest: plan.to.digest.as_ref().map(ToString::to_string),
        target: plan.target.clone(),
        hosts: Vec::new(),
        result: result.map(|r| r.as_str().to_string()),
        reason: opts.reason.map(str::to_string),
    }
}

/// Sends the notification of a finished swap, if `[notify]` wants it, and notes how it went in
/// the journal. Never fails the swap.
pub(crate) async fn announce(
    journal: &Journal,
    printer: &Printer,
    base: &Record,
    opts: &SwapOptions<'_>,
    result: Outcome,
    why: Option<String>,
    duration_ms: Option<u64>,
) {
    let event = notify::Event {
        forward: opts.forward,
        ..notify::Event::of(
            base,
            opts.scope.clone(),
            opts.repository.clone(),
            result,
            why,
            duration_ms,
        )
    };
    note_delivery(journal, printer, base, notify::send(opts.notify, &event).await);
}

/// Records a notification's delivery in the journal; a failure is also a warning.
pub fn note_delivery(journal: &Journal, printer: &Printer, base: &Record, sent: Option<Result<String, String>>) {
    let line = match sent {
        None => return,
        Some(Ok(line)) => line,
        Some(Err(line)) => {
            printer.note(format!("warning: could not {line}"));
            format!("could not {line}")
        }
    };
    let note = Record {
        at: Utc::now(),
        phase: Phase::Note,
        notes: vec![line],
        containers: Vec::new(),
        saved: BTreeMap::new(),
        ..base.clone()
    };
    if let Err(e) = journal.append(&note) {
        printer.note(format!("warning: could not note the notification in the journal: {e}"));
    }
}

pub(crate) fn print_logs(printer: &Printer, logs: &[String]) {
    if logs.is_empty() {
        return;
    }
    printer.note(format!("last {} lines of the failed container's output:", logs.len()));
    for l in logs {
        printer.note(format!("  | {l}"));
    }
}

/// Removes what a validated swap of `c` leaves, both at once: the previous container, and the
/// original one an emergency set aside. A failure is a warning: the swap itself is done.
async fn remove_leftovers(engine: &Engine, printer: &Printer, c: &ContainerPlan) {
    let leftovers = [
        format!("{}{BACKUP_SUFFIX}", c.name),
        format!("{}{PRE_EMERGENCY_SUFFIX}", c.name),
    ];
    let removed = futures::future::join_all(leftovers.iter().map(|l| engine.remove(l))).await;
    for (leftover, result) in leftovers.iter().zip(removed) {
        if let Err(e) = result {
            printer.note(format!("warning: could not remove {leftover}: {e}"));
        }
    }
}

/// Stop, set aside, create the clone, start. On error the caller reverts this container too.
pub async fn swap_one(engine: &Engine, c: &ContainerPlan) -> Result<(), EngineError> {
    let backup = format!("{}{BACKUP_SUFFIX}", c.name);
    // The new container is created under a temporary name (one an interrupted run left there is
    // removed first) while the old one stops: creating binds no port, so this takes it off the
    // critical path.
    let next = format!("{}{NEXT_SUFFIX}", c.name);
    let (stopped, created) = tokio::join!(engine.stop(&c.name, c.stop_timeout), async {
        engine.remove(&next).await?;
        engine.create(&next, c.body.clone(), &c.extra_networks).await
    });
    stopped?;
    created?;
    // The old one's restart policy goes off before the new one starts (a daemon restart must not
    // start it beside the new one), while it is set aside: by id, as the name is changing.
    let no = parse_restart_policy("no");
    let (policy, renamed) = tokio::join!(engine.set_restart_policy(&c.id, &no), engine.rename(&c.name, &backup));
    policy.map_err(|e| match e {
        EngineError::Container { action, message, .. } => EngineError::Container {
            action,
            container: c.name.clone(),
            message,
        },
        other => other,
    })?;
    renamed?;
    engine.rename(&next, &c.name).await?;
    engine.start(&c.name).await?;
    Ok(())
}

/// Puts the set-aside container back under its name and starts it. Safe to repeat. The restart
/// policy is restored only when it was saved (`None`: leave whatever the container has).
pub async fn revert_one(engine: &Engine, name: &str, restart_policy: Option<&str>) -> Result<(), EngineError> {
    let backup = format!("{name}{BACKUP_SUFFIX}");
    engine.remove(&format!("{name}{NEXT_SUFFIX}")).await?;
    if engine.inspect(&backup).await?.is_none() {
        // Never set aside: the old container is still under its own name.
        if engine.inspect(name).await?.is_some() {
            if let Some(policy) = restart_policy {
                engine.set_restart_policy(name, &parse_restart_policy(policy)).await?;
            }
            return engine.start(name).await;
        }
        return Err(EngineError::TargetNotFound {
            what: format!("container {name} or {backup}"),
        });
    }
    engine.remove(name).await?;
    engine.rename(&backup, name).await?;
    if let Some(policy) = restart_policy {
        engine.set_restart_policy(name, &parse_restart_policy(policy)).await?;
    }
    engine.start(name).await
}

/// When the target's name is empty but its original container is set aside, puts it back and
/// starts it (after a failed or interrupted emergency).
pub async fn restore_original(
    engine: &Engine,
    name: &str,
    restart_policy: Option<&str>,
) -> Result<bool, crate::adapters::docker::EngineError> {
    let aside = format!("{name}{PRE_EMERGENCY_SUFFIX}");
    if engine.inspect(name).await?.is_some() || engine.inspect(&aside).await?.is_none() {
        return Ok(false);
    }
    engine.rename(&aside, name).await?;
    if let Some(policy) = restart_policy {
        engine.set_restart_policy(name, &parse_restart_policy(policy)).await?;
    }
    engine.start(name).await?;
    Ok(true)
}

/// Undoes an emergency on one container: whatever runs under the name goes and the original,
/// set aside, comes back with its restart policy (when saved) and is started. `Ok(false)` when
/// there is no original to put back.
pub async fn undo_emergency_one(
    engine: &Engine,
    name: &str,
    restart_policy: Option<&str>,
) -> Result<bool, crate::adapters::docker::EngineError> {
    let aside = format!("{name}{PRE_EMERGENCY_SUFFIX}");
    if engine.inspect(&aside).await?.is_none() {
        return Ok(false);
    }
    engine.remove(name).await?;
    restore_original(engine, name, restart_policy).await
}
