//! What the target runs now, read from the Docker Engine: its containers and the digest and
//! version each carries.

use serde::Serialize;

use crate::adapters::docker::{ContainerView, Engine, LABEL_TAG, LABEL_VERSION};
use crate::domain::digest::Digest;
use crate::domain::image::{ImageRef, LABEL_VERSION as OCI_VERSION};
use crate::domain::version::parse_version;
use crate::settings::TargetSettings;

/// One container of the target and what it runs.
#[derive(Debug, Clone, Serialize)]
pub struct Deployed {
    pub container: ContainerView,
    pub digest: Option<Digest>,
    pub image: ImageRef,
}

/// The version a container carries: the tag backtrack deployed, else the image's version label,
/// else a `*_VERSION` environment variable (the seed's `AGENTRADER_VERSION` convention).
pub fn carried_version(c: &ContainerView) -> Option<String> {
    if let Some(v) = c.labels.get(LABEL_VERSION) {
        return Some(v.clone());
    }
    image_version(c)
}

/// The version the image itself says it is (label or env), ignoring backtrack's own labels.
pub fn image_version(c: &ContainerView) -> Option<String> {
    for key in [OCI_VERSION, "version"] {
        if let Some(v) = c.labels.get(key).and_then(|v| parse_version(v)) {
            return Some(v.to_string());
        }
    }
    c.env.iter().find_map(|e| {
        let (k, v) = e.split_once('=')?;
        (k.ends_with("_VERSION") || k == "VERSION")
            .then(|| parse_version(v))?
            .map(|v| v.to_string())
    })
}

/// Reads the target's containers, with the digest each runs: the digest pinned in its image
/// reference, else the local image's repo digest for `repository`.
pub async fn read(engine: &Engine, target: &TargetSettings, repository: &str) -> anyhow::Result<Vec<Deployed>> {
    if target.kind == crate::settings::TargetKind::Swarm {
        return crate::ops::swarm::deployed(engine, target).await;
    }
    let containers = engine.target_containers(target).await?;
    let mut out = Vec::with_capacity(containers.len());
    for c in containers {
        let digest = match c.pinned_digest() {
            Some(d) => Some(d),
            None => repo_digest(engine, &c.image_id, repository).await,
        };
        let version = carried_version(&c);
        let tag = c.labels.get(LABEL_TAG).cloned().or_else(|| {
            c.image_ref
                .rsplit_once(':')
                .filter(|(_, t)| !t.contains('/') && !c.image_ref.contains('@'))
                .map(|(_, t)| t.to_string())
        });
        out.push(Deployed {
            image: ImageRef {
                tag,
                version,
                digest: digest.clone(),
            },
            digest,
            container: c,
        });
    }
    Ok(out)
}

/// The digest of the local image as pushed to `name` (`host/repository`): an exact match first,
/// else the same repository under another host name (a mirror, or `localhost` for `127.0.0.1`):
/// a manifest digest names the same content in any registry.
async fn repo_digest(engine: &Engine, image_id: &str, name: &str) -> Option<Digest> {
    let image = engine.image(image_id).await.ok()??;
    let repo_digests = image.repo_digests.unwrap_or_default();
    let parsed: Vec<(&str, Digest)> = repo_digests
        .iter()
        .filter_map(|rd| {
            let (repo, digest) = rd.rsplit_once('@')?;
            Some((repo, Digest::parse(digest).ok()?))
        })
        .collect();
    let path = name.split_once('/').map_or(name, |(_, p)| p);
    parsed
        .iter()
        .find(|(repo, _)| *repo == name)
        .or_else(|| {
            parsed
                .iter()
                .find(|(repo, _)| repo.split_once('/').is_some_and(|(_, p)| p == path))
        })
        .map(|(_, d)| d.clone())
}
