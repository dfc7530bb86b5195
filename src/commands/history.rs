//! `backtrack history`: the journal, one row per operation, numbered from the oldest; and
//! `backtrack history show N`: one operation in full, for an incident write-up.

use chrono::Utc;
use serde::Serialize;

use super::App;
use crate::cli::{HistoryArgs, HistoryCommand};
use std::collections::BTreeMap;

use crate::adapters::docker::snapshot;
use crate::domain::config::{self, Change};
use crate::domain::history::{self, OperationView};
use crate::output::{Report, ago, escape, render_table, table};

/// An operation with its number (1 = the oldest in the journal).
#[derive(Debug, Serialize)]
struct Numbered {
    number: usize,
    #[serde(flatten)]
    op: OperationView,
    /// `history show`: what the operation changed in the config (secret values masked).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    config_changes: Vec<Change>,
}

#[derive(Debug, Serialize)]
struct HistoryReport {
    operations: Vec<Numbered>,
}

pub async fn run(app: &App<'_>, args: &HistoryArgs) -> anyhow::Result<()> {
    let records = app.journal()?.read()?;
    let mut operations: Vec<Numbered> = history::operations(&records)
        .into_iter()
        .enumerate()
        .map(|(i, op)| Numbered {
            number: i + 1,
            op,
            config_changes: Vec::new(),
        })
        .collect();
    if let Some(HistoryCommand::Show { n }) = args.show {
        let total = operations.len();
        let Some(mut one) = operations.into_iter().find(|o| o.number == n) else {
            return Err(crate::error::Failure::NoSuchOperation { n, total }.into());
        };
        one.config_changes = config_changes(&one.op, &history::snapshots(&records));
        return app.printer.report(&one);
    }
    if args.limit > 0 && operations.len() > args.limit {
        operations.drain(..operations.len() - args.limit);
    }
    app.printer.report(&HistoryReport { operations })
}

/// What an operation changed in each container's (or the service's) config: before -> after.
fn config_changes(op: &OperationView, snapshots: &BTreeMap<&str, &serde_json::Value>) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::new();
    for pair in op.configs.values() {
        let (Some(before), Some(after)) = (snapshots.get(pair.before.as_str()), snapshots.get(pair.after.as_str()))
        else {
            continue;
        };
        for c in config::changes(&snapshot::flatten_any(before), &snapshot::flatten_any(after)) {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

fn image(r: Option<&crate::domain::image::ImageRef>) -> String {
    r.map_or("-".into(), |r| {
        format!(
            "{}{}",
            escape(&r.display()),
            r.digest.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
        )
    })
}

impl Report for Numbered {
    fn human(&self) -> String {
        let o = &self.op;
        let mut out = format!(
            "operation {}: {} of {}\n",
            self.number,
            o.op.as_str(),
            escape(o.target.as_deref().unwrap_or("-"))
        );
        let mut field = |k: &str, v: String| out.push_str(&format!("  {k:<11} {v}\n"));
        field(
            "when",
            format!(
                "{} ({})",
                o.started.format("%Y-%m-%d %H:%M:%SZ"),
                ago(Utc::now(), o.started)
            ),
        );
        field(
            "who",
            escape(&format!(
                "{}@{}",
                o.user.as_deref().unwrap_or("?"),
                o.host.as_deref().unwrap_or("?")
            )),
        );
        field("reason", escape(o.reason.as_deref().unwrap_or("-")));
        field("from", image(o.from.as_ref()));
        field("to", image(o.to.as_ref()));
        field(
            "result",
            format!(
                "{}{}",
                o.result
                    .map_or("unfinished (interrupted, or still running)", |r| r.as_str()),
                o.duration_ms
                    .map(|ms| format!(", after {:.1} s", ms as f64 / 1000.0))
                    .unwrap_or_default()
            ),
        );
        if let Some(d) = &o.detail {
            field("detail", escape(d));
        }
        if !o.containers.is_empty() {
            field("containers", escape(&o.containers.join(", ")));
        }
        // A release: each service's image of the version, and its own result.
        for (i, (service, to)) in o.services.iter().enumerate() {
            let result = o.results.get(service).map(|r| format!(": {r}")).unwrap_or_default();
            field(
                if i == 0 { "services" } else { "" },
                escape(&format!("{service} -> {}{result}", image(Some(to)))),
            );
        }
        for (i, n) in o.notes.iter().enumerate() {
            field(if i == 0 { "notes" } else { "" }, escape(n));
        }
        for (i, c) in self.config_changes.iter().enumerate() {
            out.push_str(&format!(
                "  {:<11} {}\n",
                if i == 0 { "config" } else { "" },
                escape(&c.line())
            ));
        }
        if !o.logs.is_empty() {
            out.push_str("  last lines of the failed container:\n");
            for l in &o.logs {
                out.push_str(&format!("    | {}\n", escape(l)));
            }
        }
        out.trim_end().to_string()
    }
}

impl Report for HistoryReport {
    fn human(&self) -> String {
        if self.operations.is_empty() {
            return "no operations recorded yet".into();
        }
        let now = Utc::now();
        let mut t = table([
            "#", "when", "op", "who", "from", "to", "digest", "result", "duration", "reason",
        ]);
        for Numbered { number, op: o, .. } in &self.operations {
            t.add_row(vec![
                number.to_string(),
                ago(now, o.started),
                o.op.as_str().to_string(),
                escape(&format!(
                    "{}@{}",
                    o.user.as_deref().unwrap_or("?"),
                    o.host.as_deref().unwrap_or("?")
                )),
                o.from.as_ref().map_or("-".into(), |r| escape(&r.display())),
                o.to.as_ref().map_or("-".into(), |r| escape(&r.display())),
                o.to.as_ref()
                    .and_then(|r| r.digest.as_ref())
                    .map_or("-".into(), |d| d.short().to_string()),
                o.result.map_or("interrupted?", |r| r.as_str()).to_string(),
                o.duration_ms
                    .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
                escape(o.reason.as_deref().or(o.detail.as_deref()).unwrap_or("-")),
            ]);
        }
        render_table(&t)
    }
}
