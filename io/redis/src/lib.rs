//! # kvtier-redis
//!
//! kvtier's remote tier: a [`SecondaryTier`](kvtier_core::SecondaryTier) on a Redis or Valkey
//! server, standalone or cluster, so that several inference servers share one prefix cache.
//!
//! - **Namespace** ([`names`]): the FS tier's run config and digest; block keys
//!   `kvt1:{model}_{digest12}:r{rank}:g{group}:{hash hex}` (no hash tag: a cluster spreads them
//!   over its slots) and a config record `kvt1:{model}_{digest12}:config` written once with
//!   `SET NX` and compared at start-up (a mismatch is an error).
//! - **Values**: the native block format's header ([`kvtier_fs::format`]: magic, version,
//!   namespace digest, full key, payload length, CRC-32C) followed by the row bytes. A load
//!   that fails verification is a miss, and the value is deleted: a wrong block is never
//!   served.
//! - **I/O model** ([`tier`], the private `worker` module): the scheduler thread never waits on
//!   the network; a pool of worker threads, each with its own connection per node, runs
//!   pipelined batches; every key is a part of a job of the core's
//!   [`JobTable`](kvtier_core::JobTable), reported from the worker thread, and the tier's poll
//!   takes whole finished jobs, as the FS tier does.
//! - **Data path** ([`resp`], [`conn`]): a thin RESP2 codec writes each value from its primary
//!   row with `writev` and reads each loaded value into its row, no copy in user space; the
//!   `redis` crate parses URLs (auth, database, TLS), discovers the cluster's slot map
//!   ([`topology`]) and carries TLS connections (feature `tls`) and the `client = "crate"`
//!   data path kept to measure its copies.
//! - **Faults**: every socket operation is bounded by a timeout (500 ms by default) and a
//!   connection that fails or times out is dropped, so no late reply is ever read as another
//!   request's; a per-node circuit breaker ([`breaker`]) makes a dead node cost nothing per
//!   step, and reconnects with a doubling backoff. A failed load is a miss, a failed store is
//!   dropped, a full server (`-OOM`) fails its keys: nothing fails an inference request.
//! - **Capacity and eviction** are the server's (`maxmemory` with `allkeys-lru`, or
//!   `volatile-lru` with [`RedisTierConfig::ttl`] on a shared instance).
//!
//! ## Features
//!
//! - `tls`: `rediss://` URLs, through the `redis` crate's rustls support (ring provider).
//!   Without it a `rediss://` URL is refused at start-up with a clear error.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod breaker;
pub mod config;
pub mod conn;
pub mod names;
pub mod resp;
mod stats;
pub mod tier;
pub mod topology;
mod worker;

pub use config::{ClientKind, RedisTierConfig};
pub use stats::RedisStats;
pub use tier::{RedisStartup, RedisTier};
pub use worker::KeyOutcome;
