//! # kvtier-regions
//!
//! A region-based disk engine (issue 15; CacheLib's Navy BlockCache and foyer's large-object
//! engine are the models): one device, a file it preallocates or a block device, cut into
//! regions of a few MiB; a store job's blocks are appended to the open region with large
//! `O_DIRECT` writes straight from the primary rows; a load is one positioned `O_DIRECT` read of
//! a record, verified; a whole region is reclaimed at a time; recovery reads per-region
//! summaries instead of every block. One process owns the device (`flock`): sharing blocks
//! between processes is the FS tier's job, on a shared directory.
//!
//! ## Modules
//!
//! - [`tier`]: [`RegionsTier`], the engine as a `SecondaryTier`: stores, loads, reclaim,
//!   reinsertion, shutdown.
//! - [`geometry`]: where the header, regions, summaries and records lie.
//! - [`meta`]: the device header and the region summaries on disk (checksummed, never-panic
//!   decoders).
//! - [`device`]: opening, locking, creating and checking the device (the run-config namespace
//!   check: a mismatch is an error, never an overwrite).
//! - [`recovery`]: rebuilding the index at open, and its report.
//! - [`index`]: the in-memory index, at most 48 bytes per block.
//! - [`inspect`]: reading a device without opening it as an engine (`kvtier inspect`).
//! - [`order`]: the reclaim order (LRU or FIFO over regions).
//! - [`config`]: the engine's settings, [`RegionsTierConfig`].
//!
//! Block records are the native format ([`kvtier_fs::format`]): a 4 KiB header with the
//! namespace digest, the full key, the payload length, its CRC-32C and the record's sequence
//! number, then the payload zero padded to 4 KiB. All I/O on blocks goes through a
//! [`kvtier_fs::Executor`] (threaded, io_uring or simulated): batches for stores
//! ([`kvtier_fs::Batch`]), extent ops for loads.
//!
//! This crate has no `unsafe`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod device;
pub mod geometry;
pub mod index;
pub mod inspect;
pub mod meta;
pub mod order;
pub mod recovery;
pub mod tier;

pub use config::{Eviction, RegionsTierConfig, REGIONS_STORAGE_FORMAT};
pub use geometry::Geometry;
pub use inspect::{inspect_device, DeviceReport, VerifyReport};
pub use recovery::{Mode, RecoveryReport};
pub use tier::{RegionsStats, RegionsTier};
