//! Config snapshots of containers: what `docker run` needs to recreate one, image aside (the
//! clone's create body, which holds only what the user configured beyond the image's defaults,
//! and the networks it joins after creation), as the JSON the journal stores; the way back from a
//! snapshot to a create body on a given image; and the snapshot flattened to `key -> value` for
//! `domain::config`'s differences; the same for a Swarm service's spec. Pure: no engine calls.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, EndpointSettings, EndpointSpec, ServiceSpec, TaskSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::clone::{Endpoints, shell_word};
use super::{LABEL_EMERGENCY, LABEL_TAG, LABEL_VERSION};
use crate::domain::config::Flat;

/// The stored form: the create body without its image and backtrack's own labels, and the
/// networks joined after creation.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    container: ContainerCreateBody,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    networks: Endpoints,
}

/// The snapshot of a container that `body` (and `networks`) would create.
pub fn of(body: &ContainerCreateBody, networks: &[(String, EndpointSettings)]) -> Value {
    let mut container = body.clone();
    container.image = None;
    if let Some(labels) = container.labels.as_mut() {
        for l in [LABEL_VERSION, LABEL_TAG, LABEL_EMERGENCY] {
            labels.remove(l);
        }
        if labels.is_empty() {
            container.labels = None;
        }
    }
    let mut networks = networks.to_vec();
    networks.sort_by(|a, b| a.0.cmp(&b.0));
    serde_json::to_value(Stored { container, networks }).unwrap_or(Value::Null)
}

/// The create body (and networks to join) that recreates the container `snapshot` describes, on
/// `image`, with `labels` added. `None`: the snapshot is not one of a container.
pub fn restore(snapshot: &Value, image: &str, labels: &[(&str, String)]) -> Option<(ContainerCreateBody, Endpoints)> {
    let Stored {
        mut container,
        networks,
    } = serde_json::from_value(snapshot.clone()).ok()?;
    container.image = Some(image.to_string());
    let l = container.labels.get_or_insert_with(HashMap::new);
    for (k, v) in labels {
        l.insert((*k).to_string(), v.clone());
    }
    Some((container, networks))
}

/// A snapshot flattened for differences: `env.NAME`, `labels.NAME`, `cmd`, `entrypoint`,
/// `ports.8080/tcp`, `restart`, `networks.NAME` (its aliases), and every other setting under its
/// snake_case name (`working_dir`, `memory`, `log_config`, ...), with JSON for structured values.
/// Unset and empty settings are left out.
pub fn flatten(snapshot: &Value) -> Flat {
    let mut flat = Flat::new();
    let container = snapshot.get("container").and_then(Value::as_object);
    for (key, value) in container.into_iter().flatten() {
        match key.as_str() {
            "Env" => insert_env(&mut flat, value),
            "Labels" => insert_labels(&mut flat, value),
            "Cmd" | "Entrypoint" | "Shell" => insert_words(&mut flat, snake(key), value),
            "HostConfig" => {
                for (k, v) in value.as_object().into_iter().flatten() {
                    host_setting(&mut flat, k, v);
                }
            }
            "NetworkingConfig" => {
                let endpoints = value.get("EndpointsConfig").and_then(Value::as_object);
                for (name, e) in endpoints.into_iter().flatten() {
                    flat.insert(format!("networks.{name}"), aliases(e));
                }
            }
            _ => insert(&mut flat, snake(key), value),
        }
    }
    for pair in snapshot.get("networks").and_then(Value::as_array).into_iter().flatten() {
        if let (Some(name), Some(e)) = (pair.get(0).and_then(Value::as_str), pair.get(1)) {
            flat.insert(format!("networks.{name}"), aliases(e));
        }
    }
    flat
}

/// The snapshot of a Swarm service's spec: its task template (container spec, resources,
/// placement, restart policy, networks, log driver) without the image, the force-update counter
/// and the labels in `strip` (backtrack's own), and its endpoint spec (published ports).
pub fn of_service(spec: &ServiceSpec, strip: &[&str]) -> Value {
    let mut task = spec.task_template.clone().unwrap_or_default();
    task.force_update = None;
    if let Some(c) = task.container_spec.as_mut() {
        c.image = None;
        if let Some(labels) = c.labels.as_mut() {
            for l in strip {
                labels.remove(*l);
            }
            if labels.is_empty() {
                c.labels = None;
            }
        }
    }
    serde_json::json!({
        "service": {
            "TaskTemplate": serde_json::to_value(task).unwrap_or(Value::Null),
            "EndpointSpec": serde_json::to_value(&spec.endpoint_spec).unwrap_or(Value::Null),
        }
    })
}

/// Puts a service snapshot's task template and endpoint spec into `spec`, keeping the image, the
/// labels in `keep` (backtrack's own) and the force-update counter `spec` has. `None`: the
/// snapshot is not one of a service.
pub fn restore_service(spec: &mut ServiceSpec, snapshot: &Value, keep: &[&str]) -> Option<()> {
    let service = snapshot.get("service")?;
    let mut task: TaskSpec = serde_json::from_value(service.get("TaskTemplate")?.clone()).ok()?;
    let endpoint: Option<EndpointSpec> = serde_json::from_value(service.get("EndpointSpec")?.clone()).ok()?;
    let current = spec.task_template.clone().unwrap_or_default();
    let current_container = current.container_spec.unwrap_or_default();
    task.force_update = current.force_update;
    let container = task.container_spec.get_or_insert_with(Default::default);
    container.image = current_container.image;
    let labels = container.labels.get_or_insert_with(HashMap::new);
    for (k, v) in current_container.labels.unwrap_or_default() {
        if keep.contains(&k.as_str()) {
            labels.insert(k, v);
        }
    }
    spec.task_template = Some(task);
    spec.endpoint_spec = endpoint;
    Some(())
}

/// A service snapshot flattened like a container's: `env.NAME`, `labels.NAME`, `cmd` (Args),
/// `entrypoint` (Command), `ports.80/tcp` (published port and mode), `networks.NAME`, and the
/// other settings of the container spec and task template under their snake_case names.
pub fn flatten_service(snapshot: &Value) -> Flat {
    let mut flat = Flat::new();
    let Some(service) = snapshot.get("service") else {
        return flat;
    };
    for (key, value) in service
        .get("TaskTemplate")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        match key.as_str() {
            "ContainerSpec" => {
                for (k, v) in value.as_object().into_iter().flatten() {
                    match k.as_str() {
                        "Env" => insert_env(&mut flat, v),
                        "Labels" => insert_labels(&mut flat, v),
                        "Args" => insert_words(&mut flat, "cmd".into(), v),
                        "Command" => insert_words(&mut flat, "entrypoint".into(), v),
                        _ => insert(&mut flat, snake(k), v),
                    }
                }
            }
            "Networks" => {
                for n in value.as_array().into_iter().flatten() {
                    let name = n.get("Target").map(text).unwrap_or_default();
                    flat.insert(format!("networks.{name}"), aliases(n));
                }
            }
            _ => insert(&mut flat, snake(key), value),
        }
    }
    let ports = service
        .get("EndpointSpec")
        .and_then(|e| e.get("Ports"))
        .and_then(Value::as_array);
    for p in ports.into_iter().flatten() {
        let target = p.get("TargetPort").map(text).unwrap_or_default();
        let proto = p.get("Protocol").map(text).unwrap_or_else(|| "tcp".into());
        let published = p.get("PublishedPort").map(text).unwrap_or_default();
        let mode = p.get("PublishMode").map(text).unwrap_or_else(|| "ingress".into());
        flat.insert(format!("ports.{target}/{proto}"), format!("{published} ({mode})"));
    }
    flat
}

/// A snapshot of either kind, flattened.
pub fn flatten_any(snapshot: &Value) -> Flat {
    if snapshot.get("service").is_some() {
        flatten_service(snapshot)
    } else {
        flatten(snapshot)
    }
}

fn host_setting(flat: &mut Flat, key: &str, value: &Value) {
    match key {
        "PortBindings" => {
            for (port, bindings) in value.as_object().into_iter().flatten() {
                let list: Vec<String> = bindings
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| {
                        let ip = b.get("HostIp").map(text).filter(|i| !i.is_empty());
                        let port = b.get("HostPort").map(text).unwrap_or_default();
                        ip.map_or(port.clone(), |ip| format!("{ip}:{port}"))
                    })
                    .collect();
                flat.insert(format!("ports.{port}"), list.join(", "));
            }
        }
        "RestartPolicy" => {
            let name = value.get("Name").map(text).unwrap_or_default();
            let max = value.get("MaximumRetryCount").and_then(Value::as_i64).unwrap_or(0);
            let policy = match (name.as_str(), max) {
                ("" | "no", _) => String::new(),
                ("on-failure", n) if n > 0 => format!("on-failure:{n}"),
                (n, _) => n.to_string(),
            };
            if !policy.is_empty() {
                flat.insert("restart".into(), policy);
            }
        }
        _ => insert(flat, snake(key), value),
    }
}

/// `["K=V", ...]` as `env.K = V`.
fn insert_env(flat: &mut Flat, env: &Value) {
    for e in env.as_array().into_iter().flatten().filter_map(Value::as_str) {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        flat.insert(format!("env.{k}"), v.to_string());
    }
}

/// `{"K": "V", ...}` as `labels.K = V`.
fn insert_labels(flat: &mut Flat, labels: &Value) {
    for (k, v) in labels.as_object().into_iter().flatten() {
        flat.insert(format!("labels.{k}"), text(v));
    }
}

/// A command's words as one shell line, unless it has none.
fn insert_words(flat: &mut Flat, key: String, words: &Value) {
    let words: Vec<String> = words
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| shell_word(&text(w)))
        .collect();
    if !words.is_empty() {
        flat.insert(key, words.join(" "));
    }
}

/// A network's aliases, or `(attached)` when it has none.
fn aliases(endpoint: &Value) -> String {
    let mut list: Vec<String> = endpoint
        .get("Aliases")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    list.sort();
    if list.is_empty() {
        "(attached)".into()
    } else {
        list.join(", ")
    }
}

/// Inserts a setting unless it is unset or empty (null, "", [], {}, false, 0).
fn insert(flat: &mut Flat, key: String, value: &Value) {
    let empty = match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    };
    if !empty {
        flat.insert(key, text(value));
    }
}

/// A value as text: strings as they are, the rest as compact JSON.
fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// `WorkingDir` -> `working_dir`.
fn snake(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for (i, c) in key.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use bollard::models::{HostConfig, NetworkingConfig, PortBinding};

    use super::*;

    fn body(env: &[&str], cmd: &[&str]) -> ContainerCreateBody {
        ContainerCreateBody {
            image: Some("reg/app@sha256:abc".into()),
            env: Some(env.iter().map(|s| s.to_string()).collect()),
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            working_dir: Some("/srv".into()),
            labels: Some(HashMap::from([
                ("app".to_string(), "shop".to_string()),
                (LABEL_VERSION.to_string(), "1.0.0".to_string()),
            ])),
            host_config: Some(HostConfig {
                port_bindings: Some(HashMap::from([(
                    "8080/tcp".to_string(),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some("18080".into()),
                    }]),
                )])),
                restart_policy: Some(super::super::parse_restart_policy("unless-stopped")),
                memory: Some(0),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    "shop".to_string(),
                    EndpointSettings {
                        aliases: Some(vec!["web".into()]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_snapshot_flattens_to_the_keys_a_person_reads() {
        let extra = vec![("metrics".to_string(), EndpointSettings::default())];
        let snap = of(
            &body(&["MODE=old", "DB_PASSWORD=hunter2"], &["serve", "--port", "8080"]),
            &extra,
        );
        let flat = flatten(&snap);
        let expect: Flat = [
            ("cmd", "serve --port 8080"),
            ("env.DB_PASSWORD", "hunter2"),
            ("env.MODE", "old"),
            ("labels.app", "shop"),
            ("networks.metrics", "(attached)"),
            ("networks.shop", "web"),
            ("ports.8080/tcp", "127.0.0.1:18080"),
            ("restart", "unless-stopped"),
            ("working_dir", "/srv"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(flat, expect, "no image, no backtrack label, no zero setting");
    }

    #[test]
    fn a_restored_snapshot_is_the_body_it_was_taken_of_on_the_image_asked_for() {
        let original = body(&["MODE=old"], &["serve"]);
        let extra = vec![("metrics".to_string(), EndpointSettings::default())];
        let snap = of(&original, &extra);
        let (restored, networks) = restore(&snap, "reg/app@sha256:def", &[(LABEL_VERSION, "1.0.0".into())]).unwrap();
        assert_eq!(restored.image.as_deref(), Some("reg/app@sha256:def"));
        assert_eq!(restored.env, original.env);
        assert_eq!(restored.cmd, original.cmd);
        assert_eq!(restored.labels, original.labels);
        assert_eq!(
            serde_json::to_value(&restored.host_config).unwrap(),
            serde_json::to_value(&original.host_config).unwrap()
        );
        assert_eq!(networks.len(), 1);
        // The same config taken again has the same hash: one snapshot, stored once.
        assert_eq!(
            crate::domain::config::hash(&of(&restored, &networks)),
            crate::domain::config::hash(&snap)
        );
        assert!(restore(&serde_json::json!({"service": 1}), "x", &[]).is_none());
    }
}
