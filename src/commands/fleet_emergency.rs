//! `emergency` on every host of the target (one host is a fleet of one): `emergency.rs`'s plan
//! and replacement (stop the target's containers, set them aside, run last known good under their
//! names) on every host at once, all or nothing. Every host's lock is taken first (in the fleet's order), every host is
//! planned before any changes (a host that cannot be planned refuses the run, naming it), and
//! when any host's containers cannot all be replaced, every host that was replaced gets its
//! originals back, in parallel. Like the single-host emergency, there is no validation gate: an
//! emergency that runs but is unhealthy stays, and says so per host.

use anyhow::Context as _;
use chrono::Utc;
use futures::future::join_all;
use serde::Serialize;

use super::App;
use super::emergency::{self, HostPlan, NotReplaced};
use crate::adapters::docker::PRE_EMERGENCY_SUFFIX;
use crate::cli::EmergencyArgs;
use crate::domain::fleet::{self, HostStep, Verdict};
use crate::domain::history::{self, Operation, Outcome, Record};
use crate::domain::image::ImageRef;
use crate::error::Failure;
use crate::ops::{interrupt, recover, validate};
use crate::output::{Report, confirm, render_table, table};

#[derive(Debug, Serialize)]
struct FleetEmergencyReport {
    dry_run: bool,
    target: String,
    last_known_good: ImageRef,
    /// Where the last known good pointer came from: "registry" or "journal".
    source: &'static str,
    hosts: Vec<HostRow>,
    /// Hosts left out because they could not be reached at the start (`--skip-unreachable`).
    skipped: Vec<String>,
}

#[derive(Debug, Serialize)]
struct HostRow {
    host: String,
    step: HostStep,
    image: String,
    containers: Vec<String>,
    /// The docker commands the emergency stands for on this host (dry run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    commands: Vec<String>,
    healthy: Option<bool>,
    detail: Option<String>,
}

impl Report for FleetEmergencyReport {
    fn human(&self) -> String {
        let what = format!(
            "{} ({}, from the {})",
            self.last_known_good.display(),
            self.last_known_good.digest.as_ref().map_or("-", |d| d.short()),
            self.source
        );
        let mut t = table(["host", "result", "containers", "health", "detail"]);
        for h in &self.hosts {
            t.add_row(vec![
                h.host.clone(),
                if self.dry_run {
                    "would replace".to_string()
                } else {
                    h.step.as_str().to_string()
                },
                h.containers.join(", "),
                match h.healthy {
                    Some(true) => "healthy".into(),
                    Some(false) => "NOT healthy".into(),
                    None => "-".into(),
                },
                h.detail.clone().unwrap_or_default(),
            ]);
        }
        let mut out = if self.dry_run {
            format!(
                "plan: EMERGENCY on {} across {} hosts: run last known good {what} directly\n{}",
                self.target,
                self.hosts.len(),
                render_table(&t)
            )
        } else {
            format!(
                "EMERGENCY on {} across {} hosts: last known good {what}\n{}",
                self.target,
                self.hosts.len(),
                render_table(&t)
            )
        };
        if self.dry_run {
            for h in &self.hosts {
                out.push_str(&format!("\nequivalent docker commands on {}:", h.host));
                for c in &h.commands {
                    out.push_str(&format!("\n  {c}"));
                }
            }
        }
        if !self.skipped.is_empty() {
            out.push_str(&format!("\nskipped (unreachable): {}", self.skipped.join(", ")));
        }
        if self.dry_run {
            out.push_str("\ndry run: nothing was changed");
        } else if self.hosts.iter().all(|h| h.step == HostStep::Committed) {
            out.push_str(&format!(
                "\nthe stopped containers were kept as NAME{PRE_EMERGENCY_SUFFIX}; `backtrack deploy` or `rollback` leaves emergency mode"
            ));
        }
        out
    }
}

/// `emergency` on every host of the target (one, or a fleet's), all or nothing.
pub async fn run(app: &App<'_>, args: &EmergencyArgs) -> anyhow::Result<()> {
    let project = app.project()?;
    let target = app.target()?;
    // A release: the first service's registry finds the pointer, every service runs its own.
    let registries = app.registries()?;
    let registry = &registries[0];
    let fleet = app.is_fleet();
    let (hosts, skipped) = app
        .hosts(
            (!args.dry_run).then_some("backtrack emergency"),
            Some(args.skip_unreachable),
        )
        .await?;
    let addresses: Vec<String> = hosts.iter().map(|h| h.address.clone()).collect();
    let order = fleet::lock_order(&addresses);
    let on = |h: &crate::ops::fleet::Host| {
        if fleet {
            format!("[{}] ", h.address)
        } else {
            String::new()
        }
    };
    if !args.dry_run {
        interrupt::install();
        for h in &hosts {
            if let Err(e) = recover::settle(&h.engine, &h.journal, &app.printer).await {
                // The emergency is the last resort: go on, but say what is left to look at.
                app.printer
                    .note(format!("warning: {}{}", on(h), crate::error::render(&e)));
            }
        }
    }
    let first = &hosts[order[0]];
    let ops = history::operations(&first.journal.read()?);
    let pointer = project.lkg_tag();
    let (lkg, source) = emergency::find_last_known_good(&app.printer, registry.as_ref(), &ops, &pointer).await?;
    let services = if target.is_release() {
        emergency::release_last_known_good(target, &registries, &ops, &lkg, &pointer).await?
    } else {
        Vec::new()
    };
    // Every host planned before any changes: one that cannot be refuses the run.
    let planned = join_all(
        hosts
            .iter()
            .map(|h| emergency::plan_host(app, &h.engine, &h.journal, registry.as_ref(), &lkg, &services, args)),
    )
    .await;
    let mut plans: Vec<HostPlan> = Vec::new();
    for (h, plan) in hosts.iter().zip(planned) {
        plans.push(if fleet {
            plan.map_err(|e| {
                e.context(format!(
                    "plan the emergency on {} (nothing was changed on any host)",
                    h.address
                ))
            })?
        } else {
            plan?
        });
    }
    let mut rows: Vec<HostRow> = hosts
        .iter()
        .zip(&plans)
        .map(|(h, p)| HostRow {
            host: h.address.clone(),
            step: HostStep::NotStarted,
            image: p.image.clone(),
            containers: p.plans.iter().map(|r| r.0.clone()).collect(),
            commands: if args.dry_run { p.commands.clone() } else { Vec::new() },
            healthy: None,
            detail: None,
        })
        .collect();
    let mut report = FleetEmergencyReport {
        dry_run: args.dry_run,
        target: target.display(),
        last_known_good: lkg.clone(),
        source,
        hosts: Vec::new(),
        skipped: skipped.clone(),
    };
    if args.dry_run {
        report.hosts = rows;
        return print(app, report, fleet);
    }
    if !app.settings.yes {
        let on_hosts = if fleet {
            format!(" on {} hosts", hosts.len())
        } else {
            String::new()
        };
        let q = format!(
            "EMERGENCY: stop {}{on_hosts} and run last known good {} directly?",
            target.display(),
            lkg.display()
        );
        if !confirm(&app.printer, &q, "confirm the emergency rollback")? {
            return Err(Failure::Cancelled.into());
        }
    }

    interrupt::arm();
    let started = std::time::Instant::now();
    let mut base = crate::adapters::state::begin(Operation::Emergency);
    if fleet {
        base.id = format!("fleet-{}", base.id);
    }
    base.reason = args.reason.clone();
    base.target = Some(target.display());
    base.to = Some(lkg.clone());
    base.services = services.iter().map(|s| (s.service.clone(), s.lkg.clone())).collect();
    let records: Vec<Record> = plans
        .iter()
        .zip(&rows)
        .map(|(p, row)| Record {
            from: p.current.first().map(|d| d.image.clone()),
            detail: Some(if skipped.is_empty() {
                format!("containers: {}", row.containers.join(", "))
            } else {
                format!(
                    "containers: {}; fleet run without unreachable host(s): {}",
                    row.containers.join(", "),
                    skipped.join(", ")
                )
            }),
            ..base.clone()
        })
        .collect();
    for (i, (h, record)) in hosts.iter().zip(&records).enumerate() {
        let intent = Record {
            containers: rows[i].containers.clone(),
            saved: plans[i].saved.clone(),
            ..record.clone()
        };
        if let Err(e) = h.journal.append(&intent) {
            // Nothing was changed yet: close the intents already written, then stop.
            for (earlier, r) in hosts.iter().zip(&records).take(i) {
                let _ = earlier.journal.append(&r.finish(
                    Utc::now(),
                    Outcome::Failed,
                    None,
                    Some(format!(
                        "not started: the journal on {} could not be written",
                        h.address
                    )),
                ));
            }
            if !fleet {
                return Err(e.into());
            }
            return Err(anyhow::Error::new(e).context(format!("record the intent on {}", h.address)));
        }
    }

    // Every host at once; each host is itself all or nothing over its containers.
    let replaced = join_all(hosts.iter().zip(&plans).map(|(h, p)| {
        let start_first = p.start_first.then_some(emergency::StartFirst {
            health: &project.health,
            drain: target.drain,
        });
        emergency::replace_all(&h.engine, &p.plans, &p.saved, start_first)
    }))
    .await;
    for (row, result) in rows.iter_mut().zip(replaced) {
        match result {
            Ok(()) => row.step = HostStep::Validated,
            Err(NotReplaced { why, put_back }) => {
                row.step = if put_back {
                    HostStep::FailedReverted
                } else {
                    HostStep::FailedNotReverted
                };
                row.detail = Some(why);
            }
        }
    }
    let steps: Vec<HostStep> = rows.iter().map(|r| r.step).collect();
    let to_revert = fleet::must_revert(&steps);
    if fleet::may_continue(&steps) {
        let version = lkg.version.as_deref();
        let checks = hosts.iter().zip(&plans).map(|(h, p)| async move {
            let names: Vec<String> = p.plans.iter().map(|r| r.0.clone()).collect();
            validate::wait_valid(&h.engine, &names, &project.health, version, |_| {}).await
        });
        for (row, checked) in rows.iter_mut().zip(join_all(checks).await) {
            row.step = HostStep::Committed;
            match checked {
                Ok(()) => row.healthy = Some(true),
                Err(invalid) => {
                    row.healthy = Some(false);
                    row.detail = Some(invalid.why);
                }
            }
        }
    } else {
        let failed: Vec<&str> = rows
            .iter()
            .filter(|r| r.step.is_failure())
            .map(|r| r.host.as_str())
            .collect();
        let because = format!("{} failed", failed.join(", "));
        if fleet {
            app.printer.note(format!(
                "{because}: putting the original containers back on every replaced host"
            ));
        }
        let undos = to_revert.iter().map(|i| {
            let (h, p) = (&hosts[*i], &plans[*i]);
            async move { (*i, emergency::undo_all(&h.engine, &p.plans, &p.saved).await) }
        });
        for (i, problems) in join_all(undos).await {
            if problems.is_empty() {
                rows[i].step = HostStep::Reverted;
                rows[i].detail = Some(format!("put back: {because}"));
                app.printer.note(format!("[{}] original containers back", rows[i].host));
            } else {
                rows[i].step = HostStep::RevertFailed;
                rows[i].detail = Some(format!("put back: {because}; {}", problems.join("; ")));
            }
        }
    }
    let elapsed = started.elapsed().as_millis() as u64;
    for ((h, record), row) in hosts.iter().zip(&records).zip(&rows) {
        let outcome = match (row.step, row.healthy) {
            (HostStep::Committed, Some(true)) => Outcome::Ok,
            // One host: its containers were put back by the replacement itself.
            (HostStep::FailedReverted | HostStep::FailedNotReverted, _) if !fleet => Outcome::Failed,
            (HostStep::Reverted | HostStep::FailedReverted, _) => Outcome::Reverted,
            (HostStep::RevertFailed | HostStep::FailedNotReverted, _) => Outcome::RevertFailed,
            _ => Outcome::Failed,
        };
        let detail = match row.healthy {
            Some(false) => row.detail.as_ref().map(|d| format!("running but not healthy: {d}")),
            _ => row.detail.clone(),
        };
        if let Err(e) = h
            .journal
            .append(&record.finish(Utc::now(), outcome, Some(elapsed), detail))
        {
            app.printer.note(format!(
                "warning: [{}] could not record the result in the journal: {e}",
                h.address
            ));
        }
    }
    let steps: Vec<HostStep> = rows.iter().map(|r| r.step).collect();
    let verdict = fleet::verdict(&steps);
    let unhealthy: Vec<String> = rows
        .iter()
        .filter(|r| r.healthy == Some(false))
        .map(|r| r.host.clone())
        .collect();
    let (outcome, why) = match &verdict {
        Verdict::Done if unhealthy.is_empty() => (Outcome::Ok, None),
        _ if !fleet => (
            Outcome::Failed,
            rows[0].detail.as_ref().map(|d| match rows[0].healthy {
                Some(false) => format!("running but not healthy: {d}"),
                _ => d.clone(),
            }),
        ),
        Verdict::Done => (
            Outcome::Failed,
            Some(format!("running but not healthy on {}", unhealthy.join(", "))),
        ),
        Verdict::RevertedEverywhere { .. } => (Outcome::Reverted, None),
        Verdict::NeedsAPerson { .. } => (Outcome::RevertFailed, None),
    };
    let event = crate::ops::notify::Event::of(
        &base,
        target.environment.clone().unwrap_or_else(|| target.display()),
        registry.name(),
        outcome,
        why,
        Some(elapsed),
    );
    let sent = crate::ops::notify::send(&project.notify, &event).await;
    crate::ops::notify::note_delivery(&first.journal, &app.printer, &records[order[0]], sent);
    report.hosts = rows;
    if !fleet {
        let row = &report.hosts[0];
        if row.step.is_failure() {
            // The replacement put the originals back itself (or says why it could not).
            anyhow::bail!("{}", row.detail.clone().unwrap_or_default());
        }
        let unhealthy = (row.healthy == Some(false)).then(|| row.detail.clone().unwrap_or_default());
        print(app, report, false)?;
        if let Some(why) = unhealthy {
            return Err(Failure::Unhealthy(format!("the emergency container runs but is not healthy: {why}")).into());
        }
        return Ok(());
    }
    app.printer.report(&report)?;
    let rows: Vec<(&str, Option<&str>)> = report
        .hosts
        .iter()
        .map(|h| (h.host.as_str(), h.detail.as_deref()))
        .collect();
    let why = |failed: &[usize]| fleet::on_hosts(&rows, failed);
    match verdict {
        Verdict::Done if unhealthy.is_empty() => Ok(()),
        Verdict::Done => Err(Failure::Unhealthy(format!(
            "the emergency containers run but are not healthy on {}",
            unhealthy.join(", ")
        ))
        .into()),
        Verdict::RevertedEverywhere { failed } => Err(Failure::Reverted {
            version: format!("the emergency on last known good {} across the fleet", lkg.display()),
            why: format!("{}; every host runs its original containers again", why(&failed)),
        }
        .into()),
        Verdict::NeedsAPerson { failed, hosts } => Err(Failure::RevertFailed {
            version: format!("the emergency on last known good {} across the fleet", lkg.display()),
            why: why(&failed),
            revert_error: format!(
                "a person must act on {} (their original containers could not all be put back)",
                hosts
                    .iter()
                    .map(|i| report.hosts[*i].host.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
        .into()),
    }
}

/// One host's report as the single-host emergency always printed it; several hosts as a table.
fn print(app: &App<'_>, report: FleetEmergencyReport, fleet: bool) -> anyhow::Result<()> {
    if fleet {
        return app.printer.report(&report);
    }
    let row = report
        .hosts
        .into_iter()
        .next()
        .context("plan the emergency on the target's host")?;
    app.printer.report(&emergency::EmergencyReport {
        dry_run: report.dry_run,
        target: report.target,
        last_known_good: report.last_known_good,
        source: report.source,
        image: row.image,
        containers: row.containers,
        commands: row.commands,
        healthy: row.healthy,
        detail: row.detail,
    })
}
