//! The counting global allocator behind `bench core`'s allocations per operation. Only the
//! `kvtier-bench-core` binary installs it: every other subcommand runs on the system allocator
//! untouched (a shared atomic counter on every allocation would tax the I/O threads of
//! `simulate` and `bench fs`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// A global allocator that forwards to [`System`] and counts allocations (`alloc`,
/// `alloc_zeroed` and `realloc` calls) for [`allocations`]. Install it in the binary:
///
/// ```
/// #[global_allocator]
/// static ALLOC: kvtier_cli::bench::core::CountingAlloc = kvtier_cli::bench::core::CountingAlloc;
///
/// fn main() {
///     let before = kvtier_cli::bench::core::allocations();
///     let v = std::hint::black_box(vec![1u8; 10]);
///     assert!(kvtier_cli::bench::core::allocations() > before);
///     drop(v);
/// }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAlloc;

// SAFETY: every method forwards its arguments unchanged to `System`, so each upholds the
// `GlobalAlloc` contract exactly as `System` does; counting is a relaxed atomic add that neither
// allocates nor unwinds.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: our caller upholds `GlobalAlloc::alloc`'s contract, which is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: our caller upholds `GlobalAlloc::alloc_zeroed`'s contract, which is `System`'s.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, i.e. by `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`; the caller upholds the rest of
        // `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations made through [`CountingAlloc`] since the process started (0 when it is not the
/// global allocator).
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// True when [`CountingAlloc`] is this process's global allocator.
pub(super) fn counting_installed() -> bool {
    let before = allocations();
    drop(std::hint::black_box(Vec::<u8>::with_capacity(64)));
    allocations() > before
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)] // calls the allocator directly
    fn counting_alloc_counts() {
        let layout = Layout::from_size_align(48, 8).unwrap();
        let before = allocations();
        // SAFETY: `layout` has a non-zero size; the block is freed with the same layout.
        unsafe {
            let p = CountingAlloc.alloc(layout);
            assert!(!p.is_null());
            let p = CountingAlloc.realloc(p, layout, 96);
            assert!(!p.is_null());
            CountingAlloc.dealloc(p, Layout::from_size_align(96, 8).unwrap());
        }
        assert!(allocations() - before >= 2);
    }
}
