//! Warm rollbacks: the rollback candidates (`previous` and the target's `last_known_good`, or
//! selectors given) pulled by digest onto the target's host ahead of time, in parallel, so a
//! rollback is a swap and never waits for a pull. Also tells, for `status`, whether each
//! candidate is on the host already.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::adapters::docker::Engine;
use crate::adapters::registry::Registry;
use crate::domain::history::OperationView;
use crate::domain::image::ImageRef;
use crate::ops::catalog::Catalog;
use crate::ops::resolve;

/// A version a rollback could go to, and why it is one.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// `previous`, `last_known_good-prod`, or the selector given.
    pub label: String,
    pub image: ImageRef,
}

/// Where a candidate stands on the host.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    #[serde(flatten)]
    pub candidate: Candidate,
    /// `registry/repo@sha256:…`, as a rollback pulls and runs it.
    pub reference: String,
    /// On the host before this run.
    pub present: bool,
    /// Pulled now (warm), and how long it took.
    pub pulled_ms: Option<u64>,
    /// Compressed size in the registry, when known (what a rollback would have to pull).
    pub size: Option<u64>,
    pub error: Option<String>,
}

impl Readiness {
    /// "rollback ready: instant" or "needs a pull of 1.2 GB", for `status`.
    pub fn summary(&self) -> String {
        match (&self.error, self.present || self.pulled_ms.is_some(), self.size) {
            (Some(e), _, _) => format!("unknown: {e}"),
            (None, true, _) => "rollback ready: instant (on the host)".into(),
            (None, false, Some(b)) => format!(
                "needs a pull of {} (`backtrack warm`)",
                crate::domain::image::human_size(b)
            ),
            (None, false, None) => "needs a pull (`backtrack warm`)".into(),
        }
    }
}

/// The candidates: each selector resolved (default `previous` and the target's pointer); one
/// that does not resolve is left out (there may be no previous yet, or no pointer).
pub async fn candidates(
    registry: &dyn Registry,
    catalog: &Catalog,
    ops: &[OperationView],
    current: Option<&ImageRef>,
    pointer: &str,
    selectors: &[String],
) -> Vec<Candidate> {
    let defaults = ["previous".to_string(), "lkg".to_string()];
    let wanted = if selectors.is_empty() { &defaults[..] } else { selectors };
    let mut out: Vec<Candidate> = Vec::new();
    for s in wanted {
        match resolve::resolve(registry, catalog, s, ops, current, pointer).await {
            Ok(chosen) => {
                let label = if s == "lkg" { pointer.to_string() } else { s.clone() };
                if out.iter().any(|c| c.image.digest == chosen.image.digest) {
                    continue;
                }
                out.push(Candidate {
                    label,
                    image: chosen.image,
                });
            }
            Err(e) => tracing::info!("no rollback candidate for {s}: {e:#}"),
        }
    }
    out
}

/// Whether each candidate is on the host, with its size in the registry.
pub async fn readiness(engine: &Engine, registry: &dyn Registry, cands: &[Candidate]) -> Vec<Readiness> {
    let mut out = Vec::new();
    for c in cands {
        let Some(digest) = c.image.digest.as_ref() else {
            continue;
        };
        let reference = registry.pull_reference(digest);
        let (present, error) = match engine.image(&reference).await {
            Ok(found) => (found.is_some(), None),
            Err(e) => (false, Some(e.to_string())),
        };
        let size = if present {
            None
        } else {
            registry.image_info(digest).await.ok().and_then(|i| i.size)
        };
        out.push(Readiness {
            candidate: c.clone(),
            reference,
            present,
            pulled_ms: None,
            size,
            error,
        });
    }
    out
}

/// Pulls every candidate that is not on the host yet, all at once, each bounded by `limit`.
pub async fn warm(engine: &Engine, registry: &dyn Registry, cands: &[Candidate], limit: Duration) -> Vec<Readiness> {
    let before = readiness(engine, registry, cands).await;
    let auth = registry.pull_auth().await.ok();
    let pulls = before.into_iter().map(|mut r| {
        let auth = auth.clone();
        async move {
            if r.present || r.error.is_some() {
                return r;
            }
            let started = Instant::now();
            match tokio::time::timeout(limit, engine.pull(&r.reference, auth.as_ref(), |_| {})).await {
                Ok(Ok(_)) => r.pulled_ms = Some(started.elapsed().as_millis() as u64),
                Ok(Err(e)) => r.error = Some(e.to_string()),
                Err(_) => r.error = Some(format!("not pulled within {}", crate::domain::duration::format(limit))),
            }
            r
        }
    });
    futures::future::join_all(pulls).await
}
