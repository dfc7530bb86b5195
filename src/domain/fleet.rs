//! Many hosts, one target: the pure rules of a fleet operation. In which waves hosts are swapped
//! (`parallel`, `rolling`, `canary`), which host's lock decides between two runs (the first in
//! one fixed order, so two fleet runs never each keep part of a fleet), which hosts must be put
//! back when one fails (all-or-nothing), what the whole run comes to, and where a fleet drifts (hosts on
//! different digests), and how the hosts' journals come together as fleet operations. No IO:
//! hosts are indexes and facts, handed in.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::domain::history::{Operation, OperationView};

/// How the hosts of a fleet are swapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// All at once: the default for `rollback` and `emergency`, where speed matters.
    Parallel,
    /// `batch` hosts at a time, each batch validated before the next: the default for `deploy`.
    Rolling,
    /// The first host, validated and kept healthy for `canary_soak`, then the rest at once.
    Canary,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Parallel => "parallel",
            Self::Rolling => "rolling",
            Self::Canary => "canary",
        }
    }

    /// The strategy when none is configured: rollbacks are about speed, deploys about care.
    pub fn default_for(op: Operation) -> Self {
        match op {
            Operation::Deploy => Self::Rolling,
            _ => Self::Parallel,
        }
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "parallel" => Ok(Self::Parallel),
            "rolling" => Ok(Self::Rolling),
            "canary" => Ok(Self::Canary),
            other => Err(format!("use strategy '{other}': expected parallel, rolling or canary")),
        }
    }
}

/// The waves of a run over `hosts` hosts (indexes, in the fleet's order): a wave starts only
/// when every host of the one before validated.
pub fn waves(hosts: usize, strategy: Strategy, batch: usize) -> Vec<Vec<usize>> {
    let all: Vec<usize> = (0..hosts).collect();
    if hosts == 0 {
        return Vec::new();
    }
    match strategy {
        Strategy::Parallel => vec![all],
        Strategy::Rolling => all.chunks(batch.max(1)).map(<[usize]>::to_vec).collect(),
        Strategy::Canary if hosts == 1 => vec![all],
        Strategy::Canary => vec![vec![0], all[1..].to_vec()],
    }
}

/// The hosts in lock order: by address, the same for every run whatever order the config or
/// `--hosts` lists them in. The first decides between two runs (`ops::fleet::lock_all`).
pub fn lock_order(addresses: &[String]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..addresses.len()).collect();
    order.sort_by(|a, b| addresses[*a].cmp(&addresses[*b]).then(a.cmp(b)));
    order
}

/// Where one host stands in a fleet run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostStep {
    /// Not started (the run stopped before its wave).
    NotStarted,
    /// Unreachable at the start and skipped (`--skip-unreachable`).
    Skipped,
    /// Already ran the chosen digest: nothing to do.
    Unchanged,
    /// Swapped and validated; its previous containers are still set aside.
    Validated,
    /// Validated, then failed its canary soak; its previous containers are still set aside.
    SoakFailed,
    /// Failed before anything changed on it (its pull, the record of intent, or the engine
    /// refused the change).
    FailedNothingChanged,
    /// Failed validation (or its swap failed) and its own previous version is back.
    FailedReverted,
    /// Failed, and putting its previous version back failed too.
    FailedNotReverted,
    /// Became unreachable mid-run: what it runs is unknown until the next run settles it.
    Lost,
    /// Put back because another host failed.
    Reverted,
    /// Putting it back (because another host failed) failed.
    RevertFailed,
    /// Validated everywhere and committed.
    Committed,
}

impl HostStep {
    /// This host stopped the run.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Self::SoakFailed | Self::FailedNothingChanged | Self::FailedReverted | Self::FailedNotReverted | Self::Lost
        )
    }

    /// A person must look at this host: what it runs is not what it ran nor what was chosen.
    pub fn needs_a_person(self) -> bool {
        matches!(self, Self::FailedNotReverted | Self::Lost | Self::RevertFailed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "not started",
            Self::Skipped => "skipped (unreachable)",
            Self::Unchanged => "unchanged",
            Self::Validated => "validated",
            Self::SoakFailed => "failed its soak, reverted",
            Self::FailedNothingChanged => "failed, nothing changed",
            Self::FailedReverted => "failed, reverted",
            Self::FailedNotReverted => "failed, NOT reverted",
            Self::Lost => "unreachable mid-run",
            Self::Reverted => "reverted",
            Self::RevertFailed => "revert FAILED",
            Self::Committed => "done",
        }
    }
}

/// Whether the run may start another wave: only while no host failed.
pub fn may_continue(steps: &[HostStep]) -> bool {
    !steps.iter().any(|s| s.is_failure())
}

/// The hosts to put back: once any host failed, every host still holding a swapped version
/// (validated, or validated and failed its soak). None when nothing failed.
pub fn must_revert(steps: &[HostStep]) -> Vec<usize> {
    if may_continue(steps) {
        return Vec::new();
    }
    steps
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, HostStep::Validated | HostStep::SoakFailed))
        .map(|(i, _)| i)
        .collect()
}

/// What a whole run came to, once reverts are done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every host runs the chosen version (or already did).
    Done,
    /// A host failed and every host runs its previous version again.
    RevertedEverywhere { failed: Vec<usize> },
    /// A host failed and these hosts could not be put back (or could not be reached): a person
    /// must act on them.
    NeedsAPerson { failed: Vec<usize>, hosts: Vec<usize> },
}

pub fn verdict(steps: &[HostStep]) -> Verdict {
    let failed: Vec<usize> = (0..steps.len()).filter(|i| steps[*i].is_failure()).collect();
    let person: Vec<usize> = (0..steps.len()).filter(|i| steps[*i].needs_a_person()).collect();
    if !person.is_empty() {
        Verdict::NeedsAPerson { failed, hosts: person }
    } else if !failed.is_empty() {
        Verdict::RevertedEverywhere { failed }
    } else {
        Verdict::Done
    }
}

/// `on HOST: why; on HOST: why` for the hosts at `which` of `(host, detail)` rows.
pub fn on_hosts(rows: &[(&str, Option<&str>)], which: &[usize]) -> String {
    which
        .iter()
        .map(|i| format!("on {}: {}", rows[*i].0, rows[*i].1.unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Hosts grouped by the digest they run (`None`: nothing runs, or it has no digest). More than
/// one group is drift.
pub fn by_digest<'a>(hosts: &[(&'a str, Option<&'a str>)]) -> BTreeMap<Option<&'a str>, Vec<&'a str>> {
    let mut groups: BTreeMap<Option<&str>, Vec<&str>> = BTreeMap::new();
    for (host, digest) in hosts {
        groups.entry(*digest).or_default().push(host);
    }
    groups
}

/// The `versions` mark of a digest: `deployed` on every host, else `deployed 2/3 hosts`.
pub fn deployed_mark(on: usize, of: usize) -> Option<String> {
    match (on, of) {
        (0, _) => None,
        (on, of) if on == of => Some("deployed".into()),
        (on, of) => Some(format!("deployed {on}/{of} hosts")),
    }
}

/// One operation as the fleet's journals tell it: every host's journal has it under the one
/// shared id (`fleet-…`); a host with nothing to do wrote nothing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FleetOperation {
    pub id: String,
    /// When the first host started it.
    pub started: DateTime<Utc>,
    pub op: Operation,
    /// Each host's own record of it, in the order the hosts were handed in.
    pub hosts: Vec<HostOperation>,
}

/// One host's part of a fleet operation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostOperation {
    pub address: String,
    #[serde(flatten)]
    pub op: OperationView,
}

impl FleetOperation {
    /// The first host's view, for what every host shares (who, why, to which version).
    pub fn first(&self) -> &OperationView {
        &self.hosts[0].op
    }

    /// The results in one line: `ok on 3/3 hosts`, else each result with its hosts
    /// (`reverted: a, b; revert-failed: c`). Hosts are named without scheme and user.
    pub fn summary(&self, of: usize) -> String {
        let result = |h: &HostOperation| h.op.result.map_or("unfinished", |r| r.as_str());
        let mut by: Vec<(&str, Vec<&str>)> = Vec::new();
        for h in &self.hosts {
            match by.iter_mut().find(|(r, _)| *r == result(h)) {
                Some((_, hosts)) => hosts.push(short_host(&h.address)),
                None => by.push((result(h), vec![short_host(&h.address)])),
            }
        }
        if let [(r, hosts)] = by.as_slice() {
            return format!("{r} on {}/{of} hosts", hosts.len());
        }
        by.iter()
            .map(|(r, hosts)| format!("{r}: {}", hosts.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A host address without its scheme and user: `ssh://deploy@10.0.0.2:22` -> `10.0.0.2:22`.
pub fn short_host(address: &str) -> &str {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    rest.rsplit_once('@').map_or(rest, |(_, r)| r)
}

/// The fleet's operations from every host's operations (oldest first): operations under one id
/// on several hosts are one fleet operation.
pub fn fleet_operations(journals: Vec<(String, Vec<OperationView>)>) -> Vec<FleetOperation> {
    let mut by_id: BTreeMap<String, FleetOperation> = BTreeMap::new();
    for (address, ops) in journals {
        for op in ops {
            let fleet_op = by_id.entry(op.id.clone()).or_insert_with(|| FleetOperation {
                id: op.id.clone(),
                started: op.started,
                op: op.op,
                hosts: Vec::new(),
            });
            fleet_op.started = fleet_op.started.min(op.started);
            fleet_op.hosts.push(HostOperation {
                address: address.clone(),
                op,
            });
        }
    }
    let mut all: Vec<FleetOperation> = by_id.into_values().collect();
    all.sort_by(|a, b| a.started.cmp(&b.started).then_with(|| a.id.cmp(&b.id)));
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use HostStep::*;

    #[test]
    fn waves_follow_the_strategy() {
        let cases: &[(usize, Strategy, usize, &[&[usize]])] = &[
            (3, Strategy::Parallel, 1, &[&[0, 1, 2]]),
            (3, Strategy::Rolling, 1, &[&[0], &[1], &[2]]),
            (5, Strategy::Rolling, 2, &[&[0, 1], &[2, 3], &[4]]),
            (2, Strategy::Rolling, 0, &[&[0], &[1]]),
            (3, Strategy::Canary, 1, &[&[0], &[1, 2]]),
            (1, Strategy::Canary, 1, &[&[0]]),
            (0, Strategy::Parallel, 1, &[]),
        ];
        for (n, s, batch, want) in cases {
            let want: Vec<Vec<usize>> = want.iter().map(|w| w.to_vec()).collect();
            assert_eq!(waves(*n, *s, *batch), want, "{n} hosts, {s:?}, batch {batch}");
        }
    }

    #[test]
    fn default_strategy_is_rolling_for_deploy_and_parallel_for_rollback() {
        assert_eq!(Strategy::default_for(Operation::Deploy), Strategy::Rolling);
        assert_eq!(Strategy::default_for(Operation::Rollback), Strategy::Parallel);
        assert_eq!(Strategy::default_for(Operation::Emergency), Strategy::Parallel);
        assert!("sideways".parse::<Strategy>().is_err());
        assert_eq!("canary".parse::<Strategy>(), Ok(Strategy::Canary));
    }

    #[test]
    fn locks_are_taken_in_one_order_whatever_the_listing() {
        let a = ["ssh://b:22".to_string(), "ssh://a:22".into(), "ssh://c:22".into()];
        let b = ["ssh://c:22".to_string(), "ssh://b:22".into(), "ssh://a:22".into()];
        let names = |list: &[String]| lock_order(list).iter().map(|i| list[*i].clone()).collect::<Vec<_>>();
        assert_eq!(names(&a), names(&b));
        assert_eq!(names(&a)[0], "ssh://a:22");
    }

    #[test]
    fn which_hosts_must_be_reverted() {
        let cases: &[(&[HostStep], &[usize])] = &[
            (&[Validated, Validated], &[]),
            (&[Validated, FailedReverted, NotStarted], &[0]),
            (&[Validated, Validated, Lost], &[0, 1]),
            (&[SoakFailed, NotStarted, NotStarted], &[0]),
            (&[Unchanged, Validated, FailedNotReverted], &[1]),
            (&[Skipped, Validated, FailedReverted], &[1]),
        ];
        for (steps, want) in cases {
            assert_eq!(must_revert(steps), want.to_vec(), "{steps:?}");
        }
    }

    #[test]
    fn verdict_names_hosts_a_person_must_look_at() {
        assert_eq!(verdict(&[Committed, Unchanged, Skipped]), Verdict::Done);
        assert_eq!(
            verdict(&[Reverted, FailedReverted, NotStarted]),
            Verdict::RevertedEverywhere { failed: vec![1] }
        );
        assert_eq!(
            verdict(&[RevertFailed, FailedReverted]),
            Verdict::NeedsAPerson {
                failed: vec![1],
                hosts: vec![0]
            }
        );
        assert_eq!(
            verdict(&[Reverted, Lost]),
            Verdict::NeedsAPerson {
                failed: vec![1],
                hosts: vec![1]
            }
        );
        assert!(!may_continue(&[Validated, Lost]));
        assert!(may_continue(&[Validated, Unchanged, NotStarted]));
    }

    #[test]
    fn drift_groups_hosts_by_digest_and_marks_count_hosts() {
        let g = by_digest(&[
            ("h1", Some("sha256:a")),
            ("h2", Some("sha256:b")),
            ("h3", Some("sha256:a")),
        ]);
        assert_eq!(g.len(), 2);
        assert_eq!(g[&Some("sha256:a")], vec!["h1", "h3"]);
        assert_eq!(deployed_mark(2, 3).as_deref(), Some("deployed 2/3 hosts"));
        assert_eq!(deployed_mark(3, 3).as_deref(), Some("deployed"));
        assert_eq!(deployed_mark(0, 3), None);
    }

    fn view(id: &str, minute: u32, result: Option<crate::domain::history::Outcome>) -> OperationView {
        use chrono::TimeZone as _;
        OperationView {
            id: id.into(),
            started: Utc.with_ymd_and_hms(2026, 1, 1, 0, minute, 0).unwrap(),
            op: Operation::Rollback,
            user: None,
            host: None,
            target: None,
            from: None,
            to: None,
            reason: None,
            result,
            duration_ms: None,
            detail: None,
            containers: Vec::new(),
            notes: Vec::new(),
            logs: Vec::new(),
            configs: std::collections::BTreeMap::new(),
            services: std::collections::BTreeMap::new(),
            results: std::collections::BTreeMap::new(),
        }
    }

    #[test]
    fn one_id_on_several_hosts_is_one_fleet_operation_with_a_summary_per_host() {
        use crate::domain::history::Outcome::*;
        let ops = fleet_operations(vec![
            (
                "ssh://u@a:22".into(),
                vec![view("fleet-1", 2, Some(Ok)), view("fleet-2", 5, Some(Reverted))],
            ),
            (
                "ssh://u@b:22".into(),
                vec![view("fleet-1", 1, Some(Ok)), view("fleet-2", 5, Some(RevertFailed))],
            ),
            ("unix:///var/run/docker.sock".into(), vec![view("fleet-2", 4, None)]),
        ]);
        assert_eq!(
            ops.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
            ["fleet-1", "fleet-2"]
        );
        assert_eq!(
            ops[0].started.format("%M").to_string(),
            "01",
            "the earliest host's start"
        );
        assert_eq!(ops[0].summary(3), "ok on 2/3 hosts");
        assert_eq!(
            ops[1].summary(3),
            "reverted: a:22; revert-failed: b:22; unfinished: /var/run/docker.sock"
        );
    }
}
