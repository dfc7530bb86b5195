//! A release of several services (`[target] names`): one version, found in every service's
//! repository. Which tag of a repository is that version, which versions every service has, and
//! whether the services of a release run one version (drift inside the release).

use std::collections::BTreeSet;

use semver::Version;

use super::version::{VersionTag, strip_build};

/// The tag of `want` in one repository's version tags: `prefer` (the tag the version was chosen
/// by) when it is there, else one without build metadata, else any tag of that version. Tags
/// that differ only in `v` or build metadata are the same version.
pub fn tag_of<'a>(versions: &'a [VersionTag], want: &Version, prefer: Option<&str>) -> Option<&'a VersionTag> {
    let want = strip_build(want);
    let same: Vec<&VersionTag> = versions.iter().filter(|v| strip_build(&v.version) == want).collect();
    same.iter()
        .find(|v| Some(v.tag.as_str()) == prefer)
        .or_else(|| same.iter().find(|v| v.version.build.is_empty()))
        .or_else(|| same.first())
        .copied()
}

/// The versions (build metadata left out) every repository has a tag of.
pub fn in_every(repositories: &[&[VersionTag]]) -> BTreeSet<Version> {
    let mut sets = repositories
        .iter()
        .map(|vs| vs.iter().map(|v| strip_build(&v.version)).collect::<BTreeSet<_>>());
    let Some(first) = sets.next() else {
        return BTreeSet::new();
    };
    sets.fold(first, |acc, s| acc.intersection(&s).cloned().collect())
}

/// Drift inside a release: `None` when every service runs one version, else each distinct
/// version with the services on it (`"1.1.0: web; 1.0.0: worker"`), in the services' order.
pub fn drift(services: &[(&str, Option<&str>)]) -> Option<String> {
    let mut groups: Vec<(Option<&str>, Vec<&str>)> = Vec::new();
    for (service, version) in services {
        match groups.iter_mut().find(|(v, _)| v == version) {
            Some((_, names)) => {
                if !names.contains(service) {
                    names.push(service);
                }
            }
            None => groups.push((*version, vec![service])),
        }
    }
    if groups.len() <= 1 {
        return None;
    }
    Some(
        groups
            .iter()
            .map(|(v, names)| format!("{}: {}", v.unwrap_or("unknown"), names.join(", ")))
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// The services of a Swarm stack that make its release when `names` is left out: those whose
/// image comes from the registry at `host`, by name, each with its repository when it is not
/// `default` (`services`: each service's name in the stack file and the image its spec names).
pub fn stack_members(services: &[(String, String)], host: &str, default: &str) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = services
        .iter()
        .filter_map(|(name, image)| {
            let path = image.split('@').next()?.strip_prefix(host)?.strip_prefix('/')?;
            // A tag follows the last `:` after the last `/`.
            let repository = match path.rsplit_once(':') {
                Some((repo, tag)) if !tag.contains('/') => repo,
                _ => path,
            };
            Some((name.clone(), (repository != default).then(|| repository.to_string())))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<VersionTag> {
        list.iter().filter_map(|t| VersionTag::parse(t)).collect()
    }

    #[test]
    fn the_tag_of_a_version_prefers_the_chosen_one_then_no_build_metadata() {
        let v = |s: &str| Version::parse(s).unwrap();
        // The repository's tags, the version wanted, the tag it was chosen by, the tag expected.
        type Case<'a> = (&'a [&'a str], &'a str, Option<&'a str>, Option<&'a str>);
        let cases: &[Case] = &[
            (&["v1.0.0", "v1.1.0"], "1.1.0", Some("v1.1.0"), Some("v1.1.0")),
            // Another spelling of the same version in the other repository.
            (&["1.1.0", "v1.0.0"], "1.1.0", Some("v1.1.0"), Some("1.1.0")),
            (
                &["v1.1.0_build.7", "v1.1.0"],
                "1.1.0",
                Some("v1.1.0_build.9"),
                Some("v1.1.0"),
            ),
            (&["v1.1.0_build.7"], "1.1.0", None, Some("v1.1.0_build.7")),
            (&["v1.0.0"], "1.1.0", Some("v1.1.0"), None),
            // A prerelease is another version.
            (&["v1.1.0-rc.1"], "1.1.0", None, None),
        ];
        for (have, want, prefer, expected) in cases {
            let have = tags(have);
            let got = tag_of(&have, &v(want), *prefer).map(|t| t.tag.as_str());
            assert_eq!(got, *expected, "{have:?} {want} {prefer:?}");
        }
    }

    #[test]
    fn versions_in_every_repository_are_the_intersection() {
        let a = tags(&["v1.0.0", "v1.1.0", "v1.2.0"]);
        let b = tags(&["1.1.0", "v1.2.0_build.3", "v2.0.0"]);
        let got: Vec<String> = in_every(&[&a, &b]).iter().map(ToString::to_string).collect();
        assert_eq!(got, ["1.1.0", "1.2.0"]);
        assert!(in_every(&[]).is_empty());
        assert_eq!(in_every(&[&a]).len(), 3);
    }

    #[test]
    fn a_stack_release_is_its_services_from_the_registry() {
        let services: Vec<(String, String)> = [
            ("worker", "reg.example:5000/shop-worker:1.2.0@sha256:aa"),
            ("web", "reg.example:5000/shop:1.2.0@sha256:bb"),
            ("cache", "redis:7"),
            ("admin", "other.example/shop:1.0"),
            ("cron", "reg.example:5000/team/shop"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(
            stack_members(&services, "reg.example:5000", "shop"),
            [
                ("cron".to_string(), Some("team/shop".to_string())),
                ("web".to_string(), None),
                ("worker".to_string(), Some("shop-worker".to_string())),
            ]
        );
    }

    #[test]
    fn drift_names_the_services_on_each_version() {
        assert_eq!(drift(&[("web", Some("1.1.0")), ("worker", Some("1.1.0"))]), None);
        assert_eq!(drift(&[("web", Some("1.1.0")), ("web", Some("1.1.0"))]), None);
        assert_eq!(
            drift(&[
                ("web", Some("1.1.0")),
                ("worker", Some("1.0.0")),
                ("cron", Some("1.1.0"))
            ])
            .as_deref(),
            Some("1.1.0: web, cron; 1.0.0: worker")
        );
        assert_eq!(
            drift(&[("web", Some("1.1.0")), ("worker", None)]).as_deref(),
            Some("1.1.0: web; unknown: worker")
        );
    }
}
