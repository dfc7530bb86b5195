//! `backtrack policy check FILE` (validate a policy without touching anything) and
//! `backtrack policy import-ecr FILE.json` (turn an ECR lifecycle policy into ours, saying what
//! could not be expressed). Both only read the file and print: the conversion is
//! `domain::ecr_policy`.

use std::path::Path;

use serde::Serialize;

use super::App;
use crate::cli::PolicyCommand;
use crate::domain::ecr_policy::{Imported, convert_ecr};
use crate::output::Report;
use crate::settings::FileError;

pub async fn run(app: &App<'_>, cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Check { file } => check(app, &file),
        PolicyCommand::ImportEcr { file } => import_ecr(app, &file),
    }
}

#[derive(Debug, Serialize)]
struct CheckReport {
    file: String,
    valid: bool,
    description: Option<String>,
    rules: Vec<String>,
}

impl Report for CheckReport {
    fn human(&self) -> String {
        let mut out = format!("{}: ok", self.file);
        if let Some(d) = &self.description {
            out.push_str(&format!(" ({d})"));
        }
        for r in &self.rules {
            out.push_str(&format!("\n  {r}"));
        }
        out
    }
}

fn check(app: &App<'_>, file: &Path) -> anyhow::Result<()> {
    let policy = crate::settings::policy::load(file)?;
    app.printer.report(&CheckReport {
        file: file.display().to_string(),
        valid: true,
        description: policy.description.clone(),
        rules: policy.describe(),
    })
}

#[derive(Debug, Serialize)]
struct ImportReport {
    policy: String,
    not_expressed: Vec<String>,
}

impl Report for ImportReport {
    fn human(&self) -> String {
        self.policy.trim_end().to_string()
    }
}

fn import_ecr(app: &App<'_>, file: &Path) -> anyhow::Result<()> {
    let json = std::fs::read_to_string(file).map_err(|source| FileError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    let Imported { policy, notes } = convert_ecr(&json).map_err(|e| FileError::Parse {
        path: file.to_path_buf(),
        line: e.line,
        column: e.column,
        message: e.to_string(),
    })?;
    // The result must itself be a valid policy.
    crate::settings::policy::parse(Path::new("<imported>"), &policy)?;
    for n in &notes {
        app.printer.note(format!("note: {n}"));
    }
    app.printer.report(&ImportReport {
        policy,
        not_expressed: notes,
    })
}
