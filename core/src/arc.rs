//! ARC: resident lists T1 (seen once) and T2 (seen again), ghost lists B1 and B2 (keys of
//! blocks evicted from T1 and T2), and the adaptive target size `p` of T1.
//!
//! This follows vLLM's ARC exactly, including its quirk that eviction fails when T2 has no
//! candidate even though T1 still has one (see SEMANTICS.md). `p` is an `f64` and its updates
//! are real divisions; IEEE arithmetic keeps them deterministic.

use alloc::vec::Vec;

use hashbrown::HashTable;

use crate::list::{next_of, Links, List};
use crate::policy::EvictionPolicy;
use crate::{OffloadKey, SlotId};

const NONE: u8 = 0;
const T1: u8 = 1;
const T2: u8 = 2;
const B1: u8 = 1;
const B2: u8 = 2;

/// Adaptive replacement order over the pool's slots, with ghost history.
#[derive(Debug, Clone)]
pub struct ArcPolicy {
    capacity: u32,
    p: f64,
    slot_links: Links,
    slot_list: Vec<u8>,
    t1: List,
    t2: List,
    ghost_keys: Vec<OffloadKey>,
    ghost_links: Links,
    ghost_list: Vec<u8>,
    ghost_free: Vec<u32>,
    ghost_index: HashTable<u32>,
    b1: List,
    b2: List,
}

impl ArcPolicy {
    /// An empty ARC for `capacity` slots (ghost lists of up to `capacity` keys each).
    pub fn new(capacity: u32) -> Self {
        let n = capacity as usize;
        let ghosts = 2 * n;
        ArcPolicy {
            capacity,
            p: 0.0,
            slot_links: Links::new(n),
            slot_list: alloc::vec![NONE; n],
            t1: List::default(),
            t2: List::default(),
            ghost_keys: alloc::vec![OffloadKey::from_bytes(&[0; 4]).expect("4-byte key"); ghosts],
            ghost_links: Links::new(ghosts),
            ghost_list: alloc::vec![NONE; ghosts],
            ghost_free: (0..ghosts as u32).rev().collect(),
            // Twice the most ghosts ever live, so hashbrown always rehashes in place (no
            // allocation) when tombstones run it out of room.
            ghost_index: HashTable::with_capacity(2 * ghosts),
            b1: List::default(),
            b2: List::default(),
        }
    }

    /// The target size of T1.
    pub fn target(&self) -> f64 {
        self.p
    }

    /// T1's slots, least-recent first.
    pub fn t1(&self) -> impl Iterator<Item = SlotId> + '_ {
        self.t1.iter(&self.slot_links).map(SlotId)
    }

    /// T2's slots, least-recent first.
    pub fn t2(&self) -> impl Iterator<Item = SlotId> + '_ {
        self.t2.iter(&self.slot_links).map(SlotId)
    }

    /// B1's keys, least-recent first.
    pub fn b1(&self) -> impl Iterator<Item = &OffloadKey> + '_ {
        self.b1.iter(&self.ghost_links).map(|g| &self.ghost_keys[g as usize])
    }

    /// B2's keys, least-recent first.
    pub fn b2(&self) -> impl Iterator<Item = &OffloadKey> + '_ {
        self.b2.iter(&self.ghost_links).map(|g| &self.ghost_keys[g as usize])
    }

    fn find_ghost(&self, key: &OffloadKey) -> Option<u32> {
        self.ghost_index.find(key.table_hash(), |&g| self.ghost_keys[g as usize] == *key).copied()
    }

    fn ghost_list_mut(&mut self, which: u8) -> &mut List {
        if which == B1 {
            &mut self.b1
        } else {
            &mut self.b2
        }
    }

    fn drop_ghost(&mut self, g: u32) {
        let which = self.ghost_list[g as usize];
        let mut list = *self.ghost_list_mut(which);
        list.remove(&mut self.ghost_links, g);
        *self.ghost_list_mut(which) = list;
        self.ghost_list[g as usize] = NONE;
        let key = self.ghost_keys[g as usize];
        if let Ok(entry) = self.ghost_index.find_entry(key.table_hash(), |&x| x == g) {
            entry.remove();
        }
        self.ghost_free.push(g);
    }

    /// Remembers `key` at the most-recent end of B1 or B2, first dropping that list's
    /// least-recent key if it is full (the same result as vLLM's trim after the eviction).
    fn push_ghost(&mut self, which: u8, key: &OffloadKey) {
        let cap = self.capacity as usize;
        if cap == 0 {
            return;
        }
        if self.ghost_list_mut(which).len() >= cap {
            if let Some(oldest) = self.ghost_list_mut(which).front() {
                self.drop_ghost(oldest);
            }
        }
        let Some(g) = self.ghost_free.pop() else { return };
        self.ghost_keys[g as usize] = *key;
        self.ghost_list[g as usize] = which;
        let mut list = *self.ghost_list_mut(which);
        list.push_back(&mut self.ghost_links, g);
        *self.ghost_list_mut(which) = list;
        let keys = &self.ghost_keys;
        self.ghost_index.insert_unique(key.table_hash(), g, |&x| keys[x as usize].table_hash());
    }

    fn unlink_slot(&mut self, slot: SlotId) -> u8 {
        let which = core::mem::replace(&mut self.slot_list[slot.index()], NONE);
        match which {
            T1 => self.t1.remove(&mut self.slot_links, slot.0),
            T2 => self.t2.remove(&mut self.slot_links, slot.0),
            _ => {}
        }
        which
    }

    /// First evictable slot at or after `from` in its list.
    fn scan(&self, mut cur: Option<u32>, evictable: &dyn Fn(SlotId) -> bool) -> (Option<SlotId>, Option<u32>) {
        while let Some(node) = cur {
            cur = next_of(&self.slot_links, node);
            if evictable(SlotId(node)) {
                return (Some(SlotId(node)), cur);
            }
        }
        (None, None)
    }
}

impl EvictionPolicy for ArcPolicy {
    fn capacity(&self) -> u32 {
        self.capacity
    }

    fn on_insert(&mut self, slot: SlotId, key: &OffloadKey) {
        if let Some(g) = self.find_ghost(key) {
            self.drop_ghost(g);
        }
        self.t1.push_back(&mut self.slot_links, slot.0);
        self.slot_list[slot.index()] = T1;
    }

    fn on_remove(&mut self, slot: SlotId) {
        self.unlink_slot(slot);
    }

    fn on_touch(&mut self, key: &OffloadKey, resident: Option<(SlotId, bool)>) {
        if let Some((slot, ready)) = resident {
            match self.slot_list[slot.index()] {
                T1 if ready => {
                    self.t1.remove(&mut self.slot_links, slot.0);
                    self.t2.push_back(&mut self.slot_links, slot.0);
                    self.slot_list[slot.index()] = T2;
                }
                T1 => self.t1.move_to_back(&mut self.slot_links, slot.0),
                T2 => self.t2.move_to_back(&mut self.slot_links, slot.0),
                _ => {}
            }
            return;
        }
        let Some(g) = self.find_ghost(key) else { return };
        let (b1, b2) = (self.b1.len() as f64, self.b2.len() as f64);
        let cap = f64::from(self.capacity);
        if self.ghost_list[g as usize] == B1 {
            self.p = (self.p + f64::max(1.0, b2 / b1)).min(cap);
            self.b1.move_to_back(&mut self.ghost_links, g);
        } else {
            self.p = (self.p - f64::max(1.0, b1 / b2)).max(0.0);
            self.b2.move_to_back(&mut self.ghost_links, g);
        }
    }

    fn select_victims(&self, need: usize, evictable: &dyn Fn(SlotId) -> bool, out: &mut Vec<SlotId>) -> bool {
        // `p` is never negative, so truncation is the floor.
        let target = self.p as usize;
        let mut virtual_t1 = self.t1.len();
        let (mut c1, mut c2) = (self.t1.front(), self.t2.front());
        for _ in 0..need {
            let mut victim = None;
            if virtual_t1 >= target {
                let (v, next) = self.scan(c1, evictable);
                if v.is_some() {
                    victim = v;
                    c1 = next;
                    virtual_t1 -= 1;
                } else {
                    c1 = None;
                }
            }
            if victim.is_none() {
                let (v, next) = self.scan(c2, evictable);
                victim = v;
                c2 = next;
            }
            match victim {
                Some(v) => out.push(v),
                None => return false,
            }
        }
        true
    }

    fn on_evict(&mut self, slot: SlotId, key: &OffloadKey) {
        match self.unlink_slot(slot) {
            T1 => self.push_ghost(B1, key),
            T2 => self.push_ghost(B2, key),
            _ => {}
        }
    }
}
