//! How a container is recreated on another image: keep what the user configured, take the new
//! image's defaults where the old container only had its old image's defaults.
//!
//! The subtlety (the same one Watchtower handles): `docker inspect` shows a container's *effective*
//! config, its image defaults merged in. Copying it verbatim would pin the old image's `Cmd`,
//! `Entrypoint`, `Env`, labels and healthcheck onto the new image. So every value equal to the old
//! image's default is dropped, and the new image fills it in. This module is pure.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, ContainerInspectResponse, EndpointSettings, ImageConfig, NetworkingConfig};

/// The create body for a clone of `old` on `new_image_ref`, and the networks to connect after
/// creation (the Engine takes one network at create time on older API versions).
pub fn clone_config(
    old: &ContainerInspectResponse,
    old_image: &ImageConfig,
    new_image_ref: &str,
    extra_labels: &[(&str, String)],
) -> (ContainerCreateBody, Vec<(String, EndpointSettings)>) {
    let c = old.config.clone().unwrap_or_default();
    let id = old.id.clone().unwrap_or_default();
    let short_id: String = id.chars().take(12).collect();

    let same = |a: &Option<Vec<String>>, b: &Option<Vec<String>>| {
        a.as_deref().unwrap_or_default() == b.as_deref().unwrap_or_default()
    };
    let keep_if_differs = |mine: Option<Vec<String>>, image: &Option<Vec<String>>| {
        if same(&mine, image) { None } else { mine }
    };
    let minus = |mine: Option<Vec<String>>, image: &Option<Vec<String>>| -> Option<Vec<String>> {
        let image = image.as_deref().unwrap_or_default();
        let left: Vec<String> = mine
            .unwrap_or_default()
            .into_iter()
            .filter(|v| !image.contains(v))
            .collect();
        (!left.is_empty()).then_some(left)
    };

    let image_labels = old_image.labels.clone().unwrap_or_default();
    let mut labels: HashMap<String, String> = c
        .labels
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, v)| image_labels.get(k) != Some(v))
        .collect();
    for (k, v) in extra_labels {
        labels.insert((*k).to_string(), v.clone());
    }

    let healthcheck = if c.healthcheck == old_image.healthcheck {
        None
    } else {
        c.healthcheck
    };
    let hostname = c.hostname.filter(|h| !h.is_empty() && *h != short_id);
    let nonempty = |s: Option<String>, image: &Option<String>| s.filter(|v| !v.is_empty() && Some(v) != image.as_ref());

    let host_config = old.host_config.clone();
    let network_mode = host_config
        .as_ref()
        .and_then(|h| h.network_mode.clone())
        .unwrap_or_default();
    let networks = old
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.clone())
        .unwrap_or_default();
    let mut endpoints: Vec<(String, EndpointSettings)> = networks
        .into_iter()
        .map(|(name, e)| (name, clean_endpoint(e, &short_id)))
        .collect();
    endpoints.sort_by(|a, b| a.0.cmp(&b.0));
    // The primary network goes in the create call; the rest are connected afterwards. Modes that
    // are no user network (host, none, container:x, the default bridge) take no endpoint config.
    let user_network = |n: &str| !matches!(n, "host" | "none" | "bridge" | "default") && !n.starts_with("container:");
    let primary = endpoints
        .iter()
        .position(|(n, _)| *n == network_mode && user_network(n));
    let networking_config = primary.map(|i| {
        let (name, ep) = endpoints[i].clone();
        NetworkingConfig {
            endpoints_config: Some(HashMap::from([(name, ep)])),
        }
    });
    let extra: Vec<(String, EndpointSettings)> = endpoints
        .into_iter()
        .enumerate()
        .filter(|(i, (n, _))| Some(*i) != primary && *n != network_mode && user_network(n))
        .map(|(_, e)| e)
        .collect();

    let body = ContainerCreateBody {
        hostname,
        domainname: c.domainname.filter(|d| !d.is_empty()),
        user: nonempty(c.user, &old_image.user),
        attach_stdin: c.attach_stdin,
        attach_stdout: c.attach_stdout,
        attach_stderr: c.attach_stderr,
        exposed_ports: minus(c.exposed_ports, &old_image.exposed_ports),
        tty: c.tty,
        open_stdin: c.open_stdin,
        stdin_once: c.stdin_once,
        env: minus(c.env, &old_image.env),
        cmd: keep_if_differs(c.cmd, &old_image.cmd),
        healthcheck,
        args_escaped: None,
        image: Some(new_image_ref.to_string()),
        volumes: minus(c.volumes, &old_image.volumes),
        working_dir: nonempty(c.working_dir, &old_image.working_dir),
        entrypoint: keep_if_differs(c.entrypoint, &old_image.entrypoint),
        network_disabled: c.network_disabled,
        on_build: None,
        labels: (!labels.is_empty()).then_some(labels),
        stop_signal: nonempty(c.stop_signal, &old_image.stop_signal),
        stop_timeout: c.stop_timeout,
        shell: keep_if_differs(c.shell, &old_image.shell),
        host_config,
        networking_config,
    };
    (body, extra)
}

/// Networks and their endpoint settings.
pub type Endpoints = Vec<(String, EndpointSettings)>;

/// A clone's create body and extra networks without their network aliases, and the endpoints
/// (with the aliases) to join once it is healthy: a start-first swap's new container is reachable
/// at its own address while it is validated, and takes no traffic that finds the service by its
/// alias (a proxy's upstream) before that. Networks without aliases need no second join.
pub fn without_aliases(
    body: &ContainerCreateBody,
    extra_networks: &[(String, EndpointSettings)],
) -> (ContainerCreateBody, Endpoints, Endpoints) {
    let mut joins = Vec::new();
    let mut strip = |network: &str, e: &EndpointSettings| {
        if e.aliases.as_ref().is_some_and(|a| !a.is_empty()) {
            joins.push((network.to_string(), e.clone()));
        }
        EndpointSettings {
            aliases: None,
            ..e.clone()
        }
    };
    let mut body = body.clone();
    if let Some(endpoints) = body
        .networking_config
        .as_mut()
        .and_then(|n| n.endpoints_config.as_mut())
    {
        let mut names: Vec<String> = endpoints.keys().cloned().collect();
        names.sort();
        for n in names {
            let stripped = strip(&n, &endpoints[&n]);
            endpoints.insert(n, stripped);
        }
    }
    let extra = extra_networks.iter().map(|(n, e)| (n.clone(), strip(n, e))).collect();
    (body, extra, joins)
}

/// Drops what the engine assigned to the old endpoint (ids, addresses, the short-id alias).
fn clean_endpoint(e: EndpointSettings, short_id: &str) -> EndpointSettings {
    let aliases: Vec<String> = e
        .aliases
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a != short_id)
        .collect();
    EndpointSettings {
        ipam_config: e.ipam_config,
        links: e.links,
        aliases: (!aliases.is_empty()).then_some(aliases),
        driver_opts: e.driver_opts,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerConfig, HealthConfig, HostConfig, NetworkSettings};

    use super::*;

    fn s(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|x| x.to_string()).collect())
    }

    fn old_image() -> ImageConfig {
        ImageConfig {
            env: s(&["PATH=/bin", "APP_VERSION=1.0.0"]),
            cmd: s(&["/bin/app", "--serve"]),
            labels: Some(HashMap::from([
                ("org.opencontainers.image.version".into(), "1.0.0".into()),
                ("maintainer".into(), "team".into()),
            ])),
            healthcheck: Some(HealthConfig {
                test: s(&["CMD", "/bin/check"]),
                ..Default::default()
            }),
            exposed_ports: s(&["8080/tcp"]),
            working_dir: Some("/app".into()),
            ..Default::default()
        }
    }

    fn container(config: ContainerConfig) -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some("0123456789abcdef0123".into()),
            config: Some(config),
            host_config: Some(HostConfig {
                binds: s(&["/srv/data:/data"]),
                network_mode: Some("appnet".into()),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                networks: Some(HashMap::from([
                    (
                        "appnet".to_string(),
                        EndpointSettings {
                            aliases: s(&["web", "0123456789ab"]),
                            ip_address: Some("172.18.0.5".into()),
                            network_id: Some("netid".into()),
                            ..Default::default()
                        },
                    ),
                    (
                        "monitoring".to_string(),
                        EndpointSettings {
                            aliases: s(&["web-metrics"]),
                            ..Default::default()
                        },
                    ),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn image_defaults_are_dropped_and_user_settings_kept() {
        let old = container(ContainerConfig {
            hostname: Some("0123456789ab".into()),
            env: s(&["PATH=/bin", "APP_VERSION=1.0.0", "DATABASE_URL=postgres://db"]),
            cmd: s(&["/bin/app", "--serve"]),
            labels: Some(HashMap::from([
                ("org.opencontainers.image.version".into(), "1.0.0".into()),
                ("maintainer".into(), "team".into()),
                ("com.example.owner".into(), "ops".into()),
            ])),
            healthcheck: old_image().healthcheck,
            exposed_ports: s(&["8080/tcp", "9090/tcp"]),
            working_dir: Some("/app".into()),
            image: Some("reg/app:v1.0.0".into()),
            ..Default::default()
        });
        let (body, extra) = clone_config(
            &old,
            &old_image(),
            "reg/app@sha256:abc",
            &[("io.backtrack.tag", "v1.1.0".into())],
        );
        assert_eq!(body.image.as_deref(), Some("reg/app@sha256:abc"));
        assert_eq!(
            body.env,
            s(&["DATABASE_URL=postgres://db"]),
            "only the user's env is carried"
        );
        assert_eq!(body.cmd, None, "the new image's CMD applies");
        assert_eq!(body.healthcheck, None, "the new image's HEALTHCHECK applies");
        assert_eq!(body.working_dir, None);
        assert_eq!(body.hostname, None, "the generated hostname is not pinned");
        assert_eq!(body.exposed_ports, s(&["9090/tcp"]));
        let labels = body.labels.unwrap();
        assert_eq!(labels.get("com.example.owner").map(String::as_str), Some("ops"));
        assert_eq!(labels.get("io.backtrack.tag").map(String::as_str), Some("v1.1.0"));
        assert!(
            !labels.contains_key("org.opencontainers.image.version"),
            "image labels come from the new image"
        );
        assert_eq!(body.host_config.unwrap().binds, s(&["/srv/data:/data"]));
        let primary = body.networking_config.unwrap().endpoints_config.unwrap();
        let ep = &primary["appnet"];
        assert_eq!(ep.aliases, s(&["web"]), "the old short-id alias is dropped");
        assert_eq!(ep.ip_address, None);
        assert_eq!(extra.len(), 1);
        assert_eq!(extra[0].0, "monitoring");
    }

    #[test]
    fn user_overrides_of_cmd_entrypoint_and_healthcheck_are_kept() {
        let custom_health = HealthConfig {
            test: s(&["CMD", "/bin/other-check"]),
            ..Default::default()
        };
        let old = container(ContainerConfig {
            cmd: s(&["/bin/app", "--worker"]),
            entrypoint: s(&["/bin/tini", "--"]),
            healthcheck: Some(custom_health.clone()),
            user: Some("1000".into()),
            ..Default::default()
        });
        let (body, _) = clone_config(&old, &old_image(), "x@sha256:1", &[]);
        assert_eq!(body.cmd, s(&["/bin/app", "--worker"]));
        assert_eq!(body.entrypoint, s(&["/bin/tini", "--"]));
        assert_eq!(body.healthcheck, Some(custom_health));
        assert_eq!(body.user.as_deref(), Some("1000"));
    }

    #[test]
    fn a_start_first_clone_is_created_without_aliases_and_joins_them_later() {
        let old = container(ContainerConfig::default());
        let (body, extra) = clone_config(&old, &old_image(), "x@sha256:1", &[]);
        let (bare, bare_extra, joins) = without_aliases(&body, &extra);
        let primary = bare.networking_config.unwrap().endpoints_config.unwrap();
        assert_eq!(primary["appnet"].aliases, None);
        assert_eq!(bare_extra.len(), 1);
        assert_eq!(bare_extra[0].1.aliases, None);
        let joined: Vec<(&str, Option<Vec<String>>)> =
            joins.iter().map(|(n, e)| (n.as_str(), e.aliases.clone())).collect();
        assert_eq!(
            joined,
            vec![("appnet", s(&["web"])), ("monitoring", s(&["web-metrics"]))]
        );
    }

    #[test]
    fn default_bridge_takes_no_endpoint_config() {
        let mut old = container(ContainerConfig::default());
        old.host_config.as_mut().unwrap().network_mode = Some("default".into());
        old.network_settings = Some(NetworkSettings {
            networks: Some(HashMap::from([("bridge".to_string(), EndpointSettings::default())])),
            ..Default::default()
        });
        let (body, extra) = clone_config(&old, &old_image(), "x@sha256:1", &[]);
        assert!(body.networking_config.is_none());
        assert!(extra.is_empty());
    }
}

/// The `docker run` command a person would type for the same container, for `--dry-run` plans.
pub fn docker_run_command(name: &str, body: &ContainerCreateBody) -> String {
    let mut parts: Vec<String> = vec!["docker run -d".into(), format!("--name {}", shell_word(name))];
    if let Some(h) = &body.host_config {
        if let Some(p) = &h.restart_policy {
            let text = super::restart_policy_text(p);
            if text != "no" {
                parts.push(format!("--restart {text}"));
            }
        }
        for b in h.binds.iter().flatten() {
            parts.push(format!("-v {}", shell_word(b)));
        }
        for (port, bindings) in h.port_bindings.iter().flatten() {
            for b in bindings.iter().flatten() {
                let ip = b
                    .host_ip
                    .as_deref()
                    .filter(|i| !i.is_empty())
                    .map(|i| format!("{i}:"))
                    .unwrap_or_default();
                let container_port = port.trim_end_matches("/tcp");
                parts.push(format!(
                    "-p {ip}{}:{container_port}",
                    b.host_port.as_deref().unwrap_or("")
                ));
            }
        }
        if let Some(mode) = h
            .network_mode
            .as_deref()
            .filter(|m| !matches!(*m, "" | "default" | "bridge"))
        {
            parts.push(format!("--network {mode}"));
        }
    }
    let mut aliases: Vec<&String> = body
        .networking_config
        .iter()
        .flat_map(|n| n.endpoints_config.iter().flatten())
        .flat_map(|(_, e)| e.aliases.iter().flatten())
        .collect();
    aliases.sort();
    for a in aliases {
        parts.push(format!("--network-alias {}", shell_word(a)));
    }
    for e in body.env.iter().flatten() {
        // A secret-looking value is never printed: `-e NAME` passes it from the caller's env.
        match e.split_once('=') {
            Some((name, _)) if crate::domain::config::is_secret(name) => parts.push(format!("-e {}", shell_word(name))),
            _ => parts.push(format!("-e {}", shell_word(e))),
        }
    }
    let mut labels: Vec<(&String, &String)> = body.labels.iter().flatten().collect();
    labels.sort();
    for (k, v) in labels {
        parts.push(format!("--label {}", shell_word(&format!("{k}={v}"))));
    }
    if let Some(ep) = &body.entrypoint {
        parts.push(format!("--entrypoint {}", shell_word(&ep.join(" "))));
    }
    parts.push(body.image.clone().unwrap_or_default());
    for c in body.cmd.iter().flatten() {
        parts.push(shell_word(c));
    }
    parts.join(" ")
}

/// Quotes a word for a POSIX shell when it needs it.
pub fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod run_command_tests {
    use bollard::models::{HostConfig, PortBinding};

    use super::*;

    #[test]
    fn dry_run_command_reads_like_docker_run() {
        let body = ContainerCreateBody {
            image: Some("reg/app@sha256:abc".into()),
            env: Some(vec![
                "A=1".into(),
                "MSG=hello world".into(),
                "DB_PASSWORD=hunter2".into(),
            ]),
            host_config: Some(HostConfig {
                binds: Some(vec!["/srv/data:/data".into()]),
                port_bindings: Some(HashMap::from([(
                    "8080/tcp".to_string(),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some("18080".into()),
                    }]),
                )])),
                restart_policy: Some(super::super::parse_restart_policy("unless-stopped")),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            docker_run_command("app", &body),
            "docker run -d --name app --restart unless-stopped -v /srv/data:/data -p 127.0.0.1:18080:8080 \
             -e A=1 -e 'MSG=hello world' -e DB_PASSWORD reg/app@sha256:abc"
        );
    }
}
