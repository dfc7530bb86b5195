//! `backtrack completions SHELL`: shell completion scripts.

use clap::CommandFactory;

pub fn run(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut cmd = crate::cli::Cli::command();
    clap_complete::generate(shell, &mut cmd, "backtrack", &mut std::io::stdout());
    Ok(())
}
