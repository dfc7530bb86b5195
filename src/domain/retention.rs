//! Retention: the policy file format and the plan it yields for a repository's images.
//!
//! Rules only ever keep. An image (one digest) is deleted only when nothing keeps it: no
//! protection, no rule for any of its tags. Every image in the plan carries every reason, so a
//! dry run explains each keep and each delete. Pure: the caller passes the images, what is
//! deployed, the journal's recent deployments, and "now".

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use globset::{Glob, GlobSet, GlobSetBuilder};
use semver::Version;
use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::duration::serde_human;
use super::image::{ImageRef, is_lkg_tag};
use super::version::VersionTag;

/// A policy file (`retention-policies/*.toml`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub description: Option<String>,
    #[serde(default)]
    pub protect: Protect,
    #[serde(default)]
    pub keep: Vec<toml::Spanned<KeepRule>>,
    pub prereleases: Option<Prereleases>,
    pub untagged: Option<Untagged>,
    /// Non-version tags (globs) that rules decide about like versions; other non-version tags
    /// always keep their image.
    #[serde(default)]
    pub other_tags: OtherTags,
    /// Says that a policy without `[[keep]]` rules is meant: every image nothing protects goes.
    #[serde(default)]
    pub keep_nothing: bool,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Protect {
    /// The last N distinct versions deployed, from the journal.
    #[serde(default)]
    pub history: usize,
    /// Globs: an image with a matching tag is never deleted.
    #[serde(default)]
    pub tags: Globs,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeepRule {
    /// The N highest released versions.
    pub newest: Option<usize>,
    /// With `count`: the `count` highest released versions of each major or minor line.
    pub newest_per: Option<Per>,
    pub count: Option<usize>,
    /// Images pushed (or, where the registry does not say, built) within this long. With
    /// `tags`, only images with a matching tag, pushed within this long.
    #[serde(default, deserialize_with = "serde_human::deserialize_opt")]
    pub pushed_within: Option<Duration>,
    /// Globs against any tag of the image.
    pub tags: Option<Globs>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Per {
    Major,
    Minor,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prereleases {
    /// The N highest prereleases (prereleases are kept by this alone).
    pub newest: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Untagged {
    #[serde(deserialize_with = "serde_human::deserialize")]
    pub expire_after: Duration,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OtherTags {
    #[serde(default)]
    pub prune: Globs,
}

/// Tag globs as a policy writes them (`*` any run of characters, `?` one character, `[a-z]`
/// classes, `{a,b}` alternatives), compiled once by globset. A tag matches the whole pattern.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct Globs {
    patterns: Vec<String>,
    set: GlobSet,
}

impl Globs {
    /// The patterns as written.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn is_match(&self, tag: &str) -> bool {
        self.set.is_match(tag)
    }

    /// The first pattern (in the order written) that matches `tag`.
    pub fn first_match(&self, tag: &str) -> Option<&str> {
        let first = self.set.matches(tag).into_iter().min()?;
        Some(&self.patterns[first])
    }
}

impl TryFrom<Vec<String>> for Globs {
    type Error = globset::Error;

    fn try_from(patterns: Vec<String>) -> Result<Self, Self::Error> {
        let mut set = GlobSetBuilder::new();
        for p in &patterns {
            set.add(Glob::new(p)?);
        }
        Ok(Self {
            set: set.build()?,
            patterns,
        })
    }
}

impl PartialEq for Globs {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

impl Eq for Globs {}

/// A rule that parses but cannot mean anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// Byte offset in the file, for line:column.
    pub offset: usize,
    pub message: String,
}

impl Policy {
    /// Checks what serde cannot: each `[[keep]]` is exactly one rule, counts are positive.
    pub fn problems(&self) -> Vec<PolicyProblem> {
        let mut out = Vec::new();
        if self.keep.is_empty() && !self.keep_nothing {
            out.push(PolicyProblem {
                offset: 0,
                message: "the policy has no [[keep]] rule, so it would delete every image nothing protects; \
                          add [[keep]] rules, or `keep_nothing = true` if that is what you mean"
                    .into(),
            });
        }
        if self.keep_nothing && !self.keep.is_empty() {
            out.push(PolicyProblem {
                offset: 0,
                message: "keep_nothing = true contradicts the [[keep]] rules; remove one or the other".into(),
            });
        }
        for (i, rule) in self.keep.iter().enumerate() {
            let r = rule.get_ref();
            let at = rule.span().start;
            let n = i + 1;
            // `tags` with `pushed_within` is one rule: matching images pushed within that long.
            let kinds = [
                r.newest.is_some(),
                r.newest_per.is_some(),
                r.pushed_within.is_some() || r.tags.is_some(),
            ]
            .iter()
            .filter(|k| **k)
            .count();
            let mut problem = |message: String| out.push(PolicyProblem { offset: at, message });
            if kinds != 1 {
                problem(format!(
                    "[[keep]] rule {n} must have exactly one of newest, newest_per (with count), pushed_within, \
                     tags (or tags with pushed_within); split it into several [[keep]] rules"
                ));
                continue;
            }
            if r.newest == Some(0) {
                problem(format!("[[keep]] rule {n}: newest = 0 keeps nothing; remove the rule"));
            }
            match (r.newest_per, r.count) {
                (Some(_), None) => problem(format!("[[keep]] rule {n}: newest_per needs count (e.g. count = 1)")),
                (Some(_), Some(0)) => problem(format!("[[keep]] rule {n}: count = 0 keeps nothing")),
                (None, Some(_)) => problem(format!("[[keep]] rule {n}: count goes with newest_per")),
                _ => {}
            }
            if r.pushed_within == Some(Duration::ZERO) {
                problem(format!("[[keep]] rule {n}: pushed_within = 0 keeps nothing"));
            }
            if r.tags.as_ref().is_some_and(Globs::is_empty) {
                problem(format!("[[keep]] rule {n}: tags = [] names no tag"));
            }
        }
        out
    }

    /// Whether any rule looks at push times (only then must every image's time be fetched).
    pub fn uses_time(&self) -> bool {
        self.untagged.is_some() || self.keep.iter().any(|r| r.get_ref().pushed_within.is_some())
    }

    /// The policy in words, one line per rule (for `policy check`).
    pub fn describe(&self) -> Vec<String> {
        let mut out = vec!["always protected: what the target runs now, and last_known_good".to_string()];
        if self.protect.history > 0 {
            out.push(format!(
                "protected: the last {} versions deployed (journal)",
                self.protect.history
            ));
        }
        if !self.protect.tags.is_empty() {
            out.push(format!(
                "protected: images tagged {}",
                self.protect.tags.patterns().join(", ")
            ));
        }
        if self.keep_nothing {
            out.push("keep_nothing: no rule keeps anything; every image nothing protects is deleted".into());
        }
        for rule in &self.keep {
            out.push(format!("keep: {}", rule_name(rule.get_ref())));
        }
        if let Some(p) = &self.prereleases {
            out.push(format!("keep: the {} newest prereleases", p.newest));
        } else {
            out.push("prereleases: none kept by rules (no [prereleases])".into());
        }
        match &self.untagged {
            Some(u) => out.push(format!(
                "untagged images: deleted after {}",
                super::duration::format(u.expire_after)
            )),
            None => out.push("untagged images: left alone (no [untagged])".into()),
        }
        if self.other_tags.prune.is_empty() {
            out.push("tags that are not versions: always keep their image".into());
        } else {
            out.push(format!(
                "tags that are not versions: {} are decided by the rules, others keep their image",
                self.other_tags.prune.patterns().join(", ")
            ));
        }
        out
    }
}

fn rule_name(r: &KeepRule) -> String {
    if let Some(n) = r.newest {
        return format!("newest {n}");
    }
    if let (Some(per), Some(c)) = (r.newest_per, r.count) {
        return format!("newest {c} per {}", if per == Per::Major { "major" } else { "minor" });
    }
    match (&r.tags, r.pushed_within) {
        (Some(t), Some(d)) => format!(
            "tags {} pushed within {}",
            t.patterns().join(", "),
            super::duration::format(d)
        ),
        (None, Some(d)) => format!("pushed within {}", super::duration::format(d)),
        (Some(t), None) => format!("tags {}", t.patterns().join(", ")),
        (None, None) => "?".into(),
    }
}

/// One image as the registry has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    pub digest: Digest,
    pub tags: Vec<String>,
    /// When it was pushed, where the registry records it (ECR's `imagePushedAt`; a
    /// Distribution registry does not record push times).
    pub pushed: Option<DateTime<Utc>>,
    /// When it was built (its config's `created`): what age rules go by without a push time.
    pub created: Option<DateTime<Utc>>,
    pub size: Option<u64>,
}

impl ImageEntry {
    /// The time age rules go by, and how to say it: the push time, else the build time.
    fn time(&self) -> Option<(DateTime<Utc>, &'static str)> {
        self.pushed
            .map(|p| (p, "pushed"))
            .or(self.created.map(|c| (c, "built")))
    }
}

/// What protects images beyond the policy's own rules.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub deployed: BTreeSet<Digest>,
    /// Distinct digests deployed successfully, most recent first (from the journal).
    pub recent_deployments: Vec<Digest>,
    /// Images other targets built from this repository need (what they last ran, their recent
    /// deployments), from their journals, each with why.
    pub other_targets: BTreeMap<Digest, String>,
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Keep,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub digest: Digest,
    pub tags: Vec<String>,
    pub action: Action,
    /// For a keep: every protection and rule that keeps it. For a delete: why each rule passed it.
    pub reasons: Vec<String>,
    pub size: Option<u64>,
    pub pushed: Option<DateTime<Utc>>,
    pub created: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub decisions: Vec<Decision>,
    pub kept: usize,
    pub deleted: usize,
    /// Sum of the sizes of deleted images, where known.
    pub bytes_freed: u64,
}

/// Decides every image. Deterministic: the same input gives the same plan, in the same order
/// (highest version first, then by tag, then untagged by digest).
pub fn plan(policy: &Policy, images: &[ImageEntry], facts: &Facts) -> Plan {
    // Versions present, each counted once however many tags spell it.
    let mut releases: BTreeSet<Version> = BTreeSet::new();
    let mut prereleases: BTreeSet<Version> = BTreeSet::new();
    for img in images {
        for t in &img.tags {
            if let Some(v) = VersionTag::parse(t) {
                if v.is_prerelease() {
                    prereleases.insert(v.release());
                } else {
                    releases.insert(v.release());
                }
            }
        }
    }
    // Ranks (1 = highest), computed once: overall, per major line, per minor line.
    let mut release_rank: HashMap<&Version, usize> = HashMap::new();
    let mut major_rank: HashMap<&Version, usize> = HashMap::new();
    let mut minor_rank: HashMap<&Version, usize> = HashMap::new();
    let mut per_major: HashMap<u64, usize> = HashMap::new();
    let mut per_minor: HashMap<(u64, u64), usize> = HashMap::new();
    for (i, v) in releases.iter().rev().enumerate() {
        release_rank.insert(v, i + 1);
        let m = per_major.entry(v.major).or_default();
        *m += 1;
        major_rank.insert(v, *m);
        let n = per_minor.entry((v.major, v.minor)).or_default();
        *n += 1;
        minor_rank.insert(v, *n);
    }
    let prerelease_rank: HashMap<&Version, usize> =
        prereleases.iter().rev().enumerate().map(|(i, v)| (v, i + 1)).collect();
    let rank = |v: &Version| release_rank.get(v).copied();
    let line_rank = |per: Per, v: &Version| match per {
        Per::Major => major_rank.get(v).copied(),
        Per::Minor => minor_rank.get(v).copied(),
    };
    let recent: HashSet<&Digest> = facts.recent_deployments.iter().take(policy.protect.history).collect();

    let mut decisions: Vec<Decision> = images
        .iter()
        .map(|img| {
            let mut keep = Vec::new();
            let mut passed = Vec::new();
            if facts.deployed.contains(&img.digest) {
                keep.push("protected: the target runs it now".to_string());
            }
            for t in img.tags.iter().filter(|t| is_lkg_tag(t)) {
                keep.push(format!("protected: tagged {t}"));
            }
            if let Some(why) = facts.other_targets.get(&img.digest) {
                keep.push(format!("protected: {why}"));
            }
            if recent.contains(&img.digest) {
                keep.push(format!(
                    "protected: among the last {} versions deployed",
                    policy.protect.history
                ));
            }
            for t in &img.tags {
                if let Some(p) = policy.protect.tags.first_match(t) {
                    keep.push(format!("protected: tag {t} matches protect.tags \"{p}\""));
                }
            }
            let versions: Vec<VersionTag> = img.tags.iter().filter_map(|t| VersionTag::parse(t)).collect();
            let others: Vec<&String> = img
                .tags
                .iter()
                .filter(|t| VersionTag::parse(t).is_none() && !is_lkg_tag(t))
                .collect();
            for t in &others {
                if !policy.other_tags.prune.is_match(t) {
                    keep.push(format!(
                        "tag {t} is not a version (only [other_tags] prune names such tags)"
                    ));
                }
            }
            let released: Vec<&VersionTag> = versions.iter().filter(|v| !v.is_prerelease()).collect();
            let pre: Vec<&VersionTag> = versions.iter().filter(|v| v.is_prerelease()).collect();
            for (i, rule) in policy.keep.iter().enumerate() {
                let r = rule.get_ref();
                let label = format!("keep {} ({})", i + 1, rule_name(r));
                if let Some(n) = r.newest {
                    match released
                        .iter()
                        .filter_map(|v| rank(&v.release()).map(|k| (v, k)))
                        .min_by_key(|(_, k)| *k)
                    {
                        Some((v, k)) if k <= n => keep.push(format!("{label}: {} is #{k}", v.tag)),
                        Some((v, k)) => passed.push(format!("{label}: {} is #{k}", v.tag)),
                        None => passed.push(format!("{label}: no released version tag")),
                    }
                } else if let (Some(per), Some(c)) = (r.newest_per, r.count) {
                    match released
                        .iter()
                        .filter_map(|v| line_rank(per, &v.release()).map(|k| (v, k)))
                        .min_by_key(|(_, k)| *k)
                    {
                        Some((v, k)) if k <= c => keep.push(format!("{label}: {} is #{k} of its line", v.tag)),
                        Some((v, k)) => passed.push(format!("{label}: {} is #{k} of its line", v.tag)),
                        None => passed.push(format!("{label}: no released version tag")),
                    }
                } else if let Some(globs) = &r.tags {
                    let within = |p: DateTime<Utc>, d: Duration| {
                        facts.now.signed_duration_since(p).to_std().unwrap_or_default() <= d
                    };
                    match (img.tags.iter().find(|t| globs.is_match(t)), r.pushed_within) {
                        (None, _) => passed.push(format!("{label}: no tag matches")),
                        (Some(t), None) => keep.push(format!("{label}: tag {t} matches")),
                        (Some(t), Some(d)) => match img.time() {
                            Some((p, how)) if within(p, d) => {
                                keep.push(format!("{label}: tag {t} matches, {how} {}", age(facts.now, p)))
                            }
                            Some((p, how)) => {
                                passed.push(format!("{label}: tag {t} matches, {how} {}", age(facts.now, p)))
                            }
                            None => passed.push(format!("{label}: tag {t} matches, push time unknown")),
                        },
                    }
                } else if let Some(d) = r.pushed_within {
                    // Prerelease-only images are kept by [prereleases] alone.
                    let eligible = !released.is_empty() || !others.is_empty() || versions.is_empty();
                    match img.time() {
                        Some((p, how))
                            if eligible && facts.now.signed_duration_since(p).to_std().unwrap_or_default() <= d =>
                        {
                            keep.push(format!("{label}: {how} {}", age(facts.now, p)))
                        }
                        Some((p, how)) => passed.push(format!("{label}: {how} {}", age(facts.now, p))),
                        None => passed.push(format!("{label}: push time unknown")),
                    }
                }
            }
            if !pre.is_empty() {
                match &policy.prereleases {
                    Some(p) => {
                        let best = pre
                            .iter()
                            .filter_map(|v| prerelease_rank.get(&v.release()).map(|k| (v, *k)))
                            .min_by_key(|(_, k)| *k);
                        match best {
                            Some((v, k)) if k <= p.newest => keep.push(format!("prereleases: {} is #{k}", v.tag)),
                            Some((v, k)) => passed.push(format!("prereleases: {} is #{k} (keeps {})", v.tag, p.newest)),
                            None => {}
                        }
                    }
                    None => passed.push("prereleases: no [prereleases] rule".into()),
                }
            }
            if img.tags.is_empty() {
                match (&policy.untagged, img.time()) {
                    (None, _) => keep.push("untagged: no [untagged] rule, left alone".into()),
                    (Some(u), Some((p, how)))
                        if facts.now.signed_duration_since(p).to_std().unwrap_or_default() <= u.expire_after =>
                    {
                        keep.push(format!(
                            "untagged: {how} {}, expires after {}",
                            age(facts.now, p),
                            super::duration::format(u.expire_after)
                        ))
                    }
                    (Some(_), Some((p, how))) => passed.push(format!("untagged: {how} {}", age(facts.now, p))),
                    (Some(_), None) => keep.push("untagged: push time unknown, left alone".into()),
                }
            }
            let action = if keep.is_empty() { Action::Delete } else { Action::Keep };
            if action == Action::Delete && passed.is_empty() {
                passed.push("no rule keeps it".into());
            }
            Decision {
                digest: img.digest.clone(),
                tags: sorted_tags(&img.tags),
                action,
                reasons: if action == Action::Keep { keep } else { passed },
                size: img.size,
                pushed: img.pushed,
                created: img.created,
            }
        })
        .collect();
    decisions.sort_by_key(order_key);
    let deleted: Vec<&Decision> = decisions.iter().filter(|d| d.action == Action::Delete).collect();
    Plan {
        kept: decisions.len() - deleted.len(),
        deleted: deleted.len(),
        bytes_freed: deleted.iter().filter_map(|d| d.size).sum(),
        decisions,
    }
}

/// How many of the versions a target deployed last count as its recent history, for
/// [`recent_history_warnings`].
pub const RECENT_HISTORY: usize = 5;

/// Warnings for deletes of versions the target deployed recently (`recent`: distinct deployed
/// versions, most recent first, from its journal): a policy without `[protect] history` would
/// take away what `rollback` goes back to.
pub fn recent_history_warnings(plan: &Plan, recent: &[ImageRef]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in recent.iter().take(RECENT_HISTORY).enumerate() {
        let Some(digest) = &r.digest else { continue };
        if plan
            .decisions
            .iter()
            .any(|d| d.action == Action::Delete && &d.digest == digest)
        {
            out.push(format!(
                "deletes {}, #{} of the versions this target deployed last: `rollback` could not go back to it; \
                 `[protect] history = {}` in the policy keeps it",
                r.display(),
                i + 1,
                (i + 1).max(3)
            ));
        }
    }
    out
}

fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> String {
    let days = (now - then).num_days();
    if days >= 1 {
        format!("{days}d ago")
    } else {
        format!("{}h ago", (now - then).num_hours().max(0))
    }
}

fn sorted_tags(tags: &[String]) -> Vec<String> {
    let mut t = tags.to_vec();
    t.sort_by(|a, b| match (VersionTag::parse(a), VersionTag::parse(b)) {
        (Some(x), Some(y)) => super::version::compare_desc(&x, &y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.cmp(b),
    });
    t
}

/// Highest version first; images without versions after, by first tag; untagged last.
fn order_key(d: &Decision) -> (u8, std::cmp::Reverse<Option<Version>>, String, Digest) {
    let best = d
        .tags
        .iter()
        .filter_map(|t| VersionTag::parse(t))
        .map(|v| v.release())
        .max();
    let group = if best.is_some() {
        0
    } else if d.tags.is_empty() {
        2
    } else {
        1
    };
    (
        group,
        std::cmp::Reverse(best),
        d.tags.first().cloned().unwrap_or_default(),
        d.digest.clone(),
    )
}

/// Everything in a plan that must never be deleted, whatever the rules (for property tests and
/// a last check before deleting).
pub fn protected(images: &[ImageEntry], facts: &Facts, history: usize) -> BTreeMap<Digest, &'static str> {
    let mut out = BTreeMap::new();
    for img in images {
        if facts.deployed.contains(&img.digest) {
            out.insert(img.digest.clone(), "deployed");
        }
        if img.tags.iter().any(|t| is_lkg_tag(t)) {
            out.insert(img.digest.clone(), "last_known_good");
        }
        if facts.other_targets.contains_key(&img.digest) {
            out.insert(img.digest.clone(), "another target");
        }
    }
    for d in facts.recent_deployments.iter().take(history) {
        out.insert(d.clone(), "recent deployment");
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn digest(n: u64) -> Digest {
        Digest::parse(&format!("sha256:{n:064x}")).unwrap()
    }

    fn policy(text: &str) -> Policy {
        let p: Policy = toml::from_str(text).unwrap();
        assert_eq!(p.problems(), vec![], "{text}");
        p
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn img(n: u64, tags: &[&str], days_ago: i64) -> ImageEntry {
        ImageEntry {
            digest: digest(n),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            pushed: Some(now() - chrono::Duration::days(days_ago)),
            created: None,
            size: Some(1000),
        }
    }

    /// The plan with no protections beyond the policy's own, as of `now()`.
    fn plan_now(p: &Policy, images: &[ImageEntry]) -> Plan {
        plan(
            p,
            images,
            &Facts {
                now: now(),
                ..Default::default()
            },
        )
    }

    fn actions(plan: &Plan) -> Vec<(String, Action)> {
        plan.decisions
            .iter()
            .map(|d| {
                (
                    d.tags.first().cloned().unwrap_or_else(|| d.digest.short().to_string()),
                    d.action,
                )
            })
            .collect()
    }

    const SPEC: &str = r#"
description = "Keep 10 releases, the newest patch of each minor, and a month of builds"
[protect]
history = 3
tags = ["latest", "stable"]
[[keep]]
newest = 10
[[keep]]
newest_per = "minor"
count = 1
[[keep]]
pushed_within = "30d"
[[keep]]
tags = ["release-*"]
[prereleases]
newest = 3
[untagged]
expire_after = "7d"
"#;

    #[test]
    fn the_spec_example_parses_and_reads_well() {
        let p = policy(SPEC);
        let words = p.describe().join("\n");
        assert!(words.contains("keep: newest 10"), "{words}");
        assert!(words.contains("keep: newest 1 per minor"), "{words}");
        assert!(words.contains("untagged images: deleted after 7d"), "{words}");
    }

    #[test]
    fn impossible_rules_are_reported() {
        let cases = [
            ("[[keep]]\nnewest = 3\npushed_within = \"1d\"\n", "exactly one of"),
            ("[[keep]]\nnewest = 0\n", "keeps nothing"),
            ("[[keep]]\nnewest_per = \"minor\"\n", "needs count"),
            ("[[keep]]\ncount = 2\n", "exactly one of"),
            ("[[keep]]\ntags = []\n", "names no tag"),
            ("[[keep]]\ntags = [\"x\"]\nnewest = 2\n", "exactly one of"),
        ];
        for (text, want) in cases {
            let p: Policy = toml::from_str(text).unwrap();
            let problems = p.problems();
            assert!(
                problems.iter().any(|x| x.message.contains(want)),
                "{text}: {problems:?}"
            );
        }
    }

    #[test]
    fn newest_and_per_minor_keep_by_semver_not_push_time() {
        let p = policy("[[keep]]\nnewest = 2\n[[keep]]\nnewest_per = \"minor\"\ncount = 1\n");
        // Pushed in an order that disagrees with semver: 1.10.0 is the oldest push.
        let images = [
            img(1, &["v1.10.0"], 90),
            img(2, &["v1.9.0"], 80),
            img(3, &["v1.9.1"], 1),
            img(4, &["v1.2.0"], 2),
            img(5, &["v1.2.1"], 3),
        ];
        let plan = plan_now(&p, &images);
        assert_eq!(
            actions(&plan),
            vec![
                ("v1.10.0".into(), Action::Keep),
                ("v1.9.1".into(), Action::Keep),
                ("v1.9.0".into(), Action::Delete),
                ("v1.2.1".into(), Action::Keep),
                ("v1.2.0".into(), Action::Delete),
            ]
        );
        let v190 = &plan.decisions[2];
        assert_eq!(
            v190.reasons,
            [
                "keep 1 (newest 2): v1.9.0 is #3",
                "keep 2 (newest 1 per minor): v1.9.0 is #2 of its line"
            ]
        );
        assert_eq!(plan.bytes_freed, 2000);
    }

    #[test]
    fn an_image_is_ranked_by_its_best_tag() {
        // One digest carries v1.2.0 and v1.2.1: it holds the newest version, so it stays.
        let p = policy("[[keep]]\nnewest = 1\n[[keep]]\nnewest_per = \"minor\"\ncount = 1\n");
        let images = [
            img(1, &["v1.2.0", "v1.2.1"], 5),
            img(2, &["v1.1.0"], 9),
            img(3, &["v1.1.1"], 8),
        ];
        let plan = plan_now(&p, &images);
        let kept: Vec<&str> = plan
            .decisions
            .iter()
            .filter(|d| d.action == Action::Keep)
            .map(|d| d.tags[0].as_str())
            .collect();
        assert_eq!(kept, ["v1.2.1", "v1.1.1"]);
    }

    #[test]
    fn protections_win_over_rules_and_siblings_are_never_taken() {
        let p = policy("[protect]\nhistory = 1\ntags = [\"stable\"]\n[[keep]]\nnewest = 1\n");
        let images = [
            img(1, &["v3.0.0"], 1),
            img(2, &["v2.0.0", "last_known_good"], 5),
            img(3, &["v1.0.0"], 9),
            img(4, &["v0.9.0", "stable"], 9),
            img(5, &["v0.8.0"], 9),
            img(6, &["v0.7.0"], 9),
            img(7, &["latest"], 9),
        ];
        let facts = Facts {
            deployed: [digest(3)].into(),
            recent_deployments: vec![digest(5), digest(6)],
            other_targets: BTreeMap::new(),
            now: now(),
        };
        let plan = plan(&p, &images, &facts);
        let by_tag: BTreeMap<String, (Action, Vec<String>)> = plan
            .decisions
            .iter()
            .map(|d| (d.tags[0].clone(), (d.action, d.reasons.clone())))
            .collect();
        assert_eq!(by_tag["v3.0.0"].0, Action::Keep);
        assert_eq!(
            by_tag["v2.0.0"].0,
            Action::Keep,
            "last_known_good's sibling version tag stays"
        );
        assert_eq!(by_tag["v1.0.0"].1[0], "protected: the target runs it now");
        assert_eq!(
            by_tag["v0.9.0"].1[0],
            "protected: tag stable matches protect.tags \"stable\""
        );
        assert_eq!(by_tag["v0.8.0"].1[0], "protected: among the last 1 versions deployed");
        assert_eq!(
            by_tag["v0.7.0"].0,
            Action::Delete,
            "only the last 1 deployment is protected"
        );
        assert!(by_tag["latest"].1[0].contains("not a version"));
    }

    #[test]
    fn prereleases_are_kept_only_by_their_own_rule() {
        let p = policy("[[keep]]\nnewest = 10\n[[keep]]\npushed_within = \"30d\"\n[prereleases]\nnewest = 1\n");
        let images = [
            img(1, &["v2.0.0-rc.2"], 1),
            img(2, &["v2.0.0-rc.1"], 1),
            img(3, &["v1.0.0"], 100),
        ];
        let plan = plan_now(&p, &images);
        assert_eq!(
            actions(&plan),
            vec![
                ("v2.0.0-rc.2".into(), Action::Keep),
                ("v2.0.0-rc.1".into(), Action::Delete),
                ("v1.0.0".into(), Action::Keep)
            ]
        );
    }

    #[test]
    fn other_tags_named_by_the_policy_follow_the_rules() {
        let p = policy("[other_tags]\nprune = [\"sha-*\"]\n[[keep]]\npushed_within = \"7d\"\n");
        let images = [
            img(1, &["sha-aaa"], 1),
            img(2, &["sha-bbb"], 30),
            img(3, &["nightly"], 30),
        ];
        let plan = plan_now(&p, &images);
        assert_eq!(
            actions(&plan),
            vec![
                ("nightly".into(), Action::Keep),
                ("sha-aaa".into(), Action::Keep),
                ("sha-bbb".into(), Action::Delete)
            ]
        );
    }

    #[test]
    fn without_a_push_time_age_rules_go_by_build_time_and_say_so() {
        let p = policy("[[keep]]\npushed_within = \"7d\"\n");
        let mut built = img(1, &["v1.0.0"], 0);
        built.pushed = None;
        built.created = Some(now() - chrono::Duration::days(10));
        let plan = plan_now(&p, &[built]);
        assert_eq!(plan.decisions[0].action, Action::Delete);
        assert_eq!(plan.decisions[0].reasons, ["keep 1 (pushed within 7d): built 10d ago"]);
    }

    #[test]
    fn deleting_a_version_the_target_deployed_recently_is_warned_about() {
        let p = policy("[[keep]]\nnewest = 1\n");
        let images = [img(1, &["v3.0.0"], 1), img(2, &["v2.0.0"], 2), img(3, &["v1.0.0"], 3)];
        let plan = plan_now(&p, &images);
        let deployed = |n: u64, v: &str| ImageRef {
            tag: Some(v.into()),
            version: Some(v.trim_start_matches('v').into()),
            digest: Some(digest(n)),
        };
        // The target went 1.0.0 -> 2.0.0 -> 3.0.0: 2.0.0 is what `rollback` goes back to.
        let warnings = recent_history_warnings(&plan, &[deployed(1, "v3.0.0"), deployed(2, "v2.0.0")]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("deletes 2.0.0, #2 of the versions this target deployed last")
                && warnings[0].contains("[protect] history = 3"),
            "{warnings:?}"
        );
        let protected = policy("[protect]\nhistory = 2\n[[keep]]\nnewest = 1\n");
        let facts = Facts {
            recent_deployments: vec![digest(1), digest(2)],
            now: now(),
            ..Default::default()
        };
        let kept = super::plan(&protected, &images, &facts);
        assert_eq!(
            recent_history_warnings(&kept, &[deployed(1, "v3.0.0"), deployed(2, "v2.0.0")]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn untagged_images_expire_only_with_an_untagged_rule() {
        let images = [img(1, &[], 10), img(2, &[], 1)];
        let facts = Facts {
            now: now(),
            ..Default::default()
        };
        let without = plan(&policy("keep_nothing = true\n"), &images, &facts);
        assert_eq!(without.deleted, 0);
        let with = plan(
            &policy("keep_nothing = true\n[untagged]\nexpire_after = \"7d\"\n"),
            &images,
            &facts,
        );
        assert_eq!(with.deleted, 1);
        assert_eq!(
            with.decisions
                .iter()
                .find(|d| d.action == Action::Delete)
                .unwrap()
                .digest,
            digest(1)
        );
    }

    #[test]
    fn tag_globs_match_whole_tags_as_before_globset() {
        // The hand-written matcher's behaviour, kept: `*` any run, `?` one character, whole tag.
        for (p, t, want) in [
            ("release-*", "release-1.2", true),
            ("release-*", "release-", true),
            ("release-*", "rel", false),
            ("*-rc", "1.0-rc", true),
            ("v?.0", "v1.0", true),
            ("v?.0", "v10.0", false),
            ("stable", "stable", true),
            ("stable", "stable2", false),
            ("sha-*", "xsha-1", false),
            ("*", "", true),
            // What globset adds: classes and alternatives.
            ("v[0-9]*", "v1.2.3", true),
            ("v[0-9]*", "very", false),
            ("{sha,pr}-*", "pr-12", true),
        ] {
            let globs = Globs::try_from(vec![p.to_string()]).unwrap();
            assert_eq!(globs.is_match(t), want, "{p} {t}");
        }
        let globs = Globs::try_from(vec!["sha-*".to_string(), "*".to_string()]).unwrap();
        assert_eq!(
            globs.first_match("sha-1"),
            Some("sha-*"),
            "the first pattern written wins"
        );
        assert_eq!(globs.first_match("latest"), Some("*"));
        assert!(Globs::try_from(vec!["v[0-9".to_string()]).is_err());
    }

    #[test]
    fn a_tags_rule_with_pushed_within_keeps_only_recent_images_with_those_tags() {
        let p = policy(
            "[other_tags]\nprune = [\"sha-*\", \"pr-*\"]\n[[keep]]\nnewest = 1\n\
             [[keep]]\ntags = [\"sha-*\", \"pr-*\"]\npushed_within = \"14d\"\n",
        );
        let images = [
            img(1, &["v2.0.0"], 100),
            img(2, &["v1.0.0"], 1),
            img(3, &["sha-aaa"], 3),
            img(4, &["pr-7"], 30),
            img(5, &["sha-bbb"], 20),
            img(6, &["nightly"], 90),
        ];
        let plan = plan_now(&p, &images);
        assert_eq!(
            actions(&plan),
            vec![
                ("v2.0.0".into(), Action::Keep),
                ("v1.0.0".into(), Action::Delete),
                ("nightly".into(), Action::Keep),
                ("pr-7".into(), Action::Delete),
                ("sha-aaa".into(), Action::Keep),
                ("sha-bbb".into(), Action::Delete),
            ],
            "the age limit is for sha-/pr- images only: v1.0.0 is recent but not kept by it"
        );
        let sha = plan.decisions.iter().find(|d| d.tags == ["sha-aaa"]).unwrap();
        assert_eq!(
            sha.reasons,
            ["keep 2 (tags sha-*, pr-* pushed within 14d): tag sha-aaa matches, pushed 3d ago"]
        );
        assert!(
            p.describe()
                .contains(&"keep: tags sha-*, pr-* pushed within 14d".to_string())
        );
    }

    fn arb_images() -> impl Strategy<Value = Vec<ImageEntry>> {
        let tag = prop_oneof![
            (0u64..4, 0u64..6, 0u64..6).prop_map(|(a, b, c)| format!("v{a}.{b}.{c}")),
            (0u64..3, 0u64..3).prop_map(|(a, b)| format!("{a}.{b}.0-rc.1")),
            Just("latest".to_string()),
            Just("last_known_good".to_string()),
            (0u64..20).prop_map(|n| format!("sha-{n}")),
            (0u64..3).prop_map(|n| format!("release-{n}")),
        ];
        prop::collection::vec((prop::collection::vec(tag, 0..3), 0i64..60), 1..25).prop_map(|imgs| {
            let mut seen = HashSet::new();
            imgs.into_iter()
                .enumerate()
                .map(|(i, (tags, days))| {
                    // A tag names one image: drop tags an earlier image already has.
                    let tags: Vec<String> = tags.into_iter().filter(|t| seen.insert(t.clone())).collect();
                    ImageEntry {
                        digest: digest(i as u64 + 1),
                        tags,
                        pushed: Some(now() - chrono::Duration::days(days)),
                        created: None,
                        size: Some(10),
                    }
                })
                .collect()
        })
    }

    fn arb_policy() -> impl Strategy<Value = Policy> {
        (
            0usize..4,
            prop::option::of(1usize..5),
            prop::option::of(1usize..3),
            prop::option::of(1u64..40),
            any::<bool>(),
            prop::option::of(0usize..3),
        )
            .prop_map(|(history, newest, per_minor, days, prune_sha, pre)| {
                let mut text = format!("[protect]\nhistory = {history}\n");
                if let Some(n) = newest {
                    text.push_str(&format!("[[keep]]\nnewest = {n}\n"));
                }
                if let Some(c) = per_minor {
                    text.push_str(&format!("[[keep]]\nnewest_per = \"minor\"\ncount = {c}\n"));
                }
                if let Some(d) = days {
                    text.push_str(&format!("[[keep]]\npushed_within = \"{d}d\"\n"));
                }
                if let Some(n) = pre {
                    text.push_str(&format!("[prereleases]\nnewest = {n}\n"));
                }
                if prune_sha {
                    text.push_str("[other_tags]\nprune = [\"sha-*\"]\n");
                }
                text.push_str("[untagged]\nexpire_after = \"10d\"\n");
                toml::from_str(&text).unwrap()
            })
    }

    fn arb_facts(n: usize) -> impl Strategy<Value = Facts> {
        (
            prop::collection::btree_set(1..=n as u64, 0..3),
            prop::collection::vec(1..=n as u64, 0..5),
        )
            .prop_map(|(deployed, recent)| Facts {
                deployed: deployed.into_iter().map(digest).collect(),
                recent_deployments: recent.into_iter().map(digest).collect(),
                other_targets: BTreeMap::new(),
                now: now(),
            })
    }

    proptest! {
        #[test]
        fn protected_images_are_never_deleted(
            (images, facts) in arb_images().prop_flat_map(|i| { let n = i.len(); (Just(i), arb_facts(n)) }),
            policy in arb_policy(),
        ) {
            let plan = plan(&policy, &images, &facts);
            let protected = protected(&images, &facts, policy.protect.history);
            for d in plan.decisions.iter().filter(|d| d.action == Action::Delete) {
                prop_assert!(!protected.contains_key(&d.digest), "deleted protected {:?}", d);
                prop_assert!(!d.tags.iter().any(|t| t == "latest"), "deleted a non-version tag no rule names");
            }
        }

        #[test]
        fn plans_are_deterministic_and_a_second_pass_deletes_nothing(
            (images, facts) in arb_images().prop_flat_map(|i| { let n = i.len(); (Just(i), arb_facts(n)) }),
            policy in arb_policy(),
        ) {
            let first = plan(&policy, &images, &facts);
            let mut reversed = images.clone();
            reversed.reverse();
            prop_assert_eq!(&first, &plan(&policy, &reversed, &facts));
            let left: Vec<ImageEntry> = images
                .iter()
                .filter(|i| first.decisions.iter().any(|d| d.digest == i.digest && d.action == Action::Keep))
                .cloned()
                .collect();
            let second = plan(&policy, &left, &facts);
            prop_assert_eq!(second.deleted, 0, "second pass: {:?}", second);
        }
    }
}
