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
pub async fn read(
    engine: &Engine,
    target: &TargetSettings,
    repository: &str,
) -> anyhow::Result<Vec<Deployed>> {
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

async fn repo_digest(engine: &Engine, image_id: &str, repository: &str) -> Option<Digest> {
    let image = engine.image(image_id).await.ok()??;
    image
        .repo_digests
        .unwrap_or_default()
        .iter()
        .find_map(|rd| {
            let (repo, digest) = rd.rsplit_once('@')?;
            (repo == repository || repo.ends_with(&format!("/{repository}")))
                .then(|| Digest::parse(digest).ok())
                .flatten()
        })
}
