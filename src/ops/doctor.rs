//! What `backtrack doctor` reads that no other command needs: free space where the engine keeps
//! its data (`df` on the engine's host: on this machine, or over the run's SSH connection), and
//! the registry's clock (its `Date` header), plus the finding each check reports.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::adapters::docker::Engine;
use crate::domain::address::EngineAddress;
use crate::settings::{RegistryKind, RegistrySettings};

/// Below this much free space on the engine's data root, a pull may fail half way. An absolute
/// floor, not a share: 5% of a big disk is still room for many pulls.
pub const MIN_FREE_BYTES: u64 = 2 << 30;
/// More clock skew than this against the registry and tokens or signed URLs may be refused.
pub const MAX_SKEW: Duration = Duration::from_secs(60);

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mark {
    Ok,
    Fail,
    /// The check could not run (something it depends on failed, or it does not apply); the
    /// detail says why.
    Skipped,
}

/// One line of `doctor`.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: String,
    pub mark: Mark,
    pub detail: String,
    /// What to do about a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(check: &str, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            mark: Mark::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn fail(check: &str, detail: impl Into<String>, fix: Option<String>) -> Self {
        Self {
            check: check.into(),
            mark: Mark::Fail,
            detail: detail.into(),
            fix,
        }
    }

    pub fn skipped(check: &str, why: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            mark: Mark::Skipped,
            detail: format!("skipped: {}", why.into()),
            fix: None,
        }
    }
}

/// Free and total bytes of a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    pub free: u64,
    pub total: u64,
}

impl DiskSpace {
    pub fn low(&self) -> bool {
        self.free < MIN_FREE_BYTES
    }
}

/// Reads `df -Pk` output (POSIX format: a header, then `fs blocks used available capacity mount`).
pub fn parse_df(out: &str) -> Option<DiskSpace> {
    let line = out.lines().nth(1)?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let n = fields.len();
    if n < 6 {
        return None;
    }
    let total: u64 = fields[n - 5].parse().ok()?;
    let free: u64 = fields[n - 3].parse().ok()?;
    Some(DiskSpace {
        free: free * 1024,
        total: total * 1024,
    })
}

/// Free space at `path` on the engine's host: `df` here for a local engine, over SSH for an
/// `ssh://` one. `Err` says why it could not be read (a `tcp://` engine's host is out of reach).
pub fn disk_space(engine: &Engine, address: Option<&EngineAddress>, path: &str) -> Result<DiskSpace, String> {
    let out = match (address, engine.ssh()) {
        (Some(EngineAddress::Ssh(_)), Some(ssh)) => {
            let out = ssh
                .run_script("read free disk space", "df -Pk \"$1\"", &[path], b"")
                .map_err(|e| e.to_string())?;
            String::from_utf8_lossy(&out).to_string()
        }
        (Some(EngineAddress::Tcp { host, .. }), _) => {
            return Err(format!(
                "the engine is on {host} (tcp://), out of reach of df; check there"
            ));
        }
        _ => {
            let out = std::process::Command::new("df")
                .args(["-Pk", path])
                .output()
                .map_err(|e| format!("run df: {e}"))?;
            if !out.status.success() {
                return Err(format!("df {path}: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
            String::from_utf8_lossy(&out.stdout).to_string()
        }
    };
    parse_df(&out).ok_or_else(|| format!("read df's answer for {path}: {}", out.trim()))
}

/// `1.5 GiB`, for messages.
pub fn bytes(n: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    if n as f64 >= GIB {
        format!("{:.1} GiB", n as f64 / GIB)
    } else {
        format!("{:.0} MiB", n as f64 / MIB)
    }
}

/// The registry's clock: the `Date` header of its `/v2/` answer (any status), or of the ECR
/// endpoint. Bounded to 5 seconds.
pub async fn registry_date(settings: &RegistrySettings) -> Result<DateTime<Utc>, String> {
    let url = match (&settings.kind, &settings.ecr.endpoint_url) {
        (RegistryKind::Ecr, Some(endpoint)) => endpoint.clone(),
        _ => format!(
            "{}://{}/v2/",
            if settings.plain_http { "http" } else { "https" },
            settings.host
        ),
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .danger_accept_invalid_certs(settings.insecure)
        .build()
        .map_err(|e| e.to_string())?;
    let answer = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", crate::adapters::registry::root_cause(&e)))?;
    let date = answer
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|d| d.to_str().ok())
        .ok_or_else(|| format!("GET {url}: the answer has no Date header"))?;
    DateTime::parse_from_rfc2822(date)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|e| format!("read the Date header '{date}': {e}"))
}

/// How far this machine's clock is from `theirs` (positive: ours is ahead), in whole seconds;
/// the header has a resolution of one second.
pub fn skew(ours: DateTime<Utc>, theirs: DateTime<Utc>) -> i64 {
    (ours - theirs).num_seconds()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn df_output_reads_as_free_and_total_bytes() {
        let out = "Filesystem     1024-blocks      Used Available Capacity Mounted on\n\
                   /dev/sda1         41152736  30000000  11152736      73% /\n";
        let d = parse_df(out).unwrap();
        assert_eq!(d.total, 41_152_736 * 1024);
        assert_eq!(d.free, 11_152_736 * 1024);
        assert!(!d.low());
        // A file system name with a space still reads from the right.
        let spaced = "Filesystem 1024-blocks Used Available Capacity Mounted on\nmy disk 100 99 1 99% /x\n";
        assert!(parse_df(spaced).unwrap().low());
        assert_eq!(parse_df("garbage"), None);
    }

    #[test]
    fn low_space_is_under_2_gib_whatever_the_disk_size() {
        let gib = 1u64 << 30;
        let space = |free, total| DiskSpace { free, total };
        assert!(space(gib, 100 * gib).low());
        assert!(space(gib, 4 * gib).low());
        assert!(!space(8 * gib, 250 * gib).low(), "3% of a big disk is plenty");
    }
}
