//! The one place the pool takes its synchronisation types from.
//!
//! Normally these are `std::sync`'s `Mutex`, `Condvar` and `Arc` and `std::thread`. Built with
//! `RUSTFLAGS="--cfg loom"` they are [loom](https://docs.rs/loom)'s instrumented replacements,
//! so the queue, parking and shutdown logic of [`crate::pool`] is model-checked as it is,
//! without a copy (see `tests/loom_pool.rs`). The same shim as `kvtier_core::sync`.
//!
//! The helpers below recover poisoned locks (every critical section of the pool leaves its data
//! consistent: pushes and pops only) and give both implementations one API for waiting on a
//! condition variable while a predicate holds. Under loom, a timed wait never times out (loom
//! does not model time): it waits for the predicate like an untimed one.
//!
//! Loom's types can only be created inside a model: under `--cfg loom`, only the loom models
//! may build a [`crate::pool::Pool`] (an executor built there would panic).

#[cfg(loom)]
mod imp {
    pub use loom::sync::{Arc, Condvar, Mutex, MutexGuard};

    /// `std::thread` normally, loom's instrumented threads under `--cfg loom`.
    pub mod thread {
        pub use loom::thread::{spawn, yield_now, JoinHandle};
    }

    /// Runs `f` under loom's model checker, once per explored interleaving.
    pub fn model<F>(f: F)
    where
        F: Fn() + Sync + Send + 'static,
    {
        loom::model(f)
    }

    /// Waits on `cv` while `condition` holds.
    pub fn wait_while<'a, T>(
        cv: &Condvar,
        mut guard: MutexGuard<'a, T>,
        mut condition: impl FnMut(&mut T) -> bool,
    ) -> MutexGuard<'a, T> {
        while condition(&mut *guard) {
            guard = cv.wait(guard).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        guard
    }

    /// Waits on `cv` while `condition` holds; loom does not model time, so this never times
    /// out.
    pub fn wait_timeout_while<'a, T>(
        cv: &Condvar,
        guard: MutexGuard<'a, T>,
        _limit: std::time::Duration,
        condition: impl FnMut(&mut T) -> bool,
    ) -> MutexGuard<'a, T> {
        wait_while(cv, guard, condition)
    }
}

#[cfg(not(loom))]
mod imp {
    pub use std::sync::{Arc, Condvar, Mutex, MutexGuard};

    /// `std::thread` normally, loom's instrumented threads under `--cfg loom`.
    pub mod thread {
        pub use std::thread::{spawn, yield_now, JoinHandle};
    }

    /// Runs `f` once: the stand-in for `loom::model` in ordinary builds, so that every loom model
    /// also runs as a plain test.
    pub fn model<F>(f: F)
    where
        F: Fn() + Sync + Send + 'static,
    {
        f()
    }

    /// Waits on `cv` while `condition` holds.
    pub fn wait_while<'a, T>(
        cv: &Condvar,
        guard: MutexGuard<'a, T>,
        condition: impl FnMut(&mut T) -> bool,
    ) -> MutexGuard<'a, T> {
        cv.wait_while(guard, condition).unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits on `cv` while `condition` holds, at most `limit`.
    pub fn wait_timeout_while<'a, T>(
        cv: &Condvar,
        guard: MutexGuard<'a, T>,
        limit: std::time::Duration,
        condition: impl FnMut(&mut T) -> bool,
    ) -> MutexGuard<'a, T> {
        cv.wait_timeout_while(guard, limit, condition).unwrap_or_else(std::sync::PoisonError::into_inner).0
    }
}

pub use imp::{model, thread, wait_timeout_while, wait_while, Arc, Condvar, Mutex, MutexGuard};

/// Locks `m`, recovering it if a panic poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits on `cv` once (a notification or, normally, a spurious wake-up), recovering a poisoned
/// lock.
pub fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(std::sync::PoisonError::into_inner)
}
