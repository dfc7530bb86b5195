//! Marking a version last known good: the `last_known_good` tag in the registry is moved by
//! re-putting the version's manifest bytes (no blob moves), the journal records it, and the image
//! is kept on this host under a local tag so `emergency` finds it with the registry down and
//! Docker's image GC leaves it alone.

use chrono::Utc;
use serde::Serialize;

use crate::adapters::docker::Engine;
use crate::adapters::registry::Registry;
use crate::adapters::state::{self, Journal};
use crate::domain::history::{Operation, Outcome, Record};
use crate::domain::image::{ImageRef, LKG_TAG};
use crate::output::Printer;

/// The local image name that keeps the image a pointer names on this host:
/// `backtrack/REPO:lkg` (or `:lkg-ENV` for `last_known_good-ENV`).
pub fn local_lkg_reference(repository: &str, pointer: &str) -> (String, String) {
    (format!("backtrack/{repository}"), pointer.replacen(LKG_TAG, "lkg", 1))
}

#[derive(Debug, Serialize)]
pub struct MarkReport {
    pub dry_run: bool,
    pub repository: String,
    /// The pointer tag moved: `last_known_good` or `last_known_good-ENV`.
    pub pointer: String,
    pub marked: ImageRef,
    pub previous: Option<ImageRef>,
    /// The local tag keeping the image on this host, when the engine was reachable.
    pub local_image: Option<String>,
}

impl crate::output::Report for MarkReport {
    fn human(&self) -> String {
        let digest = self.marked.digest.as_ref().map_or("-", |d| d.short());
        let was = self.previous.as_ref().map_or("(not set)".to_string(), |p| p.display());
        if self.dry_run {
            return format!(
                "would point {} in {} at {} ({digest}); it points at {was} now\ndry run: nothing was changed",
                self.pointer,
                self.repository,
                self.marked.display()
            );
        }
        let mut out = format!(
            "{} in {} now points at {} ({digest}); was {was}",
            self.pointer,
            self.repository,
            self.marked.display()
        );
        if let Some(local) = &self.local_image {
            out.push_str(&format!("\nkept on this host as {local}"));
        }
        out
    }
}

/// What to mark: the image, the pointer tag to move, where it points now, and why.
#[derive(Debug)]
pub struct MarkRequest<'a> {
    pub image: &'a ImageRef,
    /// `last_known_good` or `last_known_good-ENV`.
    pub pointer: &'a str,
    pub previous: Option<ImageRef>,
    pub reason: Option<&'a str>,
}

/// Moves the pointer once, recorded in every journal given (one per host of a fleet, under one
/// id), and keeps the image on `engine`'s host.
pub async fn mark_good(
    registry: &dyn Registry,
    journals: &[&Journal],
    engine: Option<&Engine>,
    printer: &Printer,
    request: MarkRequest<'_>,
) -> anyhow::Result<MarkReport> {
    let MarkRequest {
        image,
        pointer,
        previous,
        reason,
    } = request;
    let digest = image
        .digest
        .clone()
        .ok_or_else(|| anyhow::anyhow!("mark {}: its digest is unknown", image.display()))?;
    let mut base = Record {
        from: previous.clone(),
        to: Some(image.clone()),
        reason: reason.map(str::to_string),
        detail: Some(format!("pointer {pointer}")),
        ..state::begin(Operation::MarkGood)
    };
    if journals.len() > 1 {
        base.id = format!("fleet-{}", base.id);
    }
    let append = |r: &Record| journals.iter().try_for_each(|j| j.append(r));
    append(&base)?;
    let started = std::time::Instant::now();
    if let Err(e) = registry.retag(&digest, pointer).await {
        append(&base.finish(Utc::now(), Outcome::Failed, None, Some(e.to_string())))?;
        return Err(anyhow::Error::new(e).context(format!("point {pointer} at {}", image.display())));
    }
    let elapsed = started.elapsed().as_millis() as u64;
    append(&base.finish(Utc::now(), Outcome::Ok, Some(elapsed), None))?;

    let mut local_image = None;
    if let Some(engine) = engine {
        match keep_on_host(registry, engine, pointer, image).await {
            Ok(kept) => local_image = Some(kept),
            Err(e) => printer.note(format!("warning: could not {e:#}")),
        }
    }
    Ok(MarkReport {
        dry_run: false,
        repository: registry.name(),
        pointer: pointer.to_string(),
        marked: image.clone(),
        previous,
        local_image,
    })
}

/// Pulls the image a pointer names onto `engine`'s host and tags it locally (so `emergency` finds
/// it with the registry down); the local name kept.
pub async fn keep_on_host(
    registry: &dyn Registry,
    engine: &Engine,
    pointer: &str,
    image: &ImageRef,
) -> anyhow::Result<String> {
    let digest = image
        .digest
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("keep {} on this host: its digest is unknown", image.display()))?;
    let reference = registry.pull_reference(digest);
    let auth = registry.pull_auth().await.ok();
    let (repo, tag) = local_lkg_reference(&registry_repository(registry), pointer);
    engine.pull(&reference, auth.as_ref(), |_| {}).await.map_err(|e| {
        anyhow::anyhow!("pull {reference} to keep it on this host (emergency will need the registry): {e}")
    })?;
    engine
        .tag_image(&reference, &repo, &tag)
        .await
        .map_err(|e| anyhow::anyhow!("keep the image on this host: {e}"))?;
    Ok(format!("{repo}:{tag}"))
}

/// The repository part of `host/repository`.
pub fn registry_repository(registry: &dyn Registry) -> String {
    let name = registry.name();
    name.split_once('/').map_or(name.clone(), |(_, r)| r.to_string())
}
