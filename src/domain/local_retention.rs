//! `prune --local`: which of a repository's images on a host go, and why each one stays. Pure:
//! the images and every fact (containers using them, the journal's recent deployments, the
//! pointers, the rollback candidates) come in as data.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::digest::Digest;

/// A local image of the repository: its id, its references that belong to the repository, the
/// manifest digests it is known by, its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImage {
    pub id: String,
    pub refs: Vec<String>,
    pub digests: BTreeSet<Digest>,
    pub size: u64,
}

#[derive(Debug, Clone, Default)]
pub struct LocalFacts {
    /// Image id → containers created from it (running, stopped, set aside).
    pub in_use: BTreeMap<String, Vec<String>>,
    /// Digests deployed on this target, most recent first (the journal).
    pub recent: Vec<Digest>,
    pub local_keep: usize,
    /// Digest → the pointer naming it (`last_known_good-prod`).
    pub pointers: BTreeMap<Digest, String>,
    /// Digest → the candidate it is (`previous`).
    pub candidates: BTreeMap<Digest, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalDecision {
    pub id: String,
    pub refs: Vec<String>,
    pub size: u64,
    pub keep: bool,
    pub reasons: Vec<String>,
}

/// Decides every image. An image stays when anything needs it; it goes only when nothing does.
pub fn plan(images: &[LocalImage], facts: &LocalFacts) -> Vec<LocalDecision> {
    let recent: BTreeSet<&Digest> = facts.recent.iter().take(facts.local_keep).collect();
    let mut out: Vec<LocalDecision> = images
        .iter()
        .map(|img| {
            let mut reasons = Vec::new();
            if let Some(users) = facts.in_use.get(&img.id) {
                reasons.push(format!("used by container {}", users.join(", ")));
            }
            for d in &img.digests {
                if let Some(p) = facts.pointers.get(d) {
                    reasons.push(format!("{p} points at it"));
                }
                if let Some(c) = facts.candidates.get(d) {
                    reasons.push(format!("rollback candidate: {c}"));
                }
                if recent.contains(d) {
                    reasons.push(format!("among the last {} deployed here", facts.local_keep));
                }
            }
            for r in &img.refs {
                if r.rsplit_once(':')
                    .is_some_and(|(repo, tag)| repo.starts_with("backtrack/") && tag.starts_with("lkg"))
                {
                    reasons.push(format!("kept for emergency as {r}"));
                }
            }
            reasons.dedup();
            let keep = !reasons.is_empty();
            if !keep {
                reasons.push(format!(
                    "not used by a container, not a rollback candidate or pointer, not among the last {} deployed here",
                    facts.local_keep
                ));
            }
            LocalDecision {
                id: img.id.clone(),
                refs: img.refs.clone(),
                size: img.size,
                keep,
                reasons,
            }
        })
        .collect();
    out.sort_by(|a, b| b.keep.cmp(&a.keep).then(a.refs.cmp(&b.refs)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
    }

    fn img(n: u8, refs: &[&str]) -> LocalImage {
        LocalImage {
            id: format!("id{n}"),
            refs: refs.iter().map(|s| s.to_string()).collect(),
            digests: [d(n)].into(),
            size: 100,
        }
    }

    #[test]
    fn only_what_nothing_needs_goes() {
        let images = [
            img(1, &["r/app:v1"]),
            img(2, &["r/app:v2"]),
            img(3, &["r/app:v3"]),
            img(4, &["r/app:v4"]),
            img(5, &["r/app:v5"]),
            img(6, &["backtrack/app:lkg-prod"]),
            img(7, &["r/app:v7"]),
        ];
        let facts = LocalFacts {
            in_use: [
                ("id5".to_string(), vec!["web".to_string()]),
                ("id4".to_string(), vec!["web-backtrack-prev".to_string()]),
            ]
            .into(),
            recent: vec![d(5), d(3), d(2), d(1)],
            local_keep: 2,
            pointers: [(d(7), "last_known_good".to_string())].into(),
            candidates: [(d(3), "previous (3.0.0)".to_string())].into(),
        };
        let plan = plan(&images, &facts);
        let by_id = |id: &str| plan.iter().find(|p| p.id == id).unwrap();
        assert!(by_id("id5").reasons.contains(&"used by container web".to_string()));
        assert!(by_id("id4").keep, "a set-aside container's image stays");
        assert!(by_id("id3").reasons.iter().any(|r| r.starts_with("rollback candidate")));
        assert!(by_id("id6").keep && by_id("id7").keep);
        // v2 is third most recent with local_keep = 2 (v5, v3 are the two): it goes, as does v1.
        assert!(!by_id("id2").keep, "{:?}", by_id("id2"));
        assert!(!by_id("id1").keep);
        assert!(by_id("id1").reasons[0].starts_with("not used by a container"));
        // Kept first, then what goes.
        assert!(plan.iter().position(|p| !p.keep).unwrap() > plan.iter().rposition(|p| p.keep).unwrap());
    }
}
