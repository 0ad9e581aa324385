//! The oracle's tiering engine, written from SEMANTICS.md "Tiering engine" (and the decisions
//! documented at the top of `engine.rs` where SEMANTICS is silent): a [`PoolModel`], tiers as
//! sets of keys with failure counters and report queues, jobs in a `BTreeMap` by id, its own
//! job-id counter, step counter, polling guard and promotion deadlines.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::pool_model::{ModelEvent, ModelPlan, PoolModel};
use crate::scripted_tier::SubmittedJob;
use kvtier_core::error::{LoadError, ProtocolError, ShutDown, StoreError, UnpinError};
use kvtier_core::{Direction, EngineStats, JobId, LookupResult, OffloadKey, PolicyKind, ReqContext, SlotId};

/// A finished job as a tier reports it: one outcome per key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Report {
    job: u64,
    /// Per-key outcomes, or the whole job's flag.
    per_key: Option<Vec<bool>>,
    success: bool,
}

/// The oracle's secondary tier: a memory tier (presence only, jobs done at submission and
/// reported at the next poll) plus the scripted behaviours of [`crate::ScriptedTier`].
#[derive(Debug, Clone, Default)]
pub struct TierModel {
    /// Keys the tier holds.
    pub has: BTreeSet<OffloadKey>,
    /// Upcoming loads to fail.
    pub fail_loads: u32,
    /// Upcoming stores to fail.
    pub fail_stores: u32,
    outbox: Vec<Report>,
    /// Reports are held back.
    pub hold: bool,
    /// Lookups answer busy.
    pub busy: bool,
    /// Keys whose loads fail.
    pub lose: Vec<OffloadKey>,
    /// Shutdown drops held reports.
    pub forget: bool,
}

impl TierModel {
    fn submit_store(&mut self, job: u64, keys: &[OffloadKey]) {
        if self.fail_stores > 0 {
            self.fail_stores -= 1;
            self.outbox.push(Report { job, per_key: None, success: false });
        } else {
            self.has.extend(keys.iter().copied());
            self.outbox.push(Report { job, per_key: None, success: true });
        }
    }

    fn submit_load(&mut self, job: u64, keys: &[OffloadKey]) {
        let whole_fail = self.fail_loads > 0;
        if whole_fail {
            self.fail_loads -= 1;
        }
        let ok = keys.iter().map(|k| !whole_fail && self.has.contains(k) && !self.lose.contains(k)).collect();
        self.outbox.push(Report { job, per_key: Some(ok), success: false });
    }

    /// Number of reports not yet delivered.
    pub fn undelivered(&self) -> usize {
        self.outbox.len()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Promo {
    /// Reserved by a lookup this step, not submitted yet.
    Reserved,
    /// Submitted as `job` by the `end_step` that ran while the step counter was `at_step`.
    Submitted { job: u64, at_step: u64 },
}

#[derive(Debug, Clone)]
struct Reservation {
    tier: usize,
    req: ReqContext,
    key: OffloadKey,
    slot: usize,
}

#[derive(Debug, Clone)]
struct ModelJob {
    tier: usize,
    cascade: bool,
    keys: Vec<(OffloadKey, usize)>,
}

/// The naive engine.
#[derive(Debug, Clone)]
pub struct EngineModel {
    /// The primary pool.
    pub pool: PoolModel,
    /// The secondary tiers, in configuration order.
    pub tiers: Vec<TierModel>,
    deadline: u32,
    /// `end_step` calls so far.
    pub step: u64,
    polled: bool,
    /// `shutdown` ran.
    pub shut_down: bool,
    /// The next job id.
    pub next_job: u64,
    jobs: BTreeMap<u64, ModelJob>,
    promos: BTreeMap<usize, Promo>,
    reservations: Vec<Reservation>,
    /// What the engine should count.
    pub stats: EngineStats,
    /// The last protocol violation.
    pub last_protocol_error: Option<ProtocolError>,
    /// Jobs submitted to each tier since the driver last took them.
    pub submitted: Vec<Vec<SubmittedJob>>,
    /// Pins taken by successful `prepare_load`s minus those released by `complete_load`s.
    pub user_pins: i64,
    /// Cascade unpins that found no pin to drop (a caller released it).
    pub lost_pins: i64,
    /// Jobs ever submitted.
    pub jobs_submitted: u64,
    /// Jobs ever completed (reported once, or failed at shutdown).
    pub jobs_completed: u64,
}

impl EngineModel {
    /// An engine over `num_slots` slots ordered by `policy`, with `n_tiers` empty tiers.
    pub fn new(policy: PolicyKind, num_slots: usize, n_tiers: usize, deadline: u32) -> Self {
        EngineModel {
            pool: PoolModel::new(policy, num_slots),
            tiers: alloc::vec![TierModel::default(); n_tiers],
            deadline,
            step: 0,
            polled: false,
            shut_down: false,
            next_job: 0,
            jobs: BTreeMap::new(),
            promos: BTreeMap::new(),
            reservations: Vec::new(),
            stats: EngineStats::default(),
            last_protocol_error: None,
            submitted: alloc::vec![Vec::new(); n_tiers],
            user_pins: 0,
            lost_pins: 0,
            jobs_submitted: 0,
            jobs_completed: 0,
        }
    }

    /// Is `slot` reserved by a promotion (reserved or submitted)?
    pub fn is_promotion_slot(&self, slot: usize) -> bool {
        self.promos.contains_key(&slot)
    }

    /// Jobs submitted and not yet completed.
    pub fn jobs_in_flight(&self) -> usize {
        self.jobs.len()
    }

    /// Pins held by cascades in flight.
    pub fn cascade_pins(&self) -> i64 {
        self.jobs.values().filter(|j| j.cascade).map(|j| j.keys.len() as i64).sum()
    }

    fn protocol_error(&mut self, e: ProtocolError) {
        self.stats.protocol_errors += 1;
        self.last_protocol_error = Some(e);
    }

    fn take_job_id(&mut self) -> u64 {
        self.next_job += 1;
        self.jobs_submitted += 1;
        self.next_job - 1
    }

    fn poll_guarded(&mut self) {
        if !self.polled && !self.shut_down {
            self.polled = true;
            self.poll_all();
        }
    }

    /// Tier by tier in configuration order, each tier's reports in order.
    fn poll_all(&mut self) {
        for t in 0..self.tiers.len() {
            if self.tiers[t].hold {
                continue;
            }
            let reports = core::mem::take(&mut self.tiers[t].outbox);
            for r in reports {
                self.handle(t, r);
            }
        }
    }

    fn handle(&mut self, tier: usize, report: Report) {
        let id = report.job;
        let Some(job) = self.jobs.get(&id) else {
            self.protocol_error(if id < self.next_job {
                ProtocolError::DuplicateCompletion { tier, job: id }
            } else {
                ProtocolError::UnknownJob { tier, job: id }
            });
            return;
        };
        if job.tier != tier {
            self.protocol_error(ProtocolError::WrongTier { tier, job: id });
            return;
        }
        let job = self.jobs.remove(&id).expect("found above");
        self.jobs_completed += 1;
        let n = job.keys.len();
        let outcome = match report.per_key {
            Some(ok) if ok.len() == n => ok,
            Some(_) => {
                self.protocol_error(ProtocolError::OutcomeCount { tier, job: id });
                alloc::vec![report.success; n]
            }
            None => alloc::vec![report.success; n],
        };
        if job.cascade {
            // A finished cascade drops the pin it took, whatever its outcome.
            let mut lost = false;
            for &(key, slot) in &job.keys {
                match &mut self.pool.slots[slot] {
                    Some((k, rc)) if *k == key && *rc > 0 => *rc -= 1,
                    _ => {
                        lost = true;
                        self.lost_pins += 1;
                    }
                }
            }
            if outcome.contains(&false) {
                self.stats.cascade_jobs_failed += 1;
            }
            if lost {
                self.protocol_error(ProtocolError::LostPin { tier, job: id });
            }
        } else {
            // Loaded keys become ready (one stored event), then failed ones are freed, both in
            // the job's key order; keys no longer in flight in their reserved slot are ignored.
            let mut readied = Vec::new();
            let mut failed = Vec::new();
            for (i, &(key, slot)) in job.keys.iter().enumerate() {
                if !matches!(self.promos.get(&slot), Some(Promo::Submitted { job, .. }) if *job == id) {
                    continue;
                }
                self.promos.remove(&slot);
                if self.pool.slots[slot] != Some((key, -1)) {
                    continue;
                }
                if outcome[i] {
                    readied.push((key, slot));
                } else {
                    failed.push(slot);
                }
            }
            for &(key, slot) in &readied {
                self.pool.slots[slot] = Some((key, 0));
            }
            if !readied.is_empty() {
                self.pool.events.push(ModelEvent { removed: false, keys: readied.iter().map(|&(k, _)| k).collect() });
            }
            for &slot in &failed {
                self.pool.remove_slot(slot);
            }
            self.stats.promotions_loaded += readied.len() as u64;
            self.stats.promotions_failed += failed.len() as u64;
        }
    }

    /// `lookup(key, req)`.
    pub fn lookup(&mut self, key: &OffloadKey, req: ReqContext) -> LookupResult {
        self.poll_guarded();
        if self.shut_down {
            return LookupResult::Miss;
        }
        if let Some(slot) = self.pool.find(key) {
            let (_, rc) = self.pool.slots[slot].expect("found");
            if rc >= 0 {
                return LookupResult::Ready;
            }
            if let Some(Promo::Submitted { at_step, .. }) = self.promos.get(&slot) {
                // End_steps since the one that submitted the job.
                let since = self.step - at_step - 1;
                if self.deadline > 0 && since >= u64::from(self.deadline) {
                    self.stats.promotions_overdue += 1;
                    return LookupResult::Miss;
                }
            }
            return LookupResult::Pending;
        }
        let mut busy = false;
        for t in 0..self.tiers.len() {
            if self.tiers[t].busy {
                busy = true;
            } else if self.tiers[t].has.contains(key) {
                return match self.pool.prepare_store(core::slice::from_ref(key)) {
                    Ok(plan) => {
                        let slot = plan.slots[0];
                        self.promos.insert(slot, Promo::Reserved);
                        self.reservations.push(Reservation { tier: t, req, key: *key, slot });
                        self.stats.promotions_reserved += 1;
                        LookupResult::Pending
                    }
                    Err(_) => LookupResult::Miss,
                };
            }
        }
        if busy {
            LookupResult::Retry
        } else {
            LookupResult::Miss
        }
    }

    /// `prepare_store(keys)`.
    pub fn prepare_store(&mut self, keys: &[OffloadKey]) -> Result<ModelPlan, StoreError> {
        self.poll_guarded();
        if self.shut_down {
            return Err(StoreError::ShutDown);
        }
        self.pool.prepare_store(keys)
    }

    /// `complete_store(keys, req, success)`: the caller's in-flight writes only; cascades the
    /// keys it made ready to every tier, one pin and one job per tier.
    pub fn complete_store(&mut self, keys: &[OffloadKey], req: ReqContext, success: bool) -> Result<usize, ShutDown> {
        if self.shut_down {
            return Err(ShutDown);
        }
        let promos = &self.promos;
        let readied = self.pool.complete_store(keys, success, |slot| !promos.contains_key(&slot));
        if success && !readied.is_empty() {
            let job_keys: Vec<(OffloadKey, usize)> =
                readied.iter().map(|&s| (self.pool.slots[s].expect("ready").0, s)).collect();
            for t in 0..self.tiers.len() {
                let id = self.take_job_id();
                for &(_, slot) in &job_keys {
                    if let Some((_, rc)) = &mut self.pool.slots[slot] {
                        *rc += 1;
                    }
                }
                let keys: Vec<OffloadKey> = job_keys.iter().map(|&(k, _)| k).collect();
                self.submitted[t].push(SubmittedJob {
                    kind: Direction::Store,
                    id: JobId(id),
                    req,
                    keys: keys.clone(),
                    slots: job_keys.iter().map(|&(_, s)| SlotId(s as u32)).collect(),
                });
                self.jobs.insert(id, ModelJob { tier: t, cascade: true, keys: job_keys.clone() });
                self.stats.cascade_jobs += 1;
                self.stats.cascade_blocks += keys.len() as u64;
                self.tiers[t].submit_store(id, &keys);
            }
        }
        Ok(readied.len())
    }

    /// `prepare_load(keys)`: slots co-indexed with `keys`.
    pub fn prepare_load(&mut self, keys: &[OffloadKey]) -> Result<Vec<usize>, LoadError> {
        self.poll_guarded();
        if self.shut_down {
            return Err(LoadError::ShutDown);
        }
        let slots = self.pool.prepare_load(keys)?;
        self.user_pins += keys.len() as i64;
        Ok(slots)
    }

    /// `complete_load(keys)`.
    pub fn complete_load(&mut self, keys: &[OffloadKey]) -> Result<(), UnpinError> {
        if self.shut_down {
            return Err(UnpinError::ShutDown);
        }
        // The cascades in flight own their pins: a caller can only release its own.
        let jobs = &self.jobs;
        let kept = |slot: usize| {
            jobs.values().filter(|j| j.cascade).flat_map(|j| &j.keys).filter(|&&(_, s)| s == slot).count() as i32
        };
        self.pool.complete_load_keeping(keys, &kept)?;
        self.user_pins -= keys.len() as i64;
        Ok(())
    }

    /// `touch(keys)` (memory tiers ignore touches).
    pub fn touch(&mut self, keys: &[OffloadKey]) {
        if !self.shut_down {
            self.pool.touch(keys);
        }
    }

    /// `end_step()`: poll (guarded), submit the step's reservations, next step.
    pub fn end_step(&mut self) {
        self.poll_guarded();
        if self.shut_down {
            return;
        }
        self.flush_reservations();
        self.step += 1;
        self.stats.steps += 1;
        self.polled = false;
    }

    /// One load job per (tier, request): tiers in the order each first received a reservation
    /// this step, requests in the order each first reserved from that tier, keys in lookup
    /// order.
    fn flush_reservations(&mut self) {
        let all = core::mem::take(&mut self.reservations);
        let mut tier_order: Vec<usize> = Vec::new();
        for r in &all {
            if !tier_order.contains(&r.tier) {
                tier_order.push(r.tier);
            }
        }
        for t in tier_order {
            let mut req_order: Vec<ReqContext> = Vec::new();
            for r in all.iter().filter(|r| r.tier == t) {
                if !req_order.contains(&r.req) {
                    req_order.push(r.req);
                }
            }
            for req in req_order {
                let group: Vec<&Reservation> = all.iter().filter(|r| r.tier == t && r.req == req).collect();
                let id = self.take_job_id();
                for r in &group {
                    self.promos.insert(r.slot, Promo::Submitted { job: id, at_step: self.step });
                }
                let keys: Vec<OffloadKey> = group.iter().map(|r| r.key).collect();
                self.submitted[t].push(SubmittedJob {
                    kind: Direction::Load,
                    id: JobId(id),
                    req,
                    keys: keys.clone(),
                    slots: group.iter().map(|r| SlotId(r.slot as u32)).collect(),
                });
                self.jobs.insert(
                    id,
                    ModelJob { tier: t, cascade: false, keys: group.iter().map(|r| (r.key, r.slot)).collect() },
                );
                self.tiers[t].submit_load(id, &keys);
            }
        }
    }

    /// `take_events()`: the primary's events (memory tiers raise none).
    pub fn take_events(&mut self) -> Vec<ModelEvent> {
        self.pool.take_events()
    }

    /// `drain()`: every tier delivers what it holds at the next poll.
    pub fn drain(&mut self) {
        for tier in &mut self.tiers {
            tier.hold = false;
        }
    }

    /// `shutdown()`: poll, fail the reservations never submitted, let every tier report what
    /// it still has, fail (oldest first) every job a tier forgot, close.
    pub fn shutdown(&mut self) {
        if self.shut_down {
            return;
        }
        self.poll_all();
        for r in core::mem::take(&mut self.reservations) {
            self.promos.remove(&r.slot);
            if self.pool.slots[r.slot] == Some((r.key, -1)) {
                self.pool.remove_slot(r.slot);
                self.stats.promotions_failed += 1;
            }
        }
        for t in 0..self.tiers.len() {
            let reports = core::mem::take(&mut self.tiers[t].outbox);
            if self.tiers[t].forget {
                continue;
            }
            for r in reports {
                self.handle(t, r);
            }
        }
        while let Some(id) = self.jobs.keys().next().copied() {
            let tier = self.jobs[&id].tier;
            self.protocol_error(ProtocolError::Unreported { tier, job: id });
            self.handle(tier, Report { job: id, per_key: None, success: false });
        }
        self.shut_down = true;
    }

    /// `MemoryTier::fail_next`.
    pub fn tier_fail_next(&mut self, tier: usize, kind: Direction) {
        match kind {
            Direction::Load => self.tiers[tier].fail_loads += 1,
            Direction::Store => self.tiers[tier].fail_stores += 1,
        }
    }

    /// `MemoryTier::insert`.
    pub fn tier_insert(&mut self, tier: usize, keys: &[OffloadKey]) {
        self.tiers[tier].has.extend(keys.iter().copied());
    }

    /// A report of `job` queued by `tier`.
    pub fn tier_report(&mut self, tier: usize, job: u64, success: bool) {
        self.tiers[tier].outbox.push(Report { job, per_key: None, success });
    }

    /// Checks the model's own bookkeeping; a failure here is a bug in the oracle or in the
    /// spec reading, not necessarily in the implementation.
    pub fn self_check(&self) -> Result<(), alloc::string::String> {
        let positive: i64 = self.pool.slots.iter().flatten().map(|&(_, rc)| i64::from(rc.max(0))).sum();
        // Each lost pin is a cascade pin a caller's `complete_load` dropped early.
        if positive != self.cascade_pins() + self.user_pins + self.lost_pins {
            return Err(alloc::format!(
                "pin balance: sum of positive ref_cnts {positive} != lost {} + cascade pins {} + user pins {}",
                self.lost_pins,
                self.cascade_pins(),
                self.user_pins
            ));
        }
        if self.jobs_submitted != self.jobs_completed + self.jobs.len() as u64 {
            return Err(alloc::format!(
                "jobs: submitted {} != completed {} + in flight {}",
                self.jobs_submitted,
                self.jobs_completed,
                self.jobs.len()
            ));
        }
        for (&slot, promo) in &self.promos {
            if !matches!(self.pool.slots[slot], Some((_, -1))) {
                return Err(alloc::format!("promotion slot {slot} is not in flight: {:?}", self.pool.slots[slot]));
            }
            if let Promo::Submitted { job, .. } = promo {
                if !self.jobs.get(job).is_some_and(|j| !j.cascade && j.keys.iter().any(|&(_, s)| s == slot)) {
                    return Err(alloc::format!("promotion slot {slot} names job {job}, which is not its load"));
                }
            }
        }
        if self.shut_down && (!self.jobs.is_empty() || !self.promos.is_empty() || !self.reservations.is_empty()) {
            return Err(alloc::format!(
                "after shutdown: {} jobs, {} promotions, {} reservations left",
                self.jobs.len(),
                self.promos.len(),
                self.reservations.len()
            ));
        }
        Ok(())
    }
}
