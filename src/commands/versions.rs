//! `backtrack versions`: the versions in the registry, highest first, with what each image is
//! and which one is deployed or last known good.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::App;
use crate::cli::VersionsArgs;
use crate::domain::digest::Digest;
use crate::domain::history;
use crate::domain::image::{human_size, is_lkg_tag};
use crate::ops::{catalog::Catalog, deployed};
use crate::output::{Report, render_table, table};

const DEFAULT_LIMIT: usize = 20;

#[derive(Debug, Serialize)]
struct VersionsReport {
    repository: String,
    /// Version tags in the repository (all of them, not only those shown).
    total_versions: usize,
    /// Other tags in the repository.
    total_other_tags: usize,
    tags: Vec<Row>,
    #[serde(skip)]
    limited: bool,
    /// Fleet hosts that did not answer: their deployed marks are missing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unreachable: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Row {
    tag: String,
    /// The semver version, `null` for tags that are not versions.
    version: Option<String>,
    digest: Option<Digest>,
    created: Option<DateTime<Utc>>,
    pushed: Option<DateTime<Utc>>,
    size: Option<u64>,
    revision: Option<String>,
    description: Option<String>,
    /// `deployed` (on a fleet: `deployed 2/3 hosts` unless on every host), `last_known_good` (or `last_known_good-ENV`, one per environment pointing at
    /// it), `failed` (its last validation on this target failed); for a release, `release` (every
    /// service's repository has it) or `not in worker` (the services whose repository lacks it).
    marks: Vec<String>,
}

pub async fn run(app: &App<'_>, args: &VersionsArgs) -> anyhow::Result<()> {
    let project = app.project()?;
    // A release lists its first service's repository, marked with what the others have.
    let registries = app.registries()?;
    let registry = &registries[0];
    let members = app.target().map(|t| t.members.as_slice()).unwrap_or_default();
    // What is deployed is read while the registry answers (best effort: a down engine only
    // loses the mark). On a fleet, every host is read at once; the mark counts the hosts.
    // The migration floor of the running image marks the versions below it.
    let deployed_task = async {
        let Ok(target) = app.target() else {
            return Placement::default();
        };
        if app.is_fleet() {
            return super::fleet::placement(app, target, &registry.name()).await;
        }
        let engine = match app.engine().await {
            Ok(e) => e,
            Err(e) => {
                tracing::info!("deployed mark unavailable: {e}");
                return Placement::default();
            }
        };
        match deployed::read(&engine, target, &project.registry.display()).await {
            Ok(d) => {
                let floor = crate::ops::guard::floor(&engine, &d).await;
                Placement::one_host(d.into_iter().filter_map(|d| d.digest).collect(), floor)
            }
            Err(e) => {
                tracing::info!("deployed mark unavailable: {e:#}");
                Placement::default()
            }
        }
    };
    let others = futures::future::join_all(registries.iter().skip(1).map(|r| Catalog::load(r.as_ref())));
    let (catalog, placement, others) = tokio::join!(Catalog::load(registry.as_ref()), deployed_task, others);
    // Each other service of a release, with the versions its repository has.
    let mut elsewhere: Vec<(&str, BTreeSet<semver::Version>)> = Vec::new();
    for (m, c) in members.iter().skip(1).zip(others) {
        let versions = c?
            .versions
            .iter()
            .map(|v| crate::domain::version::strip_build(&v.version))
            .collect();
        elsewhere.push((m.name.as_str(), versions));
    }
    for (host, why) in &placement.unreachable {
        app.printer.note(format!(
            "warning: {host} did not answer ({why}); its deployed marks are missing"
        ));
    }
    let floor = placement.floor.clone();
    let catalog = catalog?;

    let limit = match (args.limit, args.all) {
        (Some(0), _) | (None, true) => usize::MAX,
        (Some(n), _) => n,
        (None, false) => DEFAULT_LIMIT,
    };
    let mut shown: Vec<(String, Option<String>)> = catalog
        .versions
        .iter()
        .take(limit)
        .map(|v| (v.tag.clone(), Some(v.version.to_string())))
        .collect();
    let limited = shown.len() < catalog.versions.len();
    if args.all {
        shown.extend(catalog.others.iter().map(|t| (t.clone(), None)));
    }

    let mut lookup: Vec<String> = shown.iter().map(|(t, _)| t.clone()).collect();
    // Every environment's pointer (`last_known_good`, `last_known_good-prod`, ...).
    let pointers: Vec<String> = catalog.others.iter().filter(|t| is_lkg_tag(t)).cloned().collect();
    if !args.all {
        lookup.extend(pointers.iter().cloned());
    }
    let failed = match app.journal().and_then(|j| Ok(j.read()?)) {
        Ok(records) => history::failed_versions(&history::operations(&records)),
        Err(e) => {
            tracing::info!("failed marks unavailable: {e:#}");
            Default::default()
        }
    };
    // Version tags may come from the cache; if one of those digests is gone (pruned elsewhere),
    // ask the registry for all of them once more.
    let mut refresh = args.refresh;
    let (digests, infos) = loop {
        let digests = registry
            .listing_tag_digests(&lookup, refresh)
            .await
            .with_context(|| format!("resolve tags of {}", registry.name()))?;
        let unique: Vec<Digest> = shown
            .iter()
            .filter_map(|(t, _)| digests.get(t).cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        match registry.image_infos(&unique).await {
            Ok(infos) => break (digests, infos),
            Err(e) if e.is_not_found() && !refresh => refresh = true,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("read image metadata from {}", registry.name())));
            }
        }
    };
    registry.flush_cache();

    let pointer_digests: Vec<(&String, &Digest)> = pointers.iter().filter_map(|p| Some((p, digests.get(p)?))).collect();
    let rows = shown
        .into_iter()
        .map(|(tag, version)| {
            let digest = digests.get(&tag).cloned();
            let info = digest.as_ref().and_then(|d| infos.get(d));
            let mut marks = Vec::new();
            if let Some(mark) = digest.as_ref().and_then(|d| placement.mark(d)) {
                marks.push(mark);
            }
            if !is_lkg_tag(&tag) {
                for (p, d) in &pointer_digests {
                    if digest.as_ref() == Some(*d) {
                        marks.push(p.to_string());
                    }
                }
            }
            if !members.is_empty()
                && let Some(v) = version.as_deref().and_then(crate::domain::version::parse_version)
            {
                let v = crate::domain::version::strip_build(&v);
                let lacking: Vec<&str> = elsewhere
                    .iter()
                    .filter(|(_, have)| !have.contains(&v))
                    .map(|(name, _)| *name)
                    .collect();
                marks.push(if lacking.is_empty() {
                    "release".to_string()
                } else {
                    format!("not in {}", lacking.join(", "))
                });
            }
            if version.as_ref().is_some_and(|v| failed.contains(v)) {
                marks.push("failed".to_string());
            }
            if let Some(f) = &floor
                && f.refuses(version.as_deref())
            {
                marks.push(format!("below-min-rollback-{}", f.min));
            }
            Row {
                tag,
                version,
                created: info.and_then(|i| i.created),
                pushed: info.and_then(|i| i.pushed),
                size: info.and_then(|i| i.size),
                revision: info.and_then(|i| i.revision()).map(str::to_string),
                description: info.and_then(|i| i.description()).map(str::to_string),
                digest,
                marks,
            }
        })
        .collect();
    app.printer.report(&VersionsReport {
        repository: registry.name(),
        total_versions: catalog.versions.len(),
        total_other_tags: catalog.others.len(),
        tags: rows,
        limited,
        unreachable: placement.unreachable.into_iter().map(|(h, _)| h).collect(),
    })
}

/// Where the target's digests run: on how many of its hosts each (one host unless a fleet), the
/// hosts that did not answer, and the migration floor of what runs.
#[derive(Debug, Default)]
pub(super) struct Placement {
    pub hosts: usize,
    /// Each digest running, with the number of hosts running it.
    pub on: BTreeMap<Digest, usize>,
    pub unreachable: Vec<(String, String)>,
    pub floor: Option<crate::ops::guard::Floor>,
}

impl Placement {
    pub(super) fn one_host(digests: Vec<Digest>, floor: Option<crate::ops::guard::Floor>) -> Self {
        Self {
            hosts: 1,
            on: digests.into_iter().map(|d| (d, 1)).collect(),
            unreachable: Vec::new(),
            floor,
        }
    }

    /// `deployed` (every host), `deployed 2/3 hosts`, or nothing.
    pub(super) fn mark(&self, digest: &Digest) -> Option<String> {
        crate::domain::fleet::deployed_mark(self.on.get(digest).copied().unwrap_or(0), self.hosts)
    }
}

impl Report for VersionsReport {
    fn human(&self) -> String {
        if self.tags.is_empty() {
            return format!(
                "no version tags in {} ({} other tags; --all shows them)",
                self.repository, self.total_other_tags
            );
        }
        let mut t = table([
            "version",
            "digest",
            "created",
            "size",
            "revision",
            "description",
            "marks",
        ]);
        let now = Utc::now();
        for r in &self.tags {
            t.add_row(vec![
                r.tag.clone(),
                r.digest.as_ref().map_or("-".into(), |d| d.short().to_string()),
                r.pushed
                    .or(r.created)
                    .map_or("-".into(), |c| crate::output::ago(now, c)),
                r.size.map_or("-".into(), human_size),
                r.revision.as_deref().map_or("-".into(), |r| {
                    crate::output::escape(&r.chars().take(12).collect::<String>())
                }),
                r.description
                    .as_deref()
                    .map_or("-".into(), |d| crate::output::escape(&truncate(d, 40))),
                r.marks.join(","),
            ]);
        }
        let mut out = render_table(&t);
        if self.limited {
            out.push_str(&format!(
                "\n({} of {} versions shown; --limit 0 or --all for every one)",
                self.tags.iter().filter(|r| r.version.is_some()).count(),
                self.total_versions
            ));
        }
        out
    }
}

fn truncate(s: &str, n: usize) -> String {
    let first_line = s.lines().next().unwrap_or_default();
    if first_line.chars().count() <= n {
        first_line.to_string()
    } else {
        format!("{}…", first_line.chars().take(n - 1).collect::<String>())
    }
}
