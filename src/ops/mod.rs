//! Operations shared by several commands: reading the catalog of versions, resolving a selector
//! to a digest, finding what is deployed, the swap with its validation and revert, and recovery of
//! a swap a crash left half done. Commands stay thin; the domain stays pure.

pub mod catalog;
pub mod compose_env;
pub mod config;
pub mod deployed;
pub mod doctor;
pub mod drill;
pub mod fleet;
pub mod guard;
pub mod hooks;
pub mod interrupt;
pub mod mark;
pub mod notify;
pub mod operation;
pub mod rebuild;
pub mod recover;
pub mod release;
pub mod resolve;
pub mod swap;
pub mod swarm;
pub mod targets;
pub mod validate;
pub mod warm;
