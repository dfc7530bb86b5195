//! Putting a Swarm service back and settling what a run left open: the spec read before an
//! update goes back (and its tasks are waited for), an interrupted update is settled from the
//! journal, and `emergency` forces every task onto last known good without a verdict.

use super::*;

/// How an emergency update is told: credentials, the reason, the wait, and who hears about it.
#[derive(Debug)]
pub struct EmergencyOptions<'a> {
    pub auth: Option<&'a PullAuth>,
    pub reason: Option<&'a str>,
    pub timeout: Duration,
    pub notify: &'a crate::settings::NotifySection,
    pub scope: String,
    pub repository: String,
}

/// Puts `spec` (naming `previous_image`) back on the service and waits for its tasks.
pub(super) async fn put_back(
    engine: &Engine,
    name: &str,
    spec: &ServiceSpec,
    previous_image: &str,
    auth: Option<&PullAuth>,
    printer: &Printer,
) -> Result<(), String> {
    let svc = engine.service(name, None).await.map_err(|e| e.to_string())?;
    // The status of an update started before this one says nothing about it.
    let before = svc.update_started.clone();
    let ours = svc.image != previous_image;
    if ours {
        let mut spec = spec.clone();
        // The old spec as it was, but its force-update counter never goes back (an emergency
        // may have raised it).
        if let Some(t) = spec.task_template.as_mut() {
            let current = svc
                .spec
                .task_template
                .as_ref()
                .and_then(|t| t.force_update)
                .unwrap_or(0);
            t.force_update = Some(current.max(t.force_update.unwrap_or(0)));
        }
        engine
            .update_service(&svc, spec, auth)
            .await
            .map_err(|e| e.to_string())?;
    } else {
        printer.note(format!("{name}: Swarm already put the previous spec back"));
    }
    let start = Instant::now();
    loop {
        let svc = engine.service(name, None).await.map_err(|e| e.to_string())?;
        let tasks = engine.service_tasks(&svc).await.map_err(|e| e.to_string())?;
        let live: Vec<&TaskView> = tasks.iter().filter(|t| t.desired == "running").collect();
        let back = live
            .iter()
            .filter(|t| same_image(&t.image, previous_image) && t.state == "running")
            .count();
        let wanted = svc.replicas.map_or(live.len(), |r| r as usize);
        // Back once every task runs the previous image (which ran before): Swarm's monitor
        // period after it is not waited for. A pause means Swarm could not put it back.
        if ours
            && svc.update_started != before
            && matches!(svc.update_state.as_deref(), Some("paused" | "rollback_paused"))
        {
            return Err(format!(
                "Swarm paused the update back to the previous image ({})",
                svc.update_message.as_deref().unwrap_or("no message")
            ));
        }
        if back == live.len() && back >= wanted {
            return Ok(());
        }
        if start.elapsed() > REVERT_WAIT {
            return Err(format!(
                "{back}/{wanted} tasks run the previous image after {}s (update {})",
                REVERT_WAIT.as_secs(),
                svc.update_state.as_deref().unwrap_or("-")
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two image references name the same image: the same pinned digest, else the same text.
pub(super) fn same_image(a: &str, b: &str) -> bool {
    match (pinned(a), pinned(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Settles the open operations of a swarm target (call with the lock held): a committed one is
/// recorded done; one interrupted before its verdict gets the previous image back (the spec as
/// it is now, with that image), as a swap of containers would.
pub async fn settle(
    engine: &Engine,
    journal: &Journal,
    printer: &Printer,
    target: &TargetSettings,
    auth: Option<&PullAuth>,
) -> anyhow::Result<usize> {
    let records = journal.read()?;
    let open = history::open_operations(&records);
    for (started, committed) in &open {
        let what = started.started_what();
        let who = state::Identity::current();
        let (outcome, problem) = if *committed {
            printer.note(format!(
                "found an interrupted {what}; it had validated, so recording it done"
            ));
            (Outcome::Ok, None)
        } else if started.op == Operation::Emergency {
            printer.note(format!("found an interrupted {what}; Swarm finishes it on its own"));
            (Outcome::Failed, None)
        } else {
            printer.note(format!(
                "found an interrupted {what}; putting the previous version back"
            ));
            // Each service the operation saved (a release's: every one of them).
            let mut problems = Vec::new();
            for t in &target.services() {
                let svc = service(engine, t).await?;
                let previous = if target.is_release() {
                    started.saved.get(&svc.name)
                } else {
                    started.containers.first().and_then(|s| started.saved.get(s))
                };
                let Some(previous) = previous else {
                    if !target.is_release() {
                        problems.push("the journal does not say which image ran before".to_string());
                    }
                    continue;
                };
                let mut spec = svc.spec.clone();
                let was = started.from.clone().unwrap_or_default();
                name_image(&mut spec, previous, &was, false);
                if let Err(e) = put_back(engine, &svc.name, &spec, previous, auth, printer).await {
                    problems.push(if target.is_release() {
                        format!("{}: {e}", svc.name)
                    } else {
                        e
                    });
                }
            }
            if problems.is_empty() {
                (Outcome::RolledBackAfterCrash, None)
            } else {
                (Outcome::RevertFailed, Some(problems.join("; ")))
            }
        };
        let detail = match &problem {
            None => format!("settled by pid {} of {}@{}", std::process::id(), who.user, who.host),
            Some(p) => format!("settling failed: {p}"),
        };
        journal.append(&started.finish(Utc::now(), outcome, None, Some(detail.clone())))?;
        if problem.is_some() {
            return Err(Failure::SettleFailed { what, detail }.into());
        }
        printer.note(format!("settled: {}", outcome.as_str()));
    }
    Ok(open.len())
}

/// Replaces every task with `plan`'s image and waits until they run it, with no verdict on
/// health and no revert: `emergency`. Journaled like any operation; a release's services (one
/// plan each, `target` naming the release, `names` the services) are one operation: one intent, updated one after the
/// other, waited for at once.
pub async fn emergency(
    engine: &Engine,
    journal: &Journal,
    printer: &Printer,
    plans: &[SwarmPlan],
    target: &str,
    names: &[String],
    opts: &EmergencyOptions<'_>,
) -> anyhow::Result<SwapReport> {
    let (auth, reason, wait) = (opts.auth, opts.reason, opts.timeout);
    let first = plans.first().expect("an emergency updates a service");
    let started = Instant::now();
    let base = Record {
        target: Some(target.to_string()),
        from: Some(first.from.clone()),
        to: Some(first.to.clone()),
        reason: reason.map(str::to_string),
        // A release's: each service (by its name in the release) with its image.
        services: names.iter().cloned().zip(plans.iter().map(|p| p.to.clone())).collect(),
        ..state::begin(Operation::Emergency)
    };
    journal.append(&Record {
        containers: plans.iter().map(|p| p.service.clone()).collect(),
        saved: plans
            .iter()
            .map(|p| (p.service.clone(), p.previous_image.clone()))
            .collect(),
        ..base.clone()
    })?;
    let finish = |result: Outcome, detail: Option<String>| {
        base.finish(Utc::now(), result, Some(started.elapsed().as_millis() as u64), detail)
    };
    for (i, plan) in plans.iter().enumerate() {
        if let Err(e) = engine.update_service(&plan.service_view, plan.spec.clone(), auth).await {
            let updated: Vec<&str> = plans[..i].iter().map(|p| p.service.as_str()).collect();
            let detail = if updated.is_empty() {
                e.to_string()
            } else {
                format!(
                    "{}: {e} (already updated, and left so: {})",
                    plan.service,
                    updated.join(", ")
                )
            };
            journal.append(&finish(Outcome::Failed, Some(detail)))?;
            return Err(e.into());
        }
    }
    // No gate: wait only so the report can say whether the tasks run it.
    let no_checks = HealthSettings {
        http: None,
        timeout: wait,
        expect_version: false,
        port: None,
    };
    let waits = plans.iter().map(|plan| {
        let no_checks = &no_checks;
        async move {
            let digest = plan.to.digest.as_ref().map(ToString::to_string).unwrap_or_default();
            let progress = Progress::new(
                printer,
                &format!("waiting for {} to run {}", plan.service, plan.to.display()),
            );
            let ran = wait_converged(engine, plan, &digest, no_checks, None, wait, |s| progress.set(s)).await;
            match ran {
                Ok(()) => {
                    progress.finish(&format!("{} runs {} on every task", plan.service, plan.to.display()));
                    None
                }
                Err(f) => {
                    progress.finish(&format!("warning: {}", f.invalid.why));
                    Some(if plans.len() > 1 {
                        format!("{}: {}", plan.service, f.invalid.why)
                    } else {
                        f.invalid.why
                    })
                }
            }
        }
    });
    let missed: Vec<String> = futures::future::join_all(waits).await.into_iter().flatten().collect();
    let detail = (!missed.is_empty()).then(|| format!("not converged: {}", missed.join("; ")));
    let record = finish(Outcome::Ok, detail.clone());
    journal.append(&record)?;
    let event = crate::ops::notify::Event::of(
        &base,
        opts.scope.clone(),
        opts.repository.clone(),
        Outcome::Ok,
        detail.clone(),
        record.duration_ms,
    );
    let sent = crate::ops::notify::send(opts.notify, &event).await;
    crate::ops::notify::note_delivery(journal, printer, &base, sent);
    Ok(SwapReport {
        op: Operation::Emergency,
        target: target.to_string(),
        from: first.from.clone(),
        to: first.to.clone(),
        containers: plans.iter().map(|p| p.service.clone()).collect(),
        result: Outcome::Ok,
        forward: false,
        pulled: false,
        duration_ms: record.duration_ms.unwrap_or_default(),
        detail,
        logs: Vec::new(),
    })
}
