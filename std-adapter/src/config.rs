//! Typed configuration of a [`crate::TieredCache`], loadable from TOML; the same tier entries
//! are what a `kvtier replay` config line carries.
//!
//! ```toml
//! num_blocks = 4096
//! block_bytes = 2097152
//! policy = "arc"                  # "lru" (default) or "arc"
//! promotion_deadline_steps = 64   # 0 disables the deadline
//! events = false                  # collect the CPU tier's events for take_events
//! # shared_memory = "/dev/shm/kvtier-primary"   # map the rows from a shared file
//! # shared_memory_mode = 0o600    # its permission bits
//!
//! [[tiers]]
//! type = "fs"
//! root_dir = "/mnt/nvme/kvtier"
//! executor = "auto"               # "threaded", "uring", "sim" or "auto"
//! format = "native"               # or "vllm" (raw rows, vLLM-compatible)
//! model_name = "meta-llama/Llama-3.1-8B"
//! file_mode = 0o600               # owner-only (the default); 0o640/0o660 to share with a group
//!
//! [[tiers]]
//! type = "redis"                  # a Redis/Valkey server, or any node of a cluster
//! url = "redis://:secret@10.0.0.5:6379/0"
//! connections = 2                 # worker threads, one connection each per node
//! timeout_ms = 500
//! probe_on_miss = true            # find blocks other inference servers stored
//! model_name = "meta-llama/Llama-3.1-8B"
//!
//! # Or a region engine: one device, one owner, the fastest disk tier.
//! # [[tiers]]
//! # type = "regions"
//! # path = "/mnt/nvme/kvtier.dev"   # a file (created and preallocated) or a block device
//! # capacity = "512G"               # bytes, or a string with K, M, G, T (binary)
//! # region_bytes = "16M"
//! # model_name = "meta-llama/Llama-3.1-8B"
//! ```
//!
//! A configuration is checked as a whole by [`CacheConfig::validate`] (which
//! [`CacheConfig::from_toml`] and [`crate::TieredCache::new`] call): the one place its limits
//! live. A value out of range is an [`InvalidConfig`] naming the field
//! (`block_bytes`, `tiers[1].read_workers`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kvtier_core::PolicyKind;
use kvtier_fs::direct::DirectMode;
use kvtier_fs::files::FileMode;
use kvtier_fs::namespace::{KvCacheGroup, RunConfig};
use kvtier_fs::{FsTierConfig, StorageFormat};
use kvtier_redis::{ClientKind, RedisTierConfig};
use kvtier_regions::{Eviction, RegionsTierConfig};
use serde::Deserialize;

/// Declares a tier entry (the table of one `[[tiers]]` type) with the run-config fields
/// appended: the fields that name its namespace, spelled as `config.json` spells them, so every
/// tier type that has a namespace takes them alike. With `run_config!` (their mapping to a
/// `RunConfig`) and `with_run_config_unset!` (a literal with none given), the one place
/// they are listed.
macro_rules! tier_entry {
    ($(#[$meta:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($body)*
            /// Run config: model name.
            #[serde(default)]
            pub model_name: Option<String>,
            /// Run config: KV dtype.
            #[serde(default)]
            pub dtype: Option<String>,
            /// Run config: tokens per hash.
            #[serde(default)]
            pub tokens_per_hash: Option<u64>,
            /// Run config: GPU blocks per offloaded block (file).
            #[serde(default)]
            pub blocks_per_file: Option<u64>,
            /// Run config: tensor-parallel size.
            #[serde(default)]
            pub tp_size: Option<u64>,
            /// Run config: pipeline-parallel size.
            #[serde(default)]
            pub pp_size: Option<u64>,
            /// Run config: prefill context-parallel size.
            #[serde(default)]
            pub pcp_size: Option<u64>,
            /// Run config: decode context-parallel size.
            #[serde(default)]
            pub dcp_size: Option<u64>,
            /// Run config: KV-cache groups.
            #[serde(default)]
            pub kv_cache_groups: Option<Vec<KvCacheGroup>>,
            /// Run config: whether blocks are parallel-agnostic.
            #[serde(default)]
            pub parallel_agnostic: Option<bool>,
            /// Run config (vLLM 0.33): one copy of a block shared by all workers.
            #[serde(default)]
            pub replicated_layout: Option<bool>,
            /// Run config (vLLM 0.33): the canonical byte-format identity, when that layout is used.
            #[serde(default)]
            pub canonical_format: Option<String>,
        }
    };
}

/// A tier entry's struct literal with the given fields and no run-config field given.
macro_rules! with_run_config_unset {
    ($name:ident { $($field:ident: $value:expr),* $(,)? }) => {
        $name {
            $($field: $value,)*
            model_name: None,
            dtype: None,
            tokens_per_hash: None,
            blocks_per_file: None,
            tp_size: None,
            pp_size: None,
            pcp_size: None,
            dcp_size: None,
            kv_cache_groups: None,
            parallel_agnostic: None,
            replicated_layout: None,
            canonical_format: None,
        }
    };
}

/// The run config named by a tier entry's run-config fields (`model_name`, `dtype`, ...), each
/// absent one at its default: one mapping for every tier type whose entry carries them.
macro_rules! run_config {
    ($t:expr) => {{
        let t = $t;
        let d = RunConfig::default();
        RunConfig {
            model_name: t.model_name.clone().unwrap_or(d.model_name),
            dtype: t.dtype.clone().unwrap_or(d.dtype),
            tokens_per_hash: t.tokens_per_hash.unwrap_or(d.tokens_per_hash),
            blocks_per_file: t.blocks_per_file.unwrap_or(d.blocks_per_file),
            tp_size: t.tp_size.unwrap_or(d.tp_size),
            pp_size: t.pp_size.unwrap_or(d.pp_size),
            pcp_size: t.pcp_size.unwrap_or(d.pcp_size),
            dcp_size: t.dcp_size.unwrap_or(d.dcp_size),
            kv_cache_groups: t.kv_cache_groups.clone().unwrap_or(d.kv_cache_groups),
            parallel_agnostic: t.parallel_agnostic.unwrap_or(d.parallel_agnostic),
            replicated_layout: t.replicated_layout.unwrap_or(d.replicated_layout),
            canonical_format: t.canonical_format.clone().or(d.canonical_format),
            ..d
        }
    }};
}

/// The whole cache: primary pool and secondary tiers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Primary slots (rows).
    pub num_blocks: u32,
    /// Bytes per block.
    #[serde(default = "default_block_bytes")]
    pub block_bytes: usize,
    /// Eviction policy of the primary pool.
    #[serde(default)]
    pub policy: PolicyKind,
    /// Steps after which a promotion in flight answers Miss (0: never).
    #[serde(default = "default_deadline")]
    pub promotion_deadline_steps: u32,
    /// Collect the CPU tier's events (stored, evicted) for
    /// [`take_events`](kvtier_core::TieringEngine::take_events). Off by default: events
    /// accumulate until taken, so only an integrator that drains them turns them on.
    #[serde(default)]
    pub events: bool,
    /// Map the primary rows from this file (e.g. under /dev/shm) instead of anonymous memory
    /// (see [`PrimaryRegion::shared`](kvtier_fs::region::PrimaryRegion::shared)).
    #[serde(default)]
    pub shared_memory: Option<PathBuf>,
    /// Permission bits of the `shared_memory` file (owner-only by default).
    #[serde(default)]
    pub shared_memory_mode: FileMode,
    /// Secondary tiers, in order.
    #[serde(default)]
    pub tiers: Vec<TierConfig>,
}

/// Largest `block_bytes` a configuration accepts (1 GiB).
pub const MAX_BLOCK_BYTES: usize = 1 << 30;

/// Most worker threads of each kind an FS tier may ask for.
pub const MAX_WORKERS: usize = 1024;

fn default_block_bytes() -> usize {
    4096
}

fn default_deadline() -> u32 {
    64
}

/// One secondary tier.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum TierConfig {
    /// In-memory copies (the reference tier).
    Memory(MemoryConfig),
    /// A file-system tier.
    Fs(Box<FsConfig>),
    /// A remote tier on a Redis/Valkey server or cluster.
    Redis(Box<RedisConfig>),
    /// A region engine on one device ([`kvtier_regions`]).
    Regions(Box<RegionsConfig>),
}

/// A memory tier (no settings; unknown keys are refused like everywhere else).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {}

/// Which executor runs an FS tier's file operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// Worker threads with blocking O_DIRECT syscalls.
    Threaded,
    /// io_uring.
    Uring,
    /// The deterministic simulated disk.
    Sim,
    /// The best one available here.
    #[default]
    Auto,
}

tier_entry! {
    /// An FS tier: where, how, and the run-config fields that name its namespace.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct FsConfig {
        /// Root directory.
        pub root_dir: PathBuf,
        /// Executor.
        #[serde(default)]
        pub executor: ExecutorKind,
        /// Block format.
        #[serde(default)]
        pub format: StorageFormat,
        /// This process's rank.
        #[serde(default)]
        pub rank: u32,
        /// Raise STORAGE events for stored blocks.
        #[serde(default)]
        pub events: bool,
        /// O_DIRECT mode.
        #[serde(default)]
        pub o_direct: DirectMode,
        /// `fdatasync` every block before publishing it.
        #[serde(default)]
        pub fsync: bool,
        /// Check the disk on an index miss (directories shared with other processes).
        #[serde(default)]
        pub probe_on_miss: bool,
        /// Most blocks kept on disk; a store beyond it evicts the least recently used block
        /// (reusing its file in the native format). Absent: no bound.
        #[serde(default)]
        pub max_blocks: Option<usize>,
        /// Read-priority worker threads (threaded executor).
        #[serde(default)]
        pub read_workers: Option<usize>,
        /// Write-priority worker threads (threaded executor).
        #[serde(default)]
        pub write_workers: Option<usize>,
        /// Permission bits of what the tier creates (owner-only by default; see [`FileMode`]).
        #[serde(default)]
        pub file_mode: FileMode,
    }
}

impl FsConfig {
    /// A tier under `root_dir` with every other setting at its default (as an `fs` table with
    /// only `root_dir` would have them).
    pub fn new(root_dir: impl Into<PathBuf>) -> Self {
        with_run_config_unset!(FsConfig {
            root_dir: root_dir.into(),
            executor: ExecutorKind::default(),
            format: StorageFormat::default(),
            rank: 0,
            events: false,
            o_direct: DirectMode::default(),
            fsync: false,
            probe_on_miss: false,
            max_blocks: None,
            read_workers: None,
            write_workers: None,
            file_mode: FileMode::OWNER_ONLY,
        })
    }

    /// Checks the tier's settings (see [`CacheConfig::validate`]); errors name the field.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.root_dir.as_os_str().is_empty() {
            return Err(InvalidConfig::new("root_dir", "must not be empty"));
        }
        check_workers(self.read_workers, self.write_workers)
    }

    /// The FS tier's settings, for blocks of `block_bytes` (the primary region's rows).
    pub fn tier_config(&self, block_bytes: usize) -> FsTierConfig {
        let mut cfg = FsTierConfig::new(&self.root_dir, run_config!(self), block_bytes);
        cfg.rank = self.rank;
        cfg.format = self.format;
        cfg.o_direct = self.o_direct;
        cfg.fsync = self.fsync;
        cfg.probe_on_miss = self.probe_on_miss;
        cfg.events = self.events;
        cfg.max_blocks = self.max_blocks;
        cfg.file_mode = self.file_mode;
        cfg
    }
}

/// A disk tier's `read_workers` and `write_workers`, when given, are from 1 to [`MAX_WORKERS`].
fn check_workers(read: Option<usize>, write: Option<usize>) -> Result<(), InvalidConfig> {
    for (field, n) in [("read_workers", read), ("write_workers", write)] {
        if let Some(n) = n {
            if !(1..=MAX_WORKERS).contains(&n) {
                return Err(InvalidConfig::new(field, format!("{n} is not from 1 to {MAX_WORKERS}")));
            }
        }
    }
    Ok(())
}

impl TierConfig {
    /// Checks the tier's settings (see [`CacheConfig::validate`]); errors name the field.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        match self {
            TierConfig::Memory(_) => Ok(()),
            TierConfig::Fs(fs) => fs.validate(),
            TierConfig::Regions(r) => {
                if r.path.as_os_str().is_empty() {
                    return Err(InvalidConfig::new("path", "must not be empty"));
                }
                // The device's geometry (capacity, region_bytes against the block size) is
                // checked when it opens, naming the values.
                check_workers(r.read_workers, r.write_workers)
            }
            // The tier's own check, whose message names the setting (`connections = 0 (1 to 256)`).
            TierConfig::Redis(redis) => {
                redis.tier_config().validate().map_err(|reason| InvalidConfig::new("redis", reason))
            }
        }
    }
}

/// A configuration value out of range: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig {
    /// The field, as a configuration file spells it (`block_bytes`, `tiers[0].read_workers`).
    pub field: String,
    /// What is wrong with its value.
    pub reason: String,
}

impl InvalidConfig {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        InvalidConfig { field: field.into(), reason: reason.into() }
    }

    /// The same error, for a field inside `outer` (`tiers[1]`).
    fn inside(mut self, outer: &str) -> Self {
        self.field = format!("{outer}.{}", self.field);
        self
    }
}

impl std::fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.field, self.reason)
    }
}

impl std::error::Error for InvalidConfig {}

/// The data-path client of a Redis tier (spelled `thin` and `crate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisClient {
    /// The thin RESP codec: rows written and read in place.
    #[default]
    Thin,
    /// The `redis` crate's client (copies each loaded value; TLS URLs always use it).
    Crate,
}

tier_entry! {
    /// A Redis tier: the server or cluster, how the tier talks to it, and the run-config fields
    /// that name its namespace (as an `fs` entry's).
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RedisConfig {
        /// `redis://[user:password@]host:port[/db]` (`rediss://` with the `tls` feature of
        /// kvtier-redis, `redis+unix:///path`); for a cluster, any node.
        pub url: String,
        /// Further nodes to try when `url` does not answer (a cluster's other nodes).
        #[serde(default)]
        pub seeds: Vec<String>,
        /// User name, overriding the URL's.
        #[serde(default)]
        pub username: Option<String>,
        /// Password, overriding the URL's.
        #[serde(default)]
        pub password: Option<String>,
        /// PEM file of the CA certificates that sign the servers' (`rediss://`; absent: the
        /// system's roots).
        #[serde(default)]
        pub tls_ca_file: Option<PathBuf>,
        /// Worker threads, each with its own connection per node (default 2).
        #[serde(default)]
        pub connections: Option<usize>,
        /// Longest wait for one socket operation, in ms (default 500).
        #[serde(default)]
        pub timeout_ms: Option<u64>,
        /// Expiry of stored blocks in ms (`SET ... PX`); absent: none.
        #[serde(default)]
        pub ttl_ms: Option<u64>,
        /// On an index miss, ask the server in the background (blocks other servers stored).
        #[serde(default)]
        pub probe_on_miss: bool,
        /// How long a probe's "absent" is trusted, in ms (default 1000).
        #[serde(default)]
        pub probe_negative_ttl_ms: Option<u64>,
        /// Most keys per pipelined batch (default 64).
        #[serde(default)]
        pub pipeline: Option<usize>,
        /// Most keys the local index remembers (default 1048576).
        #[serde(default)]
        pub index_capacity: Option<usize>,
        /// The data-path client.
        #[serde(default)]
        pub client: RedisClient,
        /// This process's rank.
        #[serde(default)]
        pub rank: u32,
    }
}

impl RedisConfig {
    /// A tier on `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        with_run_config_unset!(RedisConfig {
            url: url.into(),
            seeds: Vec::new(),
            username: None,
            password: None,
            tls_ca_file: None,
            connections: None,
            timeout_ms: None,
            ttl_ms: None,
            probe_on_miss: false,
            probe_negative_ttl_ms: None,
            pipeline: None,
            index_capacity: None,
            client: RedisClient::default(),
            rank: 0,
        })
    }

    /// The Redis tier's settings.
    pub fn tier_config(&self) -> RedisTierConfig {
        let mut cfg = RedisTierConfig::new(self.url.clone(), run_config!(self));
        cfg.urls.extend(self.seeds.iter().cloned());
        cfg.username = self.username.clone();
        cfg.password = self.password.clone();
        cfg.tls_ca_file = self.tls_ca_file.clone();
        cfg.rank = self.rank;
        cfg.probe_on_miss = self.probe_on_miss;
        cfg.client = match self.client {
            RedisClient::Thin => ClientKind::Thin,
            RedisClient::Crate => ClientKind::Crate,
        };
        if let Some(n) = self.connections {
            cfg.connections = n;
        }
        if let Some(ms) = self.timeout_ms {
            cfg.timeout = Duration::from_millis(ms);
        }
        cfg.ttl = self.ttl_ms.map(Duration::from_millis);
        if let Some(ms) = self.probe_negative_ttl_ms {
            cfg.probe_negative_ttl = Duration::from_millis(ms);
        }
        if let Some(n) = self.pipeline {
            cfg.pipeline = n;
        }
        if let Some(n) = self.index_capacity {
            cfg.index_capacity = n;
        }
        cfg
    }
}

/// A byte count: an integer, or a string of digits with an optional binary unit (`K`, `M`,
/// `G`, `T`: `"64G"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl std::str::FromStr for Bytes {
    type Err = String;

    fn from_str(s: &str) -> Result<Bytes, String> {
        let t = s.trim();
        let (digits, shift) = match t.char_indices().last() {
            Some((i, 'K' | 'k')) => (&t[..i], 10),
            Some((i, 'M' | 'm')) => (&t[..i], 20),
            Some((i, 'G' | 'g')) => (&t[..i], 30),
            Some((i, 'T' | 't')) => (&t[..i], 40),
            _ => (t, 0),
        };
        let n: u64 = digits.trim().parse().map_err(|_| format!("{s:?} is not a byte count (e.g. 4096, \"64M\")"))?;
        n.checked_mul(1 << shift).map(Bytes).ok_or_else(|| format!("{s:?} overflows"))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte count: an integer or a string like \"64G\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Bytes, E> {
                u64::try_from(v).map(Bytes).map_err(|_| E::custom(format!("a negative byte count {v}")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Bytes, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

tier_entry! {
    /// A region engine: its device, its layout, and the run-config fields that name its namespace
    /// (checked against the device's header).
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RegionsConfig {
        /// The device: a file (created and preallocated at `capacity` if absent) or a block device.
        pub path: PathBuf,
        /// Bytes of the device to use.
        pub capacity: Bytes,
        /// Bytes of a region (default 16 MiB).
        #[serde(default)]
        pub region_bytes: Option<Bytes>,
        /// Executor.
        #[serde(default)]
        pub executor: ExecutorKind,
        /// Which region a reclaim takes: `lru` (default) or `fifo`.
        #[serde(default)]
        pub eviction: Eviction,
        /// Copy blocks loaded since they were written out of a reclaimed region (default true).
        #[serde(default = "default_true")]
        pub reinsert: bool,
        /// `fdatasync` every write before it counts (the index then survives a power cut as is).
        #[serde(default)]
        pub fsync: bool,
        /// O_DIRECT mode.
        #[serde(default)]
        pub o_direct: DirectMode,
        /// Raise STORAGE events for stored and evicted blocks.
        #[serde(default)]
        pub events: bool,
        /// This process's rank.
        #[serde(default)]
        pub rank: u32,
        /// Read-priority worker threads (threaded executor).
        #[serde(default)]
        pub read_workers: Option<usize>,
        /// Write-priority worker threads (threaded executor).
        #[serde(default)]
        pub write_workers: Option<usize>,
    }
}

fn default_true() -> bool {
    true
}

impl RegionsConfig {
    /// A device at `path` of `capacity` bytes, every other setting at its default.
    pub fn new(path: impl Into<PathBuf>, capacity: u64) -> Self {
        with_run_config_unset!(RegionsConfig {
            path: path.into(),
            capacity: Bytes(capacity),
            region_bytes: None,
            executor: ExecutorKind::default(),
            eviction: Eviction::default(),
            reinsert: true,
            fsync: false,
            o_direct: DirectMode::default(),
            events: false,
            rank: 0,
            read_workers: None,
            write_workers: None,
        })
    }

    /// The engine's settings.
    pub fn tier_config(&self) -> RegionsTierConfig {
        let mut cfg = RegionsTierConfig::new(&self.path, self.capacity.0, run_config!(self));
        if let Some(b) = self.region_bytes {
            cfg.region_bytes = b.0;
        }
        cfg.rank = self.rank;
        cfg.o_direct = self.o_direct;
        cfg.fsync = self.fsync;
        cfg.eviction = self.eviction;
        cfg.reinsert = self.reinsert;
        cfg.events = self.events;
        cfg
    }
}

/// A configuration file could not be used.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read(PathBuf, std::io::Error),
    /// The file is not a valid configuration.
    Parse(PathBuf, String),
    /// A value in the file is out of range.
    Invalid(PathBuf, InvalidConfig),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            ConfigError::Parse(p, e) => write!(f, "{}: {e}", p.display()),
            ConfigError::Invalid(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for ConfigError {}

impl CacheConfig {
    /// Parses TOML text and [validates](Self::validate) it.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let config: CacheConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// Reads, parses and [validates](Self::validate) a TOML file.
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        let config: CacheConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse(path.into(), e.to_string()))?;
        config.validate().map_err(|e| ConfigError::Invalid(path.into(), e))?;
        Ok(config)
    }

    /// Checks every limit of the configuration, the one place they live:
    ///
    /// - `block_bytes` from 1 to [`MAX_BLOCK_BYTES`];
    /// - `shared_memory`, when given, is not an empty path;
    /// - each tier's: an fs tier's `root_dir` (a regions tier's `path`) is not empty, and
    ///   `read_workers` and `write_workers`, when given, are from 1 to [`MAX_WORKERS`]; a
    ///   redis tier's settings are in range (`connections` 1 to 256, `timeout_ms`, `ttl_ms`,
    ///   `pipeline` and `index_capacity` at least 1).
    ///
    /// `num_blocks = 0` is valid (a cache that keeps nothing: every store answers no space);
    /// any `u32` is, as far as limits go: with rows of at most 1 GiB the region's size fits in
    /// 64 bits, and memory the kernel will not map is an error naming the size when the
    /// region is made. File modes are checked when read ([`FileMode`]).
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if !(1..=MAX_BLOCK_BYTES).contains(&self.block_bytes) {
            return Err(InvalidConfig::new(
                "block_bytes",
                format!("{} is not from 1 to {MAX_BLOCK_BYTES}", self.block_bytes),
            ));
        }
        if self.shared_memory.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(InvalidConfig::new("shared_memory", "must not be an empty path"));
        }
        for (i, tier) in self.tiers.iter().enumerate() {
            tier.validate().map_err(|e| e.inside(&format!("tiers[{i}]")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_and_unknown_keys() {
        let cfg = CacheConfig::from_toml(
            r#"
            num_blocks = 8
            policy = "arc"
            [[tiers]]
            type = "memory"
            [[tiers]]
            type = "fs"
            root_dir = "/tmp/x"
            format = "vllm"
            model_name = "m/n"
            rank = 2
            "#,
        )
        .unwrap();
        assert_eq!(cfg.block_bytes, 4096);
        assert_eq!(cfg.policy, PolicyKind::Arc);
        assert_eq!(cfg.promotion_deadline_steps, 64);
        let TierConfig::Fs(fs) = &cfg.tiers[1] else { panic!("fs tier expected") };
        let t = fs.tier_config(4096);
        assert_eq!((t.rank, t.format, t.run.model_name.as_str()), (2, StorageFormat::Vllm, "m/n"));
        assert!(CacheConfig::from_toml("num_blocks = 1\nnum_blokcs = 2").unwrap_err().contains("num_blokcs"));
        let bad = "num_blocks = 1\n[[tiers]]\ntype = \"fs\"\nroot_dir = \"/x\"\nexecutr = \"uring\"";
        let regions = CacheConfig::from_toml(
            "num_blocks = 1\n[[tiers]]\ntype = \"regions\"\npath = \"/d\"\ncapacity = \"2G\"\nregion_bytes = 1048576\n\
             eviction = \"fifo\"\nmodel_name = \"m\"",
        )
        .unwrap();
        let TierConfig::Regions(r) = &regions.tiers[0] else { panic!("a regions tier expected") };
        let t = r.tier_config();
        assert_eq!((t.capacity, t.region_bytes, t.eviction, t.reinsert), (2 << 30, 1 << 20, Eviction::Fifo, true));
        assert_eq!(t.run.model_name, "m");
        for bad in ["capacity = \"2X\"", "capacity = -1", "capacty = 1"] {
            let text = format!("num_blocks = 1\n[[tiers]]\ntype = \"regions\"\npath = \"/d\"\n{bad}");
            assert!(CacheConfig::from_toml(&text).is_err(), "{bad}");
        }
        assert!(CacheConfig::from_toml(bad).unwrap_err().contains("executr"));
        assert!(CacheConfig::from_toml("num_blocks = 1\n[[tiers]]\ntype = \"tape\"").is_err());
        assert!(CacheConfig::from_toml("num_blocks = 1\n[[tiers]]\ntype = \"memory\"\nsize = 3").is_err());
    }

    /// Issue 11, item 12: out-of-range values are refused in one place, by a typed error that
    /// names the field (`block_bytes = 0` used to reach `simulate` and divide by zero), from
    /// TOML text, from a file (naming it too), and from a configuration built in code.
    #[test]
    fn out_of_range_values_are_refused_naming_the_field() {
        let field = |text: &str| {
            let cfg: CacheConfig = toml::from_str(text).unwrap();
            cfg.validate().unwrap_err().field
        };
        let fs = |line: &str| {
            format!("num_blocks = 1\n[[tiers]]\ntype = \"memory\"\n[[tiers]]\ntype = \"fs\"\nroot_dir = \"/x\"\n{line}")
        };
        assert_eq!(field("num_blocks = 1\nblock_bytes = 0"), "block_bytes");
        assert_eq!(field(&format!("num_blocks = 1\nblock_bytes = {}", MAX_BLOCK_BYTES + 1)), "block_bytes");
        assert_eq!(field("num_blocks = 1\nshared_memory = \"\""), "shared_memory");
        assert_eq!(field(&fs("read_workers = 0")), "tiers[1].read_workers");
        assert_eq!(field(&fs("write_workers = 1025")), "tiers[1].write_workers");
        assert_eq!(field("num_blocks = 1\n[[tiers]]\ntype = \"fs\"\nroot_dir = \"\""), "tiers[0].root_dir");
        for ok in ["num_blocks = 0", "num_blocks = 1\nblock_bytes = 1", "num_blocks = 8\nblock_bytes = 1073741824"] {
            CacheConfig::from_toml(ok).unwrap();
        }
        CacheConfig::from_toml(&fs("read_workers = 1\nwrite_workers = 1024")).unwrap();
        let redis = |line: &str| format!("num_blocks = 1\n[[tiers]]\ntype = \"redis\"\nurl = \"redis://h:1\"\n{line}");
        for bad in ["connections = 0", "connections = 257", "timeout_ms = 0", "pipeline = 0", "ttl_ms = 0"] {
            let text = CacheConfig::from_toml(&redis(bad)).unwrap_err();
            let setting = bad.split(' ').next().unwrap().trim_end_matches("_ms");
            assert!(text.contains("`tiers[0].redis`") && text.contains(setting), "{bad}: {text}");
        }
        CacheConfig::from_toml(&redis("connections = 256\ntimeout_ms = 1")).unwrap();

        let err = CacheConfig::from_toml("num_blocks = 4\nblock_bytes = 0").unwrap_err();
        assert!(err.contains("`block_bytes`"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kvtier.toml");
        std::fs::write(&path, fs("read_workers = 100000")).unwrap();
        match CacheConfig::from_toml_file(&path) {
            Err(e @ ConfigError::Invalid(..)) => {
                let text = e.to_string();
                assert!(text.contains("kvtier.toml") && text.contains("`tiers[1].read_workers`"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        let mut built = CacheConfig::from_toml("num_blocks = 4").unwrap();
        built.block_bytes = 0;
        match crate::TieredCache::new(&built) {
            Err(crate::CacheError::Config(e)) => assert_eq!(e.field, "block_bytes"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    /// Issue 11, item 27: the modes of what a cache creates come from its configuration,
    /// owner-only unless set, spelled as TOML integers or octal strings.
    #[test]
    fn file_modes_are_configured_owner_only_by_default() {
        let fs = |line: &str| {
            let text = format!("num_blocks = 1\n{line}\n[[tiers]]\ntype = \"fs\"\nroot_dir = \"/x\"");
            CacheConfig::from_toml(&text)
        };
        let cfg = fs("").unwrap();
        let TierConfig::Fs(tier) = &cfg.tiers[0] else { unreachable!() };
        assert_eq!(
            (cfg.shared_memory_mode, tier.tier_config(cfg.block_bytes).file_mode),
            (FileMode::OWNER_ONLY, FileMode::OWNER_ONLY)
        );
        let text = "num_blocks = 1\nshared_memory_mode = \"0640\"\n[[tiers]]\ntype = \"fs\"\nroot_dir = \"/x\"\nfile_mode = 0o660";
        let cfg = CacheConfig::from_toml(text).unwrap();
        let TierConfig::Fs(tier) = &cfg.tiers[0] else { unreachable!() };
        assert_eq!((cfg.shared_memory_mode.file(), tier.tier_config(cfg.block_bytes).file_mode.file()), (0o640, 0o660));
        let err = fs("shared_memory_mode = 0o755").unwrap_err();
        assert!(err.contains("shared_memory_mode") && err.contains("0o755"), "{err}");
    }

    #[test]
    fn enum_spellings() {
        let fs = |line: &str| {
            let text = format!("num_blocks = 1\n[[tiers]]\ntype = \"fs\"\nroot_dir = \"/x\"\n{line}");
            CacheConfig::from_toml(&text).map(|c| match &c.tiers[0] {
                TierConfig::Fs(fs) => fs.tier_config(4096),
                _ => unreachable!(),
            })
        };
        for (text, mode) in [("auto", DirectMode::Auto), ("on", DirectMode::On), ("off", DirectMode::Off)] {
            assert_eq!(fs(&format!("o_direct = \"{text}\"")).unwrap().o_direct, mode);
        }
        for (text, format) in [("native", StorageFormat::Native), ("vllm", StorageFormat::Vllm)] {
            assert_eq!(fs(&format!("format = \"{text}\"")).unwrap().format, format);
        }
        assert_eq!(fs("").unwrap().format, StorageFormat::Native);
        for bad in ["format = \"Native\"", "format = \"raw\"", "o_direct = \"yes\"", "executor = \"Uring\""] {
            assert!(fs(bad).is_err(), "{bad}");
        }
        assert_eq!(CacheConfig::from_toml("num_blocks = 1\npolicy = \"lru\"").unwrap().policy, PolicyKind::Lru);
        assert!(CacheConfig::from_toml("num_blocks = 1\npolicy = \"LRU\"").is_err());
    }

    #[test]
    fn redis_entries() {
        let cfg = CacheConfig::from_toml(
            r#"
            num_blocks = 8
            [[tiers]]
            type = "redis"
            url = "redis://:pw@127.0.0.1:7000/2"
            seeds = ["redis://127.0.0.1:7001"]
            connections = 3
            timeout_ms = 250
            ttl_ms = 60000
            probe_on_miss = true
            client = "crate"
            model_name = "m/n"
            tp_size = 2
            rank = 1
            "#,
        )
        .unwrap();
        let TierConfig::Redis(redis) = &cfg.tiers[0] else { panic!("redis tier expected") };
        let t = redis.tier_config();
        assert_eq!(t.urls, ["redis://:pw@127.0.0.1:7000/2", "redis://127.0.0.1:7001"]);
        assert_eq!((t.connections, t.timeout, t.ttl), (3, Duration::from_millis(250), Some(Duration::from_secs(60))));
        assert_eq!((t.rank, t.probe_on_miss, t.client), (1, true, ClientKind::Crate));
        assert_eq!((t.run.model_name.as_str(), t.run.tp_size), ("m/n", 2));
        let defaults = RedisConfig::new("redis://x").tier_config();
        assert_eq!(
            (defaults.connections, defaults.timeout, defaults.client),
            (2, Duration::from_millis(500), ClientKind::Thin)
        );
        for bad in
            ["url = \"redis://x\"\nconections = 2", "client = \"thin\"", "url = \"redis://x\"\nclient = \"Thin\""]
        {
            let text = format!("num_blocks = 1\n[[tiers]]\ntype = \"redis\"\n{bad}");
            assert!(CacheConfig::from_toml(&text).is_err(), "{bad}");
        }
    }
}
