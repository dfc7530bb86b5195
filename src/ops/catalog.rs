//! The catalog: every tag in the repository, split into versions (semver order) and other tags.

use anyhow::Context as _;

use crate::adapters::registry::Registry;
use crate::domain::version::{VersionTag, partition_tags};

#[derive(Debug)]
pub struct Catalog {
    pub versions: Vec<VersionTag>,
    pub others: Vec<String>,
}

impl Catalog {
    pub async fn load(registry: &dyn Registry) -> anyhow::Result<Self> {
        let tags = registry
            .list_tags()
            .await
            .with_context(|| format!("list tags of {}", registry.name()))?;
        let (versions, others) = partition_tags(tags.iter().map(String::as_str));
        Ok(Self { versions, others })
    }

    /// Every registry's catalog at once (a release's repositories, in order).
    pub async fn load_all(registries: &[std::sync::Arc<dyn Registry>]) -> anyhow::Result<Vec<Self>> {
        futures::future::try_join_all(registries.iter().map(|r| Self::load(r.as_ref()))).await
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.others.iter().any(|t| t == tag) || self.versions.iter().any(|v| v.tag == tag)
    }
}
