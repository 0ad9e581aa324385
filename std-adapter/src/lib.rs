//! # kvtier
//!
//! The crate an inference engine links: [`TieredCache`] (the deterministic [`kvtier_core`]
//! engine, its tiers and the primary memory region behind one handle), its typed [`config`]
//! (TOML), and the [`replay`] interpreter of JSON-lines traces. It carries no command-line
//! code: the `kvtier` tool (`simulate`, `replay`, `inspect`, `bench`) is the `kvtier-cli`
//! crate, which sits on top of this one.
//!
//! The engine's vocabulary (keys, requests, store plans, lookup answers, events, errors) is
//! re-exported here, so an engine needs no direct dependency on `kvtier-core`.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod cache;
pub mod config;
pub mod replay;

pub use cache::{CacheError, TieredCache};
pub use config::CacheConfig;
pub use kvtier_core::{
    EngineStats, Event, EventLog, KeyError, LoadError, LookupResult, Medium, OffloadKey, PolicyKind, ReqContext,
    SlotId, StoreError, StorePlan, TieringEngine, UnpinError,
};
pub use kvtier_fs::region::PrimaryRegion;

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
