//! Swarm services: the same deploy, rollback, validation and revert as for containers, with the
//! orchestrator doing the placing. backtrack pins the digest in the service's spec (keeping the
//! rest of it), lets Swarm roll the update out under the service's own update config (or the
//! `--parallelism`/`--order` given), and then decides: the update's `UpdateStatus.State` (Swarm
//! answers "updated" even when it rolled back: the state says what happened), every running task
//! on the new digest (a task is `running` only once its HEALTHCHECK passed), the `[health] http`
//! probe against each task's host-mode port on its node, and `expect_version`. On failure the
//! spec read before the update goes back (Swarm keeps no `PreviousSpec` after its own automatic
//! rollback, so the journal records the previous image itself).
//!
//! The journal and lock are the target's, as for containers (on the manager's host when it is
//! reached over SSH); the `started` record holds the previous image under the service's name
//! (`saved`), so a crash is settled by putting it back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bollard::models::{ServiceSpec, ServiceSpecUpdateConfig, ServiceSpecUpdateConfigOrderEnum};
use chrono::Utc;
use serde::Serialize;

use crate::adapters::docker::swarm::{ServiceView, TaskView, UpdateOverrides, pinned};
use crate::adapters::docker::{Engine, LABEL_EMERGENCY, LABEL_TAG, LABEL_VERSION};
use crate::adapters::registry::PullAuth;
use crate::adapters::state::{self, Journal};
use crate::domain::history::{self, Operation, Outcome, Record};
use crate::domain::image::ImageRef;
use crate::error::Failure;
pub use crate::ops::deployed::{LABEL_IMAGE, entries, service, spec_entry};
use crate::ops::deployed::{entry, task_container};
use crate::ops::interrupt;
use crate::ops::operation::{Failed, Run, Unit};
use crate::ops::swap::SwapReport;
use crate::ops::validate::{self, Invalid};
use crate::output::{Printer, Progress};
use crate::settings::{HealthSettings, TargetSettings};

/// How long a revert may take to converge, at least (a revert waits for the old tasks to run).
const REVERT_WAIT: Duration = Duration::from_secs(90);

/// Everything the update will do, computed without changing anything.
#[derive(Debug, Clone, Serialize)]
pub struct SwarmPlan {
    pub op: Operation,
    pub target: String,
    pub service: String,
    pub from: ImageRef,
    pub to: ImageRef,
    /// The image the new spec names (`repo:tag@digest`).
    pub image: String,
    /// The image the spec names now, put back on a revert.
    pub previous_image: String,
    pub replicas: Option<u64>,
    pub parallelism: u64,
    pub order: String,
    /// `--force`: replace every task even when the spec's image does not change (emergency).
    pub force: bool,
    /// The equivalent docker command.
    pub command: String,
    pub note: Option<String>,
    /// Something about the update config that may keep it from converging.
    pub warning: Option<String>,
    #[serde(skip)]
    service_view: ServiceView,
    #[serde(skip)]
    spec: ServiceSpec,
}

/// Computes the update: the service's spec with the image pinned by digest, backtrack's version
/// and tag labels on its containers, and the overrides of the update config.
pub fn plan(
    op: Operation,
    target: &TargetSettings,
    svc: &ServiceView,
    from: ImageRef,
    to: &ImageRef,
    repository: &str,
    overrides: &UpdateOverrides,
) -> SwarmPlan {
    let force = overrides.force;
    let digest = to.digest.as_ref().map(ToString::to_string).unwrap_or_default();
    let image = match &to.tag {
        Some(tag) => format!("{repository}:{tag}@{digest}"),
        None => format!("{repository}@{digest}"),
    };
    let mut spec = svc.spec.clone();
    name_image(&mut spec, &image, to, op == Operation::Emergency);
    let task = spec.task_template.get_or_insert_with(Default::default);
    if force {
        task.force_update = Some(task.force_update.unwrap_or(0) + 1);
    }
    let update = spec.update_config.get_or_insert_with(ServiceSpecUpdateConfig::default);
    if let Some(p) = overrides.parallelism {
        update.parallelism = Some(p as i64);
    }
    match overrides.order.as_deref() {
        Some("start-first") => update.order = Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST),
        Some("stop-first") => update.order = Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST),
        _ => {}
    }
    let parallelism = update.parallelism.unwrap_or(1).max(0) as u64;
    let order = match update.order {
        Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST) => "start-first",
        _ => "stop-first",
    }
    .to_string();
    let max_per_node = spec
        .task_template
        .as_ref()
        .and_then(|t| t.placement.as_ref())
        .and_then(|p| p.max_replicas)
        .filter(|m| *m > 0);
    let warning = match max_per_node {
        Some(m) if order == "start-first" => Some(format!(
            "start-first needs room for a new task beside the old one, and {} allows {m} per node:              Swarm may leave new tasks pending until the timeout",
            svc.name
        )),
        _ => None,
    };
    let mut command = format!("docker service update --with-registry-auth --image {image}");
    if let Some(p) = overrides.parallelism {
        command.push_str(&format!(" --update-parallelism {p}"));
    }
    if let Some(o) = &overrides.order {
        command.push_str(&format!(" --update-order {o}"));
    }
    if force {
        command.push_str(" --force");
    }
    command.push_str(&format!(" {}", svc.name));
    SwarmPlan {
        op,
        target: target.display(),
        service: svc.name.clone(),
        from,
        to: to.clone(),
        image,
        previous_image: svc.image.clone(),
        replicas: svc.replicas,
        parallelism,
        order,
        force,
        command,
        note: None,
        warning,
        service_view: svc.clone(),
        spec,
    }
}

/// Makes `spec` name `image`, with backtrack's labels saying which version and tag it is (and
/// which image they were written with), and whether it runs in emergency mode.
fn name_image(spec: &mut ServiceSpec, image: &str, version: &ImageRef, emergency: bool) {
    let task = spec.task_template.get_or_insert_with(Default::default);
    let container = task.container_spec.get_or_insert_with(Default::default);
    container.image = Some(image.to_string());
    let labels = container.labels.get_or_insert_with(Default::default);
    labels.remove(LABEL_EMERGENCY);
    labels.insert(LABEL_IMAGE.to_string(), image.to_string());
    for (key, value) in [(LABEL_VERSION, &version.version), (LABEL_TAG, &version.tag)] {
        match value {
            Some(v) => labels.insert(key.to_string(), v.clone()),
            None => labels.remove(key),
        };
    }
    if emergency {
        labels.insert(LABEL_EMERGENCY.to_string(), "true".into());
    }
}

/// A Swarm service as a unit of an operation: Swarm pulls and places the tasks, backtrack pins
/// the digest in the spec, waits for Swarm's verdict and the tasks, and puts the spec read
/// before back on a failure.
pub struct Service<'a> {
    pub engine: &'a Engine,
    pub journal: &'a Journal,
    pub target: &'a TargetSettings,
    pub place: String,
    pub plan: SwarmPlan,
    /// Whether the update was sent (and so must be put back on a failure).
    sent: bool,
}

impl<'a> Service<'a> {
    pub fn new(
        engine: &'a Engine,
        journal: &'a Journal,
        target: &'a TargetSettings,
        place: String,
        plan: SwarmPlan,
    ) -> Self {
        Self {
            engine,
            journal,
            target,
            place,
            plan,
            sent: false,
        }
    }
}

#[async_trait::async_trait]
impl Unit for Service<'_> {
    fn place(&self) -> &str {
        &self.place
    }

    fn journal(&self) -> &Journal {
        self.journal
    }

    fn intent(&self, base: &Record) -> Record {
        Record {
            target: Some(self.plan.target.clone()),
            containers: vec![self.plan.service.clone()],
            saved: BTreeMap::from([(self.plan.service.clone(), self.plan.previous_image.clone())]),
            detail: base.detail.clone().or(self.plan.note.clone()),
            ..base.clone()
        }
    }

    /// Swarm pulls on each node as it places a task: nothing to get ready here.
    async fn prepare(&self, _run: &Run<'_>) -> anyhow::Result<bool> {
        Ok(false)
    }

    async fn apply(&mut self, run: &Run<'_>) -> Result<(), Failed> {
        let (engine, plan, printer) = (self.engine, &self.plan, run.printer);
        if let Some(w) = &plan.warning {
            printer.note(format!("warning: {w}"));
        }
        printer.note(format!(
            "updating {}: {} -> {} ({}, {} at a time)",
            plan.target,
            plan.from.display(),
            plan.to.display(),
            plan.order,
            plan.parallelism
        ));
        match engine
            .update_service(&plan.service_view, plan.spec.clone(), run.auth)
            .await
        {
            Ok(warnings) => {
                for w in warnings {
                    printer.note(format!("swarm: {w}"));
                }
            }
            Err(e) => {
                // The manager refused the update: the spec is unchanged.
                return Err(Failed {
                    why: e.to_string(),
                    nothing_changed: true,
                    error: Some(e.into()),
                    ..Failed::default()
                });
            }
        }
        self.sent = true;
        let digest = plan.to.digest.as_ref().map(ToString::to_string).unwrap_or_default();
        let progress = Progress::new(
            printer,
            &format!(
                "waiting for {} to converge on {} (timeout {})",
                plan.service,
                plan.to.display(),
                crate::domain::duration::format(run.health.timeout)
            ),
        );
        let expected = run
            .health
            .expect_version
            .then_some(plan.to.version.as_deref())
            .flatten();
        let result = wait_converged(engine, plan, &digest, run.health, expected, run.health.timeout, |s| {
            progress.set(&format!("{}: {s}", plan.service))
        })
        .await;
        match result {
            Ok(()) => {
                progress.finish(&format!("{} runs {} on every task", plan.service, plan.to.display()));
                Ok(())
            }
            Err(f) => {
                progress.finish(&format!("{} failed validation: {}", plan.service, f.invalid.why));
                Err(Failed {
                    why: f.invalid.why,
                    logs: f.logs,
                    probe_unreachable: f.invalid.probe_unreachable,
                    ..Failed::default()
                })
            }
        }
    }

    async fn soak(&self, run: &Run<'_>, duration: Duration) -> Result<(), String> {
        let digest = self
            .plan
            .to
            .digest
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        soak(self.engine, self.target, &digest, run.health, duration)
            .await
            .map_err(|invalid| invalid.why)
    }

    async fn put_back(&mut self, run: &Run<'_>) -> Result<(), String> {
        if !self.sent {
            return Ok(());
        }
        let plan = &self.plan;
        run.printer.note(format!(
            "putting the previous version back on {}: {}",
            plan.service,
            short_image(&plan.previous_image)
        ));
        // The spec read before the update (unless Swarm's own rollback already put it back).
        let view = &plan.service_view;
        put_back(
            self.engine,
            &view.name,
            &view.spec,
            &plan.previous_image,
            run.auth,
            run.printer,
        )
        .await
    }

    async fn commit(&mut self, _run: &Run<'_>, committed: &Record) -> Result<(), state::StateError> {
        self.journal.append(committed)
    }

    async fn reachable(&self) -> bool {
        self.engine.service(&self.plan.service_view.name, None).await.is_ok()
    }
}

/// How an emergency update is told: credentials, the reason, the wait, and who hears about it.
#[derive(Debug)]
pub struct EmergencyOptions<'a> {
    pub auth: Option<&'a PullAuth>,
    pub reason: Option<&'a str>,
    pub timeout: Duration,
    pub notify: &'a crate::settings::NotifySection,
    pub scope: String,
    pub repository: String,
}

/// `repo:tag@sha256:abcdef…` shortened for messages.
fn short_image(image: &str) -> String {
    match pinned(image) {
        Some(d) => format!("{}@{}", image.split_once('@').map_or(image, |(n, _)| n), d.short()),
        None => image.to_string(),
    }
}

/// A failed validation and the failing task's last lines.
#[derive(Debug)]
pub struct NotConverged {
    pub invalid: Invalid,
    pub logs: Vec<String>,
}

fn invalid(why: String) -> NotConverged {
    NotConverged {
        invalid: Invalid {
            why,
            container: None,
            probe_unreachable: false,
        },
        logs: Vec::new(),
    }
}

/// Waits until the update is Swarm's `completed`, every task Swarm wants running runs `digest`
/// (as many as the service asks for), the probe answers on each task's host-mode port, and with
/// `expected` every task carries that version. Fails at once when Swarm paused or rolled the
/// update back, or a task on the new digest failed.
async fn wait_converged(
    engine: &Engine,
    plan: &SwarmPlan,
    digest: &str,
    health: &HealthSettings,
    expected: Option<&str>,
    timeout: Duration,
    mut progress: impl FnMut(&str),
) -> Result<(), NotConverged> {
    let start = Instant::now();
    let deadline = start + timeout;
    let http = validate::http_client();
    let before = plan.service_view.update_started.clone();
    let (mut probed, mut probe_reached) = (false, false);
    let mut last_status = String::from("update sent");
    loop {
        if interrupt::requested() {
            return Err(invalid("interrupted".into()));
        }
        let svc = engine
            .service(&plan.service_view.name, None)
            .await
            .map_err(|e| invalid(e.to_string()))?;
        let tasks = engine.service_tasks(&svc).await.map_err(|e| invalid(e.to_string()))?;
        // The status of an update started before ours says nothing about ours.
        let state = if svc.update_started != before {
            svc.update_state.clone()
        } else {
            None
        };
        if let Some(s) = state.as_deref()
            && matches!(
                s,
                "paused" | "rollback_started" | "rollback_paused" | "rollback_completed"
            )
        {
            let failed = tasks.iter().find(|t| is_failed_on(t, digest));
            let logs = match failed {
                Some(t) => engine.task_logs_tail(&t.id, 20).await,
                None => Vec::new(),
            };
            let mut why = format!(
                "Swarm {} the update ({})",
                match s {
                    "paused" => "paused",
                    "rollback_completed" => "rolled back",
                    _ => "is rolling back",
                },
                svc.update_message.as_deref().unwrap_or(s)
            );
            if let Some(t) = failed {
                why.push_str(&format!("; task {} on {}: {}", t.name, t.node, ended(t)));
            }
            return Err(NotConverged {
                invalid: Invalid {
                    why,
                    container: None,
                    probe_unreachable: false,
                },
                logs,
            });
        }
        if let Some(t) = tasks.iter().find(|t| is_failed_on(t, digest)) {
            let logs = engine.task_logs_tail(&t.id, 20).await;
            return Err(NotConverged {
                invalid: Invalid {
                    why: format!("task {} on {} failed: {}", t.name, t.node, ended(t)),
                    container: Some(t.name.clone()),
                    probe_unreachable: false,
                },
                logs,
            });
        }
        let live: Vec<&TaskView> = tasks.iter().filter(|t| t.desired == "running").collect();
        let on_new = live
            .iter()
            .filter(|t| t.digest().is_some_and(|d| d.to_string() == digest) && t.state == "running")
            .count();
        let wanted = plan.replicas.map_or(live.len(), |r| r as usize);
        let settled = on_new == live.len() && on_new >= wanted && state.as_deref() == Some("completed");
        last_status = if settled {
            last_status
        } else {
            // Why a task on the new digest is not running yet (e.g. `no suitable node`).
            let waiting = live
                .iter()
                .find(|t| t.digest().is_some_and(|d| d.to_string() == digest) && t.state != "running")
                .map(|t| match t.error.as_deref() {
                    Some(e) => format!(" ({} on {}: {}: {e})", t.name, t.node, t.state),
                    None => format!(" ({} on {}: {})", t.name, t.node, t.state),
                })
                .unwrap_or_default();
            format!(
                "{on_new}/{wanted} tasks running {}{waiting}, update {}",
                plan.to.display(),
                state.as_deref().unwrap_or("starting")
            )
        };
        let mut ok = settled;
        if ok && let Some(want) = expected {
            for t in &live {
                let carried = entry(task_container(t)).image.version;
                if !same_version(carried.as_deref(), want) {
                    return Err(invalid(format!(
                        "task {} carries version {}, expected {want}",
                        t.name,
                        carried.as_deref().unwrap_or("(none)")
                    )));
                }
            }
        }
        if ok && let Some(url) = &health.http {
            probed = true;
            match probe_tasks(&http, engine, url, &live).await {
                Ok(()) => {}
                Err(e) => {
                    probe_reached |= e.reached;
                    ok = false;
                    last_status = e.message;
                }
            }
        }
        if ok {
            return Ok(());
        }
        progress(&last_status);
        if Instant::now() >= deadline {
            let limit = crate::domain::duration::format(timeout);
            if probed && !probe_reached {
                return Err(NotConverged {
                    invalid: Invalid {
                        why: format!(
                            "the probe never reached anything within {limit} ({last_status}); the tasks ran; \
                             check [health] http (it is requested from {} at each task's host-mode port)",
                            engine.probe_origin()
                        ),
                        container: None,
                        probe_unreachable: true,
                    },
                    logs: Vec::new(),
                });
            }
            return Err(invalid(format!("not converged within {limit} ({last_status})")));
        }
        tokio::time::sleep(validate::poll_interval(start.elapsed()).max(Duration::from_millis(100))).await;
    }
}

fn same_version(carried: Option<&str>, want: &str) -> bool {
    use crate::domain::version::{parse_version, strip_build};
    let v = |s: &str| parse_version(s).map(|v| strip_build(&v));
    matches!((carried.and_then(v), v(want)), (Some(a), Some(b)) if a == b)
}

/// How a task that ended did: Swarm's error, else its state.
fn ended(t: &TaskView) -> String {
    match &t.error {
        Some(e) => e.clone(),
        None => format!("it stopped on its own (task state {})", t.state),
    }
}

/// A task that ran (or tried to run) `digest` and ended on its own: it failed, was rejected, or
/// exited 0 (`complete`; a service's task is meant to keep running, and an app that stops on
/// SIGTERM when its HEALTHCHECK kills it ends that way).
fn is_failed_on(t: &TaskView, digest: &str) -> bool {
    t.digest().is_some_and(|d| d.to_string() == digest)
        && matches!(t.state.as_str(), "failed" | "rejected" | "complete")
}

/// Probes `url` on every task: a loopback URL (`http://127.0.0.1:8080/health`) means each task's
/// own port, reached at its node's address and host-mode published port; any other URL (a load
/// balancer) is requested once as it is.
async fn probe_tasks(
    http: &reqwest::Client,
    engine: &Engine,
    url: &str,
    tasks: &[&TaskView],
) -> Result<(), validate::ProbeError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| validate::ProbeError {
        message: format!("parse {url}: {e}"),
        reached: false,
    })?;
    let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    let Some(port) = parsed.port_or_known_default() else {
        return validate::probe(http, engine, url).await;
    };
    if !loopback {
        return validate::probe(http, engine, url).await;
    }
    let mut reached_one = false;
    for t in tasks {
        let (Some(addr), Some(host_port)) = (t.node_addr.as_deref(), t.host_port(port)) else {
            // No host-mode port for it: the task cannot be probed from outside its node.
            continue;
        };
        let mut u = parsed.clone();
        if u.set_host(Some(addr)).is_err() || u.set_port(Some(host_port)).is_err() {
            continue;
        }
        reached_one = true;
        validate::probe(http, engine, u.as_str())
            .await
            .map_err(|e| validate::ProbeError {
                message: format!("task {} on {} (GET {u}): {}", t.name, t.node, e.message),
                reached: e.reached,
            })?;
    }
    if !reached_one {
        tracing::debug!("no task publishes port {port} in host mode; the probe was not sent");
    }
    Ok(())
}

/// One pass of every check on the service as it runs now, for `backtrack validate`: each task
/// Swarm wants running is running the spec's image and carries its version, the update is not
/// stuck, and the probe answers on each task's host-mode port.
pub async fn check_now(
    engine: &Engine,
    target: &TargetSettings,
    health: &HealthSettings,
) -> anyhow::Result<Vec<validate::Check>> {
    use validate::Check;
    let svc = service(engine, target).await?;
    let tasks = engine.service_tasks(&svc).await?;
    let live: Vec<&TaskView> = tasks.iter().filter(|t| t.desired == "running").collect();
    let labels = svc.container_labels();
    let spec_version = labels
        .get(LABEL_VERSION)
        .filter(|_| labels.get(LABEL_IMAGE) == Some(&svc.image))
        .cloned();
    let mut checks = Vec::new();
    let running = live.iter().filter(|t| t.state == "running").count();
    let wanted = svc.replicas.map_or(live.len(), |r| r as usize);
    checks.push(Check {
        name: format!("{}: replicas", svc.name),
        ok: running >= wanted && running == live.len(),
        detail: format!("{running}/{wanted} running"),
    });
    if let Some(state) = &svc.update_state {
        checks.push(Check {
            name: format!("{}: last update", svc.name),
            ok: state == "completed" || state == "rollback_completed",
            detail: match &svc.update_message {
                Some(m) => format!("{state}: {m}"),
                None => state.clone(),
            },
        });
    }
    for t in &live {
        checks.push(Check {
            name: format!("{} on {}: running", t.name, t.node),
            ok: t.state == "running" && same_image(&t.image, &svc.image),
            detail: format!("{} ({})", t.state, short_image(&t.image)),
        });
        if health.expect_version
            && let Some(want) = &spec_version
        {
            let carried = entry(task_container(t)).image.version;
            checks.push(Check {
                name: format!("{}: version", t.name),
                ok: same_version(carried.as_deref(), want),
                detail: format!("carries {}", carried.as_deref().unwrap_or("no version")),
            });
        }
    }
    if let Some(url) = &health.http {
        let r = probe_tasks(&validate::http_client(), engine, url, &live).await;
        checks.push(Check {
            name: format!("GET {url} on every task"),
            ok: r.is_ok(),
            detail: r.err().map_or_else(|| "2xx".into(), |e| e.message),
        });
    }
    Ok(checks)
}

/// A task seen as a container (what version checks and reports read).
/// Watches a service that validated for `duration`: a task that fails or leaves the digest, or
/// a failed probe, ends the soak with the reason.
pub async fn soak(
    engine: &Engine,
    target: &TargetSettings,
    digest: &str,
    health: &HealthSettings,
    duration: Duration,
) -> Result<(), Invalid> {
    let deadline = Instant::now() + duration;
    let http = validate::http_client();
    let fail = |why: String| Invalid {
        why,
        container: None,
        probe_unreachable: false,
    };
    while Instant::now() < deadline {
        if interrupt::requested() {
            return Err(fail("interrupted".into()));
        }
        let svc = service(engine, target).await.map_err(|e| fail(e.to_string()))?;
        let tasks = engine.service_tasks(&svc).await.map_err(|e| fail(e.to_string()))?;
        if let Some(t) = tasks.iter().find(|t| is_failed_on(t, digest)) {
            return Err(fail(format!("task {} on {} failed: {}", t.name, t.node, ended(t))));
        }
        let live: Vec<&TaskView> = tasks.iter().filter(|t| t.desired == "running").collect();
        if let Some(t) = live
            .iter()
            .find(|t| t.state != "running" || t.digest().is_none_or(|d| d.to_string() != digest))
        {
            return Err(fail(format!(
                "task {} on {} is {} ({})",
                t.name,
                t.node,
                t.state,
                short_image(&t.image)
            )));
        }
        if let Some(url) = &health.http {
            probe_tasks(&http, engine, url, &live)
                .await
                .map_err(|e| fail(e.message))?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// Puts `spec` (naming `previous_image`) back on the service and waits for its tasks.
async fn put_back(
    engine: &Engine,
    name: &str,
    spec: &ServiceSpec,
    previous_image: &str,
    auth: Option<&PullAuth>,
    printer: &Printer,
) -> Result<(), String> {
    let svc = engine.service(name, None).await.map_err(|e| e.to_string())?;
    // The status of an update started before this one says nothing about it.
    let before = svc.update_started.clone();
    let ours = svc.image != previous_image;
    if ours {
        let mut spec = spec.clone();
        // The old spec as it was, but its force-update counter never goes back (an emergency
        // may have raised it).
        if let Some(t) = spec.task_template.as_mut() {
            let current = svc
                .spec
                .task_template
                .as_ref()
                .and_then(|t| t.force_update)
                .unwrap_or(0);
            t.force_update = Some(current.max(t.force_update.unwrap_or(0)));
        }
        engine
            .update_service(&svc, spec, auth)
            .await
            .map_err(|e| e.to_string())?;
    } else {
        printer.note(format!("{name}: Swarm already put the previous spec back"));
    }
    let start = Instant::now();
    loop {
        let svc = engine.service(name, None).await.map_err(|e| e.to_string())?;
        let tasks = engine.service_tasks(&svc).await.map_err(|e| e.to_string())?;
        let live: Vec<&TaskView> = tasks.iter().filter(|t| t.desired == "running").collect();
        let back = live
            .iter()
            .filter(|t| same_image(&t.image, previous_image) && t.state == "running")
            .count();
        let wanted = svc.replicas.map_or(live.len(), |r| r as usize);
        // Back once every task runs the previous image (which ran before): Swarm's monitor
        // period after it is not waited for. A pause means Swarm could not put it back.
        if ours
            && svc.update_started != before
            && matches!(svc.update_state.as_deref(), Some("paused" | "rollback_paused"))
        {
            return Err(format!(
                "Swarm paused the update back to the previous image ({})",
                svc.update_message.as_deref().unwrap_or("no message")
            ));
        }
        if back == live.len() && back >= wanted {
            return Ok(());
        }
        if start.elapsed() > REVERT_WAIT {
            return Err(format!(
                "{back}/{wanted} tasks run the previous image after {}s (update {})",
                REVERT_WAIT.as_secs(),
                svc.update_state.as_deref().unwrap_or("-")
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two image references name the same image: the same pinned digest, else the same text.
fn same_image(a: &str, b: &str) -> bool {
    match (pinned(a), pinned(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Settles the open operations of a swarm target (call with the lock held): a committed one is
/// recorded done; one interrupted before its verdict gets the previous image back (the spec as
/// it is now, with that image), as a swap of containers would.
pub async fn settle(
    engine: &Engine,
    journal: &Journal,
    printer: &Printer,
    target: &TargetSettings,
    auth: Option<&PullAuth>,
) -> anyhow::Result<usize> {
    let records = journal.read()?;
    let open = history::open_operations(&records);
    for (started, committed) in &open {
        let what = format!(
            "{} to {} started {}",
            started.op.as_str(),
            started.to.as_ref().map_or("-".into(), |t| t.display()),
            started.at.format("%Y-%m-%d %H:%M:%SZ"),
        );
        let who = state::Identity::current();
        let (outcome, problem) = if *committed {
            printer.note(format!(
                "found an interrupted {what}; it had validated, so recording it done"
            ));
            (Outcome::Ok, None)
        } else if started.op == Operation::Emergency {
            printer.note(format!("found an interrupted {what}; Swarm finishes it on its own"));
            (Outcome::Failed, None)
        } else {
            printer.note(format!(
                "found an interrupted {what}; putting the previous version back"
            ));
            let previous = started.containers.first().and_then(|s| started.saved.get(s));
            match previous {
                None => (
                    Outcome::RevertFailed,
                    Some("the journal does not say which image ran before".to_string()),
                ),
                Some(previous) => {
                    let svc = service(engine, target).await?;
                    let mut spec = svc.spec.clone();
                    let was = started.from.clone().unwrap_or_default();
                    name_image(&mut spec, previous, &was, false);
                    match put_back(engine, &svc.name, &spec, previous, auth, printer).await {
                        Ok(()) => (Outcome::RolledBackAfterCrash, None),
                        Err(e) => (Outcome::RevertFailed, Some(e)),
                    }
                }
            }
        };
        let detail = match &problem {
            None => format!("settled by pid {} of {}@{}", std::process::id(), who.user, who.host),
            Some(p) => format!("settling failed: {p}"),
        };
        journal.append(&started.finish(Utc::now(), outcome, None, Some(detail.clone())))?;
        if problem.is_some() {
            return Err(Failure::SettleFailed { what, detail }.into());
        }
        printer.note(format!("settled: {}", outcome.as_str()));
    }
    Ok(open.len())
}

/// Replaces every task with `plan`'s image and waits until they run it, with no verdict on
/// health and no revert: `emergency`. Journaled like any operation.
pub async fn emergency(
    engine: &Engine,
    journal: &Journal,
    printer: &Printer,
    plan: &SwarmPlan,
    opts: &EmergencyOptions<'_>,
) -> anyhow::Result<SwapReport> {
    let (auth, reason, wait) = (opts.auth, opts.reason, opts.timeout);
    let started = Instant::now();
    let base = Record {
        target: Some(plan.target.clone()),
        from: Some(plan.from.clone()),
        to: Some(plan.to.clone()),
        reason: reason.map(str::to_string),
        ..state::begin(Operation::Emergency)
    };
    journal.append(&Record {
        containers: vec![plan.service.clone()],
        saved: BTreeMap::from([(plan.service.clone(), plan.previous_image.clone())]),
        ..base.clone()
    })?;
    let finish = |result: Outcome, detail: Option<String>| {
        base.finish(Utc::now(), result, Some(started.elapsed().as_millis() as u64), detail)
    };
    if let Err(e) = engine.update_service(&plan.service_view, plan.spec.clone(), auth).await {
        journal.append(&finish(Outcome::Failed, Some(e.to_string())))?;
        return Err(e.into());
    }
    // No gate: wait only so the report can say whether the tasks run it.
    let digest = plan.to.digest.as_ref().map(ToString::to_string).unwrap_or_default();
    let progress = Progress::new(
        printer,
        &format!("waiting for {} to run {}", plan.service, plan.to.display()),
    );
    let no_checks = HealthSettings {
        http: None,
        timeout: wait,
        expect_version: false,
    };
    let ran = wait_converged(engine, plan, &digest, &no_checks, None, wait, |s| progress.set(s)).await;
    let detail = match &ran {
        Ok(()) => {
            progress.finish(&format!("{} runs {} on every task", plan.service, plan.to.display()));
            None
        }
        Err(f) => {
            progress.finish(&format!("warning: {}", f.invalid.why));
            Some(format!("not converged: {}", f.invalid.why))
        }
    };
    let record = finish(Outcome::Ok, detail.clone());
    journal.append(&record)?;
    let event = crate::ops::notify::Event::of(
        &base,
        opts.scope.clone(),
        opts.repository.clone(),
        Outcome::Ok,
        detail.clone(),
        record.duration_ms,
    );
    let sent = crate::ops::notify::send(opts.notify, &event).await;
    crate::ops::notify::note_delivery(journal, printer, &base, sent);
    Ok(SwapReport {
        op: Operation::Emergency,
        target: plan.target.clone(),
        from: plan.from.clone(),
        to: plan.to.clone(),
        containers: vec![plan.service.clone()],
        result: Outcome::Ok,
        forward: false,
        pulled: false,
        duration_ms: record.duration_ms.unwrap_or_default(),
        detail,
        logs: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::docker::ContainerView;
    use crate::ops::deployed::tag_of;

    #[test]
    fn tags_are_read_from_pinned_and_plain_references() {
        for (image, tag) in [
            ("127.0.0.1:5000/app:1.2.0@sha256:abcd", Some("1.2.0")),
            ("127.0.0.1:5000/app@sha256:abcd", None),
            ("127.0.0.1:5000/app", None),
            ("app:v2", Some("v2")),
        ] {
            assert_eq!(tag_of(image).as_deref(), tag, "{image}");
        }
    }

    fn service_view(image: &str, labels: &[(&str, &str)]) -> ServiceView {
        use bollard::models::{TaskSpec, TaskSpecContainerSpec, TaskSpecPlacement};
        let spec = ServiceSpec {
            name: Some("web".into()),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(image.into()),
                    env: Some(vec!["MODE=prod".into()]),
                    labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                    ..Default::default()
                }),
                placement: Some(TaskSpecPlacement {
                    max_replicas: Some(1),
                    ..Default::default()
                }),
                force_update: Some(3),
                ..Default::default()
            }),
            ..Default::default()
        };
        ServiceView {
            id: "svc1".into(),
            name: "web".into(),
            version: 7,
            spec,
            image: image.into(),
            replicas: Some(2),
            update_state: Some("completed".into()),
            update_message: None,
            update_started: None,
        }
    }

    fn target() -> TargetSettings {
        TargetSettings {
            hosts: Vec::new(),
            strategy: None,
            batch: 1,
            canary_soak: Duration::from_secs(1),
            kind: crate::settings::TargetKind::Swarm,
            name: "web".into(),
            project: None,
            stack: None,
            host: None,
            engine_id: "local".into(),
            environment: None,
            version_env: None,
        }
    }

    fn digest(c: char) -> crate::domain::digest::Digest {
        crate::domain::digest::Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    #[test]
    fn the_plan_pins_the_digest_and_keeps_the_rest_of_the_spec() {
        let old = format!("r/app:1.0.0@{}", digest('a'));
        let svc = service_view(&old, &[(LABEL_EMERGENCY, "x"), ("team", "shop")]);
        let to = ImageRef {
            tag: Some("1.1.0".into()),
            version: Some("1.1.0".into()),
            digest: Some(digest('b')),
        };
        let p = plan(
            Operation::Deploy,
            &target(),
            &svc,
            ImageRef::default(),
            &to,
            "r/app",
            &UpdateOverrides::default(),
        );
        let c = p.spec.task_template.as_ref().unwrap().container_spec.as_ref().unwrap();
        assert_eq!(
            c.image.as_deref(),
            Some(format!("r/app:1.1.0@{}", digest('b')).as_str())
        );
        assert_eq!(
            c.env,
            Some(vec!["MODE=prod".to_string()]),
            "the rest of the spec is kept"
        );
        let labels = c.labels.as_ref().unwrap();
        assert_eq!(labels.get("team").map(String::as_str), Some("shop"));
        assert_eq!(labels.get(LABEL_VERSION).map(String::as_str), Some("1.1.0"));
        assert_eq!(
            labels.get(LABEL_IMAGE),
            c.image.as_ref(),
            "labels name the image they describe"
        );
        assert!(!labels.contains_key(LABEL_EMERGENCY), "a deploy leaves emergency mode");
        assert_eq!(p.previous_image, old);
        assert_eq!(
            p.spec.task_template.as_ref().unwrap().force_update,
            Some(3),
            "no force without --force"
        );
        assert_eq!((p.parallelism, p.order.as_str()), (1, "stop-first"));
        assert!(p.warning.is_none());
        assert!(
            p.command.ends_with(&format!("--image r/app:1.1.0@{} web", digest('b'))),
            "{}",
            p.command
        );
    }

    #[test]
    fn overrides_and_force_change_the_update_config_and_say_so() {
        let svc = service_view(&format!("r/app@{}", digest('a')), &[]);
        let to = ImageRef {
            tag: None,
            version: None,
            digest: Some(digest('c')),
        };
        let overrides = UpdateOverrides {
            parallelism: Some(2),
            order: Some("start-first".into()),
            force: true,
        };
        let p = plan(
            Operation::Emergency,
            &target(),
            &svc,
            ImageRef::default(),
            &to,
            "r/app",
            &overrides,
        );
        let task = p.spec.task_template.as_ref().unwrap();
        assert_eq!(task.force_update, Some(4));
        let update = p.spec.update_config.as_ref().unwrap();
        assert_eq!(update.parallelism, Some(2));
        assert_eq!(update.order, Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST));
        let labels = task.container_spec.as_ref().unwrap().labels.as_ref().unwrap();
        assert!(labels.contains_key(LABEL_EMERGENCY));
        assert!(!labels.contains_key(LABEL_VERSION) && !labels.contains_key(LABEL_TAG));
        assert_eq!(p.image, format!("r/app@{}", digest('c')));
        for part in ["--update-parallelism 2", "--update-order start-first", "--force"] {
            assert!(p.command.contains(part), "{}", p.command);
        }
        let w = p.warning.expect("start-first with one task per node is warned about");
        assert!(w.contains("allows 1 per node"), "{w}");
    }

    #[test]
    fn labels_written_for_another_image_are_not_believed() {
        let image = format!("r/app:1.2.0@{}", digest('d'));
        let by_hand = entry(ContainerView {
            name: "web.1".into(),
            id: "t1".into(),
            image_ref: image.clone(),
            image_id: String::new(),
            state: "running".into(),
            health: None,
            restart_count: 0,
            labels: [
                (LABEL_VERSION.to_string(), "1.1.0".to_string()),
                (LABEL_TAG.to_string(), "1.1.0".to_string()),
                (LABEL_IMAGE.to_string(), "r/app:1.1.0@x".to_string()),
            ]
            .into(),
            env: Vec::new(),
        });
        assert_eq!(
            by_hand.image.version.as_deref(),
            Some("1.2.0"),
            "read from the image's tag"
        );
        assert_eq!(by_hand.image.tag.as_deref(), Some("1.2.0"));
        assert_eq!(by_hand.digest, Some(digest('d')));
    }

    #[test]
    fn images_match_by_digest_before_text() {
        let d = "sha256:".to_string() + &"a".repeat(64);
        assert!(same_image(&format!("r/app:1.0@{d}"), &format!("r/app:other@{d}")));
        assert!(!same_image(&format!("r/app:1.0@{d}"), "r/app:1.0"));
        assert!(same_image("r/app:1.0", "r/app:1.0"));
    }
}
