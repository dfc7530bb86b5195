//! The domain layer: versions, selectors, history rules and retention plans.
//!
//! Everything here is pure: it takes data the adapters fetched and returns decisions. **It does no
//! IO** (no network, no files, no clock: "now" is always a parameter), so every rule is covered by
//! fast, data-driven tests.

pub mod address;
pub mod config;
pub mod digest;
pub mod duration;
pub mod ecr_lifecycle;
pub mod ecr_policy;
pub mod fleet;
pub mod history;
pub mod image;
pub mod local_retention;
pub mod names;
pub mod order;
#[cfg(test)]
mod parse_props;
pub mod release;
pub mod retention;
pub mod selector;
pub mod version;
