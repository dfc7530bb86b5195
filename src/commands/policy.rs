//! `backtrack policy check FILE` (validate a policy without touching anything) and
//! `backtrack policy import-ecr FILE.json` (turn an ECR lifecycle policy into ours, saying what
//! could not be expressed).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::App;
use crate::cli::PolicyCommand;
use crate::output::Report;

pub async fn run(app: &App<'_>, cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Check { file } => check(app, &file),
        PolicyCommand::ImportEcr { file } => import_ecr(app, &file),
    }
}

#[derive(Debug, Serialize)]
struct CheckReport {
    file: String,
    valid: bool,
    description: Option<String>,
    rules: Vec<String>,
}

impl Report for CheckReport {
    fn human(&self) -> String {
        let mut out = format!("{}: ok", self.file);
        if let Some(d) = &self.description {
            out.push_str(&format!(" ({d})"));
        }
        for r in &self.rules {
            out.push_str(&format!("\n  {r}"));
        }
        out
    }
}

fn check(app: &App<'_>, file: &Path) -> anyhow::Result<()> {
    let policy = crate::settings::policy::load(file)?;
    app.printer.report(&CheckReport {
        file: file.display().to_string(),
        valid: true,
        description: policy.description.clone(),
        rules: policy.describe(),
    })
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
    count_number: u64,
}

#[derive(Debug, Serialize)]
struct ImportReport {
    policy: String,
    not_expressed: Vec<String>,
}

impl Report for ImportReport {
    fn human(&self) -> String {
        self.policy.trim_end().to_string()
    }
}

/// Converts ECR rules. ECR's rules *expire* what they select; ours *keep*. "Expire all but the N
/// newest v* images" becomes "keep the 10 newest versions" (by semver, not push time), and so on.
pub fn convert_ecr(json: &str) -> Result<(String, Vec<String>), String> {
    let ecr: EcrPolicy = serde_json::from_str(json).map_err(|e| format!("parse the ECR lifecycle policy: {e}"))?;
    let mut rules = ecr.rules;
    rules.sort_by_key(|r| r.rule_priority);
    let mut keep = Vec::new();
    let mut untagged = None;
    let mut notes = Vec::new();
    for r in &rules {
        let s = &r.selection;
        let name = format!(
            "rule {}{}",
            r.rule_priority,
            r.description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
        );
        // ECR's only count unit is days.
        let days = || format!("{}d", s.count_number);
        let patterns: Vec<String> = s
            .tag_prefix_list
            .iter()
            .map(|p| format!("{p}*"))
            .chain(s.tag_pattern_list.iter().cloned())
            .collect();
        let versions_only = patterns.iter().all(|p| p == "v*") || patterns.is_empty();
        match (s.tag_status.as_str(), s.count_type.as_str()) {
            ("untagged", "sinceImagePushed") => untagged = Some(days()),
            ("untagged", _) => notes.push(format!(
                "{name}: keeping a count of untagged images has no equivalent; [untagged] expires them by age"
            )),
            (_, "imageCountMoreThan") if versions_only => {
                keep.push(format!("[[keep]]\n# from ECR {name}\nnewest = {}\n", s.count_number));
                notes.push(format!(
                    "{name}: ECR counts by push time; backtrack keeps the {} highest versions by semver",
                    s.count_number
                ));
            }
            (_, "imageCountMoreThan") => {
                keep.push(format!(
                    "[[keep]]\n# from ECR {name}: every image tagged like this is kept\ntags = {:?}\n",
                    patterns
                ));
                notes.push(format!(
                    "{name}: a count per tag pattern ({}) has no equivalent; all such images are kept",
                    patterns.join(", ")
                ));
            }
            (_, "sinceImagePushed") => {
                keep.push(format!("[[keep]]\n# from ECR {name}\npushed_within = \"{}\"\n", days()));
                if !versions_only {
                    notes.push(format!(
                        "{name}: the age limit applies to every image, not only tags like {}",
                        patterns.join(", ")
                    ));
                }
            }
            (_, other) => notes.push(format!("{name}: countType {other} is unknown")),
        }
    }
    if keep.is_empty() {
        // ECR expires no tagged image under such a policy; backtrack would delete every one.
        keep.push("[[keep]]\n# ECR expires no tagged image under this policy: keep them all\ntags = [\"*\"]\n".into());
    }
    let mut out = String::from(
        "description = \"Imported from an ECR lifecycle policy\"\n\n# What the target runs and last_known_good are always protected.\n[protect]\nhistory = 3\n\n",
    );
    for k in &keep {
        out.push_str(k);
        out.push('\n');
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
    Ok((out, notes))
}

fn import_ecr(app: &App<'_>, file: &Path) -> anyhow::Result<()> {
    let json = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("read {}: {e}", file.display()))?;
    let (policy, notes) = convert_ecr(&json).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The result must itself be a valid policy.
    crate::settings::policy::parse(Path::new("<imported>"), &policy)?;
    for n in &notes {
        app.printer.note(format!("note: {n}"));
    }
    app.printer.report(&ImportReport {
        policy,
        not_expressed: notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_the_common_ecr_rules_and_says_what_it_could_not() {
        let json = r#"{"rules":[
          {"rulePriority":2,"description":"keep 20 releases","selection":{"tagStatus":"tagged","tagPrefixList":["v"],"countType":"imageCountMoreThan","countNumber":20},"action":{"type":"expire"}},
          {"rulePriority":1,"selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":14},"action":{"type":"expire"}},
          {"rulePriority":3,"selection":{"tagStatus":"tagged","tagPatternList":["pr-*"],"countType":"imageCountMoreThan","countNumber":5},"action":{"type":"expire"}},
          {"rulePriority":4,"selection":{"tagStatus":"any","countType":"sinceImagePushed","countUnit":"days","countNumber":90},"action":{"type":"expire"}}
        ]}"#;
        let (policy, notes) = convert_ecr(json).unwrap();
        let parsed = crate::settings::policy::parse(Path::new("x"), &policy).unwrap();
        let rules = parsed.describe().join("\n");
        assert!(rules.contains("keep: newest 20"), "{rules}");
        assert!(rules.contains("keep: tags pr-*"), "{rules}");
        assert!(rules.contains("keep: pushed within 90d"), "{rules}");
        assert!(rules.contains("untagged images: deleted after 14d"), "{rules}");
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("by semver"));
        assert!(policy.contains("# Not expressed exactly:"));
    }

    #[test]
    fn an_ecr_policy_that_only_expires_untagged_images_keeps_every_tagged_one() {
        let json = r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":14},"action":{"type":"expire"}}]}"#;
        let (policy, _) = convert_ecr(json).unwrap();
        let parsed = crate::settings::policy::parse(Path::new("x"), &policy).unwrap();
        let rules = parsed.describe().join("\n");
        assert!(rules.contains("keep: tags *"), "{rules}");
    }
}
