//! The in-memory index: which record slot holds each block, in at most 48 bytes per block.
//!
//! Per record slot of the device: the 64-bit fingerprint of the key stored there (8 bytes),
//! a live bit and a hit bit. A hash table maps fingerprints to slots; it stores only the slot
//! (4 bytes and hashbrown's 1 control byte per bucket) and compares fingerprints through the
//! slot array. The table is sized once, for twice the device's slots, so deletions never make
//! hashbrown grow it (it rehashes in place below half full): the index allocates at
//! construction only, `8 + 0.25 + 5 * buckets / slots` bytes per slot, 20 to 31 bytes.
//!
//! The full key is not kept: a lookup whose fingerprint matches answers from the fingerprint
//! alone (two keys share one with probability 2^-64 per pair), and every load verifies the
//! key in the record's header, so a collision costs a miss, never a wrong block. The hit bit
//! says the block was loaded since it was written (a candidate for reinsertion when its region
//! is reclaimed).

use core::hash::{BuildHasher, Hasher};

use hashbrown::HashTable;
use kvtier_core::OffloadKey;

/// A key's fingerprint: a fixed, seedless 64-bit hash (the same in every process).
pub fn fingerprint(key: &OffloadKey) -> u64 {
    let mut h = foldhash::fast::FixedState::with_seed(0x7265_6769_6f6e_7321).build_hasher();
    h.write(key.as_bytes());
    h.finish()
}

/// Which slot holds each block. See the module docs.
#[derive(Debug)]
pub struct Index {
    fps: Vec<u64>,
    live: Vec<u64>,
    hit: Vec<u64>,
    table: HashTable<u32>,
    len: usize,
}

fn bit(bits: &[u64], slot: u32) -> bool {
    bits[(slot / 64) as usize] & (1 << (slot % 64)) != 0
}

fn set(bits: &mut [u64], slot: u32, on: bool) {
    let (w, b) = ((slot / 64) as usize, 1u64 << (slot % 64));
    if on {
        bits[w] |= b;
    } else {
        bits[w] &= !b;
    }
}

impl Index {
    /// An empty index for `slots` record slots.
    pub fn new(slots: u32) -> Index {
        let words = (slots as usize).div_ceil(64);
        Index {
            fps: vec![0; slots as usize],
            live: vec![0; words],
            hit: vec![0; words],
            table: HashTable::with_capacity(2 * slots as usize),
            len: 0,
        }
    }

    /// Blocks indexed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no block is indexed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slot holding `key`, if indexed.
    pub fn get(&self, key: &OffloadKey) -> Option<u32> {
        let fp = fingerprint(key);
        let fps = &self.fps;
        self.table.find(fp, |&s| fps[s as usize] == fp).copied()
    }

    /// Whether slot `slot` holds an indexed block.
    pub fn is_live(&self, slot: u32) -> bool {
        bit(&self.live, slot)
    }

    /// Indexes `key` at `slot` (which must not be live). A block of the same key indexed
    /// elsewhere leaves the index: its slot is returned.
    pub fn insert(&mut self, key: &OffloadKey, slot: u32) -> Option<u32> {
        debug_assert!(!self.is_live(slot), "slot {slot} is live");
        let fp = fingerprint(key);
        let Index { fps, live, hit, table, len } = self;
        fps[slot as usize] = fp;
        set(live, slot, true);
        set(hit, slot, false);
        match table.find_mut(fp, |&s| fps[s as usize] == fp) {
            Some(old) => {
                let before = std::mem::replace(old, slot);
                set(live, before, false);
                set(hit, before, false);
                Some(before)
            }
            None => {
                table.insert_unique(fp, slot, |&s| fps[s as usize]);
                *len += 1;
                None
            }
        }
    }

    /// Takes the block at `slot` out of the index; false if it was not live.
    pub fn remove_slot(&mut self, slot: u32) -> bool {
        if !self.is_live(slot) {
            return false;
        }
        let fp = self.fps[slot as usize];
        if let Ok(entry) = self.table.find_entry(fp, |&s| s == slot) {
            entry.remove();
            self.len -= 1;
        }
        set(&mut self.live, slot, false);
        set(&mut self.hit, slot, false);
        true
    }

    /// Marks the block at `slot` as loaded since it was written.
    pub fn set_hit(&mut self, slot: u32) {
        if self.is_live(slot) {
            set(&mut self.hit, slot, true);
        }
    }

    /// Whether the block at `slot` was loaded since it was written (or last reinserted); clears
    /// the mark.
    pub fn take_hit(&mut self, slot: u32) -> bool {
        let was = bit(&self.hit, slot);
        set(&mut self.hit, slot, false);
        was
    }

    /// The fingerprint of the block at live `slot`.
    pub fn fingerprint_at(&self, slot: u32) -> u64 {
        self.fps[slot as usize]
    }

    /// Live slots in `range`.
    pub fn live_in(&self, range: core::ops::Range<u32>) -> impl Iterator<Item = u32> + '_ {
        range.filter(|&s| self.is_live(s))
    }

    /// Bytes this index holds on the heap: its arrays, and its table's buckets (4 bytes each),
    /// control bytes (1 each) and hashbrown's 16 trailing control bytes.
    pub fn allocated_bytes(&self) -> usize {
        let buckets = (self.table.capacity() * 8 / 7).next_power_of_two();
        (self.fps.capacity() + self.live.capacity() + self.hit.capacity()) * 8 + buckets * 5 + 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> OffloadKey {
        let mut h = [0u8; 32];
        h[..8].copy_from_slice(&i.to_le_bytes());
        OffloadKey::new(&h, 0).unwrap()
    }

    #[test]
    fn insert_replace_remove() {
        let mut ix = Index::new(100);
        assert_eq!(ix.insert(&key(1), 5), None);
        assert_eq!(ix.insert(&key(2), 6), None);
        assert_eq!((ix.get(&key(1)), ix.get(&key(2)), ix.get(&key(3))), (Some(5), Some(6), None));
        ix.set_hit(5);
        assert_eq!(ix.insert(&key(1), 50), Some(5), "a newer copy replaces the older");
        assert!(!ix.is_live(5) && ix.is_live(50) && !ix.take_hit(50));
        assert_eq!((ix.get(&key(1)), ix.len()), (Some(50), 2));
        assert!(!ix.remove_slot(5), "a replaced slot is not live");
        assert!(ix.remove_slot(50));
        assert_eq!((ix.get(&key(1)), ix.len()), (None, 1));
        assert_eq!(ix.live_in(0..100).collect::<Vec<_>>(), [6]);
        ix.set_hit(6);
        assert!(ix.take_hit(6) && !ix.take_hit(6));
    }

    /// Churn through every slot many times: the table never grows (no allocation after
    /// construction: its capacity is unchanged).
    #[test]
    fn churn_never_grows_the_table() {
        let slots = 1000u32;
        let mut ix = Index::new(slots);
        let cap = ix.table.capacity();
        let mut next = 0u64;
        for round in 0..50u32 {
            for s in 0..slots {
                if round > 0 {
                    ix.remove_slot(s);
                }
                ix.insert(&key(next), s);
                next += 1;
            }
        }
        assert_eq!(ix.table.capacity(), cap);
        assert_eq!(ix.len(), slots as usize);
    }
}
