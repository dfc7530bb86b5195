//! `backtrack doctor`: everything a rollback depends on, one line per check with a mark and, for
//! each failure, the fix: ssh, engine, disk, registry, credentials, deletes, version tags, the
//! `last_known_good` pointer and its image on the host, the target, the health URL, the state
//! folder and its lock, the Git fallback, and the clock. A check that cannot run says why
//! ("skipped: ..."). Exit 0 only when no check failed. Nothing is changed (the delete probe names
//! a digest that cannot exist).

use serde::Serialize;

use super::App;
use crate::adapters::docker::{Engine, EngineError};
use crate::adapters::registry::{Registry, RegistryError};
use crate::adapters::ssh::SshError;
use crate::adapters::state;
use crate::domain::address::EngineAddress;
use crate::domain::digest::Digest;
use crate::domain::history;
use crate::error::{self, Failure};
use crate::ops::doctor::{self as checks, Finding, Mark};
use crate::ops::mark::{local_lkg_reference, registry_repository};
use crate::ops::{catalog::Catalog, deployed, resolve, validate};
use crate::output::{Report, escape, render_table, table};
use crate::settings::{Project, RegistryKind, Settings};

#[derive(Debug, Serialize)]
struct DoctorReport {
    healthy: bool,
    checks: Vec<Finding>,
}

/// The first typed error's message and hint, for a finding.
fn said(e: &anyhow::Error) -> (String, Option<String>) {
    let text = error::render(e);
    (
        text.strip_prefix("failed to ").unwrap_or(&text).to_string(),
        error::hint(e),
    )
}

pub async fn run(app: &App<'_>) -> anyhow::Result<()> {
    if !app.is_fleet() {
        let report = checks_of(app).await?;
        return conclude(app, vec![(String::new(), report)]);
    }
    // A fleet: every check on each host, as `--hosts HOST` would run them, all at once.
    let target = app.target()?;
    let per_host: Vec<(String, Settings)> = target
        .hosts
        .iter()
        .filter_map(|h| Some((h.address.clone(), app.settings.for_host(&h.address)?)))
        .collect();
    let runs = per_host.iter().map(|(address, settings)| async move {
        let one = App::new(settings);
        (address.clone(), checks_of(&one).await)
    });
    let mut reports = Vec::new();
    for (address, report) in futures::future::join_all(runs).await {
        reports.push((
            address.clone(),
            report.map_err(|e| e.context(format!("check {address}")))?,
        ));
    }
    conclude(app, reports)
}

/// Prints the checks (of each host) and fails when any check failed.
fn conclude(app: &App<'_>, reports: Vec<(String, DoctorReport)>) -> anyhow::Result<()> {
    let total: usize = reports.iter().map(|(_, r)| r.checks.len()).sum();
    let failing: usize = reports
        .iter()
        .map(|(_, r)| r.checks.iter().filter(|c| c.mark == Mark::Fail).count())
        .sum();
    app.report_per_host(reports.into_iter().map(|(h, r)| (h, Ok(r))).collect())?;
    if failing > 0 {
        return Err(Failure::ChecksFailed { failing, total }.into());
    }
    Ok(())
}

/// Every check against one host's engine and state.
async fn checks_of(app: &App<'_>) -> anyhow::Result<DoctorReport> {
    let project = app.project()?;
    let mut f: Vec<Finding> = Vec::new();

    // The engine, and the SSH connection in front of it for an ssh:// engine.
    let connected = app.engine().await;
    let over_ssh = matches!(project.engine, Some(EngineAddress::Ssh(_)));
    let ssh_failed = connected.as_ref().err().is_some_and(|e| {
        e.chain().any(|c| {
            c.downcast_ref::<SshError>().is_some()
                || matches!(c.downcast_ref::<EngineError>(), Some(EngineError::Host(_)))
        })
    });
    match (&project.engine, &connected) {
        (Some(EngineAddress::Ssh(dest)), Err(e)) if ssh_failed => {
            let (detail, fix) = said(e);
            f.push(Finding::fail("ssh", format!("{dest}: {detail}"), fix));
        }
        (Some(EngineAddress::Ssh(dest)), _) => f.push(Finding::ok("ssh", format!("{dest} answers (host key known)"))),
        _ => f.push(Finding::skipped("ssh", "the engine is not reached over ssh")),
    }
    let engine: Option<Engine> = match connected {
        Ok(engine) => match engine.about().await {
            Ok(about) => {
                f.push(Finding::ok(
                    "engine",
                    format!(
                        "Docker {} (API {}, {}/{}) at {}",
                        about.version,
                        about.api_version,
                        about.os,
                        about.arch,
                        engine.host()
                    ),
                ));
                disk(&mut f, &engine, project.engine.as_ref(), about.root_dir.as_deref());
                Some(engine)
            }
            Err(e) => {
                f.push(Finding::fail("engine", e.to_string(), e.hint()));
                f.push(Finding::skipped("disk", "the engine did not answer"));
                None
            }
        },
        Err(_) if over_ssh && ssh_failed => {
            f.push(Finding::skipped("engine", "its host is out of reach over ssh"));
            f.push(Finding::skipped("disk", "the engine is out of reach"));
            None
        }
        Err(e) => {
            let (detail, fix) = said(&e);
            f.push(Finding::fail("engine", detail, fix));
            f.push(Finding::skipped("disk", "the engine is out of reach"));
            None
        }
    };

    // The registry: reachable, credentials, deletes, version tags, the pointer.
    let registry = app.registry();
    let registry: Option<Box<dyn Registry>> = match registry {
        Ok(r) => Some(r),
        Err(e) => {
            let (detail, fix) = said(&e);
            f.push(Finding::fail("registry", detail, fix));
            None
        }
    };
    let mut catalog: Option<Catalog> = None;
    if let Some(reg) = &registry {
        registry_checks(&mut f, reg.as_ref(), &project.registry.kind, &mut catalog).await;
    }
    let pointer = project.lkg_tag();
    // A remote target's journal is on its host: not asked for again when the host is out of reach.
    let host_down = over_ssh && ssh_failed;
    let journal = (!host_down).then(|| app.journal());
    let ops = match &journal {
        Some(Ok(j)) => j.read().map(|r| history::operations(&r)).unwrap_or_default(),
        _ => Vec::new(),
    };
    let mut lkg_digest: Option<Digest> = None;
    // Why the pointer's image cannot be looked for on the host, when it cannot.
    let mut lkg_unknown = format!("{pointer} could not be read");
    match (&registry, &catalog) {
        (Some(reg), Some(cat)) => match resolve::last_known_good(reg.as_ref(), cat, &ops, &pointer).await {
            Ok(Some(lkg)) => {
                lkg_digest = lkg.digest.clone();
                f.push(Finding::ok(
                    "last known good",
                    format!(
                        "{pointer} points at {} ({})",
                        lkg.display(),
                        lkg.digest.as_ref().map_or("-", |d| d.short())
                    ),
                ));
            }
            Ok(None) => {
                lkg_unknown = format!("{pointer} is not set");
                f.push(Finding::fail(
                    "last known good",
                    format!("{pointer} is not set in {}", reg.name()),
                    Some("`backtrack mark-good` once a version has proven itself (default: the deployed one)".into()),
                ));
            }
            Err(e) => {
                let (detail, fix) = said(&e);
                f.push(Finding::fail("last known good", detail, fix));
            }
        },
        _ => f.push(Finding::skipped(
            "last known good",
            "the registry's tags could not be read",
        )),
    }
    // A release: every service with a repository of its own, and its pointer beside the first's.
    if let Ok(target) = app.target()
        && target.is_release()
    {
        release_checks(&mut f, app, target, &pointer, lkg_digest.is_some()).await;
    }
    // The pointers of the other environments built from this repository (their state is here).
    if let (Some(reg), Some(cat)) = (&registry, &catalog) {
        other_pointers(&mut f, reg.as_ref(), cat, project, &pointer);
    }
    let swarm = app.is_swarm();
    match (&engine, &registry, &lkg_digest) {
        _ if swarm => f.push(Finding::skipped(
            "lkg image",
            "a Swarm service's images are on its nodes; `emergency` names the pinned digest and each node pulls it",
        )),
        (Some(engine), Some(reg), Some(digest)) => lkg_image(&mut f, engine, reg.as_ref(), &pointer, digest).await,
        (None, _, _) => f.push(Finding::skipped("lkg image", "the engine is out of reach")),
        _ => f.push(Finding::skipped("lkg image", lkg_unknown)),
    }

    // The target and its health URL.
    match (app.target(), &engine) {
        (Err(_), _) => f.push(Finding::skipped("target", "no [target] in the config")),
        (Ok(_), None) => f.push(Finding::skipped("target", "the engine is out of reach")),
        (Ok(target), Some(engine)) => match deployed::read(engine, target, &project.registry.display()).await {
            Err(e) => {
                let (detail, fix) = said(&e);
                f.push(Finding::fail("target", detail, fix));
            }
            Ok(current) => {
                target_check(&mut f, &current, registry.as_deref()).await;
                if !swarm {
                    order_check(&mut f, engine, target, &current).await;
                }
            }
        },
    }
    match (&project.health.http, &engine) {
        (None, _) => f.push(Finding::skipped("health url", "no [health] http in the config")),
        (Some(_), None) => f.push(Finding::skipped("health url", "the engine is out of reach")),
        (Some(url), Some(engine)) => {
            let probe = match app.target() {
                // Every task, at its node's address and host-mode port.
                Ok(target) if swarm => crate::ops::swarm::check_now(engine, target, &project.health)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|c| c.name.starts_with("GET "))
                    .collect(),
                _ => validate::check_now(engine, &[], &project.health, None).await,
            };
            match probe.into_iter().next() {
                Some(c) if c.ok => f.push(Finding::ok("health url", format!("GET {url}: {}", c.detail))),
                Some(c) => f.push(Finding::fail(
                    "health url",
                    format!("GET {url} from {}: {}", engine.probe_origin(), c.detail),
                    Some(
                        "is the app up (`backtrack status`)? [health] http must be the address the engine's host \
                         reaches it at (a published port on 127.0.0.1, say)"
                            .into(),
                    ),
                )),
                None => f.push(Finding::skipped("health url", "no probe ran")),
            }
        }
    }

    // State: the journal's folder, its lock.
    match &journal {
        None => {
            f.push(Finding::skipped("state", "the target's host is out of reach over ssh"));
            f.push(Finding::skipped("lock", "the target's host is out of reach over ssh"));
        }
        Some(j) => state_checks(app, &mut f, j.as_ref().err()),
    }

    // The Git fallback, and the clock.
    git_check(&mut f, &project.rebuild.repo);
    match &catalog {
        None => f.push(Finding::skipped("clock", "the registry is out of reach")),
        Some(_) => match checks::registry_date(&project.registry).await {
            Ok(theirs) => {
                let skew = checks::skew(chrono::Utc::now(), theirs);
                if skew.unsigned_abs() > checks::MAX_SKEW.as_secs() {
                    f.push(Finding::fail(
                        "clock",
                        format!(
                            "this machine's clock is {}s {} the registry's",
                            skew.abs(),
                            if skew > 0 { "ahead of" } else { "behind" }
                        ),
                        Some("sync the clock (`timedatectl set-ntp true`, or chrony/ntpd)".into()),
                    ));
                } else {
                    f.push(Finding::ok(
                        "clock",
                        format!("within {}s of the registry's", skew.abs()),
                    ));
                }
            }
            Err(why) => f.push(Finding::skipped("clock", why)),
        },
    }

    let failing = f.iter().filter(|c| c.mark == Mark::Fail).count();
    Ok(DoctorReport {
        healthy: failing == 0,
        checks: f,
    })
}

/// Free space where the engine keeps images and containers.
fn disk(f: &mut Vec<Finding>, engine: &Engine, address: Option<&EngineAddress>, root: Option<&str>) {
    let Some(root) = root else {
        f.push(Finding::skipped(
            "disk",
            "the engine does not say where it keeps its data",
        ));
        return;
    };
    match checks::disk_space(engine, address, root) {
        Ok(space) if space.low() => f.push(Finding::fail(
            "disk",
            format!(
                "{} free of {} at {root}",
                checks::bytes(space.free),
                checks::bytes(space.total)
            ),
            Some(format!(
                "free space on the engine's host (at least {}): `docker image prune`, `docker system df` to see \
                 what takes it, or a bigger disk",
                checks::bytes(checks::MIN_FREE_BYTES)
            )),
        )),
        Ok(space) => f.push(Finding::ok(
            "disk",
            format!(
                "{} free of {} at {root}",
                checks::bytes(space.free),
                checks::bytes(space.total)
            ),
        )),
        Err(why) => f.push(Finding::skipped("disk", why)),
    }
}

/// Reachable, credentials, deletes, version tags; `catalog` is filled when the tags were read.
/// Each service of a release that has a repository of its own: that repository answers, and its
/// pointer names its image of the version the first repository's pointer names.
async fn release_checks(
    f: &mut Vec<Finding>,
    app: &App<'_>,
    target: &crate::settings::TargetSettings,
    pointer: &str,
    lkg_known: bool,
) {
    let Ok(registries) = app.registries() else { return };
    let first = registries[0].as_ref();
    let lkg = match Catalog::load(first).await {
        Ok(cat) if lkg_known => resolve::last_known_good(first, &cat, &[], pointer).await.ok().flatten(),
        _ => None,
    };
    for (m, reg) in target.members.iter().zip(&registries) {
        if m.repository.is_none() {
            continue;
        }
        let check = format!("service {}", m.name);
        let catalog = match Catalog::load(reg.as_ref()).await {
            Ok(c) => c,
            Err(e) => {
                let (detail, fix) = said(&e);
                f.push(Finding::fail(&check, detail, fix));
                continue;
            }
        };
        let Some(lkg) = &lkg else {
            f.push(Finding::ok(
                &check,
                format!("{} answers, {} version tag(s)", reg.name(), catalog.versions.len()),
            ));
            continue;
        };
        let want = lkg
            .version
            .as_deref()
            .and_then(crate::domain::version::parse_version)
            .and_then(|v| crate::domain::release::tag_of(&catalog.versions, &v, lkg.tag.as_deref()));
        let (want, now) = match want {
            Some(tag) => (reg.tag_digest(&tag.tag).await, reg.tag_digest(pointer).await),
            None => {
                f.push(Finding::fail(
                    &check,
                    format!(
                        "{} has no {} (what {pointer} names for the release)",
                        reg.name(),
                        lkg.display()
                    ),
                    Some("push it there, or mark a version every service has (`backtrack versions` marks them)".into()),
                ));
                continue;
            }
        };
        match (want, now) {
            (Ok(Some(w)), Ok(Some(n))) if w == n => f.push(Finding::ok(
                &check,
                format!("{} answers; {pointer} points at its {}", reg.name(), lkg.display()),
            )),
            (Ok(_), Ok(n)) => f.push(Finding::fail(
                &check,
                match n {
                    Some(d) => format!(
                        "{pointer} in {} points at {}, not its {}",
                        reg.name(),
                        d.short(),
                        lkg.display()
                    ),
                    None => format!("{pointer} is not set in {}", reg.name()),
                },
                Some(format!(
                    "`backtrack mark-good {}` moves every service's pointer together",
                    lkg.display()
                )),
            )),
            (Err(e), _) | (_, Err(e)) => f.push(Finding::fail(&check, e.to_string(), e.hint())),
        }
    }
}

async fn registry_checks(f: &mut Vec<Finding>, reg: &dyn Registry, kind: &RegistryKind, catalog: &mut Option<Catalog>) {
    let name = reg.name();
    match Catalog::load(reg).await {
        Ok(c) => {
            f.push(Finding::ok("registry", format!("{name} answers")));
            f.push(Finding::ok("credentials", "accepted"));
            *catalog = Some(c);
        }
        Err(e) => {
            let (detail, fix) = said(&e);
            let typed = e.chain().find_map(|c| c.downcast_ref::<RegistryError>());
            match typed {
                Some(RegistryError::Unauthorized { .. } | RegistryError::Denied { .. }) => {
                    f.push(Finding::ok("registry", format!("{name} answers")));
                    f.push(Finding::fail("credentials", detail, fix));
                    f.push(Finding::skipped("deletes", "the credentials were refused"));
                    f.push(Finding::skipped("version tags", "the credentials were refused"));
                }
                Some(RegistryError::RepositoryNotFound { .. }) => {
                    f.push(Finding::ok("registry", format!("{name} answers")));
                    f.push(Finding::ok("credentials", "accepted"));
                    f.push(Finding::skipped("deletes", "the repository does not exist"));
                    f.push(Finding::fail("version tags", detail, fix));
                }
                _ => {
                    f.push(Finding::fail("registry", detail, fix));
                    f.push(Finding::skipped("credentials", "the registry is out of reach"));
                    f.push(Finding::skipped("deletes", "the registry is out of reach"));
                    f.push(Finding::skipped("version tags", "the registry is out of reach"));
                }
            }
            return;
        }
    }
    // A delete of a digest that cannot exist: Distribution answers 404 with deletes enabled and
    // 405 UNSUPPORTED without; ECR answers ImageNotFound when IAM allows BatchDeleteImage.
    match reg.check_deletes().await {
        Ok(()) => f.push(Finding::ok(
            "deletes",
            match kind {
                RegistryKind::Oci => "enabled (a DELETE of an unknown digest was answered as not found)",
                RegistryKind::Ecr => {
                    "ecr:BatchDeleteImage allowed (ecr:PutImage, which mark-good needs, is not probed: it would \
                     take a change)"
                }
            },
        )),
        Err(e) => {
            let fix = match (&e, kind) {
                (
                    RegistryError::Denied {
                        action: Some(action), ..
                    },
                    RegistryKind::Ecr,
                ) => Some(format!(
                    "allow {action} on the repository in the IAM policy of the credentials backtrack uses"
                )),
                (RegistryError::Denied { .. } | RegistryError::Unauthorized { .. }, _) => {
                    Some("use credentials that may delete (push and delete rights on the repository)".to_string())
                }
                (other, _) => other.hint(),
            };
            f.push(Finding::fail("deletes", e.to_string(), fix));
        }
    }
    let c = catalog.as_ref().expect("loaded above");
    match c.versions.first() {
        Some(top) => f.push(Finding::ok(
            "version tags",
            format!("{} version tag(s), highest {}", c.versions.len(), top.tag),
        )),
        None => f.push(Finding::fail(
            "version tags",
            format!("{name} has no version tags ({} other tag(s))", c.others.len()),
            Some(
                "tag images with their version (v1.2.3 or 1.2.3) when pushing them, e.g. `backtrack build --push`"
                    .into(),
            ),
        )),
    }
}

/// `last_known_good-ENV` of every other target on this machine built from the same repository
/// (prune protects what they point at; emergency needs it): set or not, one line each.
fn other_pointers(f: &mut Vec<Finding>, reg: &dyn Registry, catalog: &Catalog, project: &Project, mine: &str) {
    let mut pointers: Vec<(String, String)> =
        crate::ops::targets::siblings(&project.state_root, &project.registry.display(), &project.state_dir)
            .into_iter()
            .filter_map(|s| {
                let tag = crate::settings::lkg_tag(s.meta.environment.as_deref());
                (tag != mine).then_some((tag, s.meta.target))
            })
            .collect();
    pointers.sort();
    pointers.dedup_by(|a, b| a.0 == b.0);
    for (tag, target) in pointers {
        let check = format!("last known good ({tag})");
        if catalog.has_tag(&tag) {
            f.push(Finding::ok(&check, format!("{tag} is set (used by {target})")));
        } else {
            f.push(Finding::fail(
                &check,
                format!("{tag} is not set in {}; {target} uses it", reg.name()),
                Some(format!(
                    "`backtrack mark-good` with that target's config (environment of {target}) once a version has \
                     proven itself there"
                )),
            ));
        }
    }
}

/// The image `last_known_good` names, kept on the host under `backtrack/REPO:lkg` by mark-good.
async fn lkg_image(f: &mut Vec<Finding>, engine: &Engine, reg: &dyn Registry, pointer: &str, digest: &Digest) {
    let (repo, tag) = local_lkg_reference(&registry_repository(reg), pointer);
    let local = format!("{repo}:{tag}");
    let reference = reg.pull_reference(digest);
    let fix = format!(
        "keep it on the host for `emergency` with the registry down: `docker pull {reference} && docker tag \
         {reference} {local}` there (or `backtrack mark-good` the version again)"
    );
    match engine.image(&local).await {
        Ok(Some(image)) => {
            let same = image
                .repo_digests
                .iter()
                .flatten()
                .any(|rd| rd.ends_with(&format!("@{digest}")));
            if same {
                f.push(Finding::ok("lkg image", format!("{local} is on {}", engine.host())));
            } else {
                f.push(Finding::fail(
                    "lkg image",
                    format!(
                        "{local} on {} is another image than {pointer} ({})",
                        engine.host(),
                        digest.short()
                    ),
                    Some(fix),
                ));
            }
        }
        Ok(None) => f.push(Finding::fail(
            "lkg image",
            format!("{local} is not on {}", engine.host()),
            Some(fix),
        )),
        Err(e) => f.push(Finding::fail("lkg image", e.to_string(), e.hint())),
    }
}

/// Each container of the target runs a digest the registry knows (else nothing can return to it).
/// How a swap will go: start-first (no downtime behind a proxy) or stop-first, and why; a
/// configured start-first that cannot run (a published host port) fails.
async fn order_check(
    f: &mut Vec<Finding>,
    engine: &Engine,
    target: &crate::settings::TargetSettings,
    current: &[deployed::Deployed],
) {
    let names: Vec<String> = current.iter().map(|d| d.container.name.clone()).collect();
    match crate::ops::swap::order_of(engine, target, &names).await {
        Ok(d) => f.push(Finding::ok("swap order", format!("{}: {}", d.order, d.why))),
        Err(why) => f.push(Finding::fail(
            "swap order",
            why,
            Some(
                "set [target] order = \"stop-first\", or publish no host port and put a proxy in front (README)".into(),
            ),
        )),
    }
}

async fn target_check(f: &mut Vec<Finding>, current: &[deployed::Deployed], reg: Option<&dyn Registry>) {
    let mut lines = Vec::new();
    let mut unknown = Vec::new();
    for d in current {
        let name = &d.container.name;
        let shown = d.image.display();
        match (&d.digest, reg) {
            (None, _) => unknown.push(format!(
                "{name} runs {} (no digest from the registry)",
                d.container.image_ref
            )),
            (Some(digest), Some(reg)) => match reg.image_info(digest).await {
                Ok(_) => lines.push(format!("{name} runs {shown} ({})", digest.short())),
                Err(e) if e.is_not_found() => unknown.push(format!(
                    "{name} runs {shown} ({}), which {} does not have",
                    digest.short(),
                    reg.name()
                )),
                Err(e) => lines.push(format!(
                    "{name} runs {shown} ({}); the registry could not say whether it has it: {e}",
                    digest.short()
                )),
            },
            (Some(digest), None) => lines.push(format!(
                "{name} runs {shown} ({}); not checked against the registry",
                digest.short()
            )),
        }
    }
    if unknown.is_empty() {
        f.push(Finding::ok("target", lines.join("; ")));
    } else {
        f.push(Finding::fail(
            "target",
            unknown.join("; "),
            Some(
                "deploy a version from the registry (`backtrack deploy VERSION`), or push the running image with a \
                 version tag, so that a later rollback can come back to it"
                    .into(),
            ),
        ));
    }
}

/// The state folder is writable, and the lock is free, held by a live process, or left by one
/// that died holding it (stale: what it was doing may be half done).
fn state_checks(app: &App<'_>, f: &mut Vec<Finding>, journal_error: Option<&anyhow::Error>) {
    let Ok(project) = app.project() else { return };
    if let Some(e) = journal_error {
        let (detail, fix) = said(e);
        f.push(Finding::fail("state", detail, fix));
        f.push(Finding::skipped("lock", "the state could not be opened"));
        return;
    }
    if project.remote_state.is_some() {
        f.push(Finding::ok("state", "the journal on the target's host is readable"));
    } else {
        let dir = &project.state_dir;
        let probe = dir.join(format!(".doctor-{}", std::process::id()));
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&probe, b"doctor"))
            .and_then(|()| std::fs::remove_file(&probe));
        match written {
            Ok(()) => f.push(Finding::ok("state", format!("{} is writable", dir.display()))),
            Err(e) => f.push(Finding::fail(
                "state",
                format!("write in {}: {e}", dir.display()),
                Some(format!(
                    "make it writable for this user (`sudo chown -R $USER {}`), or set --state-dir / \
                     BACKTRACK_STATE_DIR",
                    dir.display()
                )),
            )),
        }
    }
    let stale = if project.remote_state.is_none() {
        state::dead_holders(&project.state_dir)
    } else {
        Vec::new()
    };
    match app.lock_holder() {
        Ok(Some(holder)) => f.push(Finding::ok("lock", format!("held by {holder}, which is running now"))),
        Ok(None) if !stale.is_empty() => {
            let who: Vec<String> = stale.iter().map(ToString::to_string).collect();
            f.push(Finding::fail(
                "lock",
                format!(
                    "stale: {} died holding it; nothing has taken it since, so what it did may be half done",
                    who.join("; ")
                ),
                Some(
                    "see `backtrack status` and `backtrack history`; the next `backtrack deploy`, `rollback` or \
                     `emergency` settles an interrupted operation and clears this"
                        .into(),
                ),
            ));
        }
        Ok(None) => f.push(Finding::ok("lock", "free")),
        Err(e) => {
            let (detail, fix) = said(&e);
            f.push(Finding::fail("lock", detail, fix));
        }
    }
}

/// The Git fallback: a repository with version tags, when `[rebuild] repo` is one.
fn git_check(f: &mut Vec<Finding>, repo: &std::path::Path) {
    use crate::adapters::git::{GitError, Repo};
    match Repo::open(repo) {
        Err(GitError::NotARepo { path }) => f.push(Finding::skipped(
            "git fallback",
            format!("{} is not a Git repository, so the Git fallback is off", path.display()),
        )),
        Err(e) => f.push(Finding::skipped("git fallback", e.to_string())),
        Ok(r) => match r.tags() {
            Ok(tags) => {
                let versions = tags
                    .iter()
                    .filter(|t| crate::domain::version::parse_version(t).is_some())
                    .count();
                if versions == 0 {
                    f.push(Finding::fail(
                        "git fallback",
                        format!("{} has no version tags to rebuild from", repo.display()),
                        Some("tag releases in Git (`git tag v1.2.3 && git push --tags`)".into()),
                    ));
                } else {
                    f.push(Finding::ok(
                        "git fallback",
                        format!("{} has {versions} version tag(s)", repo.display()),
                    ));
                }
            }
            Err(e) => f.push(Finding::fail("git fallback", e.to_string(), e.hint())),
        },
    }
}

impl Report for DoctorReport {
    fn human(&self) -> String {
        let mut t = table(["", "check", "detail"]);
        for c in &self.checks {
            let mark = match c.mark {
                Mark::Ok => "ok",
                Mark::Fail => "FAIL",
                Mark::Skipped => "-",
            };
            t.add_row(vec![mark.to_string(), c.check.clone(), escape(&c.detail)]);
            if let Some(fix) = &c.fix {
                t.add_row(vec![String::new(), String::new(), format!("fix: {}", escape(fix))]);
            }
        }
        let failing = self.checks.iter().filter(|c| c.mark == Mark::Fail).count();
        format!(
            "{}\n{}",
            render_table(&t),
            if failing == 0 {
                "every check passed".to_string()
            } else {
                format!("{failing} check(s) failed")
            }
        )
    }
}
