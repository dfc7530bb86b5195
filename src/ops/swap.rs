//! The swap: move the target's containers onto another image, validate, and put the previous
//! containers back if validation fails.
//!
//! Per container, one at a time, in one of two orders (`domain::order` decides which):
//! - **stop-first**: create the clone on the new image under a temporary name
//!   (`NAME-backtrack-next`) while the old one stops, rename the old one aside
//!   (`NAME-backtrack-prev`, restart policy off so a daemon restart cannot start it) and the new
//!   one to the old name, start it, validate. The service is down for the new version's boot.
//! - **start-first**: create and start the clone as `NAME-backtrack-next` beside the old one (same
//!   networks, aliases and labels, so a proxy resolving the alias sees both), validate it at its
//!   own address, let the old one serve for `[target] drain`, then stop it with its own stop signal
//!   and timeout, set it aside and give the new one the name. A failure before the old one stops
//!   removes the new container only: a failed version costs no downtime.
//!
//! The old containers are removed only after every container validated, so a revert is a rename
//! and a start, never a pull (start-first: the old one is started and validated before the new
//! one stops). The journal gets the intent before the first change, a `committed` record once
//! validation passed, and the result at the end. A run killed at any step leaves at most the old
//! container, set aside or not, and a `-next` one, which the next run's settling sorts out.

use std::collections::BTreeMap;

use bollard::models::{ContainerCreateBody, ContainerInspectResponse, EndpointSettings};
use serde::Serialize;

use crate::adapters::docker::clone::{clone_config, docker_run_command, without_aliases};
use crate::adapters::docker::snapshot;
use crate::adapters::docker::{
    BACKUP_SUFFIX, Engine, EngineError, LABEL_EMERGENCY, LABEL_TAG, LABEL_VERSION, NEXT_SUFFIX, PRE_EMERGENCY_SUFFIX,
    parse_restart_policy, restart_policy_of,
};
use crate::adapters::state::remote::HostProbe;
use crate::adapters::state::{self, Journal};
use crate::domain::history::{Operation, Outcome, Record};
use crate::domain::image::ImageRef;
use crate::domain::order::{self, Decision, Order};
use crate::ops::config::{ConfigPlan, Configs};
use crate::ops::deployed::Deployed;
use crate::ops::fleet::Host;
use crate::ops::operation::{Failed, Run, Unit};
use crate::ops::{interrupt, validate};
use crate::settings::{HealthSettings, TargetSettings};

/// One container's part of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerPlan {
    pub name: String,
    /// The release's service it belongs to (`[target] names`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// What it goes to: the plan's own, or in a release its service's image of the version.
    pub to: ImageRef,
    pub image: String,
    /// Whether `[health] http` is its probe: in a release only the first service's containers
    /// are probed (the others are validated by their state and version).
    #[serde(skip)]
    probe: bool,
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
    /// The container ports it exposes (where a start-first probe is aimed when the URL's port is
    /// not one of them).
    #[serde(skip)]
    exposed: Vec<u16>,
}

impl ContainerPlan {
    /// Its checks: `[health]`, without the HTTP probe for a release's service that is not probed.
    fn health(&self, health: &HealthSettings) -> HealthSettings {
        if self.probe {
            health.clone()
        } else {
            health.without_probe()
        }
    }
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
    /// Start-first or stop-first, and why.
    pub order: Decision,
    /// Start-first: how long the old container keeps serving once the new one is healthy.
    #[serde(rename = "drain_ms", serialize_with = "millis")]
    pub drain: std::time::Duration,
    /// How the image came to be, for the journal (e.g. rebuilt from Git).
    pub note: Option<String>,
    /// Today's config kept or the version's restored, and what differs.
    #[serde(flatten)]
    pub config: ConfigPlan,
}

impl Plan {
    /// Every image the plan pulls, once each, in the plan's order.
    pub fn images(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for c in &self.containers {
            if !out.contains(&c.image.as_str()) {
                out.push(&c.image);
            }
        }
        out
    }

    /// The docker commands a person could run by hand for the same change.
    pub fn manual_commands(&self) -> Vec<String> {
        let mut cmds: Vec<String> = self.images().iter().map(|i| format!("docker pull {i}")).collect();
        if self.order.start_first() {
            for c in &self.containers {
                cmds.push(c.docker_run.clone());
                cmds.push(format!(
                    "# validate {}{NEXT_SUFFIX} at its own address, wait {}, then:",
                    c.name,
                    crate::domain::duration::format(self.drain)
                ));
                cmds.push(format!(
                    "docker stop {0} && docker rename {0} {0}{BACKUP_SUFFIX} && docker rename {0}{NEXT_SUFFIX} {0}",
                    c.name
                ));
            }
        } else {
            for c in &self.containers {
                cmds.push(format!(
                    "docker stop {0} && docker rename {0} {0}{BACKUP_SUFFIX}",
                    c.name
                ));
                cmds.push(c.docker_run.clone());
            }
            cmds.push("# validate, then:".into());
        }
        if self.order.start_first() {
            cmds.push("# once every container validated:".into());
        }
        for c in &self.containers {
            cmds.push(format!("docker rm {}{BACKUP_SUFFIX}", c.name));
        }
        cmds
    }
}

fn millis<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The order asked for (`--order`, else `[target] order`, else `auto`) and where it came from.
pub fn order_asked(flag: Option<Order>, target: &TargetSettings) -> (Order, &'static str) {
    match (flag, target.order) {
        (Some(o), _) => (o, "--order"),
        (None, Some(o)) => (o, "[target] order"),
        (None, None) => (Order::Auto, "[target] order"),
    }
}

/// The order a swap of `names` would take as configured (no `--order`), for `status` and
/// `doctor`: `Err` says why it could not be read, or why start-first as configured cannot run.
pub async fn order_of(engine: &Engine, target: &TargetSettings, names: &[String]) -> Result<Decision, String> {
    let mut facts = Vec::with_capacity(names.len());
    for name in names {
        match engine.inspect(name).await {
            Ok(Some(c)) => facts.push(order_facts(name, &c)),
            Ok(None) => return Err(format!("no container {name}")),
            Err(e) => return Err(e.to_string()),
        }
    }
    let (order, asked) = order_asked(None, target);
    order::decide(order, asked, &facts)
}

/// What decides a container's swap order: the host ports it publishes and its networks.
fn order_facts(name: &str, c: &ContainerInspectResponse) -> order::Facts {
    let host = c.host_config.as_ref();
    let mode = host.and_then(|h| h.network_mode.clone()).unwrap_or_default();
    let mut published: Vec<String> = host
        .and_then(|h| h.port_bindings.as_ref())
        .into_iter()
        .flatten()
        .flat_map(|(port, b)| {
            b.iter().flatten().map(move |b| {
                let ip = b
                    .host_ip
                    .as_deref()
                    .filter(|i| !i.is_empty())
                    .map(|i| format!("{i}:"))
                    .unwrap_or_default();
                format!("{ip}{}->{port}", b.host_port.as_deref().unwrap_or(""))
            })
        })
        .collect();
    if host.and_then(|h| h.publish_all_ports) == Some(true) {
        published.push("(all exposed ports, -P)".into());
    }
    published.sort();
    let mut user_networks: Vec<String> = c
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .into_iter()
        .flatten()
        .map(|(n, _)| n.clone())
        .filter(|n| !matches!(n.as_str(), "bridge" | "host" | "none" | "default") && !n.starts_with("container:"))
        .collect();
    user_networks.sort();
    order::Facts {
        name: name.to_string(),
        published,
        user_networks,
        host_network: mode == "host" || mode.starts_with("container:"),
    }
}

/// Computes the plan: inspects the current containers and derives each clone (on today's config,
/// or on the one `to` last ran with when `configs` restores).
#[allow(clippy::too_many_arguments)]
pub async fn plan(
    engine: &Engine,
    op: Operation,
    target: &TargetSettings,
    current: &[Deployed],
    to: &ImageRef,
    image: &str,
    order: (Order, &str),
    configs: &Configs,
) -> anyhow::Result<Plan> {
    let each = vec![(to.clone(), image.to_string()); current.len()];
    plan_each(engine, op, target, current, &each, order, configs).await
}

/// [`plan`] with each container's own image (`each[i]` for `current[i]`): a release's services
/// come from repositories of their own. The order is decided over every container at once; the
/// plan's `to` and `image` are the first container's.
pub async fn plan_each(
    engine: &Engine,
    op: Operation,
    target: &TargetSettings,
    current: &[Deployed],
    each: &[(ImageRef, String)],
    order: (Order, &str),
    configs: &Configs,
) -> anyhow::Result<Plan> {
    assert_eq!(current.len(), each.len(), "one image per container");
    let (to, image) = match each.first() {
        Some((to, image)) => (to, image.as_str()),
        None => anyhow::bail!("plan a swap of {}: it runs no container", target.display()),
    };
    let first_service = current.first().and_then(|d| d.service.clone());
    let mut config = ConfigPlan::new(configs.restore);
    let mut containers = Vec::with_capacity(current.len());
    let mut facts = Vec::with_capacity(current.len());
    let mut bodies = Vec::with_capacity(current.len());
    for (d, (to, image)) in current.iter().zip(each) {
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
        let now = snapshot::of(&body, &extra_networks);
        let (body, extra_networks) = match configs.to_restore(to, name)? {
            None => (body, extra_networks),
            Some(then) => {
                snapshot::restore(then, image, &version_labels(to)).ok_or_else(|| EngineError::Container {
                    action: "restore the config of",
                    container: name.clone(),
                    message: "its snapshot in the journal is not a container's".into(),
                })?
            }
        };
        let after = snapshot::of(&body, &extra_networks);
        config.add(
            configs,
            name,
            now,
            configs.then(to, name).map(|(_, v)| v),
            after,
            snapshot::flatten,
        );
        let stop_timeout = old.config.as_ref().and_then(|c| c.stop_timeout).unwrap_or(10) as i32;
        let restart_policy = restart_policy_of(&old);
        let exposed = old
            .config
            .as_ref()
            .and_then(|c| c.exposed_ports.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| p.split('/').next()?.parse::<u16>().ok())
            .collect();
        facts.push(order_facts(name, &old));
        bodies.push((
            (d, to, image),
            old.id.clone().unwrap_or_else(|| name.clone()),
            body,
            extra_networks,
            stop_timeout,
            restart_policy,
            exposed,
        ));
    }
    let decision = order::decide(order.0, order.1, &facts).map_err(|why| EngineError::Container {
        action: "swap",
        container: current.first().map(|d| d.container.name.clone()).unwrap_or_default(),
        message: why,
    })?;
    for ((d, to, image), id, body, extra_networks, stop_timeout, restart_policy, exposed) in bodies {
        let name = &d.container.name;
        let created_as = if decision.start_first() {
            format!("{name}{NEXT_SUFFIX}")
        } else {
            name.clone()
        };
        containers.push(ContainerPlan {
            name: name.clone(),
            service: d.service.clone(),
            to: to.clone(),
            image: image.clone(),
            probe: d.service == first_service,
            id,
            from: d.image.clone(),
            docker_run: docker_run_command(&created_as, &body),
            body,
            extra_networks,
            stop_timeout,
            restart_policy,
            exposed,
        });
    }
    Ok(Plan {
        op,
        target: target.display(),
        from: current.first().map(|d| d.image.clone()).unwrap_or_default(),
        to: to.clone(),
        image: image.to_string(),
        containers,
        order: decision,
        drain: target.drain,
        note: None,
        config,
    })
}

/// The labels a container of `to` carries: its version and the tag it was chosen by.
pub fn version_labels(to: &ImageRef) -> Vec<(&'static str, String)> {
    let mut labels = Vec::new();
    if let Some(v) = &to.version {
        labels.push((LABEL_VERSION, v.clone()));
    }
    if let Some(tag) = &to.tag {
        labels.push((LABEL_TAG, tag.clone()));
    }
    labels
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
    let old_image = engine.image_config(image_id).await?.unwrap_or_default();
    let labels = version_labels(to);
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

/// The containers of one target on one host, as a unit of an operation: pulled, each swapped
/// and validated in turn, put back by renames, committed by removing what was set aside.
pub struct Containers<'a> {
    pub host: &'a Host,
    pub plan: Plan,
    /// Which of the plan's containers a swap may have touched (put back in reverse order).
    touched: Vec<bool>,
    /// A release: the service whose container failed (`Unit::failed_services`).
    failed_service: Option<String>,
    /// For a stop-first swap on a remote host: the gate (a channel to the host that writes the
    /// intent, then hands the swap's calls to the engine), opened by the host ahead
    /// (`Host::ready_gate`), taken as the intent is recorded.
    gate: std::sync::Mutex<Option<crate::adapters::ssh::RemoteChannel>>,
    /// The intent `record` left for the first swap to send through the gate.
    deferred: Option<Record>,
}

impl<'a> Containers<'a> {
    pub fn new(host: &'a Host, plan: Plan) -> Self {
        Self {
            host,
            touched: vec![false; plan.containers.len()],
            failed_service: None,
            plan,
            gate: std::sync::Mutex::default(),
            deferred: None,
        }
    }

    /// Swaps one container and validates it: start-first beside the old one, or stop-first (its
    /// intent, when it is the first swap of a gated one, sent through `gate` with its calls).
    async fn swap_and_validate(
        &self,
        run: &Run<'_>,
        c: &ContainerPlan,
        intent: Option<Record>,
        gate: Option<crate::adapters::ssh::RemoteChannel>,
    ) -> Result<(), Failed> {
        let (engine, plan, health) = (&self.host.engine, &self.plan, run.health);
        if plan.order.start_first() {
            return start_first_one(run, self.place(), engine, plan, c).await;
        }
        run.say(
            self.place(),
            format!("swapping {}: {} -> {}", c.name, c.from.display(), c.to.display()),
        );
        let health = c.health(health);
        let swapping = async {
            match &intent {
                Some(intent) => {
                    swap_one_gated(engine, &self.host.journal, c, intent, gate, health.http.as_deref()).await
                }
                None => Ok(swap_one(engine, c).await),
            }
        };
        // The probe's route (a forward over SSH) is made while the container is swapped.
        let (swap, ()) = tokio::join!(swapping, engine.prepare_probe(health.http.as_deref()));
        let seen = swap?.map_err(|e| Failed {
            why: format!("swap {}: {e}", c.name),
            ..Failed::default()
        })?;
        self.host.phase("validate");
        let progress = run.progress(
            self.place(),
            &format!(
                "validating {} (timeout {})",
                c.name,
                crate::domain::duration::format(health.timeout)
            ),
        );
        let result = validate::wait_valid_seen(
            engine,
            std::slice::from_ref(&c.name),
            &health,
            c.to.version.as_deref(),
            seen,
            |s| progress.set(&format!("validating {}: {s}", c.name)),
        )
        .await;
        match result {
            Ok(()) => {
                progress.finish(&format!("{} is healthy on {}", c.name, c.to.display()));
                Ok(())
            }
            Err(invalid) => {
                progress.finish(&format!("{} failed validation: {}", c.name, invalid.why));
                let logs = engine.logs_tail(&c.name, 20).await;
                Err(Failed {
                    // Named when the target has several: hosts, or a release's services.
                    why: if run.fleet || c.service.is_some() {
                        format!("{} failed validation: {}", c.name, invalid.why)
                    } else {
                        invalid.why
                    },
                    logs,
                    probe_unreachable: invalid.probe_unreachable,
                    ..Failed::default()
                })
            }
        }
    }

    /// Whether the intent can go with the first swap's calls, in one round trip: a stop-first
    /// swap of a target whose journal and engine are on a host across a network.
    fn gates(&self) -> bool {
        self.host.engine.pipelines()
            && self.host.engine.far()
            && !self.plan.order.start_first()
            && self.host.journal.remote_dir().is_some()
    }
}

#[async_trait::async_trait]
impl Unit for Containers<'_> {
    fn place(&self) -> &str {
        &self.host.address
    }

    fn journal(&self) -> &Journal {
        &self.host.journal
    }

    fn intent(&self, base: &Record) -> Record {
        let plan = &self.plan;
        Record {
            target: Some(plan.target.clone()),
            // What this host ran (on a fleet, hosts may have drifted apart).
            from: Some(plan.from.clone()),
            containers: plan.containers.iter().map(|c| c.name.clone()).collect(),
            saved: plan
                .containers
                .iter()
                .map(|c| (c.name.clone(), c.restart_policy.clone()))
                .collect::<BTreeMap<_, _>>(),
            detail: base.detail.clone().or(plan.note.clone()),
            configs: plan.config.pairs.clone(),
            snapshots: plan.config.new_snapshots.clone(),
            ..base.clone()
        }
    }

    async fn record(&mut self, intent: &Record) -> Result<(), state::StateError> {
        let gate = self.host.take_gate().filter(|_| self.gates());
        let gate_open = gate.is_some();
        if let Ok(g) = self.gate.get_mut() {
            *g = gate;
        }
        if gate_open {
            // Written by the gate, with the first swap's calls (`apply`).
            self.deferred = Some(intent.clone());
            return Ok(());
        }
        self.host.journal.append_all_aside(&[intent]).await
    }

    async fn prepare(&self, run: &Run<'_>) -> anyhow::Result<bool> {
        let images = self.plan.images();
        let pull = |image: &str| {
            let image = image.to_string();
            async move {
                let progress = run.progress(self.place(), &format!("pulling {image}"));
                let pulled = self
                    .host
                    .engine
                    .pull(&image, run.auth, |line| progress.set(&format!("pulling: {line}")))
                    .await
                    .map_err(|e| anyhow::Error::new(e).context(format!("pull {image}")))?;
                progress.finish(&if pulled {
                    format!("pulled {image}")
                } else {
                    format!("{image} is already present")
                });
                anyhow::Ok(pulled)
            }
        };
        // The swap's connection is opened meanwhile (for an engine that pipelines its steps); a
        // release's images are pulled at once.
        let (pulled, ()) = tokio::join!(
            futures::future::join_all(images.iter().map(|i| pull(i))),
            self.host.engine.ready_pipeline()
        );
        let mut any = false;
        for p in pulled {
            any |= p?;
        }
        Ok(any)
    }

    async fn apply(&mut self, run: &Run<'_>) -> Result<(), Failed> {
        let plan = &self.plan;
        run.say(self.place(), format!("{}: {}", plan.order.order, plan.order.why));
        let groups = service_groups(&plan.containers);
        // A release's services swap at once (each service's containers one after another); not
        // while the intent waits to go through the gate with the first swap.
        if groups.len() > 1 && self.deferred.is_none() {
            self.touched.iter_mut().for_each(|t| *t = true);
            let this = &*self;
            let swaps = groups.iter().cloned().map(|range| async move {
                for c in &this.plan.containers[range] {
                    this.swap_and_validate(run, c, None, None).await?;
                }
                Ok::<(), Failed>(())
            });
            let results = futures::future::join_all(swaps).await;
            let failed = results.iter().position(Result::is_err);
            self.failed_service = failed.and_then(|g| self.plan.containers[groups[g].start].service.clone());
            return results.into_iter().find(Result::is_err).unwrap_or(Ok(()));
        }
        for i in 0..self.plan.containers.len() {
            self.touched[i] = true;
            let intent = self.deferred.take();
            let gate = self.gate.get_mut().ok().and_then(Option::take);
            if let Err(f) = self
                .swap_and_validate(run, &self.plan.containers[i], intent, gate)
                .await
            {
                self.failed_service = self.plan.containers[i].service.clone();
                return Err(f);
            }
        }
        Ok(())
    }

    async fn soak(&self, run: &Run<'_>, duration: std::time::Duration) -> Result<(), String> {
        let names: Vec<String> = self.plan.containers.iter().map(|c| c.name.clone()).collect();
        validate::soak(&self.host.engine, &names, run.health, duration)
            .await
            .map_err(|invalid| invalid.why)
    }

    async fn put_back(&mut self, run: &Run<'_>) -> Result<(), String> {
        let swapped: Vec<&ContainerPlan> = self
            .plan
            .containers
            .iter()
            .zip(&self.touched)
            .filter_map(|(c, t)| t.then_some(c))
            .collect();
        if !run.fleet {
            let names: Vec<&str> = self.plan.containers.iter().map(|c| c.name.as_str()).collect();
            run.printer
                .note(format!("putting the previous version back on {}", names.join(", ")));
        }
        let mut errors = Vec::new();
        for c in swapped.iter().rev() {
            let reverted = if self.plan.order.start_first() {
                revert_start_first(run, self.place(), &self.host.engine, &self.plan, c).await
            } else {
                revert_one(&self.host.engine, &c.name, Some(&c.restart_policy)).await
            };
            if let Err(e) = reverted {
                errors.push(format!("{}: {e}", c.name));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    async fn commit(&mut self, run: &Run<'_>, records: &[&Record]) -> Result<(), state::StateError> {
        let (engine, journal) = (&self.host.engine, &self.host.journal);
        let say = |m: String| run.say(&self.host.address, m);
        if let [only] = self.plan.containers.as_slice() {
            // One container: its set-aside one goes while the record is written. A run that ends
            // in between leaves the record, or the target on the new digest with nothing set
            // aside, which the next run records as done (`recover`); with several containers, one
            // without its set-aside container and another with it could only be half put back.
            // The removal's request is on its way before the append starts.
            let ((), committed) =
                tokio::join!(biased; remove_leftovers(engine, &say, only), journal.append_all_aside(records));
            committed
        } else {
            let recorded = journal.append_all_aside(records).await;
            for c in &self.plan.containers {
                remove_leftovers(engine, &say, c).await;
            }
            recorded
        }
    }

    async fn reachable(&self) -> bool {
        self.host.engine.inspect("backtrack-reachability").await.is_ok()
    }

    fn phase(&self, phase: &'static str) {
        self.host.phase(phase);
    }

    fn failed_services(&self) -> Vec<String> {
        self.failed_service.iter().cloned().collect()
    }
}

/// The runs of consecutive containers of one service (a release's services; one run for one
/// service), as index ranges into `containers`.
fn service_groups(containers: &[ContainerPlan]) -> Vec<std::ops::Range<usize>> {
    let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        match groups.last_mut() {
            Some(g) if containers[g.start].service == c.service => g.end = i + 1,
            _ => groups.push(i..i + 1),
        }
    }
    groups
}

/// Removes what a validated swap of `c` leaves, both at once: the previous container, and the
/// original one an emergency set aside. A failure is a warning: the swap itself is done.
async fn remove_leftovers(engine: &Engine, say: &impl Fn(String), c: &ContainerPlan) {
    let leftovers = [
        format!("{}{BACKUP_SUFFIX}", c.name),
        format!("{}{PRE_EMERGENCY_SUFFIX}", c.name),
    ];
    let removed = futures::future::join_all(leftovers.iter().map(|l| engine.remove(l))).await;
    for (leftover, result) in leftovers.iter().zip(removed) {
        if let Err(e) = result {
            say(format!("warning: could not remove {leftover}: {e}"));
        }
    }
}

/// A start-first swap of one container: the clone starts as `NAME-backtrack-next` beside the old
/// one and is validated at its own address; only then, after the drain, does the old one stop and
/// go aside and the new one take the name. On error the caller puts this container back too
/// (before the old one stopped, that only removes the new one).
async fn start_first_one(
    run: &Run<'_>,
    place: &str,
    engine: &Engine,
    plan: &Plan,
    c: &ContainerPlan,
) -> Result<(), Failed> {
    let next = format!("{}{NEXT_SUFFIX}", c.name);
    let failed = |why: String| Failed {
        why,
        ..Failed::default()
    };
    run.say(
        place,
        format!(
            "starting {next} on {} beside {} ({}), which keeps serving",
            c.to.display(),
            c.name,
            c.from.display()
        ),
    );
    let (body, extra, joins) = without_aliases(&c.body, &c.extra_networks);
    let started = async {
        engine.remove(&next).await?;
        engine.create(&next, body, &extra).await?;
        engine.start(&next).await
    };
    started
        .await
        .map_err(|e| failed(format!("start {next}: {e}; {} kept serving", c.name)))?;
    let phase = |p| {
        if let Some(w) = engine.wire() {
            w.phase(p);
        }
    };
    phase("validate");
    let health = aimed_at(engine, &next, &c.health(run.health), &c.exposed)
        .await
        .map_err(|why| failed(format!("validate {next}: {why}; {} kept serving", c.name)))?;
    let progress = run.progress(
        place,
        &format!(
            "validating {next} at its own address (timeout {})",
            crate::domain::duration::format(health.timeout)
        ),
    );
    let result = validate::wait_valid(
        engine,
        std::slice::from_ref(&next),
        &health,
        c.to.version.as_deref(),
        |s| progress.set(&format!("validating {next}: {s}")),
    )
    .await;
    if let Err(invalid) = result {
        progress.finish(&format!("{next} failed validation: {}", invalid.why));
        let logs = engine.logs_tail(&next, 20).await;
        let hint = if invalid.probe_unreachable {
            format!(
                "; the probe goes to the new container's own address ({}): if the app listens on \
                 another port inside its container, set [health] port",
                health.http.as_deref().unwrap_or_default()
            )
        } else {
            String::new()
        };
        return Err(Failed {
            why: format!("{}{hint} (the new container; {} kept serving)", invalid.why, c.name),
            logs,
            probe_unreachable: invalid.probe_unreachable,
            ..Failed::default()
        });
    }
    // Healthy: now it joins the aliases a proxy finds the service by.
    for (network, endpoint) in &joins {
        engine
            .rejoin_network(&next, network, endpoint)
            .await
            .map_err(|e| failed(format!("{e}; {} kept serving", c.name)))?;
    }
    progress.finish(&format!(
        "{next} is healthy on {} and joined the aliases; {} serves {} more",
        c.to.display(),
        c.name,
        crate::domain::duration::format(plan.drain)
    ));
    drain(plan.drain).await.map_err(failed)?;
    phase("swap");
    hand_over(engine, c)
        .await
        .map_err(|e| failed(format!("swap {}: {e}", c.name)))
}

/// Waits `drain` (the old container keeps serving while a proxy notices the new one); Ctrl-C ends
/// it as a failure, so the swap is put back.
async fn drain(drain: std::time::Duration) -> Result<(), String> {
    let until = std::time::Instant::now() + drain;
    while std::time::Instant::now() < until {
        if interrupt::requested() {
            return Err("interrupted".into());
        }
        tokio::time::sleep((until - std::time::Instant::now()).min(std::time::Duration::from_millis(50))).await;
    }
    Ok(())
}

/// The end of a start-first swap: the old container stops (its own stop signal and timeout), goes
/// aside with its restart policy off, and the new one, already serving, takes its name.
async fn hand_over(engine: &Engine, c: &ContainerPlan) -> Result<(), EngineError> {
    let (backup, next) = (format!("{}{BACKUP_SUFFIX}", c.name), format!("{}{NEXT_SUFFIX}", c.name));
    engine.stop(&c.name, c.stop_timeout).await?;
    set_aside(engine, c, &backup).await?;
    engine.rename(&next, &c.name).await
}

/// `health` with its HTTP probe aimed at container `name`'s own address (and the container port
/// the URL names, else the one port it exposes), so that what answers is that container and not
/// whatever the URL reaches now (a proxy, the old container).
pub(crate) async fn aimed_at(
    engine: &Engine,
    name: &str,
    health: &HealthSettings,
    exposed: &[u16],
) -> Result<HealthSettings, String> {
    let mut aimed = health.clone();
    let Some(url) = &health.http else {
        return Ok(aimed);
    };
    let inspected = engine.inspect(name).await.map_err(|e| e.to_string())?;
    let running = inspected
        .as_ref()
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.running)
        .unwrap_or(false);
    if !running {
        // Exited already (no address any more): validation reports how it ended.
        aimed.http = None;
        return Ok(aimed);
    }
    let ip = inspected
        .as_ref()
        .and_then(validate::address_of)
        .ok_or_else(|| format!("{name} has no address of its own on a network to send {url} to"))?;
    let url_port = reqwest::Url::parse(url).ok().and_then(|u| u.port_or_known_default());
    let port = match (health.port, exposed) {
        (Some(p), _) => Some(p),
        (None, [only]) if Some(*only) != url_port => Some(*only),
        _ => None,
    };
    let mut to = validate::copy_probe_url(url, None, &ip)?;
    if let Some(port) = port {
        let mut u = reqwest::Url::parse(&to).map_err(|e| e.to_string())?;
        u.set_port(Some(port))
            .map_err(|()| format!("aim {url} at port {port}"))?;
        to = u.to_string();
    }
    aimed.http = Some(to);
    Ok(aimed)
}

/// Puts one container of a start-first swap back. Before its old container was set aside, that is
/// removing the new one (the old one kept serving). After, it is start-first too: the old one is
/// started and validated at its own address, serves beside the new one for the drain, then the new
/// one stops and goes and the old one takes its name back. Safe to repeat.
async fn revert_start_first(
    run: &Run<'_>,
    place: &str,
    engine: &Engine,
    plan: &Plan,
    c: &ContainerPlan,
) -> Result<(), EngineError> {
    let backup = format!("{}{BACKUP_SUFFIX}", c.name);
    if engine.inspect(&backup).await?.is_none() {
        return revert_one(engine, &c.name, Some(&c.restart_policy)).await;
    }
    engine
        .set_restart_policy(&backup, &parse_restart_policy(&c.restart_policy))
        .await?;
    engine.start(&backup).await?;
    match aimed_at(engine, &backup, run.health, &c.exposed).await {
        Ok(health) => {
            if let Err(invalid) =
                validate::wait_valid(engine, std::slice::from_ref(&backup), &health, None, |_| {}).await
            {
                run.say(
                    place,
                    format!(
                        "warning: could not validate the previous container {backup} again ({}); putting it back anyway",
                        invalid.why
                    ),
                );
            }
        }
        Err(why) => run.say(
            place,
            format!("warning: {why}; putting {backup} back without validating it"),
        ),
    }
    // The drain is waited for whatever happened: Ctrl-C must not stop a put-back halfway.
    tokio::time::sleep(plan.drain).await;
    // The new container is under the name, or still under the temporary one if the swap failed
    // in between: it stops (gracefully) and goes, and the old one takes its name back.
    for new in [c.name.clone(), format!("{}{NEXT_SUFFIX}", c.name)] {
        if engine.inspect(&new).await?.is_some() {
            engine.stop(&new, c.stop_timeout).await?;
            engine.remove(&new).await?;
        }
    }
    engine.rename(&backup, &c.name).await
}

/// The old container goes aside: its restart policy off (a daemon restart must not start it beside
/// the new one; by id, as the name is changing) while it is renamed.
async fn set_aside(engine: &Engine, c: &ContainerPlan, backup: &str) -> Result<(), EngineError> {
    let no = parse_restart_policy("no");
    let (policy, renamed) = tokio::join!(engine.set_restart_policy(&c.id, &no), engine.rename(&c.name, backup));
    policy.map_err(|e| match e {
        EngineError::Container { action, message, .. } => EngineError::Container {
            action,
            container: c.name.clone(),
            message,
        },
        other => other,
    })?;
    renamed
}

/// Stop, set aside, create the clone, start. On error the caller reverts this container too.
/// What it saw of the new container on the way (across a network, its state as the swap left it)
/// is validation's first look.
pub async fn swap_one(engine: &Engine, c: &ContainerPlan) -> Result<validate::Seen, EngineError> {
    // Across a network, one round trip for every step; nearby, the create is off the critical
    // path, beside the stop.
    if engine.pipelines() && engine.far() {
        return swap_one_pipelined(engine, c).await;
    }
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
    // The old one's restart policy goes off before the new one starts, while it is set aside.
    set_aside(engine, c, &backup).await?;
    engine.rename(&next, &c.name).await?;
    engine.start(&c.name).await?;
    Ok(validate::Seen::default())
}

/// `swap_one`'s steps for an engine across a network, sent as one pipeline (one round trip): the
/// old container's restart policy off (by id), the clone created under the temporary name (one an
/// interrupted run left is removed first) with its other networks, then the old one stopped and
/// set aside and the clone named and started, and a last look at it. Every step is sent, so after
/// a failing one the rest still ran: the first failure is the answer, and the caller's revert
/// (which looks at what is there, `revert_one`) puts the old container back from whatever state
/// they left.
async fn swap_one_pipelined(engine: &Engine, c: &ContainerPlan) -> Result<validate::Seen, EngineError> {
    seen(engine.pipeline(&swap_calls(c)).await, None, engine, None, c)
}

/// The first swap of a remote stop-first swap, in one round trip with its intent: through the
/// gate on the host (`state::remote::GATE`), which writes and syncs `intent` in the target's
/// journal before it hands `swap_one_pipelined`'s calls to the engine, so the journal still comes
/// first. The outer error: the intent could not be written, and nothing changed. Without a gate
/// (it could not be opened, or the host has no docker CLI), the intent is appended first, then
/// the calls go as one pipeline. With a `probe` URL, the gate probes it from the host once the
/// calls are answered: validation's first probe, in the same round trip.
async fn swap_one_gated(
    engine: &Engine,
    journal: &Journal,
    c: &ContainerPlan,
    intent: &Record,
    gate: Option<crate::adapters::ssh::RemoteChannel>,
    probe: Option<&str>,
) -> Result<Result<validate::Seen, EngineError>, Failed> {
    use crate::adapters::docker::pipeline::Gated;
    let unrecorded = |e: state::StateError| Failed {
        why: format!("record the intent: {e}"),
        nothing_changed: true,
        unrecorded: true,
        error: Some(e.into()),
        ..Failed::default()
    };
    let appended_first = |journal: &Journal| journal.append(intent).map_err(unrecorded);
    let (Some(gate), Some((_, preamble))) = (gate, journal.gate(intent, probe).map_err(unrecorded)?) else {
        appended_first(journal)?;
        return Ok(swap_one(engine, c).await);
    };
    let crate::adapters::ssh::RemoteChannel { child, stdin, stdout } = gate;
    let gated = engine.pipeline_gated(stdout, stdin, &preamble, &swap_calls(c)).await;
    drop(child);
    match gated {
        Gated::Ran { answers, probe: said } => {
            journal.gated(intent);
            Ok(seen(answers, said, engine, probe, c))
        }
        Gated::Refused(why) => Err(unrecorded(
            crate::adapters::ssh::SshError::Remote {
                host: engine.host().to_string(),
                what: "append to the journal".into(),
                detail: why,
            }
            .into(),
        )),
        Gated::NoDocker(_) => {
            appended_first(journal)?;
            Ok(swap_one(engine, c).await)
        }
    }
}

/// The calls of one stop-first swap of `c`, in order (see `swap_one_pipelined`).
fn swap_calls(c: &ContainerPlan) -> Vec<crate::adapters::docker::pipeline::Call> {
    use crate::adapters::docker::pipeline::Call;
    let backup = format!("{}{BACKUP_SUFFIX}", c.name);
    let next = format!("{}{NEXT_SUFFIX}", c.name);
    let mut calls = vec![
        Call::Policy {
            name: c.id.clone(),
            policy: parse_restart_policy("no"),
        },
        Call::Remove { name: next.clone() },
        Call::Create {
            name: next.clone(),
            body: Box::new(c.body.clone()),
        },
    ];
    calls.extend(c.extra_networks.iter().map(|(network, endpoint)| Call::Connect {
        name: next.clone(),
        network: network.clone(),
        endpoint: Box::new(endpoint.clone()),
    }));
    calls.extend([
        Call::Stop {
            name: c.name.clone(),
            timeout: c.stop_timeout,
        },
        Call::Rename {
            name: c.name.clone(),
            to: backup,
        },
        Call::Rename {
            name: next,
            to: c.name.clone(),
        },
        Call::Start { name: c.name.clone() },
        Call::Look { name: c.name.clone() },
    ]);
    calls
}

/// The first failing call's error, if any; else what the last call (`Call::Look`) saw of the new
/// container and, behind a gate asked to probe `url`, what its probe (`said`) found.
fn seen(
    answers: Vec<Result<Vec<u8>, EngineError>>,
    said: Option<String>,
    engine: &Engine,
    url: Option<&str>,
    c: &ContainerPlan,
) -> Result<validate::Seen, EngineError> {
    let look = answers
        .last()
        .and_then(|a| a.as_ref().ok())
        .and_then(|body| serde_json::from_slice(body).ok());
    first_failure(answers, c)?;
    if let (Some(url), Some(line)) = (url, &said) {
        tracing::debug!("{}: probe {url} from the host, after the calls: {line}", engine.host());
    }
    if said.as_deref() == Some("PROBE none") {
        engine.host_cannot_probe();
    }
    let probe = match (url, said.as_deref().and_then(HostProbe::parse)) {
        (Some(url), Some(p)) => Some(validate::from_host(engine, url, p.into_answer())),
        _ => None,
    };
    Ok(validate::Seen { look, probe })
}

/// The first failing call's error, if any (the policy, set by id, named by the container).
fn first_failure(answers: Vec<Result<Vec<u8>, EngineError>>, c: &ContainerPlan) -> Result<(), EngineError> {
    match answers.into_iter().find_map(Result::err) {
        None => Ok(()),
        Some(EngineError::Container {
            action,
            container,
            message,
        }) if container == c.id => Err(EngineError::Container {
            action,
            container: c.name.clone(),
            message,
        }),
        Some(e) => Err(e),
    }
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
