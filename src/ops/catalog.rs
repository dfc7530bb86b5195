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

    pub fn has_tag(&self, tag: &str) -> bool {
        self.others.iter().any(|t| t == tag) || self.versions.iter().any(|v| v.tag == tag)
    }
}
