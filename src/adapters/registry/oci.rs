//! The OCI Distribution registry (Docker Registry v2, CNCF Distribution, Harbor, GHCR, ...).
//!
//! Every request is sent here over one keep-alive `reqwest` client, authentication included: the
//! challenge on `/v2/` is answered with a bearer token (or basic credentials) from the docker
//! config. Bodies are read as streams up to a cap (`super::MAX_*`), the command's registry time is
//! bounded (`[registry] timeout`), redirects and `Link` pages are followed by hand, and the
//! Authorization header goes only to the registry's own origin (scheme + host + port): blob storage
//! a registry redirects to gets none, as with the docker CLI. Idempotent requests are retried once
//! when the connection drops; a 401 refreshes the token once.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use oci_client::secrets::RegistryAuth;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::cache::InfoCache;
use super::http::{self, Budget, Challenge, Origin, ReadError};
use super::{
    MAX_CONFIG, MAX_ERROR_BODY, MAX_MANIFEST, MAX_TAG_PAGE, MAX_TAG_PAGES, MAX_TAGS, MAX_TOKEN, PullAuth, Registry,
    RegistryError, credentials, root_cause,
};
use crate::domain::digest::Digest;
use crate::domain::image::ImageInfo;
use crate::domain::names;
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
/// Redirects followed for one request, at most.
const MAX_REDIRECTS: usize = 5;

/// Which scope a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Pull,
    Push,
}

/// An answer with its body read (up to the cap the caller gave).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

pub struct OciRegistry {
    http: reqwest::Client,
    host: String,
    repository: String,
    scheme: &'static str,
    origin: Origin,
    budget: Budget,
    auth: OnceCell<RegistryAuth>,
    /// The registry's answer to an anonymous `/v2/` (`None` inside: no challenge).
    challenge: OnceCell<Option<Challenge>>,
    /// The Authorization header for pulls and for pushes (`None` inside: anonymous).
    pull_header: tokio::sync::Mutex<Option<Option<HeaderValue>>>,
    push_header: tokio::sync::Mutex<Option<Option<HeaderValue>>>,
    /// Manifests already fetched in this run (a listing GETs them by tag), by digest.
    seen: std::sync::Mutex<std::collections::HashMap<Digest, RawManifest>>,
    cache: Arc<InfoCache>,
}

impl OciRegistry {
    pub fn new(settings: &RegistrySettings, cache: Arc<InfoCache>) -> Result<Self, RegistryError> {
        names::check_repository(&settings.repository).map_err(|e| RegistryError::Protocol {
            registry: settings.host.clone(),
            message: e.to_string(),
        })?;
        let http = http::client(settings.insecure).map_err(|e| RegistryError::Protocol {
            registry: settings.host.clone(),
            message: format!("set up HTTP client: {e}"),
        })?;
        let scheme = if settings.plain_http { "http" } else { "https" };
        let root = Url::parse(&format!("{scheme}://{}/", settings.host)).map_err(|e| RegistryError::Protocol {
            registry: settings.host.clone(),
            message: format!("read the registry address: {e}"),
        })?;
        Ok(Self {
            http,
            host: settings.host.clone(),
            repository: settings.repository.clone(),
            scheme,
            origin: Origin::of(&root),
            budget: Budget::new(settings.timeout, &settings.host),
            auth: OnceCell::new(),
            challenge: OnceCell::new(),
            pull_header: tokio::sync::Mutex::new(None),
            push_header: tokio::sync::Mutex::new(None),
            seen: std::sync::Mutex::new(std::collections::HashMap::new()),
            cache,
        })
    }

    async fn auth(&self) -> &RegistryAuth {
        self.auth.get_or_init(|| credentials::for_host(&self.host)).await
    }

    fn unreachable(&self, e: &reqwest::Error) -> RegistryError {
        RegistryError::Unreachable {
            registry: self.host.clone(),
            cause: if e.is_timeout() {
                "timed out".into()
            } else {
                root_cause(e)
            },
        }
    }

    fn too_large(&self, what: &str, cap: u64) -> RegistryError {
        RegistryError::TooLarge {
            registry: self.host.clone(),
            what: what.to_string(),
            limit: if cap >= 1 << 20 {
                format!("{} MiB", cap >> 20)
            } else {
                format!("{} KiB", cap >> 10)
            },
        }
    }

    /// The basic credentials header, if the docker config has credentials for this registry.
    async fn basic_header(&self) -> Option<HeaderValue> {
        match self.auth().await {
            RegistryAuth::Basic(u, p) => {
                use base64::Engine as _;
                HeaderValue::from_str(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                ))
                .ok()
            }
            _ => None,
        }
    }

    /// What the registry answers an anonymous `GET /v2/` with, asked once per run.
    async fn challenge(&self) -> Result<&Option<Challenge>, RegistryError> {
        self.challenge
            .get_or_try_init(|| async {
                let url = format!("{}://{}/v2/", self.scheme, self.host);
                let answer = self
                    .exchange(Method::GET, &url, None, MAX_ERROR_BODY, "the /v2/ answer")
                    .await?;
                Ok(answer
                    .headers
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|h| h.to_str().ok())
                    .and_then(http::parse_challenge))
            })
            .await
    }

    /// The Authorization header for `op`, worked out once per run (again when `refresh`).
    async fn auth_header(&self, op: Op, refresh: bool) -> Result<Option<HeaderValue>, RegistryError> {
        let slot = match op {
            Op::Pull => &self.pull_header,
            Op::Push => &self.push_header,
        };
        let mut slot = slot.lock().await;
        if let (Some(h), false) = (slot.as_ref(), refresh) {
            return Ok(h.clone());
        }
        let header = match self.challenge().await? {
            Some(Challenge::Bearer { realm, service }) => Some(self.token(op, realm, service.as_deref()).await?),
            _ => self.basic_header().await,
        };
        *slot = Some(header.clone());
        Ok(header)
    }

    /// A bearer token from the challenge's realm. Credentials go with the request only when the
    /// realm is the registry's own origin or HTTPS (as with Docker Hub's separate auth service).
    async fn token(&self, op: Op, realm: &str, service: Option<&str>) -> Result<HeaderValue, RegistryError> {
        let unauthorized = |cause: String| RegistryError::Unauthorized {
            registry: self.host.clone(),
            cause,
        };
        let mut url =
            Url::parse(realm).map_err(|e| unauthorized(format!("the token realm '{realm}' is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(unauthorized(format!("the token realm '{realm}' is not HTTP")));
        }
        let scope = match op {
            Op::Pull => format!("repository:{}:pull", self.repository),
            Op::Push => format!("repository:{}:pull,push", self.repository),
        };
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("scope", &scope);
            if let Some(s) = service {
                q.append_pair("service", s);
            }
        }
        let credentials = if Origin::of(&url) == self.origin || url.scheme() == "https" {
            self.basic_header().await
        } else {
            tracing::warn!("not sending credentials to the plain-HTTP token service {realm}");
            None
        };
        let answer = self
            .exchange(Method::GET, url.as_str(), credentials, MAX_TOKEN, "a token")
            .await?;
        if !answer.status.is_success() {
            return Err(unauthorized(format!(
                "the token service answered {}: {}",
                answer.status.as_u16(),
                http::excerpt(&answer.body)
            )));
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&answer.body)
            .map_err(|e| unauthorized(format!("the token service sent no token: {e}")))?;
        let token = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("the token service sent no token".into()))?;
        HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| unauthorized("the token service sent a token that is not a header value".into()))
    }

    /// One request and its answer, following redirects by hand for GET and HEAD: `authorization`
    /// is sent only to the registry's own origin. Success bodies are read up to `cap` (more is
    /// [`RegistryError::TooLarge`] for `what`); error bodies up to `MAX_ERROR_BODY`, cut there.
    /// Bounded by the command's budget.
    async fn exchange(
        &self,
        method: Method,
        url: &str,
        authorization: Option<HeaderValue>,
        cap: u64,
        what: &str,
    ) -> Result<Answer, RegistryError> {
        self.exchange_with(method, url, authorization, cap, what, None, None)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn exchange_with(
        &self,
        method: Method,
        url: &str,
        authorization: Option<HeaderValue>,
        cap: u64,
        what: &str,
        accept: Option<&str>,
        body: Option<(&str, Bytes)>,
    ) -> Result<Answer, RegistryError> {
        self.budget
            .run(async {
                let mut url = Url::parse(url).map_err(|e| RegistryError::Protocol {
                    registry: self.host.clone(),
                    message: format!("build a request URL from '{url}': {e}"),
                })?;
                let mut hops = 0;
                loop {
                    let mut req = self.http.request(method.clone(), url.clone());
                    if let Some(a) = accept {
                        req = req.header(reqwest::header::ACCEPT, a);
                    }
                    if let Some((media_type, bytes)) = &body {
                        req = req
                            .header(reqwest::header::CONTENT_TYPE, *media_type)
                            .body(bytes.clone());
                    }
                    if let Some(h) = &authorization
                        && Origin::of(&url) == self.origin
                    {
                        req = req.header(reqwest::header::AUTHORIZATION, h.clone());
                    }
                    let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
                    let status = resp.status();
                    if status.is_redirection() && (method == Method::GET || method == Method::HEAD) {
                        let location = resp
                            .headers()
                            .get(reqwest::header::LOCATION)
                            .and_then(|l| l.to_str().ok())
                            .and_then(|l| url.join(l).ok())
                            .filter(|u| matches!(u.scheme(), "http" | "https"));
                        if let Some(next) = location {
                            hops += 1;
                            if hops > MAX_REDIRECTS {
                                return Err(RegistryError::Protocol {
                                    registry: self.host.clone(),
                                    message: format!("get {what}: more than {MAX_REDIRECTS} redirects"),
                                });
                            }
                            url = next;
                            continue;
                        }
                    }
                    let headers = resp.headers().clone();
                    let body = if method == Method::HEAD {
                        Bytes::new()
                    } else if status.is_success() {
                        match http::read_capped(resp, cap).await {
                            Ok(b) => b,
                            Err(ReadError::TooLarge) => return Err(self.too_large(what, cap)),
                            Err(ReadError::Transport(e)) => return Err(self.unreachable(&e)),
                        }
                    } else {
                        http::read_prefix(resp, MAX_ERROR_BODY).await
                    };
                    return Ok(Answer { status, headers, body });
                }
            })
            .await
    }

    /// Sends a request to the registry with authorization; retries once on a dropped connection
    /// (idempotent requests only) and once with a fresh token on a 401.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        op: Op,
        method: Method,
        url: &str,
        cap: u64,
        what: &str,
        accept: Option<&str>,
        body: Option<(&str, Bytes)>,
    ) -> Result<Answer, RegistryError> {
        let idempotent = method != Method::POST;
        let mut refreshed = false;
        let mut retried = false;
        loop {
            let header = self.auth_header(op, refreshed).await?;
            match self
                .exchange_with(method.clone(), url, header, cap, what, accept, body.clone())
                .await
            {
                Ok(a) if a.status == StatusCode::UNAUTHORIZED && !refreshed => refreshed = true,
                Ok(a) => return Ok(a),
                Err(RegistryError::Unreachable { cause, .. }) if idempotent && !retried && cause != "timed out" => {
                    tracing::debug!("retrying after {cause}");
                    retried = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// GETs `url` for pulling, with the manifest Accept header when `manifest`.
    async fn get(&self, url: &str, cap: u64, what: &str, manifest: bool) -> Result<Answer, RegistryError> {
        let accept = ACCEPT.join(", ");
        self.send(
            Op::Pull,
            Method::GET,
            url,
            cap,
            what,
            manifest.then_some(accept.as_str()),
            None,
        )
        .await
    }

    /// Turns an error status into the error a person can act on.
    fn status_error(&self, reference: &str, answer: &Answer) -> RegistryError {
        let status = answer.status.as_u16();
        let code = error_code(&answer.body);
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
                message: format!("{reference}: HTTP {status}: {}", http::excerpt(&answer.body)),
            },
        }
    }

    fn base(&self) -> String {
        format!("{}://{}/v2/{}", self.scheme, self.host, self.repository)
    }

    fn parse_manifest(&self, reference: &str, bytes: &[u8]) -> Result<RawManifest, RegistryError> {
        serde_json::from_slice(bytes).map_err(|e| RegistryError::Protocol {
            registry: self.host.clone(),
            message: format!("parse manifest {reference}: {e}"),
        })
    }

    async fn manifest_raw(&self, digest: &Digest) -> Result<(Bytes, RawManifest), RegistryError> {
        let reference = format!("{}@{digest}", self.name());
        let url = format!("{}/manifests/{digest}", self.base());
        let answer = self
            .get(&url, MAX_MANIFEST, &format!("manifest {reference}"), true)
            .await?;
        if !answer.status.is_success() {
            return Err(self.status_error(&reference, &answer));
        }
        if Digest::of_bytes(&answer.body) != *digest {
            return Err(RegistryError::Protocol {
                registry: self.host.clone(),
                message: format!("manifest {digest} does not match its digest"),
            });
        }
        let parsed = self.parse_manifest(&reference, &answer.body)?;
        Ok((answer.body, parsed))
    }

    async fn blob(&self, digest: &str) -> Result<Bytes, RegistryError> {
        let reference = format!("{}@{digest}", self.name());
        let parsed = Digest::parse(digest).map_err(|e| RegistryError::Protocol {
            registry: self.host.clone(),
            message: format!("read the config digest of {reference}: {e}"),
        })?;
        let url = format!("{}/blobs/{parsed}", self.base());
        let answer = self
            .get(&url, MAX_CONFIG, &format!("config blob {reference}"), false)
            .await?;
        if !answer.status.is_success() {
            return Err(self.status_error(&reference, &answer));
        }
        if Digest::of_bytes(&answer.body) != parsed {
            return Err(RegistryError::Protocol {
                registry: self.host.clone(),
                message: format!("config blob {digest} does not match its digest"),
            });
        }
        Ok(answer.body)
    }

    /// GETs a manifest by tag: its digest and content in one request. `None` when no such tag.
    /// A `Docker-Content-Digest` that is not the hash of what was sent is an error.
    async fn manifest_by_tag(&self, tag: &str) -> Result<Option<(Digest, RawManifest)>, RegistryError> {
        let reference = format!("{}:{tag}", self.name());
        let url = format!("{}/manifests/{tag}", self.base());
        let answer = self
            .get(&url, MAX_MANIFEST, &format!("manifest {reference}"), true)
            .await?;
        if !answer.status.is_success() {
            return match self.status_error(&reference, &answer) {
                RegistryError::ManifestNotFound { .. } => Ok(None),
                other => Err(other),
            };
        }
        let digest = Digest::of_bytes(&answer.body);
        self.check_digest_header(&reference, &answer.headers, &digest)?;
        let parsed = self.parse_manifest(&reference, &answer.body)?;
        Ok(Some((digest, parsed)))
    }

    /// A registry that names a digest for content must have sent content with that digest.
    fn check_digest_header(&self, reference: &str, headers: &HeaderMap, actual: &Digest) -> Result<(), RegistryError> {
        let Some(claimed) = headers.get("docker-content-digest").and_then(|v| v.to_str().ok()) else {
            return Ok(());
        };
        if claimed.starts_with("sha256:") && claimed != actual.as_str() {
            return Err(RegistryError::Protocol {
                registry: self.host.clone(),
                message: format!(
                    "manifest {reference}: the registry says it is {claimed} but what it sent is {actual}"
                ),
            });
        }
        Ok(())
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
        let size = manifest
            .layers
            .iter()
            .fold(config.size, |total, l| total.saturating_add(l.size));
        let blob = self.blob(&config.digest).await?;
        // An unreadable config is an error for this image, never an image without labels (that
        // would be cached by digest for good).
        let parsed: RawConfig = serde_json::from_slice(&blob).map_err(|e| RegistryError::Protocol {
            registry: self.host.clone(),
            message: format!("parse the config of {}@{digest}: {e}", self.name()),
        })?;
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
        let name = self.name();
        let what = format!("the tag list of {name}");
        let mut all: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut skipped = 0usize;
        let mut url = format!("{}/tags/list?n={PAGE}", self.base());
        for _ in 0..MAX_TAG_PAGES {
            let answer = self
                .get(&url, MAX_TAG_PAGE, &format!("a page of {what}"), false)
                .await?;
            if !answer.status.is_success() {
                return Err(self.status_error(&name, &answer));
            }
            let next = answer
                .headers
                .get(reqwest::header::LINK)
                .and_then(|l| l.to_str().ok())
                .and_then(http::next_link);
            let page: TagList = serde_json::from_slice(&answer.body).map_err(|e| RegistryError::Protocol {
                registry: self.host.clone(),
                message: format!("parse {what}: {e}"),
            })?;
            let before = all.len();
            for t in page.tags.unwrap_or_default() {
                // A listed tag goes into request paths: one outside the grammar is not followed.
                if !names::is_tag(&t) {
                    skipped += 1;
                    continue;
                }
                if seen.insert(t.clone()) {
                    all.push(t);
                }
            }
            if all.len() > MAX_TAGS {
                return Err(RegistryError::TooLarge {
                    registry: self.host.clone(),
                    what,
                    limit: format!("{MAX_TAGS} tags"),
                });
            }
            // Follow `Link: <...>; rel="next"` (relative to this page); a page with nothing new ends
            // it too. Another origin gets no credentials (see `exchange`).
            match next.and_then(|n| Url::parse(&url).ok()?.join(&n).ok()) {
                Some(n) if all.len() > before => url = n.to_string(),
                _ => {
                    if skipped > 0 {
                        tracing::warn!("{name}: ignored {skipped} listed tags outside the tag grammar");
                    }
                    return Ok(all);
                }
            }
        }
        Err(RegistryError::TooLarge {
            registry: self.host.clone(),
            what,
            limit: format!("{MAX_TAG_PAGES} pages"),
        })
    }

    async fn tag_digest(&self, tag: &str) -> Result<Option<Digest>, RegistryError> {
        names::check_tag(tag).map_err(|e| RegistryError::Protocol {
            registry: self.host.clone(),
            message: e.to_string(),
        })?;
        let reference = format!("{}:{tag}", self.name());
        let url = format!("{}/manifests/{tag}", self.base());
        let what = format!("manifest {reference}");
        let accept = ACCEPT.join(", ");
        let head = self
            .send(Op::Pull, Method::HEAD, &url, 0, &what, Some(&accept), None)
            .await?;
        if head.status == StatusCode::NOT_FOUND {
            // A HEAD has no body to tell a missing tag from a missing repository: ask once more.
            let check = self.get(&url, MAX_MANIFEST, &what, true).await?;
            if check.status.is_success() {
                return Ok(Some(Digest::of_bytes(&check.body)));
            }
            return match self.status_error(&reference, &check) {
                RegistryError::ManifestNotFound { .. } => Ok(None),
                other => Err(other),
            };
        }
        if !head.status.is_success() {
            return Err(self.status_error(&reference, &head));
        }
        let header = head
            .headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let digest = match header {
            Some(d) => d,
            None => {
                // Registries that omit the header: hash the manifest itself.
                let full = self.get(&url, MAX_MANIFEST, &what, true).await?;
                if !full.status.is_success() {
                    return Err(self.status_error(&reference, &full));
                }
                Digest::of_bytes(&full.body).to_string()
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
        names::check_tag(tag).map_err(|e| RegistryError::Protocol {
            registry: self.host.clone(),
            message: e.to_string(),
        })?;
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
        let answer = self
            .send(
                Op::Push,
                Method::PUT,
                &url,
                MAX_ERROR_BODY,
                &format!("the answer to putting {reference}"),
                None,
                Some((media_type.as_str(), bytes)),
            )
            .await?;
        if !answer.status.is_success() {
            return Err(match self.status_error(&reference, &answer) {
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
        let answer = self
            .send(
                Op::Push,
                Method::DELETE,
                &url,
                MAX_ERROR_BODY,
                &format!("the answer to deleting {}", image.digest),
                None,
                None,
            )
            .await?;
        let status = answer.status;
        let code = error_code(&answer.body);
        if status.is_success() || manifest_already_gone(status, &code) {
            // Gone, as wanted (already gone counts: running prune again finishes the job).
            self.cache.forget(&self.name(), Some(&image.digest), None);
            return Ok(());
        }
        let body = http::excerpt(&answer.body);
        match status.as_u16() {
            _ if code == "NAME_UNKNOWN" => Err(RegistryError::RepositoryNotFound {
                repository: self.name(),
            }),
            405 => Err(RegistryError::DeleteDisabled {
                registry: self.host.clone(),
            }),
            _ if code == "UNSUPPORTED" => Err(RegistryError::DeleteDisabled {
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
                message: format!("delete {}: HTTP {code}: {body}", image.digest),
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

/// The first error code of a registry's error body (`{"errors":[{"code":"..."}]}`), or "".
fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A DELETE answer that means the manifest is already gone: MANIFEST_UNKNOWN, or a plain 404
/// without an error code. NAME_UNKNOWN (no such repository) and anything else are not.
fn manifest_already_gone(status: StatusCode, code: &str) -> bool {
    status == StatusCode::NOT_FOUND && (code.is_empty() || code == "MANIFEST_UNKNOWN")
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
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn only_a_missing_manifest_counts_as_already_deleted() {
        assert!(manifest_already_gone(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"));
        assert!(manifest_already_gone(StatusCode::NOT_FOUND, ""));
        assert!(!manifest_already_gone(StatusCode::NOT_FOUND, "NAME_UNKNOWN"));
        assert!(!manifest_already_gone(StatusCode::NOT_FOUND, "BLOB_UNKNOWN"));
        assert!(!manifest_already_gone(StatusCode::INTERNAL_SERVER_ERROR, ""));
        assert_eq!(
            error_code(br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known"}]}"#),
            "NAME_UNKNOWN"
        );
        assert_eq!(error_code(b"<html>not found</html>"), "");
    }

    proptest! {
        #[test]
        fn arbitrary_manifest_json_never_panics(s in "\\PC{0,300}") {
            let _ = serde_json::from_slice::<RawManifest>(s.as_bytes());
            let _ = serde_json::from_slice::<RawConfig>(s.as_bytes());
            let _ = serde_json::from_slice::<TagList>(s.as_bytes());
            let _ = error_code(s.as_bytes());
        }

        #[test]
        fn manifest_shaped_json_never_panics(
            media in "\\PC{0,20}",
            digest in "\\PC{0,80}",
            size in proptest::num::u64::ANY,
            os in "\\PC{0,8}",
        ) {
            let json = serde_json::json!({
                "mediaType": media,
                "config": {"digest": digest, "size": size},
                "layers": [{"digest": digest, "size": size}, {"digest": digest, "size": size}],
                "manifests": [{"digest": digest, "platform": {"os": os, "architecture": os}}],
            });
            let m: RawManifest = serde_json::from_value(json).unwrap();
            let total = m.layers.iter().fold(m.config.as_ref().map_or(0, |c| c.size), |t, l| t.saturating_add(l.size));
            prop_assert!(total >= size);
            let _ = pick_platform(m.manifests.as_deref().unwrap_or_default());
        }
    }
}
