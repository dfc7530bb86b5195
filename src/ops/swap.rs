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

use bollard::models::{ContainerCreateBody, ContainerInspectResponse, EndpointSettings};
use serde::Serialize;

use crate::adapters::docker::clone::{clone_config, docker_run_command};
use crate::adapters::docker::{
    BACKUP_SUFFIX, Engine, EngineError, LABEL_EMERGENCY, LABEL_TAG, LABEL_VERSION, NEXT_SUFFIX, PRE_EMERGENCY_SUFFIX,
    parse_restart_policy, restart_policy_of,
};
use crate::adapters::state::{self, Journal};
use crate::domain::history::{Operation, Outcome, Record};
use crate::domain::image::ImageRef;
use crate::ops::deployed::Deployed;
use crate::ops::fleet::Host;
use crate::ops::operation::{Failed, Run, Unit};
use crate::ops::validate;
use crate::settings::TargetSettings;

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

/// The containers of one target on one host, as a unit of an operation: pulled, each swapped
/// and validated in turn, put back by renames, committed by removing what was set aside.
pub struct Containers<'a> {
    pub host: &'a Host,
    pub plan: Plan,
    /// How many of the plan's containers were swapped (put back in reverse order).
    swapped: usize,
}

impl<'a> Containers<'a> {
    pub fn new(host: &'a Host, plan: Plan) -> Self {
        Self { host, plan, swapped: 0 }
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
            ..base.clone()
        }
    }

    async fn prepare(&self, run: &Run<'_>) -> anyhow::Result<bool> {
        let image = &self.plan.image;
        let progress = run.progress(self.place(), &format!("pulling {image}"));
        let pulled = self
            .host
            .engine
            .pull(image, run.auth, |line| progress.set(&format!("pulling: {line}")))
            .await
            .map_err(|e| anyhow::Error::new(e).context(format!("pull {image}")))?;
        progress.finish(&if pulled {
            format!("pulled {image}")
        } else {
            format!("{image} is already present")
        });
        Ok(pulled)
    }

    async fn apply(&mut self, run: &Run<'_>) -> Result<(), Failed> {
        let (engine, plan, health) = (&self.host.engine, &self.plan, run.health);
        for c in &plan.containers {
            run.say(
                self.place(),
                format!("swapping {}: {} -> {}", c.name, c.from.display(), plan.to.display()),
            );
            self.swapped += 1;
            // The probe's route (a forward over SSH) is made while the container is swapped.
            let (swap, ()) = tokio::join!(swap_one(engine, c), engine.prepare_probe(health.http.as_deref()));
            if let Err(e) = swap {
                return Err(Failed {
                    why: format!("swap {}: {e}", c.name),
                    ..Failed::default()
                });
            }
            let progress = run.progress(
                self.place(),
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
                    return Err(Failed {
                        why: if run.fleet {
                            format!("{} failed validation: {}", c.name, invalid.why)
                        } else {
                            invalid.why
                        },
                        logs,
                        probe_unreachable: invalid.probe_unreachable,
                        ..Failed::default()
                    });
                }
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
        let swapped = &self.plan.containers[..self.swapped];
        if !run.fleet {
            let names: Vec<&str> = self.plan.containers.iter().map(|c| c.name.as_str()).collect();
            run.printer
                .note(format!("putting the previous version back on {}", names.join(", ")));
        }
        let mut errors = Vec::new();
        for c in swapped.iter().rev() {
            if let Err(e) = revert_one(&self.host.engine, &c.name, Some(&c.restart_policy)).await {
                errors.push(format!("{}: {e}", c.name));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    async fn commit(&mut self, run: &Run<'_>, committed: &Record) -> Result<(), state::StateError> {
        let (engine, journal) = (&self.host.engine, &self.host.journal);
        let say = |m: String| run.say(&self.host.address, m);
        if let [only] = self.plan.containers.as_slice() {
            // One container: its set-aside one goes while the record is written. A run that ends
            // in between leaves the record, or the target on the new digest with nothing set
            // aside, which the next run records as done (`recover`); with several containers, one
            // without its set-aside container and another with it could only be half put back.
            // The removal's request is on its way before the append (which blocks) starts.
            let ((), committed) =
                tokio::join!(biased; remove_leftovers(engine, &say, only), async { journal.append(committed) });
            committed
        } else {
            let recorded = journal.append(committed);
            for c in &self.plan.containers {
                remove_leftovers(engine, &say, c).await;
            }
            recorded
        }
    }

    async fn reachable(&self) -> bool {
        self.host.engine.inspect("backtrack-reachability").await.is_ok()
    }
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
