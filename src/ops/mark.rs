//! Marking a version last known good: the `last_known_good` tag in the registry is moved by
//! re-putting the version's manifest bytes (no blob moves), the journal records it, and the image
//! is kept on this host under a local tag so `emergency` finds it with the registry down and
//! Docker's image GC leaves it alone.

use chrono::Utc;
use serde::Serialize;

use crate::adapters::docker::Engine;
use crate::adapters::registry::Registry;
use crate::adapters::state::{self, Journal};
use crate::domain::digest::Digest;
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
    /// A release: the other services' repositories, whose pointer moved (or would move) with it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
}

impl crate::output::Report for MarkReport {
    fn human(&self) -> String {
        let digest = self.marked.digest.as_ref().map_or("-", |d| d.short());
        let was = self.previous.as_ref().map_or("(not set)".to_string(), |p| p.display());
        if self.dry_run {
            return format!(
                "would point {} in {}{} at {} ({digest}); it points at {was} now\ndry run: nothing was changed",
                self.pointer,
                self.repository,
                self.also.iter().map(|a| format!(" and {a}")).collect::<String>(),
                self.marked.display()
            );
        }
        let mut out = format!(
            "{} in {} now points at {} ({digest}); was {was}",
            self.pointer,
            self.repository,
            self.marked.display()
        );
        if !self.also.is_empty() {
            out.push_str(&format!(
                "\nand in {}, to its image of the same version",
                self.also.join(", ")
            ));
        }
        if let Some(local) = &self.local_image {
            out.push_str(&format!("\nkept on this host as {local}"));
        }
        out
    }
}

/// What to mark: the image, the pointer tag to move, where it points now, and why.
pub struct MarkRequest<'a> {
    pub image: &'a ImageRef,
    /// `last_known_good` or `last_known_good-ENV`.
    pub pointer: &'a str,
    pub previous: Option<ImageRef>,
    pub reason: Option<&'a str>,
    /// A release's other services: each one's registry and image of the version, whose pointer
    /// moves with the first one's (all of them or, after a failure, none).
    pub others: crate::ops::release::Others,
    /// The first service of a release (its image is `image`).
    pub first: Option<String>,
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
        others,
        first,
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
    if let Some(first) = first {
        base.services = std::iter::once((first, image.clone()))
            .chain(others.iter().map(|(_, s)| (s.service.clone(), s.image.clone())))
            .collect();
    }
    let append = |r: &Record| journals.iter().try_for_each(|j| j.append(r));
    append(&base)?;
    let started = std::time::Instant::now();
    if let Err(e) = registry.retag(&digest, pointer).await {
        append(&base.finish(Utc::now(), Outcome::Failed, None, Some(e.to_string())))?;
        return Err(anyhow::Error::new(e).context(format!("point {pointer} at {}", image.display())));
    }
    if let Err(e) = move_others(registry, previous.as_ref(), &others, pointer).await {
        append(&base.finish(Utc::now(), Outcome::Failed, None, Some(e.to_string())))?;
        return Err(e);
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
        also: others.iter().map(|(r, _)| r.name()).collect(),
        dry_run: false,
        repository: registry.name(),
        pointer: pointer.to_string(),
        marked: image.clone(),
        previous,
        local_image,
    })
}

/// A release's other pointers, moved at once after the first service's (`registry`); when one cannot move, every pointer that moved is put back where it was (a pointer
/// that was not there is left on the new image, and said so).
async fn move_others(
    registry: &dyn Registry,
    previous: Option<&ImageRef>,
    others: &[(std::sync::Arc<dyn Registry>, crate::ops::release::ServiceImage)],
    pointer: &str,
) -> anyhow::Result<()> {
    if others.is_empty() {
        return Ok(());
    }
    let moves = others.iter().map(|(r, s)| async move {
        let was = r.tag_digest(pointer).await?;
        let to = s.image.digest.clone().expect("a release's images carry their digest");
        r.retag(&to, pointer).await.map(|()| was)
    });
    let results = futures::future::join_all(moves).await;
    if results.iter().all(Result::is_ok) {
        return Ok(());
    }
    let mut failed = Vec::new();
    let mut left = Vec::new();
    let mut back: Vec<(&dyn Registry, Digest)> = Vec::new();
    if let Some(d) = previous.and_then(|p| p.digest.clone()) {
        back.push((registry, d));
    } else if previous.is_none() {
        left.push(registry.name());
    }
    for ((r, s), result) in others.iter().zip(results) {
        match result {
            Ok(Some(was)) => back.push((r.as_ref(), was)),
            Ok(None) => left.push(r.name()),
            Err(e) => failed.push(format!("{} ({}): {e}", s.service, r.name())),
        }
    }
    for (r, was) in back {
        if let Err(e) = r.retag(&was, pointer).await {
            left.push(format!("{} ({e})", r.name()));
        }
    }
    let mut why = format!("move {pointer} for every service: {}", failed.join("; "));
    if left.is_empty() {
        why.push_str("; the pointers that moved were put back");
    } else {
        why.push_str(&format!("; still on the new image: {}", left.join(", ")));
    }
    Err(anyhow::anyhow!(why))
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;

    use super::*;
    use crate::adapters::registry::{PullAuth, RegistryError, RemoteImage};
    use crate::domain::image::ImageInfo;
    use crate::ops::release::ServiceImage;

    /// A repository's tags in memory; its retags fail when `refuses` (a fault a real registry
    /// will not produce on demand for one repository of two).
    struct Tags {
        name: String,
        tags: Mutex<HashMap<String, Digest>>,
        refuses: bool,
    }

    #[async_trait]
    impl Registry for Tags {
        fn name(&self) -> String {
            self.name.clone()
        }
        fn pull_reference(&self, digest: &Digest) -> String {
            format!("{}@{digest}", self.name)
        }
        async fn list_tags(&self) -> Result<Vec<String>, RegistryError> {
            Ok(self.tags.lock().unwrap().keys().cloned().collect())
        }
        async fn tag_digest(&self, tag: &str) -> Result<Option<Digest>, RegistryError> {
            Ok(self.tags.lock().unwrap().get(tag).cloned())
        }
        async fn image_info(&self, digest: &Digest) -> Result<ImageInfo, RegistryError> {
            Err(RegistryError::ManifestNotFound {
                reference: digest.to_string(),
            })
        }
        async fn retag(&self, digest: &Digest, tag: &str) -> Result<(), RegistryError> {
            if self.refuses {
                return Err(RegistryError::Protocol {
                    registry: self.name.clone(),
                    message: "HTTP 500: disk on fire".into(),
                });
            }
            self.tags.lock().unwrap().insert(tag.to_string(), digest.clone());
            Ok(())
        }
        async fn delete(&self, _: &RemoteImage) -> Result<(), RegistryError> {
            Ok(())
        }
        async fn pull_auth(&self) -> Result<PullAuth, RegistryError> {
            Ok(PullAuth::default())
        }
    }

    fn digest(n: u64) -> Digest {
        Digest::parse(&format!("sha256:{n:064x}")).unwrap()
    }

    fn repo(name: &str, lkg: u64, refuses: bool) -> Arc<Tags> {
        Arc::new(Tags {
            name: name.into(),
            tags: Mutex::new(HashMap::from([("last_known_good".to_string(), digest(lkg))])),
            refuses,
        })
    }

    fn service(name: &str, n: u64) -> ServiceImage {
        ServiceImage {
            service: name.into(),
            image: ImageRef {
                version: Some("1.1.0".into()),
                digest: Some(digest(n)),
                ..Default::default()
            },
            pull: String::new(),
        }
    }

    /// One repository of a release refuses the move: every pointer that moved goes back where it
    /// was, the first repository's too, and the error names the one that failed.
    #[tokio::test]
    async fn a_release_pointer_that_cannot_move_puts_the_moved_ones_back() {
        let (web, worker, cron) = (
            repo("r/web", 1, false),
            repo("r/worker", 2, false),
            repo("r/cron", 3, true),
        );
        // The first repository's pointer already moved (by `mark_good`) to 11.
        web.retag(&digest(11), "last_known_good").await.unwrap();
        let previous = ImageRef {
            digest: Some(digest(1)),
            ..Default::default()
        };
        let others: crate::ops::release::Others = vec![
            (worker.clone() as Arc<dyn Registry>, service("worker", 12)),
            (cron.clone() as Arc<dyn Registry>, service("cron", 13)),
        ];
        let err = move_others(web.as_ref(), Some(&previous), &others, "last_known_good")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("cron (r/cron)") && err.contains("were put back"), "{err}");
        assert_eq!(web.tag_digest("last_known_good").await.unwrap(), Some(digest(1)));
        assert_eq!(worker.tag_digest("last_known_good").await.unwrap(), Some(digest(2)));
        assert_eq!(cron.tag_digest("last_known_good").await.unwrap(), Some(digest(3)));
        // All move: nothing to put back.
        let ok = repo("r/cron", 3, false);
        let others: crate::ops::release::Others = vec![(ok.clone() as Arc<dyn Registry>, service("cron", 13))];
        move_others(web.as_ref(), Some(&previous), &others, "last_known_good")
            .await
            .unwrap();
        assert_eq!(ok.tag_digest("last_known_good").await.unwrap(), Some(digest(13)));
    }
}
