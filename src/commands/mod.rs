//! Commands: one file per subcommand, each a plain async function taking the resolved settings
//! and its own arguments. They wire adapters to domain decisions and hand a report to the printer.

mod build;
pub mod completions;
mod deploy;
mod emergency;
mod history;
mod mark_good;
mod policy;
mod prune;
mod status;
mod validate;
mod versions;

use std::sync::Arc;

use anyhow::Context as _;

use crate::adapters::docker::Engine;
use crate::adapters::registry::{self, Registry, cache::InfoCache};
use crate::adapters::state::{self, Journal, TargetMeta};
use crate::cli::Command;
use crate::output::Printer;
use crate::settings::{Project, Settings, TargetSettings};

/// What every command gets: the settings and the printer, plus helpers to open adapters.
pub struct App<'a> {
    pub settings: &'a Settings,
    pub printer: Printer,
}

impl App<'_> {
    pub fn project(&self) -> anyhow::Result<&Project> {
        Ok(self.settings.project()?)
    }

    pub fn registry(&self) -> anyhow::Result<Box<dyn Registry>> {
        let project = self.project()?;
        let cache = Arc::new(InfoCache::load(&self.settings.cache_dir));
        Ok(registry::open(&project.registry, cache)?)
    }

    pub fn target(&self) -> anyhow::Result<&TargetSettings> {
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
        let Some(t) = project.target.as_ref() else {
            return Ok(Journal::new(&project.state_dir));
        };
        let me = t.display();
        let journal = Journal::for_target(
            &project.state_dir,
            TargetMeta {
                target: me.clone(),
                engine: t.engine_id.clone(),
                repository: project.registry.display(),
                environment: t.environment.clone(),
            },
        );
        let legacy = project.legacy_state_dir.join("history.jsonl");
        let taken = journal.adopt_legacy(&legacy, |r| r.target.as_deref().is_none_or(|x| x == me))?;
        if taken > 0 {
            tracing::info!("took {taken} records of {me} from {}", legacy.display());
        }
        Ok(journal)
    }

    /// The state lock for a command that changes something; none for a dry run.
    pub fn lock_unless(&self, dry_run: bool, command: &str) -> anyhow::Result<Option<state::Lock>> {
        if dry_run {
            return Ok(None);
        }
        Ok(Some(state::lock(&self.project()?.state_dir, command)?))
    }

    pub async fn engine(&self) -> anyhow::Result<Engine> {
        let host = self.target().ok().and_then(|t| t.host.clone());
        Ok(Engine::connect(host.as_deref()).await?)
    }
}

pub async fn run(command: Command, settings: &Settings) -> anyhow::Result<()> {
    let app = App {
        settings,
        printer: Printer::new(settings.output, settings.interactive),
    };
    match command {
        Command::Versions(args) => versions::run(&app, &args).await,
        Command::Status => status::run(&app).await,
        Command::Deploy(args) => deploy::run_deploy(&app, &args).await,
        Command::Rollback(args) => deploy::run_rollback(&app, &args).await,
        Command::MarkGood(args) => mark_good::run(&app, &args).await,
        Command::Emergency(args) => emergency::run(&app, &args).await,
        Command::History(args) => history::run(&app, &args).await,
        Command::Validate => validate::run(&app).await,
        Command::Prune(args) => prune::run(&app, &args).await,
        Command::Policy(cmd) => policy::run(&app, cmd).await,
        Command::Build(args) => build::run(&app, &args).await,
        Command::Completions { shell } => completions::run(shell),
        Command::Man => completions::man(),
    }
}
