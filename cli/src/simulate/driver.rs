//! The simulated engine: a vLLM-like scheduler on a virtual clock, driving kvtier the way
//! vLLM's offloading connector drives its manager.
//!
//! # The clock
//!
//! Time is virtual (seconds of the simulated server, not of this machine): the scheduler
//! iterates at virtual instants; an iteration that gives the GPU work is a step whose duration
//! is the cost model's ([`GpuCost`]: tokens computed, requests decoding); an idle one jumps to
//! the next event (an arrival, a KV transfer or a promotion landing). Everything kvtier does
//! is real (real rows, real files, real I/O threads), and the one figure taken from this
//! machine is the disk: a promotion's virtual latency is its measured latency (see
//! [`DiskTime`]).
//!
//! # An iteration at virtual time `now`
//!
//! 1. Arrivals up to `now` join the waiting queue.
//! 2. Running requests get their tokens first (one per decoding request, prefill chunks for the
//!    others, in admission order, within `batch_tokens`), then waiting requests are admitted in
//!    order while the budget and `max_seqs` allow (vLLM V1's order; chunked prefill). A request
//!    whose previous chat turn has not finished, or whose promotions have not landed, is passed
//!    over; one that does not fit in the GPU's free blocks stops admission (head of line).
//! 3. Admitting a request: the longest prefix of its prompt's full blocks cached on the GPU is
//!    reused; the next blocks are looked up in kvtier in order until one is neither Ready nor
//!    Pending (at most `prompt_tokens - 1` tokens are reused, so at least one is computed, as in
//!    vLLM). Ready blocks are pinned (`prepare_load`) and held until admission; Pending blocks
//!    (promotions from disk reserved by the lookup) make the request wait. Once admitted, its
//!    tier blocks are copied row -> GPU buffer and checked against the bytes their key implies,
//!    unpinned, and cross PCIe: the request starts computing when that transfer ends (the link
//!    is shared, one transfer at a time). The reused prefix is `touch`ed.
//! 4. The step runs: `now` advances by its cost. A request whose prefill completes gets its
//!    first token (TTFT = now - arrival); its computed blocks are filled with their content,
//!    published to the GPU prefix cache and offloaded (`prepare_store`, copy, `complete_store`).
//!    A request with all its tokens finishes: a chat answer's blocks are stored the same way,
//!    and its GPU blocks are released (tail first).
//! 5. `end_step` submits the promotions reserved in step 3. The driver then waits (really) until
//!    they land, polling with `end_step` and measuring each one, then until the iteration's
//!    cascaded stores are on disk too, and charges the simulated disk with that time (see
//!    [`DiskTime`]): promotions land at `start + measured latency x byte scale`, and the disk
//!    stays busy for the stores after them, so that later promotions queue behind them. Landed
//!    blocks are pinned for the requests that wait for them. Waiting on the real clock while the
//!    virtual one stands still keeps the measurement honest (the latency is the disk's and the
//!    tier's, with the stores competing for the disk, not the simulator's own pace) and makes the
//!    disk's bandwidth in virtual time its real bandwidth at the model's block size. Stores
//!    never wait for the disk here (a real tier whose disk falls behind keeps CPU slots pinned
//!    and refuses offloads); their cost shows as disk time that delays promotions.
//!
//! A block counts as a disk hit when it was promoted and this is its first load since; any
//! other kvtier hit is a CPU hit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use kvtier::TieredCache;
use kvtier_core::{
    EventLog, LookupResult, Medium, OffloadKey, PoolLookup, ReqContext, SecondaryTier as _, SlotId, StorePlan,
};
use kvtier_fs::region::Access;
use kvtier_fs::FsTier;
use kvtier_redis::{RedisStats, RedisTier};
use kvtier_regions::RegionsTier;
use metrics::{counter, gauge, histogram};

use super::cost::GpuCost;
use super::gpu::GpuCache;
use super::signals::Interrupt;
use super::workload::{count_mismatches, fill_block, Request, Workload};
use crate::cputime::thread_cpu;

/// Longest real wait for one iteration's promotions before the run gives up.
const PROMOTION_TIMEOUT: Duration = Duration::from_secs(120);

/// How the simulated disk's time is found. Either way the disk is a FIFO server: it starts an
/// iteration's I/O (its promotions, then its cascaded stores) when it has finished the earlier
/// iterations' and no sooner than the iteration's lookups, and a promotion lands when its own
/// time has passed after that start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DiskTime {
    /// Measured on this machine: each promotion's real latency, and the real time until the
    /// iteration's stores are on disk too, x the byte scale.
    Measured,
    /// Modelled (with `--sync-io`, so that outcomes depend on the inputs alone): the
    /// iteration's promoted, then stored, bytes at the model's size at this rate.
    Rate {
        /// Bytes per second.
        bytes_per_s: f64,
    },
}

/// The scheduler's settings.
#[derive(Debug, Clone, Copy)]
pub struct SchedConfig {
    /// GPU block buffers.
    pub gpu_blocks: usize,
    /// Bytes per block moved here.
    pub block_bytes: usize,
    /// The GPU cost model.
    pub cost: GpuCost,
    /// KV bytes per token of the model (what transfers cost in virtual time).
    pub model_bytes_per_token: u64,
    /// Model bytes per byte moved here (1 when not scaled): measured disk latencies are
    /// multiplied by it.
    pub byte_scale: f64,
    /// Most CPU-tier blocks held for waiting requests (pinned, or being promoted) at once.
    pub max_held: usize,
    /// How promotions are timed.
    pub disk_time: DiskTime,
}

/// Counters of one run.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Requests finished.
    pub requests: u64,
    /// GPU steps.
    pub steps: u64,
    /// Scheduler iterations (steps and idle jumps).
    pub iterations: u64,
    /// Prompt blocks reused from the GPU prefix cache.
    pub gpu: u64,
    /// Prompt blocks loaded from the CPU tier.
    pub cpu: u64,
    /// Prompt blocks promoted from disk, then loaded.
    pub disk: u64,
    /// Prompt blocks promoted from the remote tier (Redis), then loaded.
    pub remote: u64,
    /// Full prompt blocks computed.
    pub miss: u64,
    /// Prompt tokens computed (misses and partial blocks).
    pub prefill_tokens: u64,
    /// Tokens decoded after the first.
    pub decode_tokens: u64,
    /// Virtual seconds the GPU was busy (sum of step costs).
    pub gpu_busy_s: f64,
    /// First arrival, virtual seconds.
    pub first_arrival: f64,
    /// Last finish, virtual seconds.
    pub last_finish: f64,
    /// Time to first token of each request, seconds.
    pub ttft: Vec<f64>,
    /// Arrival to last token of each request, seconds.
    pub e2e: Vec<f64>,
    /// Virtual seconds of CPU -> GPU transfers.
    pub transfer_s: f64,
    /// Requests that waited for promotions.
    pub promo_waits: u64,
    /// Virtual seconds requests spent waiting for promotions.
    pub promo_wait_s: f64,
    /// Blocks written GPU -> CPU tier.
    pub cpu_stored: u64,
    /// Blocks read CPU tier -> GPU.
    pub cpu_loaded: u64,
    /// Blocks published by the disk tier.
    pub disk_stored: u64,
    /// Blocks promoted disk -> CPU tier.
    pub disk_loaded: u64,
    /// Blocks the remote tiers stored (`SET NX` answered OK).
    pub remote_stored: u64,
    /// Blocks promoted remote tier -> CPU tier.
    pub remote_loaded: u64,
    /// Blocks `prepare_store` could not take (every slot pinned).
    pub store_rejected: u64,
    /// Blocks not offloaded because the simulated disk had not written enough of the earlier
    /// ones (their CPU slots count as pinned).
    pub disk_behind: u64,
    /// Ready blocks that could not be loaded (recomputed instead).
    pub load_failed: u64,
    /// Bytes that differed from what a loaded block must hold.
    pub mismatched_bytes: u64,
    /// Lookup answers: ready, pending, retry, miss.
    pub lookups: [u64; 4],
    /// Blocks evicted from the CPU tier.
    pub cpu_evictions: u64,
    /// Iterations that promoted blocks.
    pub promo_batches: u64,
    /// Promotion latencies measured here, ms.
    pub promo_real_ms: Vec<f64>,
    /// Promotion latencies in virtual time (after scaling, queueing excluded), ms.
    pub promo_virtual_ms: Vec<f64>,
    /// Virtual seconds the simulated disk was busy (promotions and stores).
    pub disk_busy_s: f64,
    /// Bytes promoted here, and the real seconds the iterations waited for them.
    pub read_here: (u64, f64),
    /// Bytes cascaded to the tiers here, and the real seconds the iterations waited for them
    /// after their promotions.
    pub written_here: (u64, f64),
}

/// Adds the counters of `s` the simulation reports to `sum`.
pub fn add_remote(sum: &mut RedisStats, s: &RedisStats) {
    for (a, b) in [
        (&mut sum.stored, s.stored),
        (&mut sum.present, s.present),
        (&mut sum.loaded, s.loaded),
        (&mut sum.loaded_shared, s.loaded_shared),
        (&mut sum.missing, s.missing),
        (&mut sum.corrupt, s.corrupt),
        (&mut sum.oom, s.oom),
        (&mut sum.timeouts, s.timeouts),
        (&mut sum.connection_errors, s.connection_errors),
        (&mut sum.fast_failed, s.fast_failed),
        (&mut sum.probes, s.probes),
        (&mut sum.probe_hits, s.probe_hits),
    ] {
        *a += b;
    }
}

impl Tally {
    /// Adds another server's counters to these: counts and busy times add up, latencies pool,
    /// the span runs from the first arrival to the last finish of either.
    pub fn absorb(&mut self, o: Tally) {
        let Tally {
            requests,
            steps,
            iterations,
            gpu,
            cpu,
            disk,
            remote,
            miss,
            prefill_tokens,
            decode_tokens,
            gpu_busy_s,
            first_arrival,
            last_finish,
            ttft,
            e2e,
            transfer_s,
            promo_waits,
            promo_wait_s,
            cpu_stored,
            cpu_loaded,
            disk_stored,
            disk_loaded,
            remote_stored,
            remote_loaded,
            store_rejected,
            disk_behind,
            load_failed,
            mismatched_bytes,
            lookups,
            cpu_evictions,
            promo_batches,
            promo_real_ms,
            promo_virtual_ms,
            disk_busy_s,
            read_here,
            written_here,
        } = o;
        if self.requests == 0 && self.iterations == 0 {
            self.first_arrival = first_arrival;
        }
        self.first_arrival = self.first_arrival.min(first_arrival);
        self.last_finish = self.last_finish.max(last_finish);
        for (a, b) in [
            (&mut self.requests, requests),
            (&mut self.steps, steps),
            (&mut self.iterations, iterations),
            (&mut self.gpu, gpu),
            (&mut self.cpu, cpu),
            (&mut self.disk, disk),
            (&mut self.remote, remote),
            (&mut self.miss, miss),
            (&mut self.prefill_tokens, prefill_tokens),
            (&mut self.decode_tokens, decode_tokens),
            (&mut self.promo_waits, promo_waits),
            (&mut self.cpu_stored, cpu_stored),
            (&mut self.cpu_loaded, cpu_loaded),
            (&mut self.disk_stored, disk_stored),
            (&mut self.disk_loaded, disk_loaded),
            (&mut self.remote_stored, remote_stored),
            (&mut self.remote_loaded, remote_loaded),
            (&mut self.store_rejected, store_rejected),
            (&mut self.disk_behind, disk_behind),
            (&mut self.load_failed, load_failed),
            (&mut self.mismatched_bytes, mismatched_bytes),
            (&mut self.cpu_evictions, cpu_evictions),
            (&mut self.promo_batches, promo_batches),
            (&mut self.read_here.0, read_here.0),
            (&mut self.written_here.0, written_here.0),
        ] {
            *a += b;
        }
        for (a, b) in [
            (&mut self.gpu_busy_s, gpu_busy_s),
            (&mut self.transfer_s, transfer_s),
            (&mut self.promo_wait_s, promo_wait_s),
            (&mut self.disk_busy_s, disk_busy_s),
            (&mut self.read_here.1, read_here.1),
            (&mut self.written_here.1, written_here.1),
        ] {
            *a += b;
        }
        for (a, b) in self.lookups.iter_mut().zip(lookups) {
            *a += b;
        }
        self.ttft.extend(ttft);
        self.e2e.extend(e2e);
        self.promo_real_ms.extend(promo_real_ms);
        self.promo_virtual_ms.extend(promo_virtual_ms);
    }
}

/// What happened in one iteration (blocks), at virtual time `t`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Virtual time of the iteration, seconds.
    pub t: f64,
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
    /// Prompt blocks promoted from the remote tier.
    pub remote: u32,
}

/// kvtier, as the simulated engine holds it, with the bookkeeping of promotions.
pub struct Offload {
    /// The cache.
    pub cache: TieredCache,
    /// Scheduler-thread CPU time spent inside kvtier calls.
    pub kv_cpu: Duration,
    plan: StorePlan,
    slots: Vec<SlotId>,
    ok: Vec<OffloadKey>,
    bad: Vec<OffloadKey>,
    events: EventLog,
    /// Promotions reserved in this iteration, with the requests waiting for them.
    batch: Vec<OffloadKey>,
    /// Promoted blocks not loaded since, with their virtual landing time.
    promoted: HashMap<OffloadKey, f64>,
    /// Blocks whose last promotion came from a remote tier (the others came from disk).
    from_remote: HashSet<OffloadKey>,
    /// A lookup answered Retry: a remote tier's probe is in flight.
    probing: bool,
    /// Blocks that became ready in the CPU tier since the last look (filled by events).
    readied: Vec<OffloadKey>,
    /// When the simulated disk has served the promotions so far (reads go first), virtual s.
    read_free: f64,
    /// When it has written the stores so far (they yield to reads), virtual seconds.
    write_free: f64,
    /// Stores not yet written in virtual time: (when they will be, blocks), in order.
    writes: VecDeque<(f64, u64)>,
    /// Blocks of `writes`.
    unwritten: u64,
    last_disk_stored: u64,
    last_disk_loaded: u64,
    last_remote: RedisStats,
    last_stats: kvtier_core::EngineStats,
    /// Blocks cascaded to the tiers when the disk was last charged.
    last_cascaded: u64,
}

impl std::fmt::Debug for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offload").field("cache", &self.cache).finish_non_exhaustive()
    }
}

impl Offload {
    /// Wraps an open cache.
    pub fn new(cache: TieredCache) -> Self {
        Offload {
            cache,
            kv_cpu: Duration::ZERO,
            plan: StorePlan::new(),
            slots: Vec::new(),
            ok: Vec::new(),
            bad: Vec::new(),
            events: EventLog::new(),
            batch: Vec::new(),
            promoted: HashMap::new(),
            from_remote: HashSet::new(),
            probing: false,
            readied: Vec::new(),
            read_free: 0.0,
            write_free: 0.0,
            writes: VecDeque::new(),
            unwritten: 0,
            last_disk_stored: 0,
            last_disk_loaded: 0,
            last_remote: RedisStats::default(),
            last_stats: kvtier_core::EngineStats::default(),
            last_cascaded: 0,
        }
    }

    /// Blocks published by the disk tiers (FS tiers, region engines) so far.
    pub fn disk_blocks_stored(&mut self) -> u64 {
        let engine = self.cache.engine();
        (0..engine.tier_count())
            .filter_map(|i| match engine.tier_mut::<FsTier>(i) {
                Some(t) => Some(t.stats().blocks_stored),
                None => engine.tier_mut::<RegionsTier>(i).map(|t| t.stats().blocks_stored),
            })
            .sum()
    }

    /// The counters of the remote (Redis) tiers so far, summed.
    pub fn remote_stats(&mut self) -> RedisStats {
        let engine = self.cache.engine();
        let mut sum = RedisStats::default();
        for i in 0..engine.tier_count() {
            if let Some(t) = engine.tier_mut::<RedisTier>(i) {
                add_remote(&mut sum, &t.stats());
            }
        }
        sum
    }

    /// Whether the tier a lookup of `key` promotes from is a remote one: the first tier, in
    /// order, that holds it (as the engine picks).
    fn promotes_from_remote(&mut self, key: &OffloadKey) -> bool {
        let engine = self.cache.engine();
        for i in 0..engine.tier_count() {
            if engine.tier_mut::<FsTier>(i).is_some_and(|t| t.contains(key)) {
                return false;
            }
            if engine.tier_mut::<RedisTier>(i).is_some_and(|t| t.contains(key)) {
                return true;
            }
        }
        false
    }

    /// Waits (really) until the remote tiers' probes are answered.
    fn wait_probes(&mut self) {
        let engine = self.cache.engine();
        for i in 0..engine.tier_count() {
            if let Some(t) = engine.tier_mut::<RedisTier>(i) {
                t.wait_idle();
            }
        }
    }

    /// Runs `f` on the engine, adding the scheduler thread's CPU time to `kv_cpu`.
    fn kv<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        let t = thread_cpu();
        let out = f(self);
        self.kv_cpu += thread_cpu().saturating_sub(t);
        out
    }
}

/// Runs `servers` inference servers to completion, each its workload with its own GPU and,
/// when given, its own kvtier (whose tiers may share a remote one), in step on the virtual
/// clock: the next iteration is always the one of the server furthest behind, so that a block
/// one server stores at virtual time t reaches the others' lookups after t, never before.
/// Returns the servers' counters and samples pooled (samples in virtual-time order).
pub fn run_servers<'a>(
    cfg: SchedConfig,
    servers: Vec<(&'a Workload, Option<&'a mut Offload>)>,
    bar: &ProgressBar,
    interrupt: &Interrupt,
) -> Result<(Tally, Vec<Sample>), String> {
    let mut sims: Vec<Sim<'a>> = servers.into_iter().map(|(wl, off)| Sim::new(cfg, wl, off)).collect();
    let mut cursors: Vec<Cursor> = sims.iter_mut().map(Sim::start).collect();
    let mut ran = Ok(());
    while let Some(i) =
        (0..sims.len()).filter(|&i| !sims[i].finished()).min_by(|&a, &b| cursors[a].now.total_cmp(&cursors[b].now))
    {
        ran = interrupt.check().and_then(|()| sims[i].iterate(&mut cursors[i], interrupt));
        if ran.is_err() {
            break;
        }
        bar.set_position(sims.iter().map(|s| s.tally.requests).sum());
    }
    for sim in &mut sims {
        sim.shutdown();
    }
    ran?;
    let mut tally = Tally::default();
    let mut samples = Vec::new();
    for sim in &mut sims {
        tally.absorb(std::mem::take(&mut sim.tally));
        samples.append(&mut sim.samples);
    }
    samples.sort_by(|a, b| a.t.total_cmp(&b.t));
    Ok((tally, samples))
}

/// An admitted request.
struct Live {
    id: usize,
    bufs: Vec<u32>,
    /// Full prompt blocks not computed (GPU and tier hits).
    hit_blocks: usize,
    /// Prompt tokens to compute: from `hit_blocks x block_tokens` to the end of the prompt.
    to_compute: u64,
    /// Prompt tokens computed so far.
    computed: u64,
    /// When its KV transfer ends (virtual seconds).
    ready_at: f64,
    /// Output tokens produced (the first one by the prefill).
    generated: u64,
}

/// Where a run stands between iterations: its virtual clock and queues.
pub struct Cursor {
    /// Virtual time of the next iteration, seconds.
    pub now: f64,
    next: usize,
    horizon: f64,
    waiting: VecDeque<usize>,
    live: Vec<Live>,
    stalled: u32,
}

enum Admit {
    Admitted(Live),
    Waiting,
    NoRoom,
}

/// One run of the workload: with kvtier (`off`) or with the GPU prefix cache alone.
pub struct Sim<'a> {
    cfg: SchedConfig,
    wl: &'a Workload,
    gpu: GpuCache,
    off: Option<&'a mut Offload>,
    /// Counters.
    pub tally: Tally,
    /// Per-iteration samples.
    pub samples: Vec<Sample>,
    sample: Sample,
    /// Blocks pinned for each waiting request.
    held: Vec<HashSet<u32>>,
    held_total: usize,
    /// Blocks each request waits to see promoted (this iteration's batch).
    awaiting: Vec<Vec<u32>>,
    awaiting_ids: Vec<usize>,
    /// When each request's promoted blocks land (virtual seconds).
    kv_ready: Vec<f64>,
    /// When each request started waiting for promotions.
    wait_since: Vec<Option<f64>>,
    done: Vec<bool>,
    /// When the PCIe link is free (virtual seconds).
    link_free: f64,
    /// A lookup of this iteration answered Retry.
    retried: bool,
}

impl<'a> Sim<'a> {
    /// A run of `wl` (with kvtier when `off` is given).
    pub fn new(cfg: SchedConfig, wl: &'a Workload, off: Option<&'a mut Offload>) -> Self {
        let gpu = GpuCache::new(cfg.gpu_blocks, cfg.block_bytes, off.is_some());
        let n = wl.requests.len();
        Sim {
            cfg,
            wl,
            gpu,
            off,
            tally: Tally::default(),
            samples: Vec::new(),
            sample: Sample::default(),
            held: vec![HashSet::new(); n],
            held_total: 0,
            awaiting: vec![Vec::new(); n],
            awaiting_ids: Vec::new(),
            kv_ready: vec![0.0; n],
            wait_since: vec![None; n],
            done: vec![false; n],
            link_free: 0.0,
            retried: false,
        }
    }

    fn req(&self, id: usize) -> &'a Request {
        &self.wl.requests[id]
    }

    /// Where a run starts: the first arrival, nothing waiting or running.
    pub fn start(&mut self) -> Cursor {
        let reqs = &self.wl.requests;
        let now = reqs.first().map_or(0.0, |r| r.arrival);
        self.tally.first_arrival = now;
        Cursor {
            now,
            next: 0,
            horizon: reqs.last().map_or(0.0, |r| r.arrival) + 1e7,
            waiting: VecDeque::new(),
            live: Vec::new(),
            stalled: 0,
        }
    }

    /// Whether every request has finished.
    pub fn finished(&self) -> bool {
        self.tally.requests as usize >= self.wl.requests.len()
    }

    /// One scheduler iteration at `cursor.now` (see the module's documentation); advances the
    /// cursor's clock, or leaves it when requests look their blocks up again at once.
    pub fn iterate(&mut self, c: &mut Cursor, interrupt: &Interrupt) -> Result<(), String> {
        let reqs = &self.wl.requests;
        let n = reqs.len();
        while c.next < n && reqs[c.next].arrival <= c.now {
            c.waiting.push_back(c.next);
            c.next += 1;
        }
        self.sample = Sample { t: c.now, ..Sample::default() };
        self.retried = false;
        let (plan, step_s) = self.schedule(c.now, &mut c.waiting, &mut c.live);
        let stepped = !plan.is_empty();
        let start = c.now;
        if stepped {
            c.now += step_s;
            self.tally.gpu_busy_s += step_s;
            self.tally.steps += 1;
            self.apply(c.now, &plan, &mut c.live);
        }
        if self.off.is_some() {
            self.end_step();
            self.settle(start, interrupt)?;
        }
        self.samples.push(self.sample);
        self.tally.iterations += 1;
        if !stepped {
            let mut t = f64::INFINITY;
            if c.next < n {
                t = t.min(reqs[c.next].arrival);
            }
            for l in &c.live {
                if l.ready_at > c.now {
                    t = t.min(l.ready_at);
                }
            }
            let mut retry = false;
            for &id in &c.waiting {
                if self.kv_ready[id] > c.now {
                    t = t.min(self.kv_ready[id]);
                }
                // Its promotions failed: it can look its blocks up again at once.
                retry |= self.kv_ready[id] <= c.now && self.wait_since[id].is_some();
            }
            // A lookup answered Retry (a remote tier's probe, answered by now): the requests
            // look their blocks up again at once, a few times at most.
            let again = (retry && !t.is_finite()) || self.retried;
            c.stalled = if again { c.stalled + 1 } else { 0 };
            if again && c.stalled < 3 {
                return Ok(());
            }
            if !t.is_finite() {
                return Err(format!(
                    "no progress at {:.3} s: {} of {n} requests done, {} running, {} waiting",
                    c.now,
                    self.tally.requests,
                    c.live.len(),
                    c.waiting.len()
                ));
            }
            c.now = t;
        }
        if c.now > c.horizon {
            return Err(format!("no progress: {} of {n} requests done at {:.0} s", self.tally.requests, c.now));
        }
        Ok(())
    }

    /// Plans the step at `now`: running requests first, then admissions. Returns the (live
    /// index, prefill tokens; 0 for a decode) of each request with work, and the step's cost.
    fn schedule(&mut self, now: f64, waiting: &mut VecDeque<usize>, live: &mut Vec<Live>) -> (Vec<(usize, u64)>, f64) {
        let cost = self.cfg.cost;
        let mut budget = cost.batch_tokens;
        let mut plan = Vec::new();
        let mut step_s = 0.0;
        for (i, l) in live.iter().enumerate() {
            if budget == 0 {
                break;
            }
            if l.ready_at > now {
                continue;
            }
            let r = self.req(l.id);
            if l.computed == l.to_compute {
                budget -= 1;
                plan.push((i, 0));
                step_s += cost.kv_read_s_per_token * (r.prompt_tokens + l.generated) as f64;
            } else {
                let chunk = (l.to_compute - l.computed).min(budget);
                budget -= chunk;
                plan.push((i, chunk));
                let from = r.prompt_tokens - l.to_compute + l.computed;
                step_s += cost.prefill_s(from, from + chunk);
            }
        }
        let mut i = 0;
        while i < waiting.len() && budget > 0 && live.len() < cost.max_seqs {
            let id = waiting[i];
            if self.req(id).prev.is_some_and(|p| !self.done[p]) || self.kv_ready[id] > now {
                i += 1;
                continue;
            }
            match self.admit(id, now) {
                Admit::Admitted(l) => {
                    waiting.remove(i);
                    if l.ready_at <= now {
                        let r = self.req(id);
                        let chunk = l.to_compute.min(budget);
                        budget -= chunk;
                        plan.push((live.len(), chunk));
                        let from = r.prompt_tokens - l.to_compute;
                        step_s += cost.prefill_s(from, from + chunk);
                    }
                    live.push(l);
                }
                Admit::Waiting => i += 1,
                Admit::NoRoom => break,
            }
        }
        if !plan.is_empty() {
            step_s += cost.decode_step_s;
        }
        (plan, step_s)
    }

    /// The step of `plan` ended at `now`: first tokens, decodes, stores and finishes.
    fn apply(&mut self, now: f64, plan: &[(usize, u64)], live: &mut Vec<Live>) {
        let mut finished = Vec::new();
        for &(i, chunk) in plan {
            let id = live[i].id;
            if chunk == 0 {
                live[i].generated += 1;
                self.tally.decode_tokens += 1;
            } else {
                live[i].computed += chunk;
                self.tally.prefill_tokens += chunk;
                if live[i].computed == live[i].to_compute {
                    live[i].generated = 1;
                    let r = self.req(id);
                    let ttft = now - r.arrival;
                    self.tally.ttft.push(ttft);
                    if self.off.is_some() {
                        histogram!("kvtier_ttft_seconds").record(ttft);
                    }
                    let hit = live[i].hit_blocks;
                    self.publish_and_store(id, &r.prompt[hit..], &live[i].bufs[hit..r.prompt.len()], now);
                }
            }
            if live[i].generated >= self.req(id).output_tokens {
                finished.push(i);
            }
        }
        finished.sort_unstable();
        for i in finished.into_iter().rev() {
            let l = live.remove(i);
            self.finish(l, now);
        }
    }

    fn admit(&mut self, id: usize, now: f64) -> Admit {
        let wl = self.wl;
        let r = self.req(id);
        let bt = wl.block_tokens;
        // At least one prompt token is computed (it yields the first output token).
        let reusable = (((r.prompt_tokens - 1) / bt) as usize).min(r.prompt.len());
        let n_gpu = self.gpu.prefix_hits(&r.prompt[..reusable]);
        let (ready, pending, lands) = self.lookup_walk(id, &r.prompt[n_gpu..reusable], now);
        if pending > 0 || lands > now {
            if self.wait_since[id].is_none() {
                self.wait_since[id] = Some(now);
                self.tally.promo_waits += 1;
            }
            self.kv_ready[id] = self.kv_ready[id].max(lands);
            return Admit::Waiting;
        }
        let need = wl.request_blocks(r) - n_gpu;
        if self.gpu.available_besides(&r.prompt[..n_gpu]) < need {
            return Admit::NoRoom;
        }
        if let Some(t) = self.wait_since[id].take() {
            self.tally.promo_wait_s += now - t;
        }
        let mut bufs = Vec::with_capacity(n_gpu + need);
        for &k in &r.prompt[..n_gpu] {
            bufs.push(self.gpu.acquire(k));
        }
        for _ in 0..need {
            bufs.push(self.gpu.allocate().expect("room was checked"));
        }
        let hit = n_gpu + ready;
        let (cpu, disk, remote) = self.load(&r.prompt[n_gpu..hit], &bufs[n_gpu..hit]);
        self.release_held(id, ReqContext::new(id as u64));
        for (&k, &b) in r.prompt[n_gpu..hit].iter().zip(&bufs[n_gpu..hit]) {
            self.gpu.publish(b, k);
        }
        let mut ready_at = now;
        if ready > 0 {
            let bytes = (ready as u64 * bt * self.cfg.model_bytes_per_token) as f64;
            let start = self.link_free.max(now);
            ready_at = start + bytes / self.cfg.cost.pcie_bytes_per_s;
            self.link_free = ready_at;
            self.tally.transfer_s += ready_at - start;
        }
        if let Some(off) = self.off.as_deref_mut() {
            let keys: Vec<OffloadKey> = r.prompt[..hit].iter().map(|&k| *wl.key(k)).collect();
            off.kv(|o| o.cache.engine().touch(&keys, ReqContext::new(id as u64)));
        }
        let miss = (r.prompt.len() - hit) as u64;
        let t = &mut self.tally;
        (t.gpu, t.cpu, t.disk, t.miss) = (t.gpu + n_gpu as u64, t.cpu + cpu, t.disk + disk, t.miss + miss);
        t.remote += remote;
        let s = &mut self.sample;
        s.gpu += n_gpu as u32;
        s.cpu += cpu as u32;
        s.disk += disk as u32;
        s.remote += remote as u32;
        s.miss += miss as u32;
        if self.off.is_some() {
            for (source, n) in [("gpu", n_gpu as u64), ("cpu", cpu), ("disk", disk), ("remote", remote), ("miss", miss)]
            {
                counter!("kvtier_prefix_blocks_total", "source" => source).increment(n);
            }
        }
        Admit::Admitted(Live {
            id,
            bufs,
            hit_blocks: hit,
            to_compute: r.prompt_tokens - hit as u64 * bt,
            computed: 0,
            ready_at,
            generated: 0,
        })
    }

    fn publish_and_store(&mut self, id: usize, keys: &[u32], bufs: &[u32], now: f64) {
        for (&k, &b) in keys.iter().zip(bufs) {
            if self.off.is_some() {
                fill_block(self.wl.key(k), self.gpu.buf_mut(b));
            }
            self.gpu.publish(b, k);
        }
        self.store(keys, bufs, ReqContext::new(id as u64), now);
    }

    fn finish(&mut self, l: Live, now: f64) {
        let r = self.req(l.id);
        let n = r.prompt.len();
        self.publish_and_store(l.id, &r.output, &l.bufs[n..n + r.output.len()], now);
        self.gpu.release(l.bufs.iter().rev().copied());
        self.done[l.id] = true;
        self.tally.requests += 1;
        self.tally.e2e.push(now - r.arrival);
        self.tally.last_finish = self.tally.last_finish.max(now);
    }

    /// Looks `keys` up in order until one is neither Ready nor Pending, pinning the Ready ones
    /// for request `id`: (ready, pending, when the ready ones landed).
    fn lookup_walk(&mut self, id: usize, keys: &[u32], now: f64) -> (usize, usize, f64) {
        let wl = self.wl;
        let Some(off) = self.off.as_deref_mut() else { return (0, 0, now) };
        let req = ReqContext::new(id as u64);
        let held = &mut self.held[id];
        let awaiting = &mut self.awaiting[id];
        let max_held = self.cfg.max_held;
        let mut held_total = self.held_total;
        let mut answers = [0u64; 4];
        let (ready, pending, lands) = off.kv(|o| {
            let (mut ready, mut pending, mut lands, mut retried) = (0, 0, now, false);
            for &k in keys {
                let key = wl.key(k);
                if held.contains(&k) {
                    if !retried {
                        ready += 1;
                        lands = o.promoted.get(key).map_or(lands, |&t| lands.max(t));
                    }
                    continue;
                }
                if held_total + o.batch.len() >= max_held {
                    break;
                }
                let before = o.cache.engine_ref().stats().promotions_reserved;
                match o.cache.engine().lookup(key, req) {
                    // After a Retry the request waits anyway: blocks further on are not
                    // pinned (they must follow a contiguous prefix), but their promotions and
                    // probes start now.
                    LookupResult::Ready if retried => answers[0] += 1,
                    LookupResult::Ready => {
                        answers[0] += 1;
                        o.slots.clear();
                        let slots = &mut o.slots;
                        if let Err(e) = o.cache.engine().prepare_load(core::slice::from_ref(key), req, slots) {
                            tracing::warn!(error = %e, "prepare_load refused a ready block");
                            break;
                        }
                        held.insert(k);
                        held_total += 1;
                        ready += 1;
                        lands = o.promoted.get(key).map_or(lands, |&t| lands.max(t));
                    }
                    LookupResult::Pending => {
                        answers[1] += 1;
                        pending += 1;
                        if o.cache.engine_ref().stats().promotions_reserved > before {
                            o.batch.push(*key);
                            if o.promotes_from_remote(key) {
                                o.from_remote.insert(*key);
                            } else {
                                o.from_remote.remove(key);
                            }
                        }
                        awaiting.push(k);
                    }
                    LookupResult::Retry => {
                        // A remote tier is probing the server for the block: the request waits
                        // for the answer (see `Sim::settle`) and looks it up again.
                        answers[2] += 1;
                        retried = true;
                        o.probing = true;
                    }
                    LookupResult::Miss => {
                        answers[3] += 1;
                        break;
                    }
                }
            }
            // A Retry makes the request wait, as a pending promotion does.
            self.retried |= retried;
            (ready, pending + usize::from(retried), lands)
        });
        self.held_total = held_total;
        if !self.awaiting[id].is_empty() && !self.awaiting_ids.contains(&id) {
            self.awaiting_ids.push(id);
        }
        for (i, name) in ["ready", "pending", "retry", "miss"].into_iter().enumerate() {
            self.tally.lookups[i] += answers[i];
            counter!("kvtier_lookups_total", "result" => name).increment(answers[i]);
        }
        (ready, pending, lands)
    }

    /// Copies ready, pinned blocks `keys` into GPU buffers `bufs` and checks their bytes:
    /// (cpu hits, disk hits, remote hits).
    fn load(&mut self, keys: &[u32], bufs: &[u32]) -> (u64, u64, u64) {
        let wl = self.wl;
        let Some(off) = self.off.as_deref_mut() else { return (0, 0, 0) };
        let region = off.cache.region().clone();
        let (mut cpu, mut disk, mut remote) = (0, 0, 0);
        for (&k, &b) in keys.iter().zip(bufs) {
            let key = wl.key(k);
            let dst = self.gpu.buf_mut(b);
            let slot = off.cache.engine_ref().primary().find(key).map_or(SlotId(u32::MAX), |(s, _)| s);
            match region.lease(slot, Access::Read) {
                Ok(lease) => dst.copy_from_slice(&lease.block()[..dst.len()]),
                Err(e) => {
                    tracing::error!(slot = slot.0, error = %e, "cannot read a pinned row");
                    self.tally.load_failed += 1;
                    fill_block(key, dst);
                }
            }
            let bad = count_mismatches(key, self.gpu.buf(b));
            if bad > 0 {
                tracing::error!(key = %key, slot = slot.0, bytes = bad, "loaded block has wrong bytes");
                self.tally.mismatched_bytes += bad;
                counter!("kvtier_verify_mismatched_bytes_total").increment(bad);
            }
            if off.promoted.remove(key).is_some() {
                if off.from_remote.remove(key) {
                    remote += 1;
                } else {
                    disk += 1;
                }
            } else {
                cpu += 1;
            }
        }
        let n = keys.len() as u64;
        self.tally.cpu_loaded += n;
        self.sample.cpu_loaded += n as u32;
        counter!("kvtier_blocks_loaded_total", "tier" => "cpu").increment(n);
        counter!("kvtier_bytes_loaded_total", "tier" => "cpu").increment(n * self.cfg.block_bytes as u64);
        (cpu, disk, remote)
    }

    /// Unpins every block request `id` holds.
    fn release_held(&mut self, id: usize, req: ReqContext) {
        let held = std::mem::take(&mut self.held[id]);
        self.held_total -= held.len();
        let Some(off) = self.off.as_deref_mut() else { return };
        if held.is_empty() {
            return;
        }
        let keys: Vec<OffloadKey> = held.iter().map(|&k| *self.wl.key(k)).collect();
        if let Err(e) = off.kv(|o| o.cache.engine().complete_load(&keys, req)) {
            tracing::error!(error = %e, "complete_load refused");
        }
    }

    /// Offloads computed blocks `keys` held in GPU buffers `bufs` at virtual time `now`.
    ///
    /// A block cascaded to disk keeps its CPU slot pinned until it is written; here the tier
    /// writes it within the iteration (see [`Sim::settle`]), but in virtual time the disk may be
    /// behind. So the slots whose blocks the simulated disk has not written yet count as pinned,
    /// and blocks beyond the CPU tier's unpinned slots are not offloaded, as kvtier would refuse
    /// them on a disk that falls behind.
    fn store(&mut self, keys: &[u32], bufs: &[u32], req: ReqContext, now: f64) {
        let Some(off) = self.off.as_deref_mut() else { return };
        if keys.is_empty() {
            return;
        }
        while off.writes.front().is_some_and(|&(t, _)| t <= now) {
            let (_, n) = off.writes.pop_front().expect("checked");
            off.unwritten -= n;
        }
        let capacity = off.cache.engine_ref().primary().capacity() as u64;
        let room = capacity.saturating_sub(off.unwritten + self.held_total as u64) as usize;
        if room < keys.len() {
            let skipped = (keys.len() - room) as u64;
            self.tally.disk_behind += skipped;
            counter!("kvtier_sim_offloads_skipped_total").increment(skipped);
        }
        let (keys, bufs) = (&keys[..room.min(keys.len())], &bufs[..room.min(keys.len())]);
        if keys.is_empty() {
            return;
        }
        let full: Vec<OffloadKey> = keys.iter().map(|&k| *self.wl.key(k)).collect();
        let planned = off.kv(|o| {
            let plan = &mut o.plan;
            o.cache.engine().prepare_store(&full, req, plan)
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
            while full[j] != *k {
                j += 1;
            }
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

    /// `end_step` (submits the promotions reserved in this iteration), then events and counters.
    fn end_step(&mut self) {
        let Some(off) = self.off.as_deref_mut() else { return };
        off.kv(|o| o.cache.engine().end_step());
        self.handle_events();
        self.count_tier_work();
    }

    /// Engine and FS-tier counters since the last call, into the tally and the metrics.
    fn count_tier_work(&mut self) {
        let Some(off) = self.off.as_deref_mut() else { return };
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
        let remote = off.remote_stats();
        let remote_loaded = remote.loaded - off.last_remote.loaded;
        let remote_stored = remote.stored - off.last_remote.stored;
        off.last_remote = remote;
        // The engine counts every tier's promotions; the remote tiers count theirs a little
        // earlier (when their worker verified the value): the disk's are the difference of the
        // totals, which is exact once the tiers are idle.
        let disk_total = stats.promotions_loaded.saturating_sub(remote.loaded).max(off.last_disk_loaded);
        let loaded = disk_total - off.last_disk_loaded;
        off.last_disk_loaded = disk_total;
        let stored_total = off.disk_blocks_stored();
        let stored = stored_total - off.last_disk_stored;
        off.last_disk_stored = stored_total;
        let bb = self.cfg.block_bytes as u64;
        self.tally.remote_loaded += remote_loaded;
        self.tally.remote_stored += remote_stored;
        if remote_loaded + remote_stored > 0 {
            counter!("kvtier_blocks_loaded_total", "tier" => "remote").increment(remote_loaded);
            counter!("kvtier_bytes_loaded_total", "tier" => "remote").increment(remote_loaded * bb);
            counter!("kvtier_blocks_stored_total", "tier" => "remote").increment(remote_stored);
            counter!("kvtier_bytes_stored_total", "tier" => "remote").increment(remote_stored * bb);
        }
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
    }

    /// Drains kvtier's events: CPU evictions (a promoted block evicted before its load is no
    /// disk hit), and blocks that became ready (kept in `readied` for [`Sim::settle`]).
    fn handle_events(&mut self) {
        let Some(off) = self.off.as_deref_mut() else { return };
        off.kv(|o| {
            o.events.clear();
            o.cache.engine().take_events(&mut o.events);
        });
        off.readied.clear();
        for ev in off.events.iter().filter(|e| e.medium == Medium::Cpu) {
            if ev.removed {
                self.tally.cpu_evictions += ev.keys.len() as u64;
                counter!("kvtier_cpu_evictions_total").increment(ev.keys.len() as u64);
                for k in ev.keys {
                    off.promoted.remove(k);
                }
            } else if !off.batch.is_empty() {
                off.readied.extend_from_slice(ev.keys);
            }
        }
    }

    /// Waits (really) for the tier I/O of this iteration: first the promotions `end_step` just
    /// submitted (measuring each), then the cascaded stores. Charges the simulated disk with
    /// it (see [`DiskTime`]; the iteration's lookups ran at `start`), gives each promotion its
    /// virtual landing time and pins the landed blocks for the requests that wait for them.
    fn settle(&mut self, start: f64, interrupt: &Interrupt) -> Result<(), String> {
        let Some(off) = self.off.as_deref_mut() else { return Ok(()) };
        // Probes (lookups answered Retry) are answered in a round trip, not charged in virtual
        // time: the requests look their blocks up again at once (see `Sim::iterate`). With
        // tier jobs in flight, the drain below waits for them too, after the promotions were
        // timed.
        let probing = std::mem::take(&mut off.probing);
        let engine = off.cache.engine_ref();
        if engine.tier_count() == 0 || (off.batch.is_empty() && engine.jobs_in_flight() == 0) {
            if probing {
                off.wait_probes();
            }
            return Ok(());
        }
        let cascaded = engine.stats().cascade_blocks - off.last_cascaded;
        off.last_cascaded = engine.stats().cascade_blocks;
        let submitted = Instant::now();
        let mut left: HashSet<OffloadKey> = off.batch.iter().copied().collect();
        let mut latency: Vec<(OffloadKey, Duration)> = Vec::with_capacity(left.len());
        loop {
            let off = self.off.as_deref_mut().expect("checked above");
            let elapsed = submitted.elapsed();
            for k in off.readied.drain(..) {
                if left.remove(&k) {
                    latency.push((k, elapsed));
                }
            }
            // A failed promotion frees its slot without an event.
            let engine = off.cache.engine_ref();
            left.retain(|k| engine.primary_lookup(k) != PoolLookup::Miss);
            if left.is_empty() {
                break;
            }
            interrupt.check()?;
            if elapsed > PROMOTION_TIMEOUT {
                return Err(format!("{} promotions still in flight after {PROMOTION_TIMEOUT:?}", left.len()));
            }
            // Poll every ~50 us (x the byte scale: a few ms of virtual time at most, against
            // promotions of tens of ms or more). These polls are the simulator's way to time
            // the I/O, not what an engine would do (it polls once per step): their CPU time is
            // not counted as kvtier's.
            std::thread::sleep(Duration::from_micros(50));
            off.cache.engine().end_step();
            self.handle_events();
            self.count_tier_work();
        }
        let promoting = if latency.is_empty() { Duration::ZERO } else { submitted.elapsed() };
        let off = self.off.as_deref_mut().expect("checked above");
        off.kv(|o| o.cache.engine().drain());
        let writing = submitted.elapsed().saturating_sub(promoting);
        self.land(start, &latency, (promoting, writing), cascaded);
        Ok(())
    }

    /// Charges the simulated disk with an iteration's I/O, measured here: its promotions
    /// (`latency` each, `busy.0` until the last landed) and then `cascaded` blocks stored
    /// (`busy.1` more). Reads go first: promotions queue behind earlier promotions only, and
    /// delay the writes. Gives each promotion its virtual landing time and pins it for the
    /// requests that wait for it.
    fn land(&mut self, start: f64, latency: &[(OffloadKey, Duration)], busy: (Duration, Duration), cascaded: u64) {
        let (cfg, wl) = (self.cfg, self.wl);
        let Some(off) = self.off.as_deref_mut() else { return };
        let model_bytes = |blocks: u64| (blocks * wl.block_tokens * cfg.model_bytes_per_token) as f64;
        let promoted_bytes = model_bytes(latency.len() as u64);
        let scaled = |d: Duration| d.as_secs_f64() * cfg.byte_scale;
        let (reading, writing) = match cfg.disk_time {
            DiskTime::Measured => (scaled(busy.0), scaled(busy.1)),
            DiskTime::Rate { bytes_per_s } => (promoted_bytes / bytes_per_s, model_bytes(cascaded) / bytes_per_s),
        };
        let virtual_s = |d: Duration| match cfg.disk_time {
            DiskTime::Measured => scaled(d),
            DiskTime::Rate { .. } => reading,
        };
        let begin = off.read_free.max(start);
        off.read_free = begin + reading;
        off.write_free = off.write_free.max(start) + reading + writing;
        if cascaded > 0 {
            off.writes.push_back((off.write_free, cascaded));
            off.unwritten += cascaded;
        }
        self.tally.disk_busy_s += reading + writing;
        let bb = cfg.block_bytes as u64;
        self.tally.read_here.0 += latency.len() as u64 * bb;
        self.tally.read_here.1 += busy.0.as_secs_f64();
        self.tally.written_here.0 += cascaded * bb;
        self.tally.written_here.1 += busy.1.as_secs_f64();
        for &(k, d) in latency {
            let v = virtual_s(d);
            off.promoted.insert(k, begin + v);
            self.tally.promo_real_ms.push(d.as_secs_f64() * 1e3);
            self.tally.promo_virtual_ms.push(v * 1e3);
            histogram!("kvtier_promotion_latency_seconds").record(d.as_secs_f64());
            histogram!("kvtier_promotion_virtual_seconds").record(v);
        }
        if !latency.is_empty() {
            self.tally.promo_batches += 1;
        }
        off.batch.clear();
        for id in std::mem::take(&mut self.awaiting_ids) {
            let req = ReqContext::new(id as u64);
            for k in std::mem::take(&mut self.awaiting[id]) {
                let key = wl.key(k);
                if self.held[id].contains(&k) || off.cache.engine_ref().primary_lookup(key) != PoolLookup::Ready {
                    continue;
                }
                let pinned = off.kv(|o| {
                    o.slots.clear();
                    let slots = &mut o.slots;
                    o.cache.engine().prepare_load(core::slice::from_ref(key), req, slots)
                });
                if pinned.is_ok() {
                    self.held[id].insert(k);
                    self.held_total += 1;
                    if let Some(&t) = off.promoted.get(key) {
                        self.kv_ready[id] = self.kv_ready[id].max(t);
                    }
                }
            }
        }
    }

    /// Shuts kvtier down (every tier drains) and counts what the tiers finished after the last
    /// iteration.
    pub fn shutdown(&mut self) {
        let Some(off) = self.off.as_deref_mut() else { return };
        off.kv(|o| o.cache.shutdown());
        self.count_tier_work();
    }
}
