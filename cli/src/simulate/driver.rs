//! The simulated engine: a scheduler that admits requests step by step, reuses the GPU prefix
//! cache, and drives kvtier the way vLLM's offloading connector drives its manager.
//!
//! Per step: requests whose arrival step has come join the waiting queue; running requests
//! whose answer is complete store their answer blocks and release their GPU buffers; then
//! waiting requests are admitted in order (at most `max_batch` per step). Admitting a request:
//!
//! 1. the longest prefix of its prompt cached on the GPU is reused;
//! 2. the next blocks are looked up in kvtier, in order, until one is neither Ready nor
//!    Pending. A Pending block (a promotion from disk reserved by that lookup, or one in flight)
//!    makes the request wait, and it asks again next step, as vLLM defers a request whose
//!    blocks are still being loaded. A request whose predecessor in its session has not
//!    finished is skipped; one that does not fit in the GPU's free buffers stops admission for
//!    the step (head-of-line, as vLLM's scheduler);
//! 3. the Ready blocks are pinned (`prepare_load`), copied row -> GPU buffer and checked
//!    against the bytes the block must hold, then unpinned (`complete_load`), and the reused
//!    prefix is `touch`ed;
//! 4. the other blocks are "computed" (filled with their content) and offloaded:
//!    `prepare_store`, copy GPU buffer -> row, `complete_store`;
//! 5. the request runs one step per answer block, then its answer blocks are stored the same
//!    way.
//!
//! The step ends with `end_step` (which submits the promotions reserved during the step) and
//! `take_events`. A block counts as a disk hit when it became ready through a promotion and this
//! is its first load since; any other kvtier hit is a CPU hit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use kvtier::TieredCache;
use kvtier_core::{EventLog, LookupResult, Medium, OffloadKey, PoolLookup, ReqContext, SlotId, StorePlan};
use kvtier_fs::region::Access;
use kvtier_fs::FsTier;
use metrics::{counter, gauge, histogram};

use super::gpu::GpuCache;
use super::workload::{count_mismatches, fill_block, Workload};
use crate::cputime::thread_cpu;

/// The scheduler's settings.
#[derive(Debug, Clone, Copy)]
pub struct SchedConfig {
    /// GPU block buffers.
    pub gpu_blocks: usize,
    /// Bytes per block.
    pub block_bytes: usize,
    /// Most requests admitted per step.
    pub max_batch: usize,
    /// Shortest wall time of a step with work, so I/O has engine-like time to complete.
    pub step_time: Duration,
    /// Most promotions in flight at once: past it, lookups of blocks absent from the CPU tier
    /// wait, so that promotions do not evict each other before their requests load them.
    pub promotion_budget: usize,
    /// Requests that may hold pinned or promoted blocks across steps at once; others wait
    /// without calling kvtier. Bounds how much of the CPU tier waiting requests pin.
    pub promoting_requests: usize,
    /// Steps a request waits for promotions at most; then it takes the blocks that are ready
    /// and recomputes the rest.
    pub max_wait_steps: u32,
}

/// Counters of one run.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Requests finished.
    pub requests: u64,
    /// Scheduler steps.
    pub steps: u64,
    /// Prompt blocks reused from the GPU prefix cache.
    pub gpu: u64,
    /// Prompt blocks loaded from the CPU tier.
    pub cpu: u64,
    /// Prompt blocks promoted from disk, then loaded.
    pub disk: u64,
    /// Prompt blocks computed.
    pub miss: u64,
    /// Blocks written GPU -> CPU tier.
    pub cpu_stored: u64,
    /// Blocks read CPU tier -> GPU.
    pub cpu_loaded: u64,
    /// Blocks published by the disk tier.
    pub disk_stored: u64,
    /// Blocks promoted disk -> CPU tier.
    pub disk_loaded: u64,
    /// Blocks `prepare_store` could not take (every slot pinned).
    pub store_rejected: u64,
    /// Ready blocks that could not be loaded (recomputed instead).
    pub load_failed: u64,
    /// Bytes that differed from what a loaded block must hold.
    pub mismatched_bytes: u64,
    /// Request-steps spent waiting for a promotion.
    pub waits: u64,
    /// Lookup answers: ready, pending, retry, miss.
    pub lookups: [u64; 4],
    /// Blocks evicted from the CPU tier.
    pub cpu_evictions: u64,
    /// Promotion latencies, steps.
    pub promo_steps: Vec<u64>,
    /// Promotion latencies, ms.
    pub promo_ms: Vec<f64>,
}

/// What happened in one step (blocks).
#[derive(Debug, Clone, Copy, Default)]
pub struct StepSample {
    /// Prompt blocks reused from the GPU.
    pub gpu: u32,
    /// Prompt blocks loaded from the CPU tier.
    pub cpu: u32,
    /// Prompt blocks promoted from disk.
    pub disk: u32,
    /// Prompt blocks computed.
    pub miss: u32,
    /// Blocks stored into the CPU tier.
    pub cpu_stored: u32,
    /// Blocks loaded from the CPU tier.
    pub cpu_loaded: u32,
    /// Blocks stored on disk.
    pub disk_stored: u32,
    /// Blocks promoted from disk.
    pub disk_loaded: u32,
}

/// kvtier, as the simulated engine holds it, with the bookkeeping of promotions.
pub struct Offload {
    /// The cache.
    pub cache: TieredCache,
    /// Wait for every tier job at the end of each step: hit and miss outcomes then no longer
    /// depend on disk timing.
    pub sync_io: bool,
    /// Scheduler-thread CPU time spent inside kvtier calls.
    pub kv_cpu: Duration,
    plan: StorePlan,
    slots: Vec<SlotId>,
    ok: Vec<OffloadKey>,
    bad: Vec<OffloadKey>,
    events: EventLog,
    inflight: HashMap<OffloadKey, (u64, Instant)>,
    promoted: HashSet<OffloadKey>,
    last_loaded: u64,
    last_disk_stored: u64,
    last_stats: kvtier_core::EngineStats,
}

impl std::fmt::Debug for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offload").field("cache", &self.cache).field("sync_io", &self.sync_io).finish_non_exhaustive()
    }
}

impl Offload {
    /// Wraps an open cache.
    pub fn new(cache: TieredCache, sync_io: bool) -> Self {
        Offload {
            cache,
            sync_io,
            kv_cpu: Duration::ZERO,
            plan: StorePlan::new(),
            slots: Vec::new(),
            ok: Vec::new(),
            bad: Vec::new(),
            events: EventLog::new(),
            inflight: HashMap::new(),
            promoted: HashSet::new(),
            last_loaded: 0,
            last_disk_stored: 0,
            last_stats: kvtier_core::EngineStats::default(),
        }
    }

    /// Blocks published by the FS tiers so far.
    pub fn disk_blocks_stored(&mut self) -> u64 {
        let engine = self.cache.engine();
        (0..engine.tier_count()).filter_map(|i| engine.tier_mut::<FsTier>(i).map(|t| t.stats().blocks_stored)).sum()
    }

    /// Runs `f` on the engine, adding the scheduler thread's CPU time to `kv_cpu`.
    fn kv<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        let t = thread_cpu();
        let out = f(self);
        self.kv_cpu += thread_cpu().saturating_sub(t);
        out
    }
}

struct Running {
    id: usize,
    finish: u64,
    bufs: Vec<u32>,
}

enum Admit {
    Admitted(Running),
    Waiting,
    NoRoom,
}

/// One run of the workload: with kvtier (`offload`) or with the GPU prefix cache alone.
pub struct Sim<'a> {
    cfg: SchedConfig,
    wl: &'a Workload,
    gpu: GpuCache,
    off: Option<&'a mut Offload>,
    /// Counters.
    pub tally: Tally,
    /// Per-step samples.
    pub samples: Vec<StepSample>,
    sample: StepSample,
    step: u64,
    waited: Vec<u32>,
    held: Vec<Vec<OffloadKey>>,
    has_slot: Vec<bool>,
    slots_used: usize,
}

impl<'a> Sim<'a> {
    /// A run of `wl` (with kvtier when `off` is given).
    pub fn new(cfg: SchedConfig, wl: &'a Workload, off: Option<&'a mut Offload>) -> Self {
        let gpu = GpuCache::new(cfg.gpu_blocks, cfg.block_bytes, off.is_some());
        Sim {
            cfg,
            wl,
            gpu,
            off,
            tally: Tally::default(),
            samples: Vec::new(),
            sample: StepSample::default(),
            step: 0,
            waited: Vec::new(),
            held: Vec::new(),
            has_slot: Vec::new(),
            slots_used: 0,
        }
    }

    /// Runs every request to completion.
    pub fn run(&mut self, bar: &ProgressBar) -> Result<(), String> {
        let n = self.wl.requests.len();
        let last_arrival = self.wl.requests.last().map_or(0, |r| r.arrival);
        let step_limit = last_arrival + 10_000 + 300 * n as u64;
        let mut waiting: VecDeque<usize> = VecDeque::new();
        let mut running: Vec<Running> = Vec::new();
        let mut done = vec![false; n];
        self.waited = vec![0; n];
        self.held = vec![Vec::new(); n];
        self.has_slot = vec![false; n];
        let mut next = 0;
        while (self.tally.requests as usize) < n {
            let began = Instant::now();
            self.sample = StepSample::default();
            while next < n && self.wl.requests[next].arrival <= self.step {
                waiting.push_back(next);
                next += 1;
            }
            for r in std::mem::take(&mut running) {
                if r.finish <= self.step {
                    done[r.id] = true;
                    self.finish(r);
                } else {
                    running.push(r);
                }
            }
            let mut admitted = 0;
            let mut i = 0;
            while i < waiting.len() && admitted < self.cfg.max_batch {
                let spec = &self.wl.requests[waiting[i]];
                if spec.prev.is_some_and(|p| !done[p]) {
                    i += 1;
                    continue;
                }
                match self.admit(waiting[i]) {
                    Admit::Admitted(r) => {
                        running.push(r);
                        waiting.remove(i);
                        admitted += 1;
                    }
                    Admit::Waiting => {
                        self.tally.waits += 1;
                        self.waited[waiting[i]] += 1;
                        i += 1;
                    }
                    Admit::NoRoom => break,
                }
            }
            let mut busy = !(running.is_empty() && waiting.is_empty());
            if self.off.is_some() {
                busy |= self.end_step();
            }
            self.samples.push(self.sample);
            self.step += 1;
            self.tally.steps = self.step;
            bar.set_position(self.tally.requests);
            if self.off.is_some() && busy {
                if let Some(rest) = self.cfg.step_time.checked_sub(began.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            if self.step > step_limit {
                return Err(format!(
                    "no progress: {} of {n} requests done after {} steps",
                    self.tally.requests, self.step
                ));
            }
        }
        Ok(())
    }

    fn admit(&mut self, id: usize) -> Admit {
        let wl = self.wl;
        let spec = &wl.requests[id];
        let (prompt, output) = (wl.prompt(spec), wl.output(spec));
        let req = ReqContext::new(id as u64);
        let n_gpu = self.gpu.prefix_hits(prompt);
        if self.off.is_some() && !self.has_slot[id] {
            if self.slots_used >= self.cfg.promoting_requests {
                return Admit::Waiting;
            }
            self.has_slot[id] = true;
            self.slots_used += 1;
        }
        let patient = self.waited[id] < self.cfg.max_wait_steps;
        let (ready, pending) = self.lookup_walk(id, &prompt[n_gpu..], req, patient);
        if pending > 0 {
            return Admit::Waiting;
        }
        let need = prompt.len() - n_gpu + output.len();
        if self.gpu.available_besides(&prompt[..n_gpu]) < need {
            return Admit::NoRoom;
        }
        let mut bufs = Vec::with_capacity(prompt.len() + output.len());
        for k in &prompt[..n_gpu] {
            bufs.push(self.gpu.acquire(k));
        }
        for _ in 0..need {
            bufs.push(self.gpu.allocate().expect("room was checked"));
        }
        let (cpu, disk) = self.load(&prompt[n_gpu..n_gpu + ready], &bufs[n_gpu..n_gpu + ready]);
        self.release_held(id, req);
        let hit = n_gpu + ready;
        if self.off.is_some() {
            for (k, &b) in prompt[hit..].iter().zip(&bufs[hit..prompt.len()]) {
                fill_block(k, self.gpu.buf_mut(b));
            }
        }
        for (k, &b) in prompt[n_gpu..].iter().zip(&bufs[n_gpu..prompt.len()]) {
            self.gpu.publish(b, *k);
        }
        if let Some(off) = self.off.as_deref_mut() {
            off.kv(|o| o.cache.engine().touch(&prompt[..hit], req));
            self.store(&prompt[hit..], &bufs[hit..prompt.len()], req);
        }
        let miss = (prompt.len() - hit) as u64;
        let t = &mut self.tally;
        (t.gpu, t.cpu, t.disk, t.miss) = (t.gpu + n_gpu as u64, t.cpu + cpu, t.disk + disk, t.miss + miss);
        let s = &mut self.sample;
        s.gpu += n_gpu as u32;
        s.cpu += cpu as u32;
        s.disk += disk as u32;
        s.miss += miss as u32;
        if self.off.is_some() {
            for (source, n) in [("gpu", n_gpu as u64), ("cpu", cpu), ("disk", disk), ("miss", miss)] {
                counter!("kvtier_prefix_blocks_total", "source" => source).increment(n);
            }
        }
        Admit::Admitted(Running { id, finish: self.step + output.len() as u64, bufs })
    }

    fn finish(&mut self, r: Running) {
        let wl = self.wl;
        let spec = &wl.requests[r.id];
        let output = wl.output(spec);
        let out_bufs = &r.bufs[spec.prompt_blocks..];
        for (k, &b) in output.iter().zip(out_bufs) {
            if self.off.is_some() {
                fill_block(k, self.gpu.buf_mut(b));
            }
            self.gpu.publish(b, *k);
        }
        if self.off.is_some() {
            self.store(output, out_bufs, ReqContext::new(r.id as u64));
        }
        self.gpu.release(r.bufs.iter().rev().copied());
        self.tally.requests += 1;
    }

    /// Looks `keys` up in order until one is neither Ready nor Pending: (ready, pending). An
    /// impatient walk also stops at the first Pending block and reports none pending.
    fn lookup_walk(&mut self, id: usize, keys: &[OffloadKey], req: ReqContext, patient: bool) -> (usize, usize) {
        let Some(off) = self.off.as_deref_mut() else { return (0, 0) };
        let mut held = std::mem::take(&mut self.held[id]);
        let step = self.step;
        let budget = self.cfg.promotion_budget;
        let mut answers = [0u64; 4];
        let (ready, pending) = off.kv(|o| {
            let (mut ready, mut pending) = (0, 0);
            for k in keys {
                if held.contains(k) {
                    ready += 1;
                    continue;
                }
                let absent = o.cache.engine_ref().primary_lookup(k) == PoolLookup::Miss;
                if absent && !patient {
                    break;
                }
                if absent && o.inflight.len() >= budget {
                    // Wait for promotions in flight to land before starting more.
                    pending += 1;
                    break;
                }
                let before = o.cache.engine_ref().stats().promotions_reserved;
                match o.cache.engine().lookup(k, req) {
                    LookupResult::Ready => {
                        answers[0] += 1;
                        // Pin it now, so that it stays until the request is admitted.
                        o.slots.clear();
                        let slots = &mut o.slots;
                        if let Err(e) = o.cache.engine().prepare_load(core::slice::from_ref(k), req, slots) {
                            tracing::warn!(error = %e, "prepare_load refused a ready block");
                            break;
                        }
                        held.push(*k);
                        ready += 1;
                    }
                    LookupResult::Pending if !patient => {
                        answers[1] += 1;
                        break;
                    }
                    LookupResult::Pending => {
                        answers[1] += 1;
                        pending += 1;
                        if o.cache.engine_ref().stats().promotions_reserved > before {
                            o.inflight.insert(*k, (step, Instant::now()));
                        }
                    }
                    LookupResult::Retry => {
                        answers[2] += 1;
                        break;
                    }
                    LookupResult::Miss => {
                        answers[3] += 1;
                        break;
                    }
                }
            }
            (ready, pending)
        });
        self.held[id] = held;
        // The walk's first lookup polled the tiers: promotions that finished are ready now.
        self.handle_events();
        for (i, name) in ["ready", "pending", "retry", "miss"].into_iter().enumerate() {
            self.tally.lookups[i] += answers[i];
            counter!("kvtier_lookups_total", "result" => name).increment(answers[i]);
        }
        (ready, pending)
    }

    /// Loads ready, pinned `keys` into GPU buffers `bufs` and checks their bytes: (cpu hits,
    /// disk hits).
    fn load(&mut self, keys: &[OffloadKey], bufs: &[u32]) -> (u64, u64) {
        let Some(off) = self.off.as_deref_mut() else { return (0, 0) };
        let region = off.cache.region().clone();
        let (mut cpu, mut disk) = (0, 0);
        for (k, &b) in keys.iter().zip(bufs) {
            let dst = self.gpu.buf_mut(b);
            let slot = off.cache.engine_ref().primary().find(k).map_or(SlotId(u32::MAX), |(s, _)| s);
            match region.lease(slot, Access::Read) {
                Ok(lease) => dst.copy_from_slice(&lease.block()[..dst.len()]),
                Err(e) => {
                    tracing::error!(slot = slot.0, error = %e, "cannot read a pinned row");
                    self.tally.load_failed += 1;
                    fill_block(k, dst);
                }
            }
            let bad = count_mismatches(k, self.gpu.buf(b));
            if bad > 0 {
                tracing::error!(key = %k, slot = slot.0, bytes = bad, "loaded block has wrong bytes");
                self.tally.mismatched_bytes += bad;
                counter!("kvtier_verify_mismatched_bytes_total").increment(bad);
            }
            if off.promoted.remove(k) {
                disk += 1;
            } else {
                cpu += 1;
            }
        }
        let n = keys.len() as u64;
        self.tally.cpu_loaded += n;
        self.sample.cpu_loaded += n as u32;
        counter!("kvtier_blocks_loaded_total", "tier" => "cpu").increment(n);
        counter!("kvtier_bytes_loaded_total", "tier" => "cpu").increment(n * self.cfg.block_bytes as u64);
        (cpu, disk)
    }

    /// Unpins every block request `id` pinned while it waited.
    fn release_held(&mut self, id: usize, req: ReqContext) {
        if std::mem::take(&mut self.has_slot[id]) {
            self.slots_used -= 1;
        }
        let held = std::mem::take(&mut self.held[id]);
        let Some(off) = self.off.as_deref_mut() else { return };
        if held.is_empty() {
            return;
        }
        if let Err(e) = off.kv(|o| o.cache.engine().complete_load(&held, req)) {
            tracing::error!(error = %e, "complete_load refused");
        }
    }

    /// Offloads computed blocks `keys` held in GPU buffers `bufs`.
    fn store(&mut self, keys: &[OffloadKey], bufs: &[u32], req: ReqContext) {
        let Some(off) = self.off.as_deref_mut() else { return };
        if keys.is_empty() {
            return;
        }
        let planned = off.kv(|o| {
            let plan = &mut o.plan;
            o.cache.engine().prepare_store(keys, req, plan)
        });
        if let Err(e) = planned {
            tracing::debug!(error = %e, blocks = keys.len(), "prepare_store refused");
            self.tally.store_rejected += keys.len() as u64;
            counter!("kvtier_stores_rejected_total").increment(keys.len() as u64);
            return;
        }
        let region = off.cache.region().clone();
        off.ok.clear();
        off.bad.clear();
        let mut j = 0;
        for (k, &slot) in off.plan.keys.iter().zip(&off.plan.slots) {
            // The plan lists the absent keys in input order.
            while keys[j] != *k {
                j += 1;
            }
            off.inflight.remove(k);
            off.promoted.remove(k);
            match region.lease(slot, Access::Write) {
                Ok(mut lease) => {
                    let src = self.gpu.buf(bufs[j]);
                    if let Some(row) = lease.as_mut_slice() {
                        row[..src.len()].copy_from_slice(src);
                    }
                    off.ok.push(*k);
                }
                Err(e) => {
                    tracing::error!(slot = slot.0, error = %e, "cannot write a reserved row");
                    off.bad.push(*k);
                }
            }
        }
        off.kv(|o| {
            let engine = o.cache.engine();
            let _ = engine.complete_store(&o.ok, req, true);
            if !o.bad.is_empty() {
                let _ = engine.complete_store(&o.bad, req, false);
            }
        });
        let n = off.ok.len() as u64;
        self.tally.cpu_stored += n;
        self.sample.cpu_stored += n as u32;
        counter!("kvtier_blocks_stored_total", "tier" => "cpu").increment(n);
        counter!("kvtier_bytes_stored_total", "tier" => "cpu").increment(n * self.cfg.block_bytes as u64);
    }

    /// `end_step`, then events and counters. True while kvtier has jobs in flight.
    fn end_step(&mut self) -> bool {
        let Some(off) = self.off.as_deref_mut() else { return false };
        off.kv(|o| {
            let engine = o.cache.engine();
            engine.end_step();
            if o.sync_io {
                engine.drain();
            }
        });
        self.handle_events();
        let Some(off) = self.off.as_deref_mut() else { return false };
        // A failed promotion frees its slot without an event: forget it.
        let engine = off.cache.engine_ref();
        off.inflight.retain(|k, _| engine.primary_lookup(k) != PoolLookup::Miss);
        off.promoted.retain(|k| engine.primary_lookup(k) != PoolLookup::Miss);
        let stats = *off.cache.engine_ref().stats();
        let last = off.last_stats;
        for (outcome, now, then) in [
            ("reserved", stats.promotions_reserved, last.promotions_reserved),
            ("loaded", stats.promotions_loaded, last.promotions_loaded),
            ("failed", stats.promotions_failed, last.promotions_failed),
            ("overdue", stats.promotions_overdue, last.promotions_overdue),
        ] {
            counter!("kvtier_promotions_total", "outcome" => outcome).increment(now - then);
        }
        counter!("kvtier_cascade_jobs_total").increment(stats.cascade_jobs - last.cascade_jobs);
        counter!("kvtier_cascade_jobs_failed_total").increment(stats.cascade_jobs_failed - last.cascade_jobs_failed);
        off.last_stats = stats;
        let loaded = stats.promotions_loaded - off.last_loaded;
        off.last_loaded = stats.promotions_loaded;
        let stored_total = off.disk_blocks_stored();
        let stored = stored_total - off.last_disk_stored;
        off.last_disk_stored = stored_total;
        let bb = self.cfg.block_bytes as u64;
        self.tally.disk_loaded += loaded;
        self.tally.disk_stored += stored;
        self.sample.disk_loaded += loaded as u32;
        self.sample.disk_stored += stored as u32;
        counter!("kvtier_blocks_loaded_total", "tier" => "disk").increment(loaded);
        counter!("kvtier_bytes_loaded_total", "tier" => "disk").increment(loaded * bb);
        counter!("kvtier_blocks_stored_total", "tier" => "disk").increment(stored);
        counter!("kvtier_bytes_stored_total", "tier" => "disk").increment(stored * bb);
        counter!("kvtier_steps_total").increment(1);
        let engine = off.cache.engine_ref();
        gauge!("kvtier_jobs_in_flight").set(engine.jobs_in_flight() as f64);
        gauge!("kvtier_cpu_blocks_used").set(engine.primary().len() as f64);
        engine.jobs_in_flight() > 0
    }

    /// Drains kvtier's events: CPU evictions, and promotions that became ready (so that the
    /// first load of a promoted block counts as a disk hit). Called after every poll.
    fn handle_events(&mut self) {
        let Some(off) = self.off.as_deref_mut() else { return };
        off.kv(|o| {
            o.events.clear();
            o.cache.engine().take_events(&mut o.events);
        });
        let now = Instant::now();
        for ev in off.events.iter().filter(|e| e.medium == Medium::Cpu) {
            if ev.removed {
                self.tally.cpu_evictions += ev.keys.len() as u64;
                counter!("kvtier_cpu_evictions_total").increment(ev.keys.len() as u64);
                for k in ev.keys {
                    off.promoted.remove(k);
                }
                continue;
            }
            for k in ev.keys {
                if let Some((step, at)) = off.inflight.remove(k) {
                    let (steps, secs) = (self.step - step, now.duration_since(at).as_secs_f64());
                    self.tally.promo_steps.push(steps);
                    self.tally.promo_ms.push(secs * 1e3);
                    histogram!("kvtier_promotion_latency_steps").record(steps as f64);
                    histogram!("kvtier_promotion_latency_seconds").record(secs);
                    off.promoted.insert(*k);
                }
            }
        }
    }

    /// Counts what the tiers finished after the last step (call after shutdown).
    pub fn settle(&mut self) {
        let Some(off) = self.off.as_deref_mut() else { return };
        let stats = *off.cache.engine_ref().stats();
        self.tally.disk_loaded += stats.promotions_loaded - off.last_loaded;
        off.last_loaded = stats.promotions_loaded;
        let stored_total = off.disk_blocks_stored();
        self.tally.disk_stored += stored_total - off.last_disk_stored;
        off.last_disk_stored = stored_total;
    }
}
