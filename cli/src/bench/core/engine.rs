//! The kvtier side of `bench core`: the single-operation rows and the step mixes, timed on
//! the measuring thread's CPU clock, allocations counted when the counting allocator is in.

use std::error::Error;
use std::time::Instant;

use kvtier_core::{
    AnyPolicy, EngineConfig, EventLog, LookupResult, MemoryTier, OffloadKey, PolicyKind, ReqContext, SecondaryTier,
    SlotId, StorePlan, TieringEngine,
};
use serde_json::{json, Value};

use super::counting::allocations;
use super::workload::{
    indices, make_key, num_docs, round_up, Counts, Workload, BATCH, PHASE_HIT, PHASE_LOAD, PHASE_MISS, PHASE_MIX,
    PHASE_TOUCH, REQUEST_BLOCKS,
};
use crate::cputime::thread_cpu;

type BenchResult<T> = Result<T, Box<dyn Error>>;

fn engine(slots: usize, memory_tier: bool) -> TieringEngine {
    let tiers: Vec<Box<dyn SecondaryTier>> =
        if memory_tier { vec![Box::new(MemoryTier::new(None))] } else { Vec::new() };
    TieringEngine::new(AnyPolicy::new(PolicyKind::Lru, slots as u32), tiers, EngineConfig::default())
}

/// One timed row.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    pub(super) op: &'static str,
    pub(super) unit: &'static str,
    pub(super) ops: usize,
    /// Wall-clock seconds.
    pub(super) seconds: f64,
    /// CPU seconds of the measuring thread, when the kernel reports them.
    pub(super) cpu_seconds: Option<f64>,
    pub(super) allocs: u64,
}

impl Sample {
    pub(super) fn wall_rate(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }

    pub(super) fn cpu_rate(&self) -> Option<f64> {
        self.cpu_seconds.map(|s| self.ops as f64 / s.max(1e-9))
    }
}

/// Times `f` (which performs `ops` operations) and counts its allocations.
fn measure<T>(
    op: &'static str,
    unit: &'static str,
    ops: usize,
    f: impl FnOnce() -> BenchResult<T>,
) -> BenchResult<(Sample, T)> {
    // The thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`, the clock of Python's
    // `time.thread_time_ns`); it reads zero where the kernel has none, and the rates then fall
    // back to wall-clock time.
    let cpu0 = thread_cpu();
    let a0 = allocations();
    let t0 = Instant::now();
    let out = f()?;
    let seconds = t0.elapsed().as_secs_f64();
    let allocs = allocations() - a0;
    let cpu1 = thread_cpu();
    let cpu_seconds = (cpu1 > cpu0).then(|| (cpu1 - cpu0).as_secs_f64());
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
pub(super) fn micro(w: &Workload, seed: u64, c: Counts, after: &mut dyn FnMut(&Sample)) -> BenchResult<Vec<Sample>> {
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
pub(super) struct MixCheck {
    pub(super) steps: u64,
    pub(super) hits: u64,
    pub(super) pending: u64,
    pub(super) stored: u64,
    pub(super) evicted: u64,
    pub(super) store_failures: u64,
    pub(super) load_failures: u64,
    pub(super) slot_sum: u64,
}

impl MixCheck {
    pub(super) fn to_json(self) -> Value {
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

    pub(super) fn from_json(v: &Value) -> Option<Self> {
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
pub(super) fn mix(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
