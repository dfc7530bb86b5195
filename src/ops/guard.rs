//! The migration guard: an image label `io.backtrack.min-rollback = "1.3.0"` on what the target
//! runs says that no version below 1.3.0 may run again (the release that set it made a change,
//! such as a schema migration, that older versions cannot live with). Rollbacks below the floor
//! are refused unless forced with a reason; `versions` marks the versions below it.

use crate::adapters::docker::Engine;
use crate::adapters::registry::Registry;
use crate::domain::version::{parse_version, strip_build};
use crate::ops::deployed::{Deployed, carried_version};

/// The label that sets the floor.
pub const MIN_ROLLBACK_LABEL: &str = "io.backtrack.min-rollback";

/// The floor and the version of the image that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Floor {
    pub min: semver::Version,
    pub set_by: String,
}

impl Floor {
    /// Whether `version` is below the floor (unknown versions are not).
    pub fn refuses(&self, version: Option<&str>) -> bool {
        version
            .and_then(parse_version)
            .is_some_and(|v| strip_build(&v) < self.min)
    }

    pub fn describe(&self) -> String {
        format!(
            "the running version {} carries {MIN_ROLLBACK_LABEL} = \"{}\": no version below {} may run again",
            self.set_by, self.min, self.min
        )
    }
}

/// Refuses going to `version` (shown as `what`) when it is below the running image's floor,
/// unless forced; a forced move is said out loud with its reason.
pub async fn check(
    engine: &Engine,
    current: &[Deployed],
    version: Option<&str>,
    what: String,
    force: bool,
    reason: Option<&str>,
    printer: &crate::output::Printer,
) -> Result<(), crate::error::Failure> {
    enforce(floor(engine, current).await, version, what, force, reason, printer)
}

/// Refuses going to `version` when it is below `floor` (see [`check`]).
pub fn enforce(
    floor: Option<Floor>,
    version: Option<&str>,
    what: String,
    force: bool,
    reason: Option<&str>,
    printer: &crate::output::Printer,
) -> Result<(), crate::error::Failure> {
    let Some(floor) = floor else {
        return Ok(());
    };
    if !floor.refuses(version) {
        return Ok(());
    }
    if !force {
        return Err(crate::error::Failure::BelowFloor {
            version: what,
            floor: floor.describe(),
        });
    }
    printer.note(format!(
        "warning: going below the migration floor: {}; forced: {}",
        floor.describe(),
        reason.unwrap_or_default()
    ));
    Ok(())
}

/// The highest floor among the images the target's containers run, read from the engine (a
/// label that is not a version is ignored with a warning).
pub async fn floor(engine: &Engine, current: &[Deployed]) -> Option<Floor> {
    let mut labels = Vec::new();
    for d in current {
        let Ok(Some(config)) = engine.image_config(&d.container.image_id).await else {
            continue;
        };
        labels.push((d, config.labels.unwrap_or_default()));
    }
    highest(
        labels
            .iter()
            .map(|(d, l)| (*d, l.get(MIN_ROLLBACK_LABEL).map(String::as_str))),
    )
}

/// The same floor read from the registry's image configs: for a Swarm service, whose images
/// live on its nodes rather than on the engine backtrack talks to.
pub async fn registry_floor(registry: &dyn Registry, current: &[Deployed]) -> Option<Floor> {
    let digests: Vec<_> = current
        .iter()
        .filter_map(|d| d.digest.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let infos = registry.image_infos(&digests).await.ok()?;
    highest(current.iter().map(|d| {
        let raw = d
            .digest
            .as_ref()
            .and_then(|x| infos.get(x))
            .and_then(|i| i.label(MIN_ROLLBACK_LABEL));
        (d, raw)
    }))
}

fn highest<'a>(labels: impl Iterator<Item = (&'a Deployed, Option<&'a str>)>) -> Option<Floor> {
    let mut best: Option<Floor> = None;
    for (d, raw) in labels {
        let Some(raw) = raw else { continue };
        let Some(min) = parse_version(raw).map(|v| strip_build(&v)) else {
            tracing::warn!(
                "ignoring {MIN_ROLLBACK_LABEL} = {raw:?} on {}: not a version",
                d.container.name
            );
            continue;
        };
        if best.as_ref().is_none_or(|b| min > b.min) {
            best = Some(Floor {
                min,
                set_by: carried_version(&d.container).unwrap_or_else(|| d.container.image_ref.clone()),
            });
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_refuses_only_lower_known_versions() {
        let f = Floor {
            min: semver::Version::new(1, 3, 0),
            set_by: "1.4.0".into(),
        };
        for (v, refused) in [
            (Some("1.2.9"), true),
            (Some("v1.2.0"), true),
            (Some("1.3.0"), false),
            (Some("1.3.0_build.5"), false),
            (Some("2.0.0"), false),
            (None, false),
            (Some("not-a-version"), false),
        ] {
            assert_eq!(f.refuses(v), refused, "{v:?}");
        }
    }
}
