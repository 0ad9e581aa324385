//! `kvtier bench fs`: the FS tier against the disk's ceiling and against a Python peer of
//! vLLM's FS tier, measured in the same run (PERFORMANCE.md, "The ceiling and the peer").
//!
//! For each block size and each executor, in two file-system states:
//!
//! 1. **ceiling**: raw `O_DIRECT` random writes, then random reads, of the block size at the
//!    same queue depth as the executor (that many threads doing `pwrite`/`pread` at shuffled
//!    block-aligned offsets, each offset once) on one preallocated (`fallocate`) and filled file
//!    in the same directory, moving as many bytes as the kvtier phase.
//! 2. **kvtier**: `--blocks` blocks stored, then loaded back, through the real [`FsTier`]
//!    (index, namespace paths, temp file + rename, native format with checksums) over the
//!    chosen executor and an anonymous [`PrimaryRegion`]; jobs of `--job-blocks` blocks, all
//!    submitted, then `wait_idle` + `poll_finished`. Rows are filled with a per-block pattern
//!    before the store and zeroed before the load; a sample of rows is compared byte for byte
//!    after the load. Throughput counts block bytes only (the native format's 4 KiB header is
//!    extra I/O the tier pays for).
//! 3. **peer**: `bench/vllm_fs_peer.py` (our re-implementation of vLLM's FS tier I/O path: 16 +
//!    16 threads, same syscalls, same layout) stores and loads the same number of blocks of
//!    the same size in its own directory.
//!
//! **States.** `quiet`: a fresh directory, after no recent deletions by this run (the quiet
//! pass runs first and defers every deletion). `churn`: immediately before the store, the
//! tier (or the peer) stores a full set of other blocks, empty files are created next to them
//! up to `--churn-files` files in all, and every one of them is deleted, so new inodes are
//! allocated in the slow state PERFORMANCE.md describes (ext4 skips recently deleted inodes
//! one by one). The churn pass starts by deleting everything the quiet pass left. `full`: the
//! tier is bounded to `--blocks` blocks ([`FsTierConfig::max_blocks`]) and already holds that
//! many other blocks, stored through it right after the pass deleted everything the earlier
//! ones left: every timed store evicts the least recently used block and reuses its file
//! (rename to its temp name, overwrite in place, rename to its final name), the steady state
//! of a bounded cache. vLLM's FS tier has no bound, so the peer runs its churn state there.
//!
//! **CPU cost** is user + sys CPU-seconds of the whole process (`getrusage(RUSAGE_SELF)`, so
//! the executor's worker threads are included) around each timed phase, per GB of block bytes
//! moved; the peer measures itself the same way.
//!
//! **Page cache.** All block I/O is `O_DIRECT` (the tier probes it; the ceiling requires it),
//! so the page cache holds no block data. Before each timed phase the run calls `sync` so
//! earlier write-back does not overlap it, and between store and load it also drops the page
//! cache (`/proc/sys/vm/drop_caches`) when writable; the header says whether it was.
//!
//! Every file the benchmark creates lives in one scratch directory (`kvtier-bench-fs.{pid}`
//! under `--dir`), removed at the end, also when the run fails.

use std::error::Error;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier_core::{Completions, Job, JobId, OffloadKey, ReqContext, SecondaryTier, SlotId};
use kvtier_fs::direct::DirectMode;
use kvtier_fs::namespace::RunConfig;
use kvtier_fs::region::{Access, PrimaryRegion};
use kvtier_fs::{Executor, FsTier, FsTierConfig, StorageFormat};
use kvtier_io_threaded::{ThreadedConfig, ThreadedExecutor};
use kvtier_io_uring::{UringConfig, UringExecutor};
use memmap2::MmapMut;
use serde::Serialize;

use crate::args::parse_size;

type BoxError = Box<dyn Error>;

/// The block sizes measured by default.
pub const DEFAULT_BLOCK_SIZES: &str = "64K,256K,1M,2M";
/// Bytes moved per phase (store, load, each ceiling direction) when `--blocks` is not given.
pub const DEFAULT_PHASE_BYTES: u64 = 512 << 20;
/// Files created and deleted before a churn-state store (blocks plus empty files).
pub const DEFAULT_CHURN_FILES: u64 = 8192;
/// Executor names `--executor` accepts (an executor not built into this binary is reported
/// as not available).
pub const EXECUTORS: &[&str] = &["threaded", "uring"];

/// O_DIRECT alignment of offsets, lengths and buffers.
const ALIGN: u64 = 4096;
/// Files [`create_cost`] creates before each store.
const CREATE_PROBE_FILES: usize = 256;
/// Rows whose bytes are compared after each load (evenly spaced, plus the last).
const VERIFY_SAMPLE: u64 = 64;

/// Arguments of `kvtier bench fs`.
#[derive(Debug, Clone, clap::Args)]
pub struct FsArgs {
    /// Directory to run in; a scratch subdirectory is created in it and removed at the end.
    /// Default: the first of $TMPDIR (or /tmp), /var/tmp and the current directory that is
    /// not a memory file system (tmpfs, ramfs).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Block sizes, comma separated; K, M, G are binary (64K = 65536); multiples of 4096.
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = DEFAULT_BLOCK_SIZES)]
    pub block_size: Vec<u64>,
    /// Blocks per phase. Default: 512 MiB worth of each block size.
    #[arg(long)]
    pub blocks: Option<u64>,
    /// Executors, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "threaded,uring",
          value_parser = clap::builder::PossibleValuesParser::new(EXECUTORS))]
    pub executor: Vec<String>,
    /// Do not run the Python peer.
    #[arg(long)]
    pub no_peer: bool,
    /// Print one JSON object instead of the table (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Concurrent operations: the executor's worker count (threaded: split evenly between
    /// read- and write-priority workers) and the ceiling's thread count. Default: the
    /// executor's default worker count.
    #[arg(long)]
    pub queue_depth: Option<usize>,
    /// Blocks per store or load job.
    #[arg(long, default_value_t = 32)]
    pub job_blocks: usize,
    /// File-system states to measure, comma separated, in this order.
    #[arg(long, value_delimiter = ',', value_enum, default_value = "quiet,churn,full")]
    pub state: Vec<State>,
    /// Files created and deleted right before a churn-state store.
    #[arg(long, default_value_t = DEFAULT_CHURN_FILES)]
    pub churn_files: u64,
    /// Python interpreter for the peer.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// The peer script. Default: `bench/vllm_fs_peer.py` of this source tree.
    #[arg(long)]
    pub peer_script: Option<PathBuf>,
}

/// The file-system state a row was measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// A fresh directory, no recent deletions by this run.
    Quiet,
    /// Right after many files were created and deleted in the tier's directories.
    Churn,
    /// A bounded tier at capacity: every store evicts a block and reuses its file.
    Full,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Quiet => "quiet",
            State::Churn => "churn",
            State::Full => "full",
        }
    }
}

/// One result row; the serialized fields are exactly `--json`'s.
#[derive(Debug, Clone, Serialize)]
struct Row {
    executor: String,
    block_bytes: u64,
    state: State,
    store_gbps: f64,
    load_gbps: f64,
    store_cpu_s_per_gb: f64,
    load_cpu_s_per_gb: f64,
    ceiling_read_gbps: f64,
    ceiling_write_gbps: f64,
    peer_store_gbps: Option<f64>,
    peer_load_gbps: Option<f64>,
    peer_cpu_s_per_gb: Option<f64>,
    #[serde(skip)]
    queue_depth: usize,
    #[serde(skip)]
    create_us: f64,
    #[serde(skip)]
    peer_create_us: Option<f64>,
}

#[derive(Serialize)]
struct Report<'a> {
    results: &'a [Row],
}

/// What the peer printed.
#[derive(Debug, Clone, Copy)]
struct PeerFigures {
    store_gbps: f64,
    load_gbps: f64,
    cpu_s_per_gb: f64,
    create_us: Option<f64>,
}

/// The kvtier phase's figures.
#[derive(Debug, Clone, Copy)]
struct KvFigures {
    store: Duration,
    load: Duration,
    store_cpu: f64,
    load_cpu: f64,
    /// Bytes the device wrote during the store, per block byte (`/proc/diskstats`; includes
    /// headers, metadata, and any other process's writes).
    device_write: Option<f64>,
    /// Bytes the device read during the load, per block byte.
    device_read: Option<f64>,
    /// Microseconds to create one empty file in the tier's rank directory right before the
    /// store (see [`create_cost`]).
    create_us: f64,
}

/// Settings shared by every measurement of a run.
#[derive(Debug)]
struct Ctx {
    scratch: PathBuf,
    blocks: Option<u64>,
    job_blocks: usize,
    churn_files: u64,
    /// Set once a page-cache drop failed (not root, or no /proc).
    drop_failed: bool,
    /// Whether the tier found O_DIRECT usable (from the last tier opened).
    tier_o_direct: Option<bool>,
    next_job: u64,
    /// The block device under the scratch directory (its `/proc/diskstats` name).
    disk: Option<String>,
    /// `/proc/loadavg`'s 1-minute figure at the start and the end of the run.
    load_before: Option<f64>,
    load_after: Option<f64>,
}

impl Ctx {
    fn blocks_for(&self, block_bytes: u64) -> u64 {
        self.blocks.unwrap_or((DEFAULT_PHASE_BYTES / block_bytes).max(1))
    }

    fn sync(&self) {
        // `sync(1)` rather than `libc::sync`: no unsafe for a call made outside every timing.
        let _ = Command::new("sync").status();
    }

    fn sync_and_drop_caches(&mut self) {
        self.sync();
        if std::fs::write("/proc/sys/vm/drop_caches", "1\n").is_err() {
            self.drop_failed = true;
        }
    }
}

/// Removes the scratch directory (and everything in it) when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!("kvtier bench fs: could not remove {}: {e}", self.0.display());
            }
        }
    }
}

/// Runs `kvtier bench fs`.
pub fn run(args: &FsArgs) -> Result<(), BoxError> {
    if args.block_size.is_empty() {
        return Err("no block size given".into());
    }
    if let Some(&bad) = args.block_size.iter().find(|&&b| b % ALIGN != 0) {
        return Err(format!("block size {bad} is not a multiple of {ALIGN} (O_DIRECT)").into());
    }
    if args.job_blocks == 0 || args.blocks == Some(0) || args.queue_depth == Some(0) {
        return Err("--job-blocks, --blocks and --queue-depth must be at least 1".into());
    }

    let base = match &args.dir {
        Some(dir) => dir.clone(),
        None => default_dir(),
    };
    let mount = mount_of(&base);
    if let Some(m) = &mount {
        if is_memory_fs(&m.fstype) {
            eprintln!(
                "kvtier bench fs: warning: {} is on {}: the figures measure memory, not a disk",
                base.display(),
                m.fstype
            );
        }
    }
    let scratch = Scratch(make_scratch(&base)?);

    let mut executors: Vec<(String, usize)> = Vec::new();
    let mut unavailable: Vec<(String, String)> = Vec::new();
    for name in dedup(&args.executor) {
        match probe_executor(&name) {
            Ok(()) => {
                let qd = args.queue_depth.unwrap_or_else(|| default_queue_depth(&name));
                executors.push((name, qd));
            }
            Err(e) => {
                eprintln!("kvtier bench fs: executor {name}: not available ({e})");
                unavailable.push((name, e.to_string()));
            }
        }
    }
    let peer = if args.no_peer { None } else { find_peer(args) };

    let mut ctx = Ctx {
        scratch: scratch.0.clone(),
        blocks: args.blocks,
        job_blocks: args.job_blocks,
        churn_files: args.churn_files,
        drop_failed: false,
        tier_o_direct: None,
        next_job: 0,
        load_before: load_average(),
        load_after: None,
        disk: mount.as_ref().and_then(|m| device_name(&m.source)),
    };
    let sizes = dedup(&args.block_size);
    let mut rows: Vec<Row> = Vec::new();

    let qds = dedup(&executors.iter().map(|(_, qd)| *qd).collect::<Vec<_>>());
    for (pass, &state) in dedup(&args.state).iter().enumerate() {
        if pass > 0 {
            // A later pass starts by deleting everything the earlier one left (for the churn
            // pass, part of the churn).
            for entry in std::fs::read_dir(&ctx.scratch)? {
                std::fs::remove_dir_all(entry?.path())?;
            }
        }
        for &bs in &sizes {
            let n = ctx.blocks_for(bs);
            let label = format!("{} {}", state.name(), size_name(bs));
            // The ceiling is measured before and after the kvtier and peer runs of this size
            // and state; the better of the two counts (the disk's speed drifts).
            let ceiling_file = CeilingFile::create(&ctx, bs, n)?;
            let mut ceilings: Vec<(usize, (f64, f64))> = Vec::new();
            for &qd in &qds {
                let c = ceiling_file.measure(&ctx, qd, 0)?;
                progress(format_args!(
                    "{label}: ceiling (QD {qd}), before: write {:.2} GB/s, read {:.2} GB/s",
                    c.1, c.0
                ));
                ceilings.push((qd, c));
            }
            let first_row = rows.len();
            for (name, qd) in &executors {
                let started = Instant::now();
                let kv = measure_kvtier(&mut ctx, name, *qd, bs, n, state)?;
                let gb = (n * bs) as f64 / 1e9;
                let row = Row {
                    executor: name.clone(),
                    block_bytes: bs,
                    state,
                    store_gbps: gb / kv.store.as_secs_f64(),
                    load_gbps: gb / kv.load.as_secs_f64(),
                    store_cpu_s_per_gb: kv.store_cpu / gb,
                    load_cpu_s_per_gb: kv.load_cpu / gb,
                    ceiling_write_gbps: 0.0,
                    ceiling_read_gbps: 0.0,
                    peer_store_gbps: None,
                    peer_load_gbps: None,
                    peer_cpu_s_per_gb: None,
                    queue_depth: *qd,
                    create_us: kv.create_us,
                    peer_create_us: None,
                };
                progress(format_args!(
                    "{label}: kvtier ({name}, QD {qd}, {n} blocks): create {:.0} us/file; store {:.2} GB/s, \
                     load {:.2} GB/s; device wrote {} and read {} x the block bytes ({:.1} s)",
                    kv.create_us,
                    row.store_gbps,
                    row.load_gbps,
                    kv.device_write.map_or_else(|| "-".into(), |x| format!("{x:.2}")),
                    kv.device_read.map_or_else(|| "-".into(), |x| format!("{x:.2}")),
                    started.elapsed().as_secs_f64()
                ));
                rows.push(row);
            }
            if let Some((python, script)) = &peer {
                let started = Instant::now();
                match run_peer(&mut ctx, python, script, bs, n, state) {
                    Ok(p) => {
                        progress(format_args!(
                            "{label}: peer: create {} us/file; store {:.2} GB/s, load {:.2} GB/s ({:.1} s)",
                            p.create_us.map_or_else(|| "-".into(), |c| format!("{c:.0}")),
                            p.store_gbps,
                            p.load_gbps,
                            started.elapsed().as_secs_f64()
                        ));
                        for row in &mut rows[first_row..] {
                            row.peer_store_gbps = Some(p.store_gbps);
                            row.peer_load_gbps = Some(p.load_gbps);
                            row.peer_cpu_s_per_gb = Some(p.cpu_s_per_gb);
                            row.peer_create_us = p.create_us;
                        }
                    }
                    Err(e) => eprintln!("kvtier bench fs: warning: the peer failed: {e}"),
                }
            }
            for (qd, best) in &mut ceilings {
                let c = ceiling_file.measure(&ctx, *qd, 1)?;
                progress(format_args!(
                    "{label}: ceiling (QD {qd}), after: write {:.2} GB/s, read {:.2} GB/s",
                    c.1, c.0
                ));
                *best = (best.0.max(c.0), best.1.max(c.1));
            }
            drop(ceiling_file);
            for row in &mut rows[first_row..] {
                if let Some((_, c)) = ceilings.iter().find(|(qd, _)| *qd == row.queue_depth) {
                    row.ceiling_read_gbps = c.0;
                    row.ceiling_write_gbps = c.1;
                }
            }
        }
    }
    ctx.load_after = load_average();

    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &Report { results: &rows })?;
        writeln!(out)?;
    } else {
        print_table(&mut out, &ctx, &base, mount.as_ref(), &rows, &unavailable, peer.is_some(), args)?;
    }
    drop(scratch);
    Ok(())
}

/// The `/proc/diskstats` name of the block device `source` (`/dev/vda`: `vda`; symlinks such as
/// `/dev/mapper/x` are resolved).
fn device_name(source: &str) -> Option<String> {
    if !source.starts_with("/dev/") {
        return None;
    }
    let dev = Path::new(source).canonicalize().ok()?;
    Some(dev.file_name()?.to_str()?.to_string())
}

/// Bytes `dev` has read and written since boot (`/proc/diskstats` sectors are 512 bytes).
fn disk_bytes(dev: Option<&str>) -> Option<(u64, u64)> {
    let dev = dev?;
    let text = std::fs::read_to_string("/proc/diskstats").ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[2] != dev {
            return None;
        }
        Some((f[5].parse::<u64>().ok()? * 512, f[9].parse::<u64>().ok()? * 512))
    })
}

/// The 1-minute load average (other work on the machine skews every figure).
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

fn progress(msg: std::fmt::Arguments<'_>) {
    eprintln!("kvtier bench fs: {msg}");
}

fn dedup<T: Clone + PartialEq>(items: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(item) {
            out.push(item.clone());
        }
    }
    out
}

/// `64K`, `1M`, or the byte count.
fn size_name(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{}M", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{}K", bytes >> 10)
    } else {
        bytes.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Directories
// ---------------------------------------------------------------------------------------------

/// A mount from `/proc/mounts`.
#[derive(Debug, Clone)]
struct Mount {
    source: String,
    point: PathBuf,
    fstype: String,
}

fn is_memory_fs(fstype: &str) -> bool {
    matches!(fstype, "tmpfs" | "ramfs" | "devtmpfs")
}

/// Undoes `/proc/mounts`' octal escapes (`\040` for a space).
fn unescape_mount_field(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = b[i + 1..i + 4].iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount `path` lives on: the longest mount point that is a prefix of it (the last one
/// listed wins, as later mounts hide earlier ones).
fn mount_of(path: &Path) -> Option<Mount> {
    let path = path.canonicalize().ok()?;
    let text = std::fs::read_to_string("/proc/mounts").ok()?;
    let mut best: Option<Mount> = None;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(source), Some(point), Some(fstype)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let point = PathBuf::from(unescape_mount_field(point));
        if !path.starts_with(&point) {
            continue;
        }
        let longer = best.as_ref().is_none_or(|b| point.as_os_str().len() >= b.point.as_os_str().len());
        if longer {
            best = Some(Mount { source: unescape_mount_field(source), point, fstype: fstype.to_string() });
        }
    }
    best
}

/// The first of $TMPDIR (or /tmp), /var/tmp and the current directory that exists and is not
/// a memory file system; the current directory if none qualifies.
fn default_dir() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let candidates = [std::env::temp_dir(), PathBuf::from("/var/tmp"), cwd.clone()];
    candidates
        .into_iter()
        .find(|dir| dir.is_dir() && mount_of(dir).is_some_and(|m| !is_memory_fs(&m.fstype)))
        .unwrap_or(cwd)
}

fn make_scratch(base: &Path) -> io::Result<PathBuf> {
    std::fs::create_dir_all(base)?;
    let pid = std::process::id();
    for attempt in 0..100u32 {
        let name =
            if attempt == 0 { format!("kvtier-bench-fs.{pid}") } else { format!("kvtier-bench-fs.{pid}.{attempt}") };
        let path = base.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("no free scratch directory name in {}", base.display())))
}

// ---------------------------------------------------------------------------------------------
// Measurement helpers
// ---------------------------------------------------------------------------------------------

/// User + sys CPU-seconds of this process, all threads included.
fn cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: `getrusage` writes a whole `rusage` through the pointer, which points to writable
    // memory of that type; it is read only when the call reports success.
    let ru = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) != 0 {
            return 0.0;
        }
        ru.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` (a multiple of 8 bytes) with the pattern of `seed`.
fn fill_pattern(buf: &mut [u8], seed: u64) {
    let mut x = seed;
    for word in buf.chunks_exact_mut(8) {
        word.copy_from_slice(&splitmix64(&mut x).to_le_bytes());
    }
}

fn row_seed(salt: u64, row: u64) -> u64 {
    salt.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ row.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The key of block `i` of key set `salt`: a 32-byte hash (like vLLM's) in group 0.
fn key(salt: u64, i: u64) -> Result<OffloadKey, BoxError> {
    let mut hash = [0u8; 32];
    let mut x = row_seed(salt, i);
    for chunk in hash.chunks_exact_mut(8) {
        chunk.copy_from_slice(&splitmix64(&mut x).to_le_bytes());
    }
    Ok(OffloadKey::new(&hash, 0)?)
}

/// `0..n` in a seeded random order.
fn shuffled(n: u64, seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n).collect();
    let mut x = seed;
    for i in (1..v.len()).rev() {
        let j = (splitmix64(&mut x) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

// ---------------------------------------------------------------------------------------------
// The ceiling
// ---------------------------------------------------------------------------------------------

fn preallocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
    // SAFETY: `fallocate` takes no pointer; the descriptor is owned by `file`, open for the
    // whole call.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Random `O_DIRECT` I/O of `n` blocks of `bs` at shuffled offsets by `qd` threads; returns
/// the wall time.
fn random_io(file: &File, bs: u64, n: u64, qd: usize, write: bool, seed: u64) -> io::Result<Duration> {
    let order = shuffled(n, seed);
    let next = AtomicUsize::new(0);
    let mut bufs = Vec::with_capacity(qd);
    for t in 0..qd {
        let mut buf = MmapMut::map_anon(bs as usize)?;
        fill_pattern(&mut buf, seed ^ t as u64);
        bufs.push(buf);
    }
    let (order, next) = (&order, &next);
    let started = Instant::now();
    let result = std::thread::scope(|s| {
        let workers: Vec<_> = bufs
            .iter_mut()
            .map(|buf| {
                s.spawn(move || -> io::Result<()> {
                    loop {
                        let Some(&block) = order.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            return Ok(());
                        };
                        if write {
                            file.write_all_at(&buf[..], block * bs)?;
                        } else {
                            file.read_exact_at(&mut buf[..], block * bs)?;
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(io::Error::other("ceiling thread panicked"))))
            .collect::<io::Result<Vec<()>>>()
    });
    let elapsed = started.elapsed();
    result?;
    Ok(elapsed)
}

/// One preallocated, filled file for the ceiling, removed on drop.
struct CeilingFile {
    path: PathBuf,
    file: File,
    bs: u64,
    n: u64,
}

impl CeilingFile {
    /// `n` blocks of `bs`, allocated with `fallocate` and written once, so that reads hit
    /// written blocks (unwritten extents read as zeros without touching the disk) and writes
    /// overwrite in place.
    fn create(ctx: &Ctx, bs: u64, n: u64) -> Result<Self, BoxError> {
        let path = ctx.scratch.join(format!("ceiling-{bs}.dat"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .map_err(|e| format!("O_DIRECT open of {}: {e}", path.display()))?;
        let this = CeilingFile { path, file, bs, n };
        let len = bs * n;
        preallocate(&this.file, len)?;
        let chunk_len = (8u64 << 20).min(len).next_multiple_of(ALIGN) as usize;
        let mut chunk = MmapMut::map_anon(chunk_len)?;
        fill_pattern(&mut chunk, 0x5eed);
        let mut off = 0;
        while off < len {
            let take = chunk_len.min((len - off) as usize);
            this.file.write_all_at(&chunk[..take], off)?;
            off += take as u64;
        }
        Ok(this)
    }

    /// (read, write) GB/s of random I/O of the whole file at queue depth `qd`.
    fn measure(&self, ctx: &Ctx, qd: usize, round: u64) -> io::Result<(f64, f64)> {
        let gb = (self.bs * self.n) as f64 / 1e9;
        let seed = self.bs ^ (round << 32);
        ctx.sync();
        let write = random_io(&self.file, self.bs, self.n, qd, true, seed ^ 0xc0ffee)?;
        ctx.sync();
        let read = random_io(&self.file, self.bs, self.n, qd, false, seed ^ 0xbeef)?;
        Ok((gb / read.as_secs_f64(), gb / write.as_secs_f64()))
    }
}

impl Drop for CeilingFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// kvtier
// ---------------------------------------------------------------------------------------------

fn default_queue_depth(executor: &str) -> usize {
    match executor {
        "threaded" => {
            let d = ThreadedConfig::default();
            d.read_workers + d.write_workers
        }
        "uring" => UringConfig::DEFAULT_MAX_OPS,
        _ => 32,
    }
}

/// Builds executor `name` with `qd` concurrent operations. An executor this binary does not
/// have is an `Unsupported` error.
fn make_executor(
    name: &str,
    region: Arc<PrimaryRegion>,
    qd: usize,
    queue_capacity: usize,
    o_direct: bool,
) -> io::Result<Box<dyn Executor>> {
    match name {
        "threaded" => {
            let config = ThreadedConfig { read_workers: qd - qd / 2, write_workers: qd / 2, queue_capacity, o_direct };
            Ok(Box::new(ThreadedExecutor::new(region, config)?))
        }
        "uring" => {
            let config = UringConfig { max_ops: qd, queue_capacity, o_direct, ..UringConfig::default() };
            Ok(Box::new(UringExecutor::new(region, config)?))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("the {name} executor is not built into this binary"),
        )),
    }
}

/// Whether executor `name` can be built here.
fn probe_executor(name: &str) -> io::Result<()> {
    let region = Arc::new(PrimaryRegion::anonymous(1, ALIGN as usize)?);
    let mut exec = make_executor(name, region, 2, 16, false)?;
    exec.shutdown();
    Ok(())
}

/// Stores (or loads) `keys` from (into) `slots` in jobs of `ctx.job_blocks`, waits for all of
/// them and checks that every job succeeded.
fn run_jobs(
    ctx: &mut Ctx,
    tier: &mut FsTier,
    store: bool,
    keys: &[OffloadKey],
    slots: &[SlotId],
    done: &mut Completions,
) -> Result<(), BoxError> {
    let mut jobs = 0usize;
    for (k, s) in keys.chunks(ctx.job_blocks).zip(slots.chunks(ctx.job_blocks)) {
        ctx.next_job += 1;
        let job = Job { id: JobId(ctx.next_job), req: ReqContext::default(), keys: k, slots: s };
        if store {
            tier.submit_store(job);
        } else {
            tier.submit_load(job);
        }
        jobs += 1;
    }
    tier.wait_idle();
    done.clear();
    tier.poll_finished(done);
    let failed = done.iter().filter(|r| !r.success).count();
    if done.len() != jobs || failed != 0 {
        let what = if store { "store" } else { "load" };
        return Err(format!(
            "{what}: {} of {jobs} jobs reported, {failed} failed (tier stats {:?})",
            done.len(),
            tier.stats()
        )
        .into());
    }
    Ok(())
}

/// Creates and deletes files the way an evicting cache does: `keys` are stored through the tier,
/// empty files are created next to them up to `ctx.churn_files` files in all, then every one
/// of them is deleted.
fn churn(
    ctx: &mut Ctx,
    tier: &mut FsTier,
    keys: &[OffloadKey],
    slots: &[SlotId],
    done: &mut Completions,
) -> Result<(), BoxError> {
    run_jobs(ctx, tier, true, keys, slots, done)?;
    let blocks: Vec<PathBuf> = keys.iter().map(|k| tier.layout().block_path(k)).collect();
    let extra_count = ctx.churn_files.saturating_sub(blocks.len() as u64) as usize;
    let mut extra = Vec::with_capacity(extra_count);
    for i in 0..extra_count {
        let mut name = blocks[i % blocks.len()].clone().into_os_string();
        name.push(format!(".churn{i}"));
        let path = PathBuf::from(name);
        OpenOptions::new().write(true).create_new(true).open(&path)?;
        extra.push(path);
    }
    for path in blocks.iter().chain(&extra) {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// Mean microseconds to create (`open(O_CREAT|O_EXCL)` + `close`) one empty file in `dir`
/// (the tier's rank directory, whose block group the tier's new directories and files start
/// in), one file after another: about 20 us on a quiet ext4, hundreds when the inode
/// allocator skips recently deleted inodes. The files are kept (deleting them would add
/// churn); they go with the run's directories.
fn create_cost(dir: &Path, count: usize) -> io::Result<f64> {
    let started = Instant::now();
    for i in 0..count {
        OpenOptions::new().write(true).create_new(true).open(dir.join(format!(".create-probe-{i}")))?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / count as f64)
}

/// Compares a sample of rows with the pattern they were stored with.
fn verify(region: &Arc<PrimaryRegion>, salt: u64, n: u64) -> Result<(), BoxError> {
    let step = (n / VERIFY_SAMPLE).max(1);
    let mut expected = vec![0u8; region.row_bytes()];
    let rows = (0..n).step_by(step as usize).chain(std::iter::once(n - 1));
    for row in rows {
        let lease = region.lease(SlotId(row as u32), Access::Read)?;
        fill_pattern(&mut expected, row_seed(salt, row));
        if lease.block() != &expected[..] {
            return Err(format!("row {row}: loaded bytes differ from the stored ones").into());
        }
    }
    Ok(())
}

fn measure_kvtier(
    ctx: &mut Ctx,
    executor: &str,
    qd: usize,
    bs: u64,
    n: u64,
    state: State,
) -> Result<KvFigures, BoxError> {
    let rows = u32::try_from(n).map_err(|_| "too many blocks")?;
    let row_bytes = usize::try_from(bs)?;
    let region = Arc::new(PrimaryRegion::anonymous(rows as usize, row_bytes)?);
    // Salts: one key set per (size, state), another for the churn blocks.
    let salt = bs ^ ((state as u64 + 1) << 40);
    for row in 0..n {
        let mut lease = region.lease(SlotId(row as u32), Access::Write)?;
        if let Some(buf) = lease.as_mut_slice() {
            fill_pattern(&mut buf[..row_bytes], row_seed(salt, row));
        }
    }
    let keys = (0..n).map(|i| key(salt, i)).collect::<Result<Vec<_>, _>>()?;
    let slots: Vec<SlotId> = (0..rows).map(SlotId).collect();

    let root = ctx.scratch.join(format!("kvtier-{executor}-{}-{}", state.name(), size_name(bs)));
    std::fs::create_dir(&root)?;
    let run = RunConfig { model_name: format!("kvtier-bench-fs-{bs}"), ..RunConfig::default() };
    let mut config = FsTierConfig::new(&root, run);
    config.format = StorageFormat::Native;
    config.o_direct = DirectMode::Auto;
    config.max_blocks = (state == State::Full).then_some(rows as usize);
    let queue_capacity = (n as usize).max(ThreadedConfig::DEFAULT_QUEUE_CAPACITY);
    let exec_region = Arc::clone(&region);
    let mut tier =
        FsTier::open(&config, |o_direct| make_executor(executor, exec_region, qd, queue_capacity, o_direct))?;
    ctx.tier_o_direct = Some(tier.startup().o_direct);
    let mut done = Completions::new();

    match state {
        State::Quiet => ctx.sync(),
        State::Churn => {
            let churn_salt = salt ^ (0xc4u64 << 48);
            let churn_keys = (0..n).map(|i| key(churn_salt, i)).collect::<Result<Vec<_>, _>>()?;
            churn(ctx, &mut tier, &churn_keys, &slots, &mut done)?;
        }
        State::Full => {
            // Other blocks fill the tier to its bound; each timed store then evicts one.
            let fill_salt = salt ^ (0xf1u64 << 48);
            let fill_keys = (0..n).map(|i| key(fill_salt, i)).collect::<Result<Vec<_>, _>>()?;
            run_jobs(ctx, &mut tier, true, &fill_keys, &slots, &mut done)?;
            ctx.sync();
        }
    }

    let create_us = create_cost(tier.layout().rank_dir(), CREATE_PROBE_FILES)?;
    let d0 = disk_bytes(ctx.disk.as_deref());
    let (c0, t0) = (cpu_seconds(), Instant::now());
    run_jobs(ctx, &mut tier, true, &keys, &slots, &mut done)?;
    let (store, c1) = (t0.elapsed(), cpu_seconds());
    let d1 = disk_bytes(ctx.disk.as_deref());

    for row in 0..rows {
        let mut lease = region.lease(SlotId(row), Access::Write)?;
        if let Some(buf) = lease.as_mut_slice() {
            buf.fill(0);
        }
    }
    ctx.sync_and_drop_caches();

    let d2 = disk_bytes(ctx.disk.as_deref());
    let (c2, t2) = (cpu_seconds(), Instant::now());
    run_jobs(ctx, &mut tier, false, &keys, &slots, &mut done)?;
    let (load, c3) = (t2.elapsed(), cpu_seconds());
    let d3 = disk_bytes(ctx.disk.as_deref());
    let bytes = (n * bs) as f64;
    let per_byte = |a: Option<(u64, u64)>, b: Option<(u64, u64)>, pick: fn((u64, u64)) -> u64| {
        Some(pick(b?).saturating_sub(pick(a?)) as f64 / bytes)
    };

    verify(&region, salt, n)?;
    let stats = *tier.stats();
    done.clear();
    tier.shutdown(&mut done);
    drop(tier);
    if stats.blocks_loaded != n {
        return Err(format!("loaded {} of {n} blocks ({stats:?})", stats.blocks_loaded).into());
    }
    if state == State::Full && stats.evicted != n {
        return Err(format!("a full tier evicted {} blocks for {n} stores ({stats:?})", stats.evicted).into());
    }
    Ok(KvFigures {
        store,
        load,
        store_cpu: c1 - c0,
        load_cpu: c3 - c2,
        device_write: per_byte(d0, d1, |d| d.1),
        device_read: per_byte(d2, d3, |d| d.0),
        create_us,
    })
}

// ---------------------------------------------------------------------------------------------
// The peer
// ---------------------------------------------------------------------------------------------

/// The interpreter and script to run the peer with, or `None` (with a message) when either is
/// missing.
fn find_peer(args: &FsArgs) -> Option<(String, PathBuf)> {
    let script = args
        .peer_script
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/vllm_fs_peer.py"));
    if !script.is_file() {
        eprintln!("kvtier bench fs: the peer script {} is missing: skipping the peer", script.display());
        return None;
    }
    let ok = Command::new(&args.python)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("kvtier bench fs: {} not found: skipping the peer", args.python);
        return None;
    }
    Some((args.python.clone(), script))
}

fn run_peer(
    ctx: &mut Ctx,
    python: &str,
    script: &Path,
    bs: u64,
    n: u64,
    state: State,
) -> Result<PeerFigures, BoxError> {
    let dir = ctx.scratch.join(format!("peer-{}-{}", state.name(), size_name(bs)));
    // The peer has no capacity bound (nor has vLLM's FS tier): in the full state it runs its
    // churn state, the steady state of an unbounded tier whose files something else deletes.
    let churn_files = match state {
        State::Quiet => 0,
        State::Churn | State::Full => ctx.churn_files.max(1),
    };
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg("--dir")
        .arg(&dir)
        .args(["--block-bytes", &bs.to_string()])
        .args(["--blocks", &n.to_string()])
        .args(["--job-blocks", &ctx.job_blocks.to_string()])
        .args(["--churn-files", &churn_files.to_string()])
        .args(["--seed", &bs.to_string()])
        // Deletions are left to this side: the churn pass starts by removing the quiet pass's
        // directories, and the scratch directory goes at the end.
        .arg("--keep");
    let out = cmd.stderr(Stdio::inherit()).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(text.trim()).map_err(|e| format!("peer output is not JSON ({e}): {text}"))?;
    if !out.status.success() {
        return Err(format!("peer exited with {}: {text}", out.status).into());
    }
    let field = |name: &str| {
        v.get(name).and_then(serde_json::Value::as_f64).ok_or_else(|| format!("peer output lacks {name}: {text}"))
    };
    Ok(PeerFigures {
        store_gbps: field("store_gbps")?,
        load_gbps: field("load_gbps")?,
        cpu_s_per_gb: field("cpu_s_per_gb")?,
        create_us: field("create_us").ok(),
    })
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

#[allow(clippy::too_many_arguments)]
fn print_table(
    out: &mut impl io::Write,
    ctx: &Ctx,
    base: &Path,
    mount: Option<&Mount>,
    rows: &[Row],
    unavailable: &[(String, String)],
    peer: bool,
    args: &FsArgs,
) -> io::Result<()> {
    let fs = mount.map_or_else(
        || "file system unknown".to_string(),
        |m| format!("{} on {} at {}", m.fstype, m.source, m.point.display()),
    );
    writeln!(out, "kvtier bench fs in {} ({fs})", base.display())?;
    let per_phase = match args.blocks {
        Some(n) => format!("{n} blocks per phase"),
        None => format!("{} MiB per phase", DEFAULT_PHASE_BYTES >> 20),
    };
    writeln!(
        out,
        "  {per_phase}; jobs of {} blocks; native format; O_DIRECT: kvtier {}, ceiling yes{}",
        ctx.job_blocks,
        match ctx.tier_o_direct {
            Some(true) => "yes",
            Some(false) => "NO (buffered: the figures include the page cache)",
            None => "-",
        },
        if peer { ", peer yes" } else { "" }
    )?;
    writeln!(
        out,
        "  before each store: sync; between store and load: sync + {} (moot for block data under O_DIRECT)",
        if ctx.drop_failed { "no page-cache drop (/proc/sys/vm/drop_caches not writable)" } else { "page-cache drop" }
    )?;
    writeln!(
        out,
        "  churn: right before the store, {} files created then deleted in the tier's directories",
        ctx.churn_files
    )?;
    writeln!(
        out,
        "  full: the tier bounded to the phase's blocks and holding as many others: every store evicts \
         one and reuses its file (the peer, unbounded like vLLM's tier, runs its churn state)"
    )?;
    writeln!(
        out,
        "  peer: {}",
        if peer {
            "bench/vllm_fs_peer.py, 16 read + 16 write threads (its own directory, same state)"
        } else {
            "not run"
        }
    )?;
    writeln!(
        out,
        "  load average (1 min) at start {}, at end {} ({} CPUs): other work skews every figure",
        opt(ctx.load_before),
        opt(ctx.load_after),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )?;
    for (name, why) in unavailable {
        writeln!(out, "  executor {name}: not available ({why})")?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<9} {:>5} {:<5} {:>3} {:>9} | {:>6} {:>6} {:>5} {:>6} {:>5} | {:>6} {:>6} {:>5} {:>6} {:>5} | {:>6} {:>6} {:>6} {:>6}",
        "executor", "block", "state", "QD", "mk us",
        "store", "ceil-W", "x", "peer", "x",
        "load", "ceil-R", "x", "peer", "x",
        "cpu-st", "cpu-ld", "peer", "x",
    )?;
    writeln!(
        out,
        "{:<9} {:>5} {:<5} {:>3} {:>9} | {:>6} {:>6} {:>5} {:>6} {:>5} | {:>6} {:>6} {:>5} {:>6} {:>5} | {:>6} {:>6} {:>6} {:>6}",
        "", "", "", "", "kv/peer",
        "GB/s", "GB/s", "ceil", "GB/s", "peer",
        "GB/s", "GB/s", "ceil", "GB/s", "peer",
        "s/GB", "s/GB", "s/GB", "peer",
    )?;
    for r in rows {
        let kv_cpu = (r.store_cpu_s_per_gb + r.load_cpu_s_per_gb) / 2.0;
        writeln!(
            out,
            "{:<9} {:>5} {:<5} {:>3} {:>9} | {:>6.2} {:>6.2} {:>5} {:>6} {:>5} | {:>6.2} {:>6.2} {:>5} {:>6} {:>5} | {:>6.3} {:>6.3} {:>6} {:>6}",
            r.executor,
            size_name(r.block_bytes),
            r.state.name(),
            r.queue_depth,
            match r.peer_create_us {
                Some(p) => format!("{:.0}/{p:.0}", r.create_us),
                None => format!("{:.0}", r.create_us),
            },
            r.store_gbps,
            r.ceiling_write_gbps,
            ratio(r.store_gbps, Some(r.ceiling_write_gbps)),
            opt(r.peer_store_gbps),
            ratio(r.store_gbps, r.peer_store_gbps),
            r.load_gbps,
            r.ceiling_read_gbps,
            ratio(r.load_gbps, Some(r.ceiling_read_gbps)),
            opt(r.peer_load_gbps),
            ratio(r.load_gbps, r.peer_load_gbps),
            r.store_cpu_s_per_gb,
            r.load_cpu_s_per_gb,
            r.peer_cpu_s_per_gb.map_or_else(|| "-".into(), |v| format!("{v:.3}")),
            ratio(kv_cpu, r.peer_cpu_s_per_gb),
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "GB = 1e9 bytes of block data (the native format's 4 KiB header per block is not counted); \
         mk = us to create one empty file in the tier's (and the peer's) directory right before the store (~20 on a quiet \
         ext4; more when recently deleted inodes are skipped); x = ratio; ceilings are the better of two runs (before and after kvtier and the peer); \
         CPU = user+sys CPU-seconds of the whole process per GB moved; the last column compares \
         kvtier's store+load CPU per GB with the peer's."
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        fs: FsArgs,
    }

    #[test]
    fn parses_flags() {
        let cli = Cli::try_parse_from(["x", "--block-size", "64K,1M", "--executor", "threaded,uring"]).unwrap();
        assert_eq!(cli.fs.block_size, vec![65536, 1 << 20]);
        assert_eq!(cli.fs.executor, vec!["threaded", "uring"]);
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.fs.block_size, vec![64 << 10, 256 << 10, 1 << 20, 2 << 20]);
        assert!(Cli::try_parse_from(["x", "--executor", "bogus"]).is_err());
    }

    #[test]
    fn mount_fields_are_unescaped() {
        assert_eq!(unescape_mount_field("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mount_field("/plain"), "/plain");
    }
}
