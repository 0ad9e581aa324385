//! The tier's counters: atomics the workers bump, read as one [`RedisStats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Counters shared by the tier and its workers.
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub $name: AtomicU64,)*
        }

        /// What the tier did since it opened.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct RedisStats {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            pub fn snapshot(&self) -> RedisStats {
                RedisStats { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Blocks stored (`SET NX` answered `OK`).
    stored,
    /// Row bytes stored.
    bytes_stored,
    /// Stores skipped: the block was in the local index, found by `EXISTS`, or another process
    /// won the `SET NX`.
    present,
    /// Blocks loaded and verified.
    loaded,
    /// Row bytes loaded.
    bytes_loaded,
    /// Blocks loaded that this tier learnt of from a probe: blocks another process (another
    /// inference server) stored.
    loaded_shared,
    /// Loads that found no value (evicted, expired, never stored, server restarted empty).
    missing,
    /// Loads that found a value failing verification (corrupt, truncated, foreign namespace,
    /// wrong key, wrong type): never served, deleted.
    corrupt,
    /// Values deleted after a failed verification.
    deleted,
    /// Keys refused with `-OOM` (the server is full under `noeviction`).
    oom,
    /// Keys whose slot moved (`MOVED`, `ASK`, `CLUSTERDOWN`).
    moved,
    /// Other error replies.
    server_errors,
    /// Connections dropped after a timeout.
    timeouts,
    /// Connections that failed to open or broke.
    connection_errors,
    /// Connections opened.
    connects,
    /// Keys failed without a try because their node's circuit breaker was open.
    fast_failed,
    /// Jobs failed at once for want of room in the job table.
    jobs_refused,
    /// Probes answered (`EXISTS` for lookups that missed the index).
    probes,
    /// Probes that found the block.
    probe_hits,
    /// Slot-map refreshes.
    refreshes,
}
