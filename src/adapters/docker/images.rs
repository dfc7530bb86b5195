//! The engine's local images of a repository: listing them with what references them, and
//! removing one by id (never a blanket prune). Used by `prune --local`.

use std::collections::HashMap;

use bollard::query_parameters::{ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder};

use super::{Engine, EngineError, is_not_found, other};

/// One local image: its id, the `repo:tag` names and `repo@digest` references it has, its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImage {
    pub id: String,
    pub tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub size: u64,
    pub created: i64,
}

impl Engine {
    /// Every local image with a name or digest reference in one of `repos` (`host/repo`,
    /// `backtrack/repo`).
    pub async fn images_of(&self, repos: &[String]) -> Result<Vec<LocalImage>, EngineError> {
        let opts = ListImagesOptionsBuilder::default().all(false).digests(true).build();
        let list = self
            .docker
            .list_images(Some(opts))
            .await
            .map_err(|e| other("list images", &e))?;
        let ours = |r: &str| {
            let name = r.split_once('@').map_or_else(
                || {
                    r.rsplit_once(':')
                        .filter(|(_, t)| !t.contains('/'))
                        .map_or(r, |(n, _)| n)
                },
                |(n, _)| n,
            );
            repos.iter().any(|want| want == name)
        };
        Ok(list
            .into_iter()
            .filter(|i| i.repo_tags.iter().chain(&i.repo_digests).any(|r| ours(r)))
            .map(|i| LocalImage {
                id: i.id,
                tags: i.repo_tags.into_iter().filter(|t| t != "<none>:<none>").collect(),
                repo_digests: i.repo_digests,
                size: u64::try_from(i.size).unwrap_or(0),
                created: i.created,
            })
            .collect())
    }

    /// Image id → names of the containers (running or not) created from it.
    pub async fn image_users(&self) -> Result<HashMap<String, Vec<String>>, EngineError> {
        let opts = ListContainersOptionsBuilder::default().all(true).build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| other("list containers", &e))?;
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for c in list {
            let (Some(image), Some(names)) = (c.image_id, c.names) else {
                continue;
            };
            out.entry(image)
                .or_default()
                .extend(names.into_iter().map(|n| n.trim_start_matches('/').to_string()));
        }
        Ok(out)
    }

    /// Removes one reference (`repo:tag` or `repo@digest`) of an image, never forced: the image
    /// goes with its last reference, an image a container uses stays and says why, and names of
    /// other repositories are left alone. `Ok(false)` when it was already gone.
    pub async fn remove_reference(&self, reference: &str) -> Result<bool, EngineError> {
        let opts = RemoveImageOptionsBuilder::default().force(false).noprune(false).build();
        self.forget_images();
        match self.docker.remove_image(reference, Some(opts), None).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(other(&format!("remove image {reference}"), &e)),
        }
    }
}

/// `sha256:0123456789ab…` → `0123456789ab`.
pub fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}
