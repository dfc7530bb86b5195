//! `backtrack drill [SELECTOR...]`: rehearse rollbacks (default: `previous` and `last-known-good`)
//! on a scratch copy of the target, without touching production; one row per candidate, and exit
//! code 11 when a candidate would fail, so CI or cron can run `backtrack drill lkg` nightly.

use std::sync::Arc;

use serde::Serialize;

use super::App;
use crate::adapters::registry::Registry;
use crate::cli::DrillArgs;
use crate::domain::digest::Digest;
use crate::domain::history;
use crate::domain::image::ImageRef;
use crate::error::Failure;
use crate::ops::drill::{self, DrillSetup, Rehearsal};
use crate::ops::fleet::Host;
use crate::ops::{catalog::Catalog, deployed, guard, interrupt, resolve};
use crate::output::{Report, escape, render_table, table};

/// What `drill` rehearses when no selector is given.
pub const DEFAULT_SELECTORS: [&str; 2] = ["previous", "last-known-good"];

#[derive(Debug, Serialize)]
struct DrillReport {
    target: String,
    /// The production container the copy was made from.
    container: String,
    /// Production's image while the drill ran (untouched).
    running: Option<String>,
    ready: bool,
    candidates: Vec<Rehearsal>,
}

pub async fn run(app: &App<'_>, args: &DrillArgs) -> anyhow::Result<()> {
    if let Ok(target) = app.target()
        && target.kind == crate::settings::TargetKind::Swarm
    {
        return Err(crate::error::Failure::Usage(format!(
            "rehearse {}: a drill copies a container beside production, and a Swarm service's tasks \
             belong to Swarm; `backtrack validate` checks what runs, and a failed deploy of a service \
             is reverted by itself",
            target.display()
        ))
        .into());
    }
    // A release rehearses every service's image of each candidate, each beside its production.
    let registries = app.registries()?;
    let selectors: Vec<String> = if args.selectors.is_empty() {
        DEFAULT_SELECTORS.iter().map(|s| s.to_string()).collect()
    } else {
        args.selectors.clone()
    };
    // One drill at a time per target (the scratch copy has one name), and none during a swap.
    let command = format!("backtrack drill {}", selectors.join(" "));
    let (hosts, _) = app.hosts(Some(&command), None).await?;
    interrupt::install();
    let catalogs = Catalog::load_all(&registries).await?;
    let (registries, catalogs) = (&registries, &catalogs.iter().collect::<Vec<_>>());
    let results = app
        .on_each(&hosts, async |h| {
            drill_host(app, h, registries, catalogs, &selectors, args).await
        })
        .await;
    let (total, failing) = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .flat_map(|r| &r.candidates)
        .fold((0, 0), |(t, f), c| (t + 1, f + usize::from(!c.ready)));
    app.report_per_host(results)?;
    if interrupt::requested() {
        return Err(Failure::Interrupted.into());
    }
    if failing > 0 {
        return Err(Failure::DrillFailed { failing, total }.into());
    }
    Ok(())
}

/// Rehearses every selector on one host, beside what runs there.
async fn drill_host(
    app: &App<'_>,
    host: &Host,
    registries: &[Arc<dyn Registry>],
    catalogs: &[&Catalog],
    selectors: &[String],
    args: &DrillArgs,
) -> anyhow::Result<DrillReport> {
    let project = app.project()?;
    let target = app.target()?;
    let (registry, catalog) = (registries[0].as_ref(), catalogs[0]);
    let (engine, journal) = (&host.engine, &host.journal);
    let records = journal.read()?;
    if !history::open_operations(&records).is_empty() {
        app.printer.note(
            "note: an interrupted operation is open in the journal; drill leaves it alone (the next deploy, \
             rollback or emergency settles it)",
        );
    }
    let restore = args.restore_config || (target.restore_config && !args.keep_config);
    let configs = crate::ops::config::Configs::new(&records, restore);
    let ops = configs.ops();
    let current = deployed::read(engine, target, &project.registry.display()).await?;
    let Some(production) = current.first() else {
        anyhow::bail!("rehearse on {}: it has no container", target.display());
    };
    // What each copy is made from: the target's first container, or each service's.
    let mut productions: Vec<(Option<&str>, &deployed::Deployed)> = Vec::new();
    for m in &target.members {
        let d = current
            .iter()
            .find(|d| d.service.as_deref() == Some(m.name.as_str()))
            .ok_or_else(|| anyhow::anyhow!("rehearse on {}: {} has no container", target.display(), m.name))?;
        productions.push((Some(m.name.as_str()), d));
    }
    if productions.is_empty() {
        productions.push((None, production));
    }
    if current.len() > productions.len() {
        app.printer.note(format!(
            "note: {} has {} replicas; the rehearsal copies {}",
            target.display(),
            current.len(),
            production.container.name
        ));
    }
    let floor = guard::floor(engine, &current).await;

    // Each selector to an image; two selectors naming one digest are rehearsed once.
    // Rows keep the order the selectors were given in (by the first selector naming the image).
    let mut rows: Vec<(usize, Rehearsal)> = Vec::new();
    let mut todo: Vec<(usize, Digest, Vec<String>, crate::domain::image::ImageRef)> = Vec::new();
    for (i, s) in selectors.iter().enumerate() {
        match resolve::resolve(registry, catalog, s, ops, Some(&production.image), &project.lkg_tag()).await {
            Ok(chosen) => match todo.iter_mut().find(|(_, d, _, _)| *d == chosen.digest) {
                Some((_, _, names, _)) => names.push(s.clone()),
                None => todo.push((i, chosen.digest, vec![s.clone()], chosen.image)),
            },
            Err(e) => rows.push((i, Rehearsal::unresolved(s, format!("{e:#}")))),
        }
    }
    let auth = if todo.is_empty() {
        None
    } else {
        Some(registry.pull_auth().await?)
    };
    // In a release, `[health] http` is the first service's probe (as in a swap).
    let unprobed = project.health.without_probe();
    let setup = |first: bool| DrillSetup {
        engine,
        journal,
        configs: &configs,
        printer: &app.printer,
        auth: auth.as_ref(),
        health: if first { &project.health } else { &unprobed },
        with_volumes: args.with_volumes,
        target: target.display(),
    };
    for (i, digest, names, image) in todo {
        if interrupt::requested() {
            break;
        }
        // Each service's image of the candidate (one service: the candidate itself).
        let images: Vec<(ImageRef, String)> = if target.is_release() {
            match crate::ops::release::images_of(target, registries, catalogs, &image).await {
                Ok(images) => images.into_iter().map(|s| (s.image, s.pull)).collect(),
                Err(e) => {
                    rows.push((i, Rehearsal::unresolved(&names.join(", "), format!("{e:#}"))));
                    continue;
                }
            }
        } else {
            vec![(image.clone(), registry.pull_reference(&digest))]
        };
        for (n, ((service, production), (image, pull))) in productions.iter().zip(images).enumerate() {
            let names: Vec<String> = match service {
                Some(s) => names.iter().map(|x| format!("{x} ({s})")).collect(),
                None => names.clone(),
            };
            app.printer
                .note(format!("rehearsing {} ({})", image.display(), names.join(", ")));
            let mut r = drill::rehearse(&setup(n == 0), production, names, &image, &pull).await?;
            if let Some(f) = &floor
                && f.refuses(image.version.as_deref())
            {
                r.ready = false;
                let why = format!(
                    "a rollback to it is refused: {}; it needs --force --reason",
                    f.describe()
                );
                r.failed = Some(match r.failed.take() {
                    Some(other) => format!("{why}; and {other}"),
                    None => why,
                });
            }
            rows.push((i, r));
        }
    }
    // Stable: a release's services keep their order within a candidate.
    rows.sort_by_key(|(i, _)| *i);
    let rows: Vec<Rehearsal> = rows.into_iter().map(|(_, r)| r).collect();
    Ok(DrillReport {
        target: target.display(),
        container: productions
            .iter()
            .map(|(_, d)| d.container.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        running: Some(production.image.display()),
        ready: rows.iter().all(|r| r.ready),
        candidates: rows,
    })
}

fn seconds(ms: Option<u64>) -> String {
    ms.map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0))
}

impl Report for DrillReport {
    fn human(&self) -> String {
        let mut t = table(["candidate", "selector", "ready", "pull", "healthy after", "failed"]);
        for r in &self.candidates {
            let pull = match (r.pull_ms, r.pulled) {
                (Some(_), false) => "present".to_string(),
                (ms, _) => seconds(ms),
            };
            t.add_row(vec![
                r.candidate.as_ref().map_or("-".into(), |c| c.display()),
                r.selectors.join(", "),
                if r.ready { "yes" } else { "NO" }.to_string(),
                pull,
                seconds(r.healthy_ms),
                r.failed.as_deref().map_or(String::new(), escape),
            ]);
        }
        let mut out = format!(
            "drill of {} (copy of {}, which runs {}; production was not touched)\n{}",
            self.target,
            self.container,
            self.running.as_deref().unwrap_or("-"),
            render_table(&t)
        );
        for r in &self.candidates {
            let name = r
                .candidate
                .as_ref()
                .map_or_else(|| r.selectors.join(", "), |c| c.display());
            if !r.differences.is_empty() {
                out.push_str(&format!("\n{name}: the copy differed from a real rollback:"));
                for d in &r.differences {
                    out.push_str(&format!("\n  - {d}"));
                }
            }
            if !r.logs.is_empty() {
                out.push_str(&format!("\n{name}: last {} lines of the copy's output:", r.logs.len()));
                for l in &r.logs {
                    out.push_str(&format!("\n  | {}", escape(l)));
                }
            }
            for w in &r.warnings {
                out.push_str(&format!("\n{name}: warning: {w}"));
            }
        }
        out.push_str(if self.ready {
            "\nevery candidate would roll back"
        } else {
            "\nnot every candidate would roll back"
        });
        out
    }
}
