//! What an FS tier does before it serves anything: leave its own open marker, rebuild the
//! index from the rank directory, and deal with what crashed runs left behind.
//!
//! - **Open markers and liveness.** An open tier keeps a marker file in its rank directory
//!   (`.kvtier-open.{pid}.{n}`: the boot it was written in, and whether blocks are synced) and
//!   holds an exclusive lock on it for as long as it is open (see [`Vfs::create_locked`]: the
//!   kernel releases it when the process dies). A marker is live exactly when it is locked:
//!   never judged by its pid, which names another process across PID namespaces (containers
//!   sharing a volume) and is the same for two tiers of one process. The marker is written and
//!   locked under a temp name, then hard-linked to its marker name, so a marker name only ever
//!   names a locked file with its content (or one whose owner is gone). It is the first thing
//!   a tier writes, before its `O_DIRECT` probe and its scan; a clean shutdown removes it
//!   (still locked), then drops the lock.
//! - **The scan** walks the rank directory (`{h[0:3]}/{h[3:5]}_g{group}/{h}.bin`, shallower for
//!   hashes of fewer than 3 bytes): it indexes block files, removes temp files of processes
//!   that have no live tier (a temp file names its pid: only a live marker of that pid, other
//!   than this tier's own, keeps it, so a live process's store is never broken), and counts
//!   everything else as foreign. A block file of a length no block of this tier has (a torn file, or one
//!   written for another block size) is removed: no load could use it.
//! - **Recency** after a restart is the files' modification times (a store writes its file, a
//!   reuse overwrites it): the oldest is the least recently used, ties broken by key. Loads
//!   and touches of the previous run are not remembered (they write nothing to disk).
//! - **Crash markers.** An unlocked marker was left by a run that did not shut down. A process
//!   crash alone loses nothing (the page cache survives it): only its stale temp files are
//!   swept, and if its blocks were not synced, the file system is synced before its marker
//!   goes. If the machine rebooted since (another boot id) and blocks were not `fsync`ed,
//!   files that run wrote may have lost their data (a power cut: empty, truncated, torn). Those
//!   files are the ones not older than its marker (written when the run started; a store
//!   writes its file, a reuse overwrites it: either sets the modification time), so only they
//!   are suspect:
//!   - native blocks are verified in the background ([`super::verify`]): `open` does not wait,
//!     loads verify every block they read meanwhile, a torn block is removed, one that cannot
//!     be read is kept;
//!   - vLLM-format blocks carry no checksum, so a zero-filled file of the right length cannot
//!     be told from a block: they are removed (the cache loses them; it never serves them).
//!     A vLLM process writing the directory during this start-up may lose fresh blocks to it.
//! - **The bound**: blocks beyond [`FsTierConfig::max_blocks`] are removed, least recently used
//!   (oldest) first; [`StartupReport::evicted`] counts them, and a line on stderr says so.
//!
//! Stale markers are removed only once all this is done (the background verification
//! included) and the new marker is written, so a crash before that leaves them for the next
//! start-up.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kvtier_core::OffloadKey;

use crate::index::BlockIndex;
use crate::layout::BlockLayout;
use crate::namespace::Layout;
use crate::op::BlockFormat;
use crate::tmpname::{self, SHARE_FILE};
use crate::vfs::{DirEntry, FileLock, Vfs};

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
    /// Whether the native blocks a crashed run of an earlier boot may have written without
    /// syncing them are being verified, in the background ([`super::FsTier::verification`]
    /// says how far it is).
    pub verified: bool,
    /// Blocks that failed that verification so far (removed); final once the verification
    /// has finished.
    pub torn_removed: usize,
    /// vLLM-format block files a crashed run of an earlier boot may have written without
    /// syncing them (not older than its marker), removed: raw rows carry no checksum, so a
    /// zero-filled file of the right length cannot be told from a block (issue 11, item 5).
    pub unverifiable_removed: usize,
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
    pub verify: bool,
    /// The oldest such run's marker's modification time (a recency stamp): the blocks it may
    /// have written are not older than that (0 when unknown: all of them).
    since: u64,
    /// A run of this boot did not sync its blocks: their data is in the page cache, not on
    /// disk yet. Sync the file system before the markers go.
    sync: bool,
}

/// What start-up found and left to do.
#[derive(Debug)]
pub(super) struct Recovered {
    pub index: BlockIndex,
    /// All but `scan_time` and `o_direct`, which the caller fills in.
    pub report: StartupReport,
    /// The crashed runs' markers, to remove once `verify` is done.
    pub stale: Stale,
    /// Native blocks to verify in the background (see [`super::verify`]).
    pub verify: Vec<OffloadKey>,
}

/// Rebuilds the index of `layout`'s rank directory on `fs`: the scan, what a crashed run
/// calls for, and the bound.
pub(super) fn recover(
    fs: &dyn Vfs,
    layout: &Layout,
    config: &FsTierConfig,
    own_marker: &Path,
) -> io::Result<Recovered> {
    let started = Instant::now();
    let rank_dir = layout.rank_dir();
    let mut index = BlockIndex::new();
    let mut report = StartupReport::default();
    let boot = fs.boot_id();
    let mut stale = Stale::default();
    let file_len = block_file_len(config);
    let mut stamps = Vec::new();
    let found = Found { index: &mut index, stamps: &mut stamps, file_len, own_marker };
    scan(fs, layout, rank_dir, found, &mut report, boot.as_deref(), &mut stale)?;
    index.reorder(&mut stamps);
    report.crashed_runs = stale.markers.len();
    // The blocks a crashed unsynced run of another boot may have written: the most recent,
    // from this position of the recency order on.
    let mut suspect_from = if stale.verify { stamps.partition_point(|&(s, _)| s < stale.since) } else { index.len() };
    drop(stamps);
    if stale.verify && config.format == StorageFormat::Vllm {
        let suspects: Vec<OffloadKey> = index.keys_by_recency().skip(suspect_from).collect();
        for key in suspects {
            index.remove(&key);
            if fs.remove_file(&layout.block_path(&key)).is_ok() {
                report.unverifiable_removed += 1;
            }
        }
    }
    if let Some(max) = config.max_blocks {
        while index.len() > max {
            let Some(victim) = index.pop_victim(|_| false) else { break };
            suspect_from = suspect_from.saturating_sub(1);
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
    let verify: Vec<OffloadKey> = match config.format {
        StorageFormat::Native if stale.verify => index.keys_by_recency().skip(suspect_from).collect(),
        _ => Vec::new(),
    };
    report.verified = !verify.is_empty();
    report.blocks_indexed = index.len();
    report.scan_time = started.elapsed();
    Ok(Recovered { index, report, stale, verify })
}

/// This run's open marker: its path, and the lock that says the run is alive.
#[derive(Debug)]
pub(super) struct Marker {
    pub path: PathBuf,
    /// Held, never read: dropping it releases the lock.
    _lock: Box<dyn FileLock>,
}

/// Writes this run's open marker in `rank_dir`, locked (see the module docs) and synced, so a
/// crash from here on leaves it behind, unlocked.
pub(super) fn mark_open(fs: &dyn Vfs, rank_dir: &Path, fsync: bool) -> io::Result<Marker> {
    let boot = fs.boot_id();
    let synced = if fsync { "synced" } else { "unsynced" };
    let content = format!("{}\n{synced}\n", boot.as_deref().unwrap_or("unknown"));
    let pid = fs.process_id();
    let mut path = rank_dir.join(tmpname::marker_name(pid, tmpname::next_seq()));
    // A temp name: swept like any other if this process dies before the link.
    let mut temp = tmpname::temp_path_for(&path, pid, tmpname::next_seq());
    let mut lock = fs.create_locked(&temp, content.as_bytes())?;
    for _ in 0..16 {
        match fs.hard_link(&temp, &path) {
            Ok(()) => {
                // Gone already if another start-up swept it (no live marker named this pid).
                let _ = fs.remove_file(&temp);
                return Ok(Marker { path, _lock: lock });
            }
            // Another tier's marker has this name (a process of this pid in another PID
            // namespace): another name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                path = rank_dir.join(tmpname::marker_name(pid, tmpname::next_seq()));
            }
            // Another tier's start-up took the temp file for a dead process's: write it again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                temp = tmpname::temp_path_for(&path, pid, tmpname::next_seq());
                lock = fs.create_locked(&temp, content.as_bytes())?;
            }
            // A file system without hard links: a rename (which would replace a marker of the
            // same name, a pid and counter another PID namespace may share: rare enough).
            Err(_) => {
                if let Err(e) = fs.rename(&temp, &path) {
                    let _ = fs.remove_file(&temp);
                    return Err(e);
                }
                return Ok(Marker { path, _lock: lock });
            }
        }
    }
    let _ = fs.remove_file(&temp);
    Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("no free open-marker name in {}", rank_dir.display())))
}

/// Removes the markers of crashed runs, once start-up has dealt with them.
pub(super) fn remove_stale_markers(fs: &dyn Vfs, stale: &Stale) {
    for path in &stale.markers {
        let _ = fs.remove_file(path);
    }
}

/// An unlocked open marker found at start-up (last modified at `modified`, when it was
/// written): a run that did not shut down. What it says (its boot, whether its blocks were
/// synced) decides what start-up does.
fn stale_marker(fs: &dyn Vfs, path: &Path, modified: Option<SystemTime>, boot: Option<&str>, stale: &mut Stale) {
    let content = fs.read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&content);
    let mut lines = text.lines();
    let (marker_boot, synced) = (lines.next(), lines.next() == Some("synced"));
    let same_boot = matches!((marker_boot, boot), (Some(a), Some(b)) if a == b && a != "unknown");
    stale.markers.push(path.to_path_buf());
    if !synced {
        if same_boot {
            stale.sync = true;
        } else {
            // The oldest such marker bounds what may be torn; a marker of unknown age
            // bounds nothing (everything is suspect).
            let since = stamp(modified);
            stale.since = if stale.verify { stale.since.min(since) } else { since };
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
    /// This tier's own marker (written before the scan).
    own_marker: &'a Path,
}

/// The pids with a live tier in `rank_dir` (a locked marker other than `own`, this tier's),
/// whose temp files are not stale; the markers of runs that did not shut down go to `stale`
/// (see [`stale_marker`]).
fn markers(
    fs: &dyn Vfs,
    rank_dir: &Path,
    top: &[DirEntry],
    own: &Path,
    boot: Option<&str>,
    stale: &mut Stale,
) -> HashSet<u32> {
    let mut live = HashSet::new();
    for entry in top.iter().filter(|e| e.is_file) {
        let Some(pid) = tmpname::parse_marker(&entry.name) else { continue };
        let path = rank_dir.join(&entry.name);
        if path == own {
            continue;
        }
        match fs.is_locked(&path) {
            Ok(false) => stale_marker(fs, &path, entry.modified, boot, stale),
            // Removed since the listing: its run shut down.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Locked, or it cannot be told (another user's file, say): its run is taken for
            // alive, and neither its marker nor its pid's temp files are touched.
            Ok(true) | Err(_) => {
                live.insert(pid);
            }
        }
    }
    live
}

/// The scan (see the module docs): the rank directory's markers first (they say whose temp
/// files are live), then everything else.
fn scan(
    fs: &dyn Vfs,
    layout: &Layout,
    rank_dir: &Path,
    found: Found<'_>,
    report: &mut StartupReport,
    boot: Option<&str>,
    stale: &mut Stale,
) -> io::Result<()> {
    let top = fs.read_dir(rank_dir)?;
    let live = markers(fs, rank_dir, &top, found.own_marker, boot, stale);
    let mut listing = Some(top);
    let mut dirs = vec![(rank_dir.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let entries = match listing.take() {
            Some(top) => top,
            None => fs.read_dir(&dir)?,
        };
        for entry in entries {
            let path = dir.join(&entry.name);
            if depth == 0 && entry.is_file && (tmpname::parse_marker(&entry.name).is_some() || entry.name == SHARE_FILE)
            {
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
                if !live.contains(&pid) && fs.remove_file(&path).is_ok() {
                    report.stale_temps_removed += 1;
                }
                continue;
            }
            let rel = path.strip_prefix(rank_dir).unwrap_or(&path);
            match layout.parse_block_path(rel) {
                Some(_) if entry.is_file && entry.len != found.file_len => {
                    // Only the file that was listed (another process may publish the block
                    // meanwhile).
                    let removed = match entry.identity {
                        Some(id) => fs.remove_if_same(&path, id).unwrap_or(false),
                        None => fs.remove_file(&path).is_ok(),
                    };
                    if removed {
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
