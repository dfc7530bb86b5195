//! `backtrack history`: the journal, one row per operation.

use chrono::Utc;
use serde::Serialize;

use super::App;
use crate::cli::HistoryArgs;
use crate::domain::history::{self, OperationView};
use crate::output::{Report, ago, escape, render_table, table};

#[derive(Debug, Serialize)]
struct HistoryReport {
    operations: Vec<OperationView>,
}

pub async fn run(app: &App<'_>, args: &HistoryArgs) -> anyhow::Result<()> {
    let records = app.journal()?.read()?;
    let mut operations = history::operations(&records);
    if args.limit > 0 && operations.len() > args.limit {
        operations.drain(..operations.len() - args.limit);
    }
    app.printer.report(&HistoryReport { operations })
}

impl Report for HistoryReport {
    fn human(&self) -> String {
        if self.operations.is_empty() {
            return "no operations recorded yet".into();
        }
        let now = Utc::now();
        let mut t = table([
            "when", "op", "who", "from", "to", "digest", "result", "duration", "reason",
        ]);
        for o in &self.operations {
            t.add_row(vec![
                ago(now, o.started),
                o.op.as_str().to_string(),
                escape(&format!(
                    "{}@{}",
                    o.user.as_deref().unwrap_or("?"),
                    o.host.as_deref().unwrap_or("?")
                )),
                o.from.as_ref().map_or("-".into(), |r| r.display()),
                o.to.as_ref().map_or("-".into(), |r| r.display()),
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
