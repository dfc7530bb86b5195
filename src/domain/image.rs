//! What we know about an image in the registry: its digest, tags and metadata from its config.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::digest::Digest;

pub const LABEL_VERSION: &str = "org.opencontainers.image.version";
pub const LABEL_REVISION: &str = "org.opencontainers.image.revision";
pub const LABEL_DESCRIPTION: &str = "org.opencontainers.image.description";
pub const LABEL_CREATED: &str = "org.opencontainers.image.created";
pub const LABEL_SOURCE: &str = "org.opencontainers.image.source";
/// The tag that names the last known good version.
pub const LKG_TAG: &str = "last_known_good";

/// A `last_known_good` pointer of any environment: `last_known_good` or `last_known_good-ENV`.
pub fn is_lkg_tag(tag: &str) -> bool {
    tag == LKG_TAG
        || tag
            .strip_prefix(LKG_TAG)
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('-'))
}

/// Metadata of one image (one manifest digest), from its manifest and config blob. Immutable for a
/// digest, so it is cached on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub digest: Digest,
    /// When the image was built (config `created`).
    pub created: Option<DateTime<Utc>>,
    /// When it was pushed, where the registry says (ECR does; Distribution does not).
    #[serde(default)]
    pub pushed: Option<DateTime<Utc>>,
    /// Compressed size of config and layers, where known.
    pub size: Option<u64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl ImageInfo {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    pub fn revision(&self) -> Option<&str> {
        self.label(LABEL_REVISION)
    }

    pub fn description(&self) -> Option<&str> {
        self.label(LABEL_DESCRIPTION)
    }
}

/// A pointer to an image as the journal and reports record it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ImageRef {
    /// The tag it was chosen by, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// The most readable name: version, else tag, else short digest.
    pub fn display(&self) -> String {
        if let Some(v) = &self.version {
            return v.clone();
        }
        if let Some(t) = &self.tag {
            return t.clone();
        }
        match &self.digest {
            Some(d) => d.short().to_string(),
            None => "-".to_string(),
        }
    }
}

/// Formats a byte count like `docker images` does (`12.3MB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_docker() {
        for (bytes, want) in [(0, "0B"), (999, "999B"), (1_000, "1.0kB"), (12_345_678, "12.3MB")] {
            assert_eq!(human_size(bytes), want);
        }
    }
}
