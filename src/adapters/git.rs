//! Git, for the fallback only: list tags, check a tag out into a scratch worktree (the user's
//! checkout, branch and uncommitted changes are never touched), describe the current checkout.
//!
//! **No shell is ever involved**: git runs as a program with arguments, refs are validated
//! before use and passed after `--` where git allows it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::domain::version::{VersionTag, compare_desc};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("run git: it is not installed")]
    Missing,
    #[error("use {}: it is not a Git repository", path.display())]
    NotARepo { path: PathBuf },
    #[error("find Git tag {tag} in {}", repo.display())]
    NoSuchTag {
        tag: String,
        repo: PathBuf,
        nearest: Vec<String>,
    },
    #[error("use ref '{0}': it is not a valid Git tag name")]
    BadRef(String),
    #[error("run `git {args}` in {}: {message}", repo.display())]
    Failed {
        args: String,
        repo: PathBuf,
        message: String,
    },
}

impl GitError {
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Missing => Some("install git (apt-get install git)".into()),
            Self::NotARepo { .. } => {
                Some("set [rebuild] repo in backtrack.toml to the repository holding the version tags".into())
            }
            Self::NoSuchTag { nearest, .. } if !nearest.is_empty() => {
                Some(format!("tags near it: {}", nearest.join(", ")))
            }
            Self::NoSuchTag { .. } => {
                Some("the repository has no version tags; tag a release with `git tag v1.0.0`".into())
            }
            _ => None,
        }
    }
}

/// A Git repository on disk.
#[derive(Debug, Clone)]
pub struct Repo {
    pub path: PathBuf,
}

fn git(repo: &Path, args: &[&str]) -> Result<String, GitError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                GitError::Missing
            } else {
                GitError::Failed {
                    args: args.join(" "),
                    repo: repo.to_path_buf(),
                    message: e.to_string(),
                }
            }
        })?;
    if !out.status.success() {
        return Err(GitError::Failed {
            args: args.join(" "),
            repo: repo.to_path_buf(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A tag name as users may pass it: what `git check-ref-format` accepts, and never an option.
pub fn validate_tag(tag: &str) -> Result<(), GitError> {
    let bad = tag.is_empty()
        || tag.starts_with('-')
        || tag.starts_with('.')
        || tag.ends_with('.')
        || tag.ends_with(".lock")
        || tag.contains("..")
        || tag.contains("@{")
        || tag.chars().any(|c| c.is_control() || " ~^:?*[\\".contains(c));
    if bad {
        Err(GitError::BadRef(tag.to_string()))
    } else {
        Ok(())
    }
}

impl Repo {
    pub fn open(path: &Path) -> Result<Self, GitError> {
        match git(path, &["rev-parse", "--git-dir"]) {
            Ok(_) => Ok(Self {
                path: path.to_path_buf(),
            }),
            Err(GitError::Missing) => Err(GitError::Missing),
            Err(_) => Err(GitError::NotARepo {
                path: path.to_path_buf(),
            }),
        }
    }

    pub fn tags(&self) -> Result<Vec<String>, GitError> {
        Ok(git(&self.path, &["tag", "--list"])?
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// The Git tag for a version: `v1.2.3` or `1.2.3`, whichever exists.
    pub fn version_tag(&self, version: &semver::Version) -> Result<String, GitError> {
        let tags = self.tags()?;
        let found = tags
            .iter()
            .find(|t| VersionTag::parse(t).is_some_and(|v| v.release() == *version));
        match found {
            Some(t) => Ok(t.clone()),
            None => {
                let mut versions: Vec<VersionTag> = tags.iter().filter_map(|t| VersionTag::parse(t)).collect();
                versions.sort_by(compare_desc);
                // The tags just above and below the wanted version.
                let pos = versions
                    .iter()
                    .position(|v| v.release() < *version)
                    .unwrap_or(versions.len());
                let nearest = versions[pos.saturating_sub(2)..(pos + 2).min(versions.len())]
                    .iter()
                    .map(|v| v.tag.clone())
                    .collect();
                Err(GitError::NoSuchTag {
                    tag: format!("v{version}"),
                    repo: self.path.clone(),
                    nearest,
                })
            }
        }
    }

    /// The commit a tag points to.
    pub fn commit_of(&self, tag: &str) -> Result<String, GitError> {
        validate_tag(tag)?;
        git(
            &self.path,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/tags/{tag}^{{commit}}"),
            ],
        )
    }

    pub fn head(&self) -> Result<String, GitError> {
        git(&self.path, &["rev-parse", "HEAD"])
    }

    /// `git describe --tags`: the seed's way of naming the current checkout.
    pub fn describe(&self) -> Result<String, GitError> {
        git(&self.path, &["describe", "--tags"])
    }

    /// Uncommitted changes (tracked or untracked files), as `git status --porcelain` lists them.
    pub fn dirty(&self) -> Result<Vec<String>, GitError> {
        Ok(git(&self.path, &["status", "--porcelain"])?
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// The `origin` URL, for the `org.opencontainers.image.source` label.
    pub fn origin(&self) -> Option<String> {
        git(&self.path, &["remote", "get-url", "origin"])
            .ok()
            .filter(|u| !u.is_empty())
    }

    /// Checks `commit` out into a new scratch worktree, removed when the guard drops.
    pub fn scratch_worktree(&self, commit: &str) -> Result<Worktree, GitError> {
        if !commit.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(GitError::BadRef(commit.to_string()));
        }
        let dir = tempfile::Builder::new()
            .prefix("backtrack-rebuild-")
            .tempdir()
            .map_err(|e| GitError::Failed {
                args: "worktree add".into(),
                repo: self.path.clone(),
                message: e.to_string(),
            })?;
        let path = dir.path().join("src");
        let p = path.to_string_lossy().to_string();
        git(&self.path, &["worktree", "add", "--detach", "--", &p, commit])?;
        Ok(Worktree {
            repo: self.path.clone(),
            path,
            _dir: dir,
        })
    }
}

/// A scratch worktree; removed (and pruned from the repository's list) on drop, also on failure.
#[derive(Debug)]
pub struct Worktree {
    repo: PathBuf,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Worktree {
    fn drop(&mut self) {
        let p = self.path.to_string_lossy().to_string();
        if let Err(e) = git(&self.repo, &["worktree", "remove", "--force", "--", &p]) {
            tracing::warn!("could not remove the scratch worktree {p}: {e}");
        }
        let _ = git(&self.repo, &["worktree", "prune"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_that_could_be_options_or_odd_are_refused() {
        for bad in [
            "-x",
            "--upload-pack=evil",
            "a..b",
            "v1 2",
            "v1:2",
            "tag.lock",
            "",
            "a@{1}",
            "x\n",
        ] {
            assert!(validate_tag(bad).is_err(), "{bad:?}");
        }
        for good in ["v1.2.3", "1.2.3-rc.1", "release/2024-01"] {
            assert!(validate_tag(good).is_ok(), "{good}");
        }
    }
}
