//! `backtrack completions SHELL` and dynamic completion. The script a shell sources calls
//! backtrack back (with `COMPLETE=<shell>` in the environment) for each completion, so
//! `backtrack deploy <TAB>` offers the selector words and the version tags of the configured
//! registry (config found as usual: `$BACKTRACK_CONFIG`, else the nearest `backtrack.toml`).

use std::time::Duration;

use clap::CommandFactory;
use clap_complete::engine::{ArgValueCandidates, CompletionCandidate};

/// The variable that turns a run of backtrack into a completion request.
const COMPLETE_VAR: &str = "COMPLETE";

/// Answers a completion request and exits, if this run is one; otherwise returns at once.
pub fn answer_if_asked() {
    clap_complete::CompleteEnv::with_factory(command_with_completers)
        .var(COMPLETE_VAR)
        .complete();
}

/// The CLI with completers on the arguments that take a version selector.
pub fn command_with_completers() -> clap::Command {
    let versions = || ArgValueCandidates::new(selector_candidates);
    crate::cli::Cli::command()
        .mut_subcommand("deploy", |c| c.mut_arg("selector", |a| a.add(versions())))
        .mut_subcommand("rollback", |c| c.mut_arg("selector", |a| a.add(versions())))
        .mut_subcommand("mark-good", |c| c.mut_arg("selector", |a| a.add(versions())))
        .mut_subcommand("drill", |c| c.mut_arg("selectors", |a| a.add(versions())))
}

/// The selector words, then the registry's version tags (highest first), when the config and
/// the registry answer within a couple of seconds; a completion never hangs the shell.
fn selector_candidates() -> Vec<CompletionCandidate> {
    let mut out: Vec<CompletionCandidate> = [
        ("previous", "the version before the current one (undo)"),
        ("lkg", "what last_known_good points at"),
        ("last-known-good", "what last_known_good points at"),
        ("latest-version", "the highest released version"),
    ]
    .into_iter()
    .map(|(v, help)| CompletionCandidate::new(v).help(Some(help.into())))
    .collect();
    out.extend(version_tags().into_iter().map(CompletionCandidate::new));
    out
}

fn version_tags() -> Vec<String> {
    let global = crate::cli::GlobalArgs {
        config: None,
        output: crate::cli::OutputFormat::Table,
        yes: true,
        verbose: 0,
        state_dir: None,
        host: None,
        hosts: None,
    };
    let settings = crate::settings::Settings::resolve(&global);
    let Ok(project) = settings.project() else {
        return Vec::new();
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return Vec::new();
    };
    runtime.block_on(async {
        let cache = std::sync::Arc::new(crate::adapters::registry::cache::InfoCache::load(&settings.cache_dir));
        let Ok(registry) = crate::adapters::registry::open(&project.registry, cache) else {
            return Vec::new();
        };
        match tokio::time::timeout(
            Duration::from_secs(3),
            crate::ops::catalog::Catalog::load(registry.as_ref()),
        )
        .await
        {
            Ok(Ok(catalog)) => catalog.versions.iter().map(|v| v.tag.clone()).collect(),
            _ => Vec::new(),
        }
    })
}

/// Prints the registration script for `shell` (what `COMPLETE=<shell> backtrack` prints).
pub fn run(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let out = std::process::Command::new(&exe)
        .env(COMPLETE_VAR, shell.to_string())
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "write the {shell} completion script: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    write_out(&out.stdout)
}

/// Writes to stdout; a closed stdout (`| head`) is not an error.
fn write_out(bytes: &[u8]) -> anyhow::Result<()> {
    match std::io::Write::write_all(&mut std::io::stdout(), bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// `backtrack man`: the manual page, generated from the same definitions as `--help`.
pub fn man() -> anyhow::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(crate::cli::Cli::command()).render(&mut page)?;
    write_out(&page)
}
