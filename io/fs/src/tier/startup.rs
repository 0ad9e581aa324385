//! What an FS tier does before it serves anything: rebuild the index from the rank directory,
//! deal with what crashed runs left behind, and leave its own open marker.
//!
//! - **The scan** walks the rank directory (`{h[0:3]}/{h[3:5]}_g{group}/{h}.bin`, shallower for
//!   hashes of fewer than 3 bytes): it indexes block files, removes temp files of processes
//!   that are gone (never one a live process may still be writing), and counts everything else
//!   as foreign. A block file of a length no block of this tier has (a torn file, or one
//!   written for another block size) is removed: no load could use it.
//! - **Recency** after a restart is the files' modification times (a store writes its file, a
//!   reuse overwrites it): the oldest is the least recently used, ties broken by key. Loads
//!   and touches of the previous run are not remembered (they write nothing to disk).
//! - **Crash markers.** An open tier keeps a marker file in its rank directory
//!   (`.kvtier-open.{pid}.{n}`: the boot it was written in, and whether blocks are synced); a
//!   clean shutdown removes it. A marker left by a dead process means that process crashed: if
//!   the machine rebooted since (another boot id) and blocks were not `fsync`ed, files it
//!   published may have lost their data, so start-up reads and verifies every native block and
//!   removes those that fail before indexing them. A run of this boot that did not sync its
//!   blocks left them in the page cache: the file system is synced before its marker goes. A
//!   process crash alone loses nothing (the page cache survives it): only its stale temp files
//!   are swept. vLLM-format blocks carry no checksum and cannot be verified; a load still
//!   catches a wrong length.
//! - **The bound**: blocks beyond [`FsTierConfig::max_blocks`] are removed, least recently used
//!   (oldest) first; [`StartupReport::evicted`] counts them, and a line on stderr says so.
//!
//! Stale markers are removed only once all this is done and the new marker is written, so a
//! crash during start-up leaves them for the next one.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kvtier_core::OffloadKey;

use crate::format;
use crate::index::BlockIndex;
use crate::layout::BlockLayout;
use crate::namespace::Layout;
use crate::op::BlockFormat;
use crate::tmpname;
use crate::vfs::Vfs;

use super::{FsTierConfig, StorageFormat};

/// What start-up found.
#[derive(Debug, Clone, Default)]
pub struct StartupReport {
    /// Blocks indexed by the scan.
    pub blocks_indexed: usize,
    /// Stale temp files of dead processes removed.
    pub stale_temps_removed: usize,
    /// Files in the namespace that are neither blocks nor temp files (left alone).
    pub foreign_files: usize,
    /// Blocks beyond [`FsTierConfig::max_blocks`] removed (the least recently stored).
    pub evicted: usize,
    /// Block files of the wrong length removed (torn, or of another block size).
    pub wrong_length_removed: usize,
    /// Markers of runs that did not shut down cleanly (their processes are gone).
    pub crashed_runs: usize,
    /// Whether every native block was read and verified (after a crashed run in an earlier
    /// boot that did not sync its blocks).
    pub verified: bool,
    /// Blocks that failed that verification (removed, never indexed).
    pub torn_removed: usize,
    /// How long the scan took.
    pub scan_time: Duration,
    /// Whether O_DIRECT is used.
    pub o_direct: bool,
}

/// What start-up learned from the open markers of runs that did not shut down cleanly.
#[derive(Debug, Default)]
pub(super) struct Stale {
    /// Their markers, removed only once start-up has dealt with them (so a crash during the
    /// verification leaves them for the next start-up).
    markers: Vec<PathBuf>,
    /// A run of another boot (or an unknown one) did not sync its blocks: verify them.
    verify: bool,
    /// A run of this boot did not sync its blocks: their data is in the page cache, not on
    /// disk yet. Sync the file system before the markers go.
    sync: bool,
}

/// Rebuilds the index of `layout`'s rank directory on `fs`: the scan, the verification a
/// crashed run calls for, and the bound. Returns the index, the report (all but `scan_time`
/// and `o_direct`, which the caller fills in) and the stale markers to remove once the new one
/// is written.
pub(super) fn recover(
    fs: &dyn Vfs,
    layout: &Layout,
    config: &FsTierConfig,
) -> io::Result<(BlockIndex, StartupReport, Stale)> {
    let started = Instant::now();
    let rank_dir = layout.rank_dir();
    let mut index = BlockIndex::new();
    let mut report = StartupReport::default();
    let boot = fs.boot_id();
    let mut stale = Stale::default();
    let file_len = block_file_len(config);
    let mut stamps = Vec::new();
    let found = Found { index: &mut index, stamps: &mut stamps, file_len };
    scan(fs, layout, rank_dir, found, &mut report, boot.as_deref(), &mut stale)?;
    index.reorder(&mut stamps);
    drop(stamps);
    report.crashed_runs = stale.markers.len();
    if stale.verify && config.format == StorageFormat::Native {
        report.verified = true;
        let namespace = layout.namespace_bytes();
        let keys: Vec<OffloadKey> = index.keys_by_recency().collect();
        for key in keys {
            let path = layout.block_path(&key);
            let intact = fs.read(&path).is_ok_and(|bytes| format::verify_file(&bytes, &namespace, &key).is_ok());
            if !intact {
                let _ = fs.remove_file(&path);
                index.remove(&key);
                report.torn_removed += 1;
            }
        }
    }
    if let Some(max) = config.max_blocks {
        while index.len() > max {
            let Some(victim) = index.pop_victim(|_| false) else { break };
            if fs.remove_file(&layout.block_path(&victim)).is_ok() {
                report.evicted += 1;
            }
        }
        if report.evicted > 0 {
            eprintln!(
                "kvtier: fs tier at {}: {} blocks on disk, max_blocks = {max}: removed the {} least recently stored",
                rank_dir.display(),
                index.len() + report.evicted,
                report.evicted
            );
        }
    }
    if stale.sync {
        fs.sync_fs(rank_dir)?;
    }
    report.blocks_indexed = index.len();
    report.scan_time = started.elapsed();
    Ok((index, report, stale))
}

/// Writes this run's open marker in `rank_dir` (synced, so a crash from here on leaves it
/// behind), then removes the `stale` ones. Returns the marker's path.
pub(super) fn mark_open(fs: &dyn Vfs, rank_dir: &Path, fsync: bool, stale: &Stale) -> io::Result<PathBuf> {
    let boot = fs.boot_id();
    let synced = if fsync { "synced" } else { "unsynced" };
    let content = format!("{}\n{synced}\n", boot.as_deref().unwrap_or("unknown"));
    let mut attempt = 0;
    let marker = loop {
        let marker = rank_dir.join(tmpname::marker_name(fs.process_id(), tmpname::next_seq()));
        match fs.write_new_synced(&marker, content.as_bytes()) {
            Ok(()) => break marker,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 16 => attempt += 1,
            Err(e) => return Err(e),
        }
    };
    for path in &stale.markers {
        let _ = fs.remove_file(path);
    }
    Ok(marker)
}

/// An open marker of process `pid` found at start-up. Stale unless that process is alive (a
/// process of another boot never is, and neither is this process, whose marker comes later;
/// a pid reused by another process after a crash must not keep a marker alive).
fn stale_marker(fs: &dyn Vfs, path: &Path, pid: u32, boot: Option<&str>, stale: &mut Stale) {
    let content = fs.read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&content);
    let mut lines = text.lines();
    let (marker_boot, synced) = (lines.next(), lines.next() == Some("synced"));
    let same_boot = matches!((marker_boot, boot), (Some(a), Some(b)) if a == b && a != "unknown");
    if same_boot && pid != fs.process_id() && fs.is_process_alive(pid) {
        return;
    }
    stale.markers.push(path.to_path_buf());
    if !synced {
        if same_boot {
            stale.sync = true;
        } else {
            stale.verify = true;
        }
    }
}

/// The length of this tier's block files.
fn block_file_len(config: &FsTierConfig) -> u64 {
    let format = match config.format {
        StorageFormat::Native => {
            BlockFormat::Native { namespace: [0; 12], key: OffloadKey::new(&[], 0).expect("a key") }
        }
        StorageFormat::Vllm => BlockFormat::Vllm,
    };
    BlockLayout::new(&format, config.block_bytes, usize::MAX).map_or(u64::MAX, |l| l.file_len())
}

/// A file's modification time as a recency stamp (nanoseconds since the epoch; 0 if unknown).
fn stamp(modified: Option<SystemTime>) -> u64 {
    let since = modified.and_then(|m| m.duration_since(UNIX_EPOCH).ok());
    since.map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Where the scan puts the blocks it finds: the index, each entry's stamp, and the length a
/// block file must have.
struct Found<'a> {
    index: &'a mut BlockIndex,
    stamps: &'a mut Vec<(u64, u32)>,
    file_len: u64,
}

/// The scan (see the module docs); collects the open markers of runs that did not shut down
/// cleanly (see [`stale_marker`]).
fn scan(
    fs: &dyn Vfs,
    layout: &Layout,
    rank_dir: &Path,
    found: Found<'_>,
    report: &mut StartupReport,
    boot: Option<&str>,
    stale: &mut Stale,
) -> io::Result<()> {
    let mut dirs = vec![(rank_dir.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        for entry in fs.read_dir(&dir)? {
            let path = dir.join(&entry.name);
            if let Some(pid) = tmpname::parse_marker(&entry.name).filter(|_| depth == 0 && entry.is_file) {
                stale_marker(fs, &path, pid, boot, stale);
                continue;
            }
            if entry.is_dir {
                if depth < 2 {
                    dirs.push((path, depth + 1));
                } else {
                    report.foreign_files += 1;
                }
                continue;
            }
            if let Some(pid) = tmpname::parse_temp(&entry.name) {
                if !fs.is_process_alive(pid) && fs.remove_file(&path).is_ok() {
                    report.stale_temps_removed += 1;
                }
                continue;
            }
            let rel = path.strip_prefix(rank_dir).unwrap_or(&path);
            match layout.parse_block_path(rel) {
                Some(_) if entry.is_file && entry.len != found.file_len => {
                    if fs.remove_file(&path).is_ok() {
                        report.wrong_length_removed += 1;
                    }
                }
                Some(key) if entry.is_file => {
                    if let Some(i) = found.index.insert_new(key) {
                        found.stamps.push((stamp(entry.modified), i));
                    }
                }
                _ => report.foreign_files += 1,
            }
        }
    }
    Ok(())
}
