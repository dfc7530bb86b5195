//! Exit codes and the top-level error report.
//!
//! Domain and adapter errors are typed (thiserror) and carry the context a user needs; commands
//! add `anyhow` context on top. Here the chain is walked once to find the exit code and a hint.
//! The codes are documented in README.md and in `backtrack --help`.

use crate::adapters::docker::EngineError;
use crate::adapters::docker::build::BuildError;
use crate::adapters::docker::tls::TlsError;
use crate::adapters::git::GitError;
use crate::adapters::registry::RegistryError;
use crate::adapters::ssh::SshError;
use crate::adapters::state::LockError;
use crate::domain::selector::{ResolveError, SelectorError};
use crate::settings::{FileError, ProjectError};

pub const OK: i32 = 0;
pub const ERROR: i32 = 1;
pub const USAGE: i32 = 2;
pub const REGISTRY: i32 = 3;
pub const NO_SUCH_VERSION: i32 = 4;
pub const LOCKED: i32 = 5;
pub const REVERTED: i32 = 6;
pub const REVERT_FAILED: i32 = 7;
pub const PARTIAL: i32 = 8;
pub const ENGINE: i32 = 9;
/// The remote host of an `ssh://` engine: unreachable, login refused, unknown host key, or its
/// engine refused us (no docker, no permission on the socket); or TLS to a `tcp://` engine failed
/// (a TLS file missing, a certificate refused either way, a plain-HTTP port).
pub const HOST: i32 = 10;
/// `drill`: a rehearsed candidate would fail (or could not be found).
pub const DRILL_FAILED: i32 = 11;
pub const INTERRUPTED: i32 = 130;

/// Outcomes of a command that are failures with their own exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("validate {version}: {why}; the previous version was restored")]
    Reverted { version: String, why: String },
    #[error("validate {version}: {why}; restoring the previous version failed too: {revert_error}")]
    RevertFailed {
        version: String,
        why: String,
        revert_error: String,
    },
    #[error("finish: {done} of {total} done, {failed} failed")]
    Partial { done: usize, total: usize, failed: usize },
    #[error("ask for confirmation: no terminal to ask on")]
    NeedsConfirmation { what: String },
    #[error("go on: cancelled")]
    Cancelled,
    #[error("finish: interrupted")]
    Interrupted,
    #[error("validate: {0}")]
    Unhealthy(String),
    #[error("find {what}")]
    NeedsRebuild { what: String },
    #[error(
        "find {version} for every service of the release: {} (push it there, or pick a version every \
         service has: `backtrack versions` marks them `release`)",
        missing.join(", ")
    )]
    ReleaseIncomplete { version: String, missing: Vec<String> },
    #[error("choose a retention policy: no --policy FILE, and {} has no [retention] policy", config.display())]
    NoPolicy { config: std::path::PathBuf },
    #[error("settle the interrupted {what}: {detail}")]
    SettleFailed { what: String, detail: String },
    #[error("find operation {n}: the journal has {total} (see `backtrack history --limit 0`)")]
    NoSuchOperation { n: usize, total: usize },
    #[error("go to {version}: {floor}")]
    BelowFloor { version: String, floor: String },
    #[error("rehearse: {failing} of {total} candidate(s) would not roll back")]
    DrillFailed { failing: usize, total: usize },
    #[error("pass every check: {failing} of {total} failed")]
    ChecksFailed { failing: usize, total: usize },
    #[error(
        "record {what} in the journal: {error}; it validated and stays in place (the previous containers \
         were removed), and the next backtrack run records it as completed"
    )]
    NotRecorded { what: String, error: String },
    #[error(
        "restore the config {version} ran with: the journal here has no config snapshot of {unit} for \
         {version} (it never ran here while backtrack recorded configs); go without --restore-config to \
         keep today's config"
    )]
    NoSnapshot { version: String, unit: String },
    /// A flag or command that does not apply to this kind of target (or is not built for it);
    /// the message says what to do instead.
    #[error("{0}")]
    Usage(String),
}

/// The exit code for an error: the first typed error in the chain decides.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return match f {
                Failure::Reverted { .. } => REVERTED,
                Failure::RevertFailed { .. } => REVERT_FAILED,
                Failure::Partial { .. } => PARTIAL,
                Failure::NeedsConfirmation { .. } => USAGE,
                Failure::Cancelled => ERROR,
                Failure::Usage(_) => USAGE,
                Failure::Interrupted => INTERRUPTED,
                Failure::Unhealthy(_) => ERROR,
                Failure::NeedsRebuild { .. } | Failure::ReleaseIncomplete { .. } => NO_SUCH_VERSION,
                Failure::NoPolicy { .. } => USAGE,
                Failure::SettleFailed { .. } => REVERT_FAILED,
                Failure::NotRecorded { .. } => ERROR,
                Failure::BelowFloor { .. } => USAGE,
                Failure::NoSuchOperation { .. } => USAGE,
                Failure::DrillFailed { .. } => DRILL_FAILED,
                Failure::ChecksFailed { .. } => ERROR,
                Failure::NoSnapshot { .. } => USAGE,
            };
        }
        if let Some(e) = cause.downcast_ref::<RegistryError>() {
            return if e.is_not_found() { NO_SUCH_VERSION } else { REGISTRY };
        }
        if cause.downcast_ref::<ResolveError>().is_some() {
            return NO_SUCH_VERSION;
        }
        if cause.downcast_ref::<SelectorError>().is_some()
            || cause.downcast_ref::<ProjectError>().is_some()
            || cause.downcast_ref::<FileError>().is_some()
        {
            return USAGE;
        }
        if cause.downcast_ref::<LockError>().is_some_and(LockError::is_held) {
            return LOCKED;
        }
        if cause.downcast_ref::<SshError>().is_some()
            || cause.downcast_ref::<TlsError>().is_some()
            || matches!(
                cause.downcast_ref::<EngineError>(),
                Some(EngineError::Host(_) | EngineError::Tls(_))
            )
        {
            return HOST;
        }
        if let Some(e) = cause.downcast_ref::<EngineError>() {
            return match e {
                EngineError::Pull { message, .. } if pull_failed_at_registry(message) => REGISTRY,
                // The config names a container that is not there: a configuration mistake.
                EngineError::TargetNotFound { .. } | EngineError::ServiceNotFound { .. } => USAGE,
                _ => ENGINE,
            };
        }
        if let Some(e) = cause.downcast_ref::<GitError>() {
            return if matches!(e, GitError::NoSuchTag { .. }) {
                NO_SUCH_VERSION
            } else {
                ERROR
            };
        }
        if let Some(e) = cause.downcast_ref::<BuildError>() {
            return if matches!(e, BuildError::Engine(_)) {
                ENGINE
            } else {
                ERROR
            };
        }
    }
    ERROR
}

/// Whether the engine's pull error is the registry's doing (down, unknown host, refused
/// credentials, no such manifest) rather than the engine's (disk full, its own socket). The engine
/// is written in Go and reports registry trouble in these words.
pub fn pull_failed_at_registry(message: &str) -> bool {
    const AT_REGISTRY: &[&str] = &[
        "dial tcp",
        "no such host",
        "i/o timeout",
        "connection refused",
        "connection reset by peer",
        "tls handshake",
        "x509:",
        "http response to https client",
        "received unexpected http status",
        "manifest unknown",
        "not found: manifest",
        "name unknown",
        "unauthorized",
        "authentication required",
        "denied",
        "toomanyrequests",
        "net/http:",
        "get \"http",
        "head \"http",
    ];
    let m = message.to_ascii_lowercase();
    AT_REGISTRY.iter().any(|p| m.contains(p))
}

/// A hint a person can act on, from the first typed error in the chain that has one.
pub fn hint(err: &anyhow::Error) -> Option<String> {
    err.chain().find_map(|cause| {
        if let Some(e) = cause.downcast_ref::<RegistryError>() {
            return e.hint();
        }
        if let Some(e) = cause.downcast_ref::<ResolveError>() {
            return e.hint();
        }
        if let Some(e) = cause.downcast_ref::<ProjectError>() {
            return e.hint();
        }
        if let Some(e) = cause.downcast_ref::<EngineError>() {
            return e.hint();
        }
        if let Some(e) = cause.downcast_ref::<SshError>() {
            return e.hint();
        }
        if let Some(e) = cause.downcast_ref::<TlsError>() {
            return e.hint();
        }
        if let Some(e) = cause.downcast_ref::<LockError>() {
            return e.hint();
        }
        if let Some(e) = cause.downcast_ref::<GitError>() {
            return e.hint();
        }
        if let Some(e) = cause.downcast_ref::<BuildError>() {
            return e.hint();
        }
        if let Some(Failure::NeedsConfirmation { what }) = cause.downcast_ref::<Failure>() {
            return Some(format!(
                "{what}: pass --yes to go ahead without a prompt, or --dry-run to see the plan"
            ));
        }
        if let Some(Failure::BelowFloor { .. }) = cause.downcast_ref::<Failure>() {
            return Some(
                "choose a version at or above the floor, or pass --force --reason TEXT if you know the older version \
                 can live with the change"
                    .into(),
            );
        }
        if let Some(Failure::NoPolicy { .. }) = cause.downcast_ref::<Failure>() {
            return Some(
                "pass --policy FILE, or add `[retention] policy = \"retention-policies/default.toml\"` to the config"
                    .into(),
            );
        }
        if let Some(Failure::NeedsRebuild { .. }) = cause.downcast_ref::<Failure>() {
            return Some("pass --rebuild to build it from its Git tag, push it and deploy it".into());
        }
        if let Some(Failure::RevertFailed { .. } | Failure::SettleFailed { .. }) = cause.downcast_ref::<Failure>() {
            return Some("a person must act: see `backtrack status` and `docker ps -a`".into());
        }
        None
    })
}

/// `failed to <a>: <b>: <c>`, the chain read as one sentence.
pub fn render(err: &anyhow::Error) -> String {
    let parts: Vec<String> = err.chain().map(ToString::to_string).collect();
    let mut out = String::from("failed to ");
    // Typed errors often repeat their source in their own message; skip a part already said.
    let mut said = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 && said.contains(part.as_str()) {
            continue;
        }
        if i > 0 {
            out.push_str(": ");
        }
        out.push_str(part);
        said.push_str(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull_error(message: &str) -> anyhow::Error {
        anyhow::Error::new(EngineError::Pull {
            reference: "127.0.0.1:5000/app@sha256:0".into(),
            message: message.into(),
        })
        .context("pull the new version")
    }

    #[test]
    fn a_missing_target_container_is_a_usage_error_not_an_engine_one() {
        let err = anyhow::Error::new(EngineError::TargetNotFound {
            what: "container web".into(),
        })
        .context("read what the target runs");
        assert_eq!(exit_code(&err), USAGE);
        let err = anyhow::Error::new(Failure::NoPolicy {
            config: "backtrack.toml".into(),
        });
        assert_eq!(exit_code(&err), USAGE);
        assert!(hint(&err).unwrap().contains("--policy FILE"));
    }

    #[test]
    fn a_pull_that_fails_because_the_registry_is_down_exits_3_not_9() {
        // Messages as Docker Engine 20.10 words them.
        for registry_side in [
            r#"Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused"#,
            "manifest for 127.0.0.1:5000/app@sha256:00 not found: manifest unknown: manifest unknown",
            r#"Get "https://reg.example.com/v2/": dial tcp: lookup reg.example.com: no such host"#,
            "received unexpected HTTP status: 500 Internal Server Error",
            r#"Head "https://reg.example.com/v2/app/manifests/sha256:00": unauthorized: authentication required"#,
            "toomanyrequests: You have reached your pull rate limit.",
        ] {
            assert_eq!(exit_code(&pull_error(registry_side)), REGISTRY, "{registry_side}");
        }
        for engine_side in [
            "write /var/lib/docker/tmp/GetImageBlob123: no space left on device",
            "failed to register layer: error creating overlay mount",
        ] {
            assert_eq!(exit_code(&pull_error(engine_side)), ENGINE, "{engine_side}");
        }
    }
}
