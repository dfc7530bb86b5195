//! A reference evaluator of ECR lifecycle policies: given the rules and a repository's images,
//! which images ECR expires. It exists to check `policy import-ecr` against (the imported policy
//! must never delete what ECR keeps), so it follows the AWS documentation word for word and
//! nothing else; where the documentation is silent, the choice is said where it is made. Pure:
//! "now" is a parameter.
//!
//! Sources, from the Amazon ECR User Guide, and named in *italics* where they are quoted below:
//! [evaluation rules], [properties] and [examples]. That a rule takes a `tagPrefixList` or a
//! `tagPatternList`, never both, and at most four wildcards per pattern, is from the AWS CDK's
//! `LifecycleRule` ([cdk]).
//!
//! [evaluation rules]: https://docs.aws.amazon.com/AmazonECR/latest/userguide/LifecyclePolicies.html#lp_evaluation_rules
//! [properties]: https://docs.aws.amazon.com/AmazonECR/latest/userguide/lifecycle_policy_parameters.html
//! [examples]: https://docs.aws.amazon.com/AmazonECR/latest/userguide/lifecycle_policy_examples.html
//! [cdk]: https://docs.aws.amazon.com/cdk/api/v2/docs/aws-cdk-lib.aws_ecr.LifecycleRule.html
//!
//! Only `expire` rules on the standard storage class with `imageCountMoreThan` or
//! `sinceImagePushed` are modelled; other actions and count types are not.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::json;

use super::digest::Digest;

/// Which images a rule looks at (`tagStatus`). *properties*: "If you specify `any`, then all
/// images have the rule evaluated against them."
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagStatus {
    /// Images with at least one tag matching the rule's tag filter.
    Tagged,
    /// Images without tags.
    Untagged,
    /// Every image.
    Any,
}

impl TagStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TagStatus::Tagged => "tagged",
            TagStatus::Untagged => "untagged",
            TagStatus::Any => "any",
        }
    }
}

/// What a rule expires of the images it selects (`countType` with `countNumber`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// `imageCountMoreThan`. *evaluation rules*: "images are sorted from youngest to oldest based
    /// on `pushed_at_time` and then all images greater than the specified count are expired."
    MoreThan(u64),
    /// `sinceImagePushed` with `countUnit: days`. *evaluation rules*: "all images whose
    /// `pushed_at_time` is older than the specified number of days based on `countNumber` are
    /// expired."
    SincePushedDays(u64),
}

/// One rule of a lifecycle policy (with `"action": {"type": "expire"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `rulePriority`: lowest first.
    pub priority: i64,
    pub tag_status: TagStatus,
    /// `tagPrefixList`: with several, an image needs a tag for *each* of them.
    pub tag_prefixes: Vec<String>,
    /// `tagPatternList` (`*` is the only wildcard): with several, an image needs a tag for *each*.
    pub tag_patterns: Vec<String>,
    pub count: Count,
}

/// One image of the repository, as DescribeImages has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub digest: Digest,
    pub tags: Vec<String>,
    pub pushed_at: DateTime<Utc>,
}

/// A policy ECR would refuse, so there is nothing to evaluate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("rule priority {0} is used twice (each rule needs its own rulePriority)")]
    DuplicatePriority(i64),
    #[error("rule {0}: tagStatus any must have the highest rulePriority")]
    AnyNotLast(i64),
    #[error("rules {0} and {1} both select untagged images (only one rule may)")]
    SeveralUntagged(i64, i64),
    #[error("rule {0}: tagStatus tagged needs a tagPrefixList or a tagPatternList")]
    NoTagFilter(i64),
    #[error("rule {0}: tagPrefixList and tagPatternList cannot both be given")]
    BothTagFilters(i64),
    #[error("rule {0}: only tagStatus tagged takes a tagPrefixList or tagPatternList")]
    FilterWithoutTagged(i64),
    #[error("rule {0}: pattern {1:?} has more than four wildcards")]
    TooManyWildcards(i64, String),
    #[error("rule {0}: countNumber must be positive")]
    ZeroCount(i64),
}

impl Rule {
    /// Whether the rule selects the image, on tags alone ("the tagging requirements of a rule").
    ///
    /// *evaluation rules*: "When using the `tagPrefixList`, an image is successfully matched if
    /// *all* of the tags in the `tagPrefixList` value are matched against any of the image's
    /// tags." *properties*, `tagPatternList`: "If you specify multiple tags, only the images with
    /// all specified tags are selected." Each entry may be matched by a different tag of the
    /// image, or several entries by the same tag (*examples*, "Filtering on multiple tags in a
    /// single rule", example B: "tags are not exclusive").
    pub fn selects(&self, image: &Image) -> bool {
        match self.tag_status {
            TagStatus::Any => true,
            TagStatus::Untagged => image.tags.is_empty(),
            TagStatus::Tagged => {
                !image.tags.is_empty()
                    && self
                        .tag_prefixes
                        .iter()
                        .all(|p| image.tags.iter().any(|t| t.starts_with(p.as_str())))
                    && self
                        .tag_patterns
                        .iter()
                        .all(|p| image.tags.iter().any(|t| wildcard_match(p, t)))
            }
        }
    }

    /// The rule as ECR's JSON has it.
    pub fn to_json(&self) -> serde_json::Value {
        let mut selection = json!({ "tagStatus": self.tag_status.as_str() });
        if !self.tag_prefixes.is_empty() {
            selection["tagPrefixList"] = json!(self.tag_prefixes);
        }
        if !self.tag_patterns.is_empty() {
            selection["tagPatternList"] = json!(self.tag_patterns);
        }
        match self.count {
            Count::MoreThan(n) => {
                selection["countType"] = json!("imageCountMoreThan");
                selection["countNumber"] = json!(n);
            }
            Count::SincePushedDays(d) => {
                selection["countType"] = json!("sinceImagePushed");
                selection["countUnit"] = json!("days");
                selection["countNumber"] = json!(d);
            }
        }
        json!({
            "rulePriority": self.priority,
            "selection": selection,
            "action": { "type": "expire" },
        })
    }
}

/// The lifecycle policy document (`{"rules": [...]}`) for these rules.
pub fn policy_json(rules: &[Rule]) -> String {
    json!({ "rules": rules.iter().map(Rule::to_json).collect::<Vec<_>>() }).to_string()
}

/// An ECR tag pattern against a whole tag: `*` matches any run of characters (none included),
/// everything else itself.
pub fn wildcard_match(pattern: &str, tag: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = tag.strip_prefix(first) else {
        return false;
    };
    let middle: Vec<&str> = parts.collect();
    let Some((last, middle)) = middle.split_last() else {
        // No wildcard: the pattern is the whole tag.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The checks ECR makes before it accepts a policy, from *properties* and *evaluation rules*:
/// unique priorities ("you must give them each a unique value for `rulePriority`"), `any` last
/// ("must have the highest value for `rulePriority` and be evaluated last"), "Only one rule is
/// allowed to select untagged images", a tag filter exactly for `tagged` rules, at most four
/// wildcards per pattern, a positive `countNumber`. (That prefix lists must differ between rules
/// is not checked: the evaluation does not depend on it.)
pub fn validate(rules: &[Rule]) -> Result<(), PolicyError> {
    let mut seen = HashSet::new();
    let highest = rules.iter().map(|r| r.priority).max();
    let mut untagged: Option<i64> = None;
    for r in rules {
        if !seen.insert(r.priority) {
            return Err(PolicyError::DuplicatePriority(r.priority));
        }
        let filtered = !r.tag_prefixes.is_empty() || !r.tag_patterns.is_empty();
        match r.tag_status {
            TagStatus::Any if Some(r.priority) != highest => return Err(PolicyError::AnyNotLast(r.priority)),
            TagStatus::Tagged if !filtered => return Err(PolicyError::NoTagFilter(r.priority)),
            TagStatus::Tagged if !r.tag_prefixes.is_empty() && !r.tag_patterns.is_empty() => {
                return Err(PolicyError::BothTagFilters(r.priority));
            }
            TagStatus::Any | TagStatus::Untagged if filtered => {
                return Err(PolicyError::FilterWithoutTagged(r.priority));
            }
            TagStatus::Untagged => match untagged {
                Some(other) => return Err(PolicyError::SeveralUntagged(other, r.priority)),
                None => untagged = Some(r.priority),
            },
            _ => {}
        }
        if let Some(p) = r.tag_patterns.iter().find(|p| p.matches('*').count() > 4) {
            return Err(PolicyError::TooManyWildcards(r.priority, p.clone()));
        }
        if matches!(r.count, Count::MoreThan(0) | Count::SincePushedDays(0)) {
            return Err(PolicyError::ZeroCount(r.priority));
        }
    }
    Ok(())
}

/// The images ECR expires, each with the priority of the rule that expires it.
///
/// Rules go in priority order, lowest first (*properties*: "A lifecycle policy rule with a
/// priority of `1` will be acted upon first"). Each rule:
/// 1. selects the images its tag requirements match, *including* images an earlier rule
///    selected or expired: *evaluation rules*, "Rules can never mark images that are marked by
///    higher priority rules, but can still identify them as if they haven't been expired."
///    (Example A of *examples*, "Filtering on multiple rules": rule 2 counts images A and B,
///    both seen by rule 1.)
/// 2. marks, of those, what its count expires: for `imageCountMoreThan N` all but the N most
///    recently pushed ("Expiration is always ordered by `pushed_at_time`, and always expires
///    older images before newer ones"); for `sinceImagePushed D` those pushed more than D days
///    before `now`;
/// 3. expires the marked images that no earlier rule selected: "An image is expired by exactly
///    one or zero rules" and "An image that matches the tagging requirements of a rule cannot be
///    expired by a rule with a lower priority" (in example A, rule 2 would mark image B, which
///    rule 1 selected and kept, "and thus is skipped").
///
/// Where the documentation is silent: images pushed at the same instant are ordered by digest
/// (ascending digest counts as more recent), and "older than D days" is strictly more than
/// D × 24 hours.
pub fn expired(rules: &[Rule], images: &[Image], now: DateTime<Utc>) -> Result<BTreeMap<Digest, i64>, PolicyError> {
    validate(rules)?;
    let mut ordered: Vec<&Rule> = rules.iter().collect();
    ordered.sort_by_key(|r| r.priority);
    let mut decided: HashSet<&Digest> = HashSet::new();
    let mut out = BTreeMap::new();
    for rule in ordered {
        let mut selected: Vec<&Image> = images.iter().filter(|i| rule.selects(i)).collect();
        let marked: Vec<&Image> = match rule.count {
            Count::MoreThan(n) => {
                selected.sort_by(|a, b| b.pushed_at.cmp(&a.pushed_at).then_with(|| a.digest.cmp(&b.digest)));
                selected
                    .iter()
                    .skip(usize::try_from(n).unwrap_or(usize::MAX))
                    .copied()
                    .collect()
            }
            // A limit too large for a duration is older than any image.
            Count::SincePushedDays(d) => match i64::try_from(d).ok().and_then(chrono::Duration::try_days) {
                Some(limit) => selected.iter().filter(|i| now - i.pushed_at > limit).copied().collect(),
                None => Vec::new(),
            },
        };
        for image in marked {
            if !decided.contains(&image.digest) {
                out.insert(image.digest.clone(), rule.priority);
            }
        }
        decided.extend(selected.iter().map(|i| &i.digest));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    /// Images named A, B, ... in the order given, as (tags, days since push).
    fn repo(images: &[(&[&str], i64)]) -> Vec<Image> {
        images
            .iter()
            .enumerate()
            .map(|(i, (tags, days))| Image {
                digest: Digest::parse(&format!("sha256:{:064x}", i + 1)).unwrap(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                pushed_at: now() - chrono::Duration::days(*days),
            })
            .collect()
    }

    fn rules(json: &str) -> Vec<Rule> {
        let doc: serde_json::Value = serde_json::from_str(json).unwrap();
        doc["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let s = &r["selection"];
                let list = |k: &str| -> Vec<String> {
                    s[k].as_array()
                        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                        .unwrap_or_default()
                };
                let n = s["countNumber"].as_u64().unwrap();
                Rule {
                    priority: r["rulePriority"].as_i64().unwrap(),
                    tag_status: match s["tagStatus"].as_str().unwrap() {
                        "tagged" => TagStatus::Tagged,
                        "untagged" => TagStatus::Untagged,
                        _ => TagStatus::Any,
                    },
                    tag_prefixes: list("tagPrefixList"),
                    tag_patterns: list("tagPatternList"),
                    count: match s["countType"].as_str().unwrap() {
                        "imageCountMoreThan" => Count::MoreThan(n),
                        _ => Count::SincePushedDays(n),
                    },
                }
            })
            .collect()
    }

    /// The names (A, B, ...) of the images expired.
    fn expired_names(json: &str, images: &[Image]) -> String {
        let rules = rules(json);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&policy_json(&rules)).unwrap(),
            serde_json::from_str::<serde_json::Value>(json).unwrap()["rules"]
                .as_array()
                .map(|r| {
                    let mut r = r.clone();
                    for rule in &mut r {
                        rule.as_object_mut().unwrap().remove("description");
                    }
                    json!({ "rules": r })
                })
                .unwrap(),
            "to_json writes what was read"
        );
        let out = expired(&rules, images, now()).unwrap();
        images
            .iter()
            .enumerate()
            .filter(|(_, i)| out.contains_key(&i.digest))
            .map(|(n, _)| char::from(b'A' + n as u8))
            .collect()
    }

    /// Every worked example of the AWS documentation (*examples*), with the result it states.
    #[test]
    fn the_aws_docs_worked_examples_expire_what_the_docs_say() {
        let multiple = repo(&[
            (&["beta-1", "prod-1"], 10),
            (&["beta-2", "prod-2"], 9),
            (&["beta-3"], 8),
        ]);
        let cases: Vec<(&str, &str, Vec<Image>, &str)> = vec![
            (
                "filtering on multiple rules, example A",
                r#"{"rules":[
                  {"rulePriority":1,"description":"Rule 1","selection":{"tagStatus":"tagged","tagPrefixList":["prod"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}},
                  {"rulePriority":2,"description":"Rule 2","selection":{"tagStatus":"tagged","tagPrefixList":["beta"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
                multiple.clone(),
                "A",
            ),
            (
                "filtering on multiple rules, example B",
                r#"{"rules":[
                  {"rulePriority":1,"description":"Rule 1","selection":{"tagStatus":"tagged","tagPrefixList":["beta"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}},
                  {"rulePriority":2,"description":"Rule 2","selection":{"tagStatus":"tagged","tagPrefixList":["prod"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
                multiple.clone(),
                "AB",
            ),
            (
                "filtering on multiple rules, example A, with tagPatternList as the current docs write it",
                r#"{"rules":[
                  {"rulePriority":1,"description":"Rule 1","selection":{"tagStatus":"tagged","tagPatternList":["prod*"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}},
                  {"rulePriority":2,"description":"Rule 2","selection":{"tagStatus":"tagged","tagPatternList":["beta*"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
                multiple,
                "A",
            ),
            (
                "filtering on multiple tags in a single rule, example A",
                r#"{"rules":[{"rulePriority":1,"description":"Rule 1","selection":{"tagStatus":"tagged","tagPrefixList":["alpha","beta"],"countType":"sinceImagePushed","countUnit":"days","countNumber":5},"action":{"type":"expire"}}]}"#,
                repo(&[
                    (&["alpha-1"], 12),
                    (&["beta-1"], 11),
                    (&["alpha-2", "beta-2"], 10),
                    (&["alpha-3"], 4),
                    (&["beta-3"], 3),
                    (&["alpha-4", "beta-4"], 2),
                ]),
                "C",
            ),
            (
                "filtering on multiple tags in a single rule, example B",
                r#"{"rules":[{"rulePriority":1,"description":"Rule 1","selection":{"tagStatus":"tagged","tagPrefixList":["alpha","beta"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
                repo(&[
                    (&["alpha-1", "beta-1", "gamma-1"], 10),
                    (&["alpha-2", "beta-2"], 9),
                    (&["alpha-3", "beta-3", "gamma-2"], 8),
                ]),
                "AB",
            ),
            (
                "filtering on all images, example A",
                r#"{"rules":[{"rulePriority":1,"description":"Rule 1","selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
                repo(&[(&["alpha-1"], 4), (&["beta-1"], 3), (&[], 2), (&["alpha-2"], 1)]),
                "ABC",
            ),
            (
                "filtering on image age (untagged, older than 14 days)",
                r#"{"rules":[{"rulePriority":1,"description":"Expire images older than 14 days","selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":14},"action":{"type":"expire"}}]}"#,
                repo(&[(&[], 15), (&[], 14), (&["prod"], 30)]),
                "A",
            ),
            (
                "filtering on image count (keep one untagged image)",
                r#"{"rules":[{"rulePriority":1,"description":"Keep only one untagged image, expire all others","selection":{"tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
                repo(&[(&[], 3), (&[], 2), (&[], 1), (&["prod"], 30)]),
                "AB",
            ),
        ];
        for (name, json, images, want) in cases {
            assert_eq!(expired_names(json, &images), want, "{name}");
        }
    }

    #[test]
    fn the_aws_docs_all_rule_types_example_expires_a_b_and_d() {
        // "Filtering on all images", example B. D and E are both "1 day ago"; the docs keep E as
        // the newest, so E is pushed a little later here.
        let mut images = repo(&[
            (&["alpha-1", "beta-1"], 4),
            (&[], 3),
            (&["alpha-2"], 2),
            (&["git hash"], 1),
            (&[], 1),
        ]);
        images[4].pushed_at += chrono::Duration::minutes(1);
        let json = r#"{"rules":[
          {"rulePriority":1,"description":"Rule 1","selection":{"tagStatus":"tagged","tagPrefixList":["alpha"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}},
          {"rulePriority":2,"description":"Rule 2","selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":1},"action":{"type":"expire"}},
          {"rulePriority":3,"description":"Rule 3","selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#;
        assert_eq!(expired_names(json, &images), "ABD");
        let by_rule = expired(&rules(json), &images, now()).unwrap();
        assert_eq!(
            by_rule.values().copied().collect::<Vec<_>>(),
            [1, 2, 3],
            "A by rule 1, B by rule 2, D by rule 3"
        );
    }

    #[test]
    fn an_image_selected_by_an_earlier_rule_is_never_expired_by_a_later_one() {
        // Rule 1 keeps 5 `v` images; rule 2 (everything older than 1 day) may not touch them.
        let json = r#"{"rules":[
          {"rulePriority":1,"selection":{"tagStatus":"tagged","tagPrefixList":["v"],"countType":"imageCountMoreThan","countNumber":5},"action":{"type":"expire"}},
          {"rulePriority":9,"selection":{"tagStatus":"any","countType":"sinceImagePushed","countUnit":"days","countNumber":1},"action":{"type":"expire"}}]}"#;
        let images = repo(&[
            (&["v1.0.0"], 30),
            (&["v1.1.0", "latest"], 20),
            (&["sha-1"], 20),
            (&[], 20),
        ]);
        assert_eq!(expired_names(json, &images), "CD");
    }

    #[test]
    fn prefixes_and_patterns_need_a_tag_for_each_entry() {
        let image = |tags: &[&str]| Image {
            digest: Digest::parse(&format!("sha256:{:064x}", 1)).unwrap(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            pushed_at: now(),
        };
        let rule = |prefixes: &[&str], patterns: &[&str]| Rule {
            priority: 1,
            tag_status: TagStatus::Tagged,
            tag_prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            tag_patterns: patterns.iter().map(|p| p.to_string()).collect(),
            count: Count::MoreThan(1),
        };
        for (rule, tags, want) in [
            (rule(&["sha-", "pr-"], &[]), &["sha-1"][..], false),
            (rule(&["sha-", "pr-"], &[]), &["sha-1", "pr-2"][..], true),
            (rule(&["v", "v1"], &[]), &["v1.2.3"][..], true),
            (rule(&["v1"], &[]), &["v2.0.0"][..], false),
            (rule(&[], &["v*", "*-rc*"]), &["v1.0.0-rc.1"][..], true),
            (rule(&[], &["v*", "*-rc*"]), &["v1.0.0", "2.0.0-rc.1"][..], true),
            (rule(&[], &["v*", "*-rc*"]), &["v1.0.0"][..], false),
            (rule(&[], &["latest"]), &["latest2"][..], false),
            (rule(&["v"], &[]), &[][..], false),
        ] {
            assert_eq!(rule.selects(&image(tags)), want, "{rule:?} {tags:?}");
        }
    }

    #[test]
    fn tag_patterns_match_whole_tags_with_star_as_the_only_wildcard() {
        for (pattern, tag, want) in [
            ("prod*", "prod", true),
            ("prod*", "prod1", true),
            ("prod*", "xprod", false),
            ("*", "", true),
            ("*test*1*2*3", "atestb1c2d3", true),
            ("*test*1*2*3", "atestb1c2d3e", false),
            ("*.0", "1.2.0", true),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("v?.0", "v1.0", false),
            ("v[0-9]*", "v1", false),
            ("release", "release", true),
        ] {
            assert_eq!(wildcard_match(pattern, tag), want, "{pattern} {tag}");
        }
    }

    #[test]
    fn policies_ecr_would_refuse_are_errors() {
        let base = Rule {
            priority: 1,
            tag_status: TagStatus::Tagged,
            tag_prefixes: vec!["v".into()],
            tag_patterns: vec![],
            count: Count::MoreThan(3),
        };
        let with = |f: &dyn Fn(&mut Rule)| {
            let mut r = base.clone();
            f(&mut r);
            r
        };
        let any_first = with(&|r| {
            r.tag_status = TagStatus::Any;
            r.tag_prefixes.clear();
        });
        let later = with(&|r| r.priority = 2);
        let untagged = |p: i64| {
            with(&|r| {
                r.priority = p;
                r.tag_status = TagStatus::Untagged;
                r.tag_prefixes.clear();
            })
        };
        for (rules, want) in [
            (vec![base.clone(), base.clone()], PolicyError::DuplicatePriority(1)),
            (vec![any_first, later.clone()], PolicyError::AnyNotLast(1)),
            (vec![untagged(1), untagged(2)], PolicyError::SeveralUntagged(1, 2)),
            (vec![with(&|r| r.tag_prefixes.clear())], PolicyError::NoTagFilter(1)),
            (
                vec![with(&|r| r.tag_patterns = vec!["v*".into()])],
                PolicyError::BothTagFilters(1),
            ),
            (
                vec![with(&|r| r.tag_status = TagStatus::Untagged)],
                PolicyError::FilterWithoutTagged(1),
            ),
            (
                vec![with(&|r| {
                    r.tag_prefixes.clear();
                    r.tag_patterns = vec!["a*b*c*d*e*f".into()];
                })],
                PolicyError::TooManyWildcards(1, "a*b*c*d*e*f".into()),
            ),
            (
                vec![with(&|r| r.count = Count::SincePushedDays(0))],
                PolicyError::ZeroCount(1),
            ),
        ] {
            assert_eq!(validate(&rules), Err(want.clone()), "{rules:?}");
            assert_eq!(expired(&rules, &[], now()), Err(want));
        }
        assert_eq!(validate(&[base, later]), Ok(()));
    }
}
