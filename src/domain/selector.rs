//! Selectors: how a user names the version to go to (`v1.4.2`, `^1.3`, `previous`, `lkg`,
//! `latest-version`, a digest, a Git commit prefix), and their resolution against the versions in
//! the registry.

use std::fmt;
use std::str::FromStr;

use semver::{Version, VersionReq};

use super::digest::Digest;
use super::image::ImageRef;
use super::version::{VersionTag, parse_version, strip_build};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// `v1.4.2`, `1.4.2`, `1.4.2_build.5`.
    Exact(Version),
    /// `^1.3`, `~1.4`, `>=1.2, <2`: the highest match.
    Requirement(VersionReq),
    Previous,
    LastKnownGood,
    LatestVersion,
    Digest(Digest),
    /// A 7–40 hex Git commit prefix, matched against `org.opencontainers.image.revision`.
    Revision(String),
}

/// Input that is no selector.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "parse selector '{input}': {reason}; expected a version (v1.4.2), a requirement (^1.3, ~1.4, \">=1.2, <2\"), \
     previous, last-known-good (lkg), latest-version, a digest (sha256:<64 hex>) or a Git commit (7-40 hex)"
)]
pub struct SelectorError {
    pub input: String,
    pub reason: String,
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        let err = |reason: &str| SelectorError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        match s {
            "" => return Err(err("it is empty")),
            "previous" | "prev" => return Ok(Self::Previous),
            "last-known-good" | "lkg" | "last_known_good" => return Ok(Self::LastKnownGood),
            "latest-version" => return Ok(Self::LatestVersion),
            "latest" => {
                return Err(err(
                    "'latest' is a mutable tag, not a version; use latest-version for the highest released version",
                ));
            }
            _ => {}
        }
        if s.starts_with("sha256:") {
            return Digest::parse(s)
                .map(Self::Digest)
                .map_err(|_| err("a digest needs 64 lowercase hex characters"));
        }
        if let Some(v) = parse_version(s) {
            return Ok(Self::Exact(v));
        }
        if (7..=40).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_hexdigit())
            && s.bytes().any(|b| !b.is_ascii_digit())
        {
            return Ok(Self::Revision(s.to_ascii_lowercase()));
        }
        if (7..=40).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(Self::Revision(s.to_string()));
        }
        let req_text = strip_v_in_requirement(s);
        match VersionReq::parse(&req_text) {
            Ok(req)
                if s.chars()
                    .next()
                    .is_some_and(|c| !c.is_ascii_digit() || s.contains(['^', '~', '<', '>', '=', '*', ','])) =>
            {
                Ok(Self::Requirement(req))
            }
            Ok(_) => Err(err(
                "a bare partial version is ambiguous; write ^1.3 for 'any 1.x from 1.3' or v1.3.0 for one version",
            )),
            Err(e) => Err(err(&e.to_string())),
        }
    }
}

/// `^v1.3` → `^1.3`: users write the `v` out of habit.
fn strip_v_in_requirement(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev: Option<char> = None;
    for c in s.chars() {
        let after_op = prev.is_none_or(|p| matches!(p, '^' | '~' | '=' | '<' | '>' | ',' | ' '));
        if c == 'v' && after_op {
            prev = Some(c);
            continue;
        }
        out.push(c);
        prev = Some(c);
    }
    out
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(v) => write!(f, "v{v}"),
            Self::Requirement(r) => write!(f, "{r}"),
            Self::Previous => f.write_str("previous"),
            Self::LastKnownGood => f.write_str("last-known-good"),
            Self::LatestVersion => f.write_str("latest-version"),
            Self::Digest(d) => write!(f, "{d}"),
            Self::Revision(r) => write!(f, "commit {r}"),
        }
    }
}

/// What resolution needs to know beyond the registry's version tags.
#[derive(Debug, Default)]
pub struct Context<'a> {
    /// Version tags, sorted highest first (`version::partition_tags`).
    pub versions: &'a [VersionTag],
    /// What the target runs now.
    pub current: Option<&'a ImageRef>,
    /// `history::previous` computed from the journal.
    pub previous_from_history: Option<&'a ImageRef>,
    /// Versions whose last validation failed (skipped by `previous`).
    pub failed: Option<&'a std::collections::HashSet<String>>,
    /// What the `last_known_good` pointer names.
    pub last_known_good: Option<&'a ImageRef>,
    /// Revisions of version tags (tag, revision label), for commit selectors.
    pub revisions: &'a [(String, String)],
}

/// The result of resolution: a tag to look up, or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    pub tag: Option<String>,
    pub version: Option<Version>,
    pub digest: Option<Digest>,
}

impl Pick {
    fn tag(v: &VersionTag) -> Self {
        Self {
            tag: Some(v.tag.clone()),
            version: Some(v.version.clone()),
            digest: None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("find a version matching '{selector}' in {repository}")]
    NoMatch {
        selector: String,
        repository: String,
        /// The highest versions there are, to help the user.
        nearest: Vec<String>,
    },
    #[error("resolve 'previous': {why}")]
    NoPrevious { why: String },
    #[error("resolve 'last-known-good': no last_known_good tag in {repository}")]
    NoLastKnownGood { repository: String },
}

impl ResolveError {
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::NoMatch { nearest, .. } if nearest.is_empty() => {
                Some("the repository has no version tags; push an image tagged like v1.0.0".into())
            }
            Self::NoMatch { nearest, .. } => Some(format!(
                "versions there include {}; run `backtrack versions` for the list",
                nearest.join(", ")
            )),
            Self::NoPrevious { .. } => Some("name a version instead, e.g. `backtrack rollback v1.2.3`".into()),
            Self::NoLastKnownGood { .. } => Some("mark a version good first: `backtrack mark-good [VERSION]`".into()),
        }
    }
}

/// Resolves a selector. `repository` is only used in error messages.
pub fn resolve(selector: &Selector, ctx: &Context<'_>, repository: &str) -> Result<Pick, ResolveError> {
    let no_match = || ResolveError::NoMatch {
        selector: selector.to_string(),
        repository: repository.to_string(),
        nearest: ctx.versions.iter().take(5).map(|v| v.tag.clone()).collect(),
    };
    match selector {
        Selector::Exact(want) => {
            let exact_build = !want.build.is_empty();
            ctx.versions
                .iter()
                .find(|v| {
                    if exact_build {
                        v.version == *want
                    } else {
                        v.release() == *want
                    }
                })
                .map(Pick::tag)
                .ok_or_else(no_match)
        }
        Selector::Requirement(req) => ctx
            .versions
            .iter()
            .find(|v| req.matches(&v.release()))
            .map(Pick::tag)
            .ok_or_else(no_match),
        Selector::LatestVersion => ctx
            .versions
            .iter()
            .find(|v| !v.is_prerelease())
            .map(Pick::tag)
            .ok_or_else(no_match),
        Selector::Digest(d) => Ok(Pick {
            tag: None,
            version: None,
            digest: Some(d.clone()),
        }),
        Selector::Revision(prefix) => ctx
            .versions
            .iter()
            .find(|v| {
                ctx.revisions
                    .iter()
                    .any(|(tag, rev)| *tag == v.tag && rev.to_ascii_lowercase().starts_with(prefix.as_str()))
            })
            .map(Pick::tag)
            .ok_or_else(no_match),
        Selector::LastKnownGood => {
            let lkg = ctx.last_known_good.ok_or_else(|| ResolveError::NoLastKnownGood {
                repository: repository.to_string(),
            })?;
            Ok(Pick {
                tag: lkg.tag.clone(),
                version: lkg.version.as_deref().and_then(parse_version),
                digest: lkg.digest.clone(),
            })
        }
        Selector::Previous => resolve_previous(ctx),
    }
}

fn resolve_previous(ctx: &Context<'_>) -> Result<Pick, ResolveError> {
    if let Some(prev) = ctx.previous_from_history {
        // Prefer the tag for that version as the registry has it now.
        if let Some(v) = prev.version.as_deref().and_then(parse_version)
            && let Some(found) = ctx.versions.iter().find(|t| t.release() == strip_build(&v))
        {
            return Ok(Pick {
                digest: prev.digest.clone(),
                ..Pick::tag(found)
            });
        }
        if prev.tag.is_none() && prev.digest.is_none() {
            // What ran before the first move, from an image the registry never had (built on the
            // host): going to another version instead would be going somewhere it never ran.
            return Err(ResolveError::NoPrevious {
                why: format!(
                    "{} ran before, but the registry has neither its tag nor its digest",
                    prev.display()
                ),
            });
        }
        return Ok(Pick {
            tag: prev.tag.clone(),
            version: prev.version.as_deref().and_then(parse_version),
            digest: prev.digest.clone(),
        });
    }
    let current = ctx
        .current
        .and_then(|c| c.version.as_deref())
        .and_then(parse_version)
        .ok_or_else(|| ResolveError::NoPrevious {
            why: "the journal has no earlier deployment and the running version is unknown".into(),
        })?;
    let current = strip_build(&current);
    let failed = |v: &VersionTag| {
        ctx.failed
            .is_some_and(|f| f.contains(&v.version.to_string()) || f.contains(&v.release().to_string()))
    };
    ctx.versions
        .iter()
        .find(|v| v.release() < current && !failed(v) && (!current.pre.is_empty() || !v.is_prerelease()))
        .map(Pick::tag)
        .ok_or_else(|| ResolveError::NoPrevious {
            why: format!("no version below {current} in the registry and no earlier deployment in the journal"),
        })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::domain::version::partition_tags;

    fn sel(s: &str) -> Selector {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_every_form_of_the_spec() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let cases: Vec<(&str, Selector)> = vec![
            ("v1.4.2", Selector::Exact(Version::new(1, 4, 2))),
            ("1.4.2", Selector::Exact(Version::new(1, 4, 2))),
            ("^1.3", Selector::Requirement(VersionReq::parse("^1.3").unwrap())),
            ("~1.4", Selector::Requirement(VersionReq::parse("~1.4").unwrap())),
            (
                ">=1.2, <2",
                Selector::Requirement(VersionReq::parse(">=1.2, <2").unwrap()),
            ),
            ("^v1.3", Selector::Requirement(VersionReq::parse("^1.3").unwrap())),
            ("previous", Selector::Previous),
            ("last-known-good", Selector::LastKnownGood),
            ("lkg", Selector::LastKnownGood),
            ("latest-version", Selector::LatestVersion),
            (&digest, Selector::Digest(Digest::parse(&digest).unwrap())),
            ("abc1234", Selector::Revision("abc1234".into())),
            ("ABC1234DEF", Selector::Revision("abc1234def".into())),
        ];
        for (input, want) in cases {
            assert_eq!(sel(input), want, "{input}");
        }
    }

    #[test]
    fn invalid_selectors_quote_the_input_and_say_what_is_valid() {
        for bad in ["", "latest", "sha256:abc", "banana", "1.3", "^1.x.y.z", "abc12"] {
            let err = bad.parse::<Selector>().unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(&format!("'{bad}'")), "{msg}");
            assert!(msg.contains("expected a version"), "{msg}");
        }
    }

    fn catalog() -> Vec<VersionTag> {
        partition_tags([
            "v1.0.0",
            "v1.3.0",
            "v1.3.5",
            "v1.4.0",
            "v1.4.2",
            "1.4.2_build.3",
            "v1.9.0",
            "v1.10.0",
            "v2.0.0-rc.1",
            "latest",
            "last_known_good",
        ])
        .0
    }

    #[test]
    fn resolves_version_selectors_against_the_catalog() {
        let versions = catalog();
        let ctx = Context {
            versions: &versions,
            ..Default::default()
        };
        let cases = [
            ("v1.4.2", "v1.4.2"),
            ("1.4.2", "v1.4.2"),
            ("1.4.2_build.3", "1.4.2_build.3"),
            ("^1.3", "v1.10.0"),
            ("~1.3", "v1.3.5"),
            (">=1.2, <1.4", "v1.3.5"),
            ("latest-version", "v1.10.0"),
            ("^2.0.0-rc", "v2.0.0-rc.1"),
            ("^1", "v1.10.0"),
        ];
        for (input, want) in cases {
            let pick = resolve(&sel(input), &ctx, "repo").unwrap();
            assert_eq!(pick.tag.as_deref(), Some(want), "{input}");
        }
    }

    #[test]
    fn prereleases_match_only_when_the_requirement_names_one() {
        let versions = partition_tags(["v2.0.0-rc.1", "v1.0.0"]).0;
        let ctx = Context {
            versions: &versions,
            ..Default::default()
        };
        assert_eq!(
            resolve(&sel("^2"), &ctx, "r").unwrap_err().to_string(),
            "find a version matching '^2' in r"
        );
        assert_eq!(
            resolve(&sel("^2.0.0-rc.0"), &ctx, "r").unwrap().tag.as_deref(),
            Some("v2.0.0-rc.1")
        );
    }

    #[test]
    fn missing_version_error_lists_nearest() {
        let versions = catalog();
        let ctx = Context {
            versions: &versions,
            ..Default::default()
        };
        let err = resolve(&sel("v9.9.9"), &ctx, "127.0.0.1:5000/app").unwrap_err();
        assert!(err.hint().unwrap().contains("v2.0.0-rc.1, v1.10.0"), "{:?}", err.hint());
    }

    #[test]
    fn revision_prefix_picks_the_highest_version_with_that_commit() {
        let versions = catalog();
        let revisions = vec![
            ("v1.3.0".to_string(), "abc1234ffff".to_string()),
            ("v1.3.5".to_string(), "abc1234ffff".to_string()),
            ("v1.4.0".to_string(), "def5678aaaa".to_string()),
        ];
        let ctx = Context {
            versions: &versions,
            revisions: &revisions,
            ..Default::default()
        };
        assert_eq!(
            resolve(&sel("abc1234"), &ctx, "r").unwrap().tag.as_deref(),
            Some("v1.3.5")
        );
        assert!(resolve(&sel("0000000"), &ctx, "r").is_err());
    }

    #[test]
    fn previous_without_history_is_the_next_lower_non_failed_version() {
        let versions = catalog();
        let current = ImageRef {
            version: Some("1.9.0".into()),
            ..Default::default()
        };
        let failed: HashSet<String> = ["1.4.2".to_string()].into();
        let ctx = Context {
            versions: &versions,
            current: Some(&current),
            failed: Some(&failed),
            ..Default::default()
        };
        assert_eq!(
            resolve(&Selector::Previous, &ctx, "r").unwrap().tag.as_deref(),
            Some("v1.4.0")
        );
        let lowest = ImageRef {
            version: Some("1.0.0".into()),
            ..Default::default()
        };
        let ctx = Context {
            versions: &versions,
            current: Some(&lowest),
            ..Default::default()
        };
        assert!(matches!(
            resolve(&Selector::Previous, &ctx, "r"),
            Err(ResolveError::NoPrevious { .. })
        ));
    }

    #[test]
    fn previous_from_history_wins_over_ordering() {
        let versions = catalog();
        let current = ImageRef {
            version: Some("1.9.0".into()),
            ..Default::default()
        };
        let prev = ImageRef {
            version: Some("1.3.0".into()),
            ..Default::default()
        };
        let ctx = Context {
            versions: &versions,
            current: Some(&current),
            previous_from_history: Some(&prev),
            ..Default::default()
        };
        assert_eq!(
            resolve(&Selector::Previous, &ctx, "r").unwrap().tag.as_deref(),
            Some("v1.3.0")
        );
    }

    #[test]
    fn previous_from_history_is_named_by_tag_or_digest_or_refused() {
        let versions = catalog();
        let d = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        let current = ImageRef {
            version: Some("1.9.0".into()),
            ..Default::default()
        };
        let by_digest = ImageRef {
            digest: Some(d.clone()),
            ..Default::default()
        };
        let unpushed = ImageRef {
            version: Some("0.5.0".into()),
            ..Default::default()
        };
        // previous from history, expected (tag, digest) or None for NoPrevious
        type Named<'a> = Option<(Option<&'a str>, Option<&'a Digest>)>;
        let cases: [(&ImageRef, Named); 2] = [(&by_digest, Some((None, Some(&d)))), (&unpushed, None)];
        for (prev, want) in cases {
            let ctx = Context {
                versions: &versions,
                current: Some(&current),
                previous_from_history: Some(prev),
                ..Default::default()
            };
            match (resolve(&Selector::Previous, &ctx, "r"), want) {
                (Ok(pick), Some((tag, digest))) => {
                    assert_eq!((pick.tag.as_deref(), pick.digest.as_ref()), (tag, digest), "{prev:?}");
                }
                (Err(ResolveError::NoPrevious { why }), None) => {
                    assert!(why.contains("0.5.0 ran before"), "{why}");
                }
                (got, _) => panic!("{prev:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn last_known_good_needs_the_pointer() {
        let versions = catalog();
        let ctx = Context {
            versions: &versions,
            ..Default::default()
        };
        let err = resolve(&Selector::LastKnownGood, &ctx, "r").unwrap_err();
        assert!(err.hint().unwrap().contains("mark-good"));
    }
}
