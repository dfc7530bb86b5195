//! A release of several services (`[target] names`): the selector is resolved once, in the first
//! service's repository, to a version; this finds that version's image in every service's
//! repository, or refuses, naming each service and repository that lacks it, before anything
//! changes. `Together` makes a release's units on one host (a Swarm stack's services) one unit
//! of the operation lifecycle.

use std::sync::Arc;

use crate::adapters::registry::Registry;
use crate::adapters::state::{Journal, StateError};
use crate::domain::digest::Digest;
use crate::domain::history::Record;
use crate::domain::image::ImageRef;
use crate::domain::release::tag_of;
use crate::error::Failure;
use crate::ops::catalog::Catalog;
use crate::ops::deployed::Deployed;
use crate::ops::operation::{Failed, Run, Unit};
use crate::settings::TargetSettings;

/// One service's image of the release's version.
#[derive(Debug, Clone)]
pub struct ServiceImage {
    pub service: String,
    pub image: ImageRef,
    /// `host/repository@digest`, as the engine pulls it.
    pub pull: String,
}

/// Each service's image of `chosen`'s version, in the release's order (`registries[i]` and
/// `catalogs[i]` are `target.members[i]`'s; the first is where `chosen` was resolved).
pub async fn images_of(
    target: &TargetSettings,
    registries: &[Arc<dyn Registry>],
    catalogs: &[&Catalog],
    chosen: &ImageRef,
) -> anyhow::Result<Vec<ServiceImage>> {
    let Some(chosen_digest) = chosen.digest.clone() else {
        anyhow::bail!(
            "choose one version for {}: the digest of {} is unknown",
            target.display(),
            chosen.display()
        );
    };
    let Some(version) = chosen
        .version
        .as_deref()
        .and_then(crate::domain::version::parse_version)
    else {
        anyhow::bail!(
            "choose one version for {}: {} carries no version, and a release moves every service to the \
             same version (pick a version tag)",
            target.display(),
            chosen.display()
        );
    };
    let lookups =
        target
            .members
            .iter()
            .zip(registries)
            .zip(catalogs)
            .enumerate()
            .map(|(i, ((member, registry), catalog))| {
                let (version, chosen_digest) = (&version, &chosen_digest);
                async move {
                    if i == 0 {
                        return Ok(Some((chosen.clone(), chosen_digest.clone())));
                    }
                    let Some(tag) = tag_of(&catalog.versions, version, chosen.tag.as_deref()) else {
                        return Ok(None);
                    };
                    let digest: Option<Digest> = registry.tag_digest(&tag.tag).await.map_err(|e| {
                        anyhow::Error::new(e).context(format!(
                            "read {}:{} for {}",
                            registry.name(),
                            tag.tag,
                            member.name
                        ))
                    })?;
                    Ok::<_, anyhow::Error>(digest.map(|d| {
                        (
                            ImageRef {
                                tag: Some(tag.tag.clone()),
                                version: chosen.version.clone(),
                                digest: Some(d.clone()),
                            },
                            d,
                        )
                    }))
                }
            });
    let found = futures::future::join_all(lookups).await;
    let mut images = Vec::with_capacity(found.len());
    let mut missing = Vec::new();
    for ((member, registry), found) in target.members.iter().zip(registries).zip(found) {
        match found? {
            Some((image, digest)) => images.push(ServiceImage {
                service: member.name.clone(),
                pull: registry.pull_reference(&digest),
                image,
            }),
            None => missing.push(format!("{} has no {} in {}", member.name, version, registry.name())),
        }
    }
    if !missing.is_empty() {
        return Err(Failure::ReleaseIncomplete {
            version: chosen.display(),
            missing,
        }
        .into());
    }
    Ok(images)
}

/// Rollback candidates (resolved in the first service's repository) as each service's image of
/// them, by service (`out[i]` is `target.members[i]`'s), each labelled with its service; with why
/// for each candidate some repository lacks (left out for every service).
pub async fn candidates_by_service(
    target: &TargetSettings,
    registries: &[Arc<dyn Registry>],
    catalogs: &[&Catalog],
    cands: &[crate::ops::warm::Candidate],
) -> (Vec<Vec<crate::ops::warm::Candidate>>, Vec<anyhow::Error>) {
    let mut by_service = vec![Vec::new(); registries.len()];
    let mut lacking = Vec::new();
    for c in cands {
        match images_of(target, registries, catalogs, &c.image).await {
            Ok(images) => {
                for (i, image) in images.into_iter().enumerate() {
                    by_service[i].push(crate::ops::warm::Candidate {
                        label: format!("{} ({})", c.label, image.service),
                        image: image.image,
                    });
                }
            }
            Err(e) => lacking.push(e),
        }
    }
    (by_service, lacking)
}

/// The image each of `current`'s containers goes to: its service's (one service: `chosen`).
pub fn each(current: &[Deployed], images: &[ServiceImage], chosen: &ImageRef, pull: &str) -> Vec<(ImageRef, String)> {
    current
        .iter()
        .map(|d| {
            images
                .iter()
                .find(|s| Some(&s.service) == d.service.as_ref())
                .map_or_else(
                    || (chosen.clone(), pull.to_string()),
                    |s| (s.image.clone(), s.pull.clone()),
                )
        })
        .collect()
}

/// Whether every container already runs the image it would go to.
pub fn already(current: &[Deployed], each: &[(ImageRef, String)]) -> bool {
    !current.is_empty()
        && current
            .iter()
            .zip(each)
            .all(|(d, (to, _))| d.digest.is_some() && d.digest == to.digest)
}

/// A release's services after the first, each with its registry and image of the version: the
/// pointers that move with the first one's (`ops::mark`).
pub type Others = Vec<(Arc<dyn Registry>, ServiceImage)>;

/// [`Others`] from the release's registries and images (both in the release's order).
pub fn others(registries: &[Arc<dyn Registry>], images: &[ServiceImage]) -> Others {
    registries.iter().cloned().zip(images.iter().cloned()).skip(1).collect()
}

/// A release's units on one host (a Swarm stack's services), acting as one: one intent in the
/// journal they share, every unit changed and validated at once, and on any failure every unit
/// put back; the records written once. (A release of containers needs none of this: its services'
/// containers are one plan, `ops::swap::plan_each`.)
pub struct Together<'a> {
    units: Vec<Box<dyn Unit + 'a>>,
    /// The service each unit moves, for messages.
    names: Vec<String>,
    /// The services whose own change failed.
    failed: Vec<String>,
}

impl<'a> Together<'a> {
    /// `units[i]` moves service `names[i]`; every unit's journal is the release's.
    pub fn new(units: Vec<Box<dyn Unit + 'a>>, names: Vec<String>) -> Self {
        assert!(!units.is_empty(), "a release has services");
        Self {
            units,
            names,
            failed: Vec::new(),
        }
    }
}

#[async_trait::async_trait]
impl Unit for Together<'_> {
    fn place(&self) -> &str {
        self.units[0].place()
    }

    fn journal(&self) -> &Journal {
        self.units[0].journal()
    }

    /// Every unit's intent in one record: what each changes and saves, together.
    fn intent(&self, base: &Record) -> Record {
        let mut merged = base.clone();
        merged.detail = None;
        for u in &self.units {
            let i = u.intent(base);
            merged.containers.extend(i.containers);
            merged.saved.extend(i.saved);
            merged.configs.extend(i.configs);
            merged.snapshots.extend(i.snapshots);
            merged.detail = merged.detail.or(i.detail);
        }
        merged
    }

    async fn prepare(&self, run: &Run<'_>) -> anyhow::Result<bool> {
        let pulled = futures::future::try_join_all(self.units.iter().map(|u| u.prepare(run))).await?;
        Ok(pulled.into_iter().any(|p| p))
    }

    /// Every service at once (each keeps its own update order); the failures named by service.
    /// `[health] http` is the first service's probe: the others are validated by their tasks'
    /// state and version.
    async fn apply(&mut self, run: &Run<'_>) -> Result<(), Failed> {
        let health = run.health.without_probe();
        let others = with_health(run, &health);
        let applied = futures::future::join_all(
            self.units
                .iter_mut()
                .enumerate()
                .map(|(i, u)| u.apply(if i == 0 { run } else { &others })),
        )
        .await;
        let mut failed: Option<Failed> = None;
        let mut whys = Vec::new();
        for (name, result) in self.names.iter().zip(applied) {
            if let Err(f) = result {
                self.failed.push(name.clone());
                whys.push(format!("{name}: {}", f.why));
                match &mut failed {
                    None => failed = Some(f),
                    Some(first) => {
                        // Something did change unless every unit says nothing did.
                        first.nothing_changed &= f.nothing_changed;
                        first.probe_unreachable &= f.probe_unreachable;
                        if first.logs.is_empty() {
                            first.logs = f.logs;
                        }
                    }
                }
            }
        }
        match failed {
            None => Ok(()),
            Some(mut f) => {
                f.why = whys.join("; ");
                if f.nothing_changed && whys.len() < self.units.len() {
                    // The others changed: they are put back.
                    f.nothing_changed = false;
                    f.error = None;
                }
                Err(f)
            }
        }
    }

    async fn soak(&self, run: &Run<'_>, duration: std::time::Duration) -> Result<(), String> {
        let health = run.health.without_probe();
        let others = with_health(run, &health);
        let soaked = futures::future::join_all(
            self.units
                .iter()
                .enumerate()
                .map(|(i, u)| u.soak(if i == 0 { run } else { &others }, duration)),
        )
        .await;
        let whys: Vec<String> = self
            .names
            .iter()
            .zip(soaked)
            .filter_map(|(n, r)| r.err().map(|e| format!("{n}: {e}")))
            .collect();
        if whys.is_empty() { Ok(()) } else { Err(whys.join("; ")) }
    }

    /// Every unit, in reverse order (each puts back only what it changed).
    async fn put_back(&mut self, run: &Run<'_>) -> Result<(), String> {
        let mut errors = Vec::new();
        for (name, u) in self.names.iter().zip(self.units.iter_mut()).rev() {
            if let Err(e) = u.put_back(run).await {
                errors.push(format!("{name}: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// The records once, in the shared journal; then each unit makes its own change final
    /// (with nothing more to write).
    async fn commit(&mut self, run: &Run<'_>, records: &[&Record]) -> Result<(), StateError> {
        let written = self.journal().append_all_aside(records).await;
        for u in &mut self.units {
            if let Err(e) = u.commit(run, &[]).await {
                tracing::warn!("finish a release's service: {e}");
            }
        }
        written
    }

    async fn reachable(&self) -> bool {
        futures::future::join_all(self.units.iter().map(|u| u.reachable()))
            .await
            .into_iter()
            .all(|r| r)
    }

    fn phase(&self, phase: &'static str) {
        for u in &self.units {
            u.phase(phase);
        }
    }

    fn failed_services(&self) -> Vec<String> {
        self.failed.clone()
    }
}

/// `run` with other checks (a release's services after the first: `without_probe`).
fn with_health<'a>(run: &Run<'a>, health: &'a crate::settings::HealthSettings) -> Run<'a> {
    Run { health, ..run.clone() }
}
