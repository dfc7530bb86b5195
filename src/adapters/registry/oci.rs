//! The OCI Distribution registry (Docker Registry v2, CNCF Distribution, Harbor, GHCR, ...)
//! through `oci-client`, plus the one call it lacks (manifest DELETE) over the same HTTP stack.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::cache::InfoCache;
use super::{PullAuth, Registry, RegistryError, credentials, root_cause};
use crate::domain::digest::Digest;
use crate::domain::image::ImageInfo;
use crate::settings::RegistrySettings;

/// Manifest media types we ask for, single images and multi-platform indexes alike.
const ACCEPT: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

const PAGE: usize = 1000;

pub struct OciRegistry {
    client: Client,
    http: reqwest::Client,
    host: String,
    repository: String,
    scheme: &'static str,
    auth: OnceCell<RegistryAuth>,
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
            cache,
        })
    }

    async fn auth(&self) -> &RegistryAuth {
        self.auth.get_or_init(|| credentials::for_host(&self.host)).await
    }

    fn tag_ref(&self, tag: &str) -> Reference {
        Reference::with_tag(self.host.clone(), self.repository.clone(), tag.to_string())
    }

    fn digest_ref(&self, digest: &Digest) -> Reference {
        Reference::with_digest(self.host.clone(), self.repository.clone(), digest.to_string())
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

    async fn manifest_raw(&self, digest: &Digest) -> Result<(bytes::Bytes, RawManifest), RegistryError> {
        let reference = self.digest_ref(digest);
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&reference, self.auth().await, ACCEPT)
            .await
            .map_err(|e| self.classify(&format!("{}@{digest}", self.name()), e))?;
        let parsed: RawManifest = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Protocol {
            registry: self.host.clone(),
            message: format!("parse manifest {digest}: {e}"),
        })?;
        Ok((bytes, parsed))
    }

    async fn fetch_info(&self, digest: &Digest) -> Result<ImageInfo, RegistryError> {
        let (_, mut manifest) = self.manifest_raw(digest).await?;
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
        let mut blob = Vec::with_capacity(config.size as usize);
        self.client
            .pull_blob(&self.digest_ref(digest), config.digest.as_str(), &mut blob)
            .await
            .map_err(|e| self.classify(&format!("{}@{}", self.name(), config.digest), e))?;
        let parsed: RawConfig = serde_json::from_slice(&blob).unwrap_or_default();
        Ok(ImageInfo {
            digest: digest.clone(),
            created: parsed.created,
            pushed: None,
            size: Some(size),
            labels: parsed.config.and_then(|c| c.labels).unwrap_or_default(),
        })
    }

    fn manifest_url(&self, reference: &str) -> String {
        format!(
            "{}://{}/v2/{}/manifests/{reference}",
            self.scheme, self.host, self.repository
        )
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
        let reference = self.tag_ref("latest");
        let auth = self.auth().await;
        let mut all: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut last: Option<String> = None;
        loop {
            let page = self
                .client
                .list_tags(&reference, auth, Some(PAGE), last.as_deref())
                .await
                .map_err(|e| self.classify(&self.name(), e))?;
            let fresh: Vec<String> = page.tags.into_iter().filter(|t| seen.insert(t.clone())).collect();
            // A page with nothing new is the end (some registries ignore `last`); so is a short one.
            let done = fresh.is_empty() || fresh.len() < PAGE;
            last = fresh.last().cloned();
            all.extend(fresh);
            if done {
                break;
            }
        }
        Ok(all)
    }

    async fn tag_digest(&self, tag: &str) -> Result<Option<Digest>, RegistryError> {
        let reference = self.tag_ref(tag);
        match self.client.fetch_manifest_digest(&reference, self.auth().await).await {
            Ok(d) => Digest::parse(&d).map(Some).map_err(|e| RegistryError::Protocol {
                registry: self.host.clone(),
                message: e.to_string(),
            }),
            Err(e) => match self.classify(&format!("{}:{tag}", self.name()), e) {
                RegistryError::ManifestNotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
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
        let content_type =
            reqwest::header::HeaderValue::from_str(&media_type).map_err(|e| RegistryError::Protocol {
                registry: self.host.clone(),
                message: format!("media type {media_type:?}: {e}"),
            })?;
        // Push rights are checked (and a push token fetched) before the PUT.
        self.client
            .auth(&self.tag_ref(tag), self.auth().await, RegistryOperation::Push)
            .await
            .map_err(|e| self.classify(&format!("{}:{tag}", self.name()), e))?;
        self.client
            .push_manifest_raw(&self.tag_ref(tag), bytes, content_type)
            .await
            .map_err(|e| self.classify(&format!("{}:{tag}", self.name()), e))?;
        Ok(())
    }

    async fn delete(&self, image: &super::RemoteImage) -> Result<(), RegistryError> {
        let reference = self.digest_ref(&image.digest);
        let auth = self.auth().await;
        let token = self
            .client
            .auth(&reference, auth, RegistryOperation::Push)
            .await
            .map_err(|e| self.classify(&self.name(), e))?;
        let mut req = self.http.delete(self.manifest_url(image.digest.as_str()));
        req = match (&token, auth) {
            (Some(t), _) => req.bearer_auth(t),
            (None, RegistryAuth::Basic(u, p)) => req.basic_auth(u, Some(p)),
            _ => req,
        };
        let resp = req.send().await.map_err(|e| RegistryError::Unreachable {
            registry: self.host.clone(),
            cause: root_cause(&e),
        })?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        match status.as_u16() {
            200..=299 | 404 => Ok(()), // already gone is what we wanted
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

    fn flush_cache(&self) {
        self.cache.flush();
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    media_type: Option<String>,
    manifests: Option<Vec<IndexEntry>>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    size: u64,
}

#[derive(Debug, Deserialize)]
struct IndexEntry {
    digest: String,
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
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
