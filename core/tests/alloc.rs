//! Zero heap allocations per operation in steady state: a counting global allocator watches a
//! long mixed engine workload after warm-up.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::{Arc, Mutex};

use kvtier_core::{
    AnyPolicy, Direction, EngineConfig, EventLog, LookupResult, MemoryTier, OffloadKey, PolicyKind, ReqContext, RowIo,
    RowRefused, SecondaryTier, SlotId, StorePlan, TieringEngine,
};

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through `alloc`/`realloc` above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: as for `dealloc`; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCS.with(Cell::get)
}

struct Rows {
    row: usize,
    bytes: Mutex<Vec<u8>>,
}

impl RowIo for Rows {
    fn row_bytes(&self) -> usize {
        self.row
    }
    fn read_row(&self, slot: SlotId, dst: &mut [u8]) -> Result<(), RowRefused> {
        let b = self.bytes.lock().unwrap();
        dst.copy_from_slice(&b[slot.index() * self.row..][..self.row]);
        Ok(())
    }
    fn write_row(&self, slot: SlotId, src: &[u8]) -> Result<(), RowRefused> {
        let mut b = self.bytes.lock().unwrap();
        b[slot.index() * self.row..][..self.row].copy_from_slice(src);
        Ok(())
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One scheduler step of a prefix-sharing workload over a bounded key universe.
struct Workload {
    keys: Vec<OffloadKey>,
    rng: Rng,
    plan: StorePlan,
    slots: Vec<SlotId>,
    batch: Vec<OffloadKey>,
    ready: Vec<OffloadKey>,
    events: EventLog,
}

impl Workload {
    fn new(universe: usize, seed: u64) -> Self {
        let keys =
            (0..universe as u32).map(|i| OffloadKey::new(&(i as u64 * 0x9e37).to_le_bytes(), i % 3).unwrap()).collect();
        Workload {
            keys,
            rng: Rng(seed),
            plan: StorePlan::new(),
            slots: Vec::with_capacity(64),
            batch: Vec::with_capacity(64),
            ready: Vec::with_capacity(64),
            events: EventLog::new(),
        }
    }

    fn step<P: kvtier_core::EvictionPolicy>(&mut self, engine: &mut TieringEngine<P>) {
        let req = ReqContext::new(self.rng.below(8));
        let start = self.rng.below(self.keys.len() as u64) as usize;
        let len = 1 + self.rng.below(16) as usize;
        self.batch.clear();
        self.batch.extend(self.keys.iter().cycle().skip(start).take(len).copied());
        self.ready.clear();
        for key in &self.batch {
            match engine.lookup(key, req) {
                LookupResult::Ready => self.ready.push(*key),
                _ => break,
            }
        }
        self.slots.clear();
        if engine.prepare_load(&self.ready, req, &mut self.slots).is_ok() {
            engine.complete_load(&self.ready, req).unwrap();
        }
        engine.touch(&self.batch, req);
        if engine.prepare_store(&self.batch, req, &mut self.plan).is_ok() {
            let ok = self.rng.below(10) != 0;
            engine.complete_store(&self.plan.keys, req, ok).unwrap();
        }
        engine.end_step();
        self.events.clear();
        engine.take_events(&mut self.events);
    }
}

fn run(policy: PolicyKind, tiers: usize, with_rows: bool) {
    const SLOTS: u32 = 512;
    const ROW: usize = 256;
    let rows: Arc<dyn RowIo> = Arc::new(Rows { row: ROW, bytes: Mutex::new(vec![0; SLOTS as usize * ROW]) });
    let tier_list: Vec<Box<dyn SecondaryTier>> = (0..tiers)
        .map(|_| Box::new(MemoryTier::new(with_rows.then(|| rows.clone()))) as Box<dyn SecondaryTier>)
        .collect();
    let config = EngineConfig { promotion_deadline_steps: 4, events: true };
    let mut engine = TieringEngine::new(AnyPolicy::new(policy, SLOTS), tier_list, config);
    let mut work = Workload::new(4 * SLOTS as usize, 0x5eed);
    for _ in 0..20_000 {
        work.step(&mut engine);
        if work.rng.below(50) == 0 && tiers > 0 {
            engine.tier_mut::<MemoryTier>(0).unwrap().fail_next(Direction::Load);
        }
    }
    let before = allocations();
    for _ in 0..20_000 {
        work.step(&mut engine);
        if work.rng.below(50) == 0 && tiers > 0 {
            engine.tier_mut::<MemoryTier>(0).unwrap().fail_next(Direction::Load);
        }
    }
    let during = allocations() - before;
    let stats = *engine.stats();
    assert!(stats.promotions_loaded > 0 || tiers == 0, "the workload must exercise promotions: {stats:?}");
    assert_eq!(during, 0, "{policy:?} with {tiers} tiers allocated {during} times in steady state ({stats:?})");
}

#[test]
fn steady_state_allocates_nothing() {
    for policy in [PolicyKind::Lru, PolicyKind::Arc] {
        run(policy, 0, false);
        run(policy, 1, false);
        run(policy, 2, true);
    }
}
