//! The one place core takes its synchronisation types from.
//!
//! Normally these are `core::sync::atomic` and `alloc::sync::Arc`. When the crate is built with
//! `RUSTFLAGS="--cfg loom"` they are [loom](https://docs.rs/loom)'s instrumented replacements, so
//! the lock-free code in [`crate::jobs`] can be model-checked without changing a line of it.
//!
//! [`model`] runs a test body: under loom it is `loom::model`, which explores every interleaving
//! of the threads the body spawns; otherwise it calls the body once. A test written as
//! `sync::model(|| { ... })` therefore runs as a plain test normally and as a loom model under
//! `--cfg loom`. Core is `no_std`, so the matching `thread` shim (`loom::thread` versus
//! `std::thread`) lives in the tests themselves (see `core/tests/loom_jobs.rs`).
//!
//! Note that loom's atomics cannot be created in `const` context nor outside a model: code that
//! uses this module creates its atomics at run time only.

#[cfg(loom)]
mod imp {
    pub use loom::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
    pub use loom::sync::Arc;

    /// Runs `f` under loom's model checker, once per explored interleaving.
    pub fn model<F>(f: F)
    where
        F: Fn() + Sync + Send + 'static,
    {
        loom::model(f)
    }
}

#[cfg(not(loom))]
mod imp {
    pub use alloc::sync::Arc;
    pub use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

    /// Runs `f` once: the stand-in for `loom::model` in ordinary builds, so that every loom model
    /// also runs as a plain test.
    pub fn model<F>(f: F)
    where
        F: Fn() + Sync + Send + 'static,
    {
        f()
    }
}

pub use imp::{model, Arc, AtomicU32, AtomicUsize, Ordering};
