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
//! # The peer
//!
//! `bench/vllm_cpu_model.py` (our own model of vLLM's `OrderedDict`-based CPU manager) runs the
//! same rows. Both sides derive the same operation stream from `--seed` with splitmix64 and the
//! same key function, and build every key before the clock starts. The Python side times fewer
//! operations (a prefix of the same stream) because it is slower; rates are compared. To show
//! that both sides did the same work, the mix reports counters (hits, stored and evicted
//! blocks, a sum of the slot ids allocated) over the Python run's steps, and the Rust side
//! compares them with its own counters over the same steps. The Python model has no tiers: the
//! `step_mix_memtier` row is compared with its tierless mix, which does less work.

mod counting;
mod engine;
mod peer;
mod report;
mod workload;

use std::error::Error;
use std::time::Instant;

use counting::counting_installed;
pub use counting::{allocations, CountingAlloc};
use engine::{micro, mix};
use peer::Peer;
use report::{loadavg, Results};
use workload::{Counts, Workload, REQUEST_BLOCKS};

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

/// Runs `kvtier bench core`: the kvtier rows, each followed by the same row in the Python model
/// (unless `--no-peer` or Python is missing), then a table or one JSON object on stdout.
pub fn run(args: &CoreArgs) -> Result<(), Box<dyn Error>> {
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
