//! On-disk cache of image metadata by digest. A manifest digest names immutable content, so
//! what its manifest and config say never changes: once fetched, it is never fetched again.
//! One JSON file, read once at start and written (atomically) only when something was added.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::domain::digest::Digest;
use crate::domain::image::ImageInfo;

#[derive(Debug)]
pub struct InfoCache {
    path: Option<PathBuf>,
    entries: Mutex<HashMap<Digest, ImageInfo>>,
    dirty: Mutex<bool>,
}

impl InfoCache {
    /// Loads `dir/images.json`; a missing or unreadable file is an empty cache.
    pub fn load(dir: &Path) -> Self {
        let path = dir.join("images.json");
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<ImageInfo>>(&b).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|i| (i.digest.clone(), i))
            .collect();
        Self {
            path: Some(path),
            entries: Mutex::new(entries),
            dirty: Mutex::new(false),
        }
    }

    /// A cache that only lives in memory.
    pub fn in_memory() -> Self {
        Self {
            path: None,
            entries: Mutex::new(HashMap::new()),
            dirty: Mutex::new(false),
        }
    }

    pub fn get(&self, digest: &Digest) -> Option<ImageInfo> {
        self.entries.lock().expect("cache lock").get(digest).cloned()
    }

    pub fn put(&self, info: ImageInfo) {
        self.entries
            .lock()
            .expect("cache lock")
            .insert(info.digest.clone(), info);
        *self.dirty.lock().expect("cache lock") = true;
    }

    /// Writes the cache if anything was added. Failures only cost a refetch, so they are logged,
    /// not raised.
    pub fn flush(&self) {
        let Some(path) = &self.path else { return };
        let mut dirty = self.dirty.lock().expect("cache lock");
        if !*dirty {
            return;
        }
        let mut all: Vec<ImageInfo> = self.entries.lock().expect("cache lock").values().cloned().collect();
        all.sort_by(|a, b| a.digest.cmp(&b.digest));
        let result = (|| -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
            std::fs::write(&tmp, serde_json::to_vec(&all)?)?;
            std::fs::rename(&tmp, path)
        })();
        match result {
            Ok(()) => *dirty = false,
            Err(e) => tracing::warn!("could not write image cache {}: {e}", path.display()),
        }
    }
}
