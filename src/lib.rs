//! backtrack rolls a Docker deployment back (or forward) in seconds by re-pointing it at an image
//! that is already in the registry. See ARCHITECTURE.md for the map of this crate.

pub mod adapters;
pub mod cli;
pub mod commands;
pub mod domain;
pub mod error;
pub mod ops;
pub mod output;
pub mod settings;

use clap::Parser;

/// Parses arguments, runs the command, prints an error if there is one, and returns the exit code.
pub fn main_entry() -> i32 {
    // A shell asking for completions (`COMPLETE=bash backtrack -- ...`) is answered here.
    commands::completions::answer_if_asked();
    let cli = match cli::Cli::try_parse().and_then(refuse_meaningless_flags) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { error::USAGE } else { error::OK };
            let _ = e.print();
            return code;
        }
    };
    init_logging(cli.global.verbose);
    let settings = settings::Settings::resolve(&cli.global);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return error::ERROR;
        }
    };
    let result = runtime.block_on(commands::run(cli.command, &settings));
    // Do not wait for stray blocking tasks (credential helpers) on the way out.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => error::OK,
        Err(err) => {
            eprintln!("error: {}", error::render(&err));
            if let Some(hint) = error::hint(&err) {
                eprintln!("hint: {hint}");
            }
            error::exit_code(&err)
        }
    }
}

/// Flags that parse but mean nothing for the command are usage errors, not silently ignored.
fn refuse_meaningless_flags(cli: cli::Cli) -> Result<cli::Cli, clap::Error> {
    use clap::CommandFactory;
    if cli.global.output == cli::OutputFormat::Json && matches!(cli.command, cli::Command::Completions { .. }) {
        return Err(cli::Cli::command().error(
            clap::error::ErrorKind::ArgumentConflict,
            "--output json does not apply to `completions`: it prints a shell script",
        ));
    }
    Ok(cli)
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,aws_config=error",
        1 => "backtrack=info",
        _ => "backtrack=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BACKTRACK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}
