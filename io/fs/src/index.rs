//! The FS tier's in-memory index: which blocks are on disk, in least-recently-used order, so
//! that a tier with a capacity bound knows which block to evict.
//!
//! Recency is the order of calls (a store that publishes a block, a load that reads it, a
//! `touch`), never a clock: the order depends only on the sequence of calls. Blocks found by
//! the start-up scan come first, in the order the scan gives them (oldest file first).
//!
//! # Memory: at most 96 bytes per block
//!
//! A tier may index tens of millions of blocks, so the index is built for size (the target in
//! PERFORMANCE.md; `tests/index_memory.rs` counts it):
//! - a slab of 73-byte entries (the 65-byte inline key and the `prev`/`next` links of an
//!   intrusive recency list, as byte arrays so the entry needs no padding), in chunks of
//!   [`CHUNK`] entries: growing never copies the slab, and never holds two copies of it;
//! - a [`hashbrown::HashTable`] of `u32` entry numbers (4 bytes and a control byte per bucket)
//!   for lookups by key.
//!
//! Removed entries go on a free list (through their `next` link) and are reused first. At most
//! `u32::MAX - 1` blocks.

use hashbrown::HashTable;
use kvtier_core::OffloadKey;

/// Entries per slab chunk (73 * 4096 bytes, just under 300 KiB).
pub const CHUNK: usize = 4096;

/// No entry.
const NIL: u32 = u32::MAX;

/// One indexed block: its key and its neighbours in the recency list (a free entry keeps its
/// key zeroed and links the free list through `next`).
#[derive(Clone, Copy)]
struct Entry {
    key: OffloadKey,
    prev: [u8; 4],
    next: [u8; 4],
}

// The size the memory budget is computed with.
const _: () = assert!(std::mem::size_of::<Entry>() == 73);

impl Entry {
    fn prev(&self) -> u32 {
        u32::from_ne_bytes(self.prev)
    }
    fn next(&self) -> u32 {
        u32::from_ne_bytes(self.next)
    }
}

fn hash(key: &OffloadKey) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = foldhash::fast::FixedState::with_seed(0x6b76_7469_6572_6673).build_hasher();
    h.write(key.as_bytes());
    h.finish()
}

/// Blocks on disk, least recently used first. See the module docs.
pub struct BlockIndex {
    chunks: Vec<Box<[Entry]>>,
    /// Entries ever handed out (the slab's high-water mark).
    used: u32,
    /// Head of the free list.
    free: u32,
    table: HashTable<u32>,
    /// Least recently used.
    head: u32,
    /// Most recently used.
    tail: u32,
}

impl std::fmt::Debug for BlockIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockIndex").field("len", &self.len()).finish_non_exhaustive()
    }
}

impl Default for BlockIndex {
    fn default() -> Self {
        BlockIndex { chunks: Vec::new(), used: 0, free: NIL, table: HashTable::new(), head: NIL, tail: NIL }
    }
}

impl BlockIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&self, i: u32) -> &Entry {
        &self.chunks[i as usize / CHUNK][i as usize % CHUNK]
    }

    fn entry_mut(&mut self, i: u32) -> &mut Entry {
        &mut self.chunks[i as usize / CHUNK][i as usize % CHUNK]
    }

    fn find(&self, key: &OffloadKey) -> Option<u32> {
        self.table.find(hash(key), |&i| self.entry(i).key == *key).copied()
    }

    /// Blocks in the index.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when no block is indexed.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Is `key` indexed?
    pub fn contains(&self, key: &OffloadKey) -> bool {
        self.find(key).is_some()
    }

    /// Takes `i` out of the recency list.
    fn unlink(&mut self, i: u32) {
        let (prev, next) = (self.entry(i).prev(), self.entry(i).next());
        match prev {
            NIL => self.head = next,
            p => self.entry_mut(p).next = next.to_ne_bytes(),
        }
        match next {
            NIL => self.tail = prev,
            n => self.entry_mut(n).prev = prev.to_ne_bytes(),
        }
    }

    /// Appends `i` at the most recently used end.
    fn push_back(&mut self, i: u32) {
        let tail = self.tail;
        let e = self.entry_mut(i);
        e.prev = tail.to_ne_bytes();
        e.next = NIL.to_ne_bytes();
        match tail {
            NIL => self.head = i,
            t => self.entry_mut(t).next = i.to_ne_bytes(),
        }
        self.tail = i;
    }

    /// A free entry holding `key`.
    fn allocate(&mut self, key: OffloadKey) -> u32 {
        let i = match self.free {
            NIL => {
                let i = self.used;
                assert!(i < NIL, "an index holds fewer than u32::MAX blocks");
                if i as usize == self.chunks.len() * CHUNK {
                    let blank = Entry { key, prev: [0; 4], next: [0; 4] };
                    self.chunks.push(vec![blank; CHUNK].into_boxed_slice());
                }
                self.used += 1;
                i
            }
            i => {
                self.free = self.entry(i).next();
                i
            }
        };
        self.entry_mut(i).key = key;
        i
    }

    /// Indexes `key` as the most recently used block (it may already be there).
    pub fn insert(&mut self, key: OffloadKey) {
        if let Some(i) = self.find(&key) {
            self.unlink(i);
            self.push_back(i);
            return;
        }
        let i = self.allocate(key);
        self.push_back(i);
        let chunks = &self.chunks;
        self.table.insert_unique(hash(&key), i, |&j| hash(&chunks[j as usize / CHUNK][j as usize % CHUNK].key));
    }

    /// Indexes `key`, which is not indexed yet, as the most recently used block; returns its
    /// entry number (for [`reorder`](Self::reorder)), or `None` if it was indexed already.
    pub fn insert_new(&mut self, key: OffloadKey) -> Option<u32> {
        if self.contains(&key) {
            return None;
        }
        self.insert(key);
        Some(self.tail)
    }

    /// Puts every indexed block in recency order by `stamps` (entry numbers from
    /// [`insert_new`](Self::insert_new) with a stamp each, e.g. a file's modification time):
    /// least recent first, equal stamps by key, so the order depends only on the stamps and
    /// the keys. `stamps` must name every indexed entry exactly once.
    pub fn reorder(&mut self, stamps: &mut [(u64, u32)]) {
        debug_assert_eq!(stamps.len(), self.len(), "every entry gets a stamp");
        stamps.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| self.entry(a.1).key.cmp(&self.entry(b.1).key)));
        (self.head, self.tail) = (NIL, NIL);
        for &(_, i) in stamps.iter() {
            self.push_back(i);
        }
    }

    /// Marks `key` as the most recently used block, if it is indexed.
    pub fn touch(&mut self, key: &OffloadKey) {
        if let Some(i) = self.find(key) {
            self.unlink(i);
            self.push_back(i);
        }
    }

    /// Drops entry `i` (already out of the table).
    fn release(&mut self, i: u32) {
        self.unlink(i);
        let free = self.free;
        let e = self.entry_mut(i);
        e.key = OffloadKey::new(&[], 0).expect("an empty hash is a key");
        e.next = free.to_ne_bytes();
        self.free = i;
    }

    /// Drops `key`; false if it was not indexed.
    pub fn remove(&mut self, key: &OffloadKey) -> bool {
        let chunks = &self.chunks;
        let found = self.table.find_entry(hash(key), |&i| chunks[i as usize / CHUNK][i as usize % CHUNK].key == *key);
        match found {
            Ok(slot) => {
                let (i, _) = slot.remove();
                self.release(i);
                true
            }
            Err(_) => false,
        }
    }

    /// Every indexed block, least recently used first.
    pub fn keys_by_recency(&self) -> impl Iterator<Item = OffloadKey> + '_ {
        let mut at = self.head;
        std::iter::from_fn(move || {
            if at == NIL {
                return None;
            }
            let e = self.entry(at);
            at = e.next();
            Some(e.key)
        })
    }

    /// The least recently used block that `busy` does not hold, removed from the index.
    pub fn pop_victim(&mut self, busy: impl Fn(&OffloadKey) -> bool) -> Option<OffloadKey> {
        let mut at = self.head;
        while at != NIL {
            let e = *self.entry(at);
            if !busy(&e.key) {
                self.remove(&e.key);
                return Some(e.key);
            }
            at = e.next();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> OffloadKey {
        OffloadKey::new(&[i; 8], 0).unwrap()
    }

    #[test]
    fn victims_come_least_recently_used_first_skipping_busy_blocks() {
        let mut index = BlockIndex::new();
        for i in 0..4 {
            index.insert(key(i));
        }
        index.touch(&key(0));
        index.insert(key(1)); // stored again: used now
        index.touch(&key(9)); // not indexed: nothing happens
        assert_eq!(index.len(), 4);
        assert_eq!(index.keys_by_recency().collect::<Vec<_>>(), [key(2), key(3), key(0), key(1)]);
        assert_eq!(index.pop_victim(|k| *k == key(2)), Some(key(3)));
        assert_eq!(index.pop_victim(|_| false), Some(key(2)));
        assert!(index.remove(&key(0)));
        assert!(!index.remove(&key(0)));
        assert_eq!(index.pop_victim(|k| *k == key(1)), None);
        assert_eq!(index.pop_victim(|_| false), Some(key(1)));
        assert!(index.is_empty());
        assert_eq!(index.keys_by_recency().count(), 0);
    }

    /// Removed entries are reused, and the list and the table stay consistent through any mix
    /// of inserts, touches and removals (checked against a naive model).
    #[test]
    fn entries_are_reused_and_the_order_matches_a_model() {
        let mut rng = crate::rng::SplitMix64::new(11);
        let mut index = BlockIndex::new();
        let mut model: Vec<OffloadKey> = Vec::new();
        for _ in 0..20_000 {
            let k = key(rng.below(64) as u8);
            match rng.below(4) {
                0 | 1 => {
                    index.insert(k);
                    model.retain(|m| *m != k);
                    model.push(k);
                }
                2 => {
                    index.touch(&k);
                    if let Some(p) = model.iter().position(|m| *m == k) {
                        model.remove(p);
                        model.push(k);
                    }
                }
                _ => {
                    let had = model.iter().position(|m| *m == k).map(|p| model.remove(p)).is_some();
                    assert_eq!(index.remove(&k), had);
                }
            }
            assert_eq!(index.len(), model.len());
        }
        assert_eq!(index.keys_by_recency().collect::<Vec<_>>(), model);
        assert!(index.used as usize <= 64, "freed entries are reused");
    }

    #[test]
    fn a_scan_orders_by_stamp_then_key() {
        let mut index = BlockIndex::new();
        let mut stamps = Vec::new();
        for (i, stamp) in [(5u8, 30u64), (1, 10), (4, 20), (2, 20), (3, 0)] {
            stamps.push((stamp, index.insert_new(key(i)).unwrap()));
        }
        assert_eq!(index.insert_new(key(5)), None);
        index.reorder(&mut stamps);
        assert_eq!(index.keys_by_recency().collect::<Vec<_>>(), [key(3), key(1), key(2), key(4), key(5)]);
        assert_eq!(index.pop_victim(|_| false), Some(key(3)));
    }
}
