//! The order in which sealed regions are reclaimed: an intrusive doubly-linked list over
//! region numbers (no allocation after construction), least recent first. LRU moves a region
//! to the back when it is read from; FIFO never moves one.

const NIL: u32 = u32::MAX;

/// Sealed regions, the next victim first.
#[derive(Debug)]
pub struct Order {
    prev: Vec<u32>,
    next: Vec<u32>,
    listed: Vec<bool>,
    head: u32,
    tail: u32,
    len: usize,
}

impl Order {
    /// An empty list over `regions` regions.
    pub fn new(regions: u32) -> Order {
        let n = regions as usize;
        Order { prev: vec![NIL; n], next: vec![NIL; n], listed: vec![false; n], head: NIL, tail: NIL, len: 0 }
    }

    /// Regions listed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no region is listed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `r` is listed.
    pub fn contains(&self, r: u32) -> bool {
        self.listed[r as usize]
    }

    /// Lists `r` last (most recent); moves it there if it is listed.
    pub fn push_back(&mut self, r: u32) {
        self.remove(r);
        let i = r as usize;
        self.prev[i] = self.tail;
        self.next[i] = NIL;
        if self.tail == NIL {
            self.head = r;
        } else {
            self.next[self.tail as usize] = r;
        }
        self.tail = r;
        self.listed[i] = true;
        self.len += 1;
    }

    /// Unlists `r` (if listed).
    pub fn remove(&mut self, r: u32) {
        let i = r as usize;
        if !self.listed[i] {
            return;
        }
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.listed[i] = false;
        self.len -= 1;
    }

    /// The first region (the next victim) for which `take` says yes, unlisted.
    pub fn pop_first(&mut self, mut take: impl FnMut(u32) -> bool) -> Option<u32> {
        let mut r = self.head;
        while r != NIL {
            if take(r) {
                self.remove(r);
                return Some(r);
            }
            r = self.next[r as usize];
        }
        None
    }

    /// The listed regions, first to last.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        std::iter::successors((self.head != NIL).then_some(self.head), move |&r| {
            let n = self.next[r as usize];
            (n != NIL).then_some(n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_regions() {
        let mut o = Order::new(5);
        for r in [3, 1, 4] {
            o.push_back(r);
        }
        assert_eq!(o.iter().collect::<Vec<_>>(), [3, 1, 4]);
        o.push_back(3);
        assert_eq!(o.iter().collect::<Vec<_>>(), [1, 4, 3]);
        assert_eq!(o.pop_first(|r| r != 1), Some(4));
        assert_eq!((o.len(), o.contains(4), o.contains(1)), (2, false, true));
        o.remove(1);
        o.remove(1);
        assert_eq!(o.iter().collect::<Vec<_>>(), [3]);
        assert_eq!(o.pop_first(|_| true), Some(3));
        assert!(o.is_empty() && o.pop_first(|_| true).is_none());
    }
}
