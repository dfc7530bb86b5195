//! One operation lifecycle for every target: a deploy or rollback of containers on one host, of
//! containers on many hosts, and of a Swarm service all run through [`execute`]. A host is a
//! fleet of one.
//!
//! The lifecycle is written once: for each wave of the strategy, every unit in it gets ready
//! (`prepare`: the pull; nothing changes), has its intent recorded in its own journal, is changed
//! and validated (`apply`); the canary wave soaks; then the `post` hook has the last word. All or
//! nothing: on any failure no new unit starts and every unit that changed is put back
//! (`put_back`), the `on_revert` hook runs once, and each journal gets its unit's ending. When
//! every unit validated, each one commits (`commit`: the `committed` record while what was set
//! aside is removed) and finishes. One notification tells the whole operation.
//!
//! What differs between kinds of target lives behind [`Unit`]: `ops::swap::Containers` (the
//! containers of one target on one host, swapped by backtrack) and `ops::swarm::Service` (a
//! service that Swarm updates). The order of waves, which units to put back and the verdict are
//! the pure rules of `domain::fleet`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use futures::future::join_all;

use crate::adapters::registry::PullAuth;
use crate::adapters::state::{Journal, StateError};
use crate::domain::fleet::{self, HostStep, Strategy, Verdict};
use crate::domain::history::{Outcome, Phase, Record};
use crate::ops::fleet::HostResult;
use crate::ops::hooks::{self, HookEnv, Hooks};
use crate::ops::{interrupt, notify};
use crate::output::{Printer, Progress};
use crate::settings::{HealthSettings, NotifySection};

/// Why a unit failed while it was being changed or validated.
#[derive(Debug, Default)]
pub struct Failed {
    pub why: String,
    /// The failing container's (or task's) last lines of output.
    pub logs: Vec<String>,
    /// Only the probe failed, and it never reached anything: the version is not marked failed.
    pub probe_unreachable: bool,
    /// Nothing was changed after all (the orchestrator refused the change): no put back, and the
    /// journal records the operation as failed.
    pub nothing_changed: bool,
    /// With `nothing_changed`: the intent itself could not be written (`Unit::record` left it to
    /// `apply`, which sends it with the change), so there is no ending to record either.
    pub unrecorded: bool,
    /// With `nothing_changed`: the error to answer with.
    pub error: Option<anyhow::Error>,
}

/// One place an operation changes: what each kind of target implements.
#[async_trait]
pub trait Unit: Send + Sync {
    /// Where it is, for messages and the report (a host's address).
    fn place(&self) -> &str;
    /// The journal of this unit's target (on its host).
    fn journal(&self) -> &Journal;
    /// The `started` record: `base` plus what this unit changes and saves to put it back.
    fn intent(&self, base: &Record) -> Record;
    /// Records the intent before anything changes: appended to the journal now, or (a unit that
    /// can) sent by `apply` with its first change, through a gate on the host that writes it
    /// first (see `ops::swap`). Awaited aside (`Journal::append_all_aside`), so a fleet's hosts
    /// record at once.
    async fn record(&mut self, intent: &Record) -> Result<(), StateError> {
        self.journal().append_all_aside(&[intent]).await
    }
    /// Gets ready without changing anything (the pull); whether something was fetched.
    async fn prepare(&self, run: &Run<'_>) -> anyhow::Result<bool>;
    /// Changes the target and validates it. On failure, whatever was changed is put back by
    /// [`Unit::put_back`].
    async fn apply(&mut self, run: &Run<'_>) -> Result<(), Failed>;
    /// Watches a validated unit for `duration` (canary, `--soak`).
    async fn soak(&self, run: &Run<'_>, duration: Duration) -> Result<(), String>;
    /// Puts back what `apply` changed. Safe to call after a partial apply.
    async fn put_back(&mut self, run: &Run<'_>) -> Result<(), String>;
    /// Makes a validated change final: writes `records` (`committed`, then the operation's
    /// ending), all in one go, while what was set aside goes.
    async fn commit(&mut self, run: &Run<'_>, records: &[&Record]) -> Result<(), StateError>;
    /// Whether the unit's engine still answers (a failure on a host that went away needs a person).
    async fn reachable(&self) -> bool;
    /// From now on, the round trips to the unit's host count toward `phase` (`--verbose`).
    fn phase(&self, phase: &'static str);
    /// A release's unit: the services whose own change failed (their result is `failed`; the
    /// others that were changed are `reverted`).
    fn failed_services(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A release's results per service for its ending (`Record::results`): `outcome` for each service
/// the intent names, `failed: why` for those that failed themselves; empty for one service.
fn service_results(
    intent: &Record,
    outcome: Outcome,
    failed: &[String],
    why: Option<&str>,
) -> BTreeMap<String, String> {
    intent
        .services
        .keys()
        .map(|s| {
            let result = if failed.contains(s) {
                format!("failed: {}", why.unwrap_or("-"))
            } else {
                outcome.as_str().to_string()
            };
            (s.clone(), result)
        })
        .collect()
}

/// Everything a run needs besides its units.
#[derive(Clone)]
pub struct Run<'a> {
    pub printer: &'a Printer,
    pub health: &'a HealthSettings,
    pub auth: Option<&'a PullAuth>,
    pub hooks: &'a Hooks,
    /// Whether `--no-hooks` skipped configured hooks (recorded in the journal).
    pub hooks_skipped: bool,
    pub notify: &'a NotifySection,
    /// How notifications name the target: its environment, else the target.
    pub scope: String,
    /// `host/repository`, for notifications.
    pub repository: String,
    /// A rollback to a higher version than what ran (confirmed).
    pub forward: bool,
    pub strategy: Strategy,
    pub batch: usize,
    pub canary_soak: Duration,
    /// The `started` record every unit's journal gets (one id for the whole operation).
    pub base: Record,
    /// Several hosts: messages name the host, and the hooks and notification list them.
    pub fleet: bool,
}

impl Run<'_> {
    /// A line about one unit (named when there are several).
    pub fn say(&self, place: &str, msg: impl AsRef<str>) {
        if self.fleet {
            self.printer.note(format!("[{place}] {}", msg.as_ref()));
        } else {
            self.printer.note(msg);
        }
    }

    /// A progress line about one unit: a spinner for one host, plain lines for several.
    pub fn progress(&self, place: &str, msg: &str) -> Progress {
        if self.fleet {
            Progress::plain(&format!("[{place}] "), msg)
        } else {
            Progress::new(self.printer, msg)
        }
    }

    fn hook_env(&self, hosts: &[String], result: Option<Outcome>) -> HookEnv {
        HookEnv {
            op: self.base.op.as_str().to_string(),
            from_version: self.base.from.as_ref().and_then(|r| r.version.clone()),
            to_version: self.base.to.as_ref().and_then(|r| r.version.clone()),
            digest: self
                .base
                .to
                .as_ref()
                .and_then(|r| r.digest.as_ref())
                .map(ToString::to_string),
            target: self.base.target.clone().unwrap_or_default(),
            hosts: if self.fleet { hosts.to_vec() } else { Vec::new() },
            result: result.map(|r| r.as_str().to_string()),
            reason: self.base.reason.clone(),
        }
    }
}

/// One unit in a run, and where it stands.
pub struct Slot<'a> {
    /// None: it already runs the chosen version.
    pub unit: Option<Box<dyn Unit + 'a>>,
    pub result: HostResult,
    /// Why it failed before changing anything (a pull, the record of intent).
    pub error: Option<anyhow::Error>,
    /// Its intent, once recorded.
    intent: Option<Record>,
    /// Why it failed on its own (validation, its swap, its soak), without the revert's error.
    pub why: Option<String>,
    /// Why putting it back failed, if it did.
    pub revert_error: Option<String>,
    probe_unreachable: bool,
    pub pulled: bool,
}

impl<'a> Slot<'a> {
    /// `result` as the plan left it (`NotStarted`, or `Unchanged` for a unit of `None`).
    pub fn new(unit: Option<Box<dyn Unit + 'a>>, result: HostResult) -> Self {
        Self {
            unit,
            result,
            error: None,
            intent: None,
            why: None,
            revert_error: None,
            probe_unreachable: false,
            pulled: false,
        }
    }
}

/// How the operation ended as a whole.
#[derive(Debug)]
pub struct Ended {
    pub verdict: Verdict,
    pub outcome: Outcome,
    /// The `post` hook failed (every unit had validated).
    pub post_failed: Option<String>,
    /// A validated unit whose records could not be written: what and why.
    pub not_recorded: Option<String>,
    pub duration_ms: u64,
}

/// Runs the operation on every slot: waves, soak, `post`, then commit everywhere or put back
/// every unit that changed. Never returns early: every journal gets its unit's ending.
pub async fn execute(run: &Run<'_>, slots: &mut [Slot<'_>]) -> Ended {
    let started = Instant::now();
    let mut notes = Vec::new();
    if run.hooks_skipped {
        notes.push("hooks skipped (--no-hooks)".to_string());
    }
    let waves = fleet::waves(slots.len(), run.strategy, run.batch);
    for (n, wave) in waves.iter().enumerate() {
        if !fleet::may_continue(&steps(slots)) || interrupt::requested() {
            break;
        }
        let picked = slots.iter_mut().enumerate().filter(|(i, _)| wave.contains(i));
        join_all(picked.map(|(_, s)| apply_one(run, s, &notes))).await;
        // Canary: the first wave must stay healthy before the others start (or, alone, before
        // the operation commits).
        if run.strategy == Strategy::Canary && n == 0 && !run.canary_soak.is_zero() {
            for s in slots.iter_mut().filter(|s| s.result.step == HostStep::Validated) {
                let Some(unit) = s.unit.as_ref() else { continue };
                run.say(
                    unit.place(),
                    format!(
                        "canary: watching {} for {}",
                        run.base.to.as_ref().map_or("-".into(), |t| t.display()),
                        crate::domain::duration::format(run.canary_soak)
                    ),
                );
                if let Err(why) = unit.soak(run, run.canary_soak).await {
                    s.result.step = HostStep::SoakFailed;
                    s.result.detail = Some(format!("canary soak: {why}"));
                    s.why = s.result.detail.clone();
                }
            }
        }
    }
    let moving = moving(slots);
    let mut to_revert = fleet::must_revert(&steps(slots));
    let interrupted = interrupt::requested() && slots.iter().any(|s| s.result.step == HostStep::NotStarted);
    // Every unit that validated, as the index list `must_revert` gives.
    let validated = |slots: &[Slot<'_>]| -> Vec<usize> {
        (0..slots.len())
            .filter(|i| slots[*i].result.step == HostStep::Validated)
            .collect()
    };
    if interrupted && to_revert.is_empty() {
        // Ctrl-C between waves: what validated so far is put back.
        to_revert = validated(slots);
    }
    // Every unit validated: the `post` hook has the last word, once for the whole operation.
    let mut post_failed = None;
    if to_revert.is_empty() && steps(slots).contains(&HostStep::Validated) {
        match hooks::run(
            run.printer,
            "post",
            run.hooks.post.as_deref(),
            &run.hook_env(&moving, None),
            run.hooks,
        )
        .await
        {
            Ok(done) => notes.extend(done),
            Err(e) => {
                notes.push(e.to_string());
                to_revert = validated(slots);
                post_failed = Some(e.to_string());
            }
        }
    }
    let mut not_recorded = None;
    let failed_any = steps(slots).iter().any(|s| s.is_failure());
    if to_revert.is_empty() && !failed_any && !interrupted {
        let ms = started.elapsed().as_millis() as u64;
        let results = join_all(
            slots
                .iter_mut()
                .filter(|s| s.result.step == HostStep::Validated)
                .map(|s| commit_one(run, s, &notes, ms)),
        )
        .await;
        not_recorded = results.into_iter().flatten().next();
    } else {
        let because = match (&post_failed, interrupted) {
            (Some(e), _) => e.clone(),
            (None, true) if !failed_any => "interrupted".to_string(),
            _ => {
                let failed: Vec<String> = slots
                    .iter()
                    .filter(|s| s.result.step.is_failure())
                    .map(|s| s.result.host.clone())
                    .collect();
                format!("{} failed", failed.join(", "))
            }
        };
        if run.fleet && !to_revert.is_empty() {
            run.printer.note(format!(
                "{because}: putting the previous version back on every swapped host"
            ));
        }
        join_all(
            slots
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| to_revert.contains(i))
                .map(|(_, s)| put_back_one(run, s, &because)),
        )
        .await;
    }
    let verdict = match (fleet::verdict(&steps(slots)), &post_failed) {
        // No unit failed its own validation: the `post` hook did.
        (Verdict::Done, Some(_)) => Verdict::RevertedEverywhere { failed: Vec::new() },
        (Verdict::Done, None) if interrupted => Verdict::RevertedEverywhere { failed: Vec::new() },
        (v, _) => v,
    };
    // Whether any unit changed anything (a unit that failed before its change, such as an update
    // the orchestrator refused, changed nothing: no revert, no `on_revert`, no "reverted").
    let changed_any = slots
        .iter()
        .any(|s| s.intent.is_some() && s.result.step != HostStep::FailedNothingChanged);
    // Only probes that never reached anything failed: the version is not marked failed.
    let failing: Vec<&Slot<'_>> = slots.iter().filter(|s| s.result.step.is_failure()).collect();
    let only_unreachable = post_failed.is_none() && !failing.is_empty() && failing.iter().all(|s| s.probe_unreachable);
    let outcome = match &verdict {
        Verdict::Done => Outcome::Ok,
        Verdict::RevertedEverywhere { .. } if !changed_any => Outcome::Failed,
        Verdict::RevertedEverywhere { .. } if only_unreachable => Outcome::RevertedProbeUnreachable,
        Verdict::RevertedEverywhere { .. } => Outcome::Reverted,
        Verdict::NeedsAPerson { .. } => Outcome::RevertFailed,
    };
    if outcome != Outcome::Ok && changed_any {
        match hooks::run(
            run.printer,
            "on_revert",
            run.hooks.on_revert.as_deref(),
            &run.hook_env(&moving, Some(outcome)),
            run.hooks,
        )
        .await
        {
            Ok(done) => notes.extend(done),
            Err(e) => {
                run.printer.note(format!("warning: {e}"));
                notes.push(e.to_string());
            }
        }
    }
    let duration_ms = started.elapsed().as_millis() as u64;
    // Every unit that recorded its intent gets its ending (validated ones already have theirs).
    for s in slots.iter_mut() {
        let (Some(intent), Some(unit)) = (s.intent.as_ref(), s.unit.as_ref()) else {
            continue;
        };
        let result = match s.result.step {
            HostStep::Committed => continue,
            HostStep::RevertFailed | HostStep::FailedNotReverted | HostStep::Lost => Outcome::RevertFailed,
            HostStep::FailedReverted if s.probe_unreachable => Outcome::RevertedProbeUnreachable,
            HostStep::FailedNothingChanged => Outcome::Failed,
            _ => Outcome::Reverted,
        };
        let record = Record {
            notes: notes.clone(),
            logs: s.result.logs.clone(),
            results: service_results(intent, result, &unit.failed_services(), s.why.as_deref()),
            ..intent.finish(Utc::now(), result, Some(duration_ms), s.result.detail.clone())
        };
        if let Err(e) = unit.journal().append(&record) {
            run.say(unit.place(), format!("warning: could not record the ending: {e}"));
        }
    }
    // One notification for the whole operation, noted in the first journal that has it (none when
    // nothing changed, and none for a validated single target whose records were lost: that run
    // ends in an error that says so).
    if changed_any && (run.fleet || not_recorded.is_none()) {
        let why: Vec<String> = match &post_failed {
            Some(e) => vec![e.clone()],
            None if interrupted && slots.iter().all(|s| !s.result.step.is_failure()) => {
                vec!["interrupted".into()]
            }
            None if run.fleet => {
                let rows: Vec<(&str, Option<&str>)> = slots
                    .iter()
                    .map(|s| (s.result.host.as_str(), s.result.detail.as_deref()))
                    .collect();
                vec![fleet::on_hosts(&rows, &failing_at(slots))]
            }
            None => slots
                .iter()
                .filter(|s| s.result.step.is_failure())
                .filter_map(|s| s.result.detail.clone())
                .collect(),
        };
        let event = notify::Event {
            hosts: if run.fleet { moving.clone() } else { Vec::new() },
            forward: run.forward,
            ..notify::Event::of(
                &run.base,
                run.scope.clone(),
                run.repository.clone(),
                outcome,
                (outcome != Outcome::Ok).then(|| why.join("; ")),
                Some(duration_ms),
            )
        };
        let sent = notify::send(run.notify, &event).await;
        if let Some(journal) = slots.iter().find(|s| s.intent.is_some()).and_then(|s| s.unit.as_ref()) {
            crate::ops::notify::note_delivery(journal.journal(), run.printer, &run.base, sent);
        }
    }
    Ended {
        verdict,
        outcome,
        post_failed,
        not_recorded,
        duration_ms,
    }
}

/// The indices of the units that stopped the run.
fn failing_at(slots: &[Slot<'_>]) -> Vec<usize> {
    (0..slots.len())
        .filter(|i| slots[*i].result.step.is_failure())
        .collect()
}

fn steps(slots: &[Slot<'_>]) -> Vec<HostStep> {
    slots.iter().map(|s| s.result.step).collect()
}

/// The places that change (every unit with something to do).
fn moving(slots: &[Slot<'_>]) -> Vec<String> {
    slots
        .iter()
        .filter(|s| s.unit.is_some())
        .map(|s| s.result.host.clone())
        .collect()
}

/// Prepare, record the intent, change and validate one unit.
async fn apply_one(run: &Run<'_>, slot: &mut Slot<'_>, notes: &[String]) {
    let Some(unit) = slot.unit.as_mut() else {
        slot.result.step = HostStep::Unchanged;
        return;
    };
    let failed_early = |slot: &mut Slot<'_>, lost: bool, why: String, error: anyhow::Error| {
        slot.result.step = if lost {
            HostStep::Lost
        } else {
            HostStep::FailedNothingChanged
        };
        slot.result.detail = Some(why);
        slot.error = Some(error);
    };
    unit.phase("pull");
    match unit.prepare(run).await {
        Ok(pulled) => slot.pulled = pulled,
        Err(e) => {
            let lost = !unit.reachable().await;
            let why = format!("{e:#}");
            return failed_early(slot, lost, why, e);
        }
    }
    if interrupt::requested() {
        return failed_early(
            slot,
            false,
            "interrupted".into(),
            crate::error::Failure::Interrupted.into(),
        );
    }
    interrupt::arm();
    unit.phase("swap");
    let intent = Record {
        notes: notes.to_vec(),
        ..unit.intent(&run.base)
    };
    if let Err(e) = unit.record(&intent).await {
        let lost = !unit.reachable().await;
        let why = format!("record the intent: {e}");
        return failed_early(slot, lost, why, e.into());
    }
    slot.intent = Some(intent);
    match unit.apply(run).await {
        Ok(()) => {
            if run.fleet {
                run.say(
                    unit.place(),
                    format!("validated {}", run.base.to.as_ref().map_or("-".into(), |t| t.display())),
                );
            }
            slot.result.step = HostStep::Validated;
        }
        Err(failed) => {
            slot.result.logs = failed.logs;
            slot.probe_unreachable = failed.probe_unreachable;
            if failed.unrecorded {
                // Like a refused `record`: nothing changed and nothing is in the journal.
                slot.intent = None;
            }
            if failed.nothing_changed {
                slot.result.step = HostStep::FailedNothingChanged;
                slot.result.detail = Some(failed.why.clone());
                slot.error = Some(failed.error.unwrap_or_else(|| anyhow::anyhow!(failed.why)));
                return;
            }
            if run.fleet {
                run.say(
                    unit.place(),
                    format!("{}; putting its previous version back", failed.why),
                );
            }
            slot.why = Some(failed.why.clone());
            match unit.put_back(run).await {
                Ok(()) => {
                    slot.result.step = HostStep::FailedReverted;
                    slot.result.detail = Some(failed.why);
                }
                Err(e) => {
                    slot.result.step = if unit.reachable().await {
                        HostStep::FailedNotReverted
                    } else {
                        HostStep::Lost
                    };
                    slot.result.detail = Some(format!("{}; revert: {e}", failed.why));
                    slot.revert_error = Some(e);
                }
            }
        }
    }
}

/// Puts back a unit that validated (or was being validated when another failed).
async fn put_back_one(run: &Run<'_>, slot: &mut Slot<'_>, because: &str) {
    let Some(unit) = slot.unit.as_mut() else { return };
    let soak_failed = slot.result.step == HostStep::SoakFailed;
    let why = match (soak_failed, slot.result.detail.clone()) {
        (true, Some(own)) => own,
        _ if !run.fleet => because.to_string(),
        _ => format!("put back: {because}"),
    };
    match unit.put_back(run).await {
        Ok(()) => {
            if run.fleet {
                run.say(unit.place(), "previous version back");
            }
            if !soak_failed {
                slot.result.step = HostStep::Reverted;
            }
            slot.result.detail = Some(why);
        }
        Err(e) => {
            slot.result.step = HostStep::RevertFailed;
            slot.result.detail = Some(format!("{why}; revert: {e}"));
            slot.revert_error = Some(e);
        }
    }
}

/// Commits one validated unit and records its ending; what could not be recorded, if anything.
async fn commit_one(run: &Run<'_>, slot: &mut Slot<'_>, notes: &[String], duration_ms: u64) -> Option<String> {
    let (Some(unit), Some(intent)) = (slot.unit.as_mut(), slot.intent.as_ref()) else {
        return None;
    };
    let committed = Record {
        at: Utc::now(),
        phase: Phase::Committed,
        notes: Vec::new(),
        containers: Vec::new(),
        saved: std::collections::BTreeMap::new(),
        configs: std::collections::BTreeMap::new(),
        snapshots: std::collections::BTreeMap::new(),
        ..intent.clone()
    };
    let finished = Record {
        notes: notes.to_vec(),
        results: service_results(intent, Outcome::Ok, &[], None),
        ..intent.finish(Utc::now(), Outcome::Ok, Some(duration_ms), None)
    };
    unit.phase("commit");
    let recorded = unit.commit(run, &[&committed, &finished]).await;
    slot.result.step = HostStep::Committed;
    match recorded {
        Ok(()) => None,
        Err(e) => {
            slot.result.detail = Some(format!(
                "validated and kept, but not recorded ({e}); the next run on this host records it"
            ));
            Some(e.to_string())
        }
    }
}
