//! Converting an ECR lifecycle policy (its JSON) into a backtrack retention policy (TOML text),
//! with a note for every rule that cannot be expressed exactly. ECR's rules *expire* what they
//! select, each image by the first rule (in priority order) that selects it; backtrack's rules
//! *keep*. Pure: the caller reads the file and prints the result.

use serde::Deserialize;

/// An ECR lifecycle policy that could not be read, located in its JSON text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an ECR lifecycle policy: {message}")]
pub struct ConvertError {
    pub line: usize,
    pub column: usize,
    /// serde_json's message without its own " at line L column C" (the location is said once).
    pub message: String,
}

impl From<serde_json::Error> for ConvertError {
    fn from(e: serde_json::Error) -> Self {
        let text = e.to_string();
        let message = match text.rfind(" at line ") {
            Some(i) => text[..i].to_string(),
            None => text,
        };
        Self {
            line: e.line(),
            column: e.column(),
            message,
        }
    }
}

/// The converted policy and what it could not say exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The retention policy as TOML, the notes repeated in it as comments.
    pub policy: String,
    pub notes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EcrPolicy {
    rules: Vec<EcrRule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EcrRule {
    rule_priority: i64,
    description: Option<String>,
    selection: EcrSelection,
    action: Option<EcrAction>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EcrSelection {
    tag_status: String,
    #[serde(default)]
    tag_prefix_list: Vec<String>,
    #[serde(default)]
    tag_pattern_list: Vec<String>,
    count_type: String,
    count_unit: Option<String>,
    count_number: u64,
    storage_class: Option<String>,
}

#[derive(Debug, Deserialize)]
struct EcrAction {
    #[serde(rename = "type")]
    kind: String,
}

/// The version tags a glob can touch, split in the two ways a version tag starts: `v1.2.3` and
/// `1.2.3`. Judged from the glob's literal start, erring towards "touches".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `v1.2.3`.
    V,
    /// `1.2.3`.
    Bare,
}

impl Family {
    const ALL: [Family; 2] = [Family::V, Family::Bare];

    /// The glob that selects every version tag of the family.
    fn glob(self) -> &'static str {
        match self {
            Family::V => "v[0-9]*",
            Family::Bare => "[0-9]*",
        }
    }

    /// Whether an ECR pattern (`*` is its only wildcard) may select some version of the family.
    fn touched_by(self, ecr_pattern: &str) -> bool {
        let literal = ecr_pattern.split('*').next().unwrap_or_default();
        let wildcard = literal.len() < ecr_pattern.len();
        let digit_first = |s: &str| s.starts_with(|c: char| c.is_ascii_digit());
        if literal.is_empty() {
            return wildcard;
        }
        match self {
            Family::V => literal
                .strip_prefix('v')
                .is_some_and(|rest| if rest.is_empty() { wildcard } else { digit_first(rest) }),
            Family::Bare => digit_first(literal),
        }
    }

    /// Whether an ECR pattern selects every version of the family.
    fn covered_by(self, ecr_pattern: &str) -> bool {
        ecr_pattern == "*" || (self == Family::V && ecr_pattern == "v*")
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_list(items: &[String]) -> String {
    format!(
        "[{}]",
        items.iter().map(|i| toml_string(i)).collect::<Vec<_>>().join(", ")
    )
}

/// An ECR tag pattern (`*` is its only wildcard, everything else literal) as a policy glob.
fn ecr_glob(pattern: &str) -> String {
    pattern.split('*').map(globset::escape).collect::<Vec<_>>().join("*")
}

/// Whether every tag that matches ECR pattern `narrow` also matches `wide`. Judged from
/// `narrow`'s literal start, so it may answer no when the answer is yes, never the other way.
fn implies(narrow: &str, wide: &str) -> bool {
    if narrow == wide || wide == "*" {
        return true;
    }
    match wide.strip_suffix('*') {
        Some(literal) if !literal.contains('*') => narrow.split('*').next().unwrap_or_default().starts_with(literal),
        _ => false,
    }
}

/// The patterns an image must *all* have a tag for, without those another one implies: with
/// `v` and `v1.`, an image with a `v1.` tag has a `v` tag too, so `v1.` alone says the same.
fn all_of(patterns: &[String]) -> Vec<String> {
    let mut distinct: Vec<String> = Vec::new();
    for p in patterns {
        if !distinct.contains(p) {
            distinct.push(p.clone());
        }
    }
    distinct
        .iter()
        .filter(|p| !distinct.iter().any(|q| q != *p && implies(q, p)))
        .cloned()
        .collect()
}

/// What the conversion has gathered so far, rule by rule.
#[derive(Default)]
struct Gathered {
    keep: Vec<String>,
    prune: Vec<String>,
    untagged: Option<String>,
    /// Whether a rule already decides untagged images (ECR: the first rule that selects one).
    untagged_decided: bool,
    /// Per family (`Family::ALL` order): whether some rule selects every version tag of it, so
    /// that each such image is decided by a rule, as in ECR.
    covered: [bool; 2],
    /// Rules that may delete version tags, with their pattern: single-pattern age rules.
    deleting: Vec<(String, String)>,
    /// Rules that selected tagged images before the current one.
    tagged_rules: usize,
    notes: Vec<String>,
}

impl Gathered {
    /// Keeps every image a rule selects: the safe side for what cannot be said exactly, since
    /// ECR's later rules cannot expire what an earlier one selects either.
    fn keep_selected(&mut self, from: &str, tag_status: &str, patterns: &[String]) {
        match tag_status {
            "tagged" if !patterns.is_empty() => {
                let globs: Vec<String> = patterns.iter().map(|p| ecr_glob(p)).collect();
                self.keep.push(format!(
                    "[[keep]]\n{from}# every image tagged like this is kept\ntags = {}\n",
                    toml_list(&globs)
                ));
                self.cover(patterns);
            }
            "any" => {
                self.keep.push(format!(
                    "[[keep]]\n{from}# every tagged image is kept\ntags = [\"*\"]\n"
                ));
                self.covered = [true; 2];
            }
            _ => {}
        }
        if matches!(tag_status, "untagged" | "any") {
            self.untagged_decided = true;
        }
    }

    /// Records the families a rule selecting images with a tag for each of `patterns` covers.
    fn cover(&mut self, patterns: &[String]) {
        for (i, family) in Family::ALL.iter().enumerate() {
            if patterns.iter().all(|p| family.covered_by(p)) {
                self.covered[i] = true;
            }
        }
    }
}

/// Converts ECR rules so that the imported policy never deletes an image ECR would keep.
///
/// ECR's rules *expire* what they select, each image by the first rule (in priority order) that
/// selects it, and never touch what no rule selects (see `ecr_lifecycle`); ours *keep*, and a
/// version that no rule keeps goes. So:
/// - "expire images tagged `sha-*` pushed more than 14 days ago" becomes a rule scoped to those
///   tags (`tags = ["sha-*"]` with `pushed_within = "14d"`) and `[other_tags] prune = ["sha-*"]`,
///   so that such images are decided by the rules at all;
/// - a rule with several prefixes or patterns selects only images with a tag for each; backtrack
///   cannot ask for several tags at once, so (unless one pattern implies the others) every image
///   with any of them is kept;
/// - counts (`imageCountMoreThan`) go by push time, which backtrack's rules cannot: every image
///   the rule selects is kept;
/// - an `any` age rule keeps every tagged image pushed within that long (prereleases too);
/// - version tags that no ECR rule selects as a whole family (`v*`, `*`) are kept by a rule of
///   their own, as ECR keeps those it does not select;
/// - untagged images expire with `[untagged]`;
/// - rules without an equivalent keep everything they select.
///
/// What cannot be said exactly is returned as notes (and written as comments in the policy).
pub fn convert_ecr(json: &str) -> Result<Imported, ConvertError> {
    let ecr: EcrPolicy = serde_json::from_str(json)?;
    let mut rules = ecr.rules;
    rules.sort_by_key(|r| r.rule_priority);
    let mut g = Gathered::default();
    for r in &rules {
        convert_rule(r, &mut g);
    }
    // ECR never expires what no rule selects; here a version no rule keeps is deleted. So the
    // families no rule selects as a whole are kept, whole: backtrack cannot keep just the
    // versions a narrower pattern (`v1.`) leaves out.
    let mut untouched = Vec::new();
    for (i, family) in Family::ALL.iter().enumerate() {
        if g.covered[i] {
            continue;
        }
        untouched.push(family.glob().to_string());
        let touching: Vec<&str> = g
            .deleting
            .iter()
            .filter(|(_, p)| family.touched_by(p))
            .map(|(name, _)| name.as_str())
            .collect();
        if !touching.is_empty() {
            g.notes.push(format!(
                "version tags like {} are all kept: {} selects only some of them, and backtrack cannot keep \
                 just the others (which ECR never expires), so it expires none of them here",
                family.glob(),
                touching.join(", ")
            ));
        }
    }
    if !untouched.is_empty() {
        g.keep.push(format!(
            "[[keep]]\n# ECR never expires version tags no rule selects; these are not all selected\ntags = {}\n",
            toml_list(&untouched)
        ));
    }
    if g.keep.is_empty() {
        g.keep
            .push("[[keep]]\n# ECR expires no tagged image under this policy: keep them all\ntags = [\"*\"]\n".into());
    }
    let mut out = String::from(
        "description = \"Imported from an ECR lifecycle policy\"\n\n# What the target runs and last_known_good are always protected.\n[protect]\nhistory = 3\n\n",
    );
    for k in &g.keep {
        out.push_str(k);
        out.push('\n');
    }
    if !g.prune.is_empty() {
        out.push_str(&format!(
            "# Tags that are not versions keep their image unless named here; these are decided by the\n\
             # rules above, as ECR's age rules select them.\n\
             [other_tags]\nprune = {}\n\n",
            toml_list(&g.prune)
        ));
    }
    if let Some(d) = g.untagged {
        out.push_str(&format!("[untagged]\nexpire_after = \"{d}\"\n"));
    }
    if !g.notes.is_empty() {
        out.push_str("\n# Not expressed exactly:\n");
        for n in &g.notes {
            out.push_str(&format!("# - {n}\n"));
        }
    }
    Ok(Imported {
        policy: out,
        notes: g.notes,
    })
}

fn convert_rule(r: &EcrRule, g: &mut Gathered) {
    let s = &r.selection;
    let name = format!(
        "rule {}{}",
        r.rule_priority,
        r.description
            .as_deref()
            .map(|d| format!(
                " ({})",
                d.chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect::<String>()
            ))
            .unwrap_or_default()
    );
    let from = format!("# from ECR {name}\n");
    let tag_status = s.tag_status.as_str();
    let ecr_patterns: Vec<String> = s
        .tag_prefix_list
        .iter()
        .map(|p| format!("{p}*"))
        .chain(s.tag_pattern_list.iter().cloned())
        .collect();
    let earlier_tagged = g.tagged_rules;
    if tag_status != "untagged" {
        g.tagged_rules += 1;
    }
    let action = r.action.as_ref().map_or("expire", |a| a.kind.as_str());
    if action != "expire" {
        g.notes.push(format!(
            "{name}: action {action} (not expire) has no equivalent; every image it selects is kept, \
             as ECR's later rules cannot expire them"
        ));
        g.keep_selected(&from, tag_status, &ecr_patterns);
        return;
    }
    if let Some(class) = s.storage_class.as_deref().filter(|c| *c != "standard") {
        g.notes.push(format!(
            "{name}: rules for images in the {class} storage class have no equivalent; the rule is left out"
        ));
        return;
    }
    let days = match (s.count_type.as_str(), s.count_unit.as_deref()) {
        ("sinceImagePushed", None | Some("days")) => Some(s.count_number),
        ("sinceImagePushed", Some(unit)) => {
            g.notes.push(format!(
                "{name}: countUnit {unit} is unknown (ECR counts days); every image it selects is kept"
            ));
            g.keep_selected(&from, tag_status, &ecr_patterns);
            return;
        }
        ("imageCountMoreThan", _) => None,
        (other, _) => {
            g.notes.push(format!(
                "{name}: countType {other} has no equivalent; every image it selects is kept"
            ));
            g.keep_selected(&from, tag_status, &ecr_patterns);
            return;
        }
    };
    match tag_status {
        "untagged" => {
            if g.untagged_decided {
                g.notes
                    .push(format!("{name}: an earlier rule already decides untagged images"));
            } else if let Some(d) = days {
                g.untagged = Some(format!("{d}d"));
            } else {
                g.notes.push(format!(
                    "{name}: imageCountMoreThan for untagged images has no equivalent ([untagged] expires them \
                     by age); untagged images are left alone"
                ));
            }
            g.untagged_decided = true;
        }
        "tagged" if ecr_patterns.is_empty() => {
            g.notes.push(format!(
                "{name}: tagged rule with no tagPrefixList or tagPatternList; left out"
            ));
        }
        "tagged" => {
            let needed = all_of(&ecr_patterns);
            match (days, needed.as_slice()) {
                (Some(d), [one]) => {
                    let glob = ecr_glob(one);
                    g.keep.push(format!(
                        "[[keep]]\n{from}tags = {}\npushed_within = \"{d}d\"\n",
                        toml_list(std::slice::from_ref(&glob))
                    ));
                    if !g.prune.contains(&glob) {
                        g.prune.push(glob);
                    }
                    g.deleting.push((name.clone(), one.clone()));
                    if ecr_patterns.len() > 1 {
                        g.notes.push(format!(
                            "{name}: ECR selects only images with a tag for each of {}; a tag for {one} implies \
                             the others, so the rule keeps to {one}",
                            ecr_patterns.join(", ")
                        ));
                    }
                    g.cover(&needed);
                }
                (Some(d), _) => {
                    g.notes.push(format!(
                        "{name}: ECR expires only images with a tag for each of {} (all of them) pushed more \
                         than {d} days ago; backtrack cannot ask for several tags at once, so every image with \
                         any of them is kept",
                        needed.join(", ")
                    ));
                    g.keep_selected(&from, tag_status, &needed);
                }
                (None, _) => {
                    let n = s.count_number;
                    let hint = if needed.iter().all(|p| Family::V.covered_by(p)) {
                        format!(" (`newest = {n}` would keep the {n} highest versions by semver instead)")
                    } else {
                        String::new()
                    };
                    g.notes.push(format!(
                        "{name}: ECR keeps the {n} most recently pushed images tagged {} and expires the \
                         others; backtrack cannot count by push time, so every such image is kept{hint}",
                        needed.join(" and ")
                    ));
                    g.keep_selected(&from, tag_status, &needed);
                }
            }
        }
        "any" => {
            if let Some(d) = days {
                g.keep.push(format!(
                    "[[keep]]\n{from}# every tagged image (prereleases too) pushed within {d}d\ntags = [\"*\"]\n\
                     pushed_within = \"{d}d\"\n"
                ));
                if !g.untagged_decided {
                    g.untagged = Some(format!("{d}d"));
                }
                g.covered = [true; 2];
                g.untagged_decided = true;
            } else {
                let n = s.count_number;
                g.notes.push(format!(
                    "{name}: ECR keeps the {n} most recently pushed images and expires the others; backtrack \
                     cannot count by push time, so every tagged image is kept"
                ));
                if !g.untagged_decided {
                    g.notes.push(format!(
                        "{name}: ECR counts untagged images too; here they are left alone"
                    ));
                }
                g.keep_selected(&from, tag_status, &[]);
            }
            g.notes.push(format!(
                "{name}: tags that are not versions (latest, branch tags) keep their image here; name them in \
                 [other_tags] prune for this rule to decide them as ECR does"
            ));
            if earlier_tagged > 0 {
                g.notes.push(format!(
                    "{name}: ECR applies it only to images no earlier rule selected; here it applies to every \
                     image, so it may keep some that an earlier rule would expire"
                ));
            }
        }
        other => g
            .notes
            .push(format!("{name}: tagStatus {other} is unknown; the rule is left out")),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::domain::digest::Digest;
    use crate::domain::ecr_lifecycle::{self, Count, TagStatus};
    use crate::domain::retention::{self, Action, Facts, ImageEntry, Policy};

    /// The imported policy, parsed and checked as `policy check` would.
    fn convert(json: &str) -> (Policy, String, Vec<String>) {
        let Imported { policy: text, notes } = convert_ecr(json).unwrap();
        let policy: Policy = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(policy.problems(), vec![], "{text}");
        (policy, text, notes)
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    /// What the imported policy deletes from images given as (tags, days since push).
    fn deleted(policy: &Policy, images: &[(&[&str], i64)]) -> Vec<String> {
        let entries: Vec<ImageEntry> = images
            .iter()
            .enumerate()
            .map(|(i, (tags, days))| ImageEntry {
                digest: Digest::parse(&format!("sha256:{:064x}", i + 1)).unwrap(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                pushed: Some(now() - chrono::Duration::days(*days)),
                created: None,
                size: None,
            })
            .collect();
        let facts = Facts {
            now: now(),
            ..Default::default()
        };
        let mut out: Vec<String> = retention::plan(policy, &entries, &facts)
            .decisions
            .into_iter()
            .filter(|d| d.action == Action::Delete)
            .map(|d| d.tags.first().cloned().unwrap_or_else(|| "<untagged>".into()))
            .collect();
        out.sort();
        out
    }

    /// What ECR expires (the reference evaluator) of images given as (tags, days since push),
    /// named as `deleted` names them.
    fn ecr_expired(json: &str, images: &[(&[&str], i64)]) -> Vec<String> {
        let imgs: Vec<ecr_lifecycle::Image> = images
            .iter()
            .enumerate()
            .map(|(i, (tags, days))| ecr_lifecycle::Image {
                digest: Digest::parse(&format!("sha256:{:064x}", i + 1)).unwrap(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                pushed_at: now() - chrono::Duration::days(*days),
            })
            .collect();
        let rules = ecr_rules(json);
        let expired = ecr_lifecycle::expired(&rules, &imgs, now()).unwrap();
        let mut out: Vec<String> = imgs
            .iter()
            .filter(|i| expired.contains_key(&i.digest))
            .map(|i| {
                let mut tags = i.tags.clone();
                tags.sort();
                tags.first().cloned().unwrap_or_else(|| "<untagged>".into())
            })
            .collect();
        out.sort();
        out
    }

    /// The typed rules of an ECR policy that only has what the evaluator models.
    fn ecr_rules(json: &str) -> Vec<ecr_lifecycle::Rule> {
        let ecr: EcrPolicy = serde_json::from_str(json).unwrap();
        ecr.rules
            .into_iter()
            .map(|r| ecr_lifecycle::Rule {
                priority: r.rule_priority,
                tag_status: match r.selection.tag_status.as_str() {
                    "tagged" => TagStatus::Tagged,
                    "untagged" => TagStatus::Untagged,
                    _ => TagStatus::Any,
                },
                tag_prefixes: r.selection.tag_prefix_list,
                tag_patterns: r.selection.tag_pattern_list,
                count: match r.selection.count_type.as_str() {
                    "imageCountMoreThan" => Count::MoreThan(r.selection.count_number),
                    _ => Count::SincePushedDays(r.selection.count_number),
                },
            })
            .collect()
    }

    #[test]
    fn a_tag_prefix_age_rule_is_scoped_to_those_tags_not_every_image() {
        let json = r#"{"rules":[{"rulePriority":1,"description":"Expire branch builds older than 14 days",
          "selection":{"tagStatus":"tagged","tagPrefixList":["sha-"],"countType":"sinceImagePushed",
          "countUnit":"days","countNumber":14},"action":{"type":"expire"}}]}"#;
        let (policy, text, notes) = convert(json);
        assert!(text.contains("tags = [\"sha-*\"]\npushed_within = \"14d\""), "{text}");
        assert!(text.contains("[other_tags]\nprune = [\"sha-*\"]"), "{text}");
        assert!(
            !policy.describe().iter().any(|l| l == "keep: pushed within 14d"),
            "no age limit for every image: {text}"
        );
        let images: &[(&[&str], i64)] = &[
            (&["sha-old"], 30),
            (&["sha-new"], 2),
            (&["pr-old"], 20),
            (&["v1.0.0"], 400),
            (&["2.0.0"], 400),
            (&["latest"], 400),
        ];
        assert_eq!(
            deleted(&policy, images),
            ["sha-old"],
            "old builds go; versions and other tags stay, as in ECR: {text}"
        );
        assert_eq!(ecr_expired(json, images), ["sha-old"]);
        assert_eq!(notes, Vec::<String>::new(), "exact: nothing to say");
    }

    #[test]
    fn several_prefixes_select_only_images_with_a_tag_for_each_so_the_rule_keeps_them_all() {
        // The old import took sha-old and pr-old, which ECR keeps: it selects only images with a
        // sha- tag *and* a pr- tag.
        let json = r#"{"rules":[{"rulePriority":1,"description":"Expire branch builds older than 14 days",
          "selection":{"tagStatus":"tagged","tagPrefixList":["sha-","pr-"],"countType":"sinceImagePushed",
          "countUnit":"days","countNumber":14},"action":{"type":"expire"}}]}"#;
        let (policy, text, notes) = convert(json);
        let images: &[(&[&str], i64)] = &[
            (&["sha-old"], 30),
            (&["pr-old"], 20),
            (&["pr-1", "sha-1"], 30),
            (&["v1.0.0"], 400),
        ];
        assert_eq!(ecr_expired(json, images), ["pr-1"], "only the image with both");
        assert_eq!(deleted(&policy, images), Vec::<String>::new(), "{text}");
        assert!(!text.contains("[other_tags]"), "{text}");
        assert!(
            notes[0].contains("a tag for each of sha-*, pr-* (all of them) pushed more than 14 days ago")
                && notes[0].contains("every image with any of them is kept"),
            "{notes:?}"
        );
        assert!(
            text.contains("# - rule 1 (Expire branch builds older than 14 days): ECR expires only"),
            "{text}"
        );
    }

    #[test]
    fn a_pattern_implied_by_another_in_the_same_rule_is_dropped() {
        // A tag starting with sha-1 starts with sha- too: the rule is "has a sha-1 tag".
        let json = r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","tagPrefixList":["sha-","sha-1"],
          "countType":"sinceImagePushed","countUnit":"days","countNumber":7},"action":{"type":"expire"}}]}"#;
        let (policy, text, notes) = convert(json);
        let images: &[(&[&str], i64)] = &[(&["sha-1a"], 30), (&["sha-2"], 30), (&["sha-1b"], 2)];
        assert_eq!(ecr_expired(json, images), ["sha-1a"]);
        assert_eq!(deleted(&policy, images), ["sha-1a"], "{text}");
        assert!(notes[0].contains("a tag for sha-1* implies the others"), "{notes:?}");
        for (narrow, wide, want) in [
            ("v1.*", "v*", true),
            ("latest", "l*", true),
            ("v*", "v1.*", false),
            ("*v", "v*", false),
            ("a*", "*", true),
            ("a*b", "a*c*", false),
        ] {
            assert_eq!(implies(narrow, wide), want, "{narrow} {wide}");
        }
    }

    #[test]
    fn the_aws_docs_age_and_count_examples_convert_faithfully() {
        // "Filtering on image age": tagPatternList prod*, older than 14 days.
        let json = r#"{"rules":[{"rulePriority":1,"description":"Expire images older than 14 days","selection":{"tagStatus":"tagged","tagPatternList":["prod*"],"countType":"sinceImagePushed","countUnit":"days","countNumber":14},"action":{"type":"expire"}}]}"#;
        let (policy, text, notes) = convert(json);
        assert_eq!(notes, Vec::<String>::new(), "{text}");
        let images: &[(&[&str], i64)] = &[(&["prod-1"], 20), (&["prod-2"], 3), (&["v1.0.0"], 90), (&["test"], 90)];
        assert_eq!(deleted(&policy, images), ["prod-1"]);
        assert_eq!(ecr_expired(json, images), ["prod-1"]);
        // "Filtering on image count": keep one untagged image.
        let (policy, text, notes) = convert(
            r#"{"rules":[{"rulePriority":1,"description":"Keep only one untagged image, expire all others","selection":{"tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
        );
        assert!(notes[0].contains("untagged images are left alone"), "{notes:?}");
        assert!(text.contains("# Not expressed exactly:\n# - rule 1"), "{text}");
        assert_eq!(
            deleted(&policy, &[(&[], 20), (&[], 30), (&["v1.0.0"], 90), (&["latest"], 90)]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_aws_docs_multiple_rules_example_keeps_what_ecr_keeps() {
        // "Filtering on multiple rules", example A: prod count 1, then beta count 1.
        let json = r#"{"rules":[
          {"rulePriority":1,"description":"Rule 1","selection":{"tagStatus":"tagged","tagPrefixList":["prod"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}},
          {"rulePriority":2,"description":"Rule 2","selection":{"tagStatus":"tagged","tagPrefixList":["beta"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#;
        let (policy, _, notes) = convert(json);
        assert_eq!(notes.len(), 2, "a count is said for each rule: {notes:?}");
        assert!(
            notes
                .iter()
                .all(|n| n.contains("cannot count by push time, so every such image is kept"))
        );
        let images: &[(&[&str], i64)] = &[
            (&["beta-1", "prod-1"], 10),
            (&["beta-2", "prod-2"], 9),
            (&["beta-3"], 8),
            (&["v3.0.0"], 1),
        ];
        assert_eq!(ecr_expired(json, images), ["beta-1"], "image A");
        assert_eq!(deleted(&policy, images), Vec::<String>::new());
    }

    #[test]
    fn a_count_of_v_images_keeps_them_all_as_ecr_counts_by_push_time_not_semver() {
        // A hotfix of an old line pushed last: ECR keeps it and expires v2.0.0. The old import
        // (`newest = 1`, by semver) kept v2.0.0 and deleted the hotfix.
        let json = r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","tagPrefixList":["v"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#;
        let (policy, text, notes) = convert(json);
        let images: &[(&[&str], i64)] = &[(&["v2.0.0"], 10), (&["v1.2.4"], 1)];
        assert_eq!(ecr_expired(json, images), ["v2.0.0"]);
        assert_eq!(deleted(&policy, images), Vec::<String>::new(), "{text}");
        assert!(
            notes[0].contains("`newest = 1` would keep the 1 highest versions by semver instead"),
            "{notes:?}"
        );
        // The same for a count of every image.
        let json = r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#;
        let (policy, text, _) = convert(json);
        assert_eq!(ecr_expired(json, images), ["v2.0.0"]);
        assert_eq!(deleted(&policy, images), Vec::<String>::new(), "{text}");
    }

    #[test]
    fn an_any_age_rule_keeps_recent_prereleases_as_ecr_does() {
        // `pushed_within` alone keeps no prerelease-only image; ECR's age rule keeps them all.
        let json = r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"any","countType":"sinceImagePushed","countUnit":"days","countNumber":30},"action":{"type":"expire"}}]}"#;
        let (policy, text, _) = convert(json);
        let images: &[(&[&str], i64)] = &[
            (&["v2.0.0-rc.1"], 1),
            (&["v1.0.0"], 40),
            (&["v0.9.0-rc.1"], 40),
            (&[], 40),
            (&[], 2),
            (&["latest"], 40),
        ];
        assert_eq!(
            ecr_expired(json, images),
            ["<untagged>", "latest", "v0.9.0-rc.1", "v1.0.0"]
        );
        assert_eq!(
            deleted(&policy, images),
            ["<untagged>", "v0.9.0-rc.1", "v1.0.0"],
            "latest is not a version: it stays unless [other_tags] names it: {text}"
        );
    }

    #[test]
    fn converts_the_common_ecr_rules_and_says_what_it_could_not() {
        let json = r#"{"rules":[
          {"rulePriority":2,"description":"keep 20 releases","selection":{"tagStatus":"tagged","tagPrefixList":["v"],"countType":"imageCountMoreThan","countNumber":20},"action":{"type":"expire"}},
          {"rulePriority":1,"selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":14},"action":{"type":"expire"}},
          {"rulePriority":3,"selection":{"tagStatus":"tagged","tagPatternList":["pr-*"],"countType":"imageCountMoreThan","countNumber":5},"action":{"type":"expire"}},
          {"rulePriority":4,"selection":{"tagStatus":"any","countType":"sinceImagePushed","countUnit":"days","countNumber":90},"action":{"type":"expire"}}
        ]}"#;
        let (parsed, policy, notes) = convert(json);
        let rules = parsed.describe().join("\n");
        assert!(rules.contains("keep: tags v*\n"), "{rules}");
        assert!(rules.contains("keep: tags pr-*\n"), "{rules}");
        assert!(
            rules.contains("keep: tags * pushed within 90d"),
            "an `any` rule is for every tagged image: {rules}"
        );
        assert!(rules.contains("untagged images: deleted after 14d"), "{rules}");
        assert!(
            notes[0].starts_with("rule 2 (keep 20 releases): ECR keeps the 20 most recently pushed images tagged v*")
                && notes[0].contains("by semver instead"),
            "{notes:?}"
        );
        assert!(notes[1].contains("cannot count by push time"), "{notes:?}");
        assert!(
            notes
                .iter()
                .any(|n| n.contains("only to images no earlier rule selected")),
            "{notes:?}"
        );
        assert!(policy.contains("# Not expressed exactly:"));
        assert!(
            !policy.contains("v[0-9]*"),
            "an `any` rule selects every version: {policy}"
        );
    }

    #[test]
    fn an_ecr_policy_that_only_expires_untagged_images_keeps_every_tagged_one() {
        let json = r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":14},"action":{"type":"expire"}}]}"#;
        let (parsed, _, notes) = convert(json);
        assert_eq!(notes, Vec::<String>::new());
        let images: &[(&[&str], i64)] = &[
            (&[], 20),
            (&[], 3),
            (&["v1.0.0"], 900),
            (&["1.0.1"], 900),
            (&["1.0.2-rc.1"], 900),
            (&["latest"], 900),
        ];
        assert_eq!(deleted(&parsed, images), ["<untagged>"]);
        assert_eq!(ecr_expired(json, images), ["<untagged>"]);
    }

    #[test]
    fn versions_a_rule_selects_only_partly_are_all_kept_and_said() {
        // ECR selects only v1.*: v2.0.0 and 3.0.0 are never expired there. Backtrack cannot keep
        // "v versions but v1.*", so it keeps every v version (the old import deleted v2.0.0).
        let json = r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","tagPrefixList":["v1."],"countType":"sinceImagePushed","countUnit":"days","countNumber":30},"action":{"type":"expire"}}]}"#;
        let (parsed, text, notes) = convert(json);
        assert!(text.contains("tags = [\"v[0-9]*\", \"[0-9]*\"]"), "{text}");
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("version tags like v[0-9]* are all kept: rule 1 selects only some of them")),
            "{notes:?}"
        );
        let images: &[(&[&str], i64)] = &[(&["v1.0.0"], 90), (&["v1.1.0"], 3), (&["v2.0.0"], 90), (&["3.0.0"], 90)];
        assert_eq!(ecr_expired(json, images), ["v1.0.0"]);
        assert_eq!(deleted(&parsed, images), Vec::<String>::new());
    }

    #[test]
    fn rules_without_an_equivalent_keep_what_they_select_and_are_said() {
        let json = r#"{"rules":[
          {"rulePriority":1,"selection":{"tagStatus":"tagged","tagPrefixList":["dev"],"countType":"sinceImagePulled","countUnit":"days","countNumber":30},"action":{"type":"expire"}},
          {"rulePriority":2,"selection":{"tagStatus":"tagged","tagPrefixList":["sha-"],"countType":"sinceImagePushed","countUnit":"days","countNumber":60},"action":{"type":"transition","targetStorageClass":"archive"}},
          {"rulePriority":3,"selection":{"tagStatus":"tagged","tagPrefixList":["s"],"countType":"sinceImagePushed","countUnit":"days","countNumber":30},"action":{"type":"expire"}}
        ]}"#;
        let (parsed, _, notes) = convert(json);
        assert!(
            notes[0].contains("sinceImagePulled has no equivalent; every image it selects is kept"),
            "{notes:?}"
        );
        assert!(
            notes[1].contains("action transition") && notes[1].contains("every image it selects is kept"),
            "{notes:?}"
        );
        // sha-1 is selected by rule 2, so rule 3 cannot expire it; s-1 is rule 3's.
        assert_eq!(
            deleted(
                &parsed,
                &[(&["dev-1"], 90), (&["v1.0.0"], 90), (&["sha-1"], 90), (&["s-1"], 90)]
            ),
            ["s-1"]
        );
    }

    #[test]
    fn text_from_the_ecr_policy_cannot_add_rules_to_the_written_file() {
        let json = r#"{"rules":[{"rulePriority":1,"description":"x\n[[keep]]\nnewest = 1\n#","selection":{"tagStatus":"tagged","tagPatternList":["a\"b*"],"countType":"imageCountMoreThan","countNumber":2},"action":{"type":"expire"}}]}"#;
        let (parsed, text, _) = convert(json);
        assert!(!parsed.describe().iter().any(|l| l == "keep: newest 1"), "{text}");
        assert!(parsed.describe().iter().any(|l| l == "keep: tags a\"b*"), "{text}");
    }

    #[test]
    fn a_malformed_ecr_policy_error_has_a_location() {
        let err = convert_ecr("{\"rules\": [\n  {\"rulePriority\": \"one\"}]}").unwrap_err();
        assert_eq!((err.line, err.column), (2, 24), "at the value that is wrong");
        assert!(
            err.to_string().starts_with("not an ECR lifecycle policy: invalid type"),
            "{err}"
        );
        assert!(!err.to_string().contains(" at line "), "{err}");
    }
}

/// The imported policy checked against the reference evaluator: for random ECR policies and
/// repositories, what the imported policy's plan deletes, ECR expires.
#[cfg(test)]
mod props {
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;

    use super::*;
    use crate::domain::digest::Digest;
    use crate::domain::ecr_lifecycle::{self, Count, Image, Rule, TagStatus};
    use crate::domain::retention::{self, Action, Facts, ImageEntry, Policy};

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn arb_filter() -> impl Strategy<Value = (Vec<String>, Vec<String>)> {
        let prefix = prop::sample::select(vec!["v", "v1", "1.", "sha-", "pr-", "release"]);
        let pattern = prop::sample::select(vec![
            "*",
            "v*",
            "v1.*",
            "*.0",
            "*-rc*",
            "sha-*",
            "pr-1*",
            "release-*",
            "latest",
            "1.*",
            "*1*",
        ]);
        prop_oneof![
            prop::collection::vec(prefix, 1..=3).prop_map(|p| (p.into_iter().map(String::from).collect(), vec![])),
            prop::collection::vec(pattern, 1..=3).prop_map(|p| (vec![], p.into_iter().map(String::from).collect())),
        ]
    }

    fn arb_count() -> impl Strategy<Value = Count> {
        prop_oneof![
            (1u64..6).prop_map(Count::MoreThan),
            (1u64..40).prop_map(Count::SincePushedDays)
        ]
    }

    /// 1-4 rules ECR accepts: at most one untagged rule, `any` only last.
    fn arb_rules() -> impl Strategy<Value = Vec<Rule>> {
        let tagged = (arb_filter(), arb_count()).prop_map(|((prefixes, patterns), count)| Rule {
            priority: 0,
            tag_status: TagStatus::Tagged,
            tag_prefixes: prefixes,
            tag_patterns: patterns,
            count,
        });
        let bare = |tag_status| {
            arb_count().prop_map(move |count| Rule {
                priority: 0,
                tag_status,
                tag_prefixes: vec![],
                tag_patterns: vec![],
                count,
            })
        };
        (
            prop::collection::vec(prop_oneof![4 => tagged, 1 => bare(TagStatus::Untagged)], 0..=3),
            prop::option::of(bare(TagStatus::Any)),
            prop::sample::subsequence((1..=12).collect::<Vec<i64>>(), 4),
        )
            .prop_filter_map("1-4 rules, one untagged at most", |(mut rules, any, priorities)| {
                rules.extend(any);
                let untagged = rules.iter().filter(|r| r.tag_status == TagStatus::Untagged).count();
                if rules.is_empty() || untagged > 1 {
                    return None;
                }
                for (r, p) in rules.iter_mut().zip(priorities) {
                    r.priority = p;
                }
                Some(rules)
            })
    }

    /// Up to 12 images with distinct tags: versions (some prereleases), build and branch tags,
    /// and untagged images, pushed 0-60 days ago in any order.
    fn arb_images() -> impl Strategy<Value = Vec<Image>> {
        let tag = prop_oneof![
            (0u64..3, 0u64..3, 0u64..2).prop_map(|(a, b, c)| format!("v{a}.{b}.{c}")),
            (0u64..3, 0u64..3, 0u64..2).prop_map(|(a, b, c)| format!("{a}.{b}.{c}")),
            (0u64..3, 0u64..2).prop_map(|(a, b)| format!("v{a}.{b}.0-rc.1")),
            (0u64..3, 0u64..2).prop_map(|(a, b)| format!("{a}.{b}.0-beta.2")),
            prop::sample::select(vec!["abc", "1f2e", "99"]).prop_map(|h| format!("sha-{h}")),
            (1u64..20).prop_map(|n| format!("pr-{n}")),
            Just("latest".to_string()),
            (1u64..4).prop_map(|n| format!("release-{n}")),
        ];
        prop::collection::vec((prop::collection::vec(tag, 0..3), 0i64..60, 0i64..24), 1..12).prop_map(|imgs| {
            let mut seen = std::collections::HashSet::new();
            imgs.into_iter()
                .enumerate()
                .map(|(i, (tags, days, hours))| Image {
                    digest: Digest::parse(&format!("sha256:{:064x}", i + 1)).unwrap(),
                    // A tag names one image: drop tags an earlier image already has.
                    tags: tags.into_iter().filter(|t| seen.insert(t.clone())).collect(),
                    pushed_at: now() - chrono::Duration::days(days) - chrono::Duration::hours(hours),
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn the_imported_policy_deletes_only_what_ecr_expires(rules in arb_rules(), images in arb_images()) {
            let json = ecr_lifecycle::policy_json(&rules);
            let imported = convert_ecr(&json).unwrap();
            let policy: Policy = toml::from_str(&imported.policy).unwrap();
            prop_assert_eq!(policy.problems(), vec![], "{}", imported.policy);
            let ecr = ecr_lifecycle::expired(&rules, &images, now()).unwrap();
            let entries: Vec<ImageEntry> = images
                .iter()
                .map(|i| ImageEntry {
                    digest: i.digest.clone(),
                    tags: i.tags.clone(),
                    pushed: Some(i.pushed_at),
                    created: None,
                    size: None,
                })
                .collect();
            let facts = Facts { now: now(), ..Default::default() };
            let plan = retention::plan(&policy, &entries, &facts);
            for d in plan.decisions.iter().filter(|d| d.action == Action::Delete) {
                let image = images.iter().find(|i| i.digest == d.digest).unwrap();
                prop_assert!(
                    ecr.contains_key(&d.digest),
                    "deletes {:?} (pushed {}d ago), which ECR keeps\nreasons: {:?}\nECR policy: {}\nimported:\n{}",
                    d.tags,
                    (now() - image.pushed_at).num_days(),
                    d.reasons,
                    json,
                    imported.policy
                );
            }
        }
    }
}
