//! A region engine's settings.

use std::path::PathBuf;

use kvtier_fs::direct::DirectMode;
use kvtier_fs::namespace::RunConfig;

use crate::geometry::DEFAULT_REGION_BYTES;

/// The `storage_format` a region engine adds to the run config it keeps in its device header,
/// so its namespace digest (which every record carries) is never an FS tier's.
pub const REGIONS_STORAGE_FORMAT: &str = "kvtier-regions-v1";

/// Which sealed region a reclaim takes (spelled `lru` and `fifo` in configuration files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Eviction {
    /// The region least recently written or loaded from.
    #[default]
    Lru,
    /// The region sealed longest ago.
    Fifo,
}

/// Settings of one region engine.
#[derive(Debug, Clone)]
pub struct RegionsTierConfig {
    /// The device: a regular file (created and preallocated at `capacity` if absent) or a
    /// block device.
    pub path: PathBuf,
    /// Bytes of the device to use: its header area and its regions (rounded down to whole
    /// regions). Nothing is ever written beyond it.
    pub capacity: u64,
    /// Bytes of a region (a multiple of 4096, holding at least one record).
    pub region_bytes: u64,
    /// The run config that names the namespace (checked against the device's header).
    pub run: RunConfig,
    /// This process's rank (also checked).
    pub rank: u32,
    /// `O_DIRECT`: probe (`Auto`), require, or never.
    pub o_direct: DirectMode,
    /// `fdatasync` every write before it counts (a block before it is indexed, a summary or a
    /// reclaimed region's marker before anything relies on it): the index then survives a
    /// power cut as it is. Without it, a process crash loses nothing that completed, and after
    /// a power cut the next open reads and verifies every record.
    pub fsync: bool,
    /// Which region a reclaim takes.
    pub eviction: Eviction,
    /// A reclaimed region's blocks loaded since they were written are copied to the open
    /// region (at most half a region's worth per reclaim) instead of dropped.
    pub reinsert: bool,
    /// Raise STORAGE events for stored blocks (per store job) and evicted ones.
    pub events: bool,
}

impl RegionsTierConfig {
    /// Defaults for a device at `path` of `capacity` bytes: 16 MiB regions, `O_DIRECT` auto,
    /// no fsync, LRU over regions with reinsertion, no events.
    pub fn new(path: impl Into<PathBuf>, capacity: u64, run: RunConfig) -> Self {
        RegionsTierConfig {
            path: path.into(),
            capacity,
            region_bytes: DEFAULT_REGION_BYTES,
            run,
            rank: 0,
            o_direct: DirectMode::Auto,
            fsync: false,
            eviction: Eviction::Lru,
            reinsert: true,
            events: false,
        }
    }

    /// The run config as the device header keeps it: with the engine's `storage_format`.
    pub fn effective_run_config(&self) -> RunConfig {
        RunConfig { storage_format: Some(REGIONS_STORAGE_FORMAT.to_string()), ..self.run.clone() }
    }
}
