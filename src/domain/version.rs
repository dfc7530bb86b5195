//! Version tags: semver with or without a `v` prefix, with `_` standing for `+` (a tag cannot
//! hold `+`), and their ordering.
//!
//! Two tags that differ only in the `v` prefix or build metadata name the same version; when
//! resolving, the tag without metadata (then the one with a `v`) is preferred.

use std::cmp::Ordering;

use semver::{BuildMetadata, Version};

/// A tag that parses as a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionTag {
    pub tag: String,
    /// The version as written, build metadata included.
    pub version: Version,
}

impl VersionTag {
    /// `Some` when `tag` is a version tag (`v1.2.3`, `1.2.3-rc.1`, `1.2.3_build.5`).
    pub fn parse(tag: &str) -> Option<Self> {
        let version = parse_version(tag)?;
        Some(Self {
            tag: tag.to_string(),
            version,
        })
    }

    /// The version without build metadata: what identifies "the same version".
    pub fn release(&self) -> Version {
        strip_build(&self.version)
    }

    pub fn is_prerelease(&self) -> bool {
        !self.version.pre.is_empty()
    }

    pub fn has_build(&self) -> bool {
        !self.version.build.is_empty()
    }
}

/// Parses a version as written in a tag or on the command line. `None` when it is not one.
pub fn parse_version(s: &str) -> Option<Version> {
    let body = s.strip_prefix('v').unwrap_or(s);
    // Build metadata in a tag is written with `_` for `+`; only the first `_` is the separator.
    let normalized = match body.split_once('_') {
        Some((core, build)) => format!("{core}+{build}"),
        None => body.to_string(),
    };
    let v = Version::parse(&normalized).ok()?;
    // `Version::parse` accepts leading zeros nowhere and needs all three parts: what we want.
    Some(v)
}

pub fn strip_build(v: &Version) -> Version {
    let mut v = v.clone();
    v.build = BuildMetadata::EMPTY;
    v
}

/// Highest version first; among tags of the same version, the preferred tag first (no build
/// metadata, then `v`-prefixed, then by name so the order is total).
pub fn compare_desc(a: &VersionTag, b: &VersionTag) -> Ordering {
    b.release()
        .cmp(&a.release())
        .then_with(|| a.has_build().cmp(&b.has_build()))
        .then_with(|| b.tag.starts_with('v').cmp(&a.tag.starts_with('v')))
        .then_with(|| a.tag.cmp(&b.tag))
}

/// Splits tags into version tags (sorted, highest first) and other tags (sorted by name).
pub fn partition_tags<'a>(tags: impl IntoIterator<Item = &'a str>) -> (Vec<VersionTag>, Vec<String>) {
    let mut versions = Vec::new();
    let mut others = Vec::new();
    for tag in tags {
        match VersionTag::parse(tag) {
            Some(v) => versions.push(v),
            None => others.push(tag.to_string()),
        }
    }
    versions.sort_by(compare_desc);
    others.sort();
    (versions, others)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_version_tags_and_sets_others_aside() {
        let cases: &[(&str, Option<&str>)] = &[
            ("v1.2.3", Some("1.2.3")),
            ("1.2.3", Some("1.2.3")),
            ("v1.2.3-rc.1", Some("1.2.3-rc.1")),
            ("1.2.3_build.5", Some("1.2.3+build.5")),
            ("v2.0.0-beta.2_sha.abc", Some("2.0.0-beta.2+sha.abc")),
            ("latest", None),
            ("last_known_good", None),
            ("sha-abc123", None),
            ("v1.2", None),
            ("1", None),
            ("v01.2.3", None),
            ("release-1.2.3", None),
            ("V1.2.3", None),
        ];
        for (tag, want) in cases {
            let got = VersionTag::parse(tag).map(|v| v.version.to_string());
            assert_eq!(got.as_deref(), *want, "tag {tag}");
        }
    }

    #[test]
    fn orders_by_semver_not_by_string() {
        let tags = [
            "v1.9.0",
            "v1.10.0",
            "2.0.0-rc.1",
            "v2.0.0",
            "v1.10.0-alpha",
            "latest",
            "v0.9.12",
            "v2.0.0-rc.2",
        ];
        let (versions, others) = partition_tags(tags);
        let order: Vec<&str> = versions.iter().map(|v| v.tag.as_str()).collect();
        assert_eq!(
            order,
            [
                "v2.0.0",
                "v2.0.0-rc.2",
                "2.0.0-rc.1",
                "v1.10.0",
                "v1.10.0-alpha",
                "v1.9.0",
                "v0.9.12"
            ]
        );
        assert_eq!(others, ["latest"]);
    }

    #[test]
    fn same_version_prefers_tag_without_build_metadata_then_v_prefix() {
        let (versions, _) = partition_tags(["1.4.2_build.7", "1.4.2", "v1.4.2", "v1.4.2_build.9"]);
        let order: Vec<&str> = versions.iter().map(|v| v.tag.as_str()).collect();
        assert_eq!(order, ["v1.4.2", "1.4.2", "v1.4.2_build.9", "1.4.2_build.7"]);
        assert!(versions.iter().all(|v| v.release() == Version::new(1, 4, 2)));
    }
}
