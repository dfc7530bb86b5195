//! Other targets built from the same repository. Each target keeps its own state folder with a
//! `target.json` naming its registry repository, so a command that acts on the repository as a
//! whole (`prune`) can honour what every target's journal says it needs.

use std::path::Path;

use crate::adapters::state::{Journal, TargetMeta};
use crate::domain::history::{self, OperationView};

/// A target's identity and its journal's operations.
#[derive(Debug)]
pub struct Sibling {
    pub meta: TargetMeta,
    pub ops: Vec<OperationView>,
}

/// Every target under `state_root` whose images come from `repository` (`host/repo`), except the
/// one whose state is in `except`. A folder that cannot be read is skipped with a warning.
pub fn siblings(state_root: &Path, repository: &str, except: &Path) -> Vec<Sibling> {
    let Ok(entries) = std::fs::read_dir(state_root.join("targets")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for dir in entries.flatten().map(|e| e.path()) {
        if dir == except {
            continue;
        }
        let Some(meta) = TargetMeta::read(&dir) else {
            continue;
        };
        if meta.repository != repository {
            continue;
        }
        match Journal::new(&dir).read() {
            Ok(records) => out.push(Sibling {
                meta,
                ops: history::operations(&records),
            }),
            Err(e) => tracing::warn!("skipping the state of {}: {e}", meta.target),
        }
    }
    out.sort_by(|a, b| a.meta.target.cmp(&b.meta.target));
    out
}
