//! The commands whose work differs for a Swarm service (`[target] kind = "swarm"`): `status`
//! (the service and its tasks by node), `validate` (one pass of every check) and `emergency`
//! (last known good forced onto every task, no gate). `deploy` and `rollback` share their
//! resolution with containers and branch into `ops::swarm` in `deploy.rs`.

use serde::Serialize;

use super::App;
use crate::adapters::docker::swarm::{TaskView, UpdateOverrides};
use crate::cli::EmergencyArgs;
use crate::domain::digest::Digest;
use crate::domain::history::{self, Operation};
use crate::domain::image::ImageRef;
use crate::error::Failure;
use crate::ops::swarm as swarm_ops;
use crate::ops::{catalog::Catalog, resolve};
use crate::output::{Report, confirm, render_table, table};

#[derive(Debug, Serialize)]
struct SwarmStatus {
    target: String,
    registry: String,
    service: String,
    /// The image the service's spec names.
    image: String,
    version: Option<String>,
    digest: Option<Digest>,
    /// Desired replicas (`None`: a global service).
    replicas: Option<u64>,
    running: usize,
    /// `UpdateStatus.State` of the last update.
    update: Option<String>,
    update_message: Option<String>,
    tasks: Vec<TaskRow>,
    last_known_good: Option<ImageRef>,
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct TaskRow {
    task: String,
    node: String,
    /// `starting` until its HEALTHCHECK passes, then `running`.
    state: String,
    version: Option<String>,
    digest: Option<Digest>,
    ports: Vec<String>,
    error: Option<String>,
}

impl Report for SwarmStatus {
    fn human(&self) -> String {
        let replicas = match self.replicas {
            Some(r) => format!("{}/{r} tasks running", self.running),
            None => format!("global, {} tasks running", self.running),
        };
        let mut out = format!(
            "target:          {}\nregistry:        {}\nservice:         {} ({replicas}; last update {})\nspec image:      {} ({})\n",
            self.target,
            self.registry,
            self.service,
            self.update.as_deref().unwrap_or("none"),
            self.version.as_deref().unwrap_or("?"),
            self.digest.as_ref().map_or("-", |d| d.short()),
        );
        out.push_str(&format!(
            "last_known_good: {}\n\n",
            self.last_known_good.as_ref().map_or("(not set)".into(), |l| format!(
                "{} ({})",
                l.display(),
                l.digest.as_ref().map_or("-", |d| d.short())
            ))
        ));
        let mut t = table(["task", "node", "state", "version", "digest", "ports", "error"]);
        for r in &self.tasks {
            t.add_row(vec![
                r.task.clone(),
                r.node.clone(),
                r.state.clone(),
                r.version.clone().unwrap_or_else(|| "?".into()),
                r.digest.as_ref().map_or("-".into(), |d| d.short().to_string()),
                if r.ports.is_empty() {
                    "-".into()
                } else {
                    r.ports.join(",")
                },
                r.error.clone().unwrap_or_default(),
            ]);
        }
        out.push_str(&render_table(&t));
        for w in &self.warnings {
            out.push_str(&format!("\nwarning: {w}"));
        }
        out
    }
}

pub async fn status(app: &App<'_>) -> anyhow::Result<()> {
    let project = app.project()?;
    let target = app.target()?;
    let registry = app.registry()?;
    let engine = app.engine().await?;
    let records = app.journal()?.read()?;
    let ops = history::operations(&records);
    let svc = swarm_ops::service(&engine, target).await?;
    let tasks = engine.service_tasks(&svc).await?;
    let current = swarm_ops::entries(&svc, &tasks);
    let live: Vec<&TaskView> = tasks.iter().filter(|t| t.desired == "running").collect();
    let running = live.iter().filter(|t| t.state == "running").count();
    let version_of = |name: &str| {
        current
            .iter()
            .find(|d| d.container.name == name)
            .and_then(|d| d.image.version.clone())
    };
    // Tasks Swarm wants running, then the latest failed one per slot (the reason an update stopped).
    let mut rows: Vec<TaskRow> = live
        .iter()
        .map(|t| TaskRow {
            task: t.name.clone(),
            node: t.node.clone(),
            state: t.state.clone(),
            version: version_of(&t.name),
            digest: t.digest(),
            ports: t.ports.iter().map(|(c, h)| format!("{h}->{c}")).collect(),
            error: t.error.clone(),
        })
        .collect();
    // Failed tasks matter while the service is short of tasks or its last update did not
    // complete; after that they are history (`backtrack history` has the record).
    let unsettled = svc.replicas.is_some_and(|r| running < r as usize)
        || !matches!(svc.update_state.as_deref(), None | Some("completed"));
    let mut seen = std::collections::BTreeSet::new();
    for t in tasks
        .iter()
        .filter(|t| unsettled && matches!(t.state.as_str(), "failed" | "rejected"))
    {
        if seen.insert(t.name.clone()) {
            rows.push(TaskRow {
                task: format!("{} (earlier)", t.name),
                node: t.node.clone(),
                state: t.state.clone(),
                version: None,
                digest: t.digest(),
                ports: Vec::new(),
                error: t.error.clone(),
            });
        }
    }

    let mut warnings = Vec::new();
    if svc
        .container_labels()
        .contains_key(crate::adapters::docker::LABEL_EMERGENCY)
    {
        warnings.push(format!(
            "EMERGENCY: {} runs the last known good image since `backtrack emergency`; `backtrack deploy` or \
             `rollback` leaves emergency mode",
            svc.name
        ));
    }
    if let Some(r) = svc.replicas
        && running < r as usize
    {
        warnings.push(format!("{running} of {r} tasks run: see the state and error columns"));
    }
    if let Some(last) = history::last_committed(&ops)
        && let Some(want) = last.to.as_ref().and_then(|t| t.digest.as_ref())
        && svc.pinned_digest().as_ref() != Some(want)
    {
        warnings.push(format!(
            "drift: the service's spec names {} but backtrack's last {} put {} ({}) there {}; something else changed it",
            svc.pinned_digest().map_or_else(|| svc.image.clone(), |d| d.short().to_string()),
            last.op.as_str(),
            last.to.as_ref().map_or("-".into(), ImageRef::display),
            want.short(),
            crate::output::ago(chrono::Utc::now(), last.started)
        ));
    }
    let last_known_good = match Catalog::load(registry.as_ref()).await {
        Ok(catalog) => resolve::last_known_good(registry.as_ref(), &catalog, &ops, &project.lkg_tag()).await?,
        Err(e) => {
            warnings.push(format!(
                "registry: {}; last_known_good is taken from the journal",
                crate::error::render(&e)
            ));
            history::marked_good(&ops).next().cloned()
        }
    };
    warnings.extend(super::status::in_progress(&records, app.lock_holder()?));
    app.printer.report(&SwarmStatus {
        target: target.display(),
        registry: registry.name(),
        service: svc.name.clone(),
        image: svc.image.clone(),
        version: {
            let spec = swarm_ops::spec_entry(&svc).image;
            spec.version.or(spec.tag)
        },
        digest: svc.pinned_digest(),
        replicas: svc.replicas,
        running,
        update: svc.update_state.clone(),
        update_message: svc.update_message.clone(),
        tasks: rows,
        last_known_good,
        warnings,
    })
}

#[derive(Debug, Serialize)]
struct EmergencyReport<'a> {
    dry_run: bool,
    source: &'static str,
    #[serde(flatten)]
    plan: &'a swarm_ops::SwarmPlan,
    /// A release's other services, each to its own last known good image.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    others: Vec<&'a swarm_ops::SwarmPlan>,
    converged: Option<bool>,
    detail: Option<String>,
}

impl Report for EmergencyReport<'_> {
    fn human(&self) -> String {
        let p = self.plan;
        let mut what = format!(
            "{} ({}, from the {})",
            p.to.display(),
            p.to.digest.as_ref().map_or("-", |d| d.short()),
            self.source
        );
        for o in &self.others {
            what.push_str(&format!(
                "; {} to its {} ({})",
                o.service,
                o.to.display(),
                o.to.digest.as_ref().map_or("-", |d| d.short())
            ));
        }
        if self.dry_run {
            return format!(
                "plan: EMERGENCY on {}: replace every task with last known good {what}, no validation gate\n\
                 equivalent docker command:\n  {}\ndry run: nothing was changed",
                p.target, p.command
            );
        }
        let state = match (self.converged, &self.detail) {
            (Some(true), _) => "every task runs it".to_string(),
            (_, Some(d)) => format!("NOT converged: {d}"),
            _ => "not checked".into(),
        };
        format!(
            "EMERGENCY: {} now names last known good {what}; {state}\n\
             `backtrack deploy` or `rollback` leaves emergency mode",
            p.target
        )
    }
}

/// `emergency` on a Swarm service: a forced update to last known good (every task replaced,
/// even if the spec already names it), waited for but not validated, never reverted.
pub async fn emergency(app: &App<'_>, args: &EmergencyArgs) -> anyhow::Result<()> {
    let project = app.project()?;
    let target = app.target()?;
    if args.skip_unreachable {
        return Err(super::deploy::skip_unreachable_on_swarm(target));
    }
    // A release: every service to its own last known good image, one operation.
    let registries = app.registries()?;
    let registry = &registries[0];
    let journal = app.journal()?;
    if args.env_file.is_some() {
        return Err(Failure::Usage(format!(
            "use --env-file on {}: a Swarm service keeps its environment in its spec; \
             `docker service update --env-add` changes it",
            target.display()
        ))
        .into());
    }
    let _lock = app.lock_unless(args.dry_run, "backtrack emergency")?;
    let engine = app.engine().await?;
    let auth = registry.pull_auth().await.ok();
    if !args.dry_run {
        crate::ops::interrupt::install();
        if let Err(e) = swarm_ops::settle(&engine, &journal, &app.printer, target, auth.as_ref()).await {
            app.printer.note(format!("warning: {}", crate::error::render(&e)));
        }
    }
    let configs = crate::ops::config::Configs::new(&journal.read()?, args.restore_config);
    let pointer = project.lkg_tag();
    let (lkg, source) =
        super::emergency::find_last_known_good(&app.printer, registry.as_ref(), configs.ops(), &pointer).await?;
    let services = if target.is_release() {
        super::emergency::release_last_known_good(target, &registries, configs.ops(), &lkg, &pointer).await?
    } else {
        Vec::new()
    };
    let overrides = UpdateOverrides {
        force: true,
        ..Default::default()
    };
    let read = swarm_ops::services_of(&engine, target).await?;
    let mut plans = Vec::with_capacity(read.len());
    let mut current = Vec::new();
    for (i, (t, svc, entries)) in read.into_iter().enumerate() {
        let (lkg, registry) = match services.get(i) {
            Some(s) => (&s.lkg, s.registry.as_ref()),
            None => (&lkg, registry.as_ref()),
        };
        let digest = lkg.digest.clone().expect("a last known good always has a digest");
        let reference = registry.pull_reference(&digest);
        let repository = reference.rsplit_once('@').map_or(reference.as_str(), |(r, _)| r);
        let to = ImageRef {
            tag: Some(pointer.clone()),
            ..lkg.clone()
        };
        let from = entries.first().map(|d| d.image.clone()).unwrap_or_default();
        plans.push(
            swarm_ops::plan(Operation::Emergency, &t, &svc, from, &to, repository, &overrides).with_config(&configs)?,
        );
        current.extend(entries);
    }
    let floor = crate::ops::guard::registry_floor(registry.as_ref(), &current).await;
    crate::ops::guard::enforce(
        floor,
        lkg.version.as_deref(),
        format!("last known good {}", lkg.display()),
        args.force,
        args.reason.as_deref(),
        &app.printer,
    )?;
    let plan = &plans[0];
    let mut report = EmergencyReport {
        dry_run: args.dry_run,
        source,
        plan,
        others: plans.iter().skip(1).collect(),
        converged: None,
        detail: None,
    };
    if args.dry_run {
        return app.printer.report(&report);
    }
    if !app.settings.yes {
        let q = format!(
            "EMERGENCY: replace every task of {} with last known good {}?",
            target.display(),
            lkg.display()
        );
        if !confirm(&app.printer, &q, "confirm the emergency rollback")? {
            return Err(Failure::Cancelled.into());
        }
    }
    crate::ops::interrupt::arm();
    let opts = swarm_ops::EmergencyOptions {
        auth: auth.as_ref(),
        reason: args.reason.as_deref(),
        timeout: project.health.timeout,
        notify: &project.notify,
        scope: target.environment.clone().unwrap_or_else(|| target.display()),
        repository: registry.name(),
    };
    let names: Vec<String> = target.members.iter().map(|m| m.name.clone()).collect();
    let done = swarm_ops::emergency(
        &engine,
        &journal,
        &app.printer,
        &plans,
        &target.display(),
        &names,
        &opts,
    )
    .await?;
    report.converged = Some(done.detail.is_none());
    report.detail = done.detail.clone();
    app.printer.report(&report)?;
    if let Some(d) = done.detail {
        return Err(Failure::Unhealthy(format!("the emergency update did not converge: {d}")).into());
    }
    Ok(())
}
