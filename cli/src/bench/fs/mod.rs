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
//! 3. **peer**: `cli/bench/vllm_fs_peer.py` (our re-implementation of vLLM's FS tier I/O path: 16 +
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
//!
//! [`FsTier`]: kvtier_fs::FsTier
//! [`PrimaryRegion`]: kvtier_fs::region::PrimaryRegion
//! [`FsTierConfig::max_blocks`]: kvtier_fs::FsTierConfig::max_blocks

mod ceiling;
mod dirs;
mod pattern;
mod peer;
mod regions;
mod report;
mod tier;

use std::error::Error;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use kvtier_fs::direct::DIRECT_ALIGN;
use serde::Serialize;

use crate::args::parse_size;
use ceiling::{Ceiling, CeilingFile};
use dirs::{default_dir, device_name, is_memory_fs, make_scratch, mount_of};
use peer::{find_peer, run_peer};
use regions::measure_regions;
use report::{print_table, Report, Row};
use tier::{default_queue_depth, measure_kvtier, probe_executor};

pub(super) type BoxError = Box<dyn Error>;

/// The block sizes measured by default.
pub const DEFAULT_BLOCK_SIZES: &str = "64K,256K,1M,2M";
/// Bytes moved per phase (store, load, each ceiling direction) when `--blocks` is not given.
pub const DEFAULT_PHASE_BYTES: u64 = 512 << 20;
/// Files created and deleted before a churn-state store (blocks plus empty files).
pub const DEFAULT_CHURN_FILES: u64 = 8192;
/// Executor names `--executor` accepts (an executor not built into this binary is reported
/// as not available).
pub const EXECUTORS: &[&str] = &["threaded", "uring"];
/// Disk engines `--engine` accepts: the FS tier (a file per block) and the region engine.
pub const ENGINES: &[&str] = &["files", "regions"];

/// O_DIRECT alignment of offsets, lengths and buffers: the tier's.
const ALIGN: u64 = DIRECT_ALIGN as u64;

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
    /// Disk engines, comma separated: `files` (the FS tier: a file per block) and `regions`
    /// (the region engine: one device; measured in the quiet and full states only).
    #[arg(long, value_delimiter = ',', default_value = "files,regions",
          value_parser = clap::builder::PossibleValuesParser::new(ENGINES))]
    pub engine: Vec<String>,
    /// Do not run the Python peer.
    #[arg(long)]
    pub no_peer: bool,
    /// Run the Python peer before kvtier at each size and state (default: after). Two runs,
    /// one with this flag, give the order kvtier, peer, peer, kvtier: neither side always
    /// runs on a disk the other just wrote to.
    #[arg(long)]
    pub peer_first: bool,
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
    /// The peer script. Default: `cli/bench/vllm_fs_peer.py` of this source tree.
    #[arg(long)]
    pub peer_script: Option<PathBuf>,
    /// Open the tier with `fsync = true` (each block `fdatasync`ed, its directory `fsync`ed
    /// after the rename); the ceiling and the peer do not sync.
    #[arg(long)]
    pub fsync: bool,
    /// Ops the executor queues beyond those it runs; more wait in the tier's own queue.
    /// Default: every block of a phase (nothing waits in the tier).
    #[arg(long)]
    pub queue_capacity: Option<usize>,
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
    pub(super) fn name(self) -> &'static str {
        match self {
            State::Quiet => "quiet",
            State::Churn => "churn",
            State::Full => "full",
        }
    }
}

/// Settings shared by every measurement of a run.
#[derive(Debug)]
pub(super) struct Ctx {
    pub(super) scratch: PathBuf,
    pub(super) blocks: Option<u64>,
    pub(super) job_blocks: usize,
    pub(super) churn_files: u64,
    pub(super) fsync: bool,
    pub(super) queue_capacity: Option<usize>,
    /// Set once a page-cache drop failed (not root, or no /proc).
    pub(super) drop_failed: bool,
    /// Whether the tier found O_DIRECT usable (from the last tier opened).
    pub(super) tier_o_direct: Option<bool>,
    pub(super) next_job: u64,
    /// The block device under the scratch directory (its `/proc/diskstats` name).
    pub(super) disk: Option<String>,
    /// `/proc/loadavg`'s 1-minute figure at the start and the end of the run.
    pub(super) load_before: Option<f64>,
    pub(super) load_after: Option<f64>,
}

impl Ctx {
    pub(super) fn blocks_for(&self, block_bytes: u64) -> u64 {
        self.blocks.unwrap_or((DEFAULT_PHASE_BYTES / block_bytes).max(1))
    }

    pub(super) fn sync(&self) {
        // `sync(1)` rather than `libc::sync`: no unsafe for a call made outside every timing.
        let _ = Command::new("sync").status();
    }

    pub(super) fn sync_and_drop_caches(&mut self) {
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
        fsync: args.fsync,
        queue_capacity: args.queue_capacity,
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
            let mut ceilings: Vec<(usize, Ceiling)> = Vec::new();
            for &qd in &qds {
                let c = ceiling_file.measure(&ctx, qd, 0)?;
                progress(format_args!(
                    "{label}: ceiling (QD {qd}), before: random write {:.2} GB/s, sequential write {:.2} GB/s, \
                     random read {:.2} GB/s",
                    c.write, c.seq_write, c.read
                ));
                ceilings.push((qd, c));
            }
            let first_row = rows.len();
            let mut peer_figures = match &peer {
                Some((python, script)) if args.peer_first => Some(measure_peer(&mut ctx, python, script, bs, n, state)),
                _ => None,
            };
            let engines = dedup(&args.engine);
            let runs = executors.iter().flat_map(|(name, qd)| engines.iter().map(move |e| (e.as_str(), name, *qd)));
            for (engine, name, qd) in runs {
                let regions = engine == "regions";
                if regions && state == State::Churn {
                    // The region engine creates no file: the churn state is the files' own.
                    continue;
                }
                let started = Instant::now();
                let kv = if regions {
                    measure_regions(&mut ctx, name, qd, bs, n, state)?
                } else {
                    measure_kvtier(&mut ctx, name, qd, bs, n, state)?
                };
                let gb = (n * bs) as f64 / 1e9;
                let row = Row {
                    engine: engine.to_string(),
                    executor: name.clone(),
                    block_bytes: bs,
                    state,
                    store_gbps: gb / kv.store.as_secs_f64(),
                    load_gbps: gb / kv.load.as_secs_f64(),
                    store_cpu_s_per_gb: kv.store_cpu / gb,
                    load_cpu_s_per_gb: kv.load_cpu / gb,
                    ceiling_write_gbps: 0.0,
                    ceiling_seq_write_gbps: 0.0,
                    ceiling_read_gbps: 0.0,
                    peer_store_gbps: None,
                    peer_load_gbps: None,
                    peer_cpu_s_per_gb: None,
                    recovery_s_per_gib: kv.recovery_s_per_gib,
                    scan_s_per_gib: kv.scan_s_per_gib,
                    queue_depth: qd,
                    create_us: kv.create_us,
                    peer_create_us: None,
                };
                progress(format_args!(
                    "{label}: kvtier ({engine}, {name}, QD {qd}, {n} blocks): create {:.0} us/file; store {:.2} GB/s, \
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
            if let (Some((python, script)), None) = (&peer, &peer_figures) {
                peer_figures = Some(measure_peer(&mut ctx, python, script, bs, n, state));
            }
            if let Some(Some(p)) = peer_figures {
                for row in &mut rows[first_row..] {
                    row.peer_store_gbps = Some(p.store_gbps);
                    row.peer_load_gbps = Some(p.load_gbps);
                    row.peer_cpu_s_per_gb = Some(p.cpu_s_per_gb);
                    row.peer_create_us = p.create_us;
                }
            }
            for (qd, best) in &mut ceilings {
                let c = ceiling_file.measure(&ctx, *qd, 1)?;
                progress(format_args!(
                    "{label}: ceiling (QD {qd}), after: random write {:.2} GB/s, sequential write {:.2} GB/s, \
                     random read {:.2} GB/s",
                    c.write, c.seq_write, c.read
                ));
                *best = best.max(c);
            }
            drop(ceiling_file);
            for row in &mut rows[first_row..] {
                if let Some((_, c)) = ceilings.iter().find(|(qd, _)| *qd == row.queue_depth) {
                    row.ceiling_read_gbps = c.read;
                    row.ceiling_write_gbps = c.write;
                    row.ceiling_seq_write_gbps = c.seq_write;
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

/// Runs the peer at one size and state, with its progress line; `None` (and a warning) if it
/// failed.
fn measure_peer(
    ctx: &mut Ctx,
    python: &str,
    script: &std::path::Path,
    bs: u64,
    n: u64,
    state: State,
) -> Option<peer::PeerFigures> {
    let started = Instant::now();
    match run_peer(ctx, python, script, bs, n, state) {
        Ok(p) => {
            progress(format_args!(
                "{} {}: peer: create {} us/file; store {:.2} GB/s, load {:.2} GB/s ({:.1} s)",
                state.name(),
                size_name(bs),
                p.create_us.map_or_else(|| "-".into(), |c| format!("{c:.0}")),
                p.store_gbps,
                p.load_gbps,
                started.elapsed().as_secs_f64()
            ));
            Some(p)
        }
        Err(e) => {
            eprintln!("kvtier bench fs: warning: the peer failed: {e}");
            None
        }
    }
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
pub(super) fn size_name(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{}M", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{}K", bytes >> 10)
    } else {
        bytes.to_string()
    }
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
        assert_eq!(cli.fs.engine, vec!["files", "regions"]);
        assert!(Cli::try_parse_from(["x", "--engine", "tape"]).is_err());
        assert!(Cli::try_parse_from(["x", "--executor", "bogus"]).is_err());
    }
}
