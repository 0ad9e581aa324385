//! Settings of a [`crate::RedisTier`].

use std::time::Duration;

use kvtier_fs::namespace::{RunConfig, NATIVE_STORAGE_FORMAT};

/// Which code moves block bytes between the rows and the sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientKind {
    /// The thin RESP codec ([`crate::resp`]): values are written straight from the rows and
    /// read straight into them. TLS URLs fall back to [`ClientKind::Crate`].
    #[default]
    Thin,
    /// The `redis` crate's connection and reply parser: a loaded value is parsed into a vector
    /// and copied into its row. Kept to measure what the thin codec saves, and for TLS.
    Crate,
}

/// Settings of one Redis tier.
#[derive(Debug, Clone)]
pub struct RedisTierConfig {
    /// Server URLs (`redis://[user:password@]host:port[/db]`, `rediss://` with the `tls`
    /// feature, `redis+unix:///path`). A cluster is found from any of them (the others are
    /// tried if the first does not answer).
    pub urls: Vec<String>,
    /// User name for `AUTH`, overriding the URLs'.
    pub username: Option<String>,
    /// Password for `AUTH`, overriding the URLs'.
    pub password: Option<String>,
    /// A PEM file of the CA certificates that sign the servers' (`rediss://`, feature `tls`);
    /// absent: the system's roots.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// The run config that names the namespace (the native storage format is added).
    pub run: RunConfig,
    /// This process's rank.
    pub rank: u32,
    /// Worker threads, each with its own connection to every node it talks to.
    pub connections: usize,
    /// Longest wait for any one socket read, write or connect; a connection that times out is
    /// dropped, so a late reply is never matched to a later request.
    pub timeout: Duration,
    /// Expiry of stored blocks (`SET ... PX`), for shared instances under `volatile-lru`.
    pub ttl: Option<Duration>,
    /// On an index miss, ask the server (`EXISTS`, in the background) for blocks other
    /// processes stored.
    pub probe_on_miss: bool,
    /// How long a probe's "absent" answer is trusted before the key is probed again.
    pub probe_negative_ttl: Duration,
    /// Most keys per pipelined batch.
    pub pipeline: usize,
    /// Most keys the local index remembers (least recently used forgotten first).
    pub index_capacity: usize,
    /// Jobs and key operations in flight at once; a job beyond them fails at once.
    pub max_jobs: usize,
    /// Key operations in flight at once (see `max_jobs`).
    pub max_parts: usize,
    /// Consecutive connection failures or timeouts of a node that open its circuit breaker.
    pub breaker_threshold: u32,
    /// First wait before a dead node is tried again; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest wait between tries of a dead node.
    pub backoff_max: Duration,
    /// The client code of the data path.
    pub client: ClientKind,
}

impl RedisTierConfig {
    /// Defaults for a tier on `url`: 2 connections, 500 ms timeout, no TTL, no probe.
    pub fn new(url: impl Into<String>, run: RunConfig) -> Self {
        RedisTierConfig {
            urls: vec![url.into()],
            username: None,
            password: None,
            tls_ca_file: None,
            run,
            rank: 0,
            connections: 2,
            timeout: Duration::from_millis(500),
            ttl: None,
            probe_on_miss: false,
            probe_negative_ttl: Duration::from_millis(1000),
            pipeline: 64,
            index_capacity: 1 << 20,
            max_jobs: 4096,
            max_parts: 1 << 18,
            breaker_threshold: 3,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            client: ClientKind::Thin,
        }
    }

    /// The run config the namespace is named after: the native storage format is always used.
    pub fn effective_run_config(&self) -> RunConfig {
        let mut run = self.run.clone();
        run.storage_format = Some(NATIVE_STORAGE_FORMAT.to_string());
        run
    }

    /// Checks the settings; the message names the first bad one.
    pub fn validate(&self) -> Result<(), String> {
        if self.urls.is_empty() {
            return Err("a redis tier needs at least one URL".into());
        }
        if self.connections == 0 || self.connections > 256 {
            return Err(format!("connections = {} (1 to 256)", self.connections));
        }
        if self.timeout.is_zero() {
            return Err("timeout must be more than 0".into());
        }
        if self.ttl.is_some_and(|t| t.as_millis() == 0) {
            return Err("ttl must be at least 1 ms".into());
        }
        if self.pipeline == 0 || self.index_capacity == 0 || self.max_jobs == 0 || self.max_parts == 0 {
            return Err("pipeline, index_capacity, max_jobs and max_parts must be at least 1".into());
        }
        if self.max_jobs >= u32::MAX as usize || self.max_parts >= (u32::MAX - 1) as usize {
            return Err("max_jobs and max_parts must be below 2^32 - 1".into());
        }
        if self.breaker_threshold == 0 || self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return Err("breaker_threshold >= 1 and 0 < backoff_min <= backoff_max".into());
        }
        Ok(())
    }
}
