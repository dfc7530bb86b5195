//! `backtrack emergency`, one host's part (`fleet_emergency.rs` runs it on every host of the
//! target, one or many): the seed's emergency rollback made safe. Stop the target's containers,
//! set them aside, and run the last known good image directly under their names with their
//! mounts, env and ports. No validation gate and no revert: this is what runs when all else has
//! failed. It works with the registry unreachable when the image is on this host (`mark-good`
//! keeps it there), and pulls it by digest otherwise. On a start-first target (see
//! `domain::order`) whose last known good image is already on the host, the replacement starts
//! beside the old container and takes over once it answers (or its `[health] timeout` ran out:
//! still no gate), so the app's boot costs no downtime; otherwise, and whenever it must pull,
//! the old container stops first, as it always did.

use chrono::Utc;
use serde::Serialize;

use super::App;
use crate::adapters::docker::clone::{clone_config, docker_run_command, without_aliases};
use crate::adapters::docker::{
    Engine, LABEL_EMERGENCY, LABEL_TAG, LABEL_VERSION, NEXT_SUFFIX, PRE_EMERGENCY_SUFFIX, parse_restart_policy,
};
use crate::adapters::registry::Registry;
use crate::cli::EmergencyArgs;
use crate::domain::history;
use crate::domain::image::ImageRef;
use crate::ops::mark::{local_lkg_reference, registry_repository};
use crate::ops::swap::undo_emergency_one;
use crate::ops::{catalog::Catalog, deployed, resolve};
use crate::output::Report;

#[derive(Debug, Serialize)]
pub(super) struct EmergencyReport {
    pub(super) dry_run: bool,
    pub(super) target: String,
    pub(super) last_known_good: ImageRef,
    /// Where the last known good pointer came from: "registry" or "journal".
    pub(super) source: &'static str,
    pub(super) image: String,
    pub(super) containers: Vec<String>,
    pub(super) commands: Vec<String>,
    pub(super) healthy: Option<bool>,
    pub(super) detail: Option<String>,
}

impl Report for EmergencyReport {
    fn human(&self) -> String {
        let what = format!(
            "{} ({}, from the {})",
            self.last_known_good.display(),
            self.last_known_good.digest.as_ref().map_or("-", |d| d.short()),
            self.source
        );
        if self.dry_run {
            let mut out = format!(
                "plan: EMERGENCY on {}: stop {} and run last known good {what} directly\nequivalent docker commands:\n",
                self.target,
                self.containers.join(", ")
            );
            for c in &self.commands {
                out.push_str(&format!("  {c}\n"));
            }
            out.push_str("dry run: nothing was changed");
            return out;
        }
        let health = match self.healthy {
            Some(true) => "healthy".to_string(),
            Some(false) => format!("NOT healthy: {}", self.detail.as_deref().unwrap_or("?")),
            None => "not checked".into(),
        };
        format!(
            "EMERGENCY: {} now runs last known good {what}; {health}\n\
             the stopped containers were kept as NAME{PRE_EMERGENCY_SUFFIX}; `backtrack deploy` or `rollback` leaves emergency mode",
            self.target
        )
    }
}

/// One host's emergency, planned: the image to run there, what runs now, each container's
/// replacement, the restart policies to give back, and the docker commands it stands for.
pub(super) struct HostPlan {
    pub image: String,
    pub current: Vec<crate::ops::deployed::Deployed>,
    pub plans: Vec<Replacement>,
    pub saved: std::collections::BTreeMap<String, String>,
    pub commands: Vec<String>,
    /// Start the replacement beside the old container (a start-first target, image present).
    pub start_first: bool,
}

/// Plans the emergency on one host: finds the image there (or pulls it), reads what runs, checks
/// the migration floor and prepares each container's replacement. Changes nothing.
pub(super) async fn plan_host(
    app: &App<'_>,
    engine: &Engine,
    journal: &crate::adapters::state::Journal,
    registry: &dyn Registry,
    lkg: &ImageRef,
    services: &[ServiceLkg],
    args: &EmergencyArgs,
) -> anyhow::Result<HostPlan> {
    let target = app.target()?;
    let project = app.project()?;
    let pointer = project.lkg_tag();
    let digest = lkg.digest.clone().expect("a last known good always has a digest");
    let (image, mut pulled) = local_image(engine, registry, &digest, &pointer).await?;
    // A release's other services: each its own image, found (or pulled) on this host.
    let found = futures::future::try_join_all(services.iter().skip(1).map(|s| {
        let pointer = &pointer;
        async move {
            let digest = s.lkg.digest.clone().expect("a service's last known good has a digest");
            let (image, pulled) = local_image(engine, s.registry.as_ref(), &digest, pointer).await?;
            anyhow::Ok((s.service.clone(), image, pulled))
        }
    }))
    .await?;
    let mut images = std::collections::BTreeMap::new();
    for (service, image, p) in found {
        pulled |= p;
        images.insert(service, image);
    }
    let current = deployed::read(engine, target, &project.registry.display()).await?;
    crate::ops::guard::check(
        engine,
        &current,
        lkg.version.as_deref(),
        format!("last known good {}", lkg.display()),
        args.force,
        args.reason.as_deref(),
        &app.printer,
    )
    .await?;
    let configs = crate::ops::config::Configs::new(
        &if args.restore_config {
            journal.read()?
        } else {
            Vec::new()
        },
        args.restore_config,
    );
    let mut plans = Vec::new();
    let mut saved_policies = std::collections::BTreeMap::new();
    for d in &current {
        let image = d.service.as_ref().and_then(|s| images.get(s)).unwrap_or(&image);
        let old = engine
            .inspect(&d.container.name)
            .await?
            .ok_or_else(|| anyhow::anyhow!("inspect {}", d.container.name))?;
        let old_image = engine.image_config(&d.container.image_id).await?.unwrap_or_default();
        let mut labels = vec![(LABEL_EMERGENCY, Utc::now().to_rfc3339()), (LABEL_TAG, pointer.clone())];
        if let Some(v) = &lkg.version {
            labels.push((LABEL_VERSION, v.clone()));
        }
        let (mut body, extra) = match configs.to_restore(lkg, &d.container.name)? {
            Some(then) => crate::adapters::docker::snapshot::restore(then, image, &labels).ok_or_else(|| {
                anyhow::anyhow!(
                    "restore the config of {}: its snapshot is not a container's",
                    d.container.name
                )
            })?,
            None => clone_config(&old, &old_image, image, &labels),
        };
        if lkg.version.is_none()
            && let Some(l) = body.labels.as_mut()
        {
            l.remove(LABEL_VERSION);
        }
        saved_policies.insert(
            d.container.name.clone(),
            crate::adapters::docker::restart_policy_of(&old),
        );
        if let Some(file) = &args.env_file {
            let extra_env = read_env_file(file)?;
            let env = body.env.get_or_insert_with(Vec::new);
            for line in extra_env {
                let key = line.split('=').next().unwrap_or_default().to_string();
                env.retain(|e| e.split('=').next() != Some(key.as_str()));
                env.push(line);
            }
        }
        plans.push((d.container.name.clone(), body, extra));
    }
    let names: Vec<String> = current.iter().map(|d| d.container.name.clone()).collect();
    let start_first = !pulled
        && crate::ops::swap::order_of(engine, target, &names)
            .await
            .is_ok_and(|d| d.start_first());
    let mut commands = vec![];
    for (name, body, _) in &plans {
        if start_first {
            commands.push(docker_run_command(&format!("{name}{NEXT_SUFFIX}"), body));
            commands.push(format!(
                "# once it answers (at most [health] timeout), wait {}, then:",
                crate::domain::duration::format(target.drain)
            ));
            commands.push(format!(
                "docker stop {name} && docker rename {name} {name}{PRE_EMERGENCY_SUFFIX} && docker rename {name}{NEXT_SUFFIX} {name}"
            ));
        } else {
            commands.push(format!(
                "docker stop {name} && docker rename {name} {name}{PRE_EMERGENCY_SUFFIX}"
            ));
            commands.push(docker_run_command(name, body));
        }
    }
    Ok(HostPlan {
        image,
        current,
        plans,
        saved: saved_policies,
        commands,
        start_first,
    })
}

/// The last known good image: the registry's tag when the registry answers, else the journal's
/// last successful mark-good (the registry may be what is broken).
pub(super) async fn find_last_known_good(
    printer: &crate::output::Printer,
    registry: &dyn Registry,
    ops: &[history::OperationView],
    pointer: &str,
) -> anyhow::Result<(ImageRef, &'static str)> {
    let from_registry = async {
        let catalog = Catalog::load(registry).await?;
        resolve::last_known_good(registry, &catalog, ops, pointer).await
    };
    match from_registry.await {
        Ok(Some(lkg)) => return Ok((lkg, "registry")),
        Ok(None) => {}
        Err(e) => printer.note(format!(
            "registry unreachable ({}); using the last known good from the journal",
            crate::error::render(&e)
        )),
    }
    history::marked_good(ops)
        .find(|t| t.digest.is_some())
        .map(|r| (r.clone(), "journal"))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "find a last known good version: none in the registry or the journal; mark one with `backtrack mark-good`"
            )
        })
}

/// One service of a release in an emergency: its registry and its last known good image.
pub(super) struct ServiceLkg {
    pub service: String,
    pub registry: std::sync::Arc<dyn Registry>,
    pub lkg: ImageRef,
}

/// Every service's last known good image for a release whose first service's is `lkg`: each
/// repository's pointer when its registry answers, else what the journal's last mark-good of the
/// release recorded for that service. Empty for one service.
pub(super) async fn release_last_known_good(
    target: &crate::settings::TargetSettings,
    registries: &[std::sync::Arc<dyn Registry>],
    ops: &[history::OperationView],
    lkg: &ImageRef,
    pointer: &str,
) -> anyhow::Result<Vec<ServiceLkg>> {
    // Every repository's pointer asked at once.
    let lookups = target
        .members
        .iter()
        .zip(registries)
        .enumerate()
        .map(|(i, (m, registry))| async move {
            let image = if i == 0 {
                lkg.clone()
            } else {
                match registry.tag_digest(pointer).await {
                    Ok(Some(digest)) => ImageRef {
                        tag: lkg.tag.clone(),
                        version: lkg.version.clone(),
                        digest: Some(digest),
                    },
                    Ok(None) => anyhow::bail!(
                        "find the last known good of {}: {} has no {pointer}; mark the release good \
                     (`backtrack mark-good VERSION` moves every service's pointer)",
                        m.name,
                        registry.name()
                    ),
                    Err(e) => match history::marked_good_service(ops, &m.name) {
                        Some(image) if image.digest.is_some() => image.clone(),
                        _ => {
                            return Err(anyhow::Error::new(e).context(format!(
                                "find the last known good of {} (its registry does not answer and the journal \
                             has no mark-good of the release naming it)",
                                m.name
                            )));
                        }
                    },
                }
            };
            Ok(ServiceLkg {
                service: m.name.clone(),
                registry: registry.clone(),
                lkg: image,
            })
        });
    futures::future::try_join_all(lookups).await
}

/// A local reference to the image: by digest if present, else the local last-known-good tag if it
/// is that digest, else pulled by digest.
async fn local_image(
    engine: &Engine,
    registry: &dyn Registry,
    digest: &crate::domain::digest::Digest,
    pointer: &str,
) -> anyhow::Result<(String, bool)> {
    let by_digest = registry.pull_reference(digest);
    if engine.image(&by_digest).await?.is_some() {
        return Ok((by_digest, false));
    }
    let (repo, tag) = local_lkg_reference(&registry_repository(registry), pointer);
    let local = format!("{repo}:{tag}");
    if let Some(img) = engine.image(&local).await?
        && img
            .repo_digests
            .unwrap_or_default()
            .iter()
            .any(|d| d.ends_with(&format!("@{digest}")))
    {
        return Ok((local, false));
    }
    let auth = registry.pull_auth().await.ok();
    engine.pull(&by_digest, auth.as_ref(), |_| {}).await?;
    Ok((by_digest, true))
}

/// One container to replace: its name, the create body and the networks to connect after.
pub(super) type Replacement = (
    String,
    bollard::models::ContainerCreateBody,
    Vec<(String, bollard::models::EndpointSettings)>,
);

/// Why a host's containers could not all be replaced, and whether its originals are back.
pub(super) struct NotReplaced {
    pub why: String,
    /// Every original container runs again under its name.
    pub put_back: bool,
}

/// Replaces every container, all or nothing: when one fails, every container already replaced
/// (and the failing one) gets its original back, so replicas never end up on mixed versions.
pub(super) async fn replace_all(
    engine: &Engine,
    plans: &[Replacement],
    saved: &std::collections::BTreeMap<String, String>,
    start_first: Option<StartFirst<'_>>,
) -> Result<(), NotReplaced> {
    for (i, (name, body, extra)) in plans.iter().enumerate() {
        let replaced = match start_first {
            Some(how) => replace_one_start_first(engine, name, body, extra, how).await,
            None => replace_one(engine, name, body, extra).await,
        };
        let Err(e) = replaced else {
            continue;
        };
        let problems = undo_all(engine, &plans[..=i], saved).await;
        let names: Vec<&str> = plans.iter().map(|p| p.0.as_str()).collect();
        if problems.is_empty() {
            return Err(NotReplaced {
                why: format!(
                    "replace {name}: {e}; every original container ({}) was put back",
                    names.join(", ")
                ),
                put_back: true,
            });
        }
        return Err(NotReplaced {
            why: format!(
                "replace {name}: {e}; putting the original containers back failed too: {}",
                problems.join("; ")
            ),
            put_back: false,
        });
    }
    Ok(())
}

/// Puts the original containers of `plans` back (last first), each with its saved restart
/// policy; what could not be put back, one line per container.
pub(super) async fn undo_all(
    engine: &Engine,
    plans: &[Replacement],
    saved: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (n, _, _) in plans.iter().rev() {
        let policy = saved.get(n).map(String::as_str);
        // A start-first replacement that had not taken over yet.
        if let Err(x) = engine.remove(&format!("{n}{NEXT_SUFFIX}")).await {
            problems.push(format!("{n}: {x}"));
            continue;
        }
        let undone = match undo_emergency_one(engine, n, policy).await {
            // Never set aside: the original is still under its name, maybe stopped.
            Ok(false) => engine.start(n).await,
            Ok(true) => Ok(()),
            Err(x) => Err(x),
        };
        if let Err(x) = undone {
            problems.push(format!("{n}: {x}"));
        }
    }
    problems
}

/// How a start-first emergency waits: up to the health timeout for the replacement to answer,
/// then the drain.
#[derive(Clone, Copy)]
pub(super) struct StartFirst<'a> {
    pub health: &'a crate::settings::HealthSettings,
    pub drain: std::time::Duration,
}

/// Starts the replacement as `NAME-backtrack-next` beside the old container, waits until it
/// answers at its own address (no gate: after `[health] timeout` it takes over anyway), lets it
/// join the aliases, and after the drain stops and sets aside the old one and gives it the name.
async fn replace_one_start_first(
    engine: &Engine,
    name: &str,
    body: &bollard::models::ContainerCreateBody,
    extra: &[(String, bollard::models::EndpointSettings)],
    how: StartFirst<'_>,
) -> Result<(), crate::adapters::docker::EngineError> {
    let next = format!("{name}{NEXT_SUFFIX}");
    let (bare, bare_extra, joins) = without_aliases(body, extra);
    engine.remove(&next).await?;
    engine.create(&next, bare, &bare_extra).await?;
    engine.start(&next).await?;
    if let Ok(health) = crate::ops::swap::aimed_at(engine, &next, how.health, &[]).await {
        let _ = crate::ops::validate::wait_valid(engine, std::slice::from_ref(&next), &health, None, |_| {}).await;
    }
    for (network, endpoint) in &joins {
        engine.rejoin_network(&next, network, endpoint).await?;
    }
    tokio::time::sleep(how.drain).await;
    set_original_aside(engine, name).await?;
    engine.rename(&next, name).await
}

/// Stops the target's container and sets it aside as the original, unless an earlier
/// emergency already did: then the container under the name is that one's replacement, and goes.
async fn set_original_aside(engine: &Engine, name: &str) -> Result<(), crate::adapters::docker::EngineError> {
    let aside = format!("{name}{PRE_EMERGENCY_SUFFIX}");
    engine.stop(name, 10).await?;
    if engine.inspect(&aside).await?.is_some() {
        engine.remove(name).await
    } else {
        engine.set_restart_policy(name, &parse_restart_policy("no")).await?;
        engine.rename(name, &aside).await
    }
}

async fn replace_one(
    engine: &Engine,
    name: &str,
    body: &bollard::models::ContainerCreateBody,
    extra: &[(String, bollard::models::EndpointSettings)],
) -> Result<(), crate::adapters::docker::EngineError> {
    set_original_aside(engine, name).await?;
    engine.create(name, body.clone(), extra).await?;
    engine.start(name).await
}

/// `KEY=VALUE` lines from an env file, read as docker compose reads `.env` files (dotenvy:
/// quotes, `export`, multi-line values, comments); variables are not expanded from this
/// process's environment.
fn read_env_file(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let what = |e: dotenvy::Error| anyhow::anyhow!("read env file {}: {e}", path.display());
    dotenvy::from_path_iter(path)
        .map_err(what)?
        .map(|item| item.map(|(k, v)| format!("{k}={v}")).map_err(what))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn env_files_are_read_as_compose_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prod.env");
        std::fs::write(
            &path,
            "# comment\nexport API_URL=https://api\nQUOTED=\"a b # not a comment\"\nSINGLE='$NOT_EXPANDED'\nMULTI=\"line1\nline2\"\nEMPTY=\n",
        )
        .unwrap();
        assert_eq!(
            super::read_env_file(&path).unwrap(),
            [
                "API_URL=https://api",
                "QUOTED=a b # not a comment",
                "SINGLE=$NOT_EXPANDED",
                "MULTI=line1\nline2",
                "EMPTY=",
            ]
        );
        std::fs::write(&path, "BROKEN=\"unterminated\n").unwrap();
        let err = super::read_env_file(&path).unwrap_err().to_string();
        assert!(err.contains("prod.env"), "{err}");
    }
}
