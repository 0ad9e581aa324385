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

use std::alloc::{GlobalAlloc, Layout, System};
use std::error::Error;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use kvtier_core::{
    AnyPolicy, EngineConfig, EventLog, LookupResult, MemoryTier, OffloadKey, PolicyKind, ReqContext, SecondaryTier,
    SlotId, StorePlan, TieringEngine,
};
use serde_json::{json, Value};

/// Keys per `touch`, load and store call in the single-operation rows.
const BATCH: usize = 16;
/// Blocks per request in the step mix.
const REQUEST_BLOCKS: usize = 32;
/// Key-id namespaces (shared with the Python model): present/stored keys start at 0.
const MISS_BASE: u64 = 1 << 40;
const DOC_BASE: u64 = 2 << 40;
/// Phase numbers: each row draws from its own generator, seeded from (seed, phase).
const PHASE_HIT: u64 = 1;
const PHASE_MISS: u64 = 2;
const PHASE_TOUCH: u64 = 3;
const PHASE_LOAD: u64 = 4;
const PHASE_MIX: u64 = 5;

/// Where the peer lives, relative to this crate.
const PEER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/vllm_cpu_model.py");

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

// ---------------------------------------------------------------------------------------------
// Allocation counting
// ---------------------------------------------------------------------------------------------

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// A global allocator that forwards to [`System`] and counts allocations (`alloc`,
/// `alloc_zeroed` and `realloc` calls) for [`allocations`]. Install it in the binary:
///
/// ```
/// #[global_allocator]
/// static ALLOC: kvtier_cli::bench::core::CountingAlloc = kvtier_cli::bench::core::CountingAlloc;
///
/// fn main() {
///     let before = kvtier_cli::bench::core::allocations();
///     let v = std::hint::black_box(vec![1u8; 10]);
///     assert!(kvtier_cli::bench::core::allocations() > before);
///     drop(v);
/// }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAlloc;

// SAFETY: every method forwards its arguments unchanged to `System`, so each upholds the
// `GlobalAlloc` contract exactly as `System` does; counting is a relaxed atomic add that neither
// allocates nor unwinds.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: our caller upholds `GlobalAlloc::alloc`'s contract, which is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: our caller upholds `GlobalAlloc::alloc_zeroed`'s contract, which is `System`'s.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, i.e. by `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`; the caller upholds the rest of
        // `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations made through [`CountingAlloc`] since the process started (0 when it is not the
/// global allocator).
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// True when [`CountingAlloc`] is this process's global allocator.
fn counting_installed() -> bool {
    let before = allocations();
    drop(std::hint::black_box(Vec::<u8>::with_capacity(64)));
    allocations() > before
}

// ---------------------------------------------------------------------------------------------
// The workload (mirrored in bench/vllm_cpu_model.py)
// ---------------------------------------------------------------------------------------------

/// splitmix64's finalizer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The splitmix64 generator, as the Python model implements it.
#[derive(Debug, Clone)]
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.state)
    }
}

fn phase_rng(seed: u64, phase: u64) -> SplitMix64 {
    SplitMix64::new(mix64(seed.wrapping_add(phase)))
}

/// `n` draws in `0..modulo` from the phase's generator.
fn indices(seed: u64, phase: u64, n: usize, modulo: usize) -> Vec<u32> {
    let mut rng = phase_rng(seed, phase);
    (0..n).map(|_| (rng.next_u64() % modulo as u64) as u32).collect()
}

/// Key `id`: 32 hash bytes derived from it, then group 0 (36 bytes, as vLLM's keys).
fn make_key(id: u64) -> OffloadKey {
    let m = mix64(id);
    let mut hash = [0u8; 32];
    for (chunk, word) in hash.chunks_exact_mut(8).zip([m, id, !m, !id]) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    OffloadKey::new(&hash, 0).expect("a 36-byte key is valid")
}

fn num_docs(slots: usize) -> usize {
    (3 * slots / (2 * REQUEST_BLOCKS)).max(1)
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// Every key the Rust side uses, built before any clock starts.
struct Workload {
    slots: usize,
    /// Keys `0 .. 2 * slots`: the first `slots` fill the pool; all of them form the store ring.
    table: Vec<OffloadKey>,
    /// Never-stored keys for `lookup_miss`.
    miss: Vec<OffloadKey>,
    /// The mix's requests: document `d` is `docs[d * 32 .. (d + 1) * 32]`.
    docs: Vec<OffloadKey>,
}

impl Workload {
    fn new(slots: usize) -> Self {
        Workload {
            slots,
            table: (0..2 * slots as u64).map(make_key).collect(),
            miss: (0..slots as u64).map(|i| make_key(MISS_BASE + i)).collect(),
            docs: (0..(num_docs(slots) * REQUEST_BLOCKS) as u64).map(|i| make_key(DOC_BASE + i)).collect(),
        }
    }

    fn request(&self, doc: usize) -> &[OffloadKey] {
        &self.docs[doc * REQUEST_BLOCKS..(doc + 1) * REQUEST_BLOCKS]
    }
}

/// Operation counts of one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    warm: usize,
    ops: usize,
    mix_warm: usize,
    mix_steps: usize,
}

impl Counts {
    fn new(ops: u64) -> Self {
        let ops = ops.max(1) as usize;
        let mix_steps = (ops / 20).max(1);
        // Enough warm-up that every reusable buffer has reached its size before the clock starts.
        Counts { warm: (ops / 10).max(1000), ops, mix_warm: (mix_steps / 10).max(100), mix_steps }
    }
}

// ---------------------------------------------------------------------------------------------
// The kvtier side
// ---------------------------------------------------------------------------------------------

type BenchResult<T> = Result<T, Box<dyn Error>>;

fn engine(slots: usize, memory_tier: bool) -> TieringEngine {
    let tiers: Vec<Box<dyn SecondaryTier>> =
        if memory_tier { vec![Box::new(MemoryTier::new(None))] } else { Vec::new() };
    TieringEngine::new(AnyPolicy::new(PolicyKind::Lru, slots as u32), tiers, EngineConfig::default())
}

/// One timed row.
#[derive(Debug, Clone, Copy)]
struct Sample {
    op: &'static str,
    unit: &'static str,
    ops: usize,
    /// Wall-clock seconds.
    seconds: f64,
    /// CPU seconds of the measuring thread, when the kernel reports them.
    cpu_seconds: Option<f64>,
    allocs: u64,
}

impl Sample {
    fn wall_rate(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }

    fn cpu_rate(&self) -> Option<f64> {
        self.cpu_seconds.map(|s| self.ops as f64 / s.max(1e-9))
    }
}

/// CPU time this thread has run, in nanoseconds: `CLOCK_THREAD_CPUTIME_ID`, the clock of
/// Python's `time.thread_time_ns`. (`/proc/thread-self/schedstat` has only tick resolution.)
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn thread_cpu_ns() -> Option<u64> {
    /// `struct timespec` on 64-bit Linux.
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    let mut ts = Timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `clock_gettime` only writes one `struct timespec` (two 64-bit fields on 64-bit
    // Linux, as declared) through the pointer, which is valid and exclusive for the call.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// No thread CPU clock here: rates fall back to wall-clock time.
#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn thread_cpu_ns() -> Option<u64> {
    None
}

/// Times `f` (which performs `ops` operations) and counts its allocations.
fn measure<T>(
    op: &'static str,
    unit: &'static str,
    ops: usize,
    f: impl FnOnce() -> BenchResult<T>,
) -> BenchResult<(Sample, T)> {
    let cpu0 = thread_cpu_ns();
    let a0 = allocations();
    let t0 = Instant::now();
    let out = f()?;
    let seconds = t0.elapsed().as_secs_f64();
    let allocs = allocations() - a0;
    let cpu_seconds = match (cpu0, thread_cpu_ns()) {
        (Some(a), Some(b)) if b > a => Some((b - a) as f64 / 1e9),
        _ => None,
    };
    Ok((Sample { op, unit, ops, seconds, cpu_seconds, allocs }, out))
}

/// Scratch buffers an engine caller reuses across calls.
struct Buffers {
    plan: StorePlan,
    slots: Vec<SlotId>,
    log: EventLog,
    batch: [OffloadKey; BATCH],
}

impl Buffers {
    fn new() -> Self {
        Buffers { plan: StorePlan::new(), slots: Vec::new(), log: EventLog::new(), batch: [make_key(0); BATCH] }
    }

    fn gather(&mut self, table: &[OffloadKey], idx: impl Iterator<Item = usize>) -> &[OffloadKey] {
        for (slot, i) in self.batch.iter_mut().zip(idx) {
            *slot = table[i];
        }
        &self.batch
    }
}

/// `prepare_store` + `complete_store` of `keys`, then drains the events.
fn store(e: &mut TieringEngine, keys: &[OffloadKey], req: ReqContext, b: &mut Buffers) -> BenchResult<()> {
    e.prepare_store(keys, req, &mut b.plan)?;
    e.complete_store(&b.plan.keys, req, true)?;
    e.take_events(&mut b.log);
    b.log.clear();
    Ok(())
}

/// The single-operation rows, in one engine whose pool starts full of `table[..slots]`. Calls
/// `after` with each row as soon as it is measured (the peer then runs its own).
fn micro(w: &Workload, seed: u64, c: Counts, after: &mut dyn FnMut(&Sample)) -> BenchResult<Vec<Sample>> {
    let slots = w.slots;
    let mut e = engine(slots, false);
    let mut b = Buffers::new();
    let req = ReqContext::new(0);
    let mut rows = Vec::new();
    for keys in w.table[..slots].chunks(BATCH) {
        store(&mut e, keys, req, &mut b)?;
    }

    let lookups = |e: &mut TieringEngine, table: &[OffloadKey], idx: &[u32], want: LookupResult| {
        let mut n = 0usize;
        for &i in idx {
            n += usize::from(e.lookup(&table[i as usize], req) == want);
        }
        n
    };

    // Lookup hit and miss.
    for (op, phase, table, want) in [
        ("lookup_hit", PHASE_HIT, &w.table, LookupResult::Ready),
        ("lookup_miss", PHASE_MISS, &w.miss, LookupResult::Miss),
    ] {
        let idx = indices(seed, phase, c.warm + c.ops, slots);
        let warmed = lookups(&mut e, table, &idx[..c.warm], want);
        let (row, timed) = measure(op, "key", c.ops, || Ok(lookups(&mut e, table, &idx[c.warm..], want)))?;
        if warmed + timed != idx.len() {
            return Err(format!("{op}: {} of {} lookups answered {want:?}", warmed + timed, idx.len()).into());
        }
        after(&row);
        rows.push(row);
    }

    // Touch, then load pin/unpin, of batches of random present keys.
    let (warm, ops) = (round_up(c.warm, BATCH), round_up(c.ops, BATCH));
    let idx = indices(seed, PHASE_TOUCH, warm + ops, slots);
    let touch = |e: &mut TieringEngine, b: &mut Buffers, idx: &[u32]| -> BenchResult<()> {
        for chunk in idx.chunks(BATCH) {
            let keys = b.gather(&w.table, chunk.iter().map(|&i| i as usize));
            e.touch(keys, req);
        }
        Ok(())
    };
    touch(&mut e, &mut b, &idx[..warm])?;
    let row = measure("touch", "key", ops, || touch(&mut e, &mut b, &idx[warm..]))?.0;
    after(&row);
    rows.push(row);

    let idx = indices(seed, PHASE_LOAD, warm + ops, slots);
    let load = |e: &mut TieringEngine, b: &mut Buffers, idx: &[u32]| -> BenchResult<()> {
        for chunk in idx.chunks(BATCH) {
            b.gather(&w.table, chunk.iter().map(|&i| i as usize));
            b.slots.clear();
            e.prepare_load(&b.batch, req, &mut b.slots)?;
            e.complete_load(&b.batch, req)?;
        }
        Ok(())
    };
    load(&mut e, &mut b, &idx[..warm])?;
    let row = measure("load_pin_unpin", "key", ops, || load(&mut e, &mut b, &idx[warm..]))?.0;
    after(&row);
    rows.push(row);

    // Store with eviction: batches of new keys from a ring of 2 * slots keys (a key comes back
    // round only after `slots` newer ones pushed it out).
    let ring = 2 * slots;
    let stores = |e: &mut TieringEngine, b: &mut Buffers, batches: std::ops::Range<usize>| -> BenchResult<usize> {
        let mut evicted = 0;
        for n in batches {
            b.gather(&w.table, (0..BATCH).map(|j| (slots + n * BATCH + j) % ring));
            e.prepare_store(&b.batch, req, &mut b.plan)?;
            e.complete_store(&b.plan.keys, req, true)?;
            evicted += b.plan.evicted.len();
            e.take_events(&mut b.log);
            b.log.clear();
        }
        Ok(evicted)
    };
    let (wb, ob) = (warm / BATCH, ops / BATCH);
    stores(&mut e, &mut b, 0..wb)?;
    let (row, evicted) = measure("store_evict", "block", ops, || stores(&mut e, &mut b, wb..wb + ob))?;
    if evicted != ops {
        return Err(format!("store_evict: {evicted} evictions for {ops} stored blocks").into());
    }
    after(&row);
    rows.push(row);
    Ok(rows)
}

/// What the mix did; both sides report it over the same steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct MixCheck {
    steps: u64,
    hits: u64,
    pending: u64,
    stored: u64,
    evicted: u64,
    store_failures: u64,
    load_failures: u64,
    slot_sum: u64,
}

impl MixCheck {
    fn to_json(self) -> Value {
        json!({
            "steps": self.steps,
            "hits": self.hits,
            "pending": self.pending,
            "stored": self.stored,
            "evicted": self.evicted,
            "store_failures": self.store_failures,
            "load_failures": self.load_failures,
            "slot_sum": self.slot_sum,
        })
    }

    fn from_json(v: &Value) -> Option<Self> {
        let f = |name: &str| v.get(name).and_then(Value::as_u64);
        Some(MixCheck {
            steps: f("steps")?,
            hits: f("hits")?,
            pending: f("pending")?,
            stored: f("stored")?,
            evicted: f("evicted")?,
            store_failures: f("store_failures")?,
            load_failures: f("load_failures")?,
            slot_sum: f("slot_sum")?,
        })
    }
}

/// One engine step for request `doc` (see the module docs).
fn step(
    e: &mut TieringEngine,
    w: &Workload,
    doc: usize,
    req: ReqContext,
    b: &mut Buffers,
    check: &mut MixCheck,
) -> BenchResult<()> {
    let keys = w.request(doc);
    let mut h = 0;
    for key in keys {
        match e.lookup(key, req) {
            LookupResult::Ready => h += 1,
            LookupResult::Pending => {
                check.pending += 1;
                break;
            }
            LookupResult::Retry | LookupResult::Miss => break,
        }
    }
    let (hit, rest) = keys.split_at(h);
    let mut pinned = false;
    if !hit.is_empty() {
        b.slots.clear();
        match e.prepare_load(hit, req, &mut b.slots) {
            Ok(()) => pinned = true,
            // With tiers: a promotion reserved by a later lookup of this request may have
            // evicted a block an earlier lookup found ready (lookups do not refresh recency).
            Err(_) => check.load_failures += 1,
        }
    }
    if !rest.is_empty() {
        match e.prepare_store(rest, req, &mut b.plan) {
            Ok(()) => {
                e.complete_store(&b.plan.keys, req, true)?;
                check.stored += b.plan.keys.len() as u64;
                check.evicted += b.plan.evicted.len() as u64;
                check.slot_sum = b.plan.slots.iter().fold(check.slot_sum, |s, slot| s.wrapping_add(u64::from(slot.0)));
            }
            Err(_) => check.store_failures += 1,
        }
    }
    if pinned {
        e.complete_load(hit, req)?;
        e.touch(hit, req);
    }
    e.end_step();
    e.take_events(&mut b.log);
    b.log.clear();
    check.hits += h as u64;
    check.steps += 1;
    Ok(())
}

/// The step mix; returns its row, its counters after `checkpoint` steps (warm-up included) and
/// its counters at the end.
fn mix(
    w: &Workload,
    seed: u64,
    c: Counts,
    memory_tier: bool,
    checkpoint: usize,
) -> BenchResult<(Sample, Option<MixCheck>, MixCheck)> {
    let ndocs = num_docs(w.slots);
    let mut e = engine(w.slots, memory_tier);
    let mut b = Buffers::new();
    for doc in 0..ndocs.min(w.slots / REQUEST_BLOCKS) {
        // A full pool of pinned blocks cannot happen here; a refused store is skipped as the
        // Python model skips it.
        let _ = store(&mut e, w.request(doc), ReqContext::new(0), &mut b);
        e.end_step();
    }
    let docs = indices(seed, PHASE_MIX, c.mix_warm + c.mix_steps, ndocs);
    let mut check = MixCheck::default();
    let mut snapshot = None;
    let mut run = |e: &mut TieringEngine, b: &mut Buffers, range: std::ops::Range<usize>| -> BenchResult<()> {
        for i in range {
            step(e, w, docs[i] as usize, ReqContext::new(i as u64), b, &mut check)?;
            if i + 1 == checkpoint {
                snapshot = Some(check);
            }
        }
        Ok(())
    };
    run(&mut e, &mut b, 0..c.mix_warm)?;
    let op = if memory_tier { "step_mix_memtier" } else { "step_mix" };
    let all = c.mix_warm + c.mix_steps;
    let (row, ()) = measure(op, "step", c.mix_steps, || run(&mut e, &mut b, c.mix_warm..all))?;
    Ok((row, snapshot, check))
}

// ---------------------------------------------------------------------------------------------
// The Python peer
// ---------------------------------------------------------------------------------------------

/// One row as the Python model measured it.
#[derive(Debug, Clone)]
struct PeerRow {
    op: String,
    wall_rate: f64,
    cpu_rate: Option<f64>,
}

/// The Python model, running as a child that measures one row per request (`--serve`), so
/// that each of its rows runs right after the same kvtier row and the two never share the CPU.
struct Peer {
    child: Option<(Child, ChildStdin, BufReader<ChildStdout>)>,
    python: Option<String>,
    rows: Vec<PeerRow>,
    mix_check: Option<MixCheck>,
    error: Option<String>,
}

impl Peer {
    /// A peer that will not run, for `reason`.
    fn absent(reason: Option<String>) -> Self {
        Peer { child: None, python: None, rows: Vec::new(), mix_check: None, error: reason }
    }

    fn spawn(args: &CoreArgs, c: Counts) -> Self {
        let script = Path::new(PEER_SCRIPT);
        if !script.is_file() {
            return Self::absent(Some(format!("the Python model {} is missing", script.display())));
        }
        let spawned = Command::new(&args.python)
            .arg(script)
            .arg("--serve")
            .args(["--slots", &args.slots.to_string()])
            .args(["--ops", &c.ops.to_string(), "--warmup", &c.warm.to_string()])
            .args(["--mix-steps", &c.mix_steps.to_string(), "--mix-warmup", &c.mix_warm.to_string()])
            .args(["--seed", &args.seed.to_string()])
            .args(["--batch", &BATCH.to_string(), "--request-blocks", &REQUEST_BLOCKS.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match spawned {
            Ok(mut child) => match (child.stdin.take(), child.stdout.take()) {
                (Some(stdin), Some(stdout)) => {
                    let mut peer = Self::absent(None);
                    peer.child = Some((child, stdin, BufReader::new(stdout)));
                    peer
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    Self::absent(Some("cannot talk to the Python model".to_owned()))
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Self::absent(Some(format!("{} not found", args.python)))
            }
            Err(e) => Self::absent(Some(format!("cannot run {}: {e}", args.python))),
        }
    }

    /// Has the Python model measure row `op` now. A failure stops the peer and is remembered.
    fn run_row(&mut self, op: &str) {
        let Some((child, stdin, stdout)) = self.child.as_mut() else {
            return;
        };
        let answer = (|| -> Result<Value, String> {
            writeln!(stdin, "{op}").and_then(|()| stdin.flush()).map_err(|e| e.to_string())?;
            let mut line = String::new();
            if stdout.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                let mut stderr = String::new();
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut stderr);
                }
                return Err(stderr.lines().last().unwrap_or("it exited").to_owned());
            }
            serde_json::from_str(&line).map_err(|e| format!("bad output: {e}"))
        })();
        match answer {
            Ok(v) => {
                self.python = v["python"].as_str().map(str::to_owned);
                if let Some(check) = v.get("mix_check") {
                    self.mix_check = MixCheck::from_json(check);
                }
                self.rows.push(PeerRow {
                    op: op.to_owned(),
                    wall_rate: v["ops_per_s"].as_f64().unwrap_or(f64::NAN),
                    cpu_rate: v["ops_per_cpu_s"].as_f64(),
                });
            }
            Err(e) => {
                self.error = Some(format!("the Python model failed on {op}: {e}"));
                self.stop();
            }
        }
    }

    /// Closes the child's input (it then exits) and reaps it; kills it if it does not exit.
    fn stop(&mut self) {
        if let Some((mut child, stdin, _)) = self.child.take() {
            drop(stdin);
            for _ in 0..50 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn row(&self, op: &str) -> Option<&PeerRow> {
        self.rows.iter().find(|r| r.op == op)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

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

    // Did both sides do the same work? Compare the mix counters over the Python run's steps.
    let streams_match = match (peer.mix_check, snapshot) {
        (Some(theirs), Some(ours)) => Some(theirs == ours),
        _ => None,
    };
    // Rates per CPU-second of the measuring thread when both sides report them: a shared
    // machine's other load then neither slows one side down nor flatters the other.
    let cpu_basis = rows.iter().all(|r| r.cpu_seconds.is_some()) && peer.rows.iter().all(|r| r.cpu_rate.is_some());
    let peer_row = |op: &str| peer.row(if op == "step_mix_memtier" { "step_mix" } else { op });
    let lines: Vec<Line> = rows
        .iter()
        .map(|r| {
            let py = peer_row(r.op);
            let rate = if cpu_basis { r.cpu_rate().unwrap_or(f64::NAN) } else { r.wall_rate() };
            let py_rate = py.map(|p| if cpu_basis { p.cpu_rate.unwrap_or(f64::NAN) } else { p.wall_rate });
            Line {
                op: r.op,
                unit: r.unit,
                rate,
                py_rate,
                ratio: py_rate.map(|p| rate / p),
                wall_rate: r.wall_rate(),
                py_wall_rate: py.map(|p| p.wall_rate),
                ratio_wall: py.map(|p| r.wall_rate() / p.wall_rate),
                allocs_per_op: counting.then(|| r.allocs as f64 / r.ops as f64),
                allocs: counting.then_some(r.allocs),
                ops: r.ops,
                tierless_peer: r.op == "step_mix_memtier" && py.is_some(),
            }
        })
        .collect();
    let basis = if cpu_basis { "thread_cpu" } else { "wall" };

    if args.json {
        let results: Vec<Value> = lines
            .iter()
            .map(|l| {
                json!({
                    "op": l.op,
                    "unit": l.unit,
                    "kvtier_ops_per_s": l.rate,
                    "python_ops_per_s": l.py_rate,
                    "ratio": l.ratio,
                    "allocs_per_op": l.allocs_per_op,
                    "kvtier_wall_ops_per_s": l.wall_rate,
                    "python_wall_ops_per_s": l.py_wall_rate,
                    "ratio_wall": l.ratio_wall,
                    "kvtier_ops": l.ops,
                    "kvtier_allocs": l.allocs,
                    "peer_is_tierless_mix": l.tierless_peer,
                })
            })
            .collect();
        let out = json!({
            "slots": slots,
            "seed": args.seed,
            "policy": "lru",
            "batch": BATCH,
            "request_blocks": REQUEST_BLOCKS,
            "rate_basis": basis,
            "kvtier_ops": ours.ops,
            "kvtier_mix_steps": ours.mix_steps,
            "python": peer.python,
            "python_ops": theirs.ops,
            "python_mix_steps": theirs.mix_steps,
            "peer_error": peer.error,
            "streams_match": streams_match,
            "loadavg": [load_before, load_after],
            "mix_counters": {
                "step_mix": mix_counters.to_json(),
                "step_mix_memtier": memtier_counters.to_json(),
            },
            "seconds": total,
            "results": results,
        });
        println!("{out}");
        return Ok(());
    }

    println!(
        "kvtier bench core: {slots} slots, LRU, seed {}; kvtier times {} ops per row ({} mix steps), \
         the Python model {} ({} mix steps)",
        args.seed, ours.ops, ours.mix_steps, theirs.ops, theirs.mix_steps
    );
    match (&peer.python, &peer.error) {
        (_, Some(e)) => println!("peer: {e}; kvtier figures only"),
        (Some(v), None) => println!("peer: bench/vllm_cpu_model.py on Python {v}"),
        (None, None) => println!("peer: not run (--no-peer)"),
    }
    println!(
        "rates: operations per {}; load average {} -> {}",
        if cpu_basis { "CPU-second of the measuring thread" } else { "wall-clock second" },
        load_before.as_deref().unwrap_or("?"),
        load_after.as_deref().unwrap_or("?"),
    );
    println!();
    println!(
        "{:<18} {:<6} {:>13} {:>13} {:>8} {:>10} {:>10}",
        "operation", "unit", "kvtier ops/s", "python ops/s", "ratio", "wall ratio", "allocs/op"
    );
    let ratio = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.1}x"));
    for l in &lines {
        let mark = if l.tierless_peer { "*" } else { "" };
        println!(
            "{:<18} {:<6} {:>13} {:>13} {:>8} {:>10} {:>10}",
            l.op,
            l.unit,
            human(l.rate),
            l.py_rate.map_or("-".to_owned(), |p| format!("{}{mark}", human(p))),
            ratio(l.ratio),
            ratio(l.ratio_wall),
            l.allocs_per_op.map_or("n/a".to_owned(), |a| if a == 0.0 { "0".to_owned() } else { format!("{a:.1e}") }),
        );
    }
    println!();
    println!("key: one lookup, or one key of a touch / prepare_load+complete_load call of {BATCH} keys;");
    println!("block: one block of a prepare_store+complete_store of {BATCH} new blocks into a full pool ({BATCH} evictions);");
    println!(
        "step: one {REQUEST_BLOCKS}-block request through an engine step (lookup, pin, store, unpin, touch, end_step)."
    );
    if lines.iter().any(|l| l.tierless_peer) {
        println!("* the Python model has no tiers: compared with its tierless mix, which does less work.");
    }
    let per_step = |n: u64, c: &MixCheck| n as f64 / c.steps.max(1) as f64;
    for (name, c) in [("step_mix", &mix_counters), ("step_mix_memtier", &memtier_counters)] {
        println!(
            "{name}: per step {:.1} hits, {:.1} stored, {:.1} evicted, {:.2} stopped at a pending \
             block, {:.4} failed pins",
            per_step(c.hits, c),
            per_step(c.stored, c),
            per_step(c.evicted, c),
            per_step(c.pending, c),
            per_step(c.load_failures, c),
        );
    }
    if !counting {
        println!("allocs/op: n/a (kvtier_cli::bench::core::CountingAlloc is not the global allocator)");
    }
    match streams_match {
        Some(true) => println!(
            "same work: the mix counters agree over the first {} steps (hits, stores, evictions, slot ids)",
            theirs.mix_warm + theirs.mix_steps
        ),
        Some(false) => println!("WARNING: the mix counters differ: kvtier {snapshot:?}, Python {:?}", peer.mix_check),
        None if peer.mix_check.is_some() => {
            println!("same work: not checked (the Python model ran more mix steps than kvtier)")
        }
        None => {}
    }
    println!("total {total:.1} s");
    Ok(())
}

/// One row of the report.
struct Line {
    op: &'static str,
    unit: &'static str,
    rate: f64,
    py_rate: Option<f64>,
    ratio: Option<f64>,
    wall_rate: f64,
    py_wall_rate: Option<f64>,
    ratio_wall: Option<f64>,
    allocs_per_op: Option<f64>,
    allocs: Option<u64>,
    ops: usize,
    tierless_peer: bool,
}

/// The 1-, 5- and 15-minute load averages, as the kernel prints them.
fn loadavg() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(text.split_ascii_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn human(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.2} G", x / 1e9),
        x if x >= 1e6 => format!("{:.2} M", x / 1e6),
        x if x >= 1e3 => format!("{:.1} k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_and_keys_match_the_python_model() {
        // Reference values printed by bench/vllm_cpu_model.py.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(make_key(7).to_string(), "14df177b2330ae120700000000000000eb20e884dccf51edf8ffffffffffffff00000000");
        assert_eq!(
            make_key(DOC_BASE + 5).to_string(),
            "11ab62d845dd28d00500000000020000ee549d27ba22d72ffafffffffffdffff00000000"
        );
        assert_eq!(indices(42, PHASE_HIT, 5, 1000), [479, 422, 435, 91, 557]);
    }

    #[test]
    fn workload_is_deterministic() {
        assert_eq!(indices(7, PHASE_MIX, 100, 37), indices(7, PHASE_MIX, 100, 37));
        assert_ne!(indices(7, PHASE_MIX, 100, 1 << 20), indices(8, PHASE_MIX, 100, 1 << 20));
        let (a, b) = (Workload::new(64), Workload::new(64));
        assert_eq!(a.table, b.table);
        assert_eq!(a.docs, b.docs);
        let run = |w: &Workload| mix(w, 3, Counts::new(400), false, 15).unwrap().1;
        let snap = run(&a).expect("checkpoint within the run");
        assert_eq!(Some(snap), run(&b));
        assert_eq!(snap.steps, 15);
        // The prefill fills the 64 slots exactly, so every later store evicts as many blocks.
        assert_eq!(snap.stored, snap.evicted);
    }

    #[test]
    fn every_row_runs_on_a_small_pool() {
        let w = Workload::new(64);
        let mut seen = Vec::new();
        let rows = micro(&w, 1, Counts::new(200), &mut |r| seen.push(r.op)).unwrap();
        let ops: Vec<_> = rows.iter().map(|r| r.op).collect();
        assert_eq!(ops, ["lookup_hit", "lookup_miss", "touch", "load_pin_unpin", "store_evict"]);
        assert_eq!(seen, ops);
        let (row, _, counters) = mix(&w, 1, Counts::new(200), true, 0).unwrap();
        assert_eq!(row.ops, 10);
        assert_eq!(counters.steps, 110);
    }

    #[test]
    fn counting_alloc_counts() {
        let layout = Layout::from_size_align(48, 8).unwrap();
        let before = allocations();
        // SAFETY: `layout` has a non-zero size; the block is freed with the same layout.
        unsafe {
            let p = CountingAlloc.alloc(layout);
            assert!(!p.is_null());
            let p = CountingAlloc.realloc(p, layout, 96);
            assert!(!p.is_null());
            CountingAlloc.dealloc(p, Layout::from_size_align(96, 8).unwrap());
        }
        assert!(allocations() - before >= 2);
    }
}
