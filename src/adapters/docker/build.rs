//! Building and pushing images through the Engine API: the build context goes as a tar stream
//! (honouring `.dockerignore`, never `.git`), output streams behind a progress display, and a
//! failed build is reported with its step and last lines.

use std::collections::HashMap;
use std::path::Path;

use bollard::query_parameters::{BuildImageOptionsBuilder, PushImageOptionsBuilder};
use futures::StreamExt;

use super::{Engine, EngineError};
use crate::adapters::registry::PullAuth;

/// What a build needs.
#[derive(Debug, Clone)]
pub struct BuildSpec<'a> {
    pub context: &'a Path,
    /// Relative to the context.
    pub dockerfile: &'a Path,
    /// `repo:tag`.
    pub image: String,
    pub build_args: HashMap<String, String>,
    pub labels: HashMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("read build context {}: {message}", path.display())]
    Context { path: std::path::PathBuf, message: String },
    #[error("build {image}{}: {message}", step.as_ref().map(|s| format!(" at {s}")).unwrap_or_default())]
    Failed {
        image: String,
        step: Option<String>,
        message: String,
        /// The last lines of the build output.
        log: Vec<String>,
    },
    #[error("push {image}: {message}")]
    Push { image: String, message: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl BuildError {
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Failed { message, .. } if message.contains("no space left") => {
                Some("the disk is full: `docker system df`, then `docker image prune` or `docker builder prune`".into())
            }
            Self::Failed { log, .. } if !log.is_empty() => {
                Some(format!("last lines of the build:\n  | {}", log.join("\n  | ")))
            }
            _ => None,
        }
    }
}

impl Engine {
    /// Builds an image from a context directory; `progress` gets each output line.
    pub async fn build(&self, spec: &BuildSpec<'_>, mut progress: impl FnMut(&str)) -> Result<(), BuildError> {
        let files = super::context::entries(spec.context, spec.dockerfile)?;
        let opts = BuildImageOptionsBuilder::default()
            .dockerfile(&spec.dockerfile.to_string_lossy())
            .t(&spec.image)
            .rm(true)
            .forcerm(true)
            .buildargs(&spec.build_args)
            .labels(&spec.labels)
            .build();
        let mut stream = self.docker.build_image(
            opts,
            None,
            Some(bollard::body_try_stream(super::context::tar_stream(
                spec.context,
                files,
            ))),
        );
        let mut log: Vec<String> = Vec::new();
        let mut step: Option<String> = None;
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| BuildError::Failed {
                image: spec.image.clone(),
                step: step.clone(),
                message: super::short_error(&e),
                log: tail(&log),
            })?;
            if let Some(s) = info.stream {
                for line in s.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
                    if line.starts_with("Step ") {
                        step = Some(line.split(" : ").next().unwrap_or(line).to_string());
                    }
                    progress(line);
                    log.push(line.to_string());
                }
            }
            if let Some(e) = info.error_detail.and_then(|d| d.message) {
                return Err(BuildError::Failed {
                    image: spec.image.clone(),
                    step,
                    message: e,
                    log: tail(&log),
                });
            }
        }
        Ok(())
    }

    /// Pushes `repo:tag`; `progress` gets status lines.
    pub async fn push(
        &self,
        repo: &str,
        tag: &str,
        auth: Option<&PullAuth>,
        mut progress: impl FnMut(&str),
    ) -> Result<(), BuildError> {
        let image = format!("{repo}:{tag}");
        let opts = PushImageOptionsBuilder::default().tag(tag).build();
        let mut stream = self.docker.push_image(repo, Some(opts), super::credentials(auth));
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| BuildError::Push {
                image: image.clone(),
                message: super::short_error(&e),
            })?;
            if let Some(e) = info.error_detail.and_then(|d| d.message) {
                return Err(BuildError::Push { image, message: e });
            }
            if let Some(s) = info.status {
                progress(&s);
            }
        }
        Ok(())
    }
}

fn tail(log: &[String]) -> Vec<String> {
    log[log.len().saturating_sub(20)..].to_vec()
}
