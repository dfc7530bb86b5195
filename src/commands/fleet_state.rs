//! `history` and `validate` of a target on several hosts (`[target] hosts`). History brings every
//! host's journal together: one row per fleet operation (the id every host's journal shares) with
//! what it came to on each host. Validate checks every host at once and names the failing ones.

use chrono::Utc;
use serde::Serialize;

use super::App;
use crate::cli::{HistoryArgs, HistoryCommand};
use crate::domain::fleet::{self, FleetOperation};
use crate::domain::history;
use crate::error::Failure;
use crate::ops::fleet::Host;
use crate::ops::validate::Check;
use crate::output::{Report, ago, escape, render_table, table};

/// The hosts that answered; those that did not are said (a warning each), not fatal, unless none
/// answered.
async fn reachable(app: &App<'_>) -> anyhow::Result<(Vec<Host>, Vec<String>)> {
    let mut hosts = Vec::new();
    let mut missing = Vec::new();
    for (address, connected) in super::fleet::reach_all(app).await? {
        match connected {
            Ok(h) => hosts.push(h),
            Err(e) => {
                app.printer.note(format!("warning: {address} did not answer: {e:#}"));
                missing.push(address);
            }
        }
    }
    if hosts.is_empty() {
        anyhow::bail!("reach any host of the fleet: none answered ({})", missing.join(", "));
    }
    Ok((hosts, missing))
}

/// A fleet operation with its number (1 = the oldest).
#[derive(Debug, Serialize)]
struct Numbered {
    number: usize,
    /// How many hosts the fleet has in this run (the summary says `ok on 2/3 hosts`).
    #[serde(skip)]
    of: usize,
    #[serde(flatten)]
    op: FleetOperation,
}

#[derive(Debug, Serialize)]
struct FleetHistory {
    operations: Vec<Numbered>,
    /// Hosts whose journals could not be read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unreachable: Vec<String>,
}

/// `history` across the fleet: every host's journal (on that host), read and merged by id.
pub async fn history(app: &App<'_>, args: &HistoryArgs) -> anyhow::Result<()> {
    let of = app.target()?.hosts.len();
    let (hosts, mut unreachable) = reachable(app).await?;
    let mut journals = Vec::new();
    for h in &hosts {
        match h.journal.read() {
            Ok(records) => journals.push((h.address.clone(), history::operations(&records))),
            Err(e) => {
                app.printer
                    .note(format!("warning: could not read the journal on {}: {e}", h.address));
                unreachable.push(h.address.clone());
            }
        }
    }
    let mut operations: Vec<Numbered> = fleet::fleet_operations(journals)
        .into_iter()
        .enumerate()
        .map(|(i, op)| Numbered { number: i + 1, of, op })
        .collect();
    if let Some(HistoryCommand::Show { n }) = args.show {
        let total = operations.len();
        let Some(one) = operations.into_iter().find(|o| o.number == n) else {
            return Err(Failure::NoSuchOperation { n, total }.into());
        };
        return app.printer.report(&one);
    }
    if args.limit > 0 && operations.len() > args.limit {
        operations.drain(..operations.len() - args.limit);
    }
    app.printer.report(&FleetHistory {
        operations,
        unreachable,
    })
}

fn who(o: &history::OperationView) -> String {
    escape(&format!(
        "{}@{}",
        o.user.as_deref().unwrap_or("?"),
        o.host.as_deref().unwrap_or("?")
    ))
}

impl Report for FleetHistory {
    fn human(&self) -> String {
        if self.operations.is_empty() {
            return "no operations recorded yet on any host".into();
        }
        let now = Utc::now();
        let mut t = table(["#", "when", "op", "who", "to", "digest", "hosts", "reason"]);
        for Numbered { number, of, op } in &self.operations {
            let first = op.first();
            t.add_row(vec![
                number.to_string(),
                ago(now, op.started),
                op.op.as_str().to_string(),
                who(first),
                first.to.as_ref().map_or("-".into(), |r| escape(&r.display())),
                first
                    .to
                    .as_ref()
                    .and_then(|r| r.digest.as_ref())
                    .map_or("-".into(), |d| d.short().to_string()),
                op.summary(*of),
                escape(first.reason.as_deref().or(first.detail.as_deref()).unwrap_or("-")),
            ]);
        }
        let mut out = render_table(&t);
        if !self.unreachable.is_empty() {
            out.push_str(&format!("\nnot read (unreachable): {}", self.unreachable.join(", ")));
        }
        out
    }
}

impl Report for Numbered {
    fn human(&self) -> String {
        let op = &self.op;
        let first = op.first();
        let mut out = format!(
            "operation {}: {} of {} on {} host(s), {}\n  when        {} ({})\n  who         {}\n  reason      {}\n",
            self.number,
            op.op.as_str(),
            escape(first.target.as_deref().unwrap_or("-")),
            op.hosts.len(),
            op.summary(self.of),
            op.started.format("%Y-%m-%d %H:%M:%SZ"),
            ago(Utc::now(), op.started),
            who(first),
            escape(first.reason.as_deref().unwrap_or("-")),
        );
        let mut t = table(["host", "result", "from", "to", "duration", "detail"]);
        for h in &op.hosts {
            let o = &h.op;
            t.add_row(vec![
                escape(&h.address),
                o.result.map_or("unfinished", |r| r.as_str()).to_string(),
                o.from.as_ref().map_or("-".into(), |r| escape(&r.display())),
                o.to.as_ref().map_or("-".into(), |r| escape(&r.display())),
                o.duration_ms
                    .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
                escape(o.detail.as_deref().unwrap_or("")),
            ]);
        }
        out.push_str(&render_table(&t));
        for h in op.hosts.iter().filter(|h| !h.op.logs.is_empty()) {
            out.push_str(&format!("\n[{}] last lines of the failed container:", h.address));
            for l in &h.op.logs {
                out.push_str(&format!("\n    | {}", escape(l)));
            }
        }
        out
    }
}

#[derive(Debug, Serialize)]
struct FleetValidate {
    target: String,
    healthy: bool,
    hosts: Vec<HostChecks>,
}

#[derive(Debug, Serialize)]
struct HostChecks {
    host: String,
    healthy: bool,
    checks: Vec<Check>,
    /// Why the host could not be checked at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `validate` on every host at once; fails naming every host that failed (or did not answer).
pub async fn validate(app: &App<'_>) -> anyhow::Result<()> {
    let project = app.project()?;
    let target = app.target()?;
    let hosts = super::fleet::reach_all(app).await?;
    let checks = hosts.iter().map(|(address, connected)| async move {
        let result = match connected {
            Ok(h) => super::validate::checks(&h.engine, project, target).await,
            Err(e) => Err(anyhow::anyhow!("reach the host: {e:#}")),
        };
        match result {
            Ok(checks) => HostChecks {
                host: address.clone(),
                healthy: !checks.is_empty() && checks.iter().all(|c| c.ok),
                error: checks.is_empty().then(|| "nothing of the target runs there".into()),
                checks,
            },
            Err(e) => HostChecks {
                host: address.clone(),
                healthy: false,
                checks: Vec::new(),
                error: Some(format!("{e:#}")),
            },
        }
    });
    let hosts = futures::future::join_all(checks).await;
    let failing: Vec<String> = hosts.iter().filter(|h| !h.healthy).map(|h| h.host.clone()).collect();
    app.printer.report(&FleetValidate {
        target: target.display(),
        healthy: failing.is_empty(),
        hosts,
    })?;
    if failing.is_empty() {
        Ok(())
    } else {
        Err(Failure::Unhealthy(format!(
            "{} failed its health checks on {}",
            target.display(),
            failing.join(", ")
        ))
        .into())
    }
}

impl Report for FleetValidate {
    fn human(&self) -> String {
        let mut t = table(["host", "check", "result", "detail"]);
        for h in &self.hosts {
            if let Some(e) = &h.error {
                t.add_row(vec![h.host.clone(), "-".into(), "FAIL".into(), e.clone()]);
            }
            for c in &h.checks {
                t.add_row(vec![
                    h.host.clone(),
                    c.name.clone(),
                    if c.ok { "ok" } else { "FAIL" }.to_string(),
                    c.detail.clone(),
                ]);
            }
        }
        let failing: Vec<&str> = self
            .hosts
            .iter()
            .filter(|h| !h.healthy)
            .map(|h| h.host.as_str())
            .collect();
        let verdict = if failing.is_empty() {
            format!("healthy on all {} hosts", self.hosts.len())
        } else {
            format!("UNHEALTHY on {}", failing.join(", "))
        };
        format!("{}\n{}: {verdict}", render_table(&t), self.target)
    }
}
