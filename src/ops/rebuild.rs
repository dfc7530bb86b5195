//! The Git fallback: a version whose image is gone from the registry (never pushed, or pruned)
//! is built from its Git tag in a scratch worktree, with its version baked in, and pushed; then the
//! swap goes on as usual. Also `backtrack build`'s labels.

use std::collections::HashMap;

use chrono::Utc;

use crate::adapters::docker::Engine;
use crate::adapters::docker::build::BuildSpec;
use crate::adapters::git;
use crate::adapters::registry::Registry;
use crate::domain::digest::Digest;
use crate::domain::image::{LABEL_CREATED, LABEL_REVISION, LABEL_SOURCE, LABEL_VERSION};
use crate::output::{Printer, Progress};
use crate::settings::RebuildSettings;

/// What a rebuild produced.
#[derive(Debug, Clone)]
pub struct Rebuilt {
    pub git_tag: String,
    pub commit: String,
    pub image_tag: String,
    pub digest: Digest,
}

/// The Git tag that a missing version would be rebuilt from, if the repository has one.
pub fn git_tag_for(
    settings: &RebuildSettings,
    version: &semver::Version,
) -> Result<(git::Repo, String, String), git::GitError> {
    let repo = git::Repo::open(&settings.repo)?;
    let tag = repo.version_tag(version)?;
    let commit = repo.commit_of(&tag)?;
    Ok((repo, tag, commit))
}

/// A Docker tag from a version string (`+` is not allowed in tags: `_` stands for it).
pub fn docker_tag(version: &str) -> Result<String, String> {
    let tag = version.replace('+', "_");
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(tag)
    } else {
        Err(format!(
            "'{version}' cannot be a Docker tag (letters, digits, _ . - only, at most 128)"
        ))
    }
}

/// The OCI labels of a build.
pub fn labels(version: &str, commit: &str, source: Option<String>) -> HashMap<String, String> {
    let mut l = HashMap::from([
        (LABEL_VERSION.to_string(), version.trim_start_matches('v').to_string()),
        (LABEL_REVISION.to_string(), commit.to_string()),
        (LABEL_CREATED.to_string(), Utc::now().to_rfc3339()),
    ]);
    if let Some(s) = source {
        l.insert(LABEL_SOURCE.to_string(), s);
    }
    l
}

/// Builds `version` from its Git tag in a scratch worktree and pushes it.
pub async fn rebuild(
    engine: &Engine,
    registry: &dyn Registry,
    printer: &Printer,
    settings: &RebuildSettings,
    version: &semver::Version,
) -> anyhow::Result<Rebuilt> {
    let (repo, git_tag, commit) = git_tag_for(settings, version)?;
    let image_tag = docker_tag(&git_tag).map_err(|e| anyhow::anyhow!("rebuild {git_tag}: {e}"))?;
    printer.note(format!(
        "rebuilding {git_tag} from Git ({} at {}) in a scratch worktree",
        repo.path.display(),
        &commit[..12.min(commit.len())]
    ));
    let worktree = repo.scratch_worktree(&commit)?;
    let name = registry.name();
    let spec = BuildSpec {
        context: &worktree.path.join(&settings.context),
        dockerfile: &settings.dockerfile,
        image: format!("{name}:{image_tag}"),
        build_args: HashMap::from([("VERSION".to_string(), git_tag.clone())]),
        labels: labels(
            &git_tag,
            &commit,
            repo.origin().or_else(|| Some(repo.path.display().to_string())),
        ),
    };
    let progress = Progress::new(printer, &format!("building {}", spec.image));
    let built = engine
        .build(&spec, |line| progress.set(&format!("building: {line}")))
        .await;
    drop(worktree); // removed now, also when the build failed
    if let Err(e) = built {
        progress.finish(&format!("build of {git_tag} failed"));
        return Err(e.into());
    }
    progress.finish(&format!("built {}", spec.image));
    let auth = registry.pull_auth().await.ok();
    let progress = Progress::new(printer, &format!("pushing {}", spec.image));
    engine
        .push(&name, &image_tag, auth.as_ref(), |s| {
            progress.set(&format!("pushing: {s}"))
        })
        .await?;
    progress.finish(&format!("pushed {}", spec.image));
    let digest = registry
        .tag_digest(&image_tag)
        .await?
        .ok_or_else(|| anyhow::anyhow!("find {name}:{image_tag} after pushing it"))?;
    Ok(Rebuilt {
        git_tag,
        commit,
        image_tag,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_tags_from_versions() {
        assert_eq!(docker_tag("v1.2.3").unwrap(), "v1.2.3");
        assert_eq!(docker_tag("1.2.3+build.5").unwrap(), "1.2.3_build.5");
        assert_eq!(docker_tag("v1.2.0-3-gabc1234").unwrap(), "v1.2.0-3-gabc1234");
        assert!(docker_tag("-x").is_err());
        assert!(docker_tag("a b").is_err());
    }
}
