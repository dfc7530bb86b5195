//! The `Registry` trait: what backtrack needs from wherever versions live (list, resolve,
//! describe, retag, delete, credentials for pulls), with an OCI Distribution implementation and an
//! ECR one, chosen once from the settings.

pub mod cache;
pub mod credentials;
pub mod ecr;
pub mod http;
pub mod oci;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::domain::digest::Digest;
use crate::domain::image::ImageInfo;
use crate::settings::{RegistryKind, RegistrySettings};

/// How many registry requests run at once when a command needs many: at least the default
/// `versions --limit` (20), so a listing's manifests (and then its configs) go out as one batch,
/// one round trip each across a slow link (`bench/versions-rtt.sh`).
pub const CONCURRENCY: usize = 24;
/// How many deletes run at once.
pub const DELETE_CONCURRENCY: usize = 16;

/// The most backtrack reads of one manifest (Distribution's own limit).
pub const MAX_MANIFEST: u64 = 4 << 20;
/// The most backtrack reads of one image config blob.
pub const MAX_CONFIG: u64 = 4 << 20;
/// The most backtrack reads of one page of a tag list.
pub const MAX_TAG_PAGE: u64 = 8 << 20;
/// The most backtrack reads of a token answer.
pub const MAX_TOKEN: u64 = 1 << 20;
/// The most of an error answer backtrack reads (and keeps 300 characters of, for messages).
pub const MAX_ERROR_BODY: u64 = 16 << 10;
/// Pages of one tag listing, at most.
pub const MAX_TAG_PAGES: usize = 1000;
/// Tags in one listing, at most.
pub const MAX_TAGS: usize = 100_000;
/// Connect and read (between two packets) timeouts of every HTTP client.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// One image (manifest digest) in the repository with every tag on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RemoteImage {
    pub digest: Digest,
    pub tags: Vec<String>,
    pub pushed: Option<DateTime<Utc>>,
    pub size: Option<u64>,
}

/// Credentials handed to the Docker Engine for a pull.
#[derive(Debug, Clone, Default)]
pub struct PullAuth {
    pub username: Option<String>,
    pub password: Option<String>,
    pub server: String,
}

#[async_trait]
pub trait Registry: Send + Sync {
    /// `host/repository`, for messages.
    fn name(&self) -> String;

    /// `host/repository@digest`, as the Docker Engine pulls it.
    fn pull_reference(&self, digest: &Digest) -> String;

    /// Every tag in the repository.
    async fn list_tags(&self) -> Result<Vec<String>, RegistryError>;

    /// The digest a tag points at, `None` when there is no such tag.
    async fn tag_digest(&self, tag: &str) -> Result<Option<Digest>, RegistryError>;

    /// Digests of many tags; tags that do not exist are left out.
    async fn tag_digests(&self, tags: &[String]) -> Result<HashMap<String, Digest>, RegistryError> {
        futures::stream::iter(tags.iter().cloned())
            .map(|tag| async move { self.tag_digest(&tag).await.map(|d| (tag, d)) })
            .buffer_unordered(CONCURRENCY)
            .try_filter_map(|(tag, d)| async move { Ok(d.map(|d| (tag, d))) })
            .try_collect()
            .await
    }

    /// Digests of tags for a listing, where the registry may answer version tags from the cache
    /// (version tags are immutable by convention). Never used to act on anything.
    async fn listing_tag_digests(
        &self,
        tags: &[String],
        refresh: bool,
    ) -> Result<HashMap<String, Digest>, RegistryError> {
        let _ = refresh;
        self.tag_digests(tags).await
    }

    /// Metadata of one image.
    async fn image_info(&self, digest: &Digest) -> Result<ImageInfo, RegistryError>;

    /// Metadata of many images, fetched concurrently (and from the cache where it has them).
    async fn image_infos(&self, digests: &[Digest]) -> Result<HashMap<Digest, ImageInfo>, RegistryError> {
        futures::stream::iter(digests.iter().cloned())
            .map(|d| async move { self.image_info(&d).await.map(|i| (d, i)) })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await
    }

    /// Metadata already on disk, without asking the registry.
    fn cached_info(&self, digest: &Digest) -> Option<ImageInfo> {
        let _ = digest;
        None
    }

    /// Every image with its tags (for retention).
    async fn images(&self) -> Result<Vec<RemoteImage>, RegistryError> {
        let tags = self.list_tags().await?;
        let digests = self.tag_digests(&tags).await?;
        let mut by_digest: HashMap<Digest, Vec<String>> = HashMap::new();
        for (tag, digest) in digests {
            by_digest.entry(digest).or_default().push(tag);
        }
        let mut images: Vec<RemoteImage> = by_digest
            .into_iter()
            .map(|(digest, mut tags)| {
                tags.sort();
                RemoteImage {
                    digest,
                    tags,
                    pushed: None,
                    size: None,
                }
            })
            .collect();
        images.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(images)
    }

    /// Points `tag` at the image `digest` by re-putting its exact manifest bytes: no blob moves
    /// and the digest stays the same.
    async fn retag(&self, digest: &Digest, tag: &str) -> Result<(), RegistryError>;

    /// Deletes an image. `tags` are the tags on it to remove; registries that delete by digest
    /// remove them all at once, registries that untag (ECR) remove exactly these.
    async fn delete(&self, image: &RemoteImage) -> Result<(), RegistryError>;

    /// Deletes many images with bounded concurrency (or in batches where the registry has them),
    /// calling `tick` once per image; one result per image, failures do not stop the rest.
    async fn delete_many(
        &self,
        images: &[RemoteImage],
        tick: &(dyn Fn() + Sync),
    ) -> Vec<(Digest, Result<(), RegistryError>)> {
        futures::stream::iter(images.iter().cloned())
            .map(|img| async move {
                let r = self.delete(&img).await;
                tick();
                (img.digest, r)
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .collect()
            .await
    }

    /// Credentials for the Docker Engine to pull from this registry.
    async fn pull_auth(&self) -> Result<PullAuth, RegistryError>;

    /// Whether deletes would be accepted, found out without deleting anything: a delete of a
    /// digest that cannot exist. `Ok` when the registry would delete (it answers "not found"),
    /// else why not (`DeleteDisabled`, `Denied` naming the refused action, ...).
    async fn check_deletes(&self) -> Result<(), RegistryError> {
        let nothing = RemoteImage {
            digest: Digest::parse(&format!("sha256:{}", "0".repeat(64))).expect("a well-formed digest"),
            tags: Vec::new(),
            pushed: None,
            size: None,
        };
        self.delete(&nothing).await
    }

    /// Writes what was learnt to the on-disk cache.
    fn flush_cache(&self) {}
}

/// Opens the registry the settings name.
pub fn open(settings: &RegistrySettings, cache: Arc<cache::InfoCache>) -> Result<Box<dyn Registry>, RegistryError> {
    match settings.kind {
        RegistryKind::Oci => Ok(Box::new(oci::OciRegistry::new(settings, cache)?)),
        RegistryKind::Ecr => Ok(Box::new(ecr::EcrRegistry::new(settings, cache))),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("reach registry {registry}: {cause}")]
    Unreachable { registry: String, cause: String },
    #[error("authenticate to registry {registry}: {cause}")]
    Unauthorized { registry: String, cause: String },
    #[error("access {repository}: access denied{}", action.as_ref().map(|a| format!(" for {a}")).unwrap_or_default())]
    Denied { repository: String, action: Option<String> },
    #[error("find repository {repository}: it does not exist")]
    RepositoryNotFound { repository: String },
    #[error("find {reference}: no such tag or manifest")]
    ManifestNotFound { reference: String },
    #[error("delete from {registry}: the registry has deletes disabled")]
    DeleteDisabled { registry: String },
    #[error("move tag {tag} in {repository}: the repository's tags are immutable")]
    ImmutableTag { repository: String, tag: String },
    #[error("talk to registry {registry}: {message}")]
    Protocol { registry: String, message: String },
    #[error("read {what} from registry {registry}: it sent more than {limit}, the most backtrack reads")]
    TooLarge {
        registry: String,
        what: String,
        limit: String,
    },
    #[error(
        "finish with registry {registry} within {} ([registry] timeout): it is too slow or stopped answering",
        humantime::format_duration(*limit)
    )]
    Deadline {
        registry: String,
        limit: std::time::Duration,
    },
}

impl RegistryError {
    /// A tag or digest that does not exist (exit code "no such version").
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::ManifestNotFound { .. })
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Unreachable { .. } => {
                Some("is the registry running, and is [registry] url in backtrack.toml right?".into())
            }
            Self::Unauthorized { registry, cause } if registry.contains(".dkr.ecr.") || cause.contains("AWS") => Some(
                "give backtrack AWS credentials: AWS_PROFILE or [registry.ecr] profile, `aws sso login`, \
                 AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or an instance role"
                    .into(),
            ),
            Self::Unauthorized { registry, .. } => Some(format!(
                "log in with `docker login {registry}` (backtrack reads {})",
                credentials::config_file()
            )),
            Self::Denied { .. } => Some("the credentials lack permission for this repository".into()),
            Self::RepositoryNotFound { .. } => {
                Some("check [registry] repository in backtrack.toml, or push a first image".into())
            }
            Self::DeleteDisabled { .. } => Some(
                "enable deletes on the registry: `storage: delete: enabled: true` in its config.yml \
                 (REGISTRY_STORAGE_DELETE_ENABLED=true for the registry image), then restart it"
                    .into(),
            ),
            Self::TooLarge { .. } => {
                Some("the registry (or something in front of it) is misbehaving: check [registry] url".into())
            }
            Self::Deadline { .. } => {
                Some("if the registry is only slow, raise [registry] timeout in backtrack.toml (e.g. \"10m\")".into())
            }
            Self::ImmutableTag { repository, tag } => Some(format!(
                "exempt the tag from immutability: aws ecr put-image-tag-mutability --repository-name {repository} \
                 --image-tag-mutability IMMUTABLE_WITH_EXCLUSION --image-tag-mutability-exclusion-filters \
                 filterType=WILDCARD,filter={tag}"
            )),
            _ => None,
        }
    }
}

/// The innermost message of an error chain ("Connection refused (os error 111)").
pub fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A registry double whose deletes fail for one digest: a fault a real registry will not
    /// produce on demand.
    struct FailsOne {
        bad: Digest,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Registry for FailsOne {
        fn name(&self) -> String {
            "fake/repo".into()
        }
        fn pull_reference(&self, digest: &Digest) -> String {
            format!("fake/repo@{digest}")
        }
        async fn list_tags(&self) -> Result<Vec<String>, RegistryError> {
            Ok(Vec::new())
        }
        async fn tag_digest(&self, _: &str) -> Result<Option<Digest>, RegistryError> {
            Ok(None)
        }
        async fn image_info(&self, digest: &Digest) -> Result<ImageInfo, RegistryError> {
            Err(RegistryError::ManifestNotFound {
                reference: digest.to_string(),
            })
        }
        async fn retag(&self, _: &Digest, _: &str) -> Result<(), RegistryError> {
            Ok(())
        }
        async fn delete(&self, image: &RemoteImage) -> Result<(), RegistryError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if image.digest == self.bad {
                Err(RegistryError::Protocol {
                    registry: "fake".into(),
                    message: "HTTP 500: disk on fire".into(),
                })
            } else {
                Ok(())
            }
        }
        async fn pull_auth(&self) -> Result<PullAuth, RegistryError> {
            Ok(PullAuth::default())
        }
    }

    #[tokio::test]
    async fn a_failed_delete_is_reported_and_the_rest_go_on() {
        let digest = |n: u64| Digest::parse(&format!("sha256:{n:064x}")).unwrap();
        let images: Vec<RemoteImage> = (1..=20)
            .map(|n| RemoteImage {
                digest: digest(n),
                tags: vec![format!("v1.0.{n}")],
                pushed: None,
                size: None,
            })
            .collect();
        let fake = FailsOne {
            bad: digest(7),
            calls: AtomicUsize::new(0),
        };
        let ticks = AtomicUsize::new(0);
        let results = fake
            .delete_many(&images, &|| {
                ticks.fetch_add(1, Ordering::SeqCst);
            })
            .await;
        assert_eq!(results.len(), 20);
        assert_eq!(fake.calls.load(Ordering::SeqCst), 20, "every delete was tried");
        assert_eq!(ticks.load(Ordering::SeqCst), 20, "progress ticked once per image");
        let failed: Vec<&Digest> = results.iter().filter(|(_, r)| r.is_err()).map(|(d, _)| d).collect();
        assert_eq!(failed, [&digest(7)]);
    }
}
