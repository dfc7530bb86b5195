//! Commands: one file per subcommand, each a plain async function taking the resolved settings
//! and its own arguments. They wire adapters to domain decisions and hand a report to the printer.

mod build;
pub mod completions;
mod deploy;
mod doctor;
mod drill;
mod emergency;
mod fleet;
mod fleet_emergency;
mod fleet_state;
mod history;
mod mark_good;
mod policy;
mod prune;
mod prune_local;
mod status;
mod swarm;
mod validate;
mod versions;
mod warm;

use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context as _;

use crate::adapters::docker::{Engine, NegotiatedAhead};
use crate::adapters::registry::{self, Registry, cache::InfoCache};
use crate::adapters::ssh::{self, Ahead, SshError, SshSession};
use crate::adapters::state::remote::{RemoteDir, StateShell};
use crate::adapters::state::{self, Journal, TargetLock, TargetMeta};
use crate::cli::Command;
use crate::domain::address::{EngineAddress, SshDestination};
use crate::ops::fleet::Host;
use crate::output::Printer;
use crate::settings::{Project, Settings, TargetSettings};

/// What every command gets: the settings and the printer, plus helpers to open adapters.
///
/// **Commands never branch on where the target is**: for an `ssh://` engine, the engine, the
/// probes and the state (journal, lock) all go through one SSH connection to that host, opened
/// on first use and closed when the command ends.
pub struct App<'a> {
    pub settings: &'a Settings,
    pub printer: Printer,
    /// The SSH connection to the target's host (or why it could not be made), once opened.
    ssh: OnceLock<Result<Arc<SshSession>, SshError>>,
    /// The connection being opened in the background since the command started (`connect_early`).
    opening: Mutex<Option<Opening>>,
    /// The one state shell on the remote host (journal and lock requests), started on first use.
    state_shell: OnceLock<Arc<StateShell>>,
    /// The engine client negotiated while the host's session starts (`Engine::negotiate_ahead`).
    engine_ahead: Mutex<Option<NegotiatedAhead>>,
    /// A fleet's connections being opened since the command started, by host address.
    fleet_opening: Mutex<std::collections::HashMap<String, Opening>>,
    /// A whole Swarm stack's target with its services found (`resolve_stack`).
    stack: OnceLock<TargetSettings>,
    /// The command a remote host's lock is taken for as its session starts, on one host or every
    /// host of a fleet (deploy and rollback, not dry runs): the lock's answer then comes with the
    /// login.
    lock_ahead: Option<String>,
}

/// An SSH connection being opened on a thread of its own.
type Opening = std::thread::JoinHandle<Result<Arc<SshSession>, SshError>>;

impl App<'_> {
    pub fn project(&self) -> anyhow::Result<&Project> {
        Ok(self.settings.project()?)
    }

    pub fn registry(&self) -> anyhow::Result<Box<dyn Registry>> {
        let project = self.project()?;
        let cache = Arc::new(InfoCache::load(&self.settings.cache_dir));
        Ok(registry::open(&project.registry, cache)?)
    }

    /// For a Swarm `stack` without `name` or `names`: finds its services whose image comes from
    /// the registry, once, on the manager; from then on `target` is that release.
    pub async fn resolve_stack(&self) -> anyhow::Result<()> {
        let project = self.project()?;
        let Some(t) = project.target.as_ref().filter(|t| t.whole_stack) else {
            return Ok(());
        };
        let stack = t.stack.as_deref().expect("a whole stack names its stack");
        let engine = self.engine().await?;
        let services = engine.stack_services(stack).await?;
        let found =
            crate::domain::release::stack_members(&services, &project.registry.host, &project.registry.repository);
        if found.is_empty() {
            anyhow::bail!(
                "find the services of stack {stack}: none of its {} service(s) runs an image from {}; \
                 name them (`names = [...]`, with `[target.repositories]`)",
                services.len(),
                project.registry.host
            );
        }
        let mut resolved = t.clone();
        resolved.members = found
            .into_iter()
            .map(|(name, repository)| crate::settings::Member { name, repository })
            .collect();
        let _ = self.stack.set(resolved);
        Ok(())
    }

    /// The registry of each service of a release (`[target] names`), in order: its own
    /// repository (`[target.repositories]`) or `[registry] repository`. One target: its registry.
    pub fn registries(&self) -> anyhow::Result<Vec<std::sync::Arc<dyn Registry>>> {
        let project = self.project()?;
        let target = self.target().ok();
        let members = target.map(|t| t.members.as_slice()).unwrap_or_default();
        if members.is_empty() {
            return Ok(vec![self.registry()?.into()]);
        }
        let cache = Arc::new(InfoCache::load(&self.settings.cache_dir));
        members
            .iter()
            .map(|m| {
                let mut settings = project.registry.clone();
                if let Some(r) = &m.repository {
                    settings.repository = r.clone();
                }
                Ok(registry::open(&settings, cache.clone())?.into())
            })
            .collect()
    }

    pub fn target(&self) -> anyhow::Result<&TargetSettings> {
        if let Some(t) = self.stack.get() {
            return Ok(t);
        }
        let project = self.project()?;
        project.target.as_ref().with_context(|| {
            format!(
                "find [target] in {}: this command needs to know what to deploy (kind and name)",
                project.config_path.display()
            )
        })
    }

    /// The journal of the target (or of the repository, for a config without `[target]`). The
    /// first time a target's journal is opened, the records of the old shared journal that
    /// belong to it are taken over.
    pub fn journal(&self) -> anyhow::Result<Journal> {
        let project = self.project()?;
        let Ok(t) = self.target() else {
            return Ok(Journal::new(&project.state_dir));
        };
        let me = t.display();
        let meta = TargetMeta {
            target: me.clone(),
            engine: t.engine_id.clone(),
            repository: project.registry.display(),
            environment: t.environment.clone(),
        };
        if let Some(dir) = self.remote_state()? {
            return Ok(Journal::remote(dir, meta));
        }
        let journal = Journal::for_target(&project.state_dir, meta);
        let legacy = project.legacy_state_dir.join("history.jsonl");
        let taken = journal.adopt_legacy(&legacy, |r| r.target.as_deref().is_none_or(|x| x == me))?;
        if taken > 0 {
            tracing::info!("took {taken} records of {me} from {}", legacy.display());
        }
        Ok(journal)
    }

    /// The state lock for a command that changes something; none for a dry run. A remote
    /// target's lock is taken on its host.
    pub fn lock_unless(&self, dry_run: bool, command: &str) -> anyhow::Result<Option<TargetLock>> {
        if dry_run {
            return Ok(None);
        }
        if let Some(dir) = self.remote_state()? {
            if let Some(ssh) = self.ssh()? {
                ssh.wire().phase("lock");
            }
            return Ok(Some(TargetLock::Remote(dir.lock(command)?)));
        }
        Ok(Some(TargetLock::Local(state::lock(
            &self.project()?.state_dir,
            command,
        )?)))
    }

    /// Who holds the target's lock now, if anyone (on the host, for a remote target).
    pub fn lock_holder(&self) -> anyhow::Result<Option<state::Holder>> {
        if let Some(dir) = self.remote_state()? {
            return Ok(dir.holder());
        }
        Ok(state::holder(&self.project()?.state_dir))
    }

    /// The target's hosts, connected: one (the engine of `--host`, `[target] host`, the
    /// environment or the local socket), or every host of `[target] hosts`. A host is a fleet of
    /// one. With `lock`, every host's lock is taken for that command before anything changes,
    /// all at once, the first host in one fixed order deciding between two runs
    /// (`ops::fleet::lock_all`: the run refused there gives back whatever it took; the one
    /// holding it waits at most a moment for the others). A fleet's host that cannot be reached
    /// refuses the run, naming it, unless `skip` is `Some(true)` (then it is listed as skipped;
    /// `None`: the command has no `--skip-unreachable`).
    pub async fn hosts(&self, lock: Option<&str>, skip: Option<bool>) -> anyhow::Result<(Vec<Host>, Vec<String>)> {
        if !self.is_fleet() {
            let journal = self.journal()?;
            // The gate a remote swap goes through opens with the lock, so it is open by the swap.
            let gate = lock.and_then(|_| self.open_gate_early());
            // The lock is asked for first: for a remote target it travels while the engine
            // connection is made.
            let held = match lock {
                Some(command) => self.lock_unless(false, command)?,
                None => None,
            };
            let engine = self.engine().await?;
            let remote = self.remote_state()?;
            if let Some(dir) = &remote {
                engine.probe_from_host(dir.shell.prober());
            }
            let host = Host::new(
                engine.host().to_string(),
                engine,
                journal,
                remote,
                self.project()?.state_dir.clone(),
            );
            if let Some(gate) = gate {
                host.give_gate(gate);
            }
            return Ok((vec![host.holding(held)], Vec::new()));
        }
        let (mut hosts, skipped) = fleet::reachable_hosts(self, fleet::reach_all(self).await?, skip)?;
        // Each host's swap gate opens now, so its channel and programs start while the locks are
        // taken (for a deploy or rollback of containers; only where a host is across a network).
        if lock.is_some() && self.lock_ahead.is_some() && !self.is_swarm() {
            for h in &hosts {
                h.ready_gate();
            }
        }
        if let Some(command) = lock {
            crate::ops::fleet::lock_all(&mut hosts, &fleet_lock_command(command))?;
        }
        Ok((hosts, skipped))
    }

    /// For a deploy or rollback of containers on one remote host that was across a network last
    /// time (or never measured): the gate of its swap (`ops::fleet::Host::ready_gate`), opened
    /// now so that its channel and programs start in the lock's round trips, not the swap's.
    fn open_gate_early(&self) -> Option<crate::adapters::ssh::RemoteChannel> {
        self.lock_ahead.as_ref()?;
        if self.is_swarm() {
            return None;
        }
        let dest = self.ssh_destination()?;
        if ssh::remembered_far(&self.settings.cache_dir, dest) == Some(false) {
            return None;
        }
        let dir = self.remote_state().ok()??;
        dir.ssh().open_channel(&dir.gate_command()).ok()
    }

    /// Whether the target is a fleet (two hosts or more in this run).
    pub fn is_fleet(&self) -> bool {
        self.project()
            .ok()
            .and_then(|p| p.target.as_ref())
            .is_some_and(|t| !t.hosts.is_empty())
    }

    /// Whether the target is a Swarm service.
    pub fn is_swarm(&self) -> bool {
        self.target()
            .is_ok_and(|t| t.kind == crate::settings::TargetKind::Swarm)
    }

    pub async fn engine(&self) -> anyhow::Result<Engine> {
        if self.is_fleet() {
            // Commands on a fleet take their hosts from `hosts()`.
            anyhow::bail!(
                "pick the engine of a target on {} hosts: this command acts on each host (`App::hosts`); \
                 this is a bug, please report it",
                self.target()?.hosts.len()
            );
        }
        let address = self.settings.project().ok().and_then(|p| p.engine.clone());
        match address {
            Some(EngineAddress::Ssh(dest)) => {
                let ssh = self.ssh()?.expect("an ssh:// engine has a session");
                let ahead = self.engine_ahead.lock().ok().and_then(|mut a| a.take());
                let engine = Engine::connect_ssh(ssh.clone(), self.settings.ssh.connect_timeout, ahead)
                    .await?
                    .keep_configs_in(crate::adapters::docker::ahead::ConfigCache::new(
                        self.settings.cache_dir.join("image-configs"),
                    ));
                // Remembered for the next run's connection to forward from the start.
                if let Some(path) = ssh.engine_path()
                    && !ssh.engine_known_ahead()
                {
                    ssh::remember_engine(&self.settings.cache_dir, &dest, path);
                }
                Ok(engine)
            }
            Some(EngineAddress::Tcp { host, port }) if let Some(files) = self.project()?.engine_tls.as_ref() => {
                Ok(Engine::connect_tls(&host, port, files, self.settings.ssh.connect_timeout).await?)
            }
            Some(other) => {
                if let Some(warning) = other.plain_tcp_warning(false) {
                    self.printer.note(warning);
                }
                Ok(Engine::connect(Some(&other.to_string())).await?)
            }
            None => Ok(Engine::connect(None).await?),
        }
    }

    /// The SSH connection to the target's host, for an `ssh://` engine: opened once per run (or
    /// taken from `connect_early`); a failure to open it is the answer for the rest of the run.
    fn ssh(&self) -> anyhow::Result<Option<Arc<SshSession>>> {
        let Some(dest) = self.ssh_destination() else {
            return Ok(None);
        };
        let session = self.ssh.get_or_init(|| {
            let early = self.opening.lock().ok().and_then(|mut o| o.take());
            let session = match early {
                Some(handle) => handle
                    .join()
                    .unwrap_or_else(|_| Err(SshError::NoClient("the ssh connection thread panicked".into()))),
                None => self.opener(dest, self.locks_ahead(None))(),
            };
            // The engine is reached while the session starts (the lock waits for that anyway).
            // So are the plan's reads.
            if let (Ok(s), Ok(mut ahead)) = (&session, self.engine_ahead.lock()) {
                *ahead = Engine::negotiate_ahead(s, &self.read_ahead());
            }
            session
        });
        Ok(Some(session.clone()?))
    }

    /// What a command's plan will read of the target's engine (`deployed::read_ahead`); nothing
    /// without a target.
    fn read_ahead(&self) -> crate::adapters::docker::ahead::ReadAhead {
        match (self.project(), self.target()) {
            (Ok(project), Ok(target)) => crate::ops::deployed::read_ahead(target, &project.registry.display()),
            _ => Default::default(),
        }
    }

    fn ssh_destination(&self) -> Option<&SshDestination> {
        let project = self.settings.project().ok()?;
        match &project.engine {
            Some(EngineAddress::Ssh(dest)) => Some(dest),
            _ => None,
        }
    }

    /// Opens the connection to `dest` when called (here or on a thread of its own); its state
    /// shell takes the lock of the target in `locking` (its remote folder) as it starts, when the
    /// command locks ahead (`lock_ahead`).
    fn opener(
        &self,
        dest: &SshDestination,
        locking: Option<(String, String)>,
    ) -> impl FnOnce() -> Result<Arc<SshSession>, SshError> + Send + use<> {
        let (dest, options, ahead) = (dest.clone(), self.settings.ssh.clone(), self.ahead(dest));
        let locking = locking.map(|(relative, command)| {
            let line = state::remote::shell_command_locking(&relative, &state::remote::holder_json(&command));
            (relative, line)
        });
        move || {
            let line = locking
                .as_ref()
                .map_or_else(state::remote::shell_command, |(_, l)| l.clone());
            let session = SshSession::open(&dest, &options, &line, &ahead)?;
            if let Some((relative, _)) = &locking {
                session.set_locked_ahead(relative);
            }
            Ok(session)
        }
    }

    /// The remote folder of the target whose lock a host's session takes as it starts, and the
    /// command its holder names: the single host's, or a fleet host's, named as `App::hosts`
    /// names a fleet's locks (which host decides between two runs is `fleet::lock_all`'s rule).
    fn locks_ahead(&self, host: Option<&crate::settings::FleetHost>) -> Option<(String, String)> {
        let command = self.lock_ahead.clone()?;
        match host {
            None => Some((self.project().ok()?.remote_state.clone()?, command)),
            Some(host) => Some((host.remote_state.clone()?, fleet_lock_command(&command))),
        }
    }

    /// What the connection to `dest` can forward from the start: the engine socket it named last
    /// time, and the probe of `[health] http`.
    fn ahead(&self, dest: &SshDestination) -> Ahead {
        let probe = self.project().ok().and_then(|p| p.health.http.as_deref());
        Ahead {
            engine_socket: ssh::remembered_engine(&self.settings.cache_dir, dest),
            probes: probe
                .and_then(crate::adapters::docker::probe_forward)
                .into_iter()
                .collect(),
        }
    }

    /// Starts connecting to the target's host (or every `ssh://` host of a fleet, each on a thread
    /// of its own) in the background, so the logins overlap whatever the command does before it
    /// needs the hosts.
    fn connect_early(&self) {
        if self.is_fleet() {
            let Ok(target) = self.target() else { return };
            let mut opening = std::collections::HashMap::new();
            for h in &target.hosts {
                if let EngineAddress::Ssh(dest) = &h.engine {
                    opening.insert(
                        h.address.clone(),
                        std::thread::spawn(self.opener(dest, self.locks_ahead(Some(h)))),
                    );
                }
            }
            if let Ok(mut o) = self.fleet_opening.lock() {
                *o = opening;
            }
            return;
        }
        let Some(dest) = self.ssh_destination() else {
            return;
        };
        let handle = std::thread::spawn(self.opener(dest, self.locks_ahead(None)));
        if let Ok(mut o) = self.opening.lock() {
            *o = Some(handle);
        }
    }

    /// The connection to fleet host `host` (an `ssh://` one): the one opened since the command
    /// started, else one opened now, with the same forwards made ahead (the engine socket it
    /// named last time, the probe) as a single host's.
    pub(crate) fn fleet_session(
        &self,
        host: &crate::settings::FleetHost,
    ) -> Option<impl FnOnce() -> Result<Arc<SshSession>, SshError> + Send + use<>> {
        let EngineAddress::Ssh(dest) = &host.engine else {
            return None;
        };
        let early = self.fleet_opening.lock().ok().and_then(|mut o| o.remove(&host.address));
        let now = self.opener(dest, self.locks_ahead(Some(host)));
        Some(move || match early {
            Some(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(SshError::NoClient("the ssh connection thread panicked".into()))),
            None => now(),
        })
    }

    /// The target's state folder on its host, for a target on an `ssh://` engine.
    fn remote_state(&self) -> anyhow::Result<Option<RemoteDir>> {
        let Some(relative) = self.project()?.remote_state.clone() else {
            return Ok(None);
        };
        let ssh = self.ssh()?.expect("a remote target has an ssh:// engine");
        let shell = self.state_shell.get_or_init(|| StateShell::new(ssh)).clone();
        Ok(Some(RemoteDir::new(shell, relative)))
    }
}

impl Drop for App<'_> {
    /// A connection opened early but never used (the command ended before it needed the host)
    /// is waited for and closed, so it leaves nothing behind.
    fn drop(&mut self) {
        if let Some(handle) = self.opening.get_mut().ok().and_then(Option::take) {
            drop(handle.join());
        }
        // Whether the host was across a network, for the next run's gate (`open_gate_early`).
        if let (Some(Ok(session)), Some(dest)) = (self.ssh.get(), self.ssh_destination())
            && let Some(quickest) = session.wire().quickest()
        {
            ssh::remember_far(&self.settings.cache_dir, dest, quickest >= crate::adapters::wire::FAR);
        }
        if let Ok(opening) = self.fleet_opening.get_mut() {
            for (_, handle) in opening.drain() {
                drop(handle.join());
            }
        }
    }
}

/// What a fleet's lock names as its holder's command.
fn fleet_lock_command(command: &str) -> String {
    format!("{command} (fleet)")
}

/// A command's report on every host of a fleet: each host's own report under its name.
#[derive(Debug, serde::Serialize)]
pub struct PerHost<R> {
    pub target: String,
    pub hosts: Vec<OnHost<R>>,
}

#[derive(Debug, serde::Serialize)]
pub struct OnHost<R> {
    pub host: String,
    #[serde(flatten)]
    pub report: R,
}

impl<R: crate::output::Report> crate::output::Report for PerHost<R> {
    fn human(&self) -> String {
        self.hosts
            .iter()
            .map(|h| format!("== {} ==\n{}", h.host, h.report.human()))
            .collect::<Vec<_>>()
            .join("\n\n")
    }
}

impl App<'_> {
    /// A progress line: a spinner on one host, plain lines when several hosts report at once.
    pub fn progress(&self, msg: &str) -> crate::output::Progress {
        if self.is_fleet() {
            crate::output::Progress::plain("", msg)
        } else {
            crate::output::Progress::new(&self.printer, msg)
        }
    }

    /// Runs `f` on every host at once; each host's address and what came of it, in order.
    pub async fn on_each<R>(
        &self,
        hosts: &[Host],
        f: impl AsyncFn(&Host) -> anyhow::Result<R>,
    ) -> Vec<(String, anyhow::Result<R>)> {
        let f = &f;
        futures::future::join_all(hosts.iter().map(|h| async move { (h.address.clone(), f(h).await) })).await
    }

    /// Prints what a command did on each host: one host's report as it is, several under their
    /// hosts' names. A host where the command failed fails the run, named, after the others'
    /// reports are printed.
    pub fn report_per_host<R: crate::output::Report>(
        &self,
        results: Vec<(String, anyhow::Result<R>)>,
    ) -> anyhow::Result<()> {
        if !self.is_fleet() {
            let (_, only) = results.into_iter().next().context("reach the target's host")?;
            return self.printer.report(&only?);
        }
        let mut hosts = Vec::new();
        let mut failed = None;
        for (host, result) in results {
            match result {
                Ok(report) => hosts.push(OnHost { host, report }),
                Err(e) if failed.is_none() => failed = Some(e.context(format!("finish on {host}"))),
                Err(e) => self.printer.note(format!("error on {host}: {e:#}")),
            }
        }
        self.printer.report(&PerHost {
            target: self.target()?.display(),
            hosts,
        })?;
        failed.map_or(Ok(()), Err)
    }
}

impl<'a> App<'a> {
    pub fn new(settings: &'a Settings) -> Self {
        App {
            settings,
            printer: Printer::new(settings.output, settings.interactive),
            ssh: OnceLock::new(),
            opening: Mutex::new(None),
            state_shell: OnceLock::new(),
            engine_ahead: Mutex::new(None),
            fleet_opening: Mutex::default(),
            stack: OnceLock::new(),
            lock_ahead: None,
        }
    }

    /// The same app, taking the lock for `command` as a remote host's session starts.
    fn locking_ahead(mut self, command: Option<String>) -> Self {
        self.lock_ahead = command;
        self
    }
}

pub async fn run(command: Command, settings: &Settings) -> anyhow::Result<()> {
    // A deploy or rollback locks its target first: on a remote host, as the session starts. Not
    // a rollback that lets the user pick first (the lock would wait on the user).
    let picks = !settings.yes && settings.interactive && !matches!(settings.output, crate::cli::OutputFormat::Json);
    let lock_ahead = match &command {
        Command::Deploy(a) if !a.common.dry_run => Some(deploy::lock_command(
            crate::domain::history::Operation::Deploy,
            &a.selector,
        )),
        Command::Rollback(a) if !a.common.dry_run && (a.selector.is_some() || !picks) => Some(deploy::lock_command(
            crate::domain::history::Operation::Rollback,
            a.selector.as_deref().unwrap_or("previous"),
        )),
        _ => None,
    };
    let app = App::new(settings).locking_ahead(lock_ahead);
    // Every command but these acts on the target, and so on its host.
    if !matches!(
        command,
        Command::Policy(_) | Command::Completions { .. } | Command::Man | Command::Build(_)
    ) {
        app.connect_early();
        // A Swarm stack named alone: its services, found on the manager before anything else.
        app.resolve_stack().await?;
    }
    match command {
        Command::Versions(args) => versions::run(&app, &args).await,
        Command::Status if app.is_fleet() => fleet::status(&app).await,
        // A Swarm release is shown per service, as a release of containers is.
        Command::Status if app.is_swarm() && !app.target().is_ok_and(TargetSettings::is_release) => {
            swarm::status(&app).await
        }
        Command::Status => status::run(&app).await,
        Command::Deploy(args) => deploy::run_deploy(&app, &args).await,
        Command::Rollback(args) => deploy::run_rollback(&app, &args).await,
        Command::MarkGood(args) => mark_good::run(&app, &args).await,
        Command::Emergency(args) if app.is_swarm() => swarm::emergency(&app, &args).await,
        Command::Emergency(args) => fleet_emergency::run(&app, &args).await,
        Command::History(args) if app.is_fleet() => fleet_state::history(&app, &args).await,
        Command::History(args) => history::run(&app, &args).await,
        Command::Validate if app.is_fleet() => fleet_state::validate(&app).await,
        Command::Validate => validate::run(&app).await,
        Command::Warm(args) => warm::run(&app, &args).await,
        Command::Drill(args) => drill::run(&app, &args).await,
        Command::Doctor => doctor::run(&app).await,
        Command::Prune(args) => prune::run(&app, &args).await,
        Command::Policy(cmd) => policy::run(&app, cmd).await,
        Command::Build(args) => build::run(&app, &args).await,
        Command::Completions { shell } => completions::run(shell),
        Command::Man => completions::man(),
    }
}
