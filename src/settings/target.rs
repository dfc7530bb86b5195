//! The `[target]` section resolved: what is swapped (a container, a compose service, a swarm
//! service) and the checks on which keys go with which kind; for a fleet (`[target] hosts`) the
//! hosts this run acts on (`--hosts` picks by address or host name), each with its engine, TLS
//! and state folders; and the name of a target's state folder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::config::{self, TargetKind};
use super::engine::{EngineHosts, TlsFiles};
use crate::domain::address::EngineAddress;

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
pub(super) fn fleet_hosts(t: &config::TargetSection, hosts: &EngineHosts) -> Result<Vec<String>, String> {
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

/// Start-first: the old container keeps serving this long after the new one is healthy (a proxy
/// that re-resolves its upstream every second has seen the new one by then).
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct TargetSettings {
    /// A fleet: two hosts or more (`[target] hosts`, after `--hosts`); empty for one host.
    pub hosts: Vec<FleetHost>,
    pub strategy: Option<crate::domain::fleet::Strategy>,
    pub batch: usize,
    pub canary_soak: Duration,
    /// `[target] order` (None: not configured, which is `auto` for containers and the service's
    /// own update order for Swarm).
    pub order: Option<crate::domain::order::Order>,
    /// Start-first: how long the old container keeps serving once the new one is healthy.
    pub drain: Duration,
    /// `[target] restore_config`: a rollback also restores the config the version last ran with.
    pub restore_config: bool,
    pub kind: TargetKind,
    /// The container, compose service or swarm service; for a release, its names joined by `+`
    /// (what its state folder is named by).
    pub name: String,
    /// A release (`[target] names`): its services in order, each with its repository; empty
    /// for one service.
    pub members: Vec<Member>,
    /// Swarm: `stack` without `name` or `names`: every service of the stack whose image comes
    /// from the registry (`members` filled once the manager is reached).
    pub whole_stack: bool,
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

/// One service of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Its repository when it is not `[registry] repository`.
    pub repository: Option<String>,
}

impl TargetSettings {
    /// Whether this is a release of several services (`[target] names`).
    pub fn is_release(&self) -> bool {
        !self.members.is_empty()
    }

    /// One service of the release as a target of its own (its containers, its display); the
    /// release's state, lock and journal stay the release's.
    pub fn member(&self, m: &Member) -> TargetSettings {
        TargetSettings {
            name: m.name.clone(),
            members: Vec::new(),
            whole_stack: false,
            ..self.clone()
        }
    }

    /// Each service as a target of its own: a release's members, or this target itself.
    pub fn services(&self) -> Vec<TargetSettings> {
        if self.is_release() {
            self.members.iter().map(|m| self.member(m)).collect()
        } else {
            vec![self.clone()]
        }
    }

    pub fn display(&self) -> String {
        if self.is_release() {
            let names: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
            let names = names.join(", ");
            return match (self.kind, &self.project, &self.stack) {
                (TargetKind::Compose, Some(p), _) => format!("release {p}/{{{names}}} (compose services)"),
                (TargetKind::Compose, None, _) => format!("release {{{names}}} (compose services)"),
                (TargetKind::Container, _, _) => format!("release {{{names}}} (containers)"),
                (TargetKind::Swarm, _, Some(stack)) => format!("release {stack}/{{{names}}} (swarm services)"),
                (TargetKind::Swarm, _, None) => format!("release {{{names}}} (swarm services)"),
            };
        }
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

/// `[target]` checked and resolved, for the engine picked (`engine_host`, as written) or the
/// fleet's hosts (`fleet`, from `fleet_hosts`: two or more make a fleet); the message says what
/// is wrong with it.
pub(super) fn resolve(
    t: config::TargetSection,
    fleet: &[String],
    engine_host: Option<String>,
    hosts: &EngineHosts,
    state_root: &Path,
) -> Result<TargetSettings, String> {
    let fleet = if fleet.len() > 1 { fleet } else { &[] };
    let (name, members) = members(&t)?;
    let fleet_hosts = fleet
        .iter()
        .map(|address| {
            let engine = EngineAddress::parse(address).expect("checked in fleet_hosts");
            let tls = match engine {
                EngineAddress::Tcp { .. } => hosts.env_tls.clone()?,
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
        .collect::<Result<Vec<_>, String>>()?;
    let mut t = TargetSettings {
        hosts: fleet_hosts,
        strategy: t.strategy,
        batch: t.batch.unwrap_or(1).max(1),
        canary_soak: t.canary_soak.unwrap_or(Duration::from_secs(120)),
        order: t.order,
        drain: t.drain.unwrap_or(DEFAULT_DRAIN),
        restore_config: t.restore_config,
        engine_id: engine_host.clone().unwrap_or_else(|| "local".into()),
        kind: t.kind,
        whole_stack: name == "*",
        name,
        members,
        project: t.project,
        stack: t.stack,
        host: engine_host,
        environment: t.environment,
        version_env: t.version_env,
    };
    if t.version_env.is_some() && t.kind != TargetKind::Compose {
        return Err(
            "[target] version_env only applies to kind = \"compose\" (it writes the compose project's .env)".into(),
        );
    }
    if t.kind == TargetKind::Compose && t.project.is_none() {
        return Err(
            "[target] kind = \"compose\" needs `project` (the compose project name, e.g. the folder name)".into(),
        );
    }
    if t.stack.is_some() && t.kind != TargetKind::Swarm {
        return Err("[target] stack only applies to kind = \"swarm\" (the stack a swarm service came from)".into());
    }
    if t.kind == TargetKind::Swarm
        && (t.strategy.is_some() || t.batch != 1 || t.canary_soak != Duration::from_secs(120))
    {
        return Err(
            "[target] strategy, batch and canary_soak order hosts, and Swarm places a service's tasks itself: \
             leave them out for kind = \"swarm\" (the service's update config, or --parallelism and --order, \
             set how Swarm updates it)"
                .into(),
        );
    }
    if t.kind == TargetKind::Swarm && t.drain != DEFAULT_DRAIN {
        return Err(
            "[target] drain is for start-first container swaps; for kind = \"swarm\", Swarm stops the old \
             task itself (its update config's delay and the service's stop grace period): leave drain out"
                .into(),
        );
    }
    if t.kind == TargetKind::Swarm && !t.hosts.is_empty() {
        return Err(
            "[target] kind = \"swarm\" is reached through one manager: set `host` to a manager, not `hosts` \
             (Swarm itself spreads the service over its nodes)"
                .into(),
        );
    }
    let (kind_name, hosts) = (t.clone(), &mut t.hosts);
    for h in hosts.iter_mut() {
        h.state_dir = state_root.join("targets").join(target_dir(&h.address, &kind_name));
        if matches!(h.engine, EngineAddress::Ssh(_)) {
            h.remote_state = Some(format!("targets/{}", target_dir("local", &kind_name)));
        }
    }
    Ok(t)
}

/// `name` or `names` (with `[target.repositories]`): the target's name and a release's services.
fn members(t: &config::TargetSection) -> Result<(String, Vec<Member>), String> {
    let repositories = t.repositories.clone().unwrap_or_default();
    match (&t.name, &t.names) {
        (Some(_), Some(_)) => {
            Err("[target] has both `name` and `names`: keep one (names = [...] for a release of several)".into())
        }
        // Every service of the stack whose image comes from the registry, found when the command
        // reaches the manager (`App::resolve_stack`); its state folder is the whole stack's.
        (None, None) if t.stack.is_some() && t.kind == TargetKind::Swarm => Ok(("*".into(), Vec::new())),
        (None, None) => Err("[target] needs `name` (or `names = [...]` for a release of several services)".into()),
        (Some(name), None) => {
            if !repositories.is_empty() {
                return Err(
                    "[target.repositories] goes with `names` (a release of several); one service uses \
                     [registry] repository"
                        .into(),
                );
            }
            Ok((name.clone(), Vec::new()))
        }
        (None, Some(names)) => {
            if names.is_empty() {
                return Err("[target] names is empty: list the release's services".into());
            }
            let mut members: Vec<Member> = Vec::with_capacity(names.len());
            for n in names {
                if n.is_empty() || n.contains('+') {
                    return Err(format!("[target] names: '{n}' is not a service name"));
                }
                if members.iter().any(|m| m.name == *n) {
                    return Err(format!("[target] names lists '{n}' twice"));
                }
                members.push(Member {
                    name: n.clone(),
                    repository: repositories.get(n).cloned(),
                });
            }
            if let Some(stray) = repositories.keys().find(|k| !names.contains(k)) {
                return Err(format!(
                    "[target.repositories] names '{stray}', which is not in [target] names ({})",
                    names.join(", ")
                ));
            }
            Ok((names.join("+"), members))
        }
    }
}

/// The name of a target's state folder: `<engine>_<kind>_[<project or stack>_]<name>`.
pub(super) fn target_dir(engine_id: &str, t: &TargetSettings) -> String {
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
}

/// A name made safe for a folder: ASCII letters, digits, `.`, `-` and `_` kept, the rest `_`.
pub(super) fn sanitize(s: &str) -> String {
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
