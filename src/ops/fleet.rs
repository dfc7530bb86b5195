//! The hosts of a target: each connected host is an engine, the target's journal on that host,
//! and its lock once taken. A target on one host is a fleet of one; `[target] hosts` connects
//! every host in parallel (an unreachable one refuses the run, naming it, unless skipped). Every
//! host's journal gets an operation under one shared id, so `history` shows it as one operation.
//! What runs on the hosts is `ops::operation`; the rules (waves, lock order, which hosts to put
//! back, the verdict) are `domain::fleet`.

use futures::future::join_all;
use serde::Serialize;

use crate::adapters::docker::Engine;
use crate::adapters::ssh::{SshOptions, SshSession};
use crate::adapters::state::remote::{RemoteDir, StateShell};
use crate::adapters::state::{self, Journal, TargetLock, TargetMeta};
use crate::domain::address::EngineAddress;
use crate::domain::fleet::HostStep;
use crate::domain::image::ImageRef;
use crate::settings::{FleetHost, TargetSettings};

/// One host of the fleet, connected: its engine and its target's journal (on the host for
/// `ssh://`), and its lock once taken. Dropping it releases the lock, then the connection.
pub struct Host {
    pub address: String,
    pub engine: Engine,
    pub journal: Journal,
    lock: Option<TargetLock>,
    remote: Option<RemoteDir>,
    state_dir: std::path::PathBuf,
    /// The gate of a remote swap (`ops::swap`), opened ahead of need.
    gate: std::sync::Mutex<Option<crate::adapters::ssh::RemoteChannel>>,
}

impl Host {
    /// Opens the gate a remote swap sends its intent and calls through (see `ops::swap`), so its
    /// channel is open, and the engine's connection behind it made, by the time the swap goes.
    /// Only for a target whose journal and engine are across a network.
    pub fn ready_gate(&self) {
        // On a LAN, starting the gate's programs costs more than the round trip it saves.
        if !self.engine.pipelines() || !self.engine.far() {
            return;
        }
        // Opened already with the lock (`App::hosts`)?
        if self.gate.lock().is_ok_and(|g| g.is_some()) {
            return;
        }
        if let Some(dir) = &self.remote
            && let Ok(channel) = dir.ssh().open_channel(&dir.gate_command())
            && let Ok(mut gate) = self.gate.lock()
        {
            *gate = Some(channel);
        }
    }

    /// Keeps `gate`, opened early (with the lock), for the swap.
    pub fn give_gate(&self, gate: crate::adapters::ssh::RemoteChannel) {
        if let Ok(mut g) = self.gate.lock() {
            *g = Some(gate);
        }
    }

    /// The gate `ready_gate` opened, once.
    pub fn take_gate(&self) -> Option<crate::adapters::ssh::RemoteChannel> {
        self.gate.lock().ok()?.take()
    }

    /// A host already connected: its engine, its journal, and where its lock is taken (on the
    /// host through `remote`, else in `state_dir`).
    pub fn new(
        address: String,
        engine: Engine,
        journal: Journal,
        remote: Option<RemoteDir>,
        state_dir: std::path::PathBuf,
    ) -> Self {
        Self {
            address,
            engine,
            journal,
            lock: None,
            remote,
            state_dir,
            gate: std::sync::Mutex::default(),
        }
    }

    /// The same host, holding `lock` (taken already): what was read of its engine while the lock
    /// was asked for is forgotten unless the lock says it still stands.
    pub fn holding(mut self, lock: Option<TargetLock>) -> Self {
        self.hold(lock);
        self
    }

    /// Keeps `lock`, forgetting what was read ahead of it unless the lock says it still stands.
    fn hold(&mut self, lock: Option<TargetLock>) {
        if lock.as_ref().is_some_and(|l| !l.quiet()) {
            self.engine.forget_ahead();
        }
        self.lock = lock;
    }

    /// From now on, this host's round trips count toward `phase` (`--verbose`).
    pub fn phase(&self, phase: &'static str) {
        if let Some(w) = self.engine.wire() {
            w.phase(phase);
        }
    }

    /// Takes this host's lock of the target, without waiting.
    pub fn lock(&mut self, command: &str) -> anyhow::Result<()> {
        self.phase("lock");
        let lock = match &self.remote {
            Some(dir) => TargetLock::Remote(dir.lock(command)?),
            None => TargetLock::Local(state::lock(&self.state_dir, command)?),
        };
        self.hold(Some(lock));
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

/// How long a run that holds the first host in lock order asks again for another host's lock
/// held by someone else, and how often: a run that lost at the first host gives back what it
/// took once it has heard so, which is when all its hosts have answered their logins.
const CONTENDED: std::time::Duration = std::time::Duration::from_secs(2);
const ASK_AGAIN: std::time::Duration = std::time::Duration::from_millis(200);

/// Takes every host's lock of the target for `command`, all at once (an `ssh://` host's may have
/// been taken as its session started: `App::locks_ahead`). The first host in lock order decides
/// between two runs: refused there, this run is refused, and what it took goes back as `hosts`
/// drop. Held there, a refusal at another host may be a run that lost at the first host and is
/// giving its locks back, so the hosts still refused are asked again, every `ASK_AGAIN` for
/// `CONTENDED`, before a refusal counts (then this run gives everything back too). So two runs
/// never each keep part of a fleet: at most one holds the first host, and the other gives
/// everything back.
pub fn lock_all(hosts: &mut [Host], command: &str) -> anyhow::Result<()> {
    let addresses: Vec<String> = hosts.iter().map(|h| h.address.clone()).collect();
    let order = crate::domain::fleet::lock_order(&addresses);
    let lock = |h: &mut Host| {
        let address = h.address.clone();
        h.lock(command)
            .map_err(|e| e.context(format!("lock the target on {address}")))
    };
    let lock = &lock;
    let mut results: Vec<(usize, anyhow::Result<()>)> = std::thread::scope(|scope| {
        let running: Vec<_> = hosts
            .iter_mut()
            .enumerate()
            .map(|(i, h)| (i, scope.spawn(move || lock(h))))
            .collect();
        running
            .into_iter()
            .map(|(i, t)| {
                let r = t
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a lock thread panicked")));
                (i, r)
            })
            .collect()
    });
    // A refusal is told for the first refusing host in lock order.
    results.sort_by_key(|(i, _)| order.iter().position(|o| o == i));
    let mut results = results.into_iter();
    if let Some((_, first)) = results.next() {
        first?;
    }
    let held_elsewhere = |r: &anyhow::Result<()>| {
        r.as_ref()
            .err()
            .and_then(|e| e.downcast_ref::<state::LockError>())
            .is_some_and(state::LockError::is_held)
    };
    let mut pending: Vec<(usize, anyhow::Result<()>)> = results.collect();
    let until = std::time::Instant::now() + CONTENDED;
    // Every host still refused is asked again each round, the last round after the deadline.
    while pending.iter().any(|(_, r)| held_elsewhere(r)) {
        let last = std::time::Instant::now() >= until;
        std::thread::sleep(ASK_AGAIN);
        for (i, r) in pending.iter_mut().filter(|(_, r)| held_elsewhere(r)) {
            tracing::debug!("{}: the lock is held elsewhere; asking again", hosts[*i].address);
            *r = lock(&mut hosts[*i]);
        }
        if last {
            break;
        }
    }
    pending.into_iter().try_for_each(|(_, r)| r)
}

/// Prints, on drop, the round trips and time each host's phases took (`--verbose`), so a slow
/// run says where its time went, however it ends.
pub struct Timings<'a> {
    printer: &'a crate::output::Printer,
    wires: Vec<std::sync::Arc<crate::adapters::wire::Wire>>,
}

impl<'a> Timings<'a> {
    /// For `hosts`, when `verbose`; each host's phase is `plan` from now.
    pub fn new(printer: &'a crate::output::Printer, hosts: &[Host], verbose: bool) -> Self {
        for h in hosts {
            h.phase("plan");
        }
        let wires = if verbose {
            hosts.iter().filter_map(|h| h.engine.wire().cloned()).collect()
        } else {
            Vec::new()
        };
        Self { printer, wires }
    }
}

impl Drop for Timings<'_> {
    fn drop(&mut self) {
        for w in &self.wires {
            self.printer
                .note(crate::adapters::wire::render(w.host(), &w.summary(), w.round_trips()));
        }
    }
}

/// Connects to one host: its engine, and its journal (through the same SSH connection, which
/// `session` opens, or has been opening since the command started). As for a single host, the
/// engine is reached through the forward made at login to the socket the host named last time
/// (remembered in `cache`), negotiated while the session starts.
pub async fn connect<F>(
    host: &FleetHost,
    ssh: &SshOptions,
    meta: TargetMeta,
    session: Option<F>,
    cache: &std::path::Path,
    reads: &crate::adapters::docker::ahead::ReadAhead,
) -> anyhow::Result<Host>
where
    F: FnOnce() -> Result<std::sync::Arc<SshSession>, crate::adapters::ssh::SshError> + Send + 'static,
{
    let (engine, remote) = match (&host.engine, session) {
        (EngineAddress::Ssh(dest), Some(open)) => {
            let session = tokio::task::spawn_blocking(open).await??;
            let ahead = Engine::negotiate_ahead(&session, reads);
            let engine = Engine::connect_ssh(session.clone(), ssh.connect_timeout, ahead)
                .await?
                .keep_configs_in(crate::adapters::docker::ahead::ConfigCache::new(
                    cache.join("image-configs"),
                ));
            if let Some(path) = session.engine_path()
                && !session.engine_known_ahead()
            {
                crate::adapters::ssh::remember_engine(cache, dest, path);
            }
            let relative = host
                .remote_state
                .clone()
                .expect("an ssh:// host has a remote state folder");
            let shell = StateShell::new(session);
            engine.probe_from_host(shell.prober());
            (engine, Some(RemoteDir::new(shell, relative)))
        }
        (EngineAddress::Tcp { host: name, port }, _) if let Some(files) = host.tls.as_ref() => (
            Engine::connect_tls(name, *port, files, ssh.connect_timeout).await?,
            None,
        ),
        (other, _) => (Engine::connect(Some(&other.to_string())).await?, None),
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
        gate: std::sync::Mutex::default(),
    })
}

/// Every host of the target, connected in parallel, in the fleet's order: each a host or why it
/// could not be reached.
pub async fn connect_all<F>(
    target: &TargetSettings,
    ssh: &SshOptions,
    meta: impl Fn(&FleetHost) -> TargetMeta,
    session: impl Fn(&FleetHost) -> Option<F>,
    cache: &std::path::Path,
) -> Vec<(String, anyhow::Result<Host>)>
where
    F: FnOnce() -> Result<std::sync::Arc<SshSession>, crate::adapters::ssh::SshError> + Send + 'static,
{
    // What the plan will read, asked as each host's session starts.
    let reads = target
        .hosts
        .first()
        .map(|h| crate::ops::deployed::read_ahead(target, &meta(h).repository))
        .unwrap_or_default();
    let reads = &reads;
    let tries = target.hosts.iter().map(|h| {
        let (meta, session) = (meta(h), session(h));
        async move { (h.address.clone(), connect(h, ssh, meta, session, cache, reads).await) }
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
