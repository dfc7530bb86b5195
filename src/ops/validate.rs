//! Validation of a deployment: the container runs and is not restarting, Docker's HEALTHCHECK
//! (when the image has one) says healthy, the `[health] http` probe answers 2xx, and with
//! `expect_version` the container carries the chosen version. Bounded by `[health] timeout`.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::adapters::docker::{ContainerView, Engine, Liveness};
use crate::domain::version::parse_version;
use crate::ops::deployed::image_version;
use crate::ops::interrupt;
use crate::settings::HealthSettings;

/// With neither a HEALTHCHECK nor an HTTP probe, a container must stay up this long to count.
const SETTLE: Duration = Duration::from_secs(2);
/// Polling starts fast (a healthy app is noticed within a few ms) and slows down over time.
pub(crate) fn poll_interval(elapsed: Duration) -> Duration {
    match elapsed.as_millis() {
        0..=2_000 => Duration::from_millis(20),
        2_001..=10_000 => Duration::from_millis(100),
        _ => Duration::from_millis(250),
    }
}

/// One check and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// Why validation failed, for the person and the journal.
#[derive(Debug, Clone)]
pub struct Invalid {
    pub why: String,
    pub container: Option<String>,
    /// The HTTP probe was the only check failing and it never reached anything (connection
    /// refused, DNS error) for the whole timeout: `[health] http` is in doubt, not the version.
    pub probe_unreachable: bool,
}

/// What a swap saw of the container it started, in its own round trip (`ops::swap`): the
/// container as the swap's last call found it, and the probe the host's gate made once the calls
/// were answered. Validation takes them as its first look and first probe.
#[derive(Debug, Default)]
pub struct Seen {
    pub look: Option<bollard::models::ContainerInspectResponse>,
    pub(crate) probe: Option<Result<(), ProbeError>>,
}

/// Waits until every container passes, or fails as soon as one cannot pass any more (it exited,
/// it restarted, its HEALTHCHECK says unhealthy, it carries another version) or time runs out.
pub async fn wait_valid(
    engine: &Engine,
    containers: &[String],
    health: &HealthSettings,
    expected_version: Option<&str>,
    progress: impl FnMut(&str),
) -> Result<(), Invalid> {
    wait_valid_seen(engine, containers, health, expected_version, Seen::default(), progress).await
}

/// [`wait_valid`], its first look and first probe taken from `seen` where a swap already made
/// them (the look only for a single container).
pub async fn wait_valid_seen(
    engine: &Engine,
    containers: &[String],
    health: &HealthSettings,
    expected_version: Option<&str>,
    seen: Seen,
    mut progress: impl FnMut(&str),
) -> Result<(), Invalid> {
    let start = Instant::now();
    let started_unix = chrono::Utc::now().timestamp() - 1;
    let deadline = start + health.timeout;
    let http = http_client();
    let mut first_look = Vec::with_capacity(containers.len());
    // The first probe goes out with the first look at the containers (one round trip for both
    // to a remote host); it counts only if they all pass.
    let looked_already = seen.look.filter(|_| containers.len() == 1);
    let looks = async {
        if let (Some(look), [name]) = (&looked_already, containers) {
            if let Some(want) = expected_version.filter(|_| health.expect_version) {
                version_carried(name, Some(&ContainerView::from_inspect(look)), want)?;
            }
            first_look.push(Liveness::of(look));
            return Ok::<(), Invalid>(());
        }
        for name in containers {
            let version = async {
                match expected_version.filter(|_| health.expect_version) {
                    Some(want) => check_version(engine, name, want).await,
                    None => Ok(()),
                }
            };
            let (live, version) = tokio::join!(engine.liveness(name), version);
            let live = live.map_err(|e| Invalid {
                why: e.to_string(),
                container: Some(name.clone()),
                probe_unreachable: false,
            })?;
            version?;
            first_look.push(live);
        }
        Ok::<(), Invalid>(())
    };
    let probed_already = seen.probe;
    let early = async {
        match (&health.http, probed_already) {
            (Some(_), Some(answer)) => Some(answer),
            (Some(url), None) => Some(probe(&http, engine, url).await),
            (None, _) => None,
        }
    };
    let (looked, mut early_probe) = tokio::join!(looks, early);
    looked?;
    let initial_restarts: Vec<i64> = first_look.iter().map(|l| l.restart_count).collect();
    // The first look at each container is also the first round's (no second inspect).
    let mut first_round = Some(first_look.into_iter());
    let mut last_status = String::from("not checked yet");
    // Whether the probe ever reached a server (any HTTP answer, or a read that timed out).
    let (mut probed, mut probe_reached) = (false, false);
    loop {
        if interrupt::requested() {
            return Err(Invalid {
                why: "interrupted".into(),
                container: None,
                probe_unreachable: false,
            });
        }
        let mut all_ok = true;
        let mut has_healthcheck = false;
        let mut looked = first_round.take();
        // The early probe stands for the first round's only.
        let mut early = early_probe.take();
        for (name, restarts) in containers.iter().zip(&initial_restarts) {
            let live = match looked.as_mut().and_then(Iterator::next) {
                Some(live) => live,
                None => engine.liveness(name).await.map_err(|e| Invalid {
                    why: e.to_string(),
                    container: Some(name.clone()),
                    probe_unreachable: false,
                })?,
            };
            let fail = |why: String| Invalid {
                why,
                container: Some(name.clone()),
                probe_unreachable: false,
            };
            if live.restart_count > *restarts || live.restarting {
                return Err(fail(if live.restarting {
                    format!(
                        "container {name} exited (exit code {}) and is restarting",
                        live.exit_code
                    )
                } else {
                    // Restarted already: its state forgot the exit code, the engine's events did not.
                    let code = engine
                        .last_exit_code(name, started_unix)
                        .await
                        .map(|c| format!(" (exit code {c})"))
                        .unwrap_or_default();
                    format!(
                        "container {name} exited{code} and was restarted {} time(s) by its restart policy",
                        live.restart_count - restarts
                    )
                }));
            }
            if !live.running {
                return Err(fail(format!(
                    "container {name} is {} (exit code {})",
                    live.status, live.exit_code
                )));
            }
            match live.health.as_deref() {
                Some("unhealthy") => {
                    return Err(fail(format!("container {name}: HEALTHCHECK reports unhealthy")));
                }
                Some("healthy") => has_healthcheck = true,
                Some(other) => {
                    has_healthcheck = true;
                    all_ok = false;
                    last_status = format!("{name}: health {other}");
                }
                None => {}
            }
        }
        if all_ok && let Some(url) = &health.http {
            probed = true;
            let answer = match early.take() {
                Some(answer) => answer,
                None => probe(&http, engine, url).await,
            };
            match answer {
                Ok(()) => {}
                Err(e) => {
                    probe_reached |= e.reached;
                    all_ok = false;
                    last_status = format!("GET {url}: {}", e.message);
                }
            }
        }
        if all_ok && !has_healthcheck && health.http.is_none() && start.elapsed() < SETTLE {
            all_ok = false;
            last_status = "watching that it stays up".into();
        }
        if all_ok {
            return Ok(());
        }
        progress(&last_status);
        if Instant::now() >= deadline {
            if probed && !probe_reached {
                return Err(Invalid {
                    why: format!(
                        "the probe never reached anything within {} ({last_status}); the container \
                         ran; check [health] http (it is requested from {})",
                        crate::domain::duration::format(health.timeout),
                        engine.probe_origin()
                    ),
                    container: None,
                    probe_unreachable: true,
                });
            }
            return Err(Invalid {
                why: format!(
                    "not healthy within {} ({last_status})",
                    crate::domain::duration::format(health.timeout)
                ),
                container: None,
                probe_unreachable: false,
            });
        }
        tokio::time::sleep(poll_interval(start.elapsed())).await;
    }
}

async fn check_version(engine: &Engine, name: &str, want: &str) -> Result<(), Invalid> {
    let view = engine.view(name).await.ok().flatten();
    version_carried(name, view.as_ref(), want)
}

/// Whether container `name` (as `view` shows it) carries version `want`.
fn version_carried(name: &str, view: Option<&ContainerView>, want: &str) -> Result<(), Invalid> {
    let carried = view.and_then(image_version);
    let want_v = parse_version(want).map(|v| crate::domain::version::strip_build(&v));
    let got_v = carried
        .as_deref()
        .and_then(parse_version)
        .map(|v| crate::domain::version::strip_build(&v));
    match (want_v, got_v) {
        (Some(w), Some(g)) if w == g => Ok(()),
        (_, None) => Err(Invalid {
            why: format!(
                "container {name} carries no version (no org.opencontainers.image.version label or *_VERSION env); \
                 add one to the image or set expect_version = false in [health]"
            ),
            container: Some(name.to_string()),
            probe_unreachable: false,
        }),
        (_, Some(g)) => Err(Invalid {
            why: format!("container {name} carries version {g}, expected {want}"),
            container: Some(name.to_string()),
            probe_unreachable: false,
        }),
    }
}

pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
        .no_proxy()
        .build()
        .expect("a reqwest client with a timeout builds")
}

/// Why a probe failed, and whether it reached a server at all.
#[derive(Debug)]
pub(crate) struct ProbeError {
    pub message: String,
    /// An HTTP answer came back, or the connection was made and then timed out.
    pub reached: bool,
}

/// GETs `url` from where the engine is: through its host's SSH connection for a remote engine.
pub(crate) async fn probe(client: &reqwest::Client, engine: &Engine, url: &str) -> Result<(), ProbeError> {
    let fail = |message: String, reached: bool| Err(ProbeError { message, reached });
    // From the host itself when it can (no channel to open through a forward).
    if let Some(answer) = engine.probe_on_host(url).await {
        return from_host(engine, url, answer);
    }
    let route = match engine.probe_route(url).await {
        Ok(r) => r,
        Err(message) => return fail(message, false),
    };
    let mut request = client.get(&route.url);
    if let Some(h) = &route.host_header {
        request = request.header(reqwest::header::HOST, h);
    }
    let forwarded = route.host_header.is_some();
    let waiting = engine.wire().map(|w| w.wait(format!("probe {url}")));
    let sent = request.send().await;
    drop(waiting);
    match sent {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => fail(format!("HTTP {}", r.status().as_u16()), true),
        Err(e) if e.is_connect() => fail(crate::adapters::registry::root_cause(&e), false),
        Err(e) if e.is_timeout() => fail("timed out".into(), true),
        // Through a forward, the local side always connects; a channel the host could not open
        // (nothing listens there) closes before any answer.
        Err(_) if forwarded => fail(format!("nothing answered at {url} on {}", engine.host()), false),
        Err(e) => fail(crate::adapters::registry::root_cause(&e), true),
    }
}

/// A probe the engine's host made itself (its status, or why not and whether anything answered),
/// as a probe's result.
pub(crate) fn from_host(engine: &Engine, url: &str, answer: Result<u16, (String, bool)>) -> Result<(), ProbeError> {
    let fail = |message: String, reached: bool| Err(ProbeError { message, reached });
    match answer {
        Ok(code) if (200..300).contains(&code) => Ok(()),
        Ok(code) => fail(format!("HTTP {code}"), true),
        Err((_, false)) => fail(format!("nothing answered at {url} on {}", engine.host()), false),
        Err((why, true)) => fail(why, true),
    }
}

/// The `[health] http` URL aimed at one container (a drill's copy, a start-first swap's new
/// container) rather than at whatever answers there now: its address `ip`, and the container port
/// behind the host port the URL names when production publishes it. Pure.
pub fn copy_probe_url(
    url: &str,
    production_ports: Option<&bollard::models::PortMap>,
    ip: &str,
) -> Result<String, String> {
    let mut parsed = reqwest::Url::parse(url).map_err(|e| format!("parse {url}: {e}"))?;
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| format!("{url} names no port"))?;
    let container_port = production_ports
        .into_iter()
        .flatten()
        .find(|(_, b)| {
            b.iter()
                .flatten()
                .any(|b| b.host_port.as_deref() == Some(port.to_string().as_str()))
        })
        .and_then(|(p, _)| p.split('/').next()?.parse::<u16>().ok())
        .unwrap_or(port);
    parsed
        .set_host(Some(ip))
        .map_err(|e| format!("aim {url} at {ip}: {e}"))?;
    parsed
        .set_port(Some(container_port))
        .map_err(|()| format!("aim {url} at port {container_port}"))?;
    Ok(parsed.to_string())
}

/// A container's address on its first network that gave it one (its primary network first).
pub fn address_of(c: &bollard::models::ContainerInspectResponse) -> Option<String> {
    let settings = c.network_settings.as_ref()?;
    let mode = c
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.clone())
        .unwrap_or_default();
    let networks = settings.networks.clone().unwrap_or_default();
    let mut names: Vec<&String> = networks.keys().collect();
    names.sort_by_key(|n| (**n != mode, (*n).clone()));
    names
        .into_iter()
        .filter_map(|n| networks[n].ip_address.clone())
        .find(|ip| !ip.is_empty())
}

/// One pass of every check, for `backtrack validate`: no waiting beyond the probe's own timeout.
pub async fn check_now(
    engine: &Engine,
    containers: &[String],
    health: &HealthSettings,
    expected_version: Option<&str>,
) -> Vec<Check> {
    let mut checks = Vec::new();
    for name in containers {
        match engine.liveness(name).await {
            Ok(live) => {
                checks.push(Check {
                    name: format!("{name}: running"),
                    ok: live.running && !live.restarting,
                    detail: format!("{} (restarts: {})", live.status, live.restart_count),
                });
                if let Some(h) = live.health {
                    checks.push(Check {
                        name: format!("{name}: healthcheck"),
                        ok: h == "healthy",
                        detail: h,
                    });
                }
            }
            Err(e) => checks.push(Check {
                name: format!("{name}: running"),
                ok: false,
                detail: e.to_string(),
            }),
        }
        if health.expect_version
            && let Some(want) = expected_version
        {
            let r = check_version(engine, name, want).await;
            checks.push(Check {
                name: format!("{name}: version"),
                ok: r.is_ok(),
                detail: r.err().map_or_else(|| format!("carries {want}"), |e| e.why),
            });
        }
    }
    if let Some(url) = &health.http {
        let r = probe(&http_client(), engine, url).await;
        checks.push(Check {
            name: format!("GET {url}"),
            ok: r.is_ok(),
            detail: r.err().map_or_else(|| "2xx".into(), |e| e.message),
        });
    }
    checks
}

/// Watches containers that already validated for `duration`: any exit, restart, unhealthy status
/// or failed HTTP probe ends the soak with the reason.
pub async fn soak(
    engine: &Engine,
    containers: &[String],
    health: &HealthSettings,
    duration: Duration,
) -> Result<(), Invalid> {
    let deadline = Instant::now() + duration;
    let http = http_client();
    let mut restarts = Vec::new();
    for name in containers {
        restarts.push(engine.liveness(name).await.map(|l| l.restart_count).unwrap_or(0));
    }
    while Instant::now() < deadline {
        if interrupt::requested() {
            return Err(Invalid {
                why: "interrupted".into(),
                container: None,
                probe_unreachable: false,
            });
        }
        for (name, before) in containers.iter().zip(&restarts) {
            let live = engine.liveness(name).await.map_err(|e| Invalid {
                why: e.to_string(),
                container: Some(name.clone()),
                probe_unreachable: false,
            })?;
            if !live.running || live.restart_count > *before || live.health.as_deref() == Some("unhealthy") {
                return Err(Invalid {
                    why: format!(
                        "container {name} did not stay healthy ({}, restarts {}, health {})",
                        live.status,
                        live.restart_count,
                        live.health.as_deref().unwrap_or("-")
                    ),
                    container: Some(name.clone()),
                    probe_unreachable: false,
                });
            }
        }
        if let Some(url) = &health.http
            && let Err(e) = probe(&http, engine, url).await
        {
            return Err(Invalid {
                why: format!("GET {url}: {}", e.message),
                container: None,
                probe_unreachable: false,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
