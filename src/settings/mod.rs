//! Settings: raw arguments, environment and the config file resolved once, before any command
//! runs, into the values commands use (in the spirit of uv's `Settings::resolve`).
//!
//! **Commands never read the environment or the config file themselves**; they get `Settings`.
//!
//! Split by concern: this file has `Settings`, `Project` and their resolution (the config file
//! found and read, every part of it resolved in turn, the state folders named); `engine` where
//! the engine is named (flag, config, `DOCKER_HOST`, docker context) and the TLS and ssh options
//! that go with it; `target` the `[target]` section (its kinds and checks, a fleet's hosts and
//! `--hosts`); `registry` the `[registry]` section (scheme, loopback, the kind inferred from the
//! host).

pub mod config;
mod engine;
pub mod policy;
mod registry;
mod target;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{GlobalArgs, OutputFormat};
use crate::domain::address::EngineAddress;
pub use config::{EcrSection, FileError, HooksSection, NotifyOn, NotifySection, RegistryKind, TargetKind};
use engine::env_tls;
pub use engine::{ContextEngine, EngineHosts, SshOptions, TlsFiles, docker_context_host};
pub use registry::{RegistrySettings, is_loopback_host, parse_ecr_host};
pub use target::{DEFAULT_DRAIN, FleetHost, Member, TargetSettings};

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
pub struct HealthSettings {
    pub http: Option<String>,
    pub timeout: Duration,
    pub expect_version: bool,
    /// The app's port inside its container, for probes aimed at one container (`[health] port`).
    pub port: Option<u16>,
}

impl HealthSettings {
    /// The same checks without the HTTP probe: a release's services after the first, which
    /// `[health] http` does not describe, are validated by their state and version.
    pub fn without_probe(&self) -> HealthSettings {
        HealthSettings {
            http: None,
            ..self.clone()
        }
    }
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
    let registry = registry::resolve(file.registry).map_err(invalid)?;
    let fleet = match file.target.as_ref() {
        Some(t) => target::fleet_hosts(t, hosts).map_err(invalid)?,
        None => Vec::new(),
    };
    // One host of a fleet (`--hosts a`, or a list of one) is a plain single-host target.
    let single = match fleet.as_slice() {
        [one] => Some(one.as_str()),
        _ => None,
    };
    let engine::Picked {
        host: engine_host,
        engine,
        tls: engine_tls,
    } = engine::resolve(hosts, single, file.target.as_ref().and_then(|t| t.host.as_deref())).map_err(invalid)?;
    let target = file
        .target
        .map(|t| target::resolve(t, &fleet, engine_host, hosts, state_root))
        .transpose()
        .map_err(invalid)?;
    let remote_state = match (&target, &engine) {
        (Some(t), Some(EngineAddress::Ssh(_))) => Some(format!("targets/{}", target::target_dir("local", t))),
        _ => None,
    };
    let (host, repository) = (&registry.host, &registry.repository);
    let state_dir = match &target {
        Some(t) => state_root.join("targets").join(target::target_dir(&t.engine_id, t)),
        None => state_root
            .join("repositories")
            .join(target::sanitize(&format!("{host}_{repository}"))),
    };
    let legacy_state_dir = state_root.join(target::sanitize(&format!("{host}_{repository}")));
    Ok(Project {
        config_path: path.to_path_buf(),
        registry,
        target,
        health: HealthSettings {
            http: file.health.http,
            timeout: file.health.timeout,
            expect_version: file.health.expect_version,
            port: file.health.port,
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
    fn a_release_names_its_services_and_their_repositories_and_bad_ones_are_refused() {
        let base = "[registry]\nurl = \"localhost:5000\"\nrepository = \"app\"\n[target]\nkind = \"container\"\n";
        let p = project(&format!(
            "{base}names = [\"web\", \"worker\"]\n[target.repositories]\nworker = \"team/worker\"\n"
        ))
        .unwrap();
        let t = p.target.unwrap();
        assert!(t.is_release());
        let members: Vec<(&str, Option<&str>)> = t
            .members
            .iter()
            .map(|m| (m.name.as_str(), m.repository.as_deref()))
            .collect();
        assert_eq!(members, [("web", None), ("worker", Some("team/worker"))]);
        assert_eq!(t.display(), "release {web, worker} (containers)");
        assert_eq!(t.member(&t.members[1]).display(), "container worker");
        // One state folder for the release: its history, lock and pointer are the release's.
        assert_eq!(p.state_dir, Path::new("/state/targets/local_container_web_worker"));
        // A stack alone: every service of it from the registry, found on the manager.
        let p = project(
            "[registry]\nurl = \"localhost:5000\"\nrepository = \"app\"\n[target]\nkind = \"swarm\"\nstack = \"shop\"\n",
        )
        .unwrap();
        let t = p.target.unwrap();
        assert!(t.whole_stack && !t.is_release(), "{t:?}");
        assert_eq!(p.state_dir, Path::new("/state/targets/local_swarm_shop__"));
        for (more, says) in [
            ("name = \"web\"\nnames = [\"web\"]\n", "both `name` and `names`"),
            ("", "needs `name`"),
            ("names = []\n", "names is empty"),
            ("names = [\"web\", \"web\"]\n", "lists 'web' twice"),
            (
                "names = [\"web\"]\n[target.repositories]\ncron = \"cron\"\n",
                "names 'cron', which is not in [target] names",
            ),
            (
                "name = \"web\"\n[target.repositories]\nweb = \"web\"\n",
                "goes with `names`",
            ),
            (
                "names = [\"web\"]\n[target.repositories]\nweb = \"Web\"\n",
                "invalid repository name 'Web'",
            ),
        ] {
            let err = project(&format!("{base}{more}")).unwrap_err().to_string();
            assert!(err.contains(says), "{more:?}: {err}");
        }
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
}
