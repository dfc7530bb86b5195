//! What commands need of a target on several hosts (`[target] hosts`): reaching every host, what
//! each runs (for `versions` and the rollback picker), and `status` with a row per host.

use serde::Serialize;

use super::App;
use crate::adapters::state::TargetMeta;
use crate::domain::fleet;
use crate::domain::history;
use crate::domain::image::ImageRef;
use crate::ops::deployed;
use crate::ops::fleet::Host;
use crate::output::Report;

/// The hosts that answered; the others refuse the run, naming the host, unless `skip` is
/// `Some(true)` (then each is a warning, and listed as skipped). `None`: the command has no
/// `--skip-unreachable`, and the refusal says to leave the host out with `--hosts`.
pub fn reachable_hosts(
    app: &App<'_>,
    connected: Vec<(String, anyhow::Result<Host>)>,
    skip: Option<bool>,
) -> anyhow::Result<(Vec<Host>, Vec<String>)> {
    let mut hosts: Vec<Host> = Vec::new();
    let mut skipped = Vec::new();
    for (address, result) in connected {
        match result {
            Ok(h) => hosts.push(h),
            Err(e) if skip == Some(true) => {
                app.printer.note(format!("warning: skipping {address}: {e:#}"));
                skipped.push(address);
            }
            Err(e) => {
                let instead = match skip {
                    Some(_) => "--skip-unreachable goes on without it",
                    None => "--hosts leaves it out",
                };
                return Err(e.context(format!(
                    "reach host {address} of the fleet (nothing was changed on any host; {instead})"
                )));
            }
        }
    }
    if hosts.is_empty() {
        anyhow::bail!("reach any host of the fleet: none answered ({})", skipped.join(", "));
    }
    Ok((hosts, skipped))
}

/// Every host of the target, connected in parallel (each a host or why it did not answer).
pub(super) async fn reach_all(app: &App<'_>) -> anyhow::Result<Vec<(String, anyhow::Result<Host>)>> {
    let project = app.project()?;
    let target = app.target()?;
    let meta = |h: &crate::settings::FleetHost| TargetMeta {
        target: target.display(),
        engine: h.address.clone(),
        repository: project.registry.display(),
        environment: target.environment.clone(),
    };
    let cache = app.settings.cache_dir.clone();
    Ok(crate::ops::fleet::connect_all(target, &app.settings.ssh, meta, |h| app.fleet_session(h), &cache).await)
}

/// For `versions`: what every host runs, read in parallel, counted by digest. A host that does
/// not answer is listed, not fatal; the floor is the highest any host's image sets.
pub(super) async fn placement(
    app: &App<'_>,
    target: &crate::settings::TargetSettings,
    repository: &str,
) -> super::versions::Placement {
    match reach_all(app).await {
        Ok(hosts) => placement_of(&hosts, target, repository).await,
        Err(e) => {
            tracing::info!("deployed marks unavailable: {e:#}");
            super::versions::Placement {
                hosts: target.hosts.len(),
                ..Default::default()
            }
        }
    }
}

/// For the rollback picker: what the first host in lock order runs and its history (what
/// `previous` is resolved with), and where each digest runs.
pub(super) async fn picker_facts(
    app: &App<'_>,
    target: &crate::settings::TargetSettings,
    repository: &str,
) -> anyhow::Result<(
    Option<ImageRef>,
    Vec<history::OperationView>,
    super::versions::Placement,
)> {
    let hosts = reach_all(app).await?;
    let placement = placement_of(&hosts, target, repository).await;
    let up: Vec<&Host> = hosts.iter().filter_map(|(_, h)| h.as_ref().ok()).collect();
    let addresses: Vec<String> = up.iter().map(|h| h.address.clone()).collect();
    let Some(&first) = fleet::lock_order(&addresses).first() else {
        anyhow::bail!("reach any host of the fleet: none answered");
    };
    let first = up[first];
    let ops = history::operations(&first.journal.read()?);
    let current = deployed::read(&first.engine, target, repository)
        .await
        .map_err(|e| e.context(format!("read what {} runs on {}", target.display(), first.address)))?;
    Ok((current.first().map(|d| d.image.clone()), ops, placement))
}

/// What every host runs (read in parallel), counted by digest; the hosts that did not answer.
async fn placement_of(
    hosts: &[(String, anyhow::Result<Host>)],
    target: &crate::settings::TargetSettings,
    repository: &str,
) -> super::versions::Placement {
    let mut placement = super::versions::Placement {
        hosts: target.hosts.len(),
        ..Default::default()
    };
    let reads = hosts.iter().map(|(address, connected)| async move {
        let host = match connected {
            Ok(h) => h,
            Err(e) => return (address, Err(format!("{e:#}"))),
        };
        match deployed::read(&host.engine, target, repository).await {
            Ok(d) => {
                let floor = crate::ops::guard::floor(&host.engine, &d).await;
                (address, Ok((d, floor)))
            }
            Err(e) => (address, Err(format!("{e:#}"))),
        }
    });
    for (address, read) in futures::future::join_all(reads).await {
        match read {
            Ok((d, floor)) => {
                let digests: std::collections::BTreeSet<_> = d.into_iter().filter_map(|d| d.digest).collect();
                for digest in digests {
                    *placement.on.entry(digest).or_default() += 1;
                }
                if floor.as_ref().map(|f| &f.min) > placement.floor.as_ref().map(|f| &f.min) {
                    placement.floor = floor;
                }
            }
            Err(why) => placement.unreachable.push((address.clone(), why)),
        }
    }
    placement
}

#[derive(Debug, Serialize)]
struct FleetStatus {
    target: String,
    rows: Vec<StatusRow>,
    /// Hosts grouped by digest when they differ.
    drift: Vec<String>,
}

#[derive(Debug, Serialize)]
struct StatusRow {
    host: String,
    container: Option<String>,
    version: Option<String>,
    digest: Option<String>,
    health: Option<String>,
    error: Option<String>,
    lock: Option<String>,
}

impl Report for FleetStatus {
    fn human(&self) -> String {
        let mut t = crate::output::table(["host", "container", "version", "digest", "health", "lock"]);
        for r in &self.rows {
            t.add_row(vec![
                r.host.clone(),
                r.container.clone().unwrap_or_else(|| "-".into()),
                r.version.clone().unwrap_or_else(|| "-".into()),
                r.digest.clone().unwrap_or_else(|| "-".into()),
                r.health.clone().or(r.error.clone()).unwrap_or_else(|| "-".into()),
                r.lock.clone().unwrap_or_default(),
            ]);
        }
        let mut out = format!(
            "{} on {} hosts\n{}",
            self.target,
            self.rows.len(),
            crate::output::render_table(&t)
        );
        if self.drift.is_empty() {
            out.push_str("\nfleet: every host runs the same digest");
        } else {
            out.push_str("\nfleet drift: hosts run different digests:");
            for d in &self.drift {
                out.push_str(&format!("\n  {d}"));
            }
        }
        out
    }
}

/// `status` across the fleet: a row per host and container, and the hosts on different digests.
pub async fn status(app: &App<'_>) -> anyhow::Result<()> {
    let project = app.project()?;
    let target = app.target()?;
    let repository = project.registry.display();
    let mut rows = Vec::new();
    let mut digests: Vec<(String, Option<String>)> = Vec::new();
    for (address, connected) in reach_all(app).await? {
        let host = match connected {
            Ok(h) => h,
            Err(e) => {
                rows.push(StatusRow {
                    host: address,
                    container: None,
                    version: None,
                    digest: None,
                    health: None,
                    error: Some(format!("unreachable: {e:#}")),
                    lock: None,
                });
                continue;
            }
        };
        let lock = host.holder().map(|h| format!("held by {h}"));
        match deployed::read(&host.engine, target, &repository).await {
            Ok(list) if !list.is_empty() => {
                digests.push((address.clone(), list[0].digest.as_ref().map(|d| d.to_string())));
                for d in list {
                    rows.push(StatusRow {
                        host: address.clone(),
                        container: Some(d.container.name.clone()),
                        version: d.image.version.clone(),
                        digest: d.digest.as_ref().map(|x| x.short().to_string()),
                        health: Some(d.container.health.clone().unwrap_or_else(|| d.container.state.clone())),
                        error: None,
                        lock: lock.clone(),
                    });
                }
            }
            Ok(_) => rows.push(StatusRow {
                host: address.clone(),
                container: None,
                version: None,
                digest: None,
                health: None,
                error: Some("not running".into()),
                lock,
            }),
            Err(e) => rows.push(StatusRow {
                host: address.clone(),
                container: None,
                version: None,
                digest: None,
                health: None,
                error: Some(format!("{e:#}")),
                lock,
            }),
        }
    }
    let pairs: Vec<(&str, Option<&str>)> = digests.iter().map(|(h, d)| (h.as_str(), d.as_deref())).collect();
    let groups = fleet::by_digest(&pairs);
    let drift = if groups.len() > 1 {
        groups
            .iter()
            .map(|(d, hosts)| format!("{}: {}", d.map_or("-", |d| &d[..d.len().min(19)]), hosts.join(", ")))
            .collect()
    } else {
        Vec::new()
    };
    app.printer.report(&FleetStatus {
        target: target.display(),
        rows,
        drift,
    })
}
