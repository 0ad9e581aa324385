//! The promotion state machine: a block a lookup finds in a secondary tier is loaded back into
//! a primary slot reserved for it.
//!
//! Per primary slot: `None` -> `Reserved` (a lookup reserved the slot this step) ->
//! `Submitted { job, due }` (at `end_step`, in one load job per (tier, request)) -> `None`
//! (when that job is reported, or at shutdown). While a slot is not `None` its write belongs
//! to the engine: `complete_store` leaves it alone. A finished load only completes a key that
//! is still in flight in the slot the job loaded into (see "Decisions SEMANTICS.md leaves open"
//! in `engine.rs`).
//!
//! This module owns the per-slot states, the reservations of the current step and their
//! grouping into jobs. It must never issue a job id or keep a job record itself: those are the
//! job book's.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::engine::EngineStats;
use crate::job_book::{JobBook, JobPurpose, JobRecord};
use crate::policy::EvictionPolicy;
use crate::pool::{PrimaryPool, StorePlan, IN_FLIGHT};
use crate::tier::{Job, SecondaryTier};
use crate::{JobId, OffloadKey, ReqContext, SlotId};

/// The promotion state of one primary slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Promo {
    None,
    /// Reserved by a lookup this step; submitted at `end_step`.
    Reserved,
    /// Load job `job` in flight; overdue once `step >= due`.
    Submitted {
        job: JobId,
        due: u64,
    },
}

/// A reservation of this step, not yet submitted.
#[derive(Debug, Clone, Copy)]
struct Pending {
    tier: usize,
    req: ReqContext,
    key: OffloadKey,
    slot: SlotId,
    group: u32,
    seq: u32,
}

/// Every promotion in progress, by primary slot.
#[derive(Debug)]
pub(crate) struct Promotions {
    state: Vec<Promo>,
    pending: Vec<Pending>,
    /// Scratch of `flush`: the (tier, request) groups and each tier's rank this step.
    groups: Vec<(usize, ReqContext)>,
    tier_rank: Vec<u32>,
    /// Scratch of `reserve`.
    plan: StorePlan,
    /// Scratch of `finish`.
    loaded: Vec<SlotId>,
    failed: Vec<SlotId>,
}

impl Promotions {
    /// No promotion, for a pool of `slots` slots and `tiers` secondary tiers.
    pub(crate) fn new(slots: usize, tiers: usize) -> Self {
        Promotions {
            state: alloc::vec![Promo::None; slots],
            pending: Vec::new(),
            groups: Vec::new(),
            tier_rank: alloc::vec![u32::MAX; tiers],
            plan: StorePlan::new(),
            loaded: Vec::new(),
            failed: Vec::new(),
        }
    }

    /// True while `slot` is reserved by a promotion, submitted or not.
    pub(crate) fn holds(&self, slot: SlotId) -> bool {
        self.state.get(slot.index()).is_some_and(|p| *p != Promo::None)
    }

    /// True when the load into `slot` was submitted and `step` reached its deadline
    /// (`deadline_steps` 0: never).
    pub(crate) fn is_overdue(&self, slot: SlotId, step: u64, deadline_steps: u32) -> bool {
        matches!(self.state[slot.index()], Promo::Submitted { due, .. } if deadline_steps > 0 && step >= due)
    }

    /// Reserves a primary slot for `key`, which `tier` holds (this may evict); false when the
    /// pool cannot make room.
    pub(crate) fn reserve<P: EvictionPolicy>(
        &mut self,
        pool: &mut PrimaryPool<P>,
        tier: usize,
        key: &OffloadKey,
        req: ReqContext,
        stats: &mut EngineStats,
    ) -> bool {
        let reserved = pool.prepare_store(core::slice::from_ref(key), &mut self.plan);
        match (reserved, self.plan.slots.first().copied()) {
            (Ok(()), Some(slot)) => {
                self.state[slot.index()] = Promo::Reserved;
                let seq = self.pending.len() as u32;
                self.pending.push(Pending { tier, req, key: *key, slot, group: 0, seq });
                stats.promotions_reserved += 1;
                true
            }
            _ => false,
        }
    }

    /// Submits the step's reservations. Jobs go out grouped by tier, tiers in the order each
    /// first received a reservation, and within a tier by request in the order each first
    /// reserved from it; keys keep lookup order. Each load is due `deadline_steps + 1` steps
    /// after `step`.
    pub(crate) fn flush(
        &mut self,
        step: u64,
        deadline_steps: u32,
        jobs: &mut JobBook,
        tiers: &mut [Box<dyn SecondaryTier>],
    ) {
        if self.pending.is_empty() {
            return;
        }
        let mut pending = core::mem::take(&mut self.pending);
        self.groups.clear();
        self.tier_rank.iter_mut().for_each(|r| *r = u32::MAX);
        let mut next_rank = 0;
        for p in &mut pending {
            if self.tier_rank[p.tier] == u32::MAX {
                self.tier_rank[p.tier] = next_rank;
                next_rank += 1;
            }
            p.group = match self.groups.iter().position(|&g| g == (p.tier, p.req)) {
                Some(g) => g as u32,
                None => {
                    self.groups.push((p.tier, p.req));
                    (self.groups.len() - 1) as u32
                }
            };
        }
        let rank = &self.tier_rank;
        pending.sort_unstable_by_key(|p| (rank[p.tier], p.group, p.seq));
        let due_in = u64::from(deadline_steps) + 1;
        let mut start = 0;
        while start < pending.len() {
            let (tier, group, req) = (pending[start].tier, pending[start].group, pending[start].req);
            let end = start + pending[start..].iter().take_while(|p| p.group == group).count();
            let r = jobs.open(tier, JobPurpose::Promotion, req);
            let rec = jobs.record_mut(r);
            let id = rec.id;
            for p in &pending[start..end] {
                rec.keys.push(p.key);
                rec.slots.push(p.slot);
                self.state[p.slot.index()] = Promo::Submitted { job: id, due: step + due_in };
            }
            tiers[tier].submit_load(Job { id, req, keys: &rec.keys, slots: &rec.slots });
            start = end;
        }
        pending.clear();
        self.pending = pending;
    }

    /// Completes the promotion job `rec` whose per-key outcomes are `outcome`: the keys that
    /// loaded become ready (one "stored" event for the job), then the keys that failed are
    /// freed, in the job's key order. Only keys still in flight in the job's own reserved slot
    /// are touched.
    pub(crate) fn finish<P: EvictionPolicy>(
        &mut self,
        rec: &JobRecord,
        outcome: &[bool],
        pool: &mut PrimaryPool<P>,
        stats: &mut EngineStats,
    ) {
        self.loaded.clear();
        self.failed.clear();
        for (i, (key, &slot)) in rec.keys.iter().zip(&rec.slots).enumerate() {
            if !matches!(self.state[slot.index()], Promo::Submitted { job, .. } if job == rec.id) {
                continue;
            }
            self.state[slot.index()] = Promo::None;
            if !matches!(pool.slot(slot), Some((k, IN_FLIGHT)) if k == key) {
                continue;
            }
            if outcome[i] {
                self.loaded.push(slot);
            } else {
                self.failed.push(slot);
            }
        }
        for &slot in &self.loaded {
            pool.ready_slot(slot);
        }
        pool.stored_event(&self.loaded);
        for &slot in &self.failed {
            pool.fail_slot(slot);
        }
        stats.promotions_loaded += self.loaded.len() as u64;
        stats.promotions_failed += self.failed.len() as u64;
    }

    /// At shutdown: fails the reservations never submitted and frees their slots.
    pub(crate) fn fail_unsubmitted<P: EvictionPolicy>(&mut self, pool: &mut PrimaryPool<P>, stats: &mut EngineStats) {
        for p in core::mem::take(&mut self.pending) {
            self.state[p.slot.index()] = Promo::None;
            if pool.fail_slot(p.slot) {
                stats.promotions_failed += 1;
            }
        }
    }
}
