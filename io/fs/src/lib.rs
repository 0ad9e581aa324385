//! # kvtier-fs
//!
//! The file-system secondary tier, the interface its executors implement, and the vocabulary
//! they share, so that the threaded, io_uring and simulated executors (and disk engines and
//! network tiers to come) describe, lay out and report block operations the same way.
//!
//! ## Modules
//!
//! The tier:
//! - [`tier`]: [`FsTier`], the `SecondaryTier` over a directory: index, capacity, jobs on the
//!   core's job table; [`tier::startup`] rebuilds the index and handles crashed runs' markers.
//! - [`namespace`]: the vLLM-compatible directory layout, run config and paths.
//! - [`mod@format`]: the on-disk block formats (vLLM's raw rows; the native checksummed header).
//! - [`index`]: the in-memory index of blocks on disk, with recency for eviction.
//! - [`jobs`]: a tier's jobs in flight on the core's job table (the FS tier's, a disk
//!   engine's).
//! - [`tmpname`]: temp-file and open-marker names, and how to tell a dead process's.
//! - [`vfs`]: the file-system calls the tier makes itself ([`vfs::HostFs`], or a simulated disk).
//!
//! The executor interface and its shared vocabulary:
//! - [`op`]: [`FileOp`], its [`Target`] (a path, or an extent of an opened file), the
//!   [`Executor`] trait (submit with a job part, poll).
//! - [`outcome`]: [`Outcome`], [`OpError`], the errno -> outcome mapping, and the `u32` codes
//!   outcomes cross threads as.
//! - [`layout`]: [`BlockLayout`], a block's geometry in its file and its row.
//! - [`direct`]: the one alignment constant ([`DIRECT_ALIGN`]), the `O_DIRECT` flag, and the
//!   start-up probe.
//! - [`submit`]: the submit prologue (stopped, full, lease).
//! - [`files`]: the files kernel executors open for extent ops.
//! - [`region`]: the primary region (rows) and the per-row leases every op holds.
//! - [`rng`]: [`rng::SplitMix64`], the seeded generator of simulations and randomized tests.
//! - `conformance` (feature `conformance`): the suite every executor passes, and its fixtures.
//!
//! `unsafe` is denied in this crate except in [`region`] (mapping rows, handing them out under
//! leases) and the private `sys` module (`kill(pid, 0)`, `syncfs`): `grep -rn
//! 'allow(unsafe_code)'` lists every module to review.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod direct;
pub mod files;
pub mod format;
pub mod index;
pub mod jobs;
pub mod layout;
pub mod namespace;
pub mod op;
pub mod outcome;
#[allow(unsafe_code)]
pub mod region;
pub mod rng;
pub mod submit;
#[allow(unsafe_code)]
mod sys;
pub mod tier;
pub mod tmpname;
pub mod vfs;

pub use direct::DIRECT_ALIGN;
pub use layout::BlockLayout;
pub use op::{
    Batch, BatchBlock, BatchData, BatchFull, BlockFormat, Evict, Executor, Extent, FileId, FileOp, Full, Target, Wait,
};
pub use outcome::{OpError, Outcome};
pub use tier::{FsStats, FsTier, FsTierConfig, StartupReport, StorageFormat};
