//! # kvtier-cli
//!
//! The `kvtier` command-line tool's subcommands, on top of the [`kvtier`] library:
//! [`simulate`] (an inference server's KV traffic through every tier, and a report),
//! [`bench`](mod@bench) (ratios against a ceiling or a peer measured in the same run) and
//! [`inspect`] (what is in an FS-tier directory or a region device). `replay` is the library's own [`kvtier::replay`]. The binary (`src/main.rs`)
//! only parses arguments and dispatches here; the dependencies that only a command-line tool
//! needs (clap, indicatif, plotters, the metrics exporter, tracing-subscriber, tempfile) stay
//! in this crate, out of what an engine links.
// `unsafe` only where a libc call or the allocator needs it, each place marked with
// `#[allow(unsafe_code)]` (`grep -rn 'allow(unsafe_code)'` lists them for review).
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod args;
pub mod bench;
pub mod cputime;
pub mod inspect;
pub mod simulate;
