//! Integration tests: one binary, real services. See `harness.rs` for the builder and fixtures.

mod auth;
mod cli;
mod config_snapshots;
mod doctor;
mod drill;
mod ecr;
mod exit_codes;
mod fleet;
mod harness;
mod hooks;
mod hostile;
mod isolation;
mod lkg;
mod prune;
mod rebuild;
mod release;
pub(crate) mod remote;
mod remote_tls;
mod same_everywhere;
mod state;
mod swap;
pub(crate) mod swarm;
mod versions;
mod warm;
mod zero_downtime;

/// Insta filters that hide what changes from run to run (digests, times, temp paths).
pub fn redactions() -> Vec<(&'static str, &'static str)> {
    vec![
        (r"sha256:[0-9a-f]{64}", "[DIGEST]"),
        (r"\b[0-9a-f]{12}\b", "[SHORT]"),
        (r"\d+ (second|minute|hour|day)s? ago", "[AGO]"),
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "[TIME]"),
        (r"bt-test/[a-z-]+-\d+-\d+", "[REPO]"),
        (r"\b\d+(\.\d)?(B|kB|MB)\b", "[SIZE]"),
        (r" {2,}", "   "),
    ]
}
