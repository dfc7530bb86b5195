//! From a selector typed by a user to one image: the tag (if any), the version and the digest,
//! using the registry, the journal and what is deployed.

use std::collections::HashSet;

use anyhow::Context as _;

use crate::adapters::registry::{Registry, RegistryError};
use crate::domain::digest::Digest;
use crate::domain::history::{self, OperationView};
use crate::domain::image::{ImageInfo, ImageRef};
use crate::domain::selector::{self, Context, Selector};
use crate::domain::version::parse_version;
use crate::ops::catalog::Catalog;

/// The image a selector names.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub image: ImageRef,
    pub digest: Digest,
    pub info: ImageInfo,
}

/// What the target's `last_known_good` pointer (`pointer`: `last_known_good` or
/// `last_known_good-ENV`) names: the registry tag, with the version the journal (or the image's
/// label) gives it.
pub async fn last_known_good(
    registry: &dyn Registry,
    catalog: &Catalog,
    ops: &[OperationView],
    pointer: &str,
) -> anyhow::Result<Option<ImageRef>> {
    if !catalog.has_tag(pointer) {
        return Ok(None);
    }
    let Some(digest) = registry.tag_digest(pointer).await? else {
        return Ok(None);
    };
    let from_journal = history::marked_good(ops).find(|r| r.digest.as_ref() == Some(&digest));
    let version = match from_journal.as_ref().and_then(|r| r.version.clone()) {
        Some(v) => Some(v),
        None => registry.image_info(&digest).await.ok().and_then(|i| version_label(&i)),
    };
    let tag = version.as_ref().and_then(|v| {
        let want = parse_version(v)?;
        catalog
            .versions
            .iter()
            .find(|t| t.release() == want)
            .map(|t| t.tag.clone())
    });
    Ok(Some(ImageRef {
        tag,
        version,
        digest: Some(digest),
    }))
}

fn version_label(info: &ImageInfo) -> Option<String> {
    info.label(crate::domain::image::LABEL_VERSION)
        .or_else(|| info.label("version"))
        .and_then(parse_version)
        .map(|v| v.to_string())
}

/// Resolves `input` to one image in the registry.
pub async fn resolve(
    registry: &dyn Registry,
    catalog: &Catalog,
    input: &str,
    ops: &[OperationView],
    current: Option<&ImageRef>,
    pointer: &str,
) -> anyhow::Result<Chosen> {
    let selector: Selector = input.parse()?;
    let lkg = match selector {
        Selector::LastKnownGood => last_known_good(registry, catalog, ops, pointer).await?,
        _ => None,
    };
    let revisions = match &selector {
        Selector::Revision(_) => revisions(registry, catalog).await?,
        _ => Vec::new(),
    };
    let failed: HashSet<String> = history::skipped_by_previous(ops);
    let previous = history::previous(ops, current);
    let ctx = Context {
        versions: &catalog.versions,
        current,
        previous_from_history: previous.as_ref(),
        failed: Some(&failed),
        last_known_good: lkg.as_ref(),
        revisions: &revisions,
    };
    let pick = selector::resolve(&selector, &ctx, &registry.name())?;
    // A digest the pointer or the journal names is what was validated: it wins over where a tag
    // of the same version points now, as long as the registry still has it. The tag is kept for
    // display only while it points to that digest.
    let by_tag = |tag: String| async move {
        registry
            .tag_digest(&tag)
            .await?
            .ok_or_else(|| RegistryError::ManifestNotFound {
                reference: format!("{}:{tag}", registry.name()),
            })
    };
    let mut tag = pick.tag.clone();
    let (digest, info) = match (&pick.digest, &pick.tag) {
        (Some(d), t) => match registry.image_info(d).await {
            Ok(info) => {
                if let Some(t) = t
                    && registry.tag_digest(t).await?.as_ref() != Some(d)
                {
                    tag = None;
                }
                (d.clone(), info)
            }
            Err(e) if e.is_not_found() && t.is_some() => {
                let d = by_tag(t.clone().unwrap_or_default()).await?;
                let info = registry.image_info(&d).await?;
                (d, info)
            }
            Err(e) => return Err(e.into()),
        },
        (None, Some(t)) => {
            let d = by_tag(t.clone()).await?;
            let info = registry
                .image_info(&d)
                .await
                .with_context(|| format!("read {}", registry.pull_reference(&d)))?;
            (d, info)
        }
        (None, None) => unreachable_pick(input)?,
    };
    registry.flush_cache();
    let version = pick
        .version
        .map(|v| crate::domain::version::strip_build(&v).to_string())
        .or_else(|| version_label(&info));
    Ok(Chosen {
        image: ImageRef {
            tag,
            version,
            digest: Some(digest.clone()),
        },
        digest,
        info,
    })
}

fn unreachable_pick(input: &str) -> anyhow::Result<(Digest, ImageInfo)> {
    anyhow::bail!("resolve '{input}': the selector named neither a tag nor a digest")
}

/// (tag, revision label) of every version tag, for commit selectors.
async fn revisions(registry: &dyn Registry, catalog: &Catalog) -> anyhow::Result<Vec<(String, String)>> {
    let tags: Vec<String> = catalog.versions.iter().map(|v| v.tag.clone()).collect();
    let digests = registry.tag_digests(&tags).await?;
    let unique: Vec<Digest> = digests.values().cloned().collect::<HashSet<_>>().into_iter().collect();
    let infos = registry.image_infos(&unique).await?;
    registry.flush_cache();
    Ok(digests
        .into_iter()
        .filter_map(|(tag, d)| Some((tag, infos.get(&d)?.revision()?.to_string())))
        .collect())
}
