//! The rehearsal behind `backtrack drill`: a candidate image is pulled by digest (timed), a scratch
//! copy of the target's container is created on it (`NAME-backtrack-drill`: the swap's clone, minus
//! what could reach or harm production) and validated the way a swap validates, then removed,
//! whatever happened. Production is only read (inspected), never stopped, renamed or updated.
//!
//! What differs from a real rollback is said, line by line: no published host ports, bind mounts
//! read-only, named volumes replaced by empty ones (or mounted read-only with `--with-volumes`),
//! no network aliases and no compose labels (so nothing routes production traffic to the copy),
//! no restart policy, and the HTTP probe sent to the copy's own address.

use std::time::Instant;

use bollard::models::{ContainerCreateBody, EndpointSettings, MountType, PortMap};
use chrono::Utc;
use serde::Serialize;

use crate::adapters::docker::{Engine, snapshot};
use crate::adapters::registry::PullAuth;
use crate::adapters::state::{self, Journal};
use crate::domain::history::{Operation, Outcome, Record};
use crate::domain::image::ImageRef;
use crate::ops::config::Configs;
use crate::ops::deployed::Deployed;
use crate::ops::validate::{address_of, copy_probe_url};
use crate::ops::{interrupt, swap, validate};
use crate::output::{Printer, Progress};
use crate::settings::HealthSettings;

/// Suffix of the scratch copy a drill runs.
pub const DRILL_SUFFIX: &str = "-backtrack-drill";
/// Label on the scratch copy (its value: the target's container).
pub const LABEL_DRILL: &str = "io.backtrack.drill";

/// The scratch copy's create body, the networks to connect after creation, and how it differs
/// from production.
#[derive(Debug, Clone)]
pub struct Scratch {
    pub body: ContainerCreateBody,
    pub extra_networks: Vec<(String, EndpointSettings)>,
    pub differences: Vec<String>,
}

/// Turns the swap's clone of a production container into a scratch copy that cannot reach or be
/// reached as production: pure.
pub fn scratch_config(
    mut body: ContainerCreateBody,
    extra_networks: Vec<(String, EndpointSettings)>,
    production: &str,
    with_volumes: bool,
) -> Scratch {
    let mut differences = Vec::new();
    let mut anonymous: Vec<String> = Vec::new();
    if let Some(h) = body.host_config.as_mut() {
        let published: Vec<String> = published_ports(h.port_bindings.as_ref());
        if !published.is_empty() {
            differences.push(format!(
                "no published host ports (production publishes {})",
                published.join(", ")
            ));
        }
        h.port_bindings = None;
        h.publish_all_ports = Some(false);
        if h.restart_policy.as_ref().is_some_and(|p| {
            p.name.is_some_and(|n| {
                n != bollard::models::RestartPolicyNameEnum::NO && n != bollard::models::RestartPolicyNameEnum::EMPTY
            })
        }) {
            differences.push("no restart policy (an exit shows at once)".into());
        }
        h.restart_policy = Some(crate::adapters::docker::parse_restart_policy("no"));
        h.auto_remove = Some(false);
        let binds = h.binds.take().unwrap_or_default();
        let mut kept = Vec::new();
        for bind in binds {
            match scratch_bind(&bind, with_volumes) {
                Bind::Keep(b, note) => {
                    differences.push(note);
                    kept.push(b);
                }
                Bind::Empty(dst, note) => {
                    differences.push(note);
                    anonymous.push(dst);
                }
            }
        }
        h.binds = (!kept.is_empty()).then_some(kept);
        for m in h.mounts.iter_mut().flatten() {
            let target = m.target.clone().unwrap_or_default();
            let source = m.source.clone().unwrap_or_default();
            match m.typ {
                Some(MountType::BIND) => {
                    m.read_only = Some(true);
                    differences.push(format!("bind mount {source} -> {target} read-only"));
                }
                Some(MountType::VOLUME) if with_volumes => {
                    m.read_only = Some(true);
                    differences.push(format!(
                        "volume {source} -> {target} mounted read-only (--with-volumes)"
                    ));
                }
                Some(MountType::VOLUME) => {
                    m.source = None;
                    m.volume_options = None;
                    differences.push(format!(
                        "volume {source} -> {target} replaced by an empty one (--with-volumes mounts it read-only)"
                    ));
                }
                _ => {}
            }
        }
        match h.network_mode.as_deref() {
            Some("host") => differences.push(
                "shares the host's network with production: its ports may clash, and the HTTP probe is not run".into(),
            ),
            Some(m) if m.starts_with("container:") => differences.push(format!(
                "shares the network of {} like production: the HTTP probe is not run",
                m.trim_start_matches("container:")
            )),
            _ => {}
        }
    }
    if !anonymous.is_empty() {
        body.volumes.get_or_insert_with(Vec::new).extend(anonymous);
    }
    let mut aliases_dropped = false;
    let mut strip = |ep: &mut EndpointSettings| {
        aliases_dropped |= ep.aliases.as_ref().is_some_and(|a| !a.is_empty()) || ep.links.is_some();
        ep.aliases = None;
        ep.links = None;
        ep.ipam_config = None;
    };
    for ep in body
        .networking_config
        .iter_mut()
        .flat_map(|n| n.endpoints_config.iter_mut().flat_map(|e| e.values_mut()))
    {
        strip(ep);
    }
    let mut extra_networks = extra_networks;
    for (_, ep) in &mut extra_networks {
        strip(ep);
    }
    if aliases_dropped {
        differences.push("no network aliases or fixed addresses (nothing sends it production's traffic)".into());
    }
    let labels = body.labels.get_or_insert_with(Default::default);
    let before = labels.len();
    labels.retain(|k, _| !k.starts_with("com.docker.compose."));
    if labels.len() != before {
        differences.push("no compose labels (compose does not count it as a replica)".into());
    }
    labels.insert(LABEL_DRILL.into(), production.to_string());
    Scratch {
        body,
        extra_networks,
        differences,
    }
}

enum Bind {
    /// The bind as the copy gets it, and what changed.
    Keep(String, String),
    /// A named volume replaced by an empty anonymous one at this path.
    Empty(String, String),
}

/// `SRC:DST[:OPTS]`: a host path is mounted read-only; a named volume is replaced by an empty
/// one, or mounted read-only with `--with-volumes`.
fn scratch_bind(bind: &str, with_volumes: bool) -> Bind {
    let mut parts = bind.splitn(3, ':');
    let (src, dst, opts) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let read_only = || {
        let mut o: Vec<&str> = opts
            .split(',')
            .filter(|o| !o.is_empty() && *o != "rw" && *o != "ro")
            .collect();
        o.push("ro");
        format!("{src}:{dst}:{}", o.join(","))
    };
    if src.starts_with('/') {
        return Bind::Keep(read_only(), format!("bind mount {src} -> {dst} read-only"));
    }
    if with_volumes {
        return Bind::Keep(
            read_only(),
            format!("volume {src} -> {dst} mounted read-only (--with-volumes)"),
        );
    }
    Bind::Empty(
        dst.to_string(),
        format!("volume {src} -> {dst} replaced by an empty one (--with-volumes mounts it read-only)"),
    )
}

fn published_ports(bindings: Option<&PortMap>) -> Vec<String> {
    let mut out: Vec<String> = bindings
        .into_iter()
        .flatten()
        .flat_map(|(port, b)| {
            b.iter().flatten().map(move |b| {
                let ip = b
                    .host_ip
                    .as_deref()
                    .filter(|i| !i.is_empty())
                    .map(|i| format!("{i}:"))
                    .unwrap_or_default();
                format!("{ip}{}->{port}", b.host_port.as_deref().unwrap_or(""))
            })
        })
        .collect();
    out.sort();
    out
}

/// One candidate's rehearsal.
#[derive(Debug, Clone, Serialize)]
pub struct Rehearsal {
    /// The selectors that named this image (`previous`, `last-known-good`, ...).
    pub selectors: Vec<String>,
    pub candidate: Option<ImageRef>,
    /// Whether a rollback to it would work, as far as the rehearsal can tell.
    pub ready: bool,
    /// The image had to be pulled (it was not on the host).
    pub pulled: bool,
    pub pull_ms: Option<u64>,
    /// From the copy's start until it validated.
    pub healthy_ms: Option<u64>,
    pub failed: Option<String>,
    /// The copy's last lines of output, when it failed.
    pub logs: Vec<String>,
    /// How the copy differed from what a rollback would run.
    pub differences: Vec<String>,
    /// Where the HTTP probe was sent, when there is one.
    pub probe: Option<String>,
    /// Something the rehearsal could not finish cleanly (a copy it could not remove).
    pub warnings: Vec<String>,
}

impl Rehearsal {
    /// A selector that named nothing: a rollback to it would fail before it started.
    pub fn unresolved(selector: &str, why: String) -> Self {
        Self {
            failed: Some(why),
            ..Self::of(vec![selector.to_string()], None)
        }
    }

    /// Nothing rehearsed yet: not ready, nothing failed.
    fn of(selectors: Vec<String>, candidate: Option<ImageRef>) -> Self {
        Self {
            selectors,
            candidate,
            ready: false,
            pulled: false,
            pull_ms: None,
            healthy_ms: None,
            failed: None,
            logs: Vec::new(),
            differences: Vec::new(),
            probe: None,
            warnings: Vec::new(),
        }
    }
}

/// What a rehearsal needs besides the candidate.
pub struct DrillSetup<'a> {
    pub engine: &'a Engine,
    pub journal: &'a Journal,
    /// The configs the journal recorded, and whether the rehearsal restores a candidate's.
    pub configs: &'a Configs,
    pub printer: &'a Printer,
    pub auth: Option<&'a PullAuth>,
    pub health: &'a HealthSettings,
    pub with_volumes: bool,
    /// The target, as the journal names it.
    pub target: String,
}

/// Rehearses a rollback of `production` to `candidate` (pulled as `image`), journaled as a drill.
/// The scratch copy is removed on every path, including Ctrl-C (the wait sees the flag).
pub async fn rehearse(
    setup: &DrillSetup<'_>,
    production: &Deployed,
    selectors: Vec<String>,
    candidate: &ImageRef,
    image: &str,
) -> anyhow::Result<Rehearsal> {
    let DrillSetup {
        engine,
        journal,
        printer,
        ..
    } = *setup;
    let name = format!("{}{DRILL_SUFFIX}", production.container.name);
    let base = Record {
        target: Some(setup.target.clone()),
        from: Some(production.image.clone()),
        to: Some(candidate.clone()),
        detail: Some(format!("rehearsal on {name}")),
        containers: vec![name.clone()],
        ..state::begin(Operation::Drill)
    };
    journal.append(&base)?;
    let started = Instant::now();
    let mut r = Rehearsal::of(selectors, Some(candidate.clone()));
    run_copy(setup, production, candidate, image, &name, &mut r).await;
    // Whatever happened, the copy goes (with its empty volumes).
    if let Err(e) = engine.remove_scratch(&name).await {
        r.warnings.push(format!(
            "could not remove {name}: {e}; remove it with `docker rm -fv {name}`"
        ));
    }
    r.ready = r.failed.is_none();
    let outcome = if r.ready { Outcome::Ok } else { Outcome::Failed };
    let finished = Record {
        notes: r.differences.clone(),
        logs: r.logs.clone(),
        ..base.finish(
            Utc::now(),
            outcome,
            Some(started.elapsed().as_millis() as u64),
            r.failed.clone().or_else(|| base.detail.clone()),
        )
    };
    if let Err(e) = journal.append(&finished) {
        printer.note(format!("warning: could not record the drill in the journal: {e}"));
    }
    Ok(r)
}

/// Pull, create, start, validate; what failed goes to `r.failed` (the caller removes the copy).
async fn run_copy(
    setup: &DrillSetup<'_>,
    production: &Deployed,
    candidate: &ImageRef,
    image: &str,
    name: &str,
    r: &mut Rehearsal,
) {
    let (engine, printer) = (setup.engine, setup.printer);
    let pull_start = Instant::now();
    let progress = Progress::new(printer, &format!("pulling {image}"));
    match engine
        .pull(image, setup.auth, |line| progress.set(&format!("pulling: {line}")))
        .await
    {
        Ok(pulled) => {
            r.pulled = pulled;
            r.pull_ms = Some(pull_start.elapsed().as_millis() as u64);
            progress.finish(&if pulled {
                format!("pulled {image}")
            } else {
                format!("{image} is already present")
            });
        }
        Err(e) => {
            progress.finish(&format!("could not pull {image}"));
            r.failed = Some(format!("pull: {e}"));
            return;
        }
    }
    let fail = |r: &mut Rehearsal, why: String| r.failed = Some(why);
    let old = match engine.inspect(&production.container.name).await {
        Ok(Some(old)) => old,
        Ok(None) => return fail(r, format!("find container {}: it is gone", production.container.name)),
        Err(e) => return fail(r, e.to_string()),
    };
    let (body, extra) = match swap::clone_onto(engine, &old, &production.container.image_id, candidate, image).await {
        Ok(c) => c,
        Err(e) => return fail(r, e.to_string()),
    };
    // As the rollback would: on the config the candidate last ran with, when it restores.
    let name_in_journal = &production.container.name;
    let (body, extra) = match setup.configs.to_restore(candidate, name_in_journal) {
        Ok(None) => (body, extra),
        Ok(Some(then)) => match snapshot::restore(then, image, &swap::version_labels(candidate)) {
            Some(restored) => restored,
            None => {
                return fail(
                    r,
                    format!("restore the config of {name_in_journal}: not a container's snapshot"),
                );
            }
        },
        Err(e) => return fail(r, e.to_string()),
    };
    let restored = setup.configs.restore;
    let scratch = scratch_config(body, extra, &production.container.name, setup.with_volumes);
    r.differences = scratch.differences;
    if restored {
        r.differences.push(format!(
            "the config {} last ran with here (as --restore-config)",
            candidate.display()
        ));
    }
    if interrupt::requested() {
        return fail(r, "interrupted".into());
    }
    // From here a Ctrl-C finishes the step, and the copy is removed.
    interrupt::arm_then("finishing the current step, then removing the scratch copy (production is untouched)");
    if let Err(e) = engine.remove_scratch(name).await {
        return fail(r, format!("remove the copy an earlier drill left: {e}"));
    }
    if let Err(e) = engine.create(name, scratch.body, &scratch.extra_networks).await {
        return fail(r, e.to_string());
    }
    if let Err(e) = engine.start(name).await {
        r.logs = engine.logs_tail(name, 20).await;
        return fail(r, e.to_string());
    }
    let start = Instant::now();
    let mut health = setup.health.clone();
    if let Some(url) = health.http.clone() {
        let shared = matches!(
            old.host_config.as_ref().and_then(|h| h.network_mode.as_deref()),
            Some(m) if m == "host" || m.starts_with("container:")
        );
        let copy = engine.inspect(name).await.ok().flatten();
        let aimed = match copy.as_ref().and_then(address_of) {
            _ if shared => Err("it shares production's network, so the probe would reach production".to_string()),
            Some(ip) => copy_probe_url(
                &url,
                old.host_config.as_ref().and_then(|h| h.port_bindings.as_ref()),
                &ip,
            )
            .and_then(|aimed| match health.port {
                // `[health] port`: the app's port inside the container wins.
                Some(port) => {
                    let mut u = reqwest::Url::parse(&aimed).map_err(|e| e.to_string())?;
                    u.set_port(Some(port))
                        .map_err(|()| format!("aim {url} at port {port}"))?;
                    Ok(u.to_string())
                }
                None => Ok(aimed),
            }),
            None => Err("the copy has no address of its own on a network".to_string()),
        };
        match aimed {
            Ok(aimed) => {
                r.differences
                    .push(format!("HTTP probe sent to the copy: {aimed} (production's: {url})"));
                r.probe = Some(aimed.clone());
                health.http = Some(aimed);
            }
            Err(why) => {
                r.differences.push(format!("HTTP probe {url} not run: {why}"));
                health.http = None;
            }
        }
    }
    let progress = Progress::new(
        printer,
        &format!(
            "validating {name} on {} (timeout {})",
            candidate.display(),
            crate::domain::duration::format(health.timeout)
        ),
    );
    let result = validate::wait_valid(
        engine,
        &[name.to_string()],
        &health,
        candidate.version.as_deref(),
        |s| progress.set(&format!("validating {name}: {s}")),
    )
    .await;
    match result {
        Ok(()) => {
            r.healthy_ms = Some(start.elapsed().as_millis() as u64);
            progress.finish(&format!("{name} is healthy on {}", candidate.display()));
        }
        Err(invalid) => {
            progress.finish(&format!("{name} failed validation: {}", invalid.why));
            r.logs = engine.logs_tail(name, 20).await;
            fail(r, invalid.why);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::{HostConfig, Mount, NetworkingConfig, PortBinding, RestartPolicyNameEnum};

    use super::*;

    fn ports(host: &str, container: &str) -> PortMap {
        HashMap::from([(
            format!("{container}/tcp"),
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(host.into()),
            }]),
        )])
    }

    fn production_clone() -> ContainerCreateBody {
        ContainerCreateBody {
            image: Some("reg/app@sha256:abc".into()),
            labels: Some(HashMap::from([
                ("com.docker.compose.service".to_string(), "web".to_string()),
                ("com.example.owner".to_string(), "ops".to_string()),
            ])),
            host_config: Some(HostConfig {
                binds: Some(vec![
                    "/srv/config:/config".into(),
                    "/srv/certs:/certs:rw,z".into(),
                    "appdata:/data".into(),
                ]),
                mounts: Some(vec![Mount {
                    target: Some("/cache".into()),
                    source: Some("cache".into()),
                    typ: Some(MountType::VOLUME),
                    ..Default::default()
                }]),
                port_bindings: Some(ports("18080", "8080")),
                restart_policy: Some(crate::adapters::docker::parse_restart_policy("unless-stopped")),
                network_mode: Some("appnet".into()),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    "appnet".to_string(),
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
    fn the_scratch_copy_publishes_nothing_writes_no_host_path_and_takes_no_production_traffic() {
        let s = scratch_config(production_clone(), Vec::new(), "web-1", false);
        let h = s.body.host_config.clone().unwrap();
        assert_eq!(h.port_bindings, None);
        assert_eq!(h.publish_all_ports, Some(false));
        assert_eq!(h.restart_policy.unwrap().name, Some(RestartPolicyNameEnum::NO));
        assert_eq!(
            h.binds,
            Some(vec![
                "/srv/config:/config:ro".to_string(),
                "/srv/certs:/certs:z,ro".to_string()
            ]),
            "host paths read-only; the named volume is not mounted"
        );
        assert_eq!(
            s.body.volumes,
            Some(vec!["/data".to_string()]),
            "an empty volume in its place"
        );
        let cache = &h.mounts.unwrap()[0];
        assert_eq!(
            cache.source, None,
            "the named volume of a --mount is replaced by an anonymous one"
        );
        let ep = &s.body.networking_config.unwrap().endpoints_config.unwrap()["appnet"];
        assert_eq!(
            ep.aliases, None,
            "no alias: the service name does not resolve to the copy"
        );
        let labels = s.body.labels.unwrap();
        assert!(!labels.contains_key("com.docker.compose.service"));
        assert_eq!(labels.get("com.example.owner").map(String::as_str), Some("ops"));
        assert_eq!(labels.get(LABEL_DRILL).map(String::as_str), Some("web-1"));
        let said = s.differences.join("\n");
        for expected in [
            "production publishes 127.0.0.1:18080->8080/tcp",
            "bind mount /srv/config -> /config read-only",
            "volume appdata -> /data replaced by an empty one",
            "volume cache -> /cache replaced by an empty one",
            "no network aliases",
            "no compose labels",
            "no restart policy",
        ] {
            assert!(said.contains(expected), "{expected} in:\n{said}");
        }
    }

    #[test]
    fn with_volumes_the_copy_mounts_production_volumes_read_only() {
        let s = scratch_config(production_clone(), Vec::new(), "web-1", true);
        let h = s.body.host_config.unwrap();
        assert!(h.binds.unwrap().contains(&"appdata:/data:ro".to_string()));
        let cache = &h.mounts.unwrap()[0];
        assert_eq!((cache.source.as_deref(), cache.read_only), (Some("cache"), Some(true)));
        assert_eq!(s.body.volumes, None);
    }

    #[test]
    fn the_probe_goes_to_the_container_port_behind_the_published_one() {
        let p = ports("18080", "8080");
        assert_eq!(
            copy_probe_url("http://127.0.0.1:18080/health?x=1", Some(&p), "172.18.0.9").unwrap(),
            "http://172.18.0.9:8080/health?x=1"
        );
        // A port production does not publish is kept as it is.
        assert_eq!(
            copy_probe_url("http://localhost:9000/ready", Some(&p), "10.0.0.2").unwrap(),
            "http://10.0.0.2:9000/ready"
        );
    }
}
