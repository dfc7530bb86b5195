//! The journal's records and the rules read from them: which operations are still open (a crash
//! left them half done), which versions failed validation, what `previous` means.
//!
//! Every operation writes a `started` record (its intent) before acting and a `finished` record
//! with the result after; the storage of the journal lives in `adapters::state`.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::config::ConfigPair;
use super::image::ImageRef;
use super::version::parse_version;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    Deploy,
    Rollback,
    MarkGood,
    Emergency,
    Recover,
    Prune,
    /// A rehearsal on a scratch copy (`backtrack drill`): never moves the target, so it never
    /// counts as a deploy for `previous`, failed versions or drift.
    Drill,
}

impl Operation {
    /// Operations that change what the target runs.
    pub fn moves_target(self) -> bool {
        matches!(self, Self::Deploy | Self::Rollback | Self::Emergency)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deploy => "deploy",
            Self::Rollback => "rollback",
            Self::MarkGood => "mark-good",
            Self::Emergency => "emergency",
            Self::Recover => "recover",
            Self::Prune => "prune",
            Self::Drill => "drill",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The intent, written before anything is touched.
    Started,
    /// Validation passed: from here a crash completes the operation instead of reverting it.
    Committed,
    Finished,
    /// Something learnt after the operation finished (a notification's delivery).
    Note,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Committed => "committed",
            Self::Finished => "finished",
            Self::Note => "note",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Done and validated.
    Ok,
    /// Validation failed; the previous version runs again.
    Reverted,
    /// Validation failed and putting the previous version back failed too.
    RevertFailed,
    /// Reverted because the HTTP probe never reached anything (connection refused or DNS errors
    /// for the whole timeout): the probe's address is in doubt, not the version.
    RevertedProbeUnreachable,
    /// Failed before the target was touched.
    Failed,
    /// Found half done by a later run and put back to the previous state.
    RolledBackAfterCrash,
    /// Nothing to do (already there).
    Unchanged,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Reverted => "reverted",
            Self::RevertFailed => "revert-failed",
            Self::RevertedProbeUnreachable => "reverted-probe-unreachable",
            Self::Failed => "failed",
            Self::RolledBackAfterCrash => "rolled-back-after-crash",
            Self::Unchanged => "unchanged",
        }
    }
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Shared by the `started` and `finished` records of one operation.
    pub id: String,
    pub at: DateTime<Utc>,
    pub op: Operation,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ImageRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<ImageRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Free text: why it failed, what was recovered, which containers were involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Containers touched by the operation (their names), so a crash can be recovered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// Restart policy of each container before the swap (the kept backup runs without one).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub saved: BTreeMap<String, String>,
    /// Outcomes worth keeping for the incident record: hooks, notifications, `--no-hooks`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The last lines of a container that failed validation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
    /// Per container (or service): the config snapshots it ran with before the operation and
    /// after it (`started` records only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, ConfigPair>,
    /// The snapshots this record names that no earlier record of the journal holds, by hash: each
    /// distinct config is stored once.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub snapshots: BTreeMap<String, serde_json::Value>,
    /// A release (`[target] names`): the image each service goes to, all of one version
    /// (`started` records only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, ImageRef>,
    /// A release's ending (`finished` records only): each service's own result (`ok`,
    /// `reverted`, `failed: …`, `not reached`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub results: BTreeMap<String, String>,
}

impl Record {
    /// `rollback to 1.2.0 started 2026-12-06 21:30:00Z`: an open operation, as settling names it.
    pub fn started_what(&self) -> String {
        format!(
            "{} to {} started {}",
            self.op.as_str(),
            self.to.as_ref().map_or("-".into(), |t| t.display()),
            self.at.format("%Y-%m-%d %H:%M:%SZ"),
        )
    }

    /// A record of `op` with only the required fields set.
    pub fn new(id: &str, at: DateTime<Utc>, op: Operation, phase: Phase) -> Self {
        Self {
            id: id.to_string(),
            at,
            op,
            phase,
            user: None,
            host: None,
            target: None,
            from: None,
            to: None,
            reason: None,
            result: None,
            duration_ms: None,
            detail: None,
            containers: Vec::new(),
            saved: BTreeMap::new(),
            notes: Vec::new(),
            logs: Vec::new(),
            configs: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            services: BTreeMap::new(),
            results: BTreeMap::new(),
        }
    }

    /// The `finished` record of the operation this `started` record began; `detail` defaults to
    /// the start's.
    pub fn finish(&self, at: DateTime<Utc>, result: Outcome, duration_ms: Option<u64>, detail: Option<String>) -> Self {
        Self {
            at,
            phase: Phase::Finished,
            result: Some(result),
            duration_ms,
            detail: detail.or_else(|| self.detail.clone()),
            containers: Vec::new(),
            saved: BTreeMap::new(),
            notes: Vec::new(),
            logs: Vec::new(),
            configs: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            services: BTreeMap::new(),
            ..self.clone()
        }
    }
}

/// An operation as `history` shows it: its start merged with its end.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperationView {
    pub id: String,
    pub started: DateTime<Utc>,
    pub op: Operation,
    pub user: Option<String>,
    pub host: Option<String>,
    pub target: Option<String>,
    pub from: Option<ImageRef>,
    pub to: Option<ImageRef>,
    pub reason: Option<String>,
    /// `None` while the operation is open (running, or crashed before it finished).
    pub result: Option<Outcome>,
    pub duration_ms: Option<u64>,
    pub detail: Option<String>,
    /// The containers it touched.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// Hooks, notifications, `--no-hooks`: in the order they happened.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The failed container's last lines, when it was reverted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
    /// The config snapshots per container before and after (see `Record::configs`).
    #[serde(skip)]
    pub configs: BTreeMap<String, ConfigPair>,
    /// A release: the image each service went to (see `Record::services`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, ImageRef>,
    /// A release: each service's result (see `Record::results`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub results: BTreeMap<String, String>,
}

/// Every snapshot the journal holds, by hash.
pub fn snapshots(records: &[Record]) -> BTreeMap<&str, &serde_json::Value> {
    records
        .iter()
        .flat_map(|r| r.snapshots.iter().map(|(h, v)| (h.as_str(), v)))
        .collect()
}

/// Merges records by operation id, oldest first.
pub fn operations(records: &[Record]) -> Vec<OperationView> {
    let mut order: Vec<String> = Vec::new();
    let mut by_id: BTreeMap<String, OperationView> = BTreeMap::new();
    for r in records {
        match by_id.get_mut(&r.id) {
            None => {
                order.push(r.id.clone());
                by_id.insert(
                    r.id.clone(),
                    OperationView {
                        id: r.id.clone(),
                        started: r.at,
                        op: r.op,
                        user: r.user.clone(),
                        host: r.host.clone(),
                        target: r.target.clone(),
                        from: r.from.clone(),
                        to: r.to.clone(),
                        reason: r.reason.clone(),
                        result: r.result,
                        duration_ms: r.duration_ms,
                        detail: r.detail.clone(),
                        containers: r.containers.clone(),
                        notes: r.notes.clone(),
                        logs: r.logs.clone(),
                        configs: r.configs.clone(),
                        services: r.services.clone(),
                        results: r.results.clone(),
                    },
                );
            }
            Some(view) => {
                if r.from.is_some() {
                    view.from = r.from.clone();
                }
                if r.to.is_some() {
                    view.to = r.to.clone();
                }
                if r.result.is_some() {
                    view.result = r.result;
                }
                if r.duration_ms.is_some() {
                    view.duration_ms = r.duration_ms;
                }
                if r.detail.is_some() {
                    view.detail = r.detail.clone();
                }
                view.notes.extend(r.notes.iter().cloned());
                if !r.logs.is_empty() {
                    view.logs = r.logs.clone();
                }
                if !r.results.is_empty() {
                    view.results = r.results.clone();
                }
            }
        }
    }
    order.into_iter().filter_map(|id| by_id.remove(&id)).collect()
}

/// Operations that moved the target and never wrote their `finished` record: a crash or a kill
/// left them half done. Oldest first; the second value says whether it had committed.
pub fn open_operations(records: &[Record]) -> Vec<(Record, bool)> {
    let committed: HashSet<&str> = records
        .iter()
        .filter(|r| r.phase == Phase::Committed)
        .map(|r| r.id.as_str())
        .collect();
    let finished: HashSet<&str> = records
        .iter()
        .filter(|r| r.phase == Phase::Finished)
        .map(|r| r.id.as_str())
        .collect();
    records
        .iter()
        .filter(|r| r.phase == Phase::Started && r.op.moves_target() && !finished.contains(r.id.as_str()))
        .map(|r| (r.clone(), committed.contains(r.id.as_str())))
        .collect()
}

/// Versions whose most recent deployment failed validation.
pub fn failed_versions(ops: &[OperationView]) -> HashSet<String> {
    let mut last: BTreeMap<String, bool> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.op.moves_target()) {
        // An emergency says the version it left was bad.
        if op.op == Operation::Emergency
            && let Some(from) = op.from.as_ref().and_then(|f| f.version.clone())
        {
            last.insert(from, false);
        }
        let Some(version) = op.to.as_ref().and_then(|t| t.version.clone()) else {
            continue;
        };
        match op.result {
            Some(Outcome::Ok) | Some(Outcome::Unchanged) => {
                last.insert(version, true);
            }
            Some(Outcome::Reverted) | Some(Outcome::RevertFailed) | Some(Outcome::RolledBackAfterCrash) => {
                last.insert(version, false);
            }
            _ => {}
        }
    }
    last.into_iter().filter(|(_, ok)| !ok).map(|(v, _)| v).collect()
}

/// A release's operations as one service saw them: each one's `to` is that service's image
/// (`Record::services`), so the rules above (`deployed_versions`, `last_committed`) speak of
/// that service's repository. Operations that do not name it keep their own.
pub fn for_service(ops: &[OperationView], service: &str) -> Vec<OperationView> {
    ops.iter()
        .map(|o| {
            let mut o = o.clone();
            if let Some(to) = o.services.get(service) {
                o.to = Some(to.clone());
            }
            o
        })
        .collect()
}

/// The versions successfully deployed, most recent first, each once.
pub fn deployed_versions(ops: &[OperationView]) -> Vec<ImageRef> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for op in ops.iter().rev() {
        if !op.op.moves_target() || op.result != Some(Outcome::Ok) {
            continue;
        }
        if let Some(to) = &op.to {
            let key = to.version.clone().or_else(|| to.digest.as_ref().map(|d| d.to_string()));
            if let Some(key) = key
                && seen.insert(key)
            {
                out.push(to.clone());
            }
        }
    }
    out
}

/// What the journal says `last_known_good` names: the images successfully marked good, most
/// recent first.
pub fn marked_good(ops: &[OperationView]) -> impl Iterator<Item = &ImageRef> {
    ops.iter()
        .rev()
        .filter(|o| o.op == Operation::MarkGood && o.result == Some(Outcome::Ok))
        .filter_map(|o| o.to.as_ref())
}

/// What the journal says a release's service was last marked good with (`Record::services` of
/// the most recent successful mark-good that names it).
pub fn marked_good_service<'a>(ops: &'a [OperationView], service: &str) -> Option<&'a ImageRef> {
    ops.iter()
        .rev()
        .filter(|o| o.op == Operation::MarkGood && o.result == Some(Outcome::Ok))
        .find_map(|o| o.services.get(service))
}

/// The key a version is known by in the journal's rules: its version, else its digest.
fn key(r: &ImageRef) -> Option<String> {
    r.version.clone().or_else(|| r.digest.as_ref().map(ToString::to_string))
}

/// Every key `r` can be known by: its version and its digest. An image a container was started
/// on by hand may be known by its digest alone, and later by its version too.
fn keys(r: &ImageRef) -> impl Iterator<Item = String> + '_ {
    r.version
        .iter()
        .cloned()
        .chain(r.digest.iter().map(ToString::to_string))
}

/// Whether two references name the same image: the same version, or the same digest.
fn same(a: &ImageRef, b: &ImageRef) -> bool {
    (a.version.is_some() && a.version == b.version) || (a.digest.is_some() && a.digest == b.digest)
}

/// What ran before backtrack's first move, as the bottom of the undo stack: the `from` of that
/// move, when it names a version or a digest. A tag that is no version (`latest`, `main`) is
/// dropped: it has moved since, and the digest is what ran.
fn before_first_move(from: &ImageRef) -> Option<ImageRef> {
    key(from)?;
    Some(ImageRef {
        tag: from.tag.clone().filter(|t| parse_version(t).is_some()),
        ..from.clone()
    })
}

/// The undo stack behind `previous`: a deploy pushes the version it put in place, a rollback
/// (or an emergency) pops back to the version it went to. Versions popped by a rollback, and the
/// version a rollback left, are "rolled back from": `previous` skips them until they are deployed
/// again, so two rollbacks in a row go further back instead of forward again.
///
/// The stack starts with what ran before the first move that completed (its `from`): a container
/// started by hand or by compose on 1.0.0 and deployed to 1.2.0 rolls back to 1.0.0, whatever
/// else the registry holds. Moves that failed or were reverted before it left that image running,
/// so the first completed one names it, and also names what a hand change in between put there.
/// Known by its digest alone (a non-version tag, or started by digest) it is still the bottom,
/// and `previous` goes to that digest; with neither version nor digest there is no bottom, and
/// `previous` falls back to the next lower version as with no history. A first move that is a
/// rollback or an emergency pops it like any other: the image it left is rolled back from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Undo {
    /// Bottom first; each version once, where it was last put.
    pub stack: Vec<ImageRef>,
    /// Versions and digests (`keys`) that `previous` skips.
    pub rolled_back_from: HashSet<String>,
}

pub fn undo(ops: &[OperationView]) -> Undo {
    let mut u = Undo::default();
    let mut first = true;
    for op in ops {
        if !op.op.moves_target() || op.result != Some(Outcome::Ok) {
            continue;
        }
        let Some(to) = op.to.as_ref().filter(|t| key(t).is_some()) else {
            continue;
        };
        if std::mem::take(&mut first) {
            u.stack.extend(op.from.as_ref().and_then(before_first_move));
        }
        match op.op {
            Operation::Deploy => {
                u.stack.retain(|r| !same(r, to));
                u.stack.push(to.clone());
            }
            _ => {
                if let Some(from) = &op.from
                    && !same(from, to)
                {
                    u.rolled_back_from.extend(keys(from));
                }
                match u.stack.iter().rposition(|r| same(r, to)) {
                    Some(at) => {
                        for popped in u.stack.drain(at + 1..) {
                            u.rolled_back_from.extend(keys(&popped));
                        }
                        // The stack keeps what was recorded at the deploy, refreshed by this op.
                        u.stack[at] = to.clone();
                    }
                    None => {
                        if let Some(top) = u.stack.last()
                            && op.from.as_ref().is_some_and(|f| same(f, top))
                        {
                            u.stack.pop();
                        }
                        u.stack.push(to.clone());
                    }
                }
            }
        }
        for k in keys(to) {
            u.rolled_back_from.remove(&k);
        }
    }
    u
}

/// What `previous` must skip: versions whose last validation failed, and versions (or digests)
/// rolled back from (until deployed again).
pub fn skipped_by_previous(ops: &[OperationView]) -> HashSet<String> {
    let mut out = failed_versions(ops);
    out.extend(undo(ops).rolled_back_from);
    out
}

/// `previous`: undo. The image below `current` on the undo stack, skipping versions whose
/// validation failed and versions rolled back from. `None` when the journal has no such image
/// (the caller then takes the next lower version).
pub fn previous(ops: &[OperationView], current: Option<&ImageRef>) -> Option<ImageRef> {
    let skip = skipped_by_previous(ops);
    undo(ops)
        .stack
        .into_iter()
        .rev()
        .find(|r| !current.is_some_and(|c| same(r, c)) && !keys(r).any(|k| skip.contains(&k)))
}

/// The operation that last put something on the target and completed: what should run there
/// now, unless something else changed it since (drift).
pub fn last_committed(ops: &[OperationView]) -> Option<&OperationView> {
    ops.iter()
        .rev()
        .find(|o| o.op.moves_target() && o.result == Some(Outcome::Ok) && o.to.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::digest::Digest;

    fn rec(id: &str, op: Operation, phase: Phase, to: &str, result: Option<Outcome>) -> Record {
        Record {
            to: Some(ImageRef {
                version: Some(to.into()),
                ..Default::default()
            }),
            result,
            ..Record::new(id, DateTime::from_timestamp(1_700_000_000, 0).unwrap(), op, phase)
        }
    }

    fn deploy(id: &str, to: &str, result: Outcome) -> Vec<Record> {
        vec![
            rec(id, Operation::Deploy, Phase::Started, to, None),
            rec(id, Operation::Deploy, Phase::Finished, to, Some(result)),
        ]
    }

    /// A release's journal read for one service: its own images, its own last mark.
    #[test]
    fn a_release_journal_speaks_of_each_service_by_its_own_image() {
        let digest = |c: char| Some(Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap());
        let image = |v: &str, c: char| ImageRef {
            version: Some(v.into()),
            digest: digest(c),
            ..Default::default()
        };
        let mut records = deploy("1", "1.1.0", Outcome::Ok);
        records[0].to = Some(image("1.1.0", 'a'));
        records[1].to = Some(image("1.1.0", 'a'));
        records[0].services = BTreeMap::from([
            ("web".to_string(), image("1.1.0", 'a')),
            ("worker".to_string(), image("1.1.0", 'b')),
        ]);
        let mut mark = rec("2", Operation::MarkGood, Phase::Started, "1.1.0", None);
        mark.services = records[0].services.clone();
        records.push(mark.clone());
        records.push(mark.finish(
            DateTime::from_timestamp(1_700_000_100, 0).unwrap(),
            Outcome::Ok,
            None,
            None,
        ));
        let ops = operations(&records);
        let worker = for_service(&ops, "worker");
        assert_eq!(deployed_versions(&worker)[0].digest, digest('b'));
        assert_eq!(
            deployed_versions(&ops)[0].digest,
            digest('a'),
            "the release's own is the first service's"
        );
        assert_eq!(
            marked_good_service(&ops, "worker").and_then(|i| i.digest.clone()),
            digest('b')
        );
        assert_eq!(marked_good_service(&ops, "cron"), None);
        // A service no operation names keeps the operations' own images.
        assert_eq!(deployed_versions(&for_service(&ops, "cron"))[0].digest, digest('a'));
    }

    #[test]
    fn previous_walks_back_skipping_current_and_failed() {
        type Case<'a> = (&'a [(&'a str, &'a str, Outcome)], Option<&'a str>, Option<&'a str>);
        let cases: &[Case] = &[
            // history, current, expected previous
            (
                &[("a", "1.0.0", Outcome::Ok), ("b", "1.1.0", Outcome::Ok)],
                Some("1.1.0"),
                Some("1.0.0"),
            ),
            (&[("a", "1.0.0", Outcome::Ok)], Some("1.0.0"), None),
            (&[], Some("1.0.0"), None),
            // 1.2.0 failed after 1.1.0: previous from 1.1.0 is 1.0.0, never 1.2.0
            (
                &[
                    ("a", "1.0.0", Outcome::Ok),
                    ("b", "1.1.0", Outcome::Ok),
                    ("c", "1.2.0", Outcome::Reverted),
                ],
                Some("1.1.0"),
                Some("1.0.0"),
            ),
            // a version that once failed but later passed is eligible again
            (
                &[
                    ("a", "1.0.0", Outcome::Reverted),
                    ("b", "1.0.0", Outcome::Ok),
                    ("c", "1.1.0", Outcome::Ok),
                ],
                Some("1.1.0"),
                Some("1.0.0"),
            ),
            // a version deployed ok earlier but failed on its last attempt is skipped
            (
                &[
                    ("a", "0.9.0", Outcome::Ok),
                    ("b", "1.0.0", Outcome::Ok),
                    ("c", "1.1.0", Outcome::Ok),
                    ("d", "1.0.0", Outcome::RevertFailed),
                ],
                Some("1.1.0"),
                Some("0.9.0"),
            ),
            // rolling back and forth: the most recent other version wins
            (
                &[
                    ("a", "1.0.0", Outcome::Ok),
                    ("b", "1.1.0", Outcome::Ok),
                    ("c", "1.0.0", Outcome::Ok),
                ],
                Some("1.0.0"),
                Some("1.1.0"),
            ),
        ];
        for (history, current, want) in cases {
            let records: Vec<Record> = history.iter().flat_map(|(id, v, o)| deploy(id, v, *o)).collect();
            let current = current.map(|v| ImageRef {
                version: Some(v.into()),
                ..Default::default()
            });
            let got = previous(&operations(&records), current.as_ref());
            assert_eq!(
                got.and_then(|r| r.version).as_deref(),
                *want,
                "history {history:?} current {current:?}"
            );
        }
    }

    /// A version as the journal records it; "" is nothing (no container ran).
    fn v(s: &str) -> Option<ImageRef> {
        (!s.is_empty()).then(|| ImageRef {
            version: Some(s.into()),
            ..Default::default()
        })
    }

    fn moved(id: &str, op: Operation, from: &str, to: &str, result: Outcome) -> Vec<Record> {
        let started = Record {
            from: v(from),
            to: v(to),
            ..Record::new(
                id,
                DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
                op,
                Phase::Started,
            )
        };
        let finished = started.finish(started.at, result, None, None);
        vec![started, finished]
    }

    #[test]
    fn previous_is_an_undo_stack() {
        use Operation::{Deploy as D, Emergency as E, Rollback as R};
        type Step<'a> = (Operation, &'a str, &'a str);
        // history (op, from, to), current, expected previous, expected rolled-back-from
        type Case<'a> = (&'a [Step<'a>], &'a str, Option<&'a str>, &'a [&'a str]);
        let cases: &[Case] = &[
            // rollback twice goes further back, never forward to the version just left
            (
                &[
                    (D, "", "1.0.0"),
                    (D, "1.0.0", "1.1.0"),
                    (D, "1.1.0", "1.2.0"),
                    (R, "1.2.0", "1.1.0"),
                ],
                "1.1.0",
                Some("1.0.0"),
                &["1.2.0"],
            ),
            (
                &[
                    (D, "", "1.0.0"),
                    (D, "1.0.0", "1.1.0"),
                    (D, "1.1.0", "1.2.0"),
                    (R, "1.2.0", "1.1.0"),
                    (R, "1.1.0", "1.0.0"),
                ],
                "1.0.0",
                None,
                &["1.1.0", "1.2.0"],
            ),
            // deployed again: no longer skipped
            (
                &[
                    (D, "", "1.0.0"),
                    (D, "1.0.0", "1.1.0"),
                    (R, "1.1.0", "1.0.0"),
                    (D, "1.0.0", "1.1.0"),
                ],
                "1.1.0",
                Some("1.0.0"),
                &[],
            ),
            // a rollback to a version that was never on the stack pops the one it left
            (
                &[(D, "", "1.0.0"), (D, "1.0.0", "1.1.0"), (R, "1.1.0", "0.9.0")],
                "0.9.0",
                Some("1.0.0"),
                &["1.1.0"],
            ),
            // an emergency to last_known_good pops like a rollback
            (
                &[
                    (D, "", "1.0.0"),
                    (D, "1.0.0", "1.1.0"),
                    (D, "1.1.0", "1.2.0"),
                    (E, "1.2.0", "1.0.0"),
                ],
                "1.0.0",
                None,
                &["1.1.0", "1.2.0"],
            ),
            // a redeploy moves the version to the top instead of repeating it
            (
                &[
                    (D, "", "1.0.0"),
                    (D, "1.0.0", "1.1.0"),
                    (D, "1.1.0", "1.0.0"),
                    (D, "1.0.0", "1.2.0"),
                ],
                "1.2.0",
                Some("1.0.0"),
                &[],
            ),
        ];
        for (steps, current, want, skipped) in cases {
            let records: Vec<Record> = steps
                .iter()
                .enumerate()
                .flat_map(|(i, (op, from, to))| moved(&i.to_string(), *op, from, to, Outcome::Ok))
                .collect();
            let ops = operations(&records);
            let got = previous(&ops, v(current).as_ref()).and_then(|r| r.version);
            assert_eq!(got.as_deref(), *want, "steps {steps:?}");
            let mut rolled: Vec<String> = undo(&ops).rolled_back_from.into_iter().collect();
            rolled.sort();
            assert_eq!(rolled, *skipped, "steps {steps:?}");
        }
    }

    /// An image in a short notation: `[TAG:][VERSION][@X]`, X one hex digit repeated into the
    /// digest; "" is nothing.
    fn img(s: &str) -> Option<ImageRef> {
        if s.is_empty() {
            return None;
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, x)) => (rest, Some(Digest::parse(&format!("sha256:{}", x.repeat(64))).unwrap())),
            None => (s, None),
        };
        let (tag, version) = match rest.split_once(':') {
            Some((tag, version)) => (Some(tag.to_string()), version),
            None => (None, rest),
        };
        Some(ImageRef {
            tag,
            version: (!version.is_empty()).then(|| version.to_string()),
            digest,
        })
    }

    /// The notation of `img`, back.
    fn show(r: &ImageRef) -> String {
        let tag = r.tag.as_ref().map(|t| format!("{t}:")).unwrap_or_default();
        let digest = r
            .digest
            .as_ref()
            .map(|d| format!("@{}", &d.to_string()["sha256:".len()..][..1]))
            .unwrap_or_default();
        format!("{tag}{}{digest}", r.version.as_deref().unwrap_or_default())
    }

    #[test]
    fn the_undo_stack_starts_with_what_ran_before_the_first_move() {
        use Operation::{Deploy as D, Drill, Emergency as E, MarkGood, Rollback as R};
        use Outcome::{Failed, Ok, Reverted, RolledBackAfterCrash, Unchanged};
        type Step<'a> = (Operation, &'a str, &'a str, Outcome);
        // history (op, from, to, result), current, expected previous (`img` notation)
        type Case<'a> = (&'a str, &'a [Step<'a>], &'a str, Option<&'a str>);
        let cases: &[Case] = &[
            (
                "started by hand on 1.0.0, deployed to 1.2.0 while 1.1.0 is in the registry",
                &[(D, "1.0.0@a", "1.2.0@c", Ok)],
                "1.2.0@c",
                Some("1.0.0@a"),
            ),
            (
                "the bottom stays below later deploys",
                &[
                    (D, "1.0.0", "1.1.0", Ok),
                    (D, "1.1.0", "1.2.0", Ok),
                    (R, "1.2.0", "1.1.0", Ok),
                ],
                "1.1.0",
                Some("1.0.0"),
            ),
            (
                "rolled back to it, there is nothing below",
                &[(D, "1.0.0", "1.2.0", Ok), (R, "1.2.0", "1.0.0", Ok)],
                "1.0.0",
                None,
            ),
            (
                "a first deploy that was reverted left it running",
                &[(D, "1.0.0", "1.2.0", Reverted), (D, "1.0.0", "1.1.0", Ok)],
                "1.1.0",
                Some("1.0.0"),
            ),
            (
                "a first deploy settled after a crash left it running",
                &[(D, "1.0.0", "1.2.0", RolledBackAfterCrash), (D, "1.0.0", "1.1.0", Ok)],
                "1.1.0",
                Some("1.0.0"),
            ),
            (
                "the first move that completed names what it replaced, a change by hand included",
                &[(D, "1.0.0", "1.2.0", Failed), (D, "1.0.5", "1.2.0", Ok)],
                "1.2.0",
                Some("1.0.5"),
            ),
            (
                "a first deploy that found it already there",
                &[(D, "1.0.0", "1.0.0", Unchanged), (D, "1.0.0", "1.2.0", Ok)],
                "1.2.0",
                Some("1.0.0"),
            ),
            (
                "a non-version tag: by digest, and the tag that moved since is dropped",
                &[(D, "latest:@a", "1.2.0@c", Ok)],
                "1.2.0@c",
                Some("@a"),
            ),
            (
                "a version tag is kept beside the digest",
                &[(D, "v1.0.0:@a", "1.2.0@c", Ok)],
                "1.2.0@c",
                Some("v1.0.0:@a"),
            ),
            ("started by digest", &[(D, "@a", "1.2.0@c", Ok)], "1.2.0@c", Some("@a")),
            (
                "neither version nor digest: no bottom, the caller takes the next lower version",
                &[(D, "latest:", "1.2.0@c", Ok)],
                "1.2.0@c",
                None,
            ),
            ("nothing ran before", &[(D, "", "1.2.0", Ok)], "1.2.0", None),
            (
                "known by its digest first and by its version later: one image, not offered again",
                &[(D, "@a", "1.2.0@c", Ok), (R, "1.2.0@c", "1.0.0@a", Ok)],
                "1.0.0@a",
                None,
            ),
            (
                "deployed by version later: it is what runs, so previous is the one below",
                &[(D, "@a", "1.2.0@c", Ok), (D, "1.2.0@c", "1.0.0@a", Ok)],
                "1.0.0@a",
                Some("1.2.0@c"),
            ),
            (
                "a first move that is a rollback pops it: the image it left is rolled back from",
                &[(R, "1.2.0", "1.1.0", Ok)],
                "1.1.0",
                None,
            ),
            (
                "a first move that is an emergency leaves a bad version: never offered",
                &[(E, "1.2.0", "1.0.0", Ok)],
                "1.0.0",
                None,
            ),
            (
                "an emergency back to it after the first deploy",
                &[(D, "1.0.0", "1.2.0", Ok), (E, "1.2.0", "1.0.0", Ok)],
                "1.0.0",
                None,
            ),
            (
                "a drill's or a mark-good's from is not what ran before",
                &[
                    (Drill, "0.9.0", "1.1.0", Ok),
                    (MarkGood, "0.8.0", "1.1.0", Ok),
                    (D, "1.0.0", "1.2.0", Ok),
                ],
                "1.2.0",
                Some("1.0.0"),
            ),
            (
                "drills alone are no history",
                &[(Drill, "1.0.0", "1.1.0", Ok)],
                "1.0.0",
                None,
            ),
        ];
        for (why, steps, current, want) in cases {
            let records: Vec<Record> = steps
                .iter()
                .enumerate()
                .flat_map(|(i, (op, from, to, result))| {
                    let started = Record {
                        from: img(from),
                        to: img(to),
                        ..Record::new(
                            &i.to_string(),
                            DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
                            *op,
                            Phase::Started,
                        )
                    };
                    let finished = started.finish(started.at, *result, None, None);
                    [started, finished]
                })
                .collect();
            let got = previous(&operations(&records), img(current).as_ref());
            assert_eq!(got.as_ref().map(show).as_deref(), *want, "{why}");
        }
    }

    #[test]
    fn an_unreachable_probe_does_not_fail_the_version() {
        let mut records = deploy("a", "1.0.0", Outcome::Ok);
        records.extend(deploy("b", "1.1.0", Outcome::RevertedProbeUnreachable));
        records.extend(deploy("c", "1.2.0", Outcome::Reverted));
        let failed = failed_versions(&operations(&records));
        assert!(!failed.contains("1.1.0"));
        assert!(failed.contains("1.2.0"));
    }

    #[test]
    fn last_committed_is_the_last_completed_move() {
        let mut records = deploy("a", "1.0.0", Outcome::Ok);
        records.extend(moved("b", Operation::Rollback, "1.0.0", "0.9.0", Outcome::Ok));
        records.extend(deploy("c", "1.2.0", Outcome::Reverted));
        records.push(rec("d", Operation::MarkGood, Phase::Started, "1.2.0", None));
        let ops = operations(&records);
        let last = last_committed(&ops).unwrap();
        assert_eq!(last.to.as_ref().and_then(|t| t.version.as_deref()), Some("0.9.0"));
    }

    #[test]
    fn previous_after_an_emergency_skips_the_version_it_left() {
        let mut records = deploy("a", "1.0.0", Outcome::Ok);
        records.extend(deploy("b", "1.1.0", Outcome::Ok));
        let mut started = rec("c", Operation::Emergency, Phase::Started, "1.0.0", None);
        started.from = Some(ImageRef {
            version: Some("1.1.0".into()),
            ..Default::default()
        });
        records.push(started.finish(started.at, Outcome::Ok, None, None));
        records.insert(records.len() - 1, started);
        records.extend(deploy("d", "0.9.0", Outcome::Ok));
        let ops = operations(&records);
        assert!(failed_versions(&ops).contains("1.1.0"));
        assert_eq!(
            previous(&ops, v("0.9.0").as_ref()).and_then(|r| r.version).as_deref(),
            Some("1.0.0")
        );
    }

    #[test]
    fn a_drill_never_counts_as_a_deploy_for_previous_failed_versions_or_drift() {
        let mut records = deploy("a", "1.0.0", Outcome::Ok);
        records.extend(deploy("b", "1.1.0", Outcome::Ok));
        let before = operations(&records);
        let (prev, failed, last) = (
            previous(&before, v("1.1.0").as_ref()),
            failed_versions(&before),
            last_committed(&before).map(|o| o.id.clone()),
        );
        // A good drill of 0.9.0 and a failing drill of 1.0.0, both finished.
        records.push(rec("c", Operation::Drill, Phase::Started, "0.9.0", None));
        records.push(rec("c", Operation::Drill, Phase::Finished, "0.9.0", Some(Outcome::Ok)));
        records.push(rec("d", Operation::Drill, Phase::Started, "1.0.0", None));
        records.push(rec(
            "d",
            Operation::Drill,
            Phase::Finished,
            "1.0.0",
            Some(Outcome::Failed),
        ));
        // And one a crash left open.
        records.push(rec("e", Operation::Drill, Phase::Started, "1.0.0", None));
        let after = operations(&records);
        assert_eq!(previous(&after, v("1.1.0").as_ref()), prev);
        assert_eq!(prev.and_then(|p| p.version).as_deref(), Some("1.0.0"));
        assert_eq!(failed_versions(&after), failed);
        assert!(failed_versions(&after).is_empty());
        assert_eq!(last_committed(&after).map(|o| o.id.clone()), last);
        assert!(
            deployed_versions(&after)
                .iter()
                .all(|r| r.version.as_deref() != Some("0.9.0"))
        );
        assert!(
            open_operations(&records).is_empty(),
            "an open drill is nothing to settle"
        );
    }

    #[test]
    fn open_operations_are_started_without_finished() {
        let mut records = deploy("a", "1.0.0", Outcome::Ok);
        records.push(rec("b", Operation::Rollback, Phase::Started, "0.9.0", None));
        records.push(rec("c", Operation::MarkGood, Phase::Started, "0.9.0", None));
        records.push(rec("d", Operation::Deploy, Phase::Started, "1.1.0", None));
        records.push(rec("d", Operation::Deploy, Phase::Committed, "1.1.0", None));
        let open = open_operations(&records);
        let got: Vec<(&str, bool)> = open.iter().map(|(r, c)| (r.id.as_str(), *c)).collect();
        assert_eq!(got, [("b", false), ("d", true)]);
    }

    #[test]
    fn operations_merge_start_and_finish() {
        let mut records = deploy("a", "1.0.0", Outcome::Ok);
        records.push(rec("b", Operation::Rollback, Phase::Started, "0.9.0", None));
        let ops = operations(&records);
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].result, Some(Outcome::Ok));
        assert_eq!(ops[1].result, None);
    }
}
