//! # kvtier-fs
//!
//! The file-system secondary tier: the vLLM-compatible namespace and paths ([`namespace`]), the
//! on-disk block formats ([`mod@format`]), and the executor interface ([`op`]) that turns per-block
//! file operations into syscalls on worker threads or io_uring.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod direct;
pub mod format;
pub mod index;
pub mod namespace;
pub mod op;
pub mod region;
pub mod tier;
pub mod tmpname;
pub mod vfs;

pub use op::{BlockFormat, Evict, Executor, FileOp, FileOpDone, Full, OpKind, Outcome, Wait};
pub use tier::{FsStats, FsTier, FsTierConfig, StartupReport, StorageFormat};
