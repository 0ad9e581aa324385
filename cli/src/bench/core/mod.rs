//! `kvtier bench core`: the core engine alone (no I/O) against a Python model of vLLM's CPU
//! offloading manager, both measured in the same run (PERFORMANCE.md).
//!
//! # What is measured
//!
//! At `--slots` capacity (default 100 000), through a [`TieringEngine`] with no tier and an LRU
//! pool, in operations per second:
//!
//! | row | one operation |
//! |---|---|
//! | `lookup_hit` | `lookup` of one present, ready key (random) |
//! | `lookup_miss` | `lookup` of one absent key (random) |
//! | `store_evict` | one block of a `prepare_store` + `complete_store` of 16 new blocks into a full pool (16 evictions), events drained |
//! | `touch` | one key of a `touch` of 16 random present keys |
//! | `load_pin_unpin` | one key of a `prepare_load` + `complete_load` of 16 random present keys |
//! | `step_mix` | one engine step: a 32-block request looked up until the first non-ready block, the hit prefix pinned, the rest stored (evicting), the prefix unpinned and touched, `end_step`, `take_events` |
//! | `step_mix_memtier` | the same step through an engine with one [`MemoryTier`] (cascades and promotions) |
//!
//! Each row runs a warm-up of a tenth of its operations first, untimed. Heap allocations are
//! counted over the timed part when [`CountingAlloc`] is the process's global allocator.
//!
//! # Where it runs
//!
//! Counting every allocation must not tax the other subcommands (a shared counter bumped by
//! every allocation of `simulate`'s and `bench fs`'s I/O threads), so only the
//! `kvtier-bench-core` binary installs [`CountingAlloc`]. `kvtier bench core` ([`launch`])
//! replaces itself with that binary, found next to it, when it was built from the same
//! sources ([`SOURCE_ID`]); otherwise (missing, or left over from an older build: `cargo run`
//! builds only the binary it runs) it measures in its own process and says that allocations
//! were not counted, and why.
//!
//! # The peer
//!
//! `cli/bench/vllm_cpu_model.py` (our own model of vLLM's `OrderedDict`-based CPU manager) runs
//! the same rows. Both sides derive the same operation stream from `--seed` with splitmix64 and
//! the same key function, and build every key before the clock starts. The Python side times fewer
//! operations (a prefix of the same stream) because it is slower; rates are compared. To show
//! that both sides did the same work, the mix reports counters (hits, stored and evicted
//! blocks, a sum of the slot ids allocated) over the Python run's steps, and the Rust side
//! compares them with its own counters over the same steps. The Python model has no tiers: the
//! `step_mix_memtier` row is compared with its tierless mix, which does less work.
//!
//! [`TieringEngine`]: kvtier_core::TieringEngine
//! [`MemoryTier`]: kvtier_core::MemoryTier

mod counting;
mod engine;
mod peer;
mod report;
mod workload;

use std::error::Error;
use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use counting::counting_installed;
pub use counting::{allocations, CountingAlloc};
use engine::{micro, mix};
use peer::Peer;
use report::{loadavg, Results};
use workload::{Counts, Workload, REQUEST_BLOCKS};

/// The binary that carries the counting allocator.
pub const COUNTING_BINARY: &str = "kvtier-bench-core";

/// The identity of the sources this crate's binaries were built from (see `build.rs`).
pub const SOURCE_ID: &str = env!("KVTIER_CLI_SOURCE_ID");

/// Options of `kvtier bench core`.
#[derive(Debug, Clone, clap::Args)]
pub struct CoreArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Primary-pool capacity, in slots (at least 32).
    #[arg(long, default_value_t = 100_000)]
    pub slots: u32,
    /// kvtier operations timed per row (the mixes time ops/20 steps), each after an untimed
    /// warm-up of a tenth as many.
    #[arg(long, default_value_t = 2_000_000)]
    pub ops: u64,
    /// Operations the Python model times per row (default: ops/10).
    #[arg(long)]
    pub python_ops: Option<u64>,
    /// Seed of the operation stream (both sides derive the same stream from it).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Do not run the Python peer (kvtier figures only).
    #[arg(long)]
    pub no_peer: bool,
    /// Python interpreter for the peer.
    #[arg(long, default_value = "python3")]
    pub python: String,
}

/// `kvtier bench core`: runs [`COUNTING_BINARY`] with `forwarded` (the command line after
/// `bench core`) in place of this process, or, when that binary is missing, stale or cannot be
/// run, [`run`]s here without counting allocations (and says why on standard error and in the
/// report).
pub fn launch(args: &CoreArgs, forwarded: &[OsString]) -> Result<(), Box<dyn Error>> {
    let why = match counting_binary() {
        // `exec` returns only when it failed.
        Ok(path) => format!("cannot run {}: {}", path.display(), Command::new(&path).args(forwarded).exec()),
        Err(why) => why,
    };
    eprintln!("kvtier bench core: allocations not counted: {why}");
    measure(args, &why)
}

/// [`COUNTING_BINARY`] next to this executable, if it is there and was built from the same
/// sources; else why not.
fn counting_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this executable: {e}"))?;
    let path = exe.with_file_name(format!("{COUNTING_BINARY}{}", std::env::consts::EXE_SUFFIX));
    let rebuild = "`cargo build --release -p kvtier-cli` builds both binaries";
    if !path.is_file() {
        return Err(format!("{COUNTING_BINARY} is not next to {} ({rebuild})", exe.display()));
    }
    let out =
        Command::new(&path).arg("--source-id").output().map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    if !out.status.success() || String::from_utf8_lossy(&out.stdout).trim() != SOURCE_ID {
        return Err(format!("{} was built from other sources than {} ({rebuild})", path.display(), exe.display()));
    }
    Ok(path)
}

/// Runs the core benchmark in this process: the kvtier rows, each followed by the same row in
/// the Python model (unless `--no-peer` or Python is missing), then a table or one JSON object
/// on stdout. Allocations are counted when [`CountingAlloc`] is the global allocator (as in
/// [`COUNTING_BINARY`]).
pub fn run(args: &CoreArgs) -> Result<(), Box<dyn Error>> {
    measure(args, "CountingAlloc is not this process's global allocator")
}

/// [`run`], with the reason to print if allocations turn out not to be counted.
fn measure(args: &CoreArgs, uncounted: &str) -> Result<(), Box<dyn Error>> {
    let slots = args.slots as usize;
    if slots < REQUEST_BLOCKS {
        return Err(format!("--slots must be at least {REQUEST_BLOCKS}").into());
    }
    let ours = Counts::new(args.ops);
    let theirs = Counts::new(args.python_ops.unwrap_or(args.ops / 10));
    let counting = counting_installed();
    let started = Instant::now();
    let load_before = loadavg();

    let mut peer = if args.no_peer { Peer::absent(None) } else { Peer::spawn(args, theirs) };
    let w = Workload::new(slots);
    let mut rows = micro(&w, args.seed, ours, &mut |row| peer.run_row(row.op))?;
    let checkpoint = theirs.mix_warm + theirs.mix_steps;
    let (row, snapshot, mix_counters) = mix(&w, args.seed, ours, false, checkpoint)?;
    peer.run_row(row.op);
    rows.push(row);
    let (row, _, memtier_counters) = mix(&w, args.seed, ours, true, 0)?;
    rows.push(row);
    drop(w);
    peer.stop();
    let total = started.elapsed().as_secs_f64();
    let load_after = loadavg();

    report::print(Results {
        args,
        slots,
        ours,
        theirs,
        counting,
        uncounted,
        rows,
        snapshot,
        mix_counters,
        memtier_counters,
        peer: &peer,
        total,
        load_before,
        load_after,
    });
    Ok(())
}
