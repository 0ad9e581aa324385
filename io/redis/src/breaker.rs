//! A circuit breaker per node: after `threshold` consecutive connection failures or timeouts the
//! node is *open* (dead): work for it fails at once, on the scheduler thread, without touching
//! the network, so a dead server costs nothing per step. After a backoff (doubling from
//! `backoff_min` to `backoff_max`) one worker may try the node again (*half-open*); a success
//! closes the breaker, a failure opens it for the next, longer backoff.
//!
//! All state is atomics, read by the scheduler thread and written by the workers.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Milliseconds since the first call in this process (a monotonic clock as an integer).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One node's breaker.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    backoff_min: u64,
    backoff_max: u64,
    /// Consecutive failures.
    failures: AtomicU32,
    /// While open: the time (ms) from which one try is allowed; 0 when closed.
    retry_at: AtomicU64,
    /// The current backoff (ms).
    backoff: AtomicU64,
    /// Times the breaker opened.
    opened: AtomicU64,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, backoff_min: Duration, backoff_max: Duration) -> Breaker {
        let min = backoff_min.as_millis().max(1) as u64;
        Breaker {
            threshold,
            backoff_min: min,
            backoff_max: (backoff_max.as_millis() as u64).max(min),
            failures: AtomicU32::new(0),
            retry_at: AtomicU64::new(0),
            backoff: AtomicU64::new(min),
            opened: AtomicU64::new(0),
        }
    }

    /// True while the node is considered dead and its backoff has not run out: work for it
    /// fails without trying.
    pub fn is_open(&self) -> bool {
        let at = self.retry_at.load(Ordering::Acquire);
        at != 0 && now_ms() < at
    }

    /// May a worker try the node now? Closed: yes. Open with the backoff run out: yes for one
    /// caller (the half-open try), which pushes the next try a backoff further.
    pub fn allow(&self) -> bool {
        let at = self.retry_at.load(Ordering::Acquire);
        if at == 0 {
            return true;
        }
        let now = now_ms();
        if now < at {
            return false;
        }
        let next = now + self.backoff.load(Ordering::Relaxed);
        self.retry_at.compare_exchange(at, next, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// The node answered: close.
    pub fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.retry_at.swap(0, Ordering::AcqRel) != 0 {
            self.backoff.store(self.backoff_min, Ordering::Relaxed);
        }
    }

    /// A connection failed or timed out: opens the breaker at the threshold (and doubles the
    /// backoff each time it fails again while open).
    pub fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if n < self.threshold {
            return;
        }
        let was_open = self.retry_at.load(Ordering::Acquire) != 0;
        let backoff = if was_open {
            let b = (self.backoff.load(Ordering::Relaxed) * 2).min(self.backoff_max);
            self.backoff.store(b, Ordering::Relaxed);
            b
        } else {
            self.opened.fetch_add(1, Ordering::Relaxed);
            self.backoff.load(Ordering::Relaxed)
        };
        self.retry_at.store(now_ms() + backoff, Ordering::Release);
    }

    /// Times the breaker opened.
    pub fn times_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_at_the_threshold_and_lets_one_try_through_after_the_backoff() {
        let b = Breaker::new(2, Duration::from_millis(300), Duration::from_millis(600));
        b.failure();
        assert!(!b.is_open() && b.allow(), "below the threshold");
        b.failure();
        assert!(b.is_open() && !b.allow());
        assert_eq!(b.times_opened(), 1);
        std::thread::sleep(Duration::from_millis(350));
        assert!(!b.is_open());
        assert!(b.allow(), "one half-open try");
        assert!(!b.allow(), "only one");
        b.failure();
        assert!(b.is_open(), "the try failed: open again, for a longer backoff");
        std::thread::sleep(Duration::from_millis(650));
        assert!(b.allow());
        b.success();
        assert!(!b.is_open() && b.allow() && b.allow(), "closed");
    }
}
