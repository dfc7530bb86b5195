//! What a swap does with the target's config: keep today's, or restore the one the version last
//! ran with (`--restore-config`); which snapshots the host's journal already holds; and the plan's
//! part that says what differs. The same for containers and Swarm services: each adapter turns its
//! config into a snapshot and flattens it, this module decides and records.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::domain::config::{self, Change, ConfigPair, Flat};
use crate::domain::history::{self, OperationView, Record};
use crate::domain::image::ImageRef;
use crate::error::Failure;

/// The snapshots a host's journal holds and the operations that name them.
pub struct Configs {
    ops: Vec<OperationView>,
    stored: BTreeMap<String, Value>,
    /// Recreate with the config the version last ran with.
    pub restore: bool,
}

impl Configs {
    pub fn new(records: &[Record], restore: bool) -> Self {
        Self {
            ops: history::operations(records),
            stored: history::snapshots(records)
                .into_iter()
                .map(|(h, v)| (h.to_string(), v.clone()))
                .collect(),
            restore,
        }
    }

    /// The journal's operations, oldest first.
    pub fn ops(&self) -> &[OperationView] {
        &self.ops
    }

    /// The snapshot `unit` (a container or service name) last ran with under `version`.
    pub fn then(&self, version: &ImageRef, unit: &str) -> Option<(&str, &Value)> {
        let hash = config::last_ran_with(&self.ops, version, unit)?;
        self.stored.get_key_value(hash).map(|(h, v)| (h.as_str(), v))
    }

    /// The snapshot to recreate `unit` with when restoring, or the error naming what is missing.
    pub fn to_restore(&self, version: &ImageRef, unit: &str) -> Result<Option<&Value>, Failure> {
        if !self.restore {
            return Ok(None);
        }
        self.then(version, unit)
            .map(|(_, v)| Some(v))
            .ok_or_else(|| Failure::NoSnapshot {
                version: version.display(),
                unit: unit.to_string(),
            })
    }

    fn is_stored(&self, hash: &str) -> bool {
        self.stored.contains_key(hash)
    }
}

/// The config part of a plan: printed (`config_changes`) and recorded (the snapshots).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigPlan {
    /// Recreate with the config the version last ran with; else today's is kept.
    pub restore_config: bool,
    /// Whether the journal knows the config the version last ran with here.
    pub config_recorded: bool,
    /// What differs between today's config and the one the version last ran with (what a restore
    /// changes; without one, what stays as today). Secret-looking values are masked.
    pub config_changes: Vec<Change>,
    /// Per unit: the snapshot it runs with now and the one it will run with.
    #[serde(skip)]
    pub pairs: BTreeMap<String, ConfigPair>,
    /// Snapshots the journal does not hold yet, to store with the operation's intent.
    #[serde(skip)]
    pub new_snapshots: BTreeMap<String, Value>,
}

impl ConfigPlan {
    pub fn new(restore: bool) -> Self {
        Self {
            restore_config: restore,
            config_recorded: true,
            ..Self::default()
        }
    }

    /// Adds one unit: the snapshot it runs with now, the one the version last ran with (if
    /// known), and the one the swap creates it with; `flatten` is the adapter's.
    pub fn add(
        &mut self,
        configs: &Configs,
        unit: &str,
        now: Value,
        then: Option<&Value>,
        after: Value,
        flatten: fn(&Value) -> Flat,
    ) {
        match then {
            Some(then) => {
                for c in config::changes(&flatten(&now), &flatten(then)) {
                    if !self.config_changes.contains(&c) {
                        self.config_changes.push(c);
                    }
                }
            }
            None => self.config_recorded = false,
        }
        let (before, after_hash) = (config::hash(&now), config::hash(&after));
        for (h, v) in [(before.clone(), now), (after_hash.clone(), after)] {
            if !configs.is_stored(&h) {
                self.new_snapshots.insert(h, v);
            }
        }
        self.pairs.insert(
            unit.to_string(),
            ConfigPair {
                before,
                after: after_hash,
            },
        );
        self.config_changes.sort_by(|a, b| a.key.cmp(&b.key));
    }

    /// One line for the plan's table: what happens to the config.
    pub fn summary(&self, version: &str) -> String {
        let n = self.config_changes.len();
        match (self.restore_config, self.config_recorded, n) {
            (true, _, 0) => format!("restored as {version} ran it (same as today)"),
            (true, _, n) => format!("restored as {version} ran it: {n} change(s)"),
            (false, false, _) => format!("kept (no config of {version} recorded here)"),
            (false, true, 0) => format!("kept (the same as {version} ran with)"),
            (false, true, n) => format!("kept; {n} difference(s) from what {version} ran with (--restore-config)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    use super::*;
    use crate::domain::history::{Operation, Outcome, Phase};

    fn flat(v: &Value) -> Flat {
        v.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect()
    }

    fn version(v: &str) -> ImageRef {
        ImageRef {
            tag: None,
            version: Some(v.into()),
            digest: None,
        }
    }

    /// A journal: a deploy of 1.1.0 from 1.0.0 that ran with `old` before and `new` after.
    fn journal(old: &Value, new: &Value) -> Vec<Record> {
        let mut start = Record::new(
            "a",
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            Operation::Deploy,
            Phase::Started,
        );
        start.from = Some(version("1.0.0"));
        start.to = Some(version("1.1.0"));
        start.configs.insert(
            "web".into(),
            ConfigPair {
                before: config::hash(old),
                after: config::hash(new),
            },
        );
        start.snapshots.insert(config::hash(old), old.clone());
        start.snapshots.insert(config::hash(new), new.clone());
        let end = start.finish(start.at, Outcome::Ok, None, None);
        vec![start, end]
    }

    #[test]
    fn a_restore_recreates_what_the_version_ran_with_and_lists_the_difference() {
        let (old, new) = (json!({"env.MODE": "old"}), json!({"env.MODE": "new", "env.NEW": "1"}));
        let configs = Configs::new(&journal(&old, &new), true);
        let then = configs.to_restore(&version("1.0.0"), "web").unwrap().cloned();
        assert_eq!(then.as_ref(), Some(&old));
        let mut plan = ConfigPlan::new(true);
        plan.add(&configs, "web", new.clone(), then.as_ref(), old.clone(), flat);
        assert_eq!(
            plan.config_changes.iter().map(Change::line).collect::<Vec<_>>(),
            ["env.MODE: new -> old", "env.NEW: 1 -> (not set)"]
        );
        assert!(plan.new_snapshots.is_empty(), "both are stored already");
        assert_eq!(plan.pairs["web"].after, config::hash(&old));
        // 1.1.0's config is the one after the deploy that moved onto it.
        assert_eq!(configs.then(&version("1.1.0"), "web").map(|(_, v)| v), Some(&new));
    }

    #[test]
    fn restoring_a_config_never_recorded_names_the_version_and_keeping_lists_nothing_to_change() {
        let configs = Configs::new(&[], true);
        let err = configs.to_restore(&version("0.9.0"), "web").unwrap_err();
        assert!(
            err.to_string().contains("0.9.0") && err.to_string().contains("web"),
            "{err}"
        );
        let keep = Configs::new(&[], false);
        assert_eq!(keep.to_restore(&version("0.9.0"), "web").unwrap(), None);
        let mut plan = ConfigPlan::new(false);
        let now = json!({"env.MODE": "x"});
        plan.add(&keep, "web", now.clone(), None, now.clone(), flat);
        assert!(!plan.config_recorded && plan.config_changes.is_empty());
        assert_eq!(plan.new_snapshots.len(), 1, "the same config is stored once");
        assert!(plan.summary("0.9.0").contains("no config of 0.9.0 recorded"));
    }
}
