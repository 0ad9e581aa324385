//! Typed configuration of a [`crate::TieredCache`], loadable from TOML; the same tier entries
//! are what a `kvtier replay` config line carries.
//!
//! ```toml
//! num_blocks = 4096
//! block_bytes = 2097152
//! policy = "arc"                  # "lru" (default) or "arc"
//! promotion_deadline_steps = 64   # 0 disables the deadline
//! # shared_memory = "/dev/shm/kvtier-primary"   # map the rows from a shared file
//!
//! [[tiers]]
//! type = "fs"
//! root_dir = "/mnt/nvme/kvtier"
//! executor = "auto"               # "threaded", "uring", "sim" or "auto"
//! format = "native"               # or "vllm" (raw rows, vLLM-compatible)
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

use std::path::{Path, PathBuf};

use kvtier_core::PolicyKind;
use kvtier_fs::direct::DirectMode;
use kvtier_fs::namespace::{KvCacheGroup, RunConfig};
use kvtier_fs::{FsTierConfig, StorageFormat};
use kvtier_regions::{Eviction, RegionsTierConfig};
use serde::Deserialize;

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
    /// Map the primary rows from this file (e.g. under /dev/shm) instead of anonymous memory.
    #[serde(default)]
    pub shared_memory: Option<PathBuf>,
    /// Secondary tiers, in order.
    #[serde(default)]
    pub tiers: Vec<TierConfig>,
}

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
    /// Run config: model name.
    #[serde(default)]
    pub model_name: Option<String>,
    /// Run config: KV dtype.
    #[serde(default)]
    pub dtype: Option<String>,
    /// Run config: tokens per hash.
    #[serde(default)]
    pub tokens_per_hash: Option<u64>,
    /// Run config: GPU blocks per file.
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
}

/// The run config named by a tier entry's run-config fields (absent ones take
/// [`RunConfig::default`]'s values): one definition for every tier type that has them.
macro_rules! run_config_of {
    ($c:expr) => {{
        let c = $c;
        let d = RunConfig::default();
        RunConfig {
            model_name: c.model_name.clone().unwrap_or(d.model_name),
            dtype: c.dtype.clone().unwrap_or(d.dtype),
            tokens_per_hash: c.tokens_per_hash.unwrap_or(d.tokens_per_hash),
            blocks_per_file: c.blocks_per_file.unwrap_or(d.blocks_per_file),
            tp_size: c.tp_size.unwrap_or(d.tp_size),
            pp_size: c.pp_size.unwrap_or(d.pp_size),
            pcp_size: c.pcp_size.unwrap_or(d.pcp_size),
            dcp_size: c.dcp_size.unwrap_or(d.dcp_size),
            kv_cache_groups: c.kv_cache_groups.clone().unwrap_or(d.kv_cache_groups),
            parallel_agnostic: c.parallel_agnostic.unwrap_or(d.parallel_agnostic),
            replicated_layout: c.replicated_layout.unwrap_or(d.replicated_layout),
            canonical_format: c.canonical_format.clone().or(d.canonical_format),
            ..d
        }
    }};
}

impl FsConfig {
    /// A tier under `root_dir` with every other setting at its default (as an `fs` table with
    /// only `root_dir` would have them).
    pub fn new(root_dir: impl Into<PathBuf>) -> Self {
        FsConfig {
            root_dir: root_dir.into(),
            executor: ExecutorKind::default(),
            format: StorageFormat::default(),
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
            rank: 0,
            events: false,
            o_direct: DirectMode::default(),
            fsync: false,
            probe_on_miss: false,
            max_blocks: None,
            read_workers: None,
            write_workers: None,
        }
    }

    /// The FS tier's settings.
    pub fn tier_config(&self) -> FsTierConfig {
        let run = run_config_of!(self);
        let mut cfg = FsTierConfig::new(&self.root_dir, run);
        cfg.rank = self.rank;
        cfg.format = self.format;
        cfg.o_direct = self.o_direct;
        cfg.fsync = self.fsync;
        cfg.probe_on_miss = self.probe_on_miss;
        cfg.events = self.events;
        cfg.max_blocks = self.max_blocks;
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
    /// Run config: model name.
    #[serde(default)]
    pub model_name: Option<String>,
    /// Run config: KV dtype.
    #[serde(default)]
    pub dtype: Option<String>,
    /// Run config: tokens per hash.
    #[serde(default)]
    pub tokens_per_hash: Option<u64>,
    /// Run config: GPU blocks per file.
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
    /// Run config (vLLM 0.33): the canonical byte-format identity.
    #[serde(default)]
    pub canonical_format: Option<String>,
    /// Read-priority worker threads (threaded executor).
    #[serde(default)]
    pub read_workers: Option<usize>,
    /// Write-priority worker threads (threaded executor).
    #[serde(default)]
    pub write_workers: Option<usize>,
}

fn default_true() -> bool {
    true
}

impl RegionsConfig {
    /// A device at `path` of `capacity` bytes, every other setting at its default.
    pub fn new(path: impl Into<PathBuf>, capacity: u64) -> Self {
        RegionsConfig {
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
            read_workers: None,
            write_workers: None,
        }
    }

    /// The engine's settings.
    pub fn tier_config(&self) -> RegionsTierConfig {
        let mut cfg = RegionsTierConfig::new(&self.path, self.capacity.0, run_config_of!(self));
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
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            ConfigError::Parse(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for ConfigError {}

impl CacheConfig {
    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Reads and parses a TOML file.
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        Self::from_toml(&text).map_err(|e| ConfigError::Parse(path.into(), e))
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
        let t = fs.tier_config();
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

    #[test]
    fn enum_spellings() {
        let fs = |line: &str| {
            let text = format!("num_blocks = 1\n[[tiers]]\ntype = \"fs\"\nroot_dir = \"/x\"\n{line}");
            CacheConfig::from_toml(&text).map(|c| match &c.tiers[0] {
                TierConfig::Fs(fs) => fs.tier_config(),
                TierConfig::Memory(_) | TierConfig::Regions(_) => unreachable!(),
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
}
