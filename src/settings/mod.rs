//! Settings: raw arguments, environment and the config file resolved once, before any command
//! runs, into the values commands use (in the spirit of uv's `Settings::resolve`).
//!
//! **Commands never read the environment or the config file themselves**; they get `Settings`.

pub mod config;
pub mod policy;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::adapters::docker::tls::TlsFiles;
use crate::adapters::ssh::SshOptions;
use crate::cli::{GlobalArgs, OutputFormat};
use crate::domain::address::EngineAddress;
pub use config::{EcrSection, FileError, HooksSection, NotifyOn, NotifySection, RegistryKind, TargetKind};

/// Everything a command needs to know about how it was invoked.
#[derive(Debug)]
pub struct Settings {
    pub output: OutputFormat,
    pub yes: bool,
    pub verbose: u8,
    /// stdin and stderr are terminals: prompts and progress bars are allowed.
    pub interactive: bool,
    pub state_root: PathBuf,
    pub cache_dir: PathBuf,
    /// How to run ssh for `ssh://` engines (`BACKTRACK_SSH_CONFIG`, `BACKTRACK_CONNECT_TIMEOUT`).
    pub ssh: SshOptions,
    project: Result<Project, ProjectError>,
}

/// The resolved `backtrack.toml`.
#[derive(Debug, Clone)]
pub struct Project {
    pub config_path: PathBuf,
    pub registry: RegistrySettings,
    pub target: Option<TargetSettings>,
    pub health: HealthSettings,
    /// Retention policy file, relative paths taken from the config file's folder.
    pub retention_policy: Option<PathBuf>,
    /// `[retention] local_keep`: versions last deployed kept on the host by `prune --local`.
    pub local_keep: usize,
    pub rebuild: RebuildSettings,
    pub hooks: HooksSection,
    pub notify: NotifySection,
    /// State (journal, lock) of the target: `<state root>/targets/<engine>_<kind>_<name>`, or
    /// `<state root>/repositories/<registry>_<repository>` for a config without `[target]`.
    pub state_dir: PathBuf,
    /// Where releases before per-target state kept the journal of this registry + repository
    /// (shared by every target built from it); read once to start the target's journal.
    pub legacy_state_dir: PathBuf,
    /// The folder holding every target's state (`--state-dir`, `$BACKTRACK_STATE_DIR`, ...).
    pub state_root: PathBuf,
    /// The engine of the target (`--host`, `[target] host`, `DOCKER_HOST`, the current docker
    /// context, else the local socket); `None` for the local socket's default.
    pub engine: Option<EngineAddress>,
    /// TLS to the engine, for a `tcp://` engine when the environment or the docker context asks
    /// for it (`DOCKER_TLS_VERIFY` + `DOCKER_CERT_PATH`, a context's TLS folder).
    pub engine_tls: Option<TlsFiles>,
    /// For a target on an `ssh://` engine: its state folder on that host, relative to the remote
    /// user's state root (`targets/local_container_web`, as a run on the host would name it).
    pub remote_state: Option<String>,
}

impl Project {
    /// The tag of this target's `last_known_good` pointer: `last_known_good`, or
    /// `last_known_good-ENV` with `[target] environment = "ENV"`.
    pub fn lkg_tag(&self) -> String {
        lkg_tag(self.target.as_ref().and_then(|t| t.environment.as_deref()))
    }
}

/// The pointer tag of an environment (none: the plain `last_known_good`).
pub fn lkg_tag(environment: Option<&str>) -> String {
    match environment {
        Some(env) => format!("{}-{env}", crate::domain::image::LKG_TAG),
        None => crate::domain::image::LKG_TAG.to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct RegistrySettings {
    pub kind: RegistryKind,
    /// `host[:port]`, without scheme.
    pub host: String,
    pub repository: String,
    /// Talk plain HTTP (loopback, or `http://` with `insecure`).
    pub plain_http: bool,
    /// Accept plain HTTP / unverified TLS to a non-loopback host.
    pub insecure: bool,
    pub ecr: EcrSection,
    /// How long one command may spend on registry requests in all (`[registry] timeout`).
    pub timeout: Duration,
}

impl RegistrySettings {
    /// `host/repository`, as users write image names.
    pub fn display(&self) -> String {
        format!("{}/{}", self.host, self.repository)
    }
}

/// One host of a fleet target (`[target] hosts`).
#[derive(Debug, Clone)]
pub struct FleetHost {
    /// As written in the config (what `--hosts` and reports name it by).
    pub address: String,
    pub engine: EngineAddress,
    /// Its state folder on this machine (for a `unix://` or `tcp://` engine).
    pub state_dir: PathBuf,
    /// Its state folder on the host, relative to the remote state root (for `ssh://`).
    pub remote_state: Option<String>,
    /// TLS to its engine, for a `tcp://` host when the environment asks for it.
    pub tls: Option<TlsFiles>,
}

/// The hosts of `[target] hosts` this run acts on (`--hosts` picks some, by address or by the
/// host name in it), each a valid engine address; empty for a single-host target.
fn fleet_hosts(t: &config::TargetSection, hosts: &EngineHosts) -> Result<Vec<String>, String> {
    let Some(all) = &t.hosts else {
        if hosts.only.is_some() {
            return Err("--hosts needs [target] hosts = [...] (this target has one host)".into());
        }
        return Ok(Vec::new());
    };
    if t.host.is_some() {
        return Err("[target] has both `host` and `hosts`: keep one (hosts = [...] for many engines)".into());
    }
    if hosts.flag.is_some() {
        return Err("--host picks one engine; with [target] hosts, use --hosts NAME,... to limit a run".into());
    }
    if all.is_empty() {
        return Err("[target] hosts is empty: list at least one engine address".into());
    }
    for a in all {
        EngineAddress::parse(a).map_err(|e| format!("[target] hosts: {e}"))?;
    }
    let Some(only) = &hosts.only else {
        return Ok(all.clone());
    };
    let mut picked = Vec::new();
    for name in only {
        let found: Vec<&String> = all
            .iter()
            .filter(|a| *a == name || host_part(a).is_some_and(|(h, hp)| h == *name || hp == *name))
            .collect();
        match found.as_slice() {
            [one] => {
                if !picked.contains(*one) {
                    picked.push((*one).clone());
                }
            }
            [] => {
                return Err(format!(
                    "--hosts names '{name}', which is not in [target] hosts ({})",
                    all.join(", ")
                ));
            }
            _ => {
                return Err(format!(
                    "--hosts '{name}' matches several hosts ({}); give the whole address",
                    found.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    Ok(picked)
}

/// The host name of an address, and `host:port` when it has a port.
fn host_part(address: &str) -> Option<(String, String)> {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let rest = rest.trim_end_matches('/');
    let host = rest.split(':').next()?.to_string();
    Some((host, rest.to_string()))
}

#[derive(Debug, Clone)]
pub struct TargetSettings {
    /// A fleet: two hosts or more (`[target] hosts`, after `--hosts`); empty for one host.
    pub hosts: Vec<FleetHost>,
    pub strategy: Option<crate::domain::fleet::Strategy>,
    pub batch: usize,
    pub canary_soak: Duration,
    pub kind: TargetKind,
    pub name: String,
    pub project: Option<String>,
    /// Swarm: the stack of the service (`[target] stack`).
    pub stack: Option<String>,
    /// Docker host as written (`--host`, `[target] host`, `DOCKER_HOST`, the docker context's);
    /// `None` = the local socket. Parsed in `Project::engine`.
    pub host: Option<String>,
    /// The engine as the state folder names it: the host as written, else `local`.
    pub engine_id: String,
    pub environment: Option<String>,
    pub version_env: Option<String>,
}

impl TargetSettings {
    pub fn display(&self) -> String {
        match (self.kind, &self.project) {
            (TargetKind::Compose, Some(p)) => format!("compose service {p}/{}", self.name),
            (TargetKind::Compose, None) => format!("compose service {}", self.name),
            (TargetKind::Container, _) => format!("container {}", self.name),
            (TargetKind::Swarm, _) => match &self.stack {
                Some(stack) => format!("swarm service {stack}/{}", self.name),
                None => format!("swarm service {}", self.name),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct HealthSettings {
    pub http: Option<String>,
    pub timeout: Duration,
    pub expect_version: bool,
}

#[derive(Debug, Clone)]
pub struct RebuildSettings {
    pub repo: PathBuf,
    pub context: PathBuf,
    pub dockerfile: PathBuf,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProjectError {
    #[error("find backtrack.toml in {} or any parent folder", cwd.display())]
    NotFound { cwd: PathBuf },
    #[error("{0}")]
    File(String),
    #[error("use {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

impl ProjectError {
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::NotFound { .. } => {
                Some("create a backtrack.toml (see README), pass --config FILE, or set BACKTRACK_CONFIG".into())
            }
            _ => None,
        }
    }
}

impl Settings {
    /// The same run on one host of a fleet: what `--hosts ADDRESS` resolves to (a plain
    /// single-host target on that host's engine, with that host's state). `None` when the target
    /// has no such host.
    pub fn for_host(&self, address: &str) -> Option<Settings> {
        let mut project = self.project.as_ref().ok()?.clone();
        let target = project.target.as_mut()?;
        let host = target.hosts.iter().find(|h| h.address == address)?.clone();
        target.hosts.clear();
        target.host = Some(host.address.clone());
        target.engine_id = host.address.clone();
        project.engine = Some(host.engine);
        project.engine_tls = host.tls;
        project.state_dir = host.state_dir;
        project.remote_state = host.remote_state;
        Some(Settings {
            output: self.output,
            yes: self.yes,
            verbose: self.verbose,
            interactive: self.interactive,
            state_root: self.state_root.clone(),
            cache_dir: self.cache_dir.clone(),
            ssh: self.ssh.clone(),
            project: Ok(project),
        })
    }

    /// Resolves arguments + environment + config. Config problems are kept and reported by the
    /// commands that need the config, so `completions` and `policy check` work anywhere.
    pub fn resolve(global: &GlobalArgs) -> Self {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let home = dirs::home_dir().unwrap_or_else(|| PathBuf::from("/root"));
        let state_root = global
            .state_dir
            .clone()
            .or_else(|| env("BACKTRACK_STATE_DIR"))
            .or_else(|| env("XDG_STATE_HOME").map(|p| p.join("backtrack")))
            .unwrap_or_else(|| home.join(".local/state/backtrack"));
        let cache_dir = env("BACKTRACK_CACHE_DIR")
            .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("backtrack")))
            .unwrap_or_else(|| home.join(".cache/backtrack"));
        let config_path = global.config.clone().or_else(|| env("BACKTRACK_CONFIG"));
        let hosts = EngineHosts {
            flag: global.host.clone(),
            only: global.hosts.clone(),
            docker_host: std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()),
            env_tls: env_tls(
                env("DOCKER_TLS_VERIFY").is_some(),
                env("DOCKER_TLS").is_some(),
                env("DOCKER_CERT_PATH"),
                &home,
            ),
            context: docker_context_host(
                &env("DOCKER_CONFIG").unwrap_or_else(|| home.join(".docker")),
                std::env::var("DOCKER_CONTEXT").ok().filter(|c| !c.is_empty()),
            ),
        };
        let project = load_project(config_path, &state_root, &hosts);
        let connect_timeout = std::env::var("BACKTRACK_CONNECT_TIMEOUT")
            .ok()
            .and_then(|v| crate::domain::duration::parse(&v).ok())
            .unwrap_or(Duration::from_secs(10));
        Self {
            output: global.output,
            yes: global.yes,
            verbose: global.verbose,
            interactive: std::io::stdin().is_terminal() && std::io::stderr().is_terminal(),
            state_root,
            cache_dir,
            ssh: SshOptions {
                config: env("BACKTRACK_SSH_CONFIG"),
                connect_timeout,
            },
            project,
        }
    }

    /// The config, or the error saying why there is none.
    pub fn project(&self) -> Result<&Project, ProjectError> {
        self.project.as_ref().map_err(Clone::clone)
    }
}

/// Where the engine may be named besides `[target] host` (see `pick` for the order).
#[derive(Debug, Clone)]
pub struct EngineHosts {
    pub flag: Option<String>,
    /// `--hosts a,b`: the hosts of a fleet this run acts on.
    pub only: Option<Vec<String>>,
    pub docker_host: Option<String>,
    /// The TLS the environment asks for `tcp://` engines named outside a docker context
    /// (`DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`), or why it cannot be had.
    pub env_tls: Result<Option<TlsFiles>, String>,
    /// The current docker context's engine (`DOCKER_CONTEXT`, else `currentContext` of the
    /// docker config), or why it could not be read.
    pub context: Result<Option<ContextEngine>, String>,
}

/// The engine of a docker context: its address and its TLS (the context's own TLS folder, when
/// it has one), or why that TLS cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextEngine {
    pub host: String,
    pub tls: Result<Option<TlsFiles>, String>,
}

impl EngineHosts {
    /// `--host`, then `[target] host`, then `DOCKER_HOST`, then the docker context; with the TLS
    /// that goes with where it was named (the environment's, or the context's own), as the
    /// docker CLI pairs them.
    fn pick(&self, configured: Option<&str>) -> Result<Option<ContextEngine>, String> {
        if let Some(h) = self.flag.as_deref().or(configured).or(self.docker_host.as_deref()) {
            return Ok(Some(ContextEngine {
                host: h.to_string(),
                tls: self.env_tls.clone(),
            }));
        }
        self.context.clone()
    }
}

/// The TLS `docker` would use for a `tcp://` engine from its environment: `DOCKER_TLS_VERIFY`
/// (any non-empty value) with the files in `DOCKER_CERT_PATH`, default `~/.docker`. `DOCKER_TLS`
/// alone (TLS that does not check the engine's certificate) is refused: it is not built.
fn env_tls(verify: bool, tls: bool, cert_path: Option<PathBuf>, home: &Path) -> Result<Option<TlsFiles>, String> {
    if !verify {
        if tls {
            return Err(
                "DOCKER_TLS is set without DOCKER_TLS_VERIFY: TLS that does not check the engine's \
                        certificate is not supported; set DOCKER_TLS_VERIFY=1 and put the engine's CA in \
                        DOCKER_CERT_PATH/ca.pem"
                    .into(),
            );
        }
        return Ok(None);
    }
    Ok(Some(match cert_path {
        Some(dir) => TlsFiles {
            dir,
            source: "DOCKER_CERT_PATH".into(),
        },
        None => TlsFiles {
            dir: home.join(".docker"),
            source: "~/.docker (DOCKER_TLS_VERIFY is set, DOCKER_CERT_PATH is not)".into(),
        },
    }))
}

/// The engine address of the current docker context, as the docker CLI finds it: the context
/// named by `DOCKER_CONTEXT`, else `currentContext` in `config.json`; `default` (or none) is the
/// local socket. A context's metadata is `contexts/meta/<sha256 of its name>/meta.json`.
///
/// Its TLS files, when it has any, are in `contexts/tls/<same hash>/docker/` (`ca.pem`,
/// `cert.pem`, `key.pem`); a context that skips verifying the engine's certificate is refused for
/// a `tcp://` engine.
pub fn docker_context_host(docker_config: &Path, env_context: Option<String>) -> Result<Option<ContextEngine>, String> {
    use sha2::Digest as _;
    let name = match env_context {
        Some(n) => n,
        None => {
            let Ok(text) = std::fs::read(docker_config.join("config.json")) else {
                return Ok(None);
            };
            let v: serde_json::Value = serde_json::from_slice(&text)
                .map_err(|e| format!("read {}: {e}", docker_config.join("config.json").display()))?;
            match v.get("currentContext").and_then(|c| c.as_str()) {
                Some(n) if !n.is_empty() => n.to_string(),
                _ => return Ok(None),
            }
        }
    };
    if name == "default" {
        return Ok(None);
    }
    let hash = sha2::Sha256::digest(name.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let meta = docker_config.join("contexts/meta").join(&hash).join("meta.json");
    let text = std::fs::read(&meta).map_err(|_| {
        format!(
            "find docker context '{name}' (no {}); see `docker context ls`",
            meta.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| format!("read {}: {e}", meta.display()))?;
    let Some(host) = v
        .pointer("/Endpoints/docker/Host")
        .and_then(|h| h.as_str())
        .filter(|h| !h.is_empty())
    else {
        return Ok(None);
    };
    let tls_dir = docker_config.join("contexts/tls").join(&hash).join("docker");
    let has_tls = ["ca.pem", "cert.pem", "key.pem"]
        .iter()
        .any(|f| tls_dir.join(f).exists());
    let skip = v
        .pointer("/Endpoints/docker/SkipTLSVerify")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let tls = if skip {
        Err(format!(
            "docker context '{name}' skips verifying the engine's TLS certificate, which backtrack does not do; \
             give the context the engine's CA (`docker context update {name} --docker \"host={host},ca=…,cert=…,key=…\"`)"
        ))
    } else if has_tls {
        Ok(Some(TlsFiles {
            dir: tls_dir,
            source: format!("docker context '{name}'"),
        }))
    } else {
        Ok(None)
    };
    Ok(Some(ContextEngine {
        host: host.to_string(),
        tls,
    }))
}

fn load_project(explicit: Option<PathBuf>, state_root: &Path, hosts: &EngineHosts) -> Result<Project, ProjectError> {
    let path = match explicit {
        Some(p) => p,
        None => {
            let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
            find_upward(&cwd).ok_or(ProjectError::NotFound { cwd })?
        }
    };
    let file: config::ConfigFile = config::read_toml(&path).map_err(|e| ProjectError::File(e.to_string()))?;
    resolve_project(&path, file, state_root, hosts)
}

fn find_upward(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|d| d.join("backtrack.toml"))
        .find(|p| p.is_file())
}

pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `<account>.dkr.ecr.<region>.amazonaws.com` → (account, region).
pub fn parse_ecr_host(host: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() >= 6 && parts[1] == "dkr" && parts[2] == "ecr" && parts[4] == "amazonaws" {
        Some((parts[0].to_string(), parts[3].to_string()))
    } else {
        None
    }
}

fn resolve_project(
    path: &Path,
    file: config::ConfigFile,
    state_root: &Path,
    hosts: &EngineHosts,
) -> Result<Project, ProjectError> {
    let invalid = |message: String| ProjectError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let reg = file.registry;
    let (scheme, host) = match reg.url.split_once("://") {
        Some((s, h)) => (Some(s.to_ascii_lowercase()), h.trim_end_matches('/').to_string()),
        None => (None, reg.url.trim_end_matches('/').to_string()),
    };
    if host.is_empty() || host.contains('/') {
        return Err(invalid(format!(
            "[registry] url '{}' must be host[:port] (the repository goes in `repository`)",
            reg.url
        )));
    }
    let loopback = is_loopback_host(&host);
    let plain_http = match scheme.as_deref() {
        Some("http") => true,
        Some("https") => false,
        None => loopback,
        Some(other) => {
            return Err(invalid(format!("[registry] url scheme '{other}' is not http or https")));
        }
    };
    if plain_http && !loopback && !reg.insecure {
        return Err(invalid(format!(
            "[registry] url '{}' is plain HTTP to a non-loopback host; use https, or set insecure = true if you mean it",
            reg.url
        )));
    }
    let kind = reg.kind.unwrap_or(if parse_ecr_host(&host).is_some() {
        RegistryKind::Ecr
    } else {
        RegistryKind::Oci
    });
    let repository = reg.repository.trim_matches('/').to_string();
    if repository.is_empty() {
        return Err(invalid("[registry] repository is empty".into()));
    }
    let fleet = match file.target.as_ref() {
        Some(t) => fleet_hosts(t, hosts).map_err(invalid)?,
        None => Vec::new(),
    };
    // One host of a fleet (`--hosts a`, or a list of one) is a plain single-host target.
    let single = match fleet.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    };
    let picked = match &single {
        Some(one) => Some(ContextEngine {
            host: one.clone(),
            tls: hosts.env_tls.clone(),
        }),
        None => hosts
            .pick(file.target.as_ref().and_then(|t| t.host.as_deref()))
            .map_err(invalid)?,
    };
    let engine_host = picked.as_ref().map(|p| p.host.clone());
    let engine = engine_host
        .as_deref()
        .map(EngineAddress::parse)
        .transpose()
        .map_err(|e| invalid(e.to_string()))?;
    // TLS is for `tcp://` engines only (ssh:// and unix:// ignore it, as the docker CLI does).
    let engine_tls = match (&engine, picked) {
        (Some(EngineAddress::Tcp { .. }), Some(p)) => p.tls.map_err(invalid)?,
        _ => None,
    };
    let fleet = if fleet.len() > 1 { fleet } else { Vec::new() };
    let fleet_hosts = fleet
        .iter()
        .map(|address| {
            let engine = EngineAddress::parse(address).expect("checked in fleet_hosts");
            let tls = match engine {
                EngineAddress::Tcp { .. } => hosts.env_tls.clone().map_err(invalid)?,
                _ => None,
            };
            Ok(FleetHost {
                engine,
                address: address.clone(),
                state_dir: PathBuf::new(),
                remote_state: None,
                tls,
            })
        })
        .collect::<Result<Vec<_>, ProjectError>>()?;
    let target = file.target.map(|t| TargetSettings {
        hosts: fleet_hosts,
        strategy: t.strategy,
        batch: t.batch.unwrap_or(1).max(1),
        canary_soak: t.canary_soak.unwrap_or(Duration::from_secs(120)),
        engine_id: engine_host.clone().unwrap_or_else(|| "local".into()),
        kind: t.kind,
        name: t.name,
        project: t.project,
        stack: t.stack,
        host: engine_host.clone(),
        environment: t.environment,
        version_env: t.version_env,
    });
    if let Some(t) = &target
        && t.version_env.is_some()
        && t.kind != TargetKind::Compose
    {
        return Err(invalid(
            "[target] version_env only applies to kind = \"compose\" (it writes the compose project's .env)".into(),
        ));
    }
    if let Some(t) = &target
        && t.kind == TargetKind::Compose
        && t.project.is_none()
    {
        return Err(invalid(
            "[target] kind = \"compose\" needs `project` (the compose project name, e.g. the folder name)".into(),
        ));
    }
    if let Some(t) = &target
        && t.stack.is_some()
        && t.kind != TargetKind::Swarm
    {
        return Err(invalid(
            "[target] stack only applies to kind = \"swarm\" (the stack a swarm service came from)".into(),
        ));
    }
    if let Some(t) = &target
        && t.kind == TargetKind::Swarm
        && !t.hosts.is_empty()
    {
        return Err(invalid(
            "[target] kind = \"swarm\" is reached through one manager: set `host` to a manager, not `hosts` \
             (Swarm itself spreads the service over its nodes)"
                .into(),
        ));
    }
    let target_dir = |engine_id: &str, t: &TargetSettings| {
        sanitize(&format!(
            "{}_{}_{}{}",
            engine_id,
            t.kind.as_str(),
            t.project
                .as_deref()
                .or(t.stack.as_deref())
                .map(|p| format!("{p}_"))
                .unwrap_or_default(),
            t.name
        ))
    };
    let mut target = target;
    if let Some(t) = target.as_mut() {
        let (kind_name, hosts) = (t.clone(), &mut t.hosts);
        for h in hosts.iter_mut() {
            h.state_dir = state_root.join("targets").join(target_dir(&h.address, &kind_name));
            if matches!(h.engine, EngineAddress::Ssh(_)) {
                h.remote_state = Some(format!("targets/{}", target_dir("local", &kind_name)));
            }
        }
    }
    let remote_state = match (&target, &engine) {
        (Some(t), Some(EngineAddress::Ssh(_))) => Some(format!("targets/{}", target_dir("local", t))),
        _ => None,
    };
    let state_dir = match &target {
        Some(t) => state_root.join("targets").join(target_dir(&t.engine_id, t)),
        None => state_root
            .join("repositories")
            .join(sanitize(&format!("{host}_{repository}"))),
    };
    let legacy_state_dir = state_root.join(sanitize(&format!("{host}_{repository}")));
    Ok(Project {
        config_path: path.to_path_buf(),
        registry: RegistrySettings {
            kind,
            host,
            repository,
            plain_http,
            insecure: reg.insecure,
            ecr: reg.ecr.unwrap_or_default(),
            timeout: reg.timeout,
        },
        target,
        health: HealthSettings {
            http: file.health.http,
            timeout: file.health.timeout,
            expect_version: file.health.expect_version,
        },
        local_keep: file.retention.local_keep.unwrap_or(3),
        retention_policy: file.retention.policy.map(|p| dir.join(p)),
        rebuild: RebuildSettings {
            repo: dir.join(file.rebuild.repo),
            context: file.rebuild.context,
            dockerfile: file.rebuild.dockerfile,
        },
        hooks: file.hooks,
        notify: file.notify,
        state_dir,
        legacy_state_dir,
        state_root: state_root.to_path_buf(),
        engine,
        engine_tls,
        remote_state,
    })
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(toml: &str) -> Result<Project, ProjectError> {
        let file = config::parse_toml(Path::new("/srv/app/backtrack.toml"), toml)
            .map_err(|e| ProjectError::File(e.to_string()))?;
        resolve_project(
            Path::new("/srv/app/backtrack.toml"),
            file,
            Path::new("/state"),
            &EngineHosts {
                flag: None,
                only: None,
                docker_host: None,
                env_tls: Ok(None),
                context: Ok(None),
            },
        )
    }

    #[test]
    fn loopback_is_plain_http_and_others_need_tls() {
        let p = project("[registry]\nurl = \"127.0.0.1:5000\"\nrepository = \"app\"\n").unwrap();
        assert!(p.registry.plain_http);
        assert_eq!(p.registry.kind, RegistryKind::Oci);
        assert_eq!(p.state_dir, Path::new("/state/repositories/127.0.0.1_5000_app"));
        assert_eq!(p.legacy_state_dir, Path::new("/state/127.0.0.1_5000_app"));
        let p = project("[registry]\nurl = \"registry.example.com\"\nrepository = \"team/app\"\n").unwrap();
        assert!(!p.registry.plain_http);
        let err = project("[registry]\nurl = \"http://registry.example.com\"\nrepository = \"app\"\n").unwrap_err();
        assert!(err.to_string().contains("insecure = true"), "{err}");
        let p = project("[registry]\nurl = \"http://10.0.0.5:5000\"\nrepository = \"app\"\ninsecure = true\n").unwrap();
        assert!(p.registry.plain_http);
    }

    #[test]
    fn ecr_kind_is_inferred_from_the_host() {
        let p = project("[registry]\nurl = \"123456789012.dkr.ecr.eu-west-1.amazonaws.com\"\nrepository = \"app\"\n")
            .unwrap();
        assert_eq!(p.registry.kind, RegistryKind::Ecr);
        assert_eq!(
            parse_ecr_host("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            Some(("123456789012".into(), "eu-west-1".into()))
        );
    }

    #[test]
    fn relative_paths_are_taken_from_the_config_folder() {
        let p = project("[registry]\nurl = \"localhost:5000\"\nrepository = \"app\"\n[retention]\npolicy = \"retention-policies/default.toml\"\n").unwrap();
        assert_eq!(
            p.retention_policy.unwrap(),
            Path::new("/srv/app/retention-policies/default.toml")
        );
    }

    #[test]
    fn state_belongs_to_the_target_and_the_pointer_to_its_environment() {
        let base = "[registry]\nurl = \"localhost:5000\"\nrepository = \"app\"\n[target]\n";
        let web = project(&format!(
            "{base}kind = \"container\"\nname = \"web\"\nhost = \"unix:///run/docker.sock\"\n"
        ))
        .unwrap();
        let worker = project(&format!(
            "{base}kind = \"container\"\nname = \"worker\"\nhost = \"unix:///run/docker.sock\"\n"
        ))
        .unwrap();
        assert_ne!(web.state_dir, worker.state_dir);
        assert_eq!(web.legacy_state_dir, worker.legacy_state_dir);
        assert_eq!(
            web.state_dir,
            Path::new("/state/targets/unix____run_docker.sock_container_web")
        );
        assert_eq!(web.lkg_tag(), "last_known_good");
        let prod = project(&format!(
            "{base}kind = \"compose\"\nproject = \"shop\"\nname = \"web\"\nhost = \"tcp://10.0.0.5:2376\"\nenvironment = \"prod\"\n"
        ))
        .unwrap();
        assert_eq!(prod.lkg_tag(), "last_known_good-prod");
        assert_eq!(
            prod.state_dir,
            Path::new("/state/targets/tcp___10.0.0.5_2376_compose_shop_web")
        );
        let err = project(&format!(
            "{base}kind = \"container\"\nname = \"web\"\nversion_env = \"V\"\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("only applies to kind = \"compose\""), "{err}");
    }

    #[test]
    fn compose_target_needs_a_project() {
        let err = project("[registry]\nurl = \"localhost:5000\"\nrepository = \"app\"\n[target]\nkind = \"compose\"\nname = \"web\"\n").unwrap_err();
        assert!(err.to_string().contains("needs `project`"), "{err}");
    }

    #[test]
    fn engine_is_the_flag_then_config_then_docker_host_then_context() {
        let file = || {
            config::parse_toml(
                Path::new("/srv/app/backtrack.toml"),
                "[registry]\nurl = \"localhost:5000\"\nrepository = \"app\"\n[target]\nkind = \"container\"\nname = \"web\"\nhost = \"ssh://ops@ec2-1:2222\"\n",
            )
            .unwrap()
        };
        let hosts = |flag: Option<&str>, env: Option<&str>| EngineHosts {
            flag: flag.map(str::to_string),
            only: None,
            docker_host: env.map(str::to_string),
            env_tls: Ok(None),
            context: Ok(Some(ContextEngine {
                host: "tcp://from-context:2375".into(),
                tls: Ok(None),
            })),
        };
        let at = |h: &EngineHosts| {
            resolve_project(Path::new("/srv/app/backtrack.toml"), file(), Path::new("/state"), h).unwrap()
        };
        let p = at(&hosts(None, Some("unix:///env.sock")));
        assert_eq!(p.engine.as_ref().unwrap().to_string(), "ssh://ops@ec2-1:2222");
        assert_eq!(p.remote_state.as_deref(), Some("targets/local_container_web"));
        let p = at(&hosts(Some("unix:///flag.sock"), Some("unix:///env.sock")));
        assert_eq!(p.engine.as_ref().unwrap().to_string(), "unix:///flag.sock");
        assert_eq!(p.remote_state, None);
        // Without [target] host: DOCKER_HOST, then the docker context.
        let bare = || {
            config::parse_toml(
                Path::new("/srv/app/backtrack.toml"),
                "[registry]\nurl = \"localhost:5000\"\nrepository = \"app\"\n[target]\nkind = \"container\"\nname = \"web\"\n",
            )
            .unwrap()
        };
        let p = resolve_project(
            Path::new("/b.toml"),
            bare(),
            Path::new("/state"),
            &hosts(None, Some("tcp://env:2375")),
        )
        .unwrap();
        assert_eq!(p.engine.as_ref().unwrap().to_string(), "tcp://env:2375");
        let p = resolve_project(Path::new("/b.toml"), bare(), Path::new("/state"), &hosts(None, None)).unwrap();
        assert_eq!(p.engine.as_ref().unwrap().to_string(), "tcp://from-context:2375");
        assert_eq!(p.engine_tls, None);
    }

    #[test]
    fn tls_goes_with_where_the_engine_was_named_and_only_to_tcp_engines() {
        let bare = |host: &str| {
            config::parse_toml(
                Path::new("/b.toml"),
                &format!("[registry]\nurl = \"localhost:5000\"\nrepository = \"app\"\n[target]\nkind = \"container\"\nname = \"web\"\n{host}"),
            )
            .unwrap()
        };
        let env = TlsFiles {
            dir: "/certs/env".into(),
            source: "DOCKER_CERT_PATH".into(),
        };
        let ctx = TlsFiles {
            dir: "/certs/ctx".into(),
            source: "docker context 'prod'".into(),
        };
        let hosts = |docker_host: Option<&str>, env_tls: Result<Option<TlsFiles>, String>| EngineHosts {
            flag: None,
            only: None,
            docker_host: docker_host.map(str::to_string),
            env_tls,
            context: Ok(Some(ContextEngine {
                host: "tcp://ctx:2376".into(),
                tls: Ok(Some(ctx.clone())),
            })),
        };
        let at = |file, h: &EngineHosts| resolve_project(Path::new("/b.toml"), file, Path::new("/state"), h);
        // DOCKER_HOST with DOCKER_TLS_VERIFY: the environment's folder.
        let p = at(bare(""), &hosts(Some("tcp://env:2376"), Ok(Some(env.clone())))).unwrap();
        assert_eq!(p.engine_tls.as_ref(), Some(&env));
        // The context's engine: the context's folder, whatever the environment says.
        let p = at(bare(""), &hosts(None, Ok(Some(env.clone())))).unwrap();
        assert_eq!(p.engine.unwrap().to_string(), "tcp://ctx:2376");
        assert_eq!(p.engine_tls.as_ref(), Some(&ctx));
        // ssh:// and unix:// never use TLS, and a refused TLS setting does not matter to them.
        let p = at(bare("host = \"ssh://u@h\"\n"), &hosts(None, Err("no".into()))).unwrap();
        assert_eq!(p.engine_tls, None);
        // tcp:// with TLS refused (DOCKER_TLS without verification): a usage error saying why.
        let err = at(
            bare("host = \"tcp://h:2376\"\n"),
            &hosts(None, Err("DOCKER_TLS is set".into())),
        )
        .unwrap_err();
        assert!(err.to_string().contains("DOCKER_TLS is set"), "{err}");
        // Fleet hosts on tcp:// take the environment's TLS.
        let p = at(
            bare("hosts = [\"tcp://a:2376\", \"ssh://u@b\"]\n"),
            &hosts(None, Ok(Some(env.clone()))),
        )
        .unwrap();
        let fleet = &p.target.unwrap().hosts;
        assert_eq!(fleet[0].tls.as_ref(), Some(&env));
        assert_eq!(fleet[1].tls, None);
    }

    #[test]
    fn env_tls_is_docker_clis() {
        let home = Path::new("/home/me");
        assert_eq!(env_tls(false, false, Some("/c".into()), home), Ok(None));
        assert_eq!(
            env_tls(true, false, None, home).unwrap().unwrap().dir,
            home.join(".docker")
        );
        assert_eq!(
            env_tls(true, true, Some("/c".into()), home).unwrap().unwrap().dir,
            PathBuf::from("/c")
        );
        assert!(
            env_tls(false, true, None, home)
                .unwrap_err()
                .contains("DOCKER_TLS_VERIFY=1")
        );
    }

    #[test]
    fn docker_context_is_found_as_the_docker_cli_finds_it() {
        use sha2::Digest as _;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(docker_context_host(dir.path(), None), Ok(None));
        std::fs::write(dir.path().join("config.json"), r#"{"currentContext":"ec2"}"#).unwrap();
        let err = docker_context_host(dir.path(), None).unwrap_err();
        assert!(err.contains("find docker context 'ec2'"), "{err}");
        let hash_of = |name: &str| -> String {
            sha2::Sha256::digest(name.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        let meta = dir.path().join("contexts/meta").join(hash_of("ec2"));
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(
            meta.join("meta.json"),
            r#"{"Name":"ec2","Endpoints":{"docker":{"Host":"ssh://ubuntu@ec2-1","SkipTLSVerify":false}}}"#,
        )
        .unwrap();
        assert_eq!(
            docker_context_host(dir.path(), None),
            Ok(Some(ContextEngine {
                host: "ssh://ubuntu@ec2-1".into(),
                tls: Ok(None)
            }))
        );
        // DOCKER_CONTEXT wins over config.json; "default" is the local socket.
        assert_eq!(docker_context_host(dir.path(), Some("default".into())), Ok(None));
        // A context's TLS files are in contexts/tls/<hash>/docker.
        let tls = dir.path().join("contexts/tls").join(hash_of("ec2")).join("docker");
        std::fs::create_dir_all(&tls).unwrap();
        std::fs::write(tls.join("ca.pem"), "x").unwrap();
        let found = docker_context_host(dir.path(), None).unwrap().unwrap();
        assert_eq!(found.tls.unwrap().unwrap().dir, tls);
        std::fs::write(
            meta.join("meta.json"),
            r#"{"Name":"ec2","Endpoints":{"docker":{"Host":"tcp://ec2-1:2376","SkipTLSVerify":true}}}"#,
        )
        .unwrap();
        let found = docker_context_host(dir.path(), None).unwrap().unwrap();
        assert!(found.tls.unwrap_err().contains("skips verifying"));
    }

    #[test]
    fn loopback_detection() {
        for (h, want) in [
            ("127.0.0.1:5000", true),
            ("localhost", true),
            ("[::1]:5000", true),
            ("127.1.2.3", true),
            ("10.0.0.1:5000", false),
            ("example.com", false),
        ] {
            assert_eq!(is_loopback_host(h), want, "{h}");
        }
    }

    #[test]
    fn hosts_flag_picks_fleet_hosts_by_address_or_name_and_refuses_unknown_ones() {
        let section: config::TargetSection =
            toml::from_str("kind = \"container\"\nname = \"web\"\nhosts = [\"ssh://u@ec2-1\", \"ssh://u@ec2-2:2222\"]")
                .unwrap();
        let pick = |only: Option<&[&str]>, flag: Option<&str>| {
            fleet_hosts(
                &section,
                &EngineHosts {
                    flag: flag.map(str::to_string),
                    only: only.map(|o| o.iter().map(|s| s.to_string()).collect()),
                    docker_host: None,
                    env_tls: Ok(None),
                    context: Ok(None),
                },
            )
        };
        assert_eq!(pick(None, None).unwrap().len(), 2);
        assert_eq!(pick(Some(&["ec2-2"]), None).unwrap(), vec!["ssh://u@ec2-2:2222"]);
        assert_eq!(pick(Some(&["ssh://u@ec2-1"]), None).unwrap(), vec!["ssh://u@ec2-1"]);
        assert!(pick(Some(&["ec2-9"]), None).unwrap_err().contains("ec2-9"));
        assert!(pick(None, Some("ssh://u@ec2-1")).unwrap_err().contains("--hosts"));
    }
}
