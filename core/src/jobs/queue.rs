//! The queue finished jobs wait in for the poller: a bounded lock-free queue of `u32` entry
//! indices, pushed by whichever thread finishes a job's last part and popped by the poller.
//!
//! Dmitry Vyukov's bounded multi-producer multi-consumer queue, built from atomics only (no
//! `unsafe`, no `UnsafeCell`); [`super::JobTable`] uses it with one consumer, its poller. The
//! atomics come from [`crate::sync`], so loom model-checks this code as it is
//! (`core/tests/loom_jobs.rs`).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

use crate::sync::{AtomicU32, AtomicUsize, Ordering};

/// One slot of a [`CompletionQueue`].
struct Cell {
    /// Position this cell is ready for: `pos` when free for the push at `pos`, `pos + 1` when it
    /// holds the value pushed at `pos`.
    sequence: AtomicUsize,
    /// The value; written before and read after the `sequence` hand-over, so `Relaxed` suffices.
    value: AtomicU32,
}

/// Bounded lock-free multi-producer multi-consumer queue of `u32`: Dmitry Vyukov's bounded queue,
/// built from atomics only (no `unsafe`, no `UnsafeCell`).
///
/// Each cell carries a `sequence` number saying which position it is ready for, so producers
/// and consumers claim positions with one CAS on `enqueue_pos` / `dequeue_pos` and hand a cell
/// over with one `Release` store of its sequence.
///
/// * [`push`](Self::push) and [`pop`](Self::pop) never block and never allocate; only
///   [`new`](Self::new) allocates.
/// * Values come out in the order their positions were claimed. A push that has claimed its
///   position but not yet written its cell hides the values pushed after it from `pop` until it
///   finishes (`pop` returns `None` meanwhile); nothing is lost, a later `pop` returns them.
/// * Positions are `usize` counters compared with wrapping arithmetic; as the capacity is a power
///   of two they stay consistent when the counters wrap around.
pub struct CompletionQueue {
    cells: Box<[Cell]>,
    /// `capacity - 1`.
    mask: usize,
    enqueue_pos: AtomicUsize,
    dequeue_pos: AtomicUsize,
}

impl CompletionQueue {
    /// A queue holding at least `capacity` values: the capacity is rounded up to a power of two,
    /// and to at least 2 (Vyukov's scheme cannot tell a full one-cell queue from an empty one).
    ///
    /// # Panics
    ///
    /// If the rounded capacity does not fit in a `usize`.
    pub fn new(capacity: usize) -> Self {
        Self::with_start_pos(capacity, 0)
    }

    /// [`new`](Self::new), with both positions starting at `start` (a multiple of the rounded
    /// capacity). Tests use a `start` near `usize::MAX` to make the positions wrap around.
    fn with_start_pos(capacity: usize, start: usize) -> Self {
        let capacity = capacity.max(2).checked_next_power_of_two().expect("CompletionQueue capacity overflows usize");
        debug_assert_eq!(start & (capacity - 1), 0);
        let cells = (0..capacity)
            .map(|i| Cell { sequence: AtomicUsize::new(start.wrapping_add(i)), value: AtomicU32::new(0) })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        CompletionQueue {
            cells,
            mask: capacity - 1,
            enqueue_pos: AtomicUsize::new(start),
            dequeue_pos: AtomicUsize::new(start),
        }
    }

    /// Number of values the queue holds when full.
    pub fn capacity(&self) -> usize {
        self.cells.len()
    }

    /// Appends `value`; never blocks.
    ///
    /// # Errors
    ///
    /// `Err(value)`, handing `value` back, if the cell for the next position still holds a value
    /// not yet (completely) popped: the queue is full.
    pub fn push(&self, value: u32) -> Result<(), u32> {
        let mut pos = self.enqueue_pos.load(Ordering::Relaxed);
        loop {
            let cell = &self.cells[pos & self.mask];
            let seq = cell.sequence.load(Ordering::Acquire);
            // Signed distance; wrapping keeps it right when the counters wrap around.
            let dif = seq.wrapping_sub(pos) as isize;
            if dif == 0 {
                // The cell is free for position `pos`: claim the position.
                match self.enqueue_pos.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        cell.value.store(value, Ordering::Relaxed);
                        cell.sequence.store(pos.wrapping_add(1), Ordering::Release);
                        return Ok(());
                    }
                    Err(actual) => pos = actual,
                }
            } else if dif < 0 {
                // The cell still holds the value pushed one lap ago.
                return Err(value);
            } else {
                // Another producer claimed `pos`; the `Acquire` above makes this load see it.
                pos = self.enqueue_pos.load(Ordering::Relaxed);
            }
        }
    }

    /// Removes the oldest value, or returns `None` if there is none ready; never blocks.
    pub fn pop(&self) -> Option<u32> {
        let mut pos = self.dequeue_pos.load(Ordering::Relaxed);
        loop {
            let cell = &self.cells[pos & self.mask];
            let seq = cell.sequence.load(Ordering::Acquire);
            let dif = seq.wrapping_sub(pos.wrapping_add(1)) as isize;
            if dif == 0 {
                // The cell holds the value pushed at `pos`: claim the position.
                match self.dequeue_pos.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        let value = cell.value.load(Ordering::Relaxed);
                        // Free the cell for the push one lap later.
                        cell.sequence.store(pos.wrapping_add(self.mask).wrapping_add(1), Ordering::Release);
                        return Some(value);
                    }
                    Err(actual) => pos = actual,
                }
            } else if dif < 0 {
                // Nothing pushed (or not yet written) at `pos`.
                return None;
            } else {
                // Another consumer claimed `pos`; the `Acquire` above makes this load see it.
                pos = self.dequeue_pos.load(Ordering::Relaxed);
            }
        }
    }
}

impl fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionQueue").field("capacity", &self.capacity()).finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    extern crate std;

    use super::*;
    use alloc::vec::Vec;
    use std::sync::Arc;

    #[test]
    fn queue_capacity_rounds_up_to_power_of_two_at_least_two() {
        for (asked, got) in [(0, 2), (1, 2), (2, 2), (3, 4), (4, 4), (5, 8), (1000, 1024)] {
            assert_eq!(CompletionQueue::new(asked).capacity(), got, "asked {asked}");
        }
    }

    #[test]
    fn queue_fifo_full_and_empty() {
        let q = CompletionQueue::new(4);
        assert_eq!(q.pop(), None);
        for v in 10..14 {
            assert_eq!(q.push(v), Ok(()));
        }
        assert_eq!(q.push(99), Err(99));
        assert_eq!(q.pop(), Some(10));
        assert_eq!(q.push(14), Ok(()));
        assert_eq!(q.push(15), Err(15));
        for v in 11..15 {
            assert_eq!(q.pop(), Some(v));
        }
        assert_eq!(q.pop(), None);
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn queue_many_laps() {
        let q = CompletionQueue::new(2);
        let mut next_push = 0u32;
        let mut next_pop = 0u32;
        // Positions go round the two cells thousands of times, at varying fill levels.
        // Miri interprets every atomic step: fewer rounds there.
        let rounds: u32 = if cfg!(miri) { 200 } else { 10_000 };
        for round in 0..rounds {
            for _ in 0..(round % 3) {
                match q.push(next_push) {
                    Ok(()) => next_push += 1,
                    Err(v) => assert_eq!(v, next_push),
                }
            }
            for _ in 0..((round + 1) % 3) {
                if let Some(v) = q.pop() {
                    assert_eq!(v, next_pop);
                    next_pop += 1;
                }
            }
            assert!(next_push - next_pop <= 2);
        }
        while let Some(v) = q.pop() {
            assert_eq!(v, next_pop);
            next_pop += 1;
        }
        assert_eq!(next_pop, next_push);
        assert!(next_push > rounds / 2);
    }

    #[test]
    fn queue_positions_wrap_around_usize() {
        for capacity in [2, 4, 8] {
            let start = 0usize.wrapping_sub(3 * capacity);
            let q = CompletionQueue::with_start_pos(capacity, start);
            let mut expected = 0u32;
            let mut pushed = 0u32;
            // Fill and drain ten times: the positions cross usize::MAX -> 0 on the way.
            for _ in 0..10 {
                for _ in 0..capacity {
                    assert_eq!(q.push(pushed), Ok(()));
                    pushed += 1;
                }
                assert_eq!(q.push(u32::MAX), Err(u32::MAX));
                for _ in 0..capacity {
                    assert_eq!(q.pop(), Some(expected));
                    expected += 1;
                }
                assert_eq!(q.pop(), None);
            }
            // Half-full across the wrap as well.
            let q = CompletionQueue::with_start_pos(capacity, 0usize.wrapping_sub(capacity));
            for v in 0..(capacity as u32 * 5) {
                assert_eq!(q.push(v), Ok(()));
                if v % 2 == 1 {
                    assert_eq!(q.pop(), Some(v - 1));
                    assert_eq!(q.pop(), Some(v));
                }
            }
            assert_eq!(q.pop(), None);
            assert!(q.enqueue_pos.load(Ordering::Relaxed) < start);
        }
    }

    #[test]
    fn queue_concurrent_producers_and_consumers() {
        // Values are `producer * 10_000 + i`; miri interprets every atomic step: fewer there.
        const PER_PRODUCER: u32 = if cfg!(miri) { 100 } else { 5000 };
        let q = Arc::new(CompletionQueue::new(8));
        let producers: Vec<_> = (0..4u32)
            .map(|t| {
                let q = Arc::clone(&q);
                std::thread::spawn(move || {
                    for i in 0..PER_PRODUCER {
                        let mut v = t * 10_000 + i;
                        while let Err(back) = q.push(v) {
                            v = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let q = Arc::clone(&q);
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while got.len() < 2 * PER_PRODUCER as usize {
                        match q.pop() {
                            Some(v) => got.push(v),
                            None => std::thread::yield_now(),
                        }
                    }
                    got
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        let mut all: Vec<u32> = Vec::new();
        for c in consumers {
            let got = c.join().unwrap();
            // Each producer's values reach a consumer in the order they were pushed.
            for t in 0..4 {
                let mine: Vec<u32> = got.iter().copied().filter(|v| v / 10_000 == t).collect();
                assert!(mine.windows(2).all(|w| w[0] < w[1]));
            }
            all.extend(got);
        }
        all.sort_unstable();
        let expected: Vec<u32> = (0..4u32).flat_map(|t| (0..PER_PRODUCER).map(move |i| t * 10_000 + i)).collect();
        assert_eq!(all, expected);
        assert_eq!(q.pop(), None);
    }
}
