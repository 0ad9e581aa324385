//! # kvtier
//!
//! The crate an inference engine links: [`TieredCache`] (the deterministic [`kvtier_core`]
//! engine, its tiers and the primary memory region behind one handle), its typed
//! [`config`], and the `kvtier` command-line tool's subcommands (`simulate`, `replay`, `bench`, `inspect`).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod args;
pub mod bench;
pub mod cache;
pub mod config;
pub mod inspect;
pub mod replay;
pub mod simulate;

pub use cache::{CacheError, TieredCache};
pub use config::CacheConfig;
pub use kvtier_core as core;
pub use kvtier_fs::region::PrimaryRegion;

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
