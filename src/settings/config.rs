//! The `backtrack.toml` file format, parsed strictly: unknown keys and bad values are errors that
//! name the file, line and column.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::domain::duration::serde_human;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub registry: RegistrySection,
    pub target: Option<TargetSection>,
    #[serde(default)]
    pub health: HealthSection,
    #[serde(default)]
    pub retention: RetentionSection,
    #[serde(default)]
    pub rebuild: RebuildSection,
    #[serde(default)]
    pub hooks: HooksSection,
    #[serde(default)]
    pub notify: NotifySection,
}

/// `[hooks]`: programs run on the operator's machine around an operation, argv lists (no shell).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksSection {
    /// Before anything changes; a non-zero exit aborts.
    #[serde(default, deserialize_with = "checked::argv")]
    pub pre: Option<Vec<String>>,
    /// After a validated swap, before it is committed; a non-zero exit reverts.
    #[serde(default, deserialize_with = "checked::argv")]
    pub post: Option<Vec<String>>,
    /// After a revert; its exit status only makes a warning.
    #[serde(default, deserialize_with = "checked::argv")]
    pub on_revert: Option<Vec<String>>,
    /// How long one hook may run (default 60s); past it, it is killed and counts as failed.
    #[serde(default, deserialize_with = "serde_human::deserialize_wait_opt")]
    pub timeout: Option<Duration>,
}

/// `[notify]`: one JSON POST per operation.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySection {
    #[serde(default, deserialize_with = "checked::webhook")]
    pub webhook: Option<String>,
    /// Which operations: deploy, rollback, revert, emergency, mark-good, failed (default: every
    /// operation that changes a target).
    #[serde(default)]
    pub on: Option<Vec<NotifyOn>>,
    /// How long one delivery try may take (default 5s; three tries).
    #[serde(default, deserialize_with = "serde_human::deserialize_wait_opt")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyOn {
    Deploy,
    Rollback,
    Revert,
    Emergency,
    MarkGood,
    Failed,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    /// `host[:port]` (optionally with `http://` or `https://`), or an ECR registry host.
    pub url: String,
    /// Checked against the distribution spec's grammar where it is read (file:line:column).
    #[serde(deserialize_with = "crate::domain::names::deserialize_repository")]
    pub repository: String,
    pub kind: Option<RegistryKind>,
    /// How long one command may spend on registry requests in all (at most 30 days).
    #[serde(
        default = "default_registry_timeout",
        deserialize_with = "serde_human::deserialize_wait"
    )]
    pub timeout: Duration,
    #[serde(default)]
    pub insecure: bool,
    pub ecr: Option<EcrSection>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryKind {
    Oci,
    Ecr,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcrSection {
    pub region: Option<String>,
    pub profile: Option<String>,
    pub endpoint_url: Option<String>,
    /// The AWS account id owning the repository (default: the one in `url`).
    pub registry_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    pub kind: TargetKind,
    /// One container, compose service or swarm service (or `names`).
    pub name: Option<String>,
    /// A release of several (instead of `name`): one version, all or none, in this order.
    pub names: Option<Vec<String>>,
    /// With `names`: a name's repository, when it is not `[registry] repository`.
    #[serde(default, deserialize_with = "crate::domain::names::deserialize_repositories")]
    pub repositories: Option<std::collections::BTreeMap<String, String>>,
    pub project: Option<String>,
    /// Swarm: the stack the service came from (`docker stack deploy`), found by its
    /// `com.docker.stack.namespace` label.
    pub stack: Option<String>,
    pub host: Option<String>,
    /// Many engines (instead of `host`): one rollback across all of them.
    pub hosts: Option<Vec<String>>,
    /// Many hosts: "parallel", "rolling" or "canary" (default: by command).
    pub strategy: Option<crate::domain::fleet::Strategy>,
    /// Rolling: hosts swapped at once.
    pub batch: Option<usize>,
    /// Canary: how long the first host must stay healthy.
    #[serde(default, deserialize_with = "serde_human::deserialize_wait_opt")]
    pub canary_soak: Option<Duration>,
    /// Containers: start the new container beside the old one ("start-first"), stop the old one
    /// first ("stop-first"), or decide by what they publish ("auto", the default).
    pub order: Option<crate::domain::order::Order>,
    /// Start-first: how long the old container keeps serving after the new one is healthy.
    #[serde(default, deserialize_with = "serde_human::deserialize_wait_opt")]
    pub drain: Option<Duration>,
    /// Rollback: also restore the config the version last ran with (`--keep-config` overrides).
    #[serde(default)]
    pub restore_config: bool,
    /// Names this target's `last_known_good` pointer: tag `last_known_good-ENV`.
    #[serde(default, deserialize_with = "checked::environment")]
    pub environment: Option<String>,
    /// Compose: the variable of the project's `.env` that the compose file's image tag reads.
    #[serde(default, deserialize_with = "checked::env_name")]
    pub version_env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Container,
    Compose,
    Swarm,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Container => "container",
            Self::Compose => "compose",
            Self::Swarm => "swarm",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    #[serde(default, deserialize_with = "checked::probe_url")]
    pub http: Option<String>,
    #[serde(default = "default_timeout", deserialize_with = "serde_human::deserialize_wait")]
    pub timeout: Duration,
    #[serde(default = "default_true")]
    pub expect_version: bool,
    /// The port the app listens on inside its container, for a probe aimed at one container (a
    /// start-first swap's new container, a drill's copy) when `http` names a proxy's port.
    pub port: Option<u16>,
}

impl Default for HealthSection {
    fn default() -> Self {
        Self {
            http: None,
            timeout: default_timeout(),
            expect_version: true,
            port: None,
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

/// The registry deadline when `[registry] timeout` is left out.
pub const DEFAULT_REGISTRY_TIMEOUT: Duration = Duration::from_secs(120);

fn default_registry_timeout() -> Duration {
    DEFAULT_REGISTRY_TIMEOUT
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    pub policy: Option<PathBuf>,
    /// `prune --local`: how many of the versions last deployed on the target stay on its host,
    /// besides what runs, the candidates and the pointers (default 3).
    pub local_keep: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebuildSection {
    #[serde(default = "dot")]
    pub repo: PathBuf,
    #[serde(default = "dot")]
    pub context: PathBuf,
    #[serde(default = "dockerfile")]
    pub dockerfile: PathBuf,
}

impl Default for RebuildSection {
    fn default() -> Self {
        Self {
            repo: dot(),
            context: dot(),
            dockerfile: dockerfile(),
        }
    }
}

fn dot() -> PathBuf {
    PathBuf::from(".")
}

fn dockerfile() -> PathBuf {
    PathBuf::from("Dockerfile")
}

/// Values checked as they are read, so a bad one is reported at its file:line:column.
mod checked {
    use serde::{Deserialize, Deserializer, de::Error as _};

    fn check<'de, D: Deserializer<'de>>(
        d: D,
        rule: fn(&str) -> Result<(), String>,
    ) -> Result<Option<String>, D::Error> {
        let v = String::deserialize(d)?;
        rule(&v).map_err(D::Error::custom)?;
        Ok(Some(v))
    }

    pub fn probe_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        check(d, super::check_probe_url)
    }

    pub fn environment<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        check(d, |v| {
            let ok = (1..=100).contains(&v.len())
                && v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "environment '{v}' must be letters, digits, '.', '_' or '-' (it becomes part of the tag last_known_good-ENV)"
                ))
            }
        })
    }

    pub fn argv<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        if v.first().is_none_or(|p| p.trim().is_empty()) {
            return Err(D::Error::custom(
                "a hook is a program and its arguments, e.g. [\"./ops/smoke.sh\", \"--quick\"] (no shell)",
            ));
        }
        Ok(Some(v))
    }

    pub fn webhook<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        check(d, |v| {
            let url = reqwest::Url::parse(v).map_err(|e| format!("[notify] webhook '{v}' is not a URL: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(format!("[notify] webhook '{v}' must be an http(s) URL"));
            }
            Ok(())
        })
    }

    pub fn env_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        check(d, |v| {
            let ok = v.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "version_env '{v}' is not a variable name (letters, digits and '_')"
                ))
            }
        })
    }
}

/// `[health] http` must be a full http(s) URL: without a scheme the probe can never connect, the
/// deploy waits its whole timeout and reverts a good version.
pub fn check_probe_url(v: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(v).map_err(|e| {
        if v.contains("://") {
            format!("[health] http '{v}' is not a URL: {e}")
        } else {
            format!("[health] http '{v}' has no scheme; write it as http://{v}")
        }
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "[health] http '{v}': scheme '{}' is not http or https (write http://{v})",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("[health] http '{v}' names no host"));
    }
    Ok(())
}

/// A TOML file (config or policy) that does not parse, located precisely.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse {}:{line}:{column}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("check {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// Parses TOML text into `T`, turning serde's byte span into line:column.
pub fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, FileError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        FileError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message: e.message().trim().to_string(),
        }
    })
}

pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_toml(path, &text)
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = r#"
[registry]
url = "127.0.0.1:5000"
repository = "agentrader"

[target]
kind = "container"
name = "agentrader"

[health]
http = "http://127.0.0.1:8080/health"
timeout = "60s"
expect_version = true

[retention]
policy = "retention-policies/default.toml"

[rebuild]
repo = "."
context = "."
dockerfile = "Dockerfile"
"#;

    #[test]
    fn the_spec_example_parses() {
        let c: ConfigFile = parse_toml(Path::new("backtrack.toml"), SPEC_EXAMPLE).unwrap();
        assert_eq!(c.registry.repository, "agentrader");
        assert_eq!(c.target.unwrap().kind, TargetKind::Container);
        assert_eq!(c.health.timeout, Duration::from_secs(60));
    }

    #[test]
    fn unknown_keys_name_file_line_and_column() {
        let text = "[registry]\nurl = \"x\"\nrepository = \"r\"\n\n[target]\nkind = \"container\"\nname = \"a\"\n  colour = \"red\"\n";
        let err = parse_toml::<ConfigFile>(Path::new("/etc/backtrack.toml"), text).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("parse /etc/backtrack.toml:8:3: unknown field `colour`"),
            "{msg}"
        );
    }

    #[test]
    fn bad_values_are_located_too() {
        let text = "[registry]\nurl = \"x\"\nrepository = \"r\"\n[health]\ntimeout = \"soon\"\n";
        let msg = parse_toml::<ConfigFile>(Path::new("b.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("parse b.toml:5:11:"), "{msg}");
        assert!(msg.contains("soon"), "{msg}");
        let text = "[registry]\nurl = \"x\"\nrepository = \"r\"\n[target]\nkind = \"vm\"\nname = \"a\"\n";
        let msg = parse_toml::<ConfigFile>(Path::new("b.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("b.toml:5:8") && msg.contains("vm"), "{msg}");
    }

    #[test]
    fn health_url_without_a_scheme_is_refused_where_it_is_written() {
        let text = "[registry]\nurl = \"x\"\nrepository = \"r\"\n[health]\nhttp = \"127.0.0.1:18231/health\"\n";
        let msg = parse_toml::<ConfigFile>(Path::new("b.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("parse b.toml:5:8:"), "{msg}");
        assert!(msg.contains("write it as http://127.0.0.1:18231/health"), "{msg}");
        for (url, ok) in [
            ("http://127.0.0.1:8080/health", true),
            ("https://app.internal/ready", true),
            ("localhost:8080", false),
            ("ftp://127.0.0.1/x", false),
            ("http://", false),
            ("", false),
        ] {
            assert_eq!(check_probe_url(url).is_ok(), ok, "{url}");
        }
    }

    #[test]
    fn environment_and_version_env_are_checked() {
        let base = "[registry]\nurl = \"x\"\nrepository = \"r\"\n[target]\nkind = \"compose\"\nname = \"a\"\n";
        let c: ConfigFile = parse_toml(
            Path::new("b.toml"),
            &format!("{base}environment = \"prod\"\nversion_env = \"APP_VERSION\"\n"),
        )
        .unwrap();
        let t = c.target.unwrap();
        assert_eq!(t.environment.as_deref(), Some("prod"));
        assert_eq!(t.version_env.as_deref(), Some("APP_VERSION"));
        for bad in ["environment = \"pr od\"", "environment = \"\"", "version_env = \"1X\""] {
            let msg = parse_toml::<ConfigFile>(Path::new("b.toml"), &format!("{base}{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(msg.starts_with("parse b.toml:7:"), "{bad}: {msg}");
        }
    }

    #[test]
    fn repository_names_outside_the_grammar_are_located() {
        for (repo, col) in [("x/../../../v2/prn", 14), ("../app", 14), ("App", 14), ("a//b", 14)] {
            let text = format!("[registry]\nurl = \"x\"\nrepository = \"{repo}\"\n");
            let msg = parse_toml::<ConfigFile>(Path::new("b.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(
                msg.starts_with(&format!("parse b.toml:3:{col}: invalid repository name")),
                "{msg}"
            );
        }
    }

    #[test]
    fn timeouts_beyond_thirty_days_are_located_usage_errors() {
        let text = "[registry]\nurl = \"x\"\nrepository = \"r\"\n[health]\ntimeout = \"300000000000y\"\n";
        let msg = parse_toml::<ConfigFile>(Path::new("b.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("parse b.toml:5:11:"), "{msg}");
        let text = "[registry]\nurl = \"x\"\nrepository = \"r\"\ntimeout = \"31d\"\n";
        let msg = parse_toml::<ConfigFile>(Path::new("b.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("parse b.toml:4:11:") && msg.contains("30 days"),
            "{msg}"
        );
        let text = "[registry]\nurl = \"x\"\nrepository = \"r\"\n";
        let c: ConfigFile = parse_toml(Path::new("b.toml"), text).unwrap();
        assert_eq!(c.registry.timeout, DEFAULT_REGISTRY_TIMEOUT);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_config_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse_toml::<ConfigFile>(Path::new("b.toml"), &text);
        }

        #[test]
        fn config_shaped_text_never_panics(
            url in "\\PC{0,20}",
            repo in "\\PC{0,20}",
            timeout in "\\PC{0,12}",
        ) {
            let text = format!(
                "[registry]\nurl = {url:?}\nrepository = {repo:?}\ntimeout = {timeout:?}\n[health]\ntimeout = {timeout:?}\n"
            );
            let _ = parse_toml::<ConfigFile>(Path::new("b.toml"), &text);
        }
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncdé\nx", 0), (1, 1));
        assert_eq!(line_col("ab\ncdé\nx", 3), (2, 1));
        assert_eq!(line_col("ab\ncdé\nx", 8), (3, 1));
        assert_eq!(line_col("ab\ncdé\nx", 7), (2, 4));
    }
}
