//! The Docker Engine adapter (bollard): find the target's containers, pull by digest, and the
//! primitive steps of a swap (stop, rename, create a clone on another image, start, remove),
//! plus what validation reads (state, health, logs).

pub mod ahead;
pub mod build;
pub mod clone;
pub mod context;
pub mod images;
pub mod pipeline;
pub mod snapshot;
pub mod swarm;
pub mod tls;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerUpdateBody, EndpointSettings, HealthStatusEnum,
    ImageInspect, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::{FutureExt, StreamExt};
use serde::Serialize;

use crate::adapters::registry::PullAuth;
use crate::adapters::ssh::{self, SshError, SshSession};
use crate::domain::digest::Digest;
use crate::settings::{TargetKind, TargetSettings};

pub const LABEL_COMPOSE_PROJECT: &str = "com.docker.compose.project";
pub const LABEL_COMPOSE_SERVICE: &str = "com.docker.compose.service";
pub const LABEL_COMPOSE_NUMBER: &str = "com.docker.compose.container-number";
/// Labels backtrack puts on the containers it creates.
pub const LABEL_TAG: &str = "io.backtrack.tag";
pub const LABEL_VERSION: &str = "io.backtrack.version";
pub const LABEL_EMERGENCY: &str = "io.backtrack.emergency";
/// Suffix of the stopped previous container kept during a swap, until validation passes.
pub const BACKUP_SUFFIX: &str = "-backtrack-prev";
/// Suffix of the new container while it is created beside the old one, before the renames.
pub const NEXT_SUFFIX: &str = "-backtrack-next";
/// Suffix of a target container that `emergency` stopped and set aside.
pub const PRE_EMERGENCY_SUFFIX: &str = "-backtrack-pre-emergency";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("reach the docker engine at {host}: {cause}")]
    Unreachable { host: String, cause: String },
    #[error("find {what}: no such container")]
    TargetNotFound { what: String },
    #[error("pull {reference}: {message}")]
    Pull { reference: String, message: String },
    #[error("{action} container {container}: {message}")]
    Container {
        action: &'static str,
        container: String,
        message: String,
    },
    #[error("find swarm service {}: no such service", match stack { Some(s) => format!("{name} in stack {s}"), None => name.clone() })]
    ServiceNotFound { name: String, stack: Option<String> },
    #[error("use the swarm at {host}: {message}")]
    NotManager { host: String, message: String },
    #[error("{action}: {message}")]
    Other { action: String, message: String },
    /// The host of an `ssh://` engine refused or could not be reached.
    #[error(transparent)]
    Host(#[from] SshError),
    /// TLS to a `tcp://` engine failed (files, certificates, a plain-HTTP port).
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

impl EngineError {
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Unreachable { .. } => {
                Some("is dockerd running? set [target] host or DOCKER_HOST if it listens elsewhere".into())
            }
            Self::TargetNotFound { .. } => {
                Some("check [target] name (and project) in backtrack.toml against `docker ps -a`".into())
            }
            Self::Pull { .. } => Some("check that the registry is reachable from the docker engine".into()),
            Self::Host(e) => e.hint(),
            Self::ServiceNotFound { .. } => Some(
                "check [target] name (and stack) in backtrack.toml against `docker service ls` on a manager".into(),
            ),
            Self::NotManager { .. } => Some(
                "point [target] host (or --host) at a manager of the swarm: `docker node ls` there lists the nodes"
                    .into(),
            ),
            Self::Tls(e) => e.hint(),
            _ => None,
        }
    }
}

/// A container of the target as the engine reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerView {
    pub name: String,
    pub id: String,
    /// `Config.Image`: the reference it was created from (`repo@sha256:...` once backtrack made it).
    pub image_ref: String,
    /// The local image id (config digest).
    pub image_id: String,
    pub state: String,
    pub health: Option<String>,
    pub restart_count: i64,
    pub labels: HashMap<String, String>,
    pub env: Vec<String>,
}

impl ContainerView {
    pub fn from_inspect(c: &ContainerInspectResponse) -> Self {
        let config = c.config.clone().unwrap_or_default();
        let state = c.state.clone().unwrap_or_default();
        Self {
            name: c.name.clone().unwrap_or_default().trim_start_matches('/').to_string(),
            id: c.id.clone().unwrap_or_default(),
            image_ref: config.image.unwrap_or_default(),
            image_id: c.image.clone().unwrap_or_default(),
            state: state.status.map(|s| s.to_string()).unwrap_or_else(|| "unknown".into()),
            health: state.health.and_then(|h| h.status).and_then(|s| match s {
                HealthStatusEnum::EMPTY | HealthStatusEnum::NONE => None,
                other => Some(other.to_string()),
            }),
            restart_count: c.restart_count.unwrap_or(0),
            labels: config.labels.unwrap_or_default(),
            env: config.env.unwrap_or_default(),
        }
    }

    /// The manifest digest pinned in `Config.Image`, if the container was created by digest.
    pub fn pinned_digest(&self) -> Option<Digest> {
        self.image_ref.rsplit_once('@').and_then(|(_, d)| Digest::parse(d).ok())
    }

    pub fn running(&self) -> bool {
        self.state == "running"
    }
}

/// What the engine says about a container right now, for validation.
#[derive(Debug, Clone)]
pub struct Liveness {
    pub status: String,
    pub running: bool,
    pub restarting: bool,
    pub exit_code: i64,
    pub restart_count: i64,
    /// `None` when the image has no HEALTHCHECK.
    pub health: Option<String>,
}

impl Liveness {
    /// A container's state, as validation reads it.
    pub fn of(c: &ContainerInspectResponse) -> Self {
        let state = c.state.clone().unwrap_or_default();
        Self {
            status: state.status.map(|s| s.to_string()).unwrap_or_default(),
            running: state.running.unwrap_or(false),
            restarting: state.restarting.unwrap_or(false),
            exit_code: state.exit_code.unwrap_or(0),
            restart_count: c.restart_count.unwrap_or(0),
            health: state.health.and_then(|h| h.status).and_then(|s| match s {
                HealthStatusEnum::EMPTY | HealthStatusEnum::NONE => None,
                other => Some(other.to_string()),
            }),
        }
    }
}

/// What `doctor` reports of an engine.
#[derive(Debug, Clone, Serialize)]
pub struct EngineAbout {
    pub version: String,
    pub api_version: String,
    pub os: String,
    pub arch: String,
    /// `DockerRootDir`: where images, containers and volumes live on the engine's host.
    pub root_dir: Option<String>,
}

pub struct Engine {
    docker: Docker,
    host: String,
    /// The connection to the engine's host, for an `ssh://` engine: probes go through it too.
    ssh: Option<Arc<SshSession>>,
    /// Images inspected by a content address (an image id, or a reference pinned by digest):
    /// what such an inspect says cannot change, so it is asked once per run. Only images found
    /// are kept, and an image removal forgets them all.
    images: std::sync::Mutex<HashMap<String, ImageInspect>>,
    /// The local end of an SSH connection's forward to the engine's socket, for `pipeline`.
    raw: Option<std::path::PathBuf>,
    /// A connection opened ahead for the next `pipeline`.
    spare: tokio::sync::Mutex<Option<tokio::net::UnixStream>>,
    /// An HTTP probe made by the engine's host itself (the state shell's `curl`), for an engine
    /// over SSH: one round trip where a forward opens a channel first.
    host_probe: std::sync::OnceLock<HostProber>,
    /// The host said it cannot probe (no `curl` there): probes go through forwards.
    no_host_probe: std::sync::atomic::AtomicBool,
    /// What was read ahead as the connection's session started (`ahead`), until something changes.
    early: ahead::Early,
    /// Image configs by content address kept on disk between runs (engines across a network).
    configs: Option<ahead::ConfigCache>,
}

/// GETs a URL from the engine's host (blocking): its status, or why not and whether anything
/// answered; `None` when the host cannot (then the probe goes through a forward).
pub type HostProber = Arc<dyn Fn(&str) -> Option<Result<u16, (String, bool)>> + Send + Sync>;

/// Where an HTTP probe is sent so that it reaches what the engine's host would reach.
#[derive(Debug, Clone)]
pub struct ProbeRoute {
    /// The URL to request (the original, or one on a local forward).
    pub url: String,
    /// The `Host` header the original URL implies, when the URL was rewritten.
    pub host_header: Option<String>,
}

impl Engine {
    /// Connects (the `[target] host`, else DOCKER_HOST, else the local socket) and negotiates the
    /// API version; a daemon that does not answer within 5 s is an error.
    pub async fn connect(host: Option<&str>) -> Result<Self, EngineError> {
        let shown = host
            .map(str::to_string)
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        let unreachable = |cause: String| EngineError::Unreachable {
            host: shown.clone(),
            cause,
        };
        let docker = match host {
            Some(h) => Docker::connect_with_host(h),
            None => Docker::connect_with_defaults(),
        }
        .map_err(|e| unreachable(e.to_string()))?;
        // A socket's engine says its API version in `/_ping`'s header (as `negotiated`).
        let negotiate = async {
            match shown.strip_prefix("unix://") {
                Some(path) => {
                    let version = api_version(&ssh::socket_transport(path.into(), None), LOCAL_BASE).await?;
                    Docker::connect_with_unix(&shown, 120, &version)
                }
                None => docker.negotiate_version().await,
            }
        };
        let docker = tokio::time::timeout(Duration::from_secs(5), negotiate)
            .await
            .map_err(|_| unreachable("no answer within 5s".into()))?
            .map_err(|e| {
                let cause = short_error(&e);
                // A Go TLS server's answer to plain HTTP.
                if cause.contains("HTTP request to an HTTPS server") {
                    EngineError::Tls(tls::TlsError::TlsNeeded { host: shown.clone() })
                } else {
                    unreachable(cause)
                }
            })?;
        Ok(Self::made(docker, shown, None))
    }

    /// Reaches a `tcp://` engine over TLS with the files in `files` (as `docker --tlsverify`
    /// does) and negotiates the API version within `timeout`. A TLS failure (a missing file, a
    /// certificate rejected either way, a plain-HTTP port) is told apart from an engine that
    /// does not answer.
    pub async fn connect_tls(
        host: &str,
        port: u16,
        files: &crate::settings::TlsFiles,
        timeout: Duration,
    ) -> Result<Self, EngineError> {
        let shown = format!("tcp://{host}:{port}");
        let transport = tls::Transport::new(host, port, files, timeout)?;
        let failures = transport.failures();
        let call = transport.call;
        let cause = match tokio::time::timeout(timeout, negotiated(call, &format!("https://{host}:{port}"))).await {
            Ok(Ok(docker)) => {
                return Ok(Self::made(docker, shown, None));
            }
            Ok(Err(e)) => short_error(&e),
            Err(_) => format!("no answer within {}s", timeout.as_secs_f32()),
        };
        match failures.first() {
            Some(e) => Err(e.into()),
            None => Err(EngineError::Unreachable { host: shown, cause }),
        }
    }

    /// Starts negotiating with the engine behind the forward the connection made at login for
    /// the engine socket remembered from the last run, while the host's session is still
    /// starting: the channel and `/_ping` round trips are spent before anything waits on them.
    /// `connect_ssh` uses it once the host has named that same engine.
    pub fn negotiate_ahead(session: &SshSession, reads: &ahead::ReadAhead) -> Option<NegotiatedAhead> {
        let socket = session.premade_engine_socket()?;
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let _entered = runtime.enter();
        let transport = ssh::socket_transport(socket, Some(session.wire().clone()));
        // The reads go out now, beside the `/_ping`s (they open pooled connections too).
        let early = ahead::start(reads, |path| {
            let sent = empty_get(&format!("{LOCAL_BASE}{path}")).map(&transport);
            async move {
                let answer = sent?.await.ok()?;
                let status = answer.status().as_u16();
                let body = http_body_util::BodyExt::collect(answer.into_body()).await.ok()?;
                Some((status, body.to_bytes().to_vec()))
            }
            .boxed()
        });
        let spare = SPARE_CONNECTIONS.saturating_sub(early.len());
        Some(NegotiatedAhead {
            negotiated: runtime.spawn(negotiated_warm(transport, LOCAL_BASE, spare)),
            early,
            repositories: reads.repositories.clone(),
        })
    }

    /// Reaches the engine of an SSH host through the run's connection and negotiates the API
    /// version within `timeout`: straight to the host's engine socket when the master forwards
    /// it, else (or when the engine does not answer there) through `docker system dial-stdio`
    /// channels, whose docker CLI says why a refusal happened (no docker, no permission on its
    /// socket), which is told apart.
    pub async fn connect_ssh(
        session: Arc<SshSession>,
        timeout: Duration,
        ahead: Option<NegotiatedAhead>,
    ) -> Result<Self, EngineError> {
        let shown = session.destination().to_string();
        let unreachable = |cause: String| EngineError::Unreachable {
            host: shown.clone(),
            cause,
        };
        let no_answer = || format!("no answer within {}s", timeout.as_secs_f32());
        let forwarded = {
            let s = session.clone();
            tokio::task::spawn_blocking(move || s.engine_socket())
                .await
                .ok()
                .flatten()
        };
        if forwarded.is_some()
            && session.engine_known_ahead()
            && let Some(NegotiatedAhead {
                negotiated,
                early,
                repositories,
            }) = ahead
            && let Ok(Ok(Ok(docker))) = tokio::time::timeout(timeout, negotiated).await
        {
            tracing::debug!("the engine on {shown} was reached while the session started");
            let mut engine = Self::made(docker, shown, Some(session)).pipelined_on(forwarded);
            engine.early = ahead::Early::new(early, repositories);
            return Ok(engine);
        }
        if let Some(socket) = forwarded {
            let transport = ssh::socket_transport(socket.clone(), Some(session.wire().clone()));
            match tokio::time::timeout(timeout, negotiated_warm(transport, LOCAL_BASE, SPARE_CONNECTIONS)).await {
                Ok(Ok(docker)) => {
                    return Ok(Self::made(docker, shown, Some(session)).pipelined_on(Some(socket)));
                }
                Ok(Err(e)) => tracing::debug!("the forwarded engine socket on {shown} refused: {e}"),
                Err(_) => return Err(unreachable(no_answer())),
            }
        }
        let cause = match tokio::time::timeout(timeout, negotiated(session.docker_transport(), LOCAL_BASE)).await {
            Ok(Ok(docker)) => {
                return Ok(Self::made(docker, shown, Some(session)));
            }
            Ok(Err(e)) => short_error(&e),
            Err(_) => no_answer(),
        };
        // What the host said arrives on the channel's stderr, maybe just after the failure.
        for _ in 0..40 {
            if let Some(e) = session.engine_failure() {
                return Err(e.into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(unreachable(cause))
    }

    fn made(docker: Docker, host: String, ssh: Option<Arc<SshSession>>) -> Self {
        Self {
            docker,
            host,
            ssh,
            images: std::sync::Mutex::default(),
            raw: None,
            spare: tokio::sync::Mutex::default(),
            host_probe: std::sync::OnceLock::new(),
            no_host_probe: std::sync::atomic::AtomicBool::new(false),
            early: ahead::Early::default(),
            configs: None,
        }
    }

    /// Keeps the configs of the images this engine inspects by content address in `cache`, and
    /// reads them from there first (`image_config`).
    pub fn keep_configs_in(mut self, cache: ahead::ConfigCache) -> Self {
        self.configs = Some(cache);
        self
    }

    /// Forgets everything read ahead: another run may have changed the target since.
    pub fn forget_ahead(&self) {
        self.early.forget_containers();
        self.early.forget_images();
    }

    /// The config of the image `id` (a content address): what it cannot change, asked once and,
    /// for an engine that keeps them (`keep_configs_in`), never again.
    pub async fn image_config(&self, id: &str) -> Result<Option<bollard::models::ImageConfig>, EngineError> {
        if let Some(config) = self.configs.as_ref().and_then(|c| c.get(id)) {
            return Ok(Some(config));
        }
        let config = self.image(id).await?.and_then(|i| i.config);
        if let (Some(cache), Some(config)) = (&self.configs, &config) {
            cache.put(id, config);
        }
        Ok(config)
    }

    /// Whether `reference` is a local image: from the list read ahead when it can say, else asked.
    pub async fn present(&self, reference: &str) -> Result<bool, EngineError> {
        match self.early.present(reference).await {
            Some(known) => Ok(known),
            None => Ok(self.image(reference).await?.is_some()),
        }
    }

    /// Whether the engine is across a network where a round trip costs more than starting a
    /// program on its host (`wire::FAR`).
    pub fn far(&self) -> bool {
        self.wire().is_some_and(|w| w.far())
    }

    /// Probes go through `prober` on the engine's host from now on, where it can.
    pub fn probe_from_host(&self, prober: HostProber) {
        let _ = self.host_probe.set(prober);
    }

    /// `url` probed by the engine's host itself, when it can (see `probe_from_host`).
    pub async fn probe_on_host(&self, url: &str) -> Option<Result<u16, (String, bool)>> {
        // On a LAN a channel costs less than starting curl there.
        if !self.far() || self.no_host_probe.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let prober = self.host_probe.get()?.clone();
        let url = url.to_string();
        tokio::task::spawn_blocking(move || prober(&url)).await.ok()?
    }

    /// The host said it has no way to probe (`curl`): its probes go through forwards from now on.
    pub fn host_cannot_probe(&self) {
        self.no_host_probe.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The same engine, with `raw` as the socket its calls can be pipelined on.
    fn pipelined_on(mut self, raw: Option<std::path::PathBuf>) -> Self {
        self.raw = raw;
        self
    }

    /// Forgets the images inspected so far (an image was removed, or one pulled may have added
    /// a reference to one already known).
    pub(crate) fn forget_images(&self) {
        if let Ok(mut m) = self.images.lock() {
            m.clear();
        }
        self.early.forget_images();
    }

    /// Inspects `reference` in the background now, so a later `image` of it finds the answer
    /// (a plan reads the target's image while it reads the containers).
    pub async fn prefetch_image(&self, reference: &str) {
        let _ = self.present(reference).await;
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The round trips waited on the engine's host, for an `ssh://` engine.
    pub fn wire(&self) -> Option<&Arc<crate::adapters::wire::Wire>> {
        self.ssh.as_ref().map(|s| s.wire())
    }

    /// Where HTTP probes are sent from, for messages.
    pub fn probe_origin(&self) -> String {
        match &self.ssh {
            Some(s) => format!("{} over ssh", s.destination()),
            None => "this machine".into(),
        }
    }

    /// Readies the route of the HTTP probe `url` ahead of need (for an `ssh://` engine, the
    /// forward that `probe_route` will use), so validation does not wait for it. Errors are left
    /// for `probe_route` to report.
    pub async fn prepare_probe(&self, url: Option<&str>) {
        if let (Some(_), Some(url)) = (&self.ssh, url) {
            let _ = self.probe_route(url).await;
        }
    }

    /// Where to send the HTTP probe `url` so that it is the engine's host that asks: the URL
    /// itself for a local engine; for an `ssh://` engine, a local forward to what the URL names
    /// as the host sees it (its loopback is its own).
    pub async fn probe_route(&self, url: &str) -> Result<ProbeRoute, String> {
        let Some(ssh) = &self.ssh else {
            return Ok(ProbeRoute {
                url: url.to_string(),
                host_header: None,
            });
        };
        let mut parsed = reqwest::Url::parse(url).map_err(|e| format!("parse {url}: {e}"))?;
        let (host, port) = probe_destination(&parsed)?;
        let authority = match parsed.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let local = ssh
            .forward(host.trim_start_matches('[').trim_end_matches(']'), port)
            .await
            .map_err(|e| format!("forward a port to {host}:{port} on {}: {e}", self.host))?;
        parsed
            .set_host(Some("127.0.0.1"))
            .map_err(|e| format!("rewrite {url}: {e}"))?;
        parsed
            .set_port(Some(local.port()))
            .map_err(|()| format!("rewrite {url}: cannot set its port"))?;
        Ok(ProbeRoute {
            url: parsed.to_string(),
            host_header: Some(authority),
        })
    }

    /// The target's containers (one for a container target, every replica of a compose service),
    /// sorted by name. Backup containers of an unfinished swap are not part of the target.
    pub async fn target_containers(&self, target: &TargetSettings) -> Result<Vec<ContainerView>, EngineError> {
        match target.kind {
            TargetKind::Container => match self.inspect(&target.name).await? {
                Some(c) => Ok(vec![ContainerView::from_inspect(&c)]),
                None => Err(EngineError::TargetNotFound { what: target.display() }),
            },
            TargetKind::Compose => {
                let project = target.project.clone().unwrap_or_default();
                let filters = HashMap::from([(
                    "label".to_string(),
                    vec![
                        format!("{LABEL_COMPOSE_PROJECT}={project}"),
                        format!("{LABEL_COMPOSE_SERVICE}={}", target.name),
                    ],
                )]);
                let opts = ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build();
                let list = self
                    .docker
                    .list_containers(Some(opts))
                    .await
                    .map_err(|e| other("list containers", &e))?;
                let mut out = Vec::new();
                for summary in list {
                    let Some(id) = summary.id else { continue };
                    if let Some(c) = self.inspect(&id).await? {
                        let view = ContainerView::from_inspect(&c);
                        if ![BACKUP_SUFFIX, NEXT_SUFFIX, PRE_EMERGENCY_SUFFIX]
                            .iter()
                            .any(|s| view.name.ends_with(s))
                        {
                            out.push(view);
                        }
                    }
                }
                if out.is_empty() {
                    return Err(EngineError::TargetNotFound { what: target.display() });
                }
                out.sort_by(|a, b| {
                    let n = |v: &ContainerView| {
                        v.labels
                            .get(LABEL_COMPOSE_NUMBER)
                            .and_then(|n| n.parse::<u32>().ok())
                            .unwrap_or(0)
                    };
                    n(a).cmp(&n(b)).then_with(|| a.name.cmp(&b.name))
                });
                Ok(out)
            }
            // A service's containers are its tasks, on its nodes: `ops::swarm` reads them.
            TargetKind::Swarm => Err(EngineError::Other {
                action: format!("list the containers of {}", target.display()),
                message: "a swarm service's containers are its tasks, read through the manager".into(),
            }),
        }
    }

    /// Inspects a container; `None` when there is none by that name or id.
    pub async fn inspect(&self, name: &str) -> Result<Option<ContainerInspectResponse>, EngineError> {
        if let Some(read) = self.early.container(name).await {
            return Ok(read);
        }
        match self.docker.inspect_container(name, None).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(container_err("inspect", name, &e)),
        }
    }

    pub async fn view(&self, name: &str) -> Result<Option<ContainerView>, EngineError> {
        Ok(self.inspect(name).await?.as_ref().map(ContainerView::from_inspect))
    }

    /// Inspects a local image; `None` when it is not present.
    pub async fn image(&self, reference: &str) -> Result<Option<ImageInspect>, EngineError> {
        let addressed = reference.contains("sha256:");
        if addressed && let Some(i) = self.images.lock().ok().and_then(|m| m.get(reference).cloned()) {
            return Ok(Some(i));
        }
        match self.docker.inspect_image(reference).await {
            Ok(i) => {
                if let Ok(mut m) = self.images.lock() {
                    if addressed {
                        m.insert(reference.to_string(), i.clone());
                    }
                    if let Some(id) = &i.id {
                        m.insert(id.clone(), i.clone());
                    }
                }
                Ok(Some(i))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(other(&format!("inspect image {reference}"), &e)),
        }
    }

    /// Pulls `reference` unless it is already present. `progress` gets status lines.
    pub async fn pull(
        &self,
        reference: &str,
        auth: Option<&PullAuth>,
        mut progress: impl FnMut(&str),
    ) -> Result<bool, EngineError> {
        if self.present(reference).await? {
            return Ok(false);
        }
        let opts = CreateImageOptionsBuilder::default().from_image(reference).build();
        self.forget_images();
        let mut stream = self.docker.create_image(Some(opts), None, credentials(auth));
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| EngineError::Pull {
                reference: reference.to_string(),
                message: short_error(&e),
            })?;
            if let Some(err) = info.error_detail.and_then(|d| d.message) {
                return Err(EngineError::Pull {
                    reference: reference.to_string(),
                    message: err,
                });
            }
            if let Some(status) = info.status {
                let line = match (info.id, info.progress_detail) {
                    (Some(id), Some(p)) if p.total.unwrap_or(0) > 0 => {
                        format!("{id}: {status} {}/{}", p.current.unwrap_or(0), p.total.unwrap_or(0))
                    }
                    (Some(id), _) => format!("{id}: {status}"),
                    (None, _) => status,
                };
                progress(&line);
            }
        }
        Ok(true)
    }

    /// Tags a local image (`repo:tag`), e.g. to keep the last known good image from GC.
    pub async fn tag_image(&self, image: &str, repo: &str, tag: &str) -> Result<(), EngineError> {
        self.early.forget_images();
        let opts = bollard::query_parameters::TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(tag)
            .build();
        self.docker
            .tag_image(image, Some(opts))
            .await
            .map_err(|e| other(&format!("tag image {image} as {repo}:{tag}"), &e))
    }

    pub async fn stop(&self, name: &str, timeout_secs: i32) -> Result<(), EngineError> {
        self.early.forget_containers();
        let opts = StopContainerOptionsBuilder::default().t(timeout_secs).build();
        match self.docker.stop_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => Err(container_err("stop", name, &e)),
        }
    }

    pub async fn start(&self, name: &str) -> Result<(), EngineError> {
        self.early.forget_containers();
        match self.docker.start_container(name, None).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => Err(container_err("start", name, &e)),
        }
    }

    pub async fn rename(&self, name: &str, new_name: &str) -> Result<(), EngineError> {
        self.early.forget_containers();
        let opts = RenameContainerOptionsBuilder::default().name(new_name).build();
        self.docker
            .rename_container(name, opts)
            .await
            .map_err(|e| container_err("rename", name, &e))
    }

    /// Removes a container (forcefully); one that is already gone is fine.
    pub async fn remove(&self, name: &str) -> Result<(), EngineError> {
        self.early.forget_containers();
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(container_err("remove", name, &e)),
        }
    }

    /// Removes a scratch container (forcefully) with its anonymous volumes; one that is already
    /// gone is fine. Never for a target's container: its volumes are the user's.
    pub async fn remove_scratch(&self, name: &str) -> Result<(), EngineError> {
        self.early.forget_containers();
        let opts = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match self.docker.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(container_err("remove", name, &e)),
        }
    }

    /// The engine's version and where it keeps its data, for `doctor`.
    pub async fn about(&self) -> Result<EngineAbout, EngineError> {
        let version = self
            .docker
            .version()
            .await
            .map_err(|e| other("read the engine's version", &e))?;
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| other("read the engine's info", &e))?;
        Ok(EngineAbout {
            version: version.version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
            os: version.os.unwrap_or_default(),
            arch: version.arch.unwrap_or_default(),
            root_dir: info.docker_root_dir,
        })
    }

    /// The SSH connection of an `ssh://` engine, for what must run on its host.
    pub fn ssh(&self) -> Option<&Arc<SshSession>> {
        self.ssh.as_ref()
    }

    pub async fn set_restart_policy(&self, name: &str, policy: &RestartPolicy) -> Result<(), EngineError> {
        self.early.forget_containers();
        let body = ContainerUpdateBody {
            restart_policy: Some(policy.clone()),
            ..Default::default()
        };
        self.docker
            .update_container(name, body)
            .await
            .map_err(|e| container_err("update restart policy of", name, &e))
    }

    /// Creates a container and connects the networks that could not be given at creation.
    pub async fn create(
        &self,
        name: &str,
        body: ContainerCreateBody,
        extra_networks: &[(String, EndpointSettings)],
    ) -> Result<String, EngineError> {
        self.early.forget_containers();
        let opts = CreateContainerOptionsBuilder::default().name(name).build();
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| container_err("create", name, &e))?;
        for (network, endpoint) in extra_networks {
            let req = bollard::models::NetworkConnectRequest {
                container: created.id.clone(),
                endpoint_config: Some(endpoint.clone()),
            };
            self.docker
                .connect_network(network, req)
                .await
                .map_err(|e| container_err("connect network", &format!("{name} to {network}"), &e))?;
        }
        Ok(created.id)
    }

    /// Connects container `name` to `network` anew with `endpoint` (its aliases): disconnected
    /// first, as the Engine cannot change a connected endpoint's aliases. Its address changes.
    pub async fn rejoin_network(
        &self,
        name: &str,
        network: &str,
        endpoint: &EndpointSettings,
    ) -> Result<(), EngineError> {
        self.early.forget_containers();
        let what = format!("{name} to {network}");
        let leave = bollard::models::NetworkDisconnectRequest {
            container: name.to_string(),
            force: Some(false),
        };
        self.docker
            .disconnect_network(network, leave)
            .await
            .map_err(|e| container_err("disconnect network", &what, &e))?;
        let join = bollard::models::NetworkConnectRequest {
            container: name.to_string(),
            endpoint_config: Some(endpoint.clone()),
        };
        self.docker
            .connect_network(network, join)
            .await
            .map_err(|e| container_err("connect network", &what, &e))
    }

    /// The exit code of the last time container `name` died since `since_unix` (seconds), from
    /// the engine's events: a restart policy restarts it at once and its state forgets the code.
    pub async fn last_exit_code(&self, name: &str, since_unix: i64) -> Option<i64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs()
            + 1;
        let filters = HashMap::from([
            ("container", vec![name.to_string()]),
            ("event", vec!["die".to_string()]),
        ]);
        let opts = bollard::query_parameters::EventsOptionsBuilder::default()
            .since(&since_unix.to_string())
            .until(&now.to_string())
            .filters(&filters)
            .build();
        let read = async {
            let mut code = None;
            let mut stream = self.docker.events(Some(opts));
            while let Some(Ok(event)) = stream.next().await {
                code = event
                    .actor
                    .and_then(|a| a.attributes)
                    .and_then(|a| a.get("exitCode").and_then(|c| c.parse().ok()))
                    .or(code);
            }
            code
        };
        tokio::time::timeout(Duration::from_secs(2), read).await.ok().flatten()
    }

    pub async fn liveness(&self, name: &str) -> Result<Liveness, EngineError> {
        let c = self.inspect(name).await?.ok_or_else(|| EngineError::TargetNotFound {
            what: format!("container {name}"),
        })?;
        Ok(Liveness::of(&c))
    }

    /// The last `n` lines of a container's output (stdout and stderr).
    pub async fn logs_tail(&self, name: &str, n: usize) -> Vec<String> {
        let opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&n.to_string())
            .build();
        let mut stream = self.docker.logs(name, Some(opts));
        let mut out = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        out.lines().map(str::to_string).collect()
    }
}

/// The registry credentials the engine sends on (pull, push, a service update for its workers);
/// none for an anonymous registry.
fn credentials(auth: Option<&PullAuth>) -> Option<DockerCredentials> {
    auth.filter(|a| a.username.is_some()).map(|a| DockerCredentials {
        username: a.username.clone(),
        password: a.password.clone(),
        serveraddress: Some(a.server.clone()),
        ..Default::default()
    })
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }
    )
}

/// The host and port an HTTP probe's URL asks, as the engine's host sees them (an IPv6 host in
/// brackets, as the URL writes it).
fn probe_destination(url: &reqwest::Url) -> Result<(String, u16), String> {
    let host = url
        .host_str()
        .ok_or_else(|| format!("{url} names no host"))?
        .to_string();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| format!("{url} names no port"))?;
    Ok((host, port))
}

/// A client being negotiated ahead (`Engine::negotiate_ahead`).
#[derive(Debug)]
pub struct NegotiatedAhead {
    negotiated: tokio::task::JoinHandle<Result<Docker, bollard::errors::Error>>,
    /// The reads sent beside it (`ahead::ReadAhead`), and the repositories their image list holds.
    early: HashMap<ahead::Key, ahead::Pending>,
    repositories: Vec<String>,
}

/// Where an HTTP probe `url` goes on an SSH host, for a forward made ahead (`ssh::Ahead`):
/// `None` for a URL that names no host or port (the probe reports it when it runs).
pub fn probe_forward(url: &str) -> Option<(String, u16)> {
    let (host, port) = probe_destination(&reqwest::Url::parse(url).ok()?).ok()?;
    Some((host.trim_start_matches('[').trim_end_matches(']').to_string(), port))
}

/// The base URL of requests through a transport that ignores it (a socket, an SSH channel).
const LOCAL_BASE: &str = "http://docker.invalid";

/// A client over `transport` (requests to `base`) speaking the engine's API version
/// (`api_version`).
async fn negotiated<F>(transport: F, base: &str) -> Result<Docker, bollard::errors::Error>
where
    F: Fn(bollard::BollardRequest) -> crate::adapters::ssh::EngineResponse + Send + Sync + 'static,
{
    let version = api_version(&transport, base).await?;
    Docker::connect_with_custom_transport(transport, Some(base), 120, &version)
}

/// How many more connections an engine across a network gets as it is reached: a plan's reads
/// go out at once (the target's containers, images, the backup), each on a channel already open.
const SPARE_CONNECTIONS: usize = 3;

/// `negotiated`, with `SPARE_CONNECTIONS` more pooled connections opened at the same time (each
/// a `/_ping`), for a transport over SSH where each new connection is a channel to open.
async fn negotiated_warm<F>(transport: F, base: &str, spare: usize) -> Result<Docker, bollard::errors::Error>
where
    F: Fn(bollard::BollardRequest) -> crate::adapters::ssh::EngineResponse + Send + Sync + 'static,
{
    let spare = (0..spare).map(|_| async {
        let answer = transport(empty_get(&format!("{base}/_ping"))?).await.ok()?;
        // Read to its end, so the connection goes back to the pool.
        http_body_util::BodyExt::collect(answer.into_body()).await.ok()
    });
    let (version, _) = tokio::join!(api_version(&transport, base), futures::future::join_all(spare));
    Docker::connect_with_custom_transport(transport, Some(base), 120, &version?)
}

/// A GET of `url` with no body, for a transport.
fn empty_get(url: &str) -> Option<bollard::BollardRequest> {
    hyper::Request::get(url)
        .body(http_body_util::Either::Left(http_body_util::Full::new(
            bytes::Bytes::new(),
        )))
        .ok()
}

/// The API version to speak with the engine behind `transport`: its own, from `/_ping`'s header
/// as the docker CLI learns it (`/version` would also ask containerd and runc for theirs,
/// ~10 ms), or ours if it is older.
async fn api_version<F>(transport: &F, base: &str) -> Result<bollard::ClientVersion, bollard::errors::Error>
where
    F: Fn(bollard::BollardRequest) -> crate::adapters::ssh::EngineResponse,
{
    let ping = empty_get(&format!("{base}/_ping")).ok_or_else(|| bollard::errors::Error::IOError {
        err: std::io::Error::other(format!("a GET of {base}/_ping")),
    })?;
    let answer = transport(ping).await?;
    let status = answer.status();
    if !status.is_success() {
        return Err(bollard::errors::Error::DockerResponseServerError {
            status_code: status.as_u16(),
            message: format!("GET /_ping answered {status}"),
        });
    }
    let server = answer
        .headers()
        .get("api-version")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once('.'))
        .and_then(|(major, minor)| {
            Some(bollard::ClientVersion {
                major_version: major.parse().ok()?,
                minor_version: minor.parse().ok()?,
            })
        })
        .ok_or(bollard::errors::Error::APIVersionParseError {})?;
    let ours = bollard::API_DEFAULT_VERSION;
    Ok(if server < *ours { server } else { *ours })
}

pub(crate) fn short_error(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.trim().to_string(),
        other => crate::adapters::registry::root_cause(other),
    }
}

fn container_err(action: &'static str, container: &str, e: &bollard::errors::Error) -> EngineError {
    EngineError::Container {
        action,
        container: container.to_string(),
        message: short_error(e),
    }
}

fn other(action: &str, e: &bollard::errors::Error) -> EngineError {
    EngineError::Other {
        action: action.to_string(),
        message: short_error(e),
    }
}

/// The restart policy of an inspected container, as text (`no` when it has none).
pub fn restart_policy_of(c: &ContainerInspectResponse) -> String {
    c.host_config
        .as_ref()
        .and_then(|h| h.restart_policy.as_ref())
        .map_or_else(|| "no".into(), restart_policy_text)
}

/// `RestartPolicy` as text (`always`, `on-failure:3`) and back, for the journal.
pub fn restart_policy_text(p: &RestartPolicy) -> String {
    match (p.name, p.maximum_retry_count) {
        (Some(RestartPolicyNameEnum::ON_FAILURE), Some(n)) if n > 0 => format!("on-failure:{n}"),
        (Some(name), _) if name != RestartPolicyNameEnum::EMPTY => name.to_string(),
        _ => "no".into(),
    }
}

pub fn parse_restart_policy(s: &str) -> RestartPolicy {
    let (name, count) = s.split_once(':').map_or((s, None), |(n, c)| (n, c.parse().ok()));
    let name = match name {
        "always" => RestartPolicyNameEnum::ALWAYS,
        "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
        "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
        _ => RestartPolicyNameEnum::NO,
    };
    RestartPolicy {
        name: Some(name),
        maximum_retry_count: count,
    }
}
