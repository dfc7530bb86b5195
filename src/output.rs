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
        Self { format, interactive }
    }

    pub fn is_json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// Prints the result. A closed stdout (`| head`) is not an error.
    pub fn report<R: Report>(&self, report: &R) -> anyhow::Result<()> {
        match self.write_report(report) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => Ok(other?),
        }
    }

    fn write_report<R: Report>(&self, report: &R) -> std::io::Result<()> {
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

/// Text from users or the journal made safe to show on a terminal: control characters (newlines,
/// escape sequences that could recolour or rewrite the screen) are shown escaped, never obeyed.
pub fn escape(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| match c {
            '\n' => "\\n".to_string(),
            '\r' => "\\r".to_string(),
            '\t' => "\\t".to_string(),
            c if c.is_control() => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect()
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
        .set_header(headers.into_iter().map(|h| Cell::new(h.into().to_uppercase())));
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

/// A spinner with a changing message on a terminal; on anything else, the first and last
/// messages only, as plain lines (logs stay readable).
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    /// Put before the last message too (the host a line is about).
    prefix: String,
}

impl Progress {
    pub fn new(printer: &Printer, msg: &str) -> Self {
        if printer.interactive {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_message(msg.to_string());
            bar.enable_steady_tick(std::time::Duration::from_millis(100));
            Self {
                bar: Some(bar),
                prefix: String::new(),
            }
        } else {
            eprintln!("{msg}");
            Self {
                bar: None,
                prefix: String::new(),
            }
        }
    }

    /// Plain lines only, never a spinner (several at once, as a fleet's hosts report), each
    /// starting with `prefix`.
    pub fn plain(prefix: &str, msg: &str) -> Self {
        eprintln!("{prefix}{msg}");
        Self {
            bar: None,
            prefix: prefix.to_string(),
        }
    }

    pub fn set(&self, msg: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg.to_string());
        }
    }

    pub fn finish(&self, msg: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!("{}{msg}", self.prefix);
    }
}

/// Asks a yes/no question on the terminal. Without a terminal (and without `--yes`, which the
/// caller checks first) asking is an error, never a hang.
pub fn confirm(printer: &Printer, question: &str, what: &str) -> anyhow::Result<bool> {
    if !printer.interactive {
        return Err(crate::error::Failure::NeedsConfirmation { what: what.to_string() }.into());
    }
    loop {
        let answer = ask(&format!("{question} [y/n]: "))?;
        match answer.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" => return Ok(true),
            "n" | "no" => return Ok(false),
            _ => eprintln!("please answer y or n"),
        }
    }
}

/// Prints `prompt` to stderr and reads one line from stdin.
pub fn ask(prompt: &str) -> anyhow::Result<String> {
    use std::io::BufRead;
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        // End of input (Ctrl-D): no answer will ever come.
        return Err(crate::error::Failure::Cancelled.into());
    }
    Ok(line.trim().to_string())
}
