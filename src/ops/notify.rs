//! Notifications: one JSON POST per operation to `[notify] webhook`, with a Slack-compatible
//! `text` line ("prod: rolled back agentrader 1.2.0 -> 1.1.0 by alice@laptop: exchange errors,
//! validated in 0.4 s") and the same facts as fields. Retried briefly, each try bounded; a
//! delivery that fails is a warning and a journal note, never a failed operation. The payload
//! holds no secret (no credentials, no environment, not the webhook's own URL).

use std::time::Duration;

use serde::Serialize;

use crate::adapters::state::Journal;
use crate::domain::history::{Operation, Outcome, Phase, Record};
use crate::output::Printer;
use crate::settings::{NotifyOn, NotifySection};

/// What happened, for the message.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `prod`, or the target when no environment is set.
    pub scope: String,
    pub target: String,
    pub repository: String,
    pub op: Operation,
    pub result: Outcome,
    pub forward: bool,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub digest: Option<String>,
    pub by: String,
    pub reason: Option<String>,
    /// Why it failed, for reverts and failures.
    pub why: Option<String>,
    pub duration_ms: Option<u64>,
    pub hosts: Vec<String>,
}

impl Event {
    /// The event of the operation `started` began, now finished with `result`.
    pub fn of(
        started: &crate::domain::history::Record,
        scope: String,
        repository: String,
        result: Outcome,
        why: Option<String>,
        duration_ms: Option<u64>,
    ) -> Self {
        Self {
            scope,
            target: started.target.clone().unwrap_or_default(),
            repository,
            op: started.op,
            result,
            forward: false,
            from_version: started.from.as_ref().and_then(|f| f.version.clone()),
            to_version: started.to.as_ref().and_then(|t| t.version.clone()),
            digest: started
                .to
                .as_ref()
                .and_then(|t| t.digest.as_ref())
                .map(ToString::to_string),
            by: format!(
                "{}@{}",
                started.user.as_deref().unwrap_or("?"),
                started.host.as_deref().unwrap_or("?")
            ),
            reason: started.reason.clone(),
            why,
            duration_ms,
            hosts: Vec::new(),
        }
    }

    /// The kind of event `[notify] on` selects.
    pub fn kind(&self) -> NotifyOn {
        match (self.op, self.result) {
            (
                _,
                Outcome::Reverted
                | Outcome::RevertFailed
                | Outcome::RevertedProbeUnreachable
                | Outcome::RolledBackAfterCrash,
            ) => NotifyOn::Revert,
            (_, Outcome::Failed) => NotifyOn::Failed,
            (Operation::Emergency, _) => NotifyOn::Emergency,
            (Operation::Rollback, _) => NotifyOn::Rollback,
            (Operation::MarkGood, _) => NotifyOn::MarkGood,
            _ => NotifyOn::Deploy,
        }
    }

    /// The one line a chat shows.
    pub fn text(&self) -> String {
        let v = |x: &Option<String>| x.clone().unwrap_or_else(|| "?".into());
        let name = self.repository.rsplit('/').next().unwrap_or(&self.repository);
        let what = match (self.op, self.result) {
            (Operation::MarkGood, _) => format!("marked {name} {} last known good", v(&self.to_version)),
            (op, Outcome::Ok) => {
                let verb = match op {
                    Operation::Rollback if self.forward => "rolled forward",
                    Operation::Rollback => "rolled back",
                    Operation::Emergency => "EMERGENCY: ran last known good of",
                    _ => "deployed",
                };
                format!("{verb} {name} {} -> {}", v(&self.from_version), v(&self.to_version))
            }
            (op, Outcome::RevertFailed) => format!(
                "{} of {name} {} FAILED and putting {} back failed too: a person must act",
                op.as_str(),
                v(&self.to_version),
                v(&self.from_version)
            ),
            (op, Outcome::Failed) => format!("{} of {name} {} failed", op.as_str(), v(&self.to_version)),
            (op, _) => format!(
                "{} of {name} {} failed validation; {} was put back",
                op.as_str(),
                v(&self.to_version),
                v(&self.from_version)
            ),
        };
        let mut out = format!("{}: {what} by {}", self.scope, self.by);
        if let Some(r) = self.reason.as_ref().or(self.why.as_ref()) {
            out.push_str(&format!(": {r}"));
        }
        if self.result == Outcome::Ok
            && self.op != Operation::MarkGood
            && let Some(ms) = self.duration_ms
        {
            out.push_str(&format!(", validated in {:.1} s", ms as f64 / 1000.0));
        }
        out
    }
}

#[derive(Debug, Serialize)]
struct Payload<'a> {
    text: String,
    #[serde(flatten)]
    event: &'a Event,
}

/// Whether `[notify]` asks for this event (default: every operation that changes a target).
pub fn wanted(section: &NotifySection, event: &Event) -> bool {
    if section.webhook.is_none() {
        return false;
    }
    match &section.on {
        Some(on) => on.contains(&event.kind()),
        None => event.op != Operation::MarkGood,
    }
}

/// Sends the event; returns a line for the journal saying how it went.
pub async fn send(section: &NotifySection, event: &Event) -> Option<Result<String, String>> {
    let url = section.webhook.as_ref()?;
    if !wanted(section, event) {
        return None;
    }
    let where_to = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "the webhook".into());
    let per_try = section.timeout.unwrap_or(Duration::from_secs(5));
    let client = match reqwest::Client::builder()
        .connect_timeout(per_try.min(Duration::from_secs(2)))
        .timeout(per_try)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => return Some(Err(format!("notify {where_to}: {e}"))),
    };
    let body = Payload {
        text: event.text(),
        event,
    };
    let mut last = String::new();
    for attempt in 0..3u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(300 * u64::from(attempt))).await;
        }
        match client.post(url).json(&body).send().await {
            Ok(r) if r.status().is_success() => return Some(Ok(format!("notified {where_to}"))),
            Ok(r) => last = format!("HTTP {}", r.status().as_u16()),
            Err(e) if e.is_timeout() => last = format!("no answer within {}", crate::domain::duration::format(per_try)),
            Err(e) => last = crate::adapters::registry::root_cause(&e),
        }
    }
    Some(Err(format!("notify {where_to}: {last} (3 tries)")))
}

/// Records a notification's delivery in the journal; a failure is also a warning.
pub fn note_delivery(journal: &Journal, printer: &Printer, base: &Record, sent: Option<Result<String, String>>) {
    let line = match sent {
        None => return,
        Some(Ok(line)) => line,
        Some(Err(line)) => {
            printer.note(format!("warning: could not {line}"));
            format!("could not {line}")
        }
    };
    let note = Record {
        at: chrono::Utc::now(),
        phase: Phase::Note,
        notes: vec![line],
        containers: Vec::new(),
        saved: std::collections::BTreeMap::new(),
        ..base.clone()
    };
    if let Err(e) = journal.append(&note) {
        printer.note(format!("warning: could not note the notification in the journal: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(op: Operation, result: Outcome) -> Event {
        Event {
            scope: "prod".into(),
            target: "container agentrader".into(),
            repository: "127.0.0.1:5000/agentrader".into(),
            op,
            result,
            forward: false,
            from_version: Some("1.2.0".into()),
            to_version: Some("1.1.0".into()),
            digest: Some("sha256:abc".into()),
            by: "alice@laptop".into(),
            reason: Some("exchange errors".into()),
            why: None,
            duration_ms: Some(400),
            hosts: vec![],
        }
    }

    #[test]
    fn the_text_line_reads_like_a_person_wrote_it() {
        let cases = [
            (
                event(Operation::Rollback, Outcome::Ok),
                "prod: rolled back agentrader 1.2.0 -> 1.1.0 by alice@laptop: exchange errors, validated in 0.4 s",
            ),
            (
                Event {
                    reason: None,
                    why: Some("container exited (exit code 3)".into()),
                    ..event(Operation::Deploy, Outcome::Reverted)
                },
                "prod: deploy of agentrader 1.1.0 failed validation; 1.2.0 was put back by alice@laptop: container exited (exit code 3)",
            ),
            (
                event(Operation::Deploy, Outcome::RevertFailed),
                "prod: deploy of agentrader 1.1.0 FAILED and putting 1.2.0 back failed too: a person must act by alice@laptop: exchange errors",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.text(), want);
        }
    }

    #[test]
    fn on_selects_events_and_the_default_is_every_change() {
        let mut section = NotifySection {
            webhook: Some("http://127.0.0.1:9/hook".into()),
            on: None,
            timeout: None,
        };
        assert!(wanted(&section, &event(Operation::Deploy, Outcome::Ok)));
        assert!(!wanted(&section, &event(Operation::MarkGood, Outcome::Ok)));
        section.on = Some(vec![NotifyOn::Revert, NotifyOn::Emergency]);
        assert!(!wanted(&section, &event(Operation::Rollback, Outcome::Ok)));
        assert!(wanted(&section, &event(Operation::Deploy, Outcome::Reverted)));
        assert!(wanted(&section, &event(Operation::Emergency, Outcome::Ok)));
        section.webhook = None;
        assert!(!wanted(&section, &event(Operation::Emergency, Outcome::Ok)));
    }
}
