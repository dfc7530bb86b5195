//! `backtrack status`: what the target runs now, whether it is healthy, where last_known_good
//! points, whether a tag moved since it was deployed, and any operation left unfinished. Works
//! with the registry down (it then says so instead of failing).

use serde::Serialize;

use super::App;
use crate::adapters::docker::{EngineError, LABEL_EMERGENCY, LABEL_TAG};
use crate::domain::history;
use crate::domain::image::ImageRef;
use crate::ops::{catalog::Catalog, deployed, resolve};
use crate::output::{Report, render_table, table};

#[derive(Debug, Serialize)]
struct StatusReport {
    target: String,
    registry: String,
    containers: Vec<ContainerStatus>,
    last_known_good: Option<ImageRef>,
    /// The rollback candidates and whether a rollback to them would need a pull.
    rollback: Vec<crate::ops::warm::Readiness>,
    /// How a swap of the containers would go: start-first or stop-first, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<crate::domain::order::Decision>,
    /// A release whose services run different versions: each version with its services.
    #[serde(skip_serializing_if = "Option::is_none")]
    release_drift: Option<String>,
    /// Problems worth a person's attention (drift, emergency mode, open operations, ...).
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ContainerStatus {
    /// The release's service it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    name: String,
    state: String,
    health: Option<String>,
    version: Option<String>,
    tag: Option<String>,
    digest: Option<crate::domain::digest::Digest>,
    image: String,
    emergency: bool,
}

pub async fn run(app: &App<'_>) -> anyhow::Result<()> {
    let project = app.project()?;
    let target = app.target()?;
    // A release's services each have their registry (the first one's is the release's).
    let registries = app.registries()?;
    let registry = &registries[0];
    let registry_of = |service: Option<&String>| {
        target
            .members
            .iter()
            .position(|m| Some(&m.name) == service)
            .map_or(registry, |i| &registries[i])
    };
    let engine = app.engine().await?;
    let records = app.journal()?.read()?;
    let ops = history::operations(&records);
    let mut warnings = Vec::new();

    let current = match deployed::read(&engine, target, &project.registry.display()).await {
        Ok(current) => current,
        // An operation cut off mid-swap can leave the name empty (the old container set aside,
        // the new one not under it yet): that is what to report, not a misnamed target.
        Err(e)
            if !history::open_operations(&records).is_empty()
                && matches!(e.downcast_ref(), Some(EngineError::TargetNotFound { .. })) =>
        {
            warnings.push(format!(
                "{} has no container now: the unfinished operation below left it so",
                target.display()
            ));
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let containers: Vec<ContainerStatus> = current
        .iter()
        .map(|d| ContainerStatus {
            service: d.service.clone(),
            name: d.container.name.clone(),
            state: d.container.state.clone(),
            health: d.container.health.clone(),
            version: d.image.version.clone(),
            tag: d.image.tag.clone(),
            digest: d.digest.clone(),
            image: d.container.image_ref.clone(),
            emergency: d.container.labels.contains_key(LABEL_EMERGENCY),
        })
        .collect();
    for c in containers.iter().filter(|c| c.emergency) {
        warnings.push(format!(
            "EMERGENCY: {} runs the last known good image directly since `backtrack emergency`; \
             `backtrack deploy` or `rollback` leaves emergency mode",
            c.name
        ));
    }

    let mut rollback = Vec::new();
    let last_known_good = match Catalog::load(registry.as_ref()).await {
        Ok(catalog) => {
            // The pointer is asked for once: it is both what status shows and a candidate.
            let pointer = project.lkg_tag();
            let lkg = resolve::last_known_good(registry.as_ref(), &catalog, &ops, &pointer).await?;
            let mut cands = crate::ops::warm::candidates(
                registry.as_ref(),
                &catalog,
                &ops,
                current.first().map(|d| &d.image),
                &pointer,
                &["previous".to_string()],
            )
            .await;
            if let Some(l) = &lkg
                && cands.iter().all(|c| c.image.digest != l.digest)
            {
                cands.push(crate::ops::warm::Candidate {
                    label: pointer.clone(),
                    image: l.clone(),
                });
            }
            rollback = crate::ops::warm::readiness(&engine, registry.as_ref(), &cands).await;
            for d in &current {
                let Some(tag) = d.container.labels.get(LABEL_TAG) else {
                    continue;
                };
                let registry = registry_of(d.service.as_ref());
                match registry.tag_digest(tag).await {
                    Ok(Some(now)) if Some(&now) != d.digest.as_ref() => warnings.push(format!(
                        "drift: tag {tag} now points to {} but {} runs {} (the tag moved since the deploy)",
                        now.short(),
                        d.container.name,
                        d.digest.as_ref().map_or("-", |x| x.short())
                    )),
                    Ok(None) => warnings.push(format!("drift: tag {tag} no longer exists in {}", registry.name())),
                    _ => {}
                }
            }
            if let Some(l) = &lkg
                && let Some(j) = history::marked_good(&ops).next()
                && j.digest != l.digest
            {
                warnings.push(format!(
                    "last_known_good: the registry tag names {} but the journal last marked {}",
                    l.digest.as_ref().map_or("-", |d| d.short()),
                    j.display()
                ));
            }
            lkg
        }
        Err(e) => {
            warnings.push(format!(
                "registry: {}; last_known_good is taken from the journal",
                crate::error::render(&e)
            ));
            history::marked_good(&ops).next().cloned()
        }
    };
    // Drift: what runs is not what backtrack last put there (someone ran `docker-compose up`,
    // `docker run`, a CI job...).
    if let Some(last) = history::last_committed(&ops)
        && let Some(to) = last.to.as_ref().and_then(|t| t.digest.as_ref())
    {
        for d in &current {
            // In a release, each service against its own image of the version.
            let want = d
                .service
                .as_ref()
                .and_then(|s| last.services.get(s))
                .and_then(|i| i.digest.as_ref())
                .unwrap_or(to);
            if d.digest.as_ref() != Some(want) {
                warnings.push(format!(
                    "drift: {} runs {} but backtrack's last {} put {} ({}) there {}; something else changed it",
                    d.container.name,
                    d.digest
                        .as_ref()
                        .map_or_else(|| d.container.image_ref.clone(), |x| x.short().to_string()),
                    last.op.as_str(),
                    last.to.as_ref().map_or("-".into(), ImageRef::display),
                    want.short(),
                    crate::output::ago(chrono::Utc::now(), last.started)
                ));
            }
        }
    }
    // How the next swap goes, and why: a stop-first target is down for the app's boot each time.
    let names: Vec<String> = current.iter().map(|d| d.container.name.clone()).collect();
    let order = if names.is_empty() || target.kind == crate::settings::TargetKind::Swarm {
        None
    } else {
        match crate::ops::swap::order_of(&engine, target, &names).await {
            Ok(d) => Some(d),
            Err(why) => {
                warnings.push(format!("order: {why}"));
                None
            }
        }
    };
    let release_drift = if target.is_release() {
        let services: Vec<(&str, Option<&str>)> = current
            .iter()
            .filter_map(|d| Some((d.service.as_deref()?, d.image.version.as_deref())))
            .collect();
        crate::domain::release::drift(&services)
    } else {
        None
    };
    if let Some(d) = &release_drift {
        warnings.insert(
            0,
            format!("the release's services run different versions ({d}): `backtrack deploy VERSION` puts them on one"),
        );
    }
    warnings.extend(in_progress(&records, app.lock_holder()?));
    app.printer.report(&StatusReport {
        target: target.display(),
        registry: registry.name(),
        containers,
        last_known_good,
        rollback,
        order,
        release_drift,
        warnings,
    })
}

/// What is under way or was left unfinished: each open operation (by the lock's holder, or
/// interrupted), or a holder with none open.
pub(super) fn in_progress(records: &[history::Record], holder: Option<impl std::fmt::Display>) -> Vec<String> {
    let open = history::open_operations(records);
    let mut out = Vec::new();
    for (started, _) in &open {
        let what = format!(
            "{} to {} started {}",
            started.op.as_str(),
            started.to.as_ref().map_or("-".into(), ImageRef::display),
            started.at.format("%Y-%m-%d %H:%M:%SZ")
        );
        match &holder {
            Some(h) => out.push(format!("in progress: {what}, by {h}")),
            None => out.push(format!(
                "an operation did not finish: {what} (the next deploy or rollback settles it)"
            )),
        }
    }
    if let Some(h) = &holder
        && open.is_empty()
    {
        out.push(format!("in progress: {h}"));
    }
    out
}

impl Report for StatusReport {
    fn human(&self) -> String {
        let release = self.containers.iter().any(|c| c.service.is_some());
        let mut t = if release {
            table(["service", "container", "state", "health", "version", "digest", "image"])
        } else {
            table(["container", "state", "health", "version", "digest", "image"])
        };
        for c in &self.containers {
            let mut row = Vec::with_capacity(7);
            if release {
                row.push(c.service.clone().unwrap_or_default());
            }
            row.extend([
                format!("{}{}", c.name, if c.emergency { " (EMERGENCY)" } else { "" }),
                c.state.clone(),
                c.health.clone().unwrap_or_else(|| "-".into()),
                c.version
                    .clone()
                    .or_else(|| c.tag.clone())
                    .unwrap_or_else(|| "?".into()),
                c.digest.as_ref().map_or("-".into(), |d| d.short().to_string()),
                c.image.clone(),
            ]);
            t.add_row(row);
        }
        let mut out = format!("target:          {}\nregistry:        {}\n", self.target, self.registry);
        out.push_str(&format!(
            "last_known_good: {}\n\n",
            self.last_known_good.as_ref().map_or("(not set)".into(), |l| format!(
                "{} ({})",
                l.display(),
                l.digest.as_ref().map_or("-", |d| d.short())
            ))
        ));
        out.push_str(&render_table(&t));
        if let Some(o) = &self.order {
            out.push_str(&format!("\nswap order: {} ({})", o.order, o.why));
        }
        for r in &self.rollback {
            out.push_str(&format!(
                "\nrollback to {} {}: {}",
                r.candidate.label,
                r.candidate.image.display(),
                r.summary()
            ));
        }
        for w in &self.warnings {
            out.push_str(&format!("\nwarning: {w}"));
        }
        out
    }
}
