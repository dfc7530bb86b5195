//! Watching a Swarm update: until Swarm's `UpdateStatus` says completed, every task Swarm wants
//! running runs the new digest, the `[health] http` probe answers on each task's host-mode port
//! on its node, and `expect_version` holds; failing at once when Swarm paused or rolled the update
//! back. Also the one-pass check of `validate` and the soak of a validated service.

use super::*;

/// A failed validation and the failing task's last lines.
#[derive(Debug)]
pub struct NotConverged {
    pub invalid: Invalid,
    pub logs: Vec<String>,
}

pub(super) fn invalid(why: String) -> NotConverged {
    NotConverged {
        invalid: Invalid {
            why,
            container: None,
            probe_unreachable: false,
        },
        logs: Vec::new(),
    }
}

/// Waits until the update is Swarm's `completed`, every task Swarm wants running runs `digest`
/// (as many as the service asks for), the probe answers on each task's host-mode port, and with
/// `expected` every task carries that version. Fails at once when Swarm paused or rolled the
/// update back, or a task on the new digest failed.
pub(super) async fn wait_converged(
    engine: &Engine,
    plan: &SwarmPlan,
    digest: &str,
    health: &HealthSettings,
    expected: Option<&str>,
    timeout: Duration,
    mut progress: impl FnMut(&str),
) -> Result<(), NotConverged> {
    let start = Instant::now();
    let deadline = start + timeout;
    let http = validate::http_client();
    let before = plan.service_view.update_started.clone();
    let (mut probed, mut probe_reached) = (false, false);
    let mut last_status = String::from("update sent");
    loop {
        if interrupt::requested() {
            return Err(invalid("interrupted".into()));
        }
        let svc = engine
            .service(&plan.service_view.name, None)
            .await
            .map_err(|e| invalid(e.to_string()))?;
        let tasks = engine.service_tasks(&svc).await.map_err(|e| invalid(e.to_string()))?;
        // The status of an update started before ours says nothing about ours.
        let state = if svc.update_started != before {
            svc.update_state.clone()
        } else {
            None
        };
        if let Some(s) = state.as_deref()
            && matches!(
                s,
                "paused" | "rollback_started" | "rollback_paused" | "rollback_completed"
            )
        {
            let failed = tasks.iter().find(|t| is_failed_on(t, digest));
            let logs = match failed {
                Some(t) => engine.task_logs_tail(&t.id, 20).await,
                None => Vec::new(),
            };
            let mut why = format!(
                "Swarm {} the update ({})",
                match s {
                    "paused" => "paused",
                    "rollback_completed" => "rolled back",
                    _ => "is rolling back",
                },
                svc.update_message.as_deref().unwrap_or(s)
            );
            if let Some(t) = failed {
                why.push_str(&format!("; task {} on {}: {}", t.name, t.node, ended(t)));
            }
            return Err(NotConverged {
                invalid: Invalid {
                    why,
                    container: None,
                    probe_unreachable: false,
                },
                logs,
            });
        }
        if let Some(t) = tasks.iter().find(|t| is_failed_on(t, digest)) {
            let logs = engine.task_logs_tail(&t.id, 20).await;
            return Err(NotConverged {
                invalid: Invalid {
                    why: format!("task {} on {} failed: {}", t.name, t.node, ended(t)),
                    container: Some(t.name.clone()),
                    probe_unreachable: false,
                },
                logs,
            });
        }
        let live: Vec<&TaskView> = tasks.iter().filter(|t| t.desired == "running").collect();
        let on_new = live
            .iter()
            .filter(|t| t.digest().is_some_and(|d| d.to_string() == digest) && t.state == "running")
            .count();
        let wanted = plan.replicas.map_or(live.len(), |r| r as usize);
        let settled = on_new == live.len() && on_new >= wanted && state.as_deref() == Some("completed");
        last_status = if settled {
            last_status
        } else {
            // Why a task on the new digest is not running yet (e.g. `no suitable node`).
            let waiting = live
                .iter()
                .find(|t| t.digest().is_some_and(|d| d.to_string() == digest) && t.state != "running")
                .map(|t| match t.error.as_deref() {
                    Some(e) => format!(" ({} on {}: {}: {e})", t.name, t.node, t.state),
                    None => format!(" ({} on {}: {})", t.name, t.node, t.state),
                })
                .unwrap_or_default();
            format!(
                "{on_new}/{wanted} tasks running {}{waiting}, update {}",
                plan.to.display(),
                state.as_deref().unwrap_or("starting")
            )
        };
        let mut ok = settled;
        if ok && let Some(want) = expected {
            for t in &live {
                let carried = entry(task_container(t)).image.version;
                if !same_version(carried.as_deref(), want) {
                    return Err(invalid(format!(
                        "task {} carries version {}, expected {want}",
                        t.name,
                        carried.as_deref().unwrap_or("(none)")
                    )));
                }
            }
        }
        if ok && let Some(url) = &health.http {
            probed = true;
            match probe_tasks(&http, engine, url, &live).await {
                Ok(()) => {}
                Err(e) => {
                    probe_reached |= e.reached;
                    ok = false;
                    last_status = e.message;
                }
            }
        }
        if ok {
            return Ok(());
        }
        progress(&last_status);
        if Instant::now() >= deadline {
            let limit = crate::domain::duration::format(timeout);
            if probed && !probe_reached {
                return Err(NotConverged {
                    invalid: Invalid {
                        why: format!(
                            "the probe never reached anything within {limit} ({last_status}); the tasks ran; \
                             check [health] http (it is requested from {} at each task's host-mode port)",
                            engine.probe_origin()
                        ),
                        container: None,
                        probe_unreachable: true,
                    },
                    logs: Vec::new(),
                });
            }
            return Err(invalid(format!("not converged within {limit} ({last_status})")));
        }
        tokio::time::sleep(validate::poll_interval(start.elapsed()).max(Duration::from_millis(100))).await;
    }
}

fn same_version(carried: Option<&str>, want: &str) -> bool {
    use crate::domain::version::{parse_version, strip_build};
    let v = |s: &str| parse_version(s).map(|v| strip_build(&v));
    matches!((carried.and_then(v), v(want)), (Some(a), Some(b)) if a == b)
}

/// How a task that ended did: Swarm's error, else its state.
pub(super) fn ended(t: &TaskView) -> String {
    match &t.error {
        Some(e) => e.clone(),
        None => format!("it stopped on its own (task state {})", t.state),
    }
}

/// A task that ran (or tried to run) `digest` and ended on its own: it failed, was rejected, or
/// exited 0 (`complete`; a service's task is meant to keep running, and an app that stops on
/// SIGTERM when its HEALTHCHECK kills it ends that way).
pub(super) fn is_failed_on(t: &TaskView, digest: &str) -> bool {
    t.digest().is_some_and(|d| d.to_string() == digest)
        && matches!(t.state.as_str(), "failed" | "rejected" | "complete")
}

/// Probes `url` on every task: a loopback URL (`http://127.0.0.1:8080/health`) means each task's
/// own port, reached at its node's address and host-mode published port; any other URL (a load
/// balancer) is requested once as it is.
async fn probe_tasks(
    http: &reqwest::Client,
    engine: &Engine,
    url: &str,
    tasks: &[&TaskView],
) -> Result<(), validate::ProbeError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| validate::ProbeError {
        message: format!("parse {url}: {e}"),
        reached: false,
    })?;
    let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    let Some(port) = parsed.port_or_known_default() else {
        return validate::probe(http, engine, url).await;
    };
    if !loopback {
        return validate::probe(http, engine, url).await;
    }
    let mut reached_one = false;
    for t in tasks {
        let (Some(addr), ports) = (t.node_addr.as_deref(), t.host_ports(port)) else {
            continue;
        };
        // No host-mode port for it: the task cannot be probed from outside its node. With two
        // (IPv4 and IPv6 apart), the first one that reaches the task counts.
        let mut last = None;
        for host_port in ports {
            let mut u = parsed.clone();
            if u.set_host(Some(addr)).is_err() || u.set_port(Some(host_port)).is_err() {
                continue;
            }
            reached_one = true;
            match validate::probe(http, engine, u.as_str()).await {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    let reached = e.reached;
                    last = Some(validate::ProbeError {
                        message: format!("task {} on {} (GET {u}): {}", t.name, t.node, e.message),
                        reached,
                    });
                    if reached {
                        break;
                    }
                }
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
    }
    if !reached_one {
        tracing::debug!("no task publishes port {port} in host mode; the probe was not sent");
    }
    Ok(())
}

/// One pass of every check on the service as it runs now, for `backtrack validate`: each task
/// Swarm wants running is running the spec's image and carries its version, the update is not
/// stuck, and the probe answers on each task's host-mode port.
pub async fn check_now(
    engine: &Engine,
    target: &TargetSettings,
    health: &HealthSettings,
) -> anyhow::Result<Vec<validate::Check>> {
    use validate::Check;
    let svc = service(engine, target).await?;
    let tasks = engine.service_tasks(&svc).await?;
    let live: Vec<&TaskView> = tasks.iter().filter(|t| t.desired == "running").collect();
    let labels = svc.container_labels();
    let spec_version = labels
        .get(LABEL_VERSION)
        .filter(|_| labels.get(LABEL_IMAGE) == Some(&svc.image))
        .cloned();
    let mut checks = Vec::new();
    let running = live.iter().filter(|t| t.state == "running").count();
    let wanted = svc.replicas.map_or(live.len(), |r| r as usize);
    checks.push(Check {
        name: format!("{}: replicas", svc.name),
        ok: running >= wanted && running == live.len(),
        detail: format!("{running}/{wanted} running"),
    });
    if let Some(state) = &svc.update_state {
        checks.push(Check {
            name: format!("{}: last update", svc.name),
            ok: state == "completed" || state == "rollback_completed",
            detail: match &svc.update_message {
                Some(m) => format!("{state}: {m}"),
                None => state.clone(),
            },
        });
    }
    for t in &live {
        checks.push(Check {
            name: format!("{} on {}: running", t.name, t.node),
            ok: t.state == "running" && same_image(&t.image, &svc.image),
            detail: format!("{} ({})", t.state, short_image(&t.image)),
        });
        if health.expect_version
            && let Some(want) = &spec_version
        {
            let carried = entry(task_container(t)).image.version;
            checks.push(Check {
                name: format!("{}: version", t.name),
                ok: same_version(carried.as_deref(), want),
                detail: format!("carries {}", carried.as_deref().unwrap_or("no version")),
            });
        }
    }
    if let Some(url) = &health.http {
        let r = probe_tasks(&validate::http_client(), engine, url, &live).await;
        checks.push(Check {
            name: format!("GET {url} on every task"),
            ok: r.is_ok(),
            detail: r.err().map_or_else(|| "2xx".into(), |e| e.message),
        });
    }
    Ok(checks)
}

/// A task seen as a container (what version checks and reports read).
/// Watches a service that validated for `duration`: a task that fails or leaves the digest, or
/// a failed probe, ends the soak with the reason.
pub async fn soak(
    engine: &Engine,
    target: &TargetSettings,
    digest: &str,
    health: &HealthSettings,
    duration: Duration,
) -> Result<(), Invalid> {
    let deadline = Instant::now() + duration;
    let http = validate::http_client();
    let fail = |why: String| Invalid {
        why,
        container: None,
        probe_unreachable: false,
    };
    while Instant::now() < deadline {
        if interrupt::requested() {
            return Err(fail("interrupted".into()));
        }
        let svc = service(engine, target).await.map_err(|e| fail(e.to_string()))?;
        let tasks = engine.service_tasks(&svc).await.map_err(|e| fail(e.to_string()))?;
        if let Some(t) = tasks.iter().find(|t| is_failed_on(t, digest)) {
            return Err(fail(format!("task {} on {} failed: {}", t.name, t.node, ended(t))));
        }
        let live: Vec<&TaskView> = tasks.iter().filter(|t| t.desired == "running").collect();
        if let Some(t) = live
            .iter()
            .find(|t| t.state != "running" || t.digest().is_none_or(|d| d.to_string() != digest))
        {
            return Err(fail(format!(
                "task {} on {} is {} ({})",
                t.name,
                t.node,
                t.state,
                short_image(&t.image)
            )));
        }
        if let Some(url) = &health.http {
            probe_tasks(&http, engine, url, &live)
                .await
                .map_err(|e| fail(e.message))?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
