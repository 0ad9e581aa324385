//! `bench fs`'s output: the rows (exactly `--json`'s fields) and the table.

use std::io;
use std::path::Path;

use serde::Serialize;

use super::dirs::Mount;
use super::{size_name, Ctx, FsArgs, State, DEFAULT_PHASE_BYTES};

/// One result row; the serialized fields are exactly `--json`'s.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Row {
    /// `files` (the FS tier) or `regions` (the region engine).
    pub(super) engine: String,
    pub(super) executor: String,
    pub(super) block_bytes: u64,
    pub(super) state: State,
    pub(super) store_gbps: f64,
    pub(super) load_gbps: f64,
    pub(super) store_cpu_s_per_gb: f64,
    pub(super) load_cpu_s_per_gb: f64,
    pub(super) ceiling_read_gbps: f64,
    pub(super) ceiling_write_gbps: f64,
    /// Sequential `O_DIRECT` writes of the block size: the region engine's ceiling.
    pub(super) ceiling_seq_write_gbps: f64,
    pub(super) peer_store_gbps: Option<f64>,
    pub(super) peer_load_gbps: Option<f64>,
    pub(super) peer_cpu_s_per_gb: Option<f64>,
    /// Region engine: seconds a clean reopen took per GiB of blocks indexed.
    pub(super) recovery_s_per_gib: Option<f64>,
    /// Region engine: seconds a reopen as after a power cut (a full scan) took per GiB indexed.
    pub(super) scan_s_per_gib: Option<f64>,
    #[serde(skip)]
    pub(super) queue_depth: usize,
    #[serde(skip)]
    pub(super) create_us: f64,
    #[serde(skip)]
    pub(super) peer_create_us: Option<f64>,
}

#[derive(Serialize)]
pub(super) struct Report<'a> {
    pub(super) results: &'a [Row],
}

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
pub(super) fn print_table(
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
         one and reuses its file (the peer, unbounded like vLLM's tier, runs its churn state); the region \
         engine's device sized for the phase's blocks and filled with as many others: every store takes a \
         reclaimed region's place"
    )?;
    writeln!(
        out,
        "  peer: {}",
        if peer {
            "cli/bench/vllm_fs_peer.py, 16 read + 16 write threads (its own directory, same state)"
        } else {
            "not run"
        }
    )?;
    if peer {
        writeln!(
            out,
            "  order at each size and state: {}",
            if args.peer_first { "peer, then kvtier" } else { "kvtier, then peer" }
        )?;
    }
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
        "{:<7} {:<8} {:>5} {:<5} {:>3} {:>9} | {:>6} {:>6} {:>6} {:>5} {:>6} {:>5} | {:>6} {:>6} {:>5} {:>6} {:>5} | {:>6} {:>6} {:>6} {:>6} | {:>6} {:>6}",
        "engine", "executor", "block", "state", "QD", "mk us",
        "store", "rndW", "seqW", "x", "peer", "x",
        "load", "ceil-R", "x", "peer", "x",
        "cpu-st", "cpu-ld", "peer", "x",
        "recov", "scan",
    )?;
    writeln!(
        out,
        "{:<7} {:<8} {:>5} {:<5} {:>3} {:>9} | {:>6} {:>6} {:>6} {:>5} {:>6} {:>5} | {:>6} {:>6} {:>5} {:>6} {:>5} | {:>6} {:>6} {:>6} {:>6} | {:>6} {:>6}",
        "", "", "", "", "", "kv/peer",
        "GB/s", "GB/s", "GB/s", "ceil", "GB/s", "peer",
        "GB/s", "GB/s", "ceil", "GB/s", "peer",
        "s/GB", "s/GB", "s/GB", "peer",
        "s/GiB", "s/GiB",
    )?;
    for r in rows {
        let kv_cpu = (r.store_cpu_s_per_gb + r.load_cpu_s_per_gb) / 2.0;
        // Files are written at random places, the region engine appends.
        let write_ceiling = if r.engine == "regions" { r.ceiling_seq_write_gbps } else { r.ceiling_write_gbps };
        writeln!(
            out,
            "{:<7} {:<8} {:>5} {:<5} {:>3} {:>9} | {:>6.2} {:>6.2} {:>6.2} {:>5} {:>6} {:>5} | {:>6.2} {:>6.2} {:>5} {:>6} {:>5} | {:>6.3} {:>6.3} {:>6} {:>6} | {:>6} {:>6}",
            r.engine,
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
            r.ceiling_seq_write_gbps,
            ratio(r.store_gbps, Some(write_ceiling)),
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
            r.recovery_s_per_gib.map_or_else(|| "-".into(), |v| format!("{v:.3}")),
            r.scan_s_per_gib.map_or_else(|| "-".into(), |v| format!("{v:.3}")),
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "GB = 1e9 bytes of block data (the native format's 4 KiB header per block is not counted); \
         mk = us to create one empty file in the tier's (and the peer's) directory right before the store (~20 on a quiet \
         ext4; more when recently deleted inodes are skipped); x = ratio; ceilings are the better of two runs (before and after kvtier and the peer); \
         rndW/seqW = random/sequential O_DIRECT writes of the block size: files' stores are compared with rndW, the region \
         engine's (which appends) with seqW; recov = seconds per GiB indexed of the region engine's clean reopen (summaries), scan = of \
         its reopen as after a power cut (every record read and verified); \
         CPU = user+sys CPU-seconds of the whole process per GB moved; the last column compares \
         kvtier's store+load CPU per GB with the peer's."
    )?;
    Ok(())
}
