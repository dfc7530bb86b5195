//! `backtrack build [--version V] [--push]`: build the current checkout as a versioned image
//! with the OCI labels (version, revision, created, source) and `VERSION` as a build arg, the way
//! the versions that rollback uses should be made. Refuses a dirty tree unless `--allow-dirty`.

use std::collections::HashMap;

use serde::Serialize;

use super::App;
use crate::adapters::docker::build::BuildSpec;
use crate::adapters::git;
use crate::cli::BuildArgs;
use crate::domain::digest::Digest;
use crate::ops::rebuild::{docker_tag, labels};
use crate::output::{Progress, Report};

#[derive(Debug, Serialize)]
struct BuildReport {
    image: String,
    version: String,
    revision: String,
    dirty: bool,
    pushed: bool,
    digest: Option<Digest>,
}

impl Report for BuildReport {
    fn human(&self) -> String {
        let mut out = format!(
            "built {} (version {}, revision {}{})",
            self.image,
            self.version,
            &self.revision[..12.min(self.revision.len())],
            if self.dirty { ", with uncommitted changes" } else { "" }
        );
        if let Some(d) = &self.digest {
            out.push_str(&format!("\npushed as {d}"));
        }
        out
    }
}

pub async fn run(app: &App<'_>, args: &BuildArgs) -> anyhow::Result<()> {
    let project = app.project()?;
    let settings = &project.rebuild;
    let repo = git::Repo::open(&settings.repo)?;
    let dirty = repo.dirty()?;
    if !dirty.is_empty() && !args.allow_dirty {
        anyhow::bail!(
            "build {}: the checkout has uncommitted changes ({}); commit them, or pass --allow-dirty",
            repo.path.display(),
            dirty.iter().take(5).map(|l| l.trim()).collect::<Vec<_>>().join(", ")
        );
    }
    let version = match &args.version {
        Some(v) => v.clone(),
        None => repo
            .describe()
            .map_err(|e| anyhow::anyhow!("{e}; tag a release (git tag v1.0.0) or pass --version"))?,
    };
    let tag = docker_tag(&version).map_err(|e| anyhow::anyhow!("build: {e}"))?;
    let commit = repo.head()?;
    let registry = app.registry()?;
    // On a fleet, the first host (in lock order) builds, as a rebuild from Git does.
    let (hosts, _) = app.hosts(None, None).await?;
    let addresses: Vec<String> = hosts.iter().map(|h| h.address.clone()).collect();
    let engine = &hosts[crate::domain::fleet::lock_order(&addresses)[0]].engine;
    let name = registry.name();
    let mut l = labels(&version, &commit, repo.origin());
    if !dirty.is_empty() {
        l.insert("io.backtrack.dirty".into(), "true".into());
    }
    let spec = BuildSpec {
        context: &repo.path.join(&settings.context),
        dockerfile: &settings.dockerfile,
        image: format!("{name}:{tag}"),
        build_args: HashMap::from([("VERSION".to_string(), version.clone())]),
        labels: l,
    };
    let progress = Progress::new(&app.printer, &format!("building {}", spec.image));
    let built = engine
        .build(&spec, |line| progress.set(&format!("building: {line}")))
        .await;
    progress.finish(&if built.is_ok() {
        format!("built {}", spec.image)
    } else {
        format!("build of {} failed", spec.image)
    });
    built?;
    let mut digest = None;
    if args.push {
        let auth = registry.pull_auth().await.ok();
        let progress = Progress::new(&app.printer, &format!("pushing {}", spec.image));
        engine
            .push(&name, &tag, auth.as_ref(), |s| progress.set(&format!("pushing: {s}")))
            .await?;
        progress.finish(&format!("pushed {}", spec.image));
        digest = registry.tag_digest(&tag).await?;
    }
    app.printer.report(&BuildReport {
        image: spec.image.clone(),
        version,
        revision: commit,
        dirty: !dirty.is_empty(),
        pushed: args.push,
        digest,
    })
}
