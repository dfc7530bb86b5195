//! One operation across the hosts of a fleet (`[target] hosts`): connect to every host (an
//! unreachable one refuses the run, naming it, unless skipped), take every host's lock before the
//! first change in one fixed order, settle what an earlier run left open on each, resolve the
//! selector once to one digest, then swap host by host in the strategy's waves. All-or-nothing:
//! when a host fails (validation, its swap, its soak, or the host went away), no new host starts
//! and every host already swapped is put back, in parallel. Every host's journal (on that host)
//! gets the operation under one shared id, so `history` shows it as one fleet operation.
//!
//! The rules (waves, lock order, which hosts to put back, the verdict) are `domain::fleet`; this
//! module only does what they say against the engines.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::Utc;
use futures::future::join_all;
use serde::Serialize;

use crate::adapters::docker::{BACKUP_SUFFIX, Engine, PRE_EMERGENCY_SUFFIX};
use crate::adapters::registry::PullAuth;
use crate::adapters::ssh::{SshOptions, SshSession};
use crate::adapters::state::remote::{RemoteDir, StateShell};
use crate::adapters::state::{self, Journal, TargetLock, TargetMeta};
use crate::domain::address::EngineAddress;
use crate::domain::fleet::HostStep;
use crate::domain::history::{Outcome, Phase, Record};
use crate::domain::image::ImageRef;
use crate::ops::swap::{self, Plan};
use crate::ops::validate;
use crate::output::Printer;
use crate::settings::{FleetHost, HealthSettings, TargetSettings};

/// One host of the fleet, connected: its engine and its target's journal (on the host for
/// `ssh://`), and its lock once taken. Dropping it releases the lock, then the connection.
pub struct Host {
    pub address: String,
    pub engine: Engine,
    pub journal: Journal,
    lock: Option<TargetLock>,
    remote: Option<RemoteDir>,
    state_dir: std::path::PathBuf,
}

impl Host {
    /// Takes this host's lock of the target, without waiting.
    pub fn lock(&mut self, command: &str) -> anyhow::Result<()> {
        let lock = match &self.remote {
            Some(dir) => TargetLock::Remote(dir.lock(command)?),
            None => TargetLock::Local(state::lock(&self.state_dir, command)?),
        };
        self.lock = Some(lock);
        Ok(())
    }

    /// Who holds this host's lock now, if anyone.
    pub fn holder(&self) -> Option<state::Holder> {
        match &self.remote {
            Some(dir) => dir.holder(),
            None => state::holder(&self.state_dir),
        }
    }
}

/// Connects to one host: its engine, and its journal (through the same SSH connection).
pub async fn connect(host: &FleetHost, ssh: &SshOptions, meta: TargetMeta) -> anyhow::Result<Host> {
    let (engine, remote) = match &host.engine {
        EngineAddress::Ssh(dest) => {
            let (dest, options) = (dest.clone(), ssh.clone());
            let session = tokio::task::spawn_blocking(move || {
                SshSession::open(
                    &dest,
                    &options,
                    &crate::adapters::state::remote::shell_command(),
                    &crate::adapters::ssh::Ahead::default(),
                )
            })
            .await??;
            let engine = Engine::connect_ssh(session.clone(), ssh.connect_timeout, None).await?;
            let relative = host
                .remote_state
                .clone()
                .expect("an ssh:// host has a remote state folder");
            (engine, Some(RemoteDir::new(StateShell::new(session), relative)))
        }
        EngineAddress::Tcp { host: name, port } if let Some(files) = host.tls.as_ref() => (
            Engine::connect_tls(name, *port, files, ssh.connect_timeout).await?,
            None,
        ),
        other => (Engine::connect(Some(&other.to_string())).await?, None),
    };
    let journal = match &remote {
        Some(dir) => Journal::remote(dir.clone(), meta),
        None => Journal::for_target(&host.state_dir, meta),
    };
    Ok(Host {
        address: host.address.clone(),
        engine,
        journal,
        lock: None,
        remote,
        state_dir: host.state_dir.clone(),
    })
}

/// Every host of the target, connected in parallel, in the fleet's order: each a host or why it
/// could not be reached.
pub async fn connect_all(
    target: &TargetSettings,
    ssh: &SshOptions,
    meta: impl Fn(&FleetHost) -> TargetMeta,
) -> Vec<(String, anyhow::Result<Host>)> {
    let tries = target.hosts.iter().map(|h| {
        let meta = meta(h);
        async move { (h.address.clone(), connect(h, ssh, meta).await) }
    });
    join_all(tries).await
}

/// What happened on one host, for the report and the journal.
#[derive(Debug, Clone, Serialize)]
pub struct HostResult {
    pub host: String,
    pub step: HostStep,
    pub from: Option<ImageRef>,
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
}

/// One host in a run: its plan (none when it already runs the digest) and where it stands.
pub struct Slot<'a> {
    pub host: &'a Host,
    pub plan: Option<Plan>,
    pub result: HostResult,
}

/// Everything a run needs besides the hosts.
pub struct Run<'a> {
    pub printer: &'a Printer,
    pub health: &'a HealthSettings,
    pub auth: Option<&'a PullAuth>,
    /// The `started` record every host's journal gets (one id for the whole fleet operation).
    pub base: Record,
}

/// Pull, record the intent, swap and validate one host. Its own failure puts its own previous
/// containers back; success leaves them set aside until the whole fleet validated.
pub async fn apply(run: &Run<'_>, slot: &mut Slot<'_>) {
    let (host, Some(plan)) = (slot.host, slot.plan.as_ref()) else {
        slot.result.step = HostStep::Unchanged;
        return;
    };
    let say = |m: String| run.printer.note(format!("[{}] {m}", host.address));
    let fail = |slot: &mut Slot<'_>, step, why: String| {
        slot.result.step = step;
        slot.result.detail = Some(why);
    };
    if let Err(e) = host.engine.pull(&plan.image, run.auth, |_| {}).await {
        let step = if reachable(host).await {
            HostStep::FailedReverted
        } else {
            HostStep::Lost
        };
        return fail(slot, step, format!("pull {}: {e}", plan.image));
    }
    let started = Record {
        target: Some(plan.target.clone()),
        from: Some(plan.from.clone()),
        to: Some(plan.to.clone()),
        detail: run.base.detail.clone().or(plan.note.clone()),
        containers: plan.containers.iter().map(|c| c.name.clone()).collect(),
        saved: plan
            .containers
            .iter()
            .map(|c| (c.name.clone(), c.restart_policy.clone()))
            .collect::<BTreeMap<_, _>>(),
        ..run.base.clone()
    };
    if let Err(e) = host.journal.append(&started) {
        let step = if reachable(host).await {
            HostStep::FailedReverted
        } else {
            HostStep::Lost
        };
        return fail(slot, step, format!("record the intent: {e}"));
    }
    let clock = Instant::now();
    let mut swapped = Vec::new();
    let mut failure = None;
    for c in &plan.containers {
        say(format!(
            "swapping {}: {} -> {}",
            c.name,
            c.from.display(),
            plan.to.display()
        ));
        swapped.push(c);
        if let Err(e) = swap::swap_one(&host.engine, c).await {
            failure = Some((format!("swap {}: {e}", c.name), Vec::new()));
            break;
        }
        let checked = validate::wait_valid(
            &host.engine,
            std::slice::from_ref(&c.name),
            run.health,
            plan.to.version.as_deref(),
            |_| {},
        )
        .await;
        if let Err(invalid) = checked {
            let logs = host.engine.logs_tail(&c.name, 20).await;
            failure = Some((format!("{} failed validation: {}", c.name, invalid.why), logs));
            break;
        }
    }
    let Some((why, logs)) = failure else {
        say(format!("validated {}", plan.to.display()));
        slot.result.step = HostStep::Validated;
        return;
    };
    say(format!("{why}; putting its previous version back"));
    slot.result.logs = logs;
    let mut errors = Vec::new();
    for c in swapped.iter().rev() {
        if let Err(e) = swap::revert_one(&host.engine, &c.name, Some(&c.restart_policy)).await {
            errors.push(format!("{}: {e}", c.name));
        }
    }
    let ms = Some(clock.elapsed().as_millis() as u64);
    if errors.is_empty() {
        let _ = host
            .journal
            .append(&started.finish(Utc::now(), Outcome::Reverted, ms, Some(why.clone())));
        return fail(slot, HostStep::FailedReverted, why);
    }
    let detail = format!("{why}; revert: {}", errors.join("; "));
    let _ = host
        .journal
        .append(&started.finish(Utc::now(), Outcome::RevertFailed, ms, Some(detail.clone())));
    let step = if reachable(host).await {
        HostStep::FailedNotReverted
    } else {
        HostStep::Lost
    };
    fail(slot, step, detail)
}

/// Whether the host's engine still answers.
async fn reachable(host: &Host) -> bool {
    host.engine.inspect("backtrack-fleet-reachability").await.is_ok()
}

/// Canary: the first host must stay healthy for the soak before the others start.
pub async fn soak(run: &Run<'_>, slot: &mut Slot<'_>, duration: std::time::Duration) {
    let Some(plan) = &slot.plan else { return };
    let names: Vec<String> = plan.containers.iter().map(|c| c.name.clone()).collect();
    run.printer.note(format!(
        "[{}] canary: watching {} for {}",
        slot.host.address,
        plan.to.display(),
        crate::domain::duration::format(duration)
    ));
    if let Err(invalid) = validate::soak(&slot.host.engine, &names, run.health, duration).await {
        slot.result.step = HostStep::SoakFailed;
        slot.result.detail = Some(format!("canary soak: {}", invalid.why));
    }
}

/// Puts a host that was swapped (and validated) back on its previous containers, because another
/// host failed (or its own soak did).
pub async fn revert(run: &Run<'_>, slot: &mut Slot<'_>, because: &str) {
    let Some(plan) = &slot.plan else { return };
    let host = slot.host;
    let mut errors = Vec::new();
    for c in plan.containers.iter().rev() {
        if let Err(e) = swap::revert_one(&host.engine, &c.name, Some(&c.restart_policy)).await {
            errors.push(format!("{}: {e}", c.name));
        }
    }
    let started = Record {
        target: Some(plan.target.clone()),
        from: Some(plan.from.clone()),
        to: Some(plan.to.clone()),
        ..run.base.clone()
    };
    let own = slot.result.detail.clone();
    let why = match (slot.result.step, own) {
        (HostStep::SoakFailed, Some(own)) => own,
        _ => format!("put back: {because}"),
    };
    let soak_failed = slot.result.step == HostStep::SoakFailed;
    if errors.is_empty() {
        let _ = host
            .journal
            .append(&started.finish(Utc::now(), Outcome::Reverted, None, Some(why.clone())));
        run.printer.note(format!("[{}] previous version back", host.address));
        if !soak_failed {
            slot.result.step = HostStep::Reverted;
        }
        slot.result.detail = Some(why);
    } else {
        let detail = format!("{why}; revert: {}", errors.join("; "));
        let _ = host
            .journal
            .append(&started.finish(Utc::now(), Outcome::RevertFailed, None, Some(detail.clone())));
        slot.result.step = HostStep::RevertFailed;
        slot.result.detail = Some(detail);
    }
}

/// The fleet validated everywhere: record the commit and remove what was set aside.
pub async fn commit(run: &Run<'_>, slot: &mut Slot<'_>, duration_ms: u64) {
    let Some(plan) = &slot.plan else { return };
    let host = slot.host;
    let started = Record {
        target: Some(plan.target.clone()),
        from: Some(plan.from.clone()),
        to: Some(plan.to.clone()),
        ..run.base.clone()
    };
    let committed = host.journal.append(&Record {
        at: Utc::now(),
        phase: Phase::Committed,
        ..started.clone()
    });
    for c in &plan.containers {
        for leftover in [
            format!("{}{BACKUP_SUFFIX}", c.name),
            format!("{}{PRE_EMERGENCY_SUFFIX}", c.name),
        ] {
            if let Err(e) = host.engine.remove(&leftover).await {
                run.printer
                    .note(format!("[{}] warning: could not remove {leftover}: {e}", host.address));
            }
        }
    }
    let finished = host
        .journal
        .append(&started.finish(Utc::now(), Outcome::Ok, Some(duration_ms), None));
    slot.result.step = HostStep::Committed;
    if let Err(e) = committed.and(finished) {
        slot.result.detail = Some(format!(
            "validated and kept, but not recorded ({e}); the next run on this host records it"
        ));
    }
}
