//! A release of several services (`[target] names`): the selector is resolved once, in the first
//! service's repository, to a version; this finds that version's image in every service's
//! repository, or refuses, naming each service and repository that lacks it, before anything
//! changes.

use std::sync::Arc;

use crate::adapters::registry::Registry;
use crate::domain::digest::Digest;
use crate::domain::image::ImageRef;
use crate::domain::release::tag_of;
use crate::error::Failure;
use crate::ops::catalog::Catalog;
use crate::ops::deployed::Deployed;
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
