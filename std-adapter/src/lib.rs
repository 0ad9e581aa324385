//! # kvtier
//!
//! The crate an inference engine links: the primary memory region, the `kvtier` command-line
//! tool's subcommands (`replay`, `bench`), over the deterministic [`kvtier_core`] engine.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod bench;
pub mod region;
pub mod replay;

pub use kvtier_core as core;
