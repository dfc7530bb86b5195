//! AWS ECR through `aws-sdk-ecr`: listing in one paginated pass of DescribeImages (digest, tags,
//! push time and size together), retag by BatchGetImage + PutImage with the same manifest bytes,
//! deletes by BatchDeleteImage in batches of 100, and pull credentials from GetAuthorizationToken.
//!
//! **Nothing here runs unless the registry is ECR**: AWS config (and its instance-metadata
//! probes) is loaded lazily, on the first call.
//!
//! Every call has connect and read timeouts and counts against the command's registry budget
//! (`[registry] timeout`); config blobs come through pre-signed URLs over a client with timeouts,
//! read up to `MAX_CONFIG`. What acts (the tag re-check, retag, delete) asks ECR at that moment,
//! never the listing this run started with.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_ecr::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ecr::types::ImageIdentifier;
use chrono::{DateTime, Utc};
use tokio::sync::OnceCell;

use super::cache::InfoCache;
use super::http::{Budget, ReadError};
use super::{
    CONNECT_TIMEOUT, MAX_CONFIG, MAX_MANIFEST, PullAuth, READ_TIMEOUT, Registry, RegistryError, RemoteImage, root_cause,
};
use crate::domain::digest::Digest;
use crate::domain::image::ImageInfo;
use crate::settings::{RegistrySettings, parse_ecr_host};

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// ECR's limit of image ids per BatchDeleteImage call.
const DELETE_BATCH: usize = 100;

pub struct EcrRegistry {
    settings: RegistrySettings,
    registry_id: Option<String>,
    region: Option<String>,
    client: OnceCell<aws_sdk_ecr::Client>,
    /// One DescribeImages pass, shared by every question in this run.
    listing: OnceCell<Vec<RemoteImage>>,
    /// Set after the first config-blob download fails (emulators have no data plane): no more tries.
    no_data_plane: std::sync::atomic::AtomicBool,
    /// For pre-signed config-blob downloads (no credentials go with them).
    download: reqwest::Client,
    budget: Budget,
    cache: Arc<InfoCache>,
}

impl EcrRegistry {
    pub fn new(settings: &RegistrySettings, cache: Arc<InfoCache>) -> Self {
        let parsed = parse_ecr_host(&settings.host);
        Self {
            registry_id: settings
                .ecr
                .registry_id
                .clone()
                .or_else(|| parsed.as_ref().map(|p| p.0.clone())),
            region: settings.ecr.region.clone().or_else(|| parsed.map(|p| p.1)),
            settings: settings.clone(),
            client: OnceCell::new(),
            listing: OnceCell::new(),
            no_data_plane: std::sync::atomic::AtomicBool::new(false),
            download: reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(READ_TIMEOUT)
                .timeout(std::time::Duration::from_secs(60))
                .redirect(reqwest::redirect::Policy::limited(5))
                .build()
                .unwrap_or_default(),
            budget: Budget::new(settings.timeout, &settings.host),
            cache,
        }
    }

    async fn client(&self) -> &aws_sdk_ecr::Client {
        self.client
            .get_or_init(|| async {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
                if let Some(r) = &self.region {
                    loader = loader.region(aws_config::Region::new(r.clone()));
                }
                if let Some(p) = &self.settings.ecr.profile {
                    loader = loader.profile_name(p);
                }
                if let Some(e) = &self.settings.ecr.endpoint_url {
                    loader = loader.endpoint_url(e);
                }
                loader = loader.timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .connect_timeout(CONNECT_TIMEOUT)
                        .read_timeout(READ_TIMEOUT)
                        .operation_attempt_timeout(std::time::Duration::from_secs(60))
                        .build(),
                );
                aws_sdk_ecr::Client::new(&loader.load().await)
            })
            .await
    }

    fn repo(&self) -> &str {
        &self.settings.repository
    }

    /// Maps an SDK error to one a person can act on; `action` is the IAM action that was called.
    fn classify<E, R>(&self, action: &str, reference: &str, err: SdkError<E, R>) -> RegistryError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let registry = self.settings.host.clone();
        let repository = self.name();
        if let SdkError::ServiceError(se) = &err {
            let e = se.err();
            let code = e.code().unwrap_or_default();
            let message = e.message().unwrap_or_default().to_string();
            return match code {
                "RepositoryNotFoundException" => RegistryError::RepositoryNotFound { repository },
                "ImageNotFoundException" => RegistryError::ManifestNotFound {
                    reference: reference.to_string(),
                },
                "AccessDeniedException" | "AccessDenied" => RegistryError::Denied {
                    repository,
                    action: Some(format!("ecr:{action}")),
                },
                "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "ExpiredTokenException"
                | "InvalidClientTokenId" => RegistryError::Unauthorized {
                    registry,
                    cause: format!("{code}: {message}"),
                },
                _ => RegistryError::Protocol {
                    registry,
                    message: format!("ecr:{action}: {code}: {message}"),
                },
            };
        }
        let cause = root_cause(&err);
        let chain = format!("{}", aws_sdk_ecr::error::DisplayErrorContext(&err)).to_ascii_lowercase();
        if chain.contains("credential") {
            return RegistryError::Unauthorized {
                registry,
                cause: format!("no AWS credentials found (environment, ~/.aws, SSO or an instance role): {cause}"),
            };
        }
        match err {
            SdkError::TimeoutError(_) => RegistryError::Unreachable {
                registry,
                cause: "timed out".into(),
            },
            SdkError::DispatchFailure(_) => RegistryError::Unreachable {
                registry,
                cause: format!(
                    "{cause} (is the region right? it is {})",
                    self.region.as_deref().unwrap_or("taken from the AWS config")
                ),
            },
            _ => RegistryError::Protocol {
                registry,
                message: format!("ecr:{action}: {cause}"),
            },
        }
    }

    async fn listing(&self) -> Result<&Vec<RemoteImage>, RegistryError> {
        self.listing
            .get_or_try_init(|| {
                self.budget.run(async {
                    let mut pages = self
                        .client()
                        .await
                        .describe_images()
                        .set_registry_id(self.registry_id.clone())
                        .repository_name(self.repo())
                        .max_results(1000)
                        .into_paginator()
                        .send();
                    // One entry per digest (some emulators list a digest once per tag).
                    let mut by_digest: std::collections::BTreeMap<Digest, RemoteImage> = Default::default();
                    while let Some(page) = pages.next().await {
                        let page = page.map_err(|e| self.classify("DescribeImages", &self.name(), e))?;
                        for d in page.image_details() {
                            let Some(digest) = d.image_digest().and_then(|d| Digest::parse(d).ok()) else {
                                continue;
                            };
                            let entry = by_digest.entry(digest.clone()).or_insert_with(|| RemoteImage {
                                digest,
                                tags: Vec::new(),
                                pushed: d.image_pushed_at().and_then(to_chrono),
                                size: d.image_size_in_bytes().and_then(|s| u64::try_from(s).ok()),
                            });
                            entry.tags.extend(d.image_tags().iter().cloned());
                            entry.tags.sort();
                            entry.tags.dedup();
                        }
                    }
                    Ok(by_digest.into_values().collect())
                })
            })
            .await
    }

    /// Asks ECR now (not the listing of this run) where a tag points.
    async fn current_tag_digest(&self, tag: &str) -> Result<Option<Digest>, RegistryError> {
        crate::domain::names::check_tag(tag).map_err(|e| RegistryError::Protocol {
            registry: self.settings.host.clone(),
            message: e.to_string(),
        })?;
        let out = self
            .budget
            .run(async {
                Ok(self
                    .client()
                    .await
                    .describe_images()
                    .set_registry_id(self.registry_id.clone())
                    .repository_name(self.repo())
                    .image_ids(ImageIdentifier::builder().image_tag(tag).build())
                    .send()
                    .await)
            })
            .await?;
        match out {
            Ok(o) => Ok(o
                .image_details()
                .first()
                .and_then(|d| d.image_digest())
                .and_then(|d| Digest::parse(d).ok())),
            Err(SdkError::ServiceError(se)) if se.err().code() == Some("ImageNotFoundException") => Ok(None),
            Err(e) => Err(self.classify("DescribeImages", &format!("{}:{tag}", self.name()), e)),
        }
    }

    /// The tags each of these images has now, asked of ECR by digest; images that are gone are
    /// left out.
    async fn current_tags(&self, images: &[RemoteImage]) -> Result<HashMap<Digest, Vec<String>>, RegistryError> {
        let mut out: HashMap<Digest, Vec<String>> = HashMap::new();
        for chunk in images.chunks(DELETE_BATCH) {
            let digests: Vec<&Digest> = chunk.iter().map(|i| &i.digest).collect();
            match self.describe_digests(&digests).await? {
                Some(found) => merge_tags(&mut out, found),
                // ECR refuses the whole call when one of them is gone: ask one by one.
                None if digests.len() > 1 => {
                    for d in digests {
                        if let Some(found) = self.describe_digests(&[d]).await? {
                            merge_tags(&mut out, found);
                        }
                    }
                }
                None => {}
            }
        }
        Ok(out)
    }

    /// DescribeImages for these digests: `None` when ECR answers that one of them is not there.
    async fn describe_digests(&self, digests: &[&Digest]) -> Result<Option<Vec<(Digest, Vec<String>)>>, RegistryError> {
        let mut req = self
            .client()
            .await
            .describe_images()
            .set_registry_id(self.registry_id.clone())
            .repository_name(self.repo());
        for d in digests {
            req = req.image_ids(ImageIdentifier::builder().image_digest(d.as_str()).build());
        }
        self.budget
            .run(async {
                match req.send().await {
                    Ok(o) => Ok(Some(
                        o.image_details()
                            .iter()
                            .filter_map(|d| {
                                let digest = Digest::parse(d.image_digest()?).ok()?;
                                Some((digest, d.image_tags().to_vec()))
                            })
                            .collect(),
                    )),
                    Err(SdkError::ServiceError(se)) if se.err().code() == Some("ImageNotFoundException") => Ok(None),
                    Err(e) => Err(self.classify("DescribeImages", &self.name(), e)),
                }
            })
            .await
    }

    async fn manifest(&self, digest: &Digest) -> Result<(String, String), RegistryError> {
        let reference = format!("{}@{digest}", self.name());
        let mut req = self
            .client()
            .await
            .batch_get_image()
            .set_registry_id(self.registry_id.clone())
            .repository_name(self.repo())
            .image_ids(ImageIdentifier::builder().image_digest(digest.as_str()).build());
        for t in MANIFEST_TYPES {
            req = req.accepted_media_types(*t);
        }
        let out = self
            .budget
            .run(async {
                req.send()
                    .await
                    .map_err(|e| self.classify("BatchGetImage", &reference, e))
            })
            .await?;
        let image = out.images().first().ok_or_else(|| RegistryError::ManifestNotFound {
            reference: reference.clone(),
        })?;
        let manifest = image.image_manifest().unwrap_or_default().to_string();
        if manifest.len() as u64 > MAX_MANIFEST {
            return Err(RegistryError::TooLarge {
                registry: self.settings.host.clone(),
                what: format!("manifest {reference}"),
                limit: format!("{} MiB", MAX_MANIFEST >> 20),
            });
        }

        let media_type = image
            .image_manifest_media_type()
            .map(str::to_string)
            .or_else(|| {
                serde_json::from_str::<serde_json::Value>(&manifest)
                    .ok()
                    .and_then(|v| v["mediaType"].as_str().map(str::to_string))
            })
            .unwrap_or_else(|| "application/vnd.docker.distribution.manifest.v2+json".into());
        Ok((manifest, media_type))
    }

    /// Labels and build time from the config blob, through a pre-signed layer URL. `Ok(None)`
    /// when the data plane is not reachable (as with API emulators); a blob that is too large,
    /// does not match its digest or does not parse is an error for this image.
    async fn config_labels(&self, digest: &Digest, manifest: &str) -> Result<Option<ConfigDetails>, RegistryError> {
        use std::sync::atomic::Ordering;
        if self.no_data_plane.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let host = &self.settings.host;
        let bad = |message: String| RegistryError::Protocol {
            registry: host.clone(),
            message,
        };
        let v: serde_json::Value =
            serde_json::from_str(manifest).map_err(|e| bad(format!("parse manifest {}@{digest}: {e}", self.name())))?;
        let Some(config_digest) = v["config"]["digest"].as_str() else {
            return Ok(None);
        };
        let config_digest = Digest::parse(config_digest)
            .map_err(|e| bad(format!("read the config digest of {}@{digest}: {e}", self.name())))?;
        let reply = self
            .budget
            .run(async {
                Ok(self
                    .client()
                    .await
                    .get_download_url_for_layer()
                    .set_registry_id(self.registry_id.clone())
                    .repository_name(self.repo())
                    .layer_digest(config_digest.as_str())
                    .customize()
                    .config_override(
                        aws_sdk_ecr::config::Builder::default()
                            .retry_config(aws_config::retry::RetryConfig::disabled()),
                    )
                    .send()
                    .await)
            })
            .await?;
        let url = match reply {
            Ok(r) => match r.download_url() {
                Some(u) => u.to_string(),
                None => return Ok(None),
            },
            Err(e) => {
                tracing::info!(
                    "no image labels from ECR (GetDownloadUrlForLayer failed): {}",
                    root_cause(&e)
                );
                self.no_data_plane.store(true, Ordering::Relaxed);
                return Ok(None);
            }
        };
        let what = format!("config blob {}@{config_digest}", self.name());
        let blob = self
            .budget
            .run(async {
                let resp = self
                    .download
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| RegistryError::Unreachable {
                        registry: host.clone(),
                        cause: root_cause(&e),
                    })?;
                if !resp.status().is_success() {
                    return Err(bad(format!("download {what}: HTTP {}", resp.status().as_u16())));
                }
                super::http::read_capped(resp, MAX_CONFIG).await.map_err(|e| match e {
                    ReadError::TooLarge => RegistryError::TooLarge {
                        registry: host.clone(),
                        what: what.clone(),
                        limit: format!("{} MiB", MAX_CONFIG >> 20),
                    },
                    ReadError::Transport(e) => RegistryError::Unreachable {
                        registry: host.clone(),
                        cause: root_cause(&e),
                    },
                })
            })
            .await?;
        if Digest::of_bytes(&blob) != config_digest {
            return Err(bad(format!("{what} does not match its digest")));
        }
        let config: serde_json::Value = serde_json::from_slice(&blob).map_err(|e| bad(format!("parse {what}: {e}")))?;
        let created = config["created"].as_str().and_then(|c| c.parse().ok());
        let labels = config["config"]["Labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some((created, labels)))
    }
}

/// Build time and labels from an image config.
type ConfigDetails = (Option<DateTime<Utc>>, std::collections::BTreeMap<String, String>);

/// Adds what DescribeImages said to the tags by digest (some emulators list a digest per tag).
fn merge_tags(out: &mut HashMap<Digest, Vec<String>>, found: Vec<(Digest, Vec<String>)>) {
    for (digest, tags) in found {
        let entry = out.entry(digest).or_default();
        entry.extend(tags);
        entry.sort();
        entry.dedup();
    }
}

fn to_chrono(t: &aws_sdk_ecr::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

#[async_trait]
impl Registry for EcrRegistry {
    fn name(&self) -> String {
        format!("{}/{}", self.settings.host, self.settings.repository)
    }

    fn pull_reference(&self, digest: &Digest) -> String {
        format!("{}/{}@{digest}", self.settings.host, self.settings.repository)
    }

    async fn list_tags(&self) -> Result<Vec<String>, RegistryError> {
        Ok(self
            .listing()
            .await?
            .iter()
            .flat_map(|i| i.tags.iter().cloned())
            .collect())
    }

    /// Asks ECR now: this answers what acts (prune's last re-check, resolving what to deploy).
    async fn tag_digest(&self, tag: &str) -> Result<Option<Digest>, RegistryError> {
        self.current_tag_digest(tag).await
    }

    async fn tag_digests(&self, tags: &[String]) -> Result<HashMap<String, Digest>, RegistryError> {
        let listing = self.listing().await?;
        let mut out = HashMap::new();
        for img in listing {
            for t in &img.tags {
                if tags.contains(t) {
                    out.insert(t.clone(), img.digest.clone());
                }
            }
        }
        Ok(out)
    }

    async fn image_info(&self, digest: &Digest) -> Result<ImageInfo, RegistryError> {
        let listed = self.listing().await?.iter().find(|i| &i.digest == digest).cloned();
        if let Some(mut info) = self.cache.get(digest) {
            info.pushed = listed.as_ref().and_then(|l| l.pushed).or(info.pushed);
            return Ok(info);
        }
        let (manifest, _) = self.manifest(digest).await?;
        let details = self.config_labels(digest, &manifest).await?;
        let info = ImageInfo {
            digest: digest.clone(),
            created: details.as_ref().and_then(|d| d.0),
            pushed: listed.as_ref().and_then(|l| l.pushed),
            size: listed.as_ref().and_then(|l| l.size),
            labels: details.as_ref().map(|d| d.1.clone()).unwrap_or_default(),
        };
        if details.is_some() {
            self.cache.put(info.clone());
        }
        Ok(info)
    }

    async fn images(&self) -> Result<Vec<RemoteImage>, RegistryError> {
        Ok(self.listing().await?.clone())
    }

    async fn retag(&self, digest: &Digest, tag: &str) -> Result<(), RegistryError> {
        crate::domain::names::check_tag(tag).map_err(|e| RegistryError::Protocol {
            registry: self.settings.host.clone(),
            message: e.to_string(),
        })?;
        let (manifest, media_type) = self.manifest(digest).await?;
        let result = self
            .budget
            .run(async {
                Ok(self
                    .client()
                    .await
                    .put_image()
                    .set_registry_id(self.registry_id.clone())
                    .repository_name(self.repo())
                    .image_manifest(manifest)
                    .image_manifest_media_type(media_type)
                    .image_tag(tag)
                    .image_digest(digest.as_str())
                    .send()
                    .await)
            })
            .await?;
        match result {
            Ok(_) => Ok(()),
            // "Already exists" is success when the tag already points at this digest; anything else
            // means the tag could not move (some implementations answer this for immutable tags).
            Err(SdkError::ServiceError(se)) if se.err().code() == Some("ImageAlreadyExistsException") => {
                match self.current_tag_digest(tag).await? {
                    Some(d) if &d == digest => Ok(()),
                    _ => Err(RegistryError::ImmutableTag {
                        repository: self.repo().to_string(),
                        tag: tag.to_string(),
                    }),
                }
            }
            Err(SdkError::ServiceError(se)) if se.err().code() == Some("ImageTagAlreadyExistsException") => {
                Err(RegistryError::ImmutableTag {
                    repository: self.repo().to_string(),
                    tag: tag.to_string(),
                })
            }
            Err(e) => Err(self.classify("PutImage", &format!("{}:{tag}", self.name()), e)),
        }
    }

    /// ECR has no switch for deletes; IAM decides. BatchDeleteImage of a digest that cannot exist
    /// is refused with AccessDenied when IAM does not allow it, and fails as ImageNotFound when it
    /// does. (`delete` itself would skip an image it cannot find without asking.)
    async fn check_deletes(&self) -> Result<(), RegistryError> {
        let nothing = format!("sha256:{}", "0".repeat(64));
        let req = self
            .client()
            .await
            .batch_delete_image()
            .set_registry_id(self.registry_id.clone())
            .repository_name(self.repo())
            .image_ids(ImageIdentifier::builder().image_digest(&nothing).build());
        let sent = self.budget.run(async { Ok(req.send().await) }).await?;
        match sent {
            Ok(out) => match out.failures().iter().find_map(|f| {
                let code = f.failure_code().map(|c| c.as_str().to_string()).unwrap_or_default();
                (code != "ImageNotFound").then(|| format!("{code}: {}", f.failure_reason().unwrap_or_default()))
            }) {
                None => Ok(()),
                Some(message) => Err(RegistryError::Protocol {
                    registry: self.settings.host.clone(),
                    message: format!("ecr:BatchDeleteImage: {message}"),
                }),
            },
            Err(e) => Err(self.classify("BatchDeleteImage", &self.name(), e)),
        }
    }

    async fn delete(&self, image: &RemoteImage) -> Result<(), RegistryError> {
        let results = self.delete_many(std::slice::from_ref(image), &|| {}).await;
        results.into_iter().next().map_or(Ok(()), |(_, r)| r)
    }

    async fn delete_many(
        &self,
        images: &[RemoteImage],
        tick: &(dyn Fn() + Sync),
    ) -> Vec<(Digest, Result<(), RegistryError>)> {
        // Ask ECR where things are now, not the listing this run started with: a tag that moved
        // to another image since must not be untagged there, and an image that gained a tag
        // since (a pointer moved onto it) is left alone.
        let mut failures: HashMap<Digest, RegistryError> = HashMap::new();
        let now = match self.current_tags(images).await {
            Ok(now) => now,
            Err(e) => {
                let shared = e.to_string();
                return images
                    .iter()
                    .map(|img| {
                        tick();
                        (
                            img.digest.clone(),
                            Err(RegistryError::Protocol {
                                registry: self.settings.host.clone(),
                                message: shared.clone(),
                            }),
                        )
                    })
                    .collect();
            }
        };
        // ECR deletes by tag (an untag; the image goes with its last tag), untagged ones by digest.
        let mut ids: Vec<(Digest, ImageIdentifier)> = Vec::new();
        for img in images {
            let Some(current) = now.get(&img.digest) else {
                continue; // already gone
            };
            let gained: Vec<&String> = current.iter().filter(|t| !img.tags.contains(t)).collect();
            if !gained.is_empty() {
                failures.insert(
                    img.digest.clone(),
                    RegistryError::Protocol {
                        registry: self.settings.host.clone(),
                        message: format!(
                            "{} gained tags since the plan ({}); not deleted",
                            img.digest,
                            gained.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    },
                );
                continue;
            }
            if current.is_empty() {
                ids.push((
                    img.digest.clone(),
                    ImageIdentifier::builder().image_digest(img.digest.as_str()).build(),
                ));
            }
            for t in current {
                ids.push((
                    img.digest.clone(),
                    ImageIdentifier::builder()
                        .image_tag(t)
                        .image_digest(img.digest.as_str())
                        .build(),
                ));
            }
        }
        for batch in ids.chunks(DELETE_BATCH) {
            let mut req = self
                .client()
                .await
                .batch_delete_image()
                .set_registry_id(self.registry_id.clone())
                .repository_name(self.repo());
            for (_, id) in batch {
                req = req.image_ids(id.clone());
            }
            let sent = self.budget.run(async { Ok(req.send().await) }).await;
            let sent = match sent {
                Ok(r) => r,
                Err(e) => {
                    let shared = e.to_string();
                    for (d, _) in batch {
                        failures.insert(
                            d.clone(),
                            RegistryError::Protocol {
                                registry: self.settings.host.clone(),
                                message: shared.clone(),
                            },
                        );
                    }
                    continue;
                }
            };
            match sent {
                Ok(out) => {
                    for f in out.failures() {
                        let id = f.image_id();
                        let digest = batch
                            .iter()
                            .find(|(_, i)| {
                                id.is_some_and(|x| {
                                    (x.image_tag().is_some() && x.image_tag() == i.image_tag())
                                        || (x.image_digest().is_some() && x.image_digest() == i.image_digest())
                                })
                            })
                            .map(|(d, _)| d.clone());
                        let code = f.failure_code().map(|c| c.as_str().to_string()).unwrap_or_default();
                        if code == "ImageNotFound" {
                            continue; // already gone is what we wanted
                        }
                        if let Some(d) = digest {
                            failures.insert(
                                d,
                                RegistryError::Protocol {
                                    registry: self.settings.host.clone(),
                                    message: format!("{code}: {}", f.failure_reason().unwrap_or_default()),
                                },
                            );
                        }
                    }
                }
                Err(e) => {
                    let shared = self.classify("BatchDeleteImage", &self.name(), e).to_string();
                    for (d, _) in batch {
                        failures.insert(
                            d.clone(),
                            RegistryError::Protocol {
                                registry: self.settings.host.clone(),
                                message: shared.clone(),
                            },
                        );
                    }
                }
            }
        }
        images
            .iter()
            .map(|img| {
                tick();
                (img.digest.clone(), failures.remove(&img.digest).map_or(Ok(()), Err))
            })
            .collect()
    }

    async fn pull_auth(&self) -> Result<PullAuth, RegistryError> {
        let out = self
            .budget
            .run(async {
                self.client()
                    .await
                    .get_authorization_token()
                    .send()
                    .await
                    .map_err(|e| self.classify("GetAuthorizationToken", &self.name(), e))
            })
            .await?;
        let data = out
            .authorization_data()
            .first()
            .ok_or_else(|| RegistryError::Protocol {
                registry: self.settings.host.clone(),
                message: "GetAuthorizationToken returned no authorization data".into(),
            })?;
        pull_auth_from_token(
            data.authorization_token().unwrap_or_default(),
            data.proxy_endpoint(),
            &self.settings.host,
        )
    }

    fn flush_cache(&self) {
        self.cache.flush();
    }
}

/// ECR's token is base64("AWS:<password>"); Docker wants the user, the password and the server.
pub fn pull_auth_from_token(token: &str, proxy_endpoint: Option<&str>, host: &str) -> Result<PullAuth, RegistryError> {
    use base64::Engine as _;
    let bad = |why: &str| RegistryError::Protocol {
        registry: host.to_string(),
        message: format!("decode the ECR authorization token: {why}"),
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .map_err(|e| bad(&e.to_string()))?;
    let text = String::from_utf8(decoded).map_err(|_| bad("not UTF-8"))?;
    let (user, password) = text.split_once(':').ok_or_else(|| bad("no ':' in it"))?;
    let server = proxy_endpoint
        .map(|p| {
            p.trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string()
        })
        .unwrap_or_else(|| host.to_string());
    Ok(PullAuth {
        username: Some(user.to_string()),
        password: Some(password.to_string()),
        server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorization_token_becomes_docker_credentials() {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode("AWS:eyJwYXlsb2FkIjoi");
        let auth = pull_auth_from_token(
            &token,
            Some("https://123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        )
        .unwrap();
        assert_eq!(auth.username.as_deref(), Some("AWS"));
        assert_eq!(auth.password.as_deref(), Some("eyJwYXlsb2FkIjoi"));
        assert_eq!(auth.server, "123456789012.dkr.ecr.eu-west-1.amazonaws.com");
        assert!(pull_auth_from_token("!!!", None, "h").is_err());
    }
}
