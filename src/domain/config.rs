//! Config snapshots as the domain sees them: a container's (or Swarm service's) config flattened
//! to `key -> value` (`env.MODE`, `cmd`, `ports.8080/tcp`, `labels.app`, ...), the differences
//! between two of them with secret-looking values masked, and which snapshot a version last ran
//! with according to the journal.
//!
//! The adapters turn an engine's config into a snapshot (a JSON value) and flatten it; snapshots
//! are stored once per distinct config in the journal, named by a hash of their canonical JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::history::{OperationView, Outcome};
use super::image::ImageRef;

/// A config flattened to keys and values, for differences.
pub type Flat = BTreeMap<String, String>;

/// The hashes of what one container ran with before an operation and after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigPair {
    pub before: String,
    pub after: String,
}

/// The name of a snapshot: `cfg-` and the first 16 hex digits of the SHA-256 of its canonical
/// JSON (object keys sorted, no spaces), so one config has one name wherever it was seen.
pub fn hash(snapshot: &serde_json::Value) -> String {
    // serde_json's maps are sorted (no `preserve_order`): to_string is canonical.
    let digest = Sha256::digest(snapshot.to_string().as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("cfg-{hex}")
}

/// Does `key`'s value look secret (`env.DB_PASSWORD`, `labels.api-token`)? The name's last
/// segment is matched, case-insensitively, against PASS, SECRET, TOKEN, KEY, CREDENTIAL, AUTH.
pub fn is_secret(key: &str) -> bool {
    let name = key.rsplit_once('.').map_or(key, |(_, n)| n).to_ascii_uppercase();
    ["PASS", "SECRET", "TOKEN", "KEY", "CREDENTIAL", "AUTH"]
        .iter()
        .any(|w| name.contains(w))
}

/// What a value is shown as: in clear, or masked when its key looks secret.
pub fn shown(key: &str, value: &str) -> String {
    if is_secret(key) {
        "(set)".into()
    } else {
        value.to_string()
    }
}

/// One difference between the config a target runs with now and the one it would run with (or
/// ran with then). `None`: the key is not set on that side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub key: String,
    pub now: Option<String>,
    pub then: Option<String>,
}

impl Change {
    /// `env.MODE: new -> old`, for tables.
    pub fn line(&self) -> String {
        let side = |v: &Option<String>| v.clone().unwrap_or_else(|| "(not set)".into());
        format!("{}: {} -> {}", self.key, side(&self.now), side(&self.then))
    }
}

/// The keys whose values differ between `now` and `then`, in key order. Secret-looking values
/// never appear: a side that has one reads `(set)`, and `(changed)` when both have one.
pub fn changes(now: &Flat, then: &Flat) -> Vec<Change> {
    let mut keys: Vec<&String> = now.keys().chain(then.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| now.get(*k) != then.get(*k))
        .map(|k| {
            let (n, t) = (now.get(k), then.get(k));
            if is_secret(k) {
                let both = n.is_some() && t.is_some();
                Change {
                    key: k.clone(),
                    now: n.map(|_| if both { "(changed)" } else { "(set)" }.to_string()),
                    then: t.map(|_| "(set)".to_string()),
                }
            } else {
                Change {
                    key: k.clone(),
                    now: n.cloned(),
                    then: t.cloned(),
                }
            }
        })
        .collect()
}

/// The snapshot (hash) `container` last ran with while the target ran `version`, newest first in
/// the journal: the config after an operation that moved onto it and was kept (ok), or the config
/// before any operation that moved away from it. `None`: no operation recorded one.
pub fn last_ran_with<'a>(ops: &'a [OperationView], version: &ImageRef, container: &str) -> Option<&'a str> {
    let same = |r: &Option<ImageRef>| r.as_ref().is_some_and(|r| same_version(r, version));
    ops.iter().rev().find_map(|op| {
        let pair = op.configs.get(container)?;
        if same(&op.to) && matches!(op.result, Some(Outcome::Ok)) {
            Some(pair.after.as_str())
        } else if same(&op.from) {
            Some(pair.before.as_str())
        } else {
            None
        }
    })
}

/// One version, by digest when both sides have one, else by version (or tag).
fn same_version(a: &ImageRef, b: &ImageRef) -> bool {
    match (&a.digest, &b.digest) {
        (Some(x), Some(y)) => x == y,
        _ => match (&a.version, &b.version) {
            (Some(x), Some(y)) => x == y,
            _ => a.tag.is_some() && a.tag == b.tag,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(pairs: &[(&str, &str)]) -> Flat {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn secret_looking_keys_are_matched_on_their_last_segment_in_any_case() {
        for (key, secret) in [
            ("env.DB_PASSWORD", true),
            ("env.db_pass", true),
            ("env.API_TOKEN", true),
            ("env.AWS_SECRET_ACCESS_KEY", true),
            ("labels.app.auth-header", true),
            ("env.GOOGLE_CREDENTIALS", true),
            ("env.MODE", false),
            ("cmd", false),
            ("env.KEYBOARD", true),
            ("labels.passport.owner", false),
        ] {
            assert_eq!(is_secret(key), secret, "{key}");
        }
    }

    #[test]
    fn changes_list_what_differs_and_never_a_secret_value() {
        let now = flat(&[
            ("env.MODE", "new"),
            ("env.DB_PASSWORD", "hunter2"),
            ("cmd", "serve --fast"),
            ("env.NEW", "1"),
        ]);
        let then = flat(&[
            ("env.MODE", "old"),
            ("env.DB_PASSWORD", "swordfish"),
            ("cmd", "serve --fast"),
        ]);
        let c = changes(&now, &then);
        assert_eq!(
            c,
            vec![
                Change {
                    key: "env.DB_PASSWORD".into(),
                    now: Some("(changed)".into()),
                    then: Some("(set)".into())
                },
                Change {
                    key: "env.MODE".into(),
                    now: Some("new".into()),
                    then: Some("old".into())
                },
                Change {
                    key: "env.NEW".into(),
                    now: Some("1".into()),
                    then: None
                },
            ]
        );
        let text = format!("{c:?}{}", c.iter().map(Change::line).collect::<String>());
        assert!(!text.contains("hunter2") && !text.contains("swordfish"), "{text}");
        assert_eq!(c[2].line(), "env.NEW: 1 -> (not set)");
        // A secret only one side has is "(set)" there.
        let c = changes(&flat(&[("env.API_TOKEN", "t")]), &Flat::new());
        assert_eq!(c[0].now.as_deref(), Some("(set)"));
        assert_eq!(c[0].then, None);
        assert!(changes(&now, &now).is_empty());
    }

    #[test]
    fn one_config_has_one_hash_whatever_the_order_of_its_keys() {
        let a: serde_json::Value = serde_json::from_str(r#"{"Env":["A=1"],"Cmd":["x"]}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"Cmd":["x"],"Env":["A=1"]}"#).unwrap();
        let c: serde_json::Value = serde_json::from_str(r#"{"Cmd":["y"],"Env":["A=1"]}"#).unwrap();
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(hash(&a), hash(&c));
        assert!(hash(&a).starts_with("cfg-") && hash(&a).len() == 20);
    }
}
