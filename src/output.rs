//! The one printer: every command's result goes through here, as a table for people or as JSON
//! for scripts (`--output json`), so both are always in sync and tests can snapshot either.
//!
//! **Results go to stdout, everything else (progress, prompts, notes) to stderr**, so
//! `--output json` stays parseable.

use std::io::Write;

use comfy_table::{Cell, ContentArrangement, Table, presets};
use serde::Serialize;

use crate::cli::OutputFormat;

/// A command's result, printable both ways.
pub trait Report: Serialize {
    /// The human rendering (tables and lines), without a trailing newline.
    fn human(&self) -> String;
}

#[derive(Debug, Clone)]
pub struct Printer {
    format: OutputFormat,
    /// Decorate stderr notes (progress bars and the like) only on a terminal.
    pub interactive: bool,
}

impl Printer {
    pub fn new(format: OutputFormat, interactive: bool) -> Self {
        Self {
            format,
            interactive,
        }
    }

    pub fn is_json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    pub fn report<R: Report>(&self, report: &R) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        match self.format {
            OutputFormat::Table => {
                let text = report.human();
                if !text.is_empty() {
                    writeln!(out, "{text}")?;
                }
            }
            OutputFormat::Json => {
                serde_json::to_writer_pretty(&mut out, report)?;
                writeln!(out)?;
            }
        }
        out.flush()?;
        Ok(())
    }

    /// A line for the person watching (stderr), whatever the output format.
    pub fn note(&self, msg: impl AsRef<str>) {
        eprintln!("{}", msg.as_ref());
    }
}

/// A borderless table with upper-case headers, like `docker ps`.
pub fn table<I, S>(headers: I) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(
            headers
                .into_iter()
                .map(|h| Cell::new(h.into().to_uppercase())),
        );
    for col in t.column_iter_mut() {
        col.set_padding((0, 3));
    }
    t
}

/// Renders a table and trims the padding at line ends.
pub fn render_table(t: &Table) -> String {
    t.lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// "3 minutes ago", "2 days ago": how long ago `then` was.
pub fn ago(now: chrono::DateTime<chrono::Utc>, then: chrono::DateTime<chrono::Utc>) -> String {
    let secs = (now - then).num_seconds();
    if secs < 0 {
        return then.format("%Y-%m-%d %H:%M").to_string();
    }
    let (n, unit) = match secs {
        0..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        86_400..=2_591_999 => (secs / 86_400, "day"),
        _ => return then.format("%Y-%m-%d").to_string(),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}
