//! Recovery: an operation that a crash, `kill -9` or a daemon restart interrupted left a
//! `started` record without a `finished` one. The next backtrack that takes the lock settles it
//! before doing anything else: before the `committed` record it reverts (the set-aside containers
//! come back), after it completes (the set-aside containers go). One that validated but could
//! not write its `committed` record (a full disk) removed its set-aside containers anyway: a
//! target found on the new digest with nothing set aside is recorded as completed, not reverted.
//! A restart policy is only ever set back to what the operation saved.

use chrono::Utc;

use crate::adapters::docker::{BACKUP_SUFFIX, Engine, NEXT_SUFFIX};
use crate::adapters::state::{Identity, Journal};
use crate::domain::history::{self, Outcome};
use crate::ops::swap::revert_one;
use crate::output::Printer;

/// Settles every open operation in the journal. Call with the lock held.
pub async fn settle(engine: &Engine, journal: &Journal, printer: &Printer) -> anyhow::Result<usize> {
    let records = journal.read()?;
    let open = history::open_operations(&records);
    for (started, committed) in &open {
        let what = started.started_what();
        let who = Identity::current();
        let mut problems = Vec::new();
        let outcome = if started.op == history::Operation::Emergency {
            // An emergency has no revert; only a target left without a container gets its
            // original one back.
            printer.note(format!("found an interrupted {what}"));
            for name in &started.containers {
                let policy = started.saved.get(name).map(String::as_str);
                // A start-first replacement that had not taken over yet goes.
                if let Err(e) = engine.remove(&format!("{name}{NEXT_SUFFIX}")).await {
                    problems.push(format!("{name}: {e}"));
                }
                match crate::ops::swap::restore_original(engine, name, policy).await {
                    Ok(true) => printer.note(format!("{name} had no container: its original one is back")),
                    Ok(false) => {}
                    Err(e) => problems.push(format!("{name}: {e}")),
                }
            }
            Outcome::Failed
        } else if *committed {
            printer.note(format!(
                "found an interrupted {what}; it had validated, so finishing it"
            ));
            for name in &started.containers {
                if let Err(e) = engine.remove(&format!("{name}{BACKUP_SUFFIX}")).await {
                    problems.push(format!("{name}: {e}"));
                }
            }
            Outcome::Ok
        } else if completed_without_record(engine, started).await {
            printer.note(format!(
                "found an unrecorded {what}; it had validated and runs, so recording it as done"
            ));
            Outcome::Ok
        } else {
            printer.note(format!(
                "found an interrupted {what}; putting the previous version back"
            ));
            for name in &started.containers {
                let policy = started.saved.get(name).map(String::as_str);
                if let Err(e) = revert_one(engine, name, policy).await {
                    problems.push(format!("{name}: {e}"));
                }
            }
            if problems.is_empty() {
                Outcome::RolledBackAfterCrash
            } else {
                Outcome::RevertFailed
            }
        };
        let detail = if problems.is_empty() {
            format!("settled by pid {} of {}@{}", std::process::id(), who.user, who.host)
        } else {
            format!("settling failed: {}", problems.join("; "))
        };
        journal.append(&started.finish(Utc::now(), outcome, None, Some(detail.clone())))?;
        if !problems.is_empty() {
            return Err(crate::error::Failure::SettleFailed { what, detail }.into());
        }
        printer.note(format!("settled: {}", outcome.as_str()));
    }
    Ok(open.len())
}

/// A swap that validated but whose `committed` record was lost: every container runs the digest
/// it went to and nothing is set aside (a swap only removes what it set aside after validating).
async fn completed_without_record(engine: &Engine, started: &history::Record) -> bool {
    let Some(to) = started.to.as_ref().and_then(|t| t.digest.as_ref()) else {
        return false;
    };
    if started.from.as_ref().and_then(|f| f.digest.as_ref()) == Some(to) || started.containers.is_empty() {
        return false;
    }
    for name in &started.containers {
        let aside = engine.inspect(&format!("{name}{BACKUP_SUFFIX}")).await;
        let view = engine.view(name).await;
        match (aside, view) {
            (Ok(None), Ok(Some(v))) if v.pinned_digest().as_ref() == Some(to) => {}
            _ => return false,
        }
    }
    true
}
