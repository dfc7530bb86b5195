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

/// Converts ECR rules. ECR's rules *expire* what they select, each image by the first rule (in
/// priority order) that selects it, and never touch what no rule selects; ours *keep*, and a
/// version that no rule keeps goes. So:
/// - "expire images tagged `sha-*` pushed more than 14 days ago" becomes a rule scoped to those
///   tags (`tags = ["sha-*"]` with `pushed_within = "14d"`) and `[other_tags] prune = ["sha-*"]`,
///   so that such images are decided by the rules at all;
/// - "expire all but the N newest `v*` images" becomes `newest = N` (by semver, not push time);
/// - version tags that no ECR rule selects are kept by a rule of their own, as ECR keeps them;
/// - untagged images expire with `[untagged]`.
///
/// What cannot be said exactly is returned as notes (and written as comments in the policy).
pub fn convert_ecr(json: &str) -> Result<Imported, ConvertError> {
    let ecr: EcrPolicy = serde_json::from_str(json)?;
    let mut rules = ecr.rules;
    rules.sort_by_key(|r| r.rule_priority);
    let mut keep: Vec<String> = Vec::new();
    let mut prune: Vec<String> = Vec::new();
    let mut untagged: Option<String> = None;
    // Whether a rule already decides untagged images (ECR: the first rule that selects one).
    let mut untagged_decided = false;
    // Whether an `any` rule was converted: then every image is selected by some ECR rule.
    let mut any_rule = None;
    // ECR patterns of converted tagged rules, for the version tags no rule selects.
    let mut selected: Vec<(String, Vec<String>)> = Vec::new();
    let mut notes = Vec::new();
    for r in &rules {
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
        let action = r.action.as_ref().map_or("expire", |a| a.kind.as_str());
        if action != "expire" {
            notes.push(format!(
                "{name}: action {action} (not expire) has no equivalent; the rule is left out"
            ));
            continue;
        }
        if let Some(class) = s.storage_class.as_deref().filter(|c| *c != "standard") {
            notes.push(format!(
                "{name}: rules for images in the {class} storage class have no equivalent; the rule is left out"
            ));
            continue;
        }
        let ecr_patterns: Vec<String> = s
            .tag_prefix_list
            .iter()
            .map(|p| format!("{p}*"))
            .chain(s.tag_pattern_list.iter().cloned())
            .collect();
        let globs: Vec<String> = ecr_patterns.iter().map(|p| ecr_glob(p)).collect();
        let days = (s.count_type == "sinceImagePushed").then_some(s.count_number);
        if s.count_type == "sinceImagePushed" && s.count_unit.as_deref().is_some_and(|u| u != "days") {
            notes.push(format!(
                "{name}: countUnit {} is unknown (ECR counts days); the rule is left out",
                s.count_unit.as_deref().unwrap_or_default()
            ));
            continue;
        }
        let known_count = matches!(s.count_type.as_str(), "sinceImagePushed" | "imageCountMoreThan");
        match s.tag_status.as_str() {
            "untagged" => {
                if untagged_decided {
                    notes.push(format!("{name}: an earlier rule already decides untagged images"));
                } else if let Some(d) = days {
                    untagged = Some(format!("{d}d"));
                } else {
                    notes.push(format!(
                        "{name}: {} for untagged images has no equivalent ([untagged] expires them by age); \
                         untagged images are left alone",
                        s.count_type
                    ));
                }
                untagged_decided = true;
            }
            "tagged" if !known_count => {
                keep.push(format!("[[keep]]\n{from}tags = {}\n", toml_list(&globs)));
                notes.push(format!(
                    "{name}: countType {} has no equivalent; every image tagged {} is kept",
                    s.count_type,
                    ecr_patterns.join(", ")
                ));
                selected.push((name.clone(), ecr_patterns.clone()));
            }
            "tagged" if globs.is_empty() => {
                notes.push(format!(
                    "{name}: tagged rule with no tagPrefixList or tagPatternList; left out"
                ));
            }
            "tagged" => {
                if let Some(d) = days {
                    keep.push(format!(
                        "[[keep]]\n{from}tags = {}\npushed_within = \"{d}d\"\n",
                        toml_list(&globs)
                    ));
                    for g in &globs {
                        if !prune.contains(g) {
                            prune.push(g.clone());
                        }
                    }
                    if ecr_patterns.len() > 1 {
                        notes.push(format!(
                            "{name}: ECR selects only images that have a tag for each of {} (all of them); here an \
                             image with any one of them is decided by this rule",
                            ecr_patterns.join(", ")
                        ));
                    }
                } else if ecr_patterns.iter().all(|p| Family::V.covered_by(p)) {
                    keep.push(format!("[[keep]]\n{from}newest = {}\n", s.count_number));
                    notes.push(format!(
                        "{name}: ECR counts by push time; backtrack keeps the {} highest versions by semver",
                        s.count_number
                    ));
                } else {
                    keep.push(format!(
                        "[[keep]]\n{from}# every image tagged like this is kept\ntags = {}\n",
                        toml_list(&globs)
                    ));
                    notes.push(format!(
                        "{name}: a count per tag pattern ({}) has no equivalent; all such images are kept",
                        ecr_patterns.join(", ")
                    ));
                }
                selected.push((name.clone(), ecr_patterns.clone()));
            }
            "any" if known_count => {
                if let Some(d) = days {
                    keep.push(format!("[[keep]]\n{from}pushed_within = \"{d}d\"\n"));
                    if !untagged_decided {
                        untagged = Some(format!("{d}d"));
                        untagged_decided = true;
                    }
                } else {
                    keep.push(format!("[[keep]]\n{from}newest = {}\n", s.count_number));
                    notes.push(format!(
                        "{name}: ECR counts by push time; backtrack keeps the {} highest versions by semver",
                        s.count_number
                    ));
                    if !untagged_decided {
                        notes.push(format!(
                            "{name}: ECR counts untagged images too; here they are left alone"
                        ));
                        untagged_decided = true;
                    }
                }
                notes.push(format!(
                    "{name}: tags that are not versions (latest, branch tags) keep their image here; name them in \
                     [other_tags] prune for this rule to decide them as ECR does"
                ));
                if !selected.is_empty() {
                    notes.push(format!(
                        "{name}: ECR applies it only to images no earlier rule selected; here it applies to every \
                         image, so it may keep some that an earlier rule would expire"
                    ));
                }
                any_rule = Some(name.clone());
            }
            "any" => notes.push(format!(
                "{name}: countType {} has no equivalent; the rule is left out",
                s.count_type
            )),
            other => notes.push(format!("{name}: tagStatus {other} is unknown; the rule is left out")),
        }
    }
    // ECR never expires what no rule selects; here a version no rule keeps is deleted. So the
    // versions no converted rule selects get a rule that keeps them.
    if any_rule.is_none() {
        let mut untouched = Vec::new();
        for family in Family::ALL {
            let touching: Vec<&String> = selected
                .iter()
                .filter(|(_, pats)| pats.iter().any(|p| family.touched_by(p)))
                .map(|(name, _)| name)
                .collect();
            let covered = selected
                .iter()
                .any(|(_, pats)| pats.iter().all(|p| family.covered_by(p)));
            if touching.is_empty() {
                untouched.push(family.glob().to_string());
            } else if !covered {
                notes.push(format!(
                    "version tags like {} that {} does not select are never expired by ECR; here only the \
                     [[keep]] rules keep them",
                    family.glob(),
                    touching.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        if !untouched.is_empty() {
            keep.push(format!(
                "[[keep]]\n# no ECR rule selects these version tags, so ECR never expires them\ntags = {}\n",
                toml_list(&untouched)
            ));
        }
    }
    if keep.is_empty() {
        keep.push("[[keep]]\n# ECR expires no tagged image under this policy: keep them all\ntags = [\"*\"]\n".into());
    }
    let mut out = String::from(
        "description = \"Imported from an ECR lifecycle policy\"\n\n# What the target runs and last_known_good are always protected.\n[protect]\nhistory = 3\n\n",
    );
    for k in &keep {
        out.push_str(k);
        out.push('\n');
    }
    if !prune.is_empty() {
        out.push_str(&format!(
            "# Tags that are not versions keep their image unless named here; these are decided by the\n\
             # rules above, as ECR's age rules select them.\n\
             [other_tags]\nprune = {}\n\n",
            toml_list(&prune)
        ));
    }
    if let Some(d) = untagged {
        out.push_str(&format!("[untagged]\nexpire_after = \"{d}\"\n"));
    }
    if !notes.is_empty() {
        out.push_str("\n# Not expressed exactly:\n");
        for n in &notes {
            out.push_str(&format!("# - {n}\n"));
        }
    }
    Ok(Imported { policy: out, notes })
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::domain::digest::Digest;
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

    #[test]
    fn a_tag_prefix_age_rule_is_scoped_to_those_tags_not_every_image() {
        // "Expire sha-/pr- builds older than 14 days", as AWS documents the rule shape.
        let json = r#"{"rules":[{"rulePriority":1,"description":"Expire branch builds older than 14 days",
          "selection":{"tagStatus":"tagged","tagPrefixList":["sha-","pr-"],"countType":"sinceImagePushed",
          "countUnit":"days","countNumber":14},"action":{"type":"expire"}}]}"#;
        let (policy, text, notes) = convert(json);
        assert!(
            text.contains("tags = [\"sha-*\", \"pr-*\"]\npushed_within = \"14d\""),
            "{text}"
        );
        assert!(text.contains("[other_tags]\nprune = [\"sha-*\", \"pr-*\"]"), "{text}");
        assert!(
            !policy.describe().iter().any(|l| l == "keep: pushed within 14d"),
            "no age limit for every image: {text}"
        );
        assert_eq!(
            deleted(
                &policy,
                &[
                    (&["sha-old"], 30),
                    (&["sha-new"], 2),
                    (&["pr-old"], 20),
                    (&["v1.0.0"], 400),
                    (&["2.0.0"], 400),
                    (&["latest"], 400),
                ]
            ),
            ["pr-old", "sha-old"],
            "branch builds older than 14 days go; versions and other tags stay, as in ECR: {text}"
        );
        assert!(notes.iter().any(|n| n.contains("all of them")), "{notes:?}");
        assert!(
            text.contains("# - rule 1 (Expire branch builds older than 14 days): ECR selects only"),
            "{text}"
        );
    }

    #[test]
    fn the_aws_docs_age_and_count_examples_convert_faithfully() {
        // "Filtering on image age": tagPatternList prod*, older than 14 days.
        let (policy, text, notes) = convert(
            r#"{"rules":[{"rulePriority":1,"description":"Expire images older than 14 days","selection":{"tagStatus":"tagged","tagPatternList":["prod*"],"countType":"sinceImagePushed","countUnit":"days","countNumber":14},"action":{"type":"expire"}}]}"#,
        );
        assert_eq!(notes, Vec::<String>::new(), "{text}");
        assert_eq!(
            deleted(
                &policy,
                &[(&["prod-1"], 20), (&["prod-2"], 3), (&["v1.0.0"], 90), (&["test"], 90)]
            ),
            ["prod-1"]
        );
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
        let (policy, _, notes) = convert(
            r#"{"rules":[
              {"rulePriority":1,"description":"Rule 1","selection":{"tagStatus":"tagged","tagPrefixList":["prod"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}},
              {"rulePriority":2,"description":"Rule 2","selection":{"tagStatus":"tagged","tagPrefixList":["beta"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
        );
        assert_eq!(notes.len(), 2, "a count per pattern is said for each rule: {notes:?}");
        assert!(
            notes
                .iter()
                .all(|n| n.contains("has no equivalent; all such images are kept"))
        );
        assert_eq!(
            deleted(
                &policy,
                &[
                    (&["beta-1", "prod-1"], 10),
                    (&["beta-2", "prod-2"], 9),
                    (&["beta-3"], 8),
                    (&["v3.0.0"], 1)
                ]
            ),
            Vec::<String>::new()
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
        assert!(rules.contains("keep: newest 20"), "{rules}");
        assert!(rules.contains("keep: tags pr-*"), "{rules}");
        assert!(
            rules.contains("keep: pushed within 90d"),
            "an `any` rule is for every image: {rules}"
        );
        assert!(rules.contains("untagged images: deleted after 14d"), "{rules}");
        assert!(notes[0].contains("by semver"), "{notes:?}");
        assert!(notes[1].contains("count per tag pattern"), "{notes:?}");
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
        assert_eq!(
            deleted(
                &parsed,
                &[
                    (&[], 20),
                    (&[], 3),
                    (&["v1.0.0"], 900),
                    (&["1.0.1"], 900),
                    (&["latest"], 900)
                ]
            ),
            ["<untagged>"]
        );
    }

    #[test]
    fn versions_an_ecr_rule_selects_only_partly_are_said() {
        // Only v1.* is selected by ECR: v2.0.0 and 3.0.0 are never expired there.
        let json = r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","tagPrefixList":["v1."],"countType":"sinceImagePushed","countUnit":"days","countNumber":30},"action":{"type":"expire"}}]}"#;
        let (parsed, text, notes) = convert(json);
        assert!(
            text.contains("tags = [\"[0-9]*\"]"),
            "bare versions are untouched: {text}"
        );
        assert!(
            notes
                .iter()
                .any(|n| n.contains("like v[0-9]* that rule 1 does not select")),
            "{notes:?}"
        );
        assert_eq!(
            deleted(&parsed, &[(&["v1.0.0"], 90), (&["v1.1.0"], 3), (&["3.0.0"], 90)]),
            ["v1.0.0"]
        );
    }

    #[test]
    fn rules_without_an_equivalent_are_left_out_and_said() {
        let json = r#"{"rules":[
          {"rulePriority":1,"selection":{"tagStatus":"tagged","tagPrefixList":["dev"],"countType":"sinceImagePulled","countUnit":"days","countNumber":30},"action":{"type":"expire"}},
          {"rulePriority":2,"selection":{"tagStatus":"any","countType":"sinceImagePushed","countUnit":"days","countNumber":60},"action":{"type":"transition","targetStorageClass":"archive"}}
        ]}"#;
        let (parsed, _, notes) = convert(json);
        assert!(
            notes[0].contains("sinceImagePulled has no equivalent; every image tagged dev* is kept"),
            "{notes:?}"
        );
        assert!(notes[1].contains("action transition"), "{notes:?}");
        assert_eq!(
            deleted(&parsed, &[(&["dev-1"], 90), (&["v1.0.0"], 90)]),
            Vec::<String>::new()
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
