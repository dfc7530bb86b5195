//! On-disk cache of what registries said, so a second `versions` does not ask again.
//!
//! - Image metadata by manifest digest: a digest names immutable content, so what its manifest
//!   and config say never changes. Once fetched, never fetched again.
//! - Digests of *version* tags per repository, for listings only: version tags are immutable by
//!   convention, so `versions` trusts them (`--refresh` re-reads them). Nothing that acts on the
//!   registry or the target uses them: deploy, mark-good and prune always ask the registry.
//!
//! One JSON file, read once at start and written (atomically) only when something changed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::domain::digest::Digest;
use crate::domain::image::ImageInfo;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    #[serde(default)]
    images: Vec<ImageInfo>,
    /// repository (`host/name`) → version tag → digest.
    #[serde(default)]
    version_tags: BTreeMap<String, BTreeMap<String, Digest>>,
}

#[derive(Debug, Default)]
struct State {
    images: HashMap<Digest, ImageInfo>,
    version_tags: BTreeMap<String, BTreeMap<String, Digest>>,
    dirty: bool,
}

#[derive(Debug)]
pub struct InfoCache {
    path: Option<PathBuf>,
    state: Mutex<State>,
}

impl InfoCache {
    /// Loads `dir/cache.json`; a missing or unreadable file is an empty cache.
    pub fn load(dir: &Path) -> Self {
        let path = dir.join("cache.json");
        let stored: Stored = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            path: Some(path),
            state: Mutex::new(State {
                images: stored.images.into_iter().map(|i| (i.digest.clone(), i)).collect(),
                version_tags: stored.version_tags,
                dirty: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, digest: &Digest) -> Option<ImageInfo> {
        self.lock().images.get(digest).cloned()
    }

    pub fn put(&self, info: ImageInfo) {
        let mut s = self.lock();
        s.images.insert(info.digest.clone(), info);
        s.dirty = true;
    }

    pub fn version_tag(&self, repository: &str, tag: &str) -> Option<Digest> {
        self.lock().version_tags.get(repository)?.get(tag).cloned()
    }

    pub fn put_version_tag(&self, repository: &str, tag: &str, digest: &Digest) {
        let mut s = self.lock();
        let map = s.version_tags.entry(repository.to_string()).or_default();
        if map.get(tag) != Some(digest) {
            map.insert(tag.to_string(), digest.clone());
            s.dirty = true;
        }
    }

    /// Forgets every tag of `repository` on `digest` (after a delete) or one tag (after a push).
    pub fn forget(&self, repository: &str, digest: Option<&Digest>, tag: Option<&str>) {
        let mut s = self.lock();
        if let Some(map) = s.version_tags.get_mut(repository) {
            let before = map.len();
            map.retain(|t, d| Some(&*d) != digest && Some(t.as_str()) != tag);
            if map.len() != before {
                s.dirty = true;
            }
        }
    }

    /// Writes the cache if anything changed. Failures only cost a refetch, so they are logged,
    /// not raised.
    pub fn flush(&self) {
        let Some(path) = &self.path else { return };
        let mut s = self.lock();
        if !s.dirty {
            return;
        }
        let mut images: Vec<ImageInfo> = s.images.values().cloned().collect();
        images.sort_by(|a, b| a.digest.cmp(&b.digest));
        let stored = Stored {
            images,
            version_tags: s.version_tags.clone(),
        };
        let result = (|| -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
            std::fs::write(&tmp, serde_json::to_vec(&stored)?)?;
            std::fs::rename(&tmp, path)
        })();
        match result {
            Ok(()) => s.dirty = false,
            Err(e) => tracing::warn!("could not write the cache {}: {e}", path.display()),
        }
    }
}
