//! LRU: one recency list over every present block.
//!
//! Insert and touch move a block to the most-recent end whatever its state (pinned and
//! in-flight blocks too); eviction scans from the least-recent end and takes the first `need`
//! evictable blocks.

use alloc::vec::Vec;

use crate::list::{next_of, Links, List};
use crate::policy::EvictionPolicy;
use crate::{OffloadKey, SlotId};

/// Least-recently-used order over the pool's slots.
#[derive(Debug, Clone)]
pub struct LruPolicy {
    links: Links,
    list: List,
    resident: Vec<bool>,
    capacity: u32,
}

impl LruPolicy {
    /// An empty LRU for `capacity` slots.
    pub fn new(capacity: u32) -> Self {
        LruPolicy {
            links: Links::new(capacity as usize),
            list: List::default(),
            resident: alloc::vec![false; capacity as usize],
            capacity,
        }
    }

    /// Resident slots, least-recent first.
    pub fn order(&self) -> impl Iterator<Item = SlotId> + '_ {
        self.list.iter(&self.links).map(SlotId)
    }
}

impl EvictionPolicy for LruPolicy {
    fn capacity(&self) -> u32 {
        self.capacity
    }

    fn on_insert(&mut self, slot: SlotId, _key: &OffloadKey) {
        self.list.push_back(&mut self.links, slot.0);
        self.resident[slot.index()] = true;
    }

    fn on_remove(&mut self, slot: SlotId) {
        if core::mem::take(&mut self.resident[slot.index()]) {
            self.list.remove(&mut self.links, slot.0);
        }
    }

    fn on_touch(&mut self, _key: &OffloadKey, resident: Option<(SlotId, bool)>) {
        if let Some((slot, _)) = resident {
            self.list.move_to_back(&mut self.links, slot.0);
        }
    }

    fn select_victims(&self, need: usize, evictable: &dyn Fn(SlotId) -> bool, out: &mut Vec<SlotId>) -> bool {
        let mut found = 0;
        let mut cur = self.list.front();
        while found < need {
            let Some(node) = cur else { return false };
            if evictable(SlotId(node)) {
                out.push(SlotId(node));
                found += 1;
            }
            cur = next_of(&self.links, node);
        }
        true
    }

    fn on_evict(&mut self, slot: SlotId, _key: &OffloadKey) {
        self.on_remove(slot);
    }
}
