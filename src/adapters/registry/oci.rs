//! The OCI Distribution registry (Docker Registry v2, CNCF Distribution, Harbor, GHCR, ...).
//!
//! `oci-client` answers the authentication challenge (bearer token or basic credentials, from the
//! docker config); the requests themselves go over one keep-alive `reqwest` client with that
//! authorization, because `oci-client` re-probes `/v2/` before every request on anonymous
//! registries, hides the `Link` header of tag lists, and has no DELETE. Idempotent requests are
//! retried once when the connection drops; a 401 refreshes the token once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use reqwest::header::HeaderValue;
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::cache::InfoCache;
use super::{PullAuth, Registry, RegistryError, credentials, root_cause};
use crate::domain::digest::Digest;
use crate::domain::image::ImageInfo;
use crate::domain::version::VersionTag;
use crate::settings::RegistrySettings;

/// Manifest media types we ask for, single images and multi-platform indexes alike.
const ACCEPT: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

const PAGE: usize = 1000;
const ACCEPT_HEADER: &str = "accept";

pub struct OciRegistry {
    client: Client,
    http: reqwest::Client,
    host: String,
    repository: String,
    scheme: &'static str,
    auth: OnceCell<RegistryAuth>,
    /// The Authorization header for pulls and for pushes (`None` inside: anonymous).
    pull_header: tokio::sync::Mutex<Option<Option<HeaderValue>>>,
    push_header: tokio::sync::Mutex<Option<Option<HeaderValue>>>,
    /// Manifests already fetched in this run (a listing GETs them by tag), by digest.
    seen: std::sync::Mutex<std::collections::HashMap<Digest, RawManifest>>,
    cache: Arc<InfoCache>,
}

impl OciRegistry {
    pub fn new(settings: &RegistrySettings, cache: Arc<InfoCache>) -> Result<Self, RegistryError> {
        let protocol = if settings.plain_http {
            ClientProtocol::HttpsExcept(vec![settings.host.clone()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            accept_invalid_certificates: settings.insecure,
            connect_timeout: Some(Duration::from_secs(5)),
            read_timeout: Some(Duration::from_secs(30)),
            user_agent: concat!("backtrack/", env!("CARGO_PKG_VERSION")),
            platform_resolver: None,
            ..Default::default()
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .danger_accept_invalid_certs(settings.insecure)
            .user_agent(concat!("backtrack/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RegistryError::Protocol {
                registry: settings.host.clone(),
                message: format!("set up HTTP client: {e}"),
            })?;
        Ok(Self {
            client: Client::new(config),
            http,
            host: settings.host.clone(),
            repository: settings.repository.clone(),
            scheme: if settings.plain_http { "http" } else { "https" },
            auth: OnceCell::new(),
            pull_header: tokio::sync::Mutex::new(None),
            push_header: tokio::sync::Mutex::new(None),
            seen: std::sync::Mutex::new(std::collections::HashMap::new()),
            cache,
        })
    }

    async fn auth(&self) -> &RegistryAuth {
        self.auth.get_or_init(|| credentials::for_host(&self.host)).await
    }

    fn tag_ref(&self, tag: &str) -> Reference {
        Reference::with_tag(self.host.clone(), self.repository.clone(), tag.to_string())
    }

    /// Maps an `oci-client` error to one a person can act on.
    fn classify(&self, reference: &str, err: OciDistributionError) -> RegistryError {
        let registry = self.host.clone();
        let repository = self.name();
        match err {
            OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => RegistryError::Unreachable {
                registry,
                cause: if e.is_timeout() {
                    "timed out".into()
                } else {
                    root_cause(&e)
                },
            },
            OciDistributionError::RequestError(e) => RegistryError::Unreachable {
                registry,
                cause: root_cause(&e),
            },
            OciDistributionError::UnauthorizedError { .. } => RegistryError::Unauthorized {
                registry,
                cause: "the registry answered 401 Unauthorized".into(),
            },
            OciDistributionError::AuthenticationFailure(msg) => RegistryError::Unauthorized {
                registry,
                cause: msg.trim().to_string(),
            },
            OciDistributionError::ImageManifestNotFoundError(_) => RegistryError::ManifestNotFound {
                reference: reference.to_string(),
            },
            OciDistributionError::RegistryError { envelope, .. } => {
                let first = envelope.errors.first();
                match first.map(|e| &e.code) {
                    Some(OciErrorCode::NameUnknown) => RegistryError::RepositoryNotFound { repository },
                    Some(OciErrorCode::ManifestUnknown) | Some(OciErrorCode::NotFound) => {
                        RegistryError::ManifestNotFound {
                            reference: reference.to_string(),
                        }
                    }
                    Some(OciErrorCode::Unauthorized) => RegistryError::Unauthorized {
                        registry,
                        cause: first.map(|e| e.message.clone()).unwrap_or_default(),
                    },
                    Some(OciErrorCode::Denied) => RegistryError::Denied {
                        repository,
                        action: None,
                    },
                    _ => RegistryError::Protocol {
                        registry,
                        message: first.map_or_else(
                            || "unknown error".to_string(),
                            |e| format!("{:?}: {}", e.code, e.message),
                        ),
                    },
                }
            }
            OciDistributionError::ServerError { code: 404, .. } => RegistryError::ManifestNotFound {
                reference: reference.to_string(),
            },
            OciDistributionError::ServerError { code, message, .. } => RegistryError::Protocol {
                registry,
                message: format!("HTTP {code}: {}", message.trim()),
            },
            other => RegistryError::Protocol {
                registry,
                message: other.to_string(),
            },
        }
    }

    /// The Authorization header for `op`, worked out once per run (again when `refresh`).
    async fn auth_header(&self, op: RegistryOperation, refresh: bool) -> Result<Option<HeaderValue>, RegistryError> {
        let slot = match op {
            RegistryOperation::Pull => &self.pull_header,
            RegistryOperation::Push => &self.push_header,
        };
        let mut slot = slot.lock().await;
        if let (Some(h), false) = (slot.as_ref(), refresh) {
            return Ok(h.clone());
        }
        let auth = self.auth().await;
        let token = self
            .client
            .auth(&self.tag_ref("latest"), auth, op)
            .await
            .map_err(|e| self.classify(&self.name(), e))?;
        let header = match (token, auth) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, RegistryAuth::Basic(u, p)) => {
                use base64::Engine as _;
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                ))
            }
            _ => None,
        }
        .and_then(|h| HeaderValue::from_str(&h).ok());
        *slot = Some(header.clone());
        Ok(header)
    }

    /// Sends a request built by `build`, with authorization; retries once on a dropped
    /// connection (idempotent requests only) and once with a fresh token on a 401.
    async fn send(
        &self,
        op: RegistryOperation,
        idempotent: bool,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut refreshed = false;
        let mut retried = false;
        loop {
            let header = self.auth_header(op, refreshed).await?;
            let mut req = build(&self.http);
            if let Some(h) = header {
                req = req.header(reqwest::header::AUTHORIZATION, h);
            }
            match req.send().await {
                Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED && !refreshed => refreshed = true,
                Ok(r) => return Ok(r),
                Err(e) if idempotent && !retried && (e.is_connect() || e.is_request()) && !e.is_timeout() => {
                    tracing::debug!("retrying after {}", root_cause(&e));
                    retried = true;
                }
                Err(e) => {
                    return Err(RegistryError::Unreachable {
                        registry: self.host.clone(),
                        cause: if e.is_timeout() {
                            "timed out".into()
                        } else {
                            root_cause(&e)
                        },
                    });
                }
            }
        }
    }

    /// Turns an error status into the error a person can act on.
    async fn status_error(&self, reference: &str, resp: reqwest::Response) -> RegistryError {
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        let code = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_string))
            .unwrap_or_default();
        match (status, code.as_str()) {
            (_, "NAME_UNKNOWN") => RegistryError::RepositoryNotFound {
                repository: self.name(),
            },
            (404, _) | (_, "MANIFEST_UNKNOWN") => RegistryError::ManifestNotFound {
                reference: reference.to_string(),
            },
            (401, _) | (_, "UNAUTHORIZED") => RegistryError::Unauthorized {
                registry: self.host.clone(),
                cause: format!("the registry answered {status} for {reference}"),
            },
            (403, _) | (_, "DENIED") => RegistryError::Denied {
                repository: self.name(),
                action: None,
            },
            _ => RegistryError::Protocol {
                registry: self.host.clone(),
                message: format!("{reference}: HTTP {status}: {}", body.trim()),
            },
        }
    }

    fn base(&self) -> String {
        format!("{}://{}/v2/{}", self.scheme, self.host, self.repository)
    }

    async fn manifest_raw(&self, digest: &Digest) -> Result<(bytes::Bytes, RawManifest), RegistryError> {
        let reference = format!("{}@{digest}", self.name());
        let url = format!("{}/manifests/{digest}", self.base());
        let resp = self
            .send(RegistryOperation::Pull, true, |c| {
                c.get(&url).header(ACCEPT_HEADER, ACCEPT.join(", "))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&reference, resp).await);
        }
        let bytes = resp.bytes().await.map_err(|e| RegistryError::Unreachable {
            registry: self.host.clone(),
            cause: root_cause(&e),
        })?;
        if Digest::of_bytes(&bytes) != *digest {
            return Err(RegistryError::Protocol {
                registry: self.host.clone(),
                message: format!("manifest {digest} does not match its digest"),
            });
        }
        let parsed: RawManifest = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Protocol {
            registry: self.host.clone(),
            message: format!("parse manifest {digest}: {e}"),
        })?;
        Ok((bytes, parsed))
    }

    async fn blob(&self, digest: &str) -> Result<bytes::Bytes, RegistryError> {
        let reference = format!("{}@{digest}", self.name());
        let url = format!("{}/blobs/{digest}", self.base());
        let resp = self.send(RegistryOperation::Pull, true, |c| c.get(&url)).await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&reference, resp).await);
        }
        resp.bytes().await.map_err(|e| RegistryError::Unreachable {
            registry: self.host.clone(),
            cause: root_cause(&e),
        })
    }

    /// GETs a manifest by tag: its digest and content in one request. `None` when no such tag.
    async fn manifest_by_tag(&self, tag: &str) -> Result<Option<(Digest, RawManifest)>, RegistryError> {
        let reference = format!("{}:{tag}", self.name());
        let url = format!("{}/manifests/{tag}", self.base());
        let resp = self
            .send(RegistryOperation::Pull, true, |c| {
                c.get(&url).header(ACCEPT_HEADER, ACCEPT.join(", "))
            })
            .await?;
        if !resp.status().is_success() {
            return match self.status_error(&reference, resp).await {
                RegistryError::ManifestNotFound { .. } => Ok(None),
                other => Err(other),
            };
        }
        let bytes = resp.bytes().await.map_err(|e| RegistryError::Unreachable {
            registry: self.host.clone(),
            cause: root_cause(&e),
        })?;
        let digest = Digest::of_bytes(&bytes);
        let parsed: RawManifest = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Protocol {
            registry: self.host.clone(),
            message: format!("parse manifest {reference}: {e}"),
        })?;
        Ok(Some((digest, parsed)))
    }

    async fn fetch_info(&self, digest: &Digest) -> Result<ImageInfo, RegistryError> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(digest);
        let mut manifest = match seen {
            Some(m) => m,
            None => self.manifest_raw(digest).await?.1,
        };
        if let Some(entries) = &manifest.manifests {
            // A multi-platform index: describe the image for this machine's platform.
            let child = pick_platform(entries).ok_or_else(|| RegistryError::Protocol {
                registry: self.host.clone(),
                message: format!("image index {digest} lists no manifests"),
            })?;
            let child = Digest::parse(&child).map_err(|e| RegistryError::Protocol {
                registry: self.host.clone(),
                message: e.to_string(),
            })?;
            manifest = self.manifest_raw(&child).await?.1;
        }
        let Some(config) = manifest.config else {
            return Err(RegistryError::Protocol {
                registry: self.host.clone(),
                message: format!("manifest {digest} has no config (not an image?)"),
            });
        };
        let size = config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>();
        let blob = self.blob(&config.digest).await?;
        let parsed: RawConfig = serde_json::from_slice(&blob).unwrap_or_default();
        Ok(ImageInfo {
            digest: digest.clone(),
            created: parsed.created,
            pushed: None,
            size: Some(size),
            labels: parsed.config.and_then(|c| c.labels).unwrap_or_default(),
        })
    }
}

#[async_trait]
impl Registry for OciRegistry {
    fn name(&self) -> String {
        format!("{}/{}", self.host, self.repository)
    }

    fn pull_reference(&self, digest: &Digest) -> String {
        format!("{}/{}@{digest}", self.host, self.repository)
    }

    async fn list_tags(&self) -> Result<Vec<String>, RegistryError> {
        let mut all: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut url = format!("{}/tags/list?n={PAGE}", self.base());
        loop {
            let resp = self.send(RegistryOperation::Pull, true, |c| c.get(&url)).await?;
            if !resp.status().is_success() {
                return Err(self.status_error(&self.name(), resp).await);
            }
            let next = resp
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|l| l.to_str().ok())
                .and_then(next_link);
            let page: TagList = resp.json().await.map_err(|e| RegistryError::Protocol {
                registry: self.host.clone(),
                message: format!("parse the tag list: {}", root_cause(&e)),
            })?;
            let before = all.len();
            all.extend(
                page.tags
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|t| seen.insert(t.clone())),
            );
            // Follow `Link: <...>; rel="next"`; a page with nothing new ends it too.
            match next {
                Some(n) if all.len() > before => {
                    url = if n.starts_with("http") {
                        n
                    } else {
                        format!("{}://{}{n}", self.scheme, self.host)
                    };
                }
                _ => break,
            }
        }
        Ok(all)
    }

    async fn tag_digest(&self, tag: &str) -> Result<Option<Digest>, RegistryError> {
        let reference = format!("{}:{tag}", self.name());
        let url = format!("{}/manifests/{tag}", self.base());
        let resp = self
            .send(RegistryOperation::Pull, true, |c| {
                c.head(&url).header(ACCEPT_HEADER, ACCEPT.join(", "))
            })
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            // A HEAD has no body to tell a missing tag from a missing repository: ask once more.
            let check = self
                .send(RegistryOperation::Pull, true, |c| {
                    c.get(&url).header(ACCEPT_HEADER, ACCEPT.join(", "))
                })
                .await?;
            return match self.status_error(&reference, check).await {
                RegistryError::ManifestNotFound { .. } => Ok(None),
                other => Err(other),
            };
        }
        if !resp.status().is_success() {
            return Err(self.status_error(&reference, resp).await);
        }
        let header = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let digest = match header {
            Some(d) => d,
            None => {
                // Registries that omit the header: hash the manifest itself.
                let full = self
                    .send(RegistryOperation::Pull, true, |c| {
                        c.get(&url).header(ACCEPT_HEADER, ACCEPT.join(", "))
                    })
                    .await?;
                let bytes = full.bytes().await.map_err(|e| RegistryError::Unreachable {
                    registry: self.host.clone(),
                    cause: root_cause(&e),
                })?;
                Digest::of_bytes(&bytes).to_string()
            }
        };
        Digest::parse(&digest).map(Some).map_err(|e| RegistryError::Protocol {
            registry: self.host.clone(),
            message: e.to_string(),
        })
    }

    async fn listing_tag_digests(
        &self,
        tags: &[String],
        refresh: bool,
    ) -> Result<std::collections::HashMap<String, Digest>, RegistryError> {
        let name = self.name();
        let mut out = std::collections::HashMap::new();
        let mut ask = Vec::new();
        for t in tags {
            let cached = (!refresh && VersionTag::parse(t).is_some())
                .then(|| self.cache.version_tag(&name, t))
                .flatten();
            match cached {
                Some(d) => {
                    out.insert(t.clone(), d);
                }
                None => ask.push(t.clone()),
            }
        }
        // GET rather than HEAD: the manifest comes along, so describing the image later costs
        // one request (its config) instead of two.
        let fetched: Vec<(String, Option<(Digest, RawManifest)>)> = futures::stream::iter(ask)
            .map(|t| async move { self.manifest_by_tag(&t).await.map(|m| (t, m)) })
            .buffer_unordered(super::CONCURRENCY)
            .try_collect()
            .await?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for (t, m) in fetched {
            let Some((d, manifest)) = m else { continue };
            if VersionTag::parse(&t).is_some() {
                self.cache.put_version_tag(&name, &t, &d);
            }
            if self.cache.get(&d).is_none() {
                seen.insert(d.clone(), manifest);
            }
            out.insert(t, d);
        }
        Ok(out)
    }

    async fn image_info(&self, digest: &Digest) -> Result<ImageInfo, RegistryError> {
        if let Some(info) = self.cache.get(digest) {
            return Ok(info);
        }
        let info = self.fetch_info(digest).await?;
        self.cache.put(info.clone());
        Ok(info)
    }

    async fn retag(&self, digest: &Digest, tag: &str) -> Result<(), RegistryError> {
        let (bytes, manifest) = self.manifest_raw(digest).await?;
        let media_type = manifest.media_type.unwrap_or_else(|| {
            if manifest.manifests.is_some() {
                "application/vnd.oci.image.index.v1+json".into()
            } else {
                "application/vnd.oci.image.manifest.v1+json".into()
            }
        });
        let reference = format!("{}:{tag}", self.name());
        let url = format!("{}/manifests/{tag}", self.base());
        // The same bytes under another name: no blob moves, the digest cannot change.
        let resp = self
            .send(RegistryOperation::Push, true, |c| {
                c.put(&url)
                    .header(reqwest::header::CONTENT_TYPE, media_type.as_str())
                    .body(bytes.clone())
            })
            .await?;
        if !resp.status().is_success() {
            return Err(match self.status_error(&reference, resp).await {
                RegistryError::Protocol { message, .. }
                    if message.contains("TAG_INVALID") || message.contains("immutable") =>
                {
                    RegistryError::ImmutableTag {
                        repository: self.name(),
                        tag: tag.to_string(),
                    }
                }
                other => other,
            });
        }
        self.cache.forget(&self.name(), None, Some(tag));
        Ok(())
    }

    async fn delete(&self, image: &super::RemoteImage) -> Result<(), RegistryError> {
        let url = format!("{}/manifests/{}", self.base(), image.digest);
        let resp = self.send(RegistryOperation::Push, true, |c| c.delete(&url)).await?;
        let status = resp.status();
        if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
            // Gone, as wanted (already gone counts: running prune again finishes the job).
            self.cache.forget(&self.name(), Some(&image.digest), None);
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        match status.as_u16() {
            405 => Err(RegistryError::DeleteDisabled {
                registry: self.host.clone(),
            }),
            _ if body.contains("UNSUPPORTED") => Err(RegistryError::DeleteDisabled {
                registry: self.host.clone(),
            }),
            401 => Err(RegistryError::Unauthorized {
                registry: self.host.clone(),
                cause: "the registry refused the delete (401)".into(),
            }),
            403 => Err(RegistryError::Denied {
                repository: self.name(),
                action: Some("delete".into()),
            }),
            code => Err(RegistryError::Protocol {
                registry: self.host.clone(),
                message: format!("delete {}: HTTP {code}: {}", image.digest, body.trim()),
            }),
        }
    }

    async fn pull_auth(&self) -> Result<PullAuth, RegistryError> {
        let (username, password) = match self.auth().await {
            RegistryAuth::Basic(u, p) => (Some(u.clone()), Some(p.clone())),
            _ => (None, None),
        };
        Ok(PullAuth {
            username,
            password,
            server: self.host.clone(),
        })
    }

    fn cached_info(&self, digest: &Digest) -> Option<ImageInfo> {
        self.cache.get(digest)
    }

    fn flush_cache(&self) {
        self.cache.flush();
    }
}

#[derive(Debug, Deserialize)]
struct TagList {
    tags: Option<Vec<String>>,
}

/// The target of `rel="next"` in a `Link` header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .contains("rel=\"next\"")
            .then(|| url.trim().trim_start_matches('<').trim_end_matches('>').to_string())
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    media_type: Option<String>,
    manifests: Option<Vec<IndexEntry>>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    size: u64,
}

#[derive(Debug, Clone, Deserialize)]
struct IndexEntry {
    digest: String,
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    os: String,
    architecture: String,
}

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    created: Option<DateTime<Utc>>,
    config: Option<RawContainerConfig>,
}

#[derive(Debug, Default, Deserialize)]
struct RawContainerConfig {
    #[serde(rename = "Labels")]
    labels: Option<BTreeMap<String, String>>,
}

/// The entry for this machine's platform (linux, this CPU), else the first real image.
fn pick_platform(entries: &[IndexEntry]) -> Option<String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    entries
        .iter()
        .find(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .or_else(|| {
            entries
                .iter()
                .find(|e| e.platform.as_ref().is_none_or(|p| p.architecture != "unknown"))
        })
        .map(|e| e.digest.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_is_read_from_the_link_header() {
        assert_eq!(
            next_link("</v2/app/tags/list?n=1000&last=v1.2.3>; rel=\"next\"").as_deref(),
            Some("/v2/app/tags/list?n=1000&last=v1.2.3")
        );
        assert_eq!(
            next_link("<https://x/a>; rel=\"prev\", <https://x/b>; rel=\"next\"").as_deref(),
            Some("https://x/b")
        );
        assert_eq!(next_link("<https://x/a>; rel=\"prev\""), None);
    }
}
