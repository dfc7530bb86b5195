//! Command-line types: what the user can type, and nothing else. Parsing only (clap derive);
//! `settings` turns these raw arguments into resolved settings, and `commands` acts on them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `backtrack --version`: the crate version and the commit it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("BACKTRACK_COMMIT"), ")");

#[derive(Debug, Parser)]
#[command(
    name = "backtrack",
    version = VERSION,
    about = "Roll a Docker deployment back (or forward) in seconds to an image already in the registry",
    long_about = None,
    after_help = "Exit codes: 0 ok, 1 error, 2 usage or config, 3 registry, 4 no such version, 5 locked, \
                  6 validation failed (previous version restored), 7 validation failed and restoring failed, \
                  8 partly done, 9 docker engine, 10 remote host (ssh, or TLS to tcp://), 11 a drill candidate would fail, \
                  130 interrupted."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Config file (default: $BACKTRACK_CONFIG, else the nearest backtrack.toml upward).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Answer yes to every prompt (needed for mutating commands without a terminal).
    #[arg(short = 'y', long, global = true)]
    pub yes: bool,
    /// More logging (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Where the journal and lock live (default: $BACKTRACK_STATE_DIR, else the XDG state dir).
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The docker engine for this run, over `[target] host`: ssh://[USER@]HOST[:PORT], tcp://, unix://.
    #[arg(long, global = true, value_name = "ADDRESS")]
    pub host: Option<String>,
    /// With [target] hosts: act on these hosts only (addresses, or the host names in them).
    #[arg(long, global = true, value_name = "NAME,...", value_delimiter = ',')]
    pub hosts: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the versions in the registry, highest first.
    Versions(VersionsArgs),
    /// Show what the target runs now.
    Status,
    /// Put the target on a version: pull by digest, swap, validate, revert on failure.
    Deploy(SwapArgs),
    /// Go back to an earlier version (default: previous).
    Rollback(RollbackArgs),
    /// Point last_known_good at a version (default: the deployed one).
    MarkGood(MarkGoodArgs),
    /// Stop the target and run the last known good image directly.
    Emergency(EmergencyArgs),
    /// Show the journal of operations.
    History(HistoryArgs),
    /// Run the health checks against what is deployed now.
    Validate,
    /// Pull the rollback candidates (previous, last_known_good) by digest onto the target's host
    /// now, so a rollback never waits for a pull.
    Warm(WarmArgs),
    /// Rehearse rollbacks on a scratch copy of the target; production is not touched.
    Drill(DrillArgs),
    /// Check everything a rollback depends on, one line per check, with the fix for each failure.
    Doctor,
    /// Apply a retention policy to the registry.
    Prune(PruneArgs),
    /// Build the current checkout as a versioned image (and push it with --push).
    Build(BuildArgs),
    /// Work with retention policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Print the shell completion script (it completes version tags from the registry too).
    ///
    /// bash: `source <(backtrack completions bash)`; zsh: `source <(backtrack completions zsh)`;
    /// fish: `backtrack completions fish | source`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `backtrack man | man -l -`.
    Man,
}

#[derive(Debug, Args)]
pub struct VersionsArgs {
    /// Every tag: add tags that are not versions, and no default limit.
    #[arg(long)]
    pub all: bool,
    /// Show at most N versions (0: no limit) [default: 20, or none with --all].
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Ask the registry for every version tag's digest instead of trusting the cache.
    #[arg(long)]
    pub refresh: bool,
}

#[derive(Debug, Args)]
pub struct SwapArgs {
    /// The version to go to: v1.4.2, ^1.3, previous, lkg, latest-version, sha256:..., a commit.
    pub selector: String,
    #[command(flatten)]
    pub common: SwapCommon,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The version to go to [default: previous; a picker on a terminal].
    pub selector: Option<String>,
    #[command(flatten)]
    pub common: SwapCommon,
}

#[derive(Debug, Args)]
pub struct SwapCommon {
    /// Print the plan (and the docker commands it stands for); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Why, for the journal.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Mark the version last_known_good once it has validated.
    #[arg(long)]
    pub mark_good: bool,
    /// With --mark-good: it must also stay healthy this long first (e.g. 2m).
    #[arg(long, value_name = "DURATION", requires = "mark_good", value_parser = crate::domain::duration::wait_flag)]
    pub soak: Option<String>,
    /// If the version's image is gone from the registry but its Git tag exists, build it from Git,
    /// push it, then deploy it (without this, backtrack asks, or fails without a terminal).
    #[arg(long)]
    pub rebuild: bool,
    /// Skip the [hooks] of the config for this run (recorded in the journal).
    #[arg(long)]
    pub no_hooks: bool,
    /// Do not pull the new rollback candidates after a validated swap.
    #[arg(long)]
    pub no_warm: bool,
    /// Go below the running image's io.backtrack.min-rollback floor (needs --reason).
    #[arg(long, requires = "reason")]
    pub force: bool,
    /// Many hosts: parallel, rolling or canary (default: [target] strategy, else rolling for
    /// deploy and parallel for rollback).
    #[arg(long, value_name = "STRATEGY", value_parser = clap::value_parser!(crate::domain::fleet::Strategy))]
    pub strategy: Option<crate::domain::fleet::Strategy>,
    /// Many hosts: go on without the hosts that cannot be reached at the start (recorded in the
    /// journal of the others).
    #[arg(long)]
    pub skip_unreachable: bool,
    /// Swarm: how many tasks are updated at once (default: the service's own update config).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub parallelism: Option<u64>,
    /// start-first (the new container, or Swarm task, starts beside the old one, which stops once
    /// the new one is healthy), stop-first, or auto (default: [target] order, else auto: start-first
    /// for containers that publish no host port on a user-defined network; for Swarm, the
    /// service's own update config).
    #[arg(long, value_name = "ORDER", value_parser = clap::value_parser!(crate::domain::order::Order))]
    pub order: Option<crate::domain::order::Order>,
    /// Recreate the target with the config (env, command, ports, mounts, ...) the version last ran
    /// with here, as the journal recorded it (default for rollback: [target] restore_config).
    #[arg(long, conflicts_with = "keep_config")]
    pub restore_config: bool,
    /// Keep today's config whatever [target] restore_config says (the plan still lists what differs
    /// from what the version ran with).
    #[arg(long)]
    pub keep_config: bool,
}

#[derive(Debug, Args)]
pub struct MarkGoodArgs {
    /// The version to mark [default: the deployed one].
    pub selector: Option<String>,
    /// Print which version would be marked; move nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Why, for the journal.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Mark it even though its last validation failed.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct EmergencyArgs {
    /// Print what would be stopped and run (and the docker commands it stands for); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Extra environment for the emergency container (KEY=VALUE lines), like `docker run --env-file`.
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<std::path::PathBuf>,
    /// Run it even when last known good is below the running image's io.backtrack.min-rollback
    /// floor (needs --reason).
    #[arg(long, requires = "reason")]
    pub force: bool,
    /// Why, for the journal.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Many hosts: go on without the hosts that cannot be reached at the start (recorded in the
    /// journal of the others).
    #[arg(long)]
    pub skip_unreachable: bool,
    /// Run last known good with the config it last ran with here (as the journal recorded it)
    /// instead of today's.
    #[arg(long)]
    pub restore_config: bool,
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// The candidates to rehearse [default: previous last-known-good].
    #[arg(value_name = "SELECTOR")]
    pub selectors: Vec<String>,
    /// Mount production's named volumes (read-only) instead of empty ones.
    #[arg(long)]
    pub with_volumes: bool,
    /// Rehearse with the config each candidate last ran with, as `rollback --restore-config` would
    /// (default: [target] restore_config).
    #[arg(long, conflicts_with = "keep_config")]
    pub restore_config: bool,
    /// Rehearse with today's config whatever [target] restore_config says.
    #[arg(long)]
    pub keep_config: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The version to tag [default: `git describe --tags`].
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
    /// Push the image to the registry after building it.
    #[arg(long)]
    pub push: bool,
    /// Build even though the checkout has uncommitted changes.
    #[arg(long)]
    pub allow_dirty: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Show the last N operations (0: all).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
    #[command(subcommand)]
    pub show: Option<HistoryCommand>,
}

#[derive(Debug, Subcommand)]
pub enum HistoryCommand {
    /// One operation in full (who, why, digests, containers, validation, hooks, notifications,
    /// the failed container's last lines), ready to paste into an incident write-up.
    Show {
        /// The operation's number, as the # column of `backtrack history` shows it.
        n: usize,
    },
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Policy file [default: [retention] policy of the config].
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Print every image with KEEP or DELETE and why; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Every reason for each image, one per line (default: the deciding reason, and how many more).
    #[arg(long)]
    pub explain: bool,
    /// Remove this repository's images from the target's host instead of the registry, keeping
    /// what runs, what is set aside, the rollback candidates, every last_known_good and the last
    /// [retention] local_keep versions deployed.
    #[arg(long)]
    pub local: bool,
}

#[derive(Debug, Args)]
pub struct WarmArgs {
    /// The versions to warm [default: previous and last-known-good].
    pub selectors: Vec<String>,
    /// How long one pull may take.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = crate::domain::duration::wait_flag)]
    pub timeout: String,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file without touching anything.
    Check {
        /// The retention policy (TOML) to check.
        file: PathBuf,
    },
    /// Convert an ECR lifecycle policy (JSON) into a backtrack policy (TOML on stdout).
    ImportEcr {
        /// The ECR lifecycle policy, as `aws ecr get-lifecycle-policy --query lifecyclePolicyText`
        /// prints it.
        file: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every argument of every subcommand (and every subcommand) says what it is for in `--help`.
    #[test]
    fn every_subcommand_and_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if arg.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none_or(|h| h.to_string().trim().is_empty()) {
                    missing.push(sub_path.clone());
                }
                walk(sub, &sub_path, missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "backtrack", &mut missing);
        assert_eq!(missing, Vec::<String>::new(), "arguments or subcommands without help");
    }
}
