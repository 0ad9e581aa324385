//! The eviction-policy trait, and [`AnyPolicy`] for choosing LRU or ARC at run time.
//!
//! A policy orders the resident blocks of a [`crate::PrimaryPool`] (and may remember evicted
//! keys, as ARC's ghost lists do). The pool owns slot states; the policy owns only order. The
//! pool calls the policy in this order on an eviction: [`EvictionPolicy::select_victims`]
//! (which must not change anything, so a failed eviction leaves no trace), then
//! [`EvictionPolicy::on_evict`] once per victim in selection order.

use alloc::vec::Vec;

use crate::arc::ArcPolicy;
use crate::lru::LruPolicy;
use crate::{OffloadKey, SlotId};

/// An eviction policy over the slots of a primary pool.
pub trait EvictionPolicy {
    /// Number of slots the policy was built for; the pool takes its size from it.
    fn capacity(&self) -> u32;
    /// `key` was inserted into `slot` (write in flight): it becomes most recent.
    fn on_insert(&mut self, slot: SlotId, key: &OffloadKey);
    /// `slot` was dropped without eviction (a failed store): forget it, remember nothing.
    fn on_remove(&mut self, slot: SlotId);
    /// `touch` of one key; `resident` is its slot and whether it is ready (`ref_cnt >= 0`), or
    /// `None` when the key is not in the pool (a policy with history may still react).
    fn on_touch(&mut self, key: &OffloadKey, resident: Option<(SlotId, bool)>);
    /// Chooses `need` victims among the slots for which `evictable` is true, in eviction order,
    /// appending them to `out`. Returns false (and may leave partial output, which the caller
    /// discards) when `need` cannot be found. Must not change the policy.
    fn select_victims(&self, need: usize, evictable: &dyn Fn(SlotId) -> bool, out: &mut Vec<SlotId>) -> bool;
    /// Commits one selected victim (`key` was in `slot`); called in selection order.
    fn on_evict(&mut self, slot: SlotId, key: &OffloadKey);
}

/// Which policy a pool uses, for configuration (spelled `lru` and `arc` with the `serde`
/// feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize), serde(rename_all = "lowercase"))]
pub enum PolicyKind {
    /// Least recently used.
    #[default]
    Lru,
    /// Adaptive replacement cache.
    Arc,
}

/// LRU or ARC, chosen at run time.
// One per pool: the size difference between the variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum AnyPolicy {
    /// LRU.
    Lru(LruPolicy),
    /// ARC.
    Arc(ArcPolicy),
}

impl AnyPolicy {
    /// A policy of `kind` for `capacity` slots.
    pub fn new(kind: PolicyKind, capacity: u32) -> Self {
        match kind {
            PolicyKind::Lru => AnyPolicy::Lru(LruPolicy::new(capacity)),
            PolicyKind::Arc => AnyPolicy::Arc(ArcPolicy::new(capacity)),
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $p:ident => $e:expr) => {
        match $self {
            AnyPolicy::Lru($p) => $e,
            AnyPolicy::Arc($p) => $e,
        }
    };
}

impl EvictionPolicy for AnyPolicy {
    fn capacity(&self) -> u32 {
        dispatch!(self, p => p.capacity())
    }
    fn on_insert(&mut self, slot: SlotId, key: &OffloadKey) {
        dispatch!(self, p => p.on_insert(slot, key))
    }
    fn on_remove(&mut self, slot: SlotId) {
        dispatch!(self, p => p.on_remove(slot))
    }
    fn on_touch(&mut self, key: &OffloadKey, resident: Option<(SlotId, bool)>) {
        dispatch!(self, p => p.on_touch(key, resident))
    }
    fn select_victims(&self, need: usize, evictable: &dyn Fn(SlotId) -> bool, out: &mut Vec<SlotId>) -> bool {
        dispatch!(self, p => p.select_victims(need, evictable, out))
    }
    fn on_evict(&mut self, slot: SlotId, key: &OffloadKey) {
        dispatch!(self, p => p.on_evict(slot, key))
    }
}
