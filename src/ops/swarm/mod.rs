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
use crate::adapters::docker::{Engine, LABEL_EMERGENCY, LABEL_TAG, LABEL_VERSION, snapshot};
use crate::adapters::registry::PullAuth;
use crate::adapters::state::{self, Journal};
use crate::domain::history::{self, Operation, Outcome, Record};
use crate::domain::image::ImageRef;
use crate::error::Failure;
use crate::ops::config::{ConfigPlan, Configs};
pub use crate::ops::deployed::{LABEL_IMAGE, entries, service, services_of, spec_entry};
use crate::ops::deployed::{entry, task_container};
use crate::ops::interrupt;
use crate::ops::operation::{Failed, Run, Unit};
use crate::ops::swap::SwapReport;
use crate::ops::validate::{self, Invalid};
use crate::output::{Printer, Progress};
use crate::settings::{HealthSettings, TargetSettings};

mod converge;
mod settle;

use converge::wait_converged;
pub use converge::{NotConverged, check_now, soak};
pub use settle::{EmergencyOptions, emergency, settle};
use settle::{put_back, same_image};

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
    /// Today's config kept or the version's restored, and what differs.
    #[serde(flatten)]
    pub config: ConfigPlan,
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
        config: ConfigPlan::new(false),
        service_view: svc.clone(),
        spec,
    }
}

/// backtrack's own labels on a service's containers: not part of its config.
const OWN_LABELS: [&str; 4] = [LABEL_VERSION, LABEL_TAG, LABEL_EMERGENCY, LABEL_IMAGE];

impl SwarmPlan {
    /// Records the config the service runs with now and after, restores the one the version last
    /// ran with when `configs` says so, and lists what differs.
    pub fn with_config(mut self, configs: &Configs) -> Result<Self, Failure> {
        let now = snapshot::of_service(&self.service_view.spec, &OWN_LABELS);
        if let Some(then) = configs.to_restore(&self.to, &self.service)? {
            snapshot::restore_service(&mut self.spec, then, &OWN_LABELS).ok_or_else(|| {
                Failure::Usage(format!(
                    "restore the config {} ran with: the journal's snapshot of {} is not a service's",
                    self.to.display(),
                    self.service
                ))
            })?;
            self.command.push_str(&format!(
                "  # with the task template and ports {} ran with",
                self.to.display()
            ));
        }
        let after = snapshot::of_service(&self.spec, &OWN_LABELS);
        let mut config = ConfigPlan::new(configs.restore);
        config.add(
            configs,
            &self.service,
            now,
            configs.then(&self.to, &self.service).map(|(_, v)| v),
            after,
            snapshot::flatten_service,
        );
        self.config = config;
        Ok(self)
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
            from: Some(self.plan.from.clone()),
            containers: vec![self.plan.service.clone()],
            saved: BTreeMap::from([(self.plan.service.clone(), self.plan.previous_image.clone())]),
            detail: base.detail.clone().or(self.plan.note.clone()),
            configs: self.plan.config.pairs.clone(),
            snapshots: self.plan.config.new_snapshots.clone(),
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

    async fn commit(&mut self, _run: &Run<'_>, records: &[&Record]) -> Result<(), state::StateError> {
        self.journal.append_all_aside(records).await
    }

    async fn reachable(&self) -> bool {
        self.engine.service(&self.plan.service_view.name, None).await.is_ok()
    }

    fn phase(&self, phase: &'static str) {
        if let Some(w) = self.engine.wire() {
            w.phase(phase);
        }
    }
}

/// `repo:tag@sha256:abcdef…` shortened for messages.
fn short_image(image: &str) -> String {
    match pinned(image) {
        Some(d) => format!("{}@{}", image.split_once('@').map_or(image, |(n, _)| n), d.short()),
        None => image.to_string(),
    }
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
            order: None,
            drain: crate::settings::DEFAULT_DRAIN,
            restore_config: false,
            kind: crate::settings::TargetKind::Swarm,
            name: "web".into(),
            members: Vec::new(),
            whole_stack: false,
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
