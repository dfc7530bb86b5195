//! Adapters: everything that talks to the outside world. The registry (OCI Distribution and ECR
//! behind one trait), the Docker Engine, Git, and the local state store (journal, lock, cache).
//!
//! **Adapters return typed errors that name the thing (image, registry, path, status) and, where
//! a person can act, a hint.** They make no decisions: those belong to `domain` and `commands`.

pub mod docker;
pub mod git;
pub mod registry;
pub mod ssh;
pub mod state;
pub mod wire;
