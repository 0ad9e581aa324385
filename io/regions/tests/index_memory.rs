//! The index costs at most 48 bytes per block, counted by a global allocator that tracks the
//! bytes live on the heap: for the slots of a 100 GiB device of 64 KiB blocks, empty, full,
//! and after every slot was reused many times (the table never grows). The whole engine's
//! per-region state is counted too, on a sparse 100 GiB device file.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use kvtier_core::OffloadKey;
use kvtier_fs::region::PrimaryRegion;
use kvtier_regions::geometry::Geometry;
use kvtier_regions::index::Index;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: the caller's contract for `dealloc` is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::SeqCst);
        // SAFETY: as for `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::SeqCst)
}

fn key(i: u64) -> OffloadKey {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&i.to_le_bytes());
    OffloadKey::new(&h, (i % 4) as u32).unwrap()
}

// One test, so no other test's allocations run concurrently with the counts.
#[test]
fn at_most_48_bytes_per_block() {
    let g = Geometry::new(100 << 30, 16 << 20, 64 << 10).unwrap();
    let slots = g.slots();
    let before = live();
    let mut index = Index::new(slots);
    let empty = live() - before;
    for s in 0..slots {
        index.insert(&key(u64::from(s)), s);
    }
    let full = live() - before;
    // Every slot reused three more times.
    for round in 1..4u64 {
        for s in 0..slots {
            index.remove_slot(s);
            index.insert(&key(round * u64::from(slots) + u64::from(s)), s);
        }
    }
    let churned = live() - before;
    let per_block = full as f64 / f64::from(slots);
    let reported = index.allocated_bytes();
    drop(index);
    let freed = live() == before;
    println!(
        "index of {slots} blocks (100 GiB of 64 KiB blocks): {empty} bytes empty, {full} full, {churned} after \
         churn: {per_block:.1} bytes per block (reported by the index: {reported})"
    );
    assert!(freed, "everything is freed");
    assert_eq!(empty, full, "filling allocates nothing");
    assert_eq!(full, churned, "churn allocates nothing");
    assert!(per_block <= 48.0, "{per_block:.1} bytes per block");
    let reported = reported as f64;
    assert!((reported - full as f64).abs() / (full as f64) < 0.01, "allocated_bytes {reported} vs counted {full}");

    // The whole engine on a sparse 100 GiB file: its index and its per-region state.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev");
    std::fs::File::create(&path).unwrap().set_len(g.capacity).unwrap();
    let region = Arc::new(PrimaryRegion::anonymous(1, 64 << 10).unwrap());
    let run = kvtier_fs::namespace::RunConfig::default();
    let mut cfg = kvtier_regions::RegionsTierConfig::new(&path, g.capacity, run);
    cfg.o_direct = kvtier_fs::direct::DirectMode::Off;
    let exec_region = Arc::clone(&region);
    let before = live();
    let tier = kvtier_regions::RegionsTier::open(&cfg, 64 << 10, move |_| {
        let config = kvtier_io_threaded::ThreadedConfig {
            read_workers: 1,
            write_workers: 1,
            ..kvtier_io_threaded::ThreadedConfig::default()
        };
        Ok(Box::new(kvtier_io_threaded::ThreadedExecutor::new(exec_region, config)?) as Box<dyn kvtier_fs::Executor>)
    })
    .unwrap();
    let engine = live() - before;
    let per_block = engine as f64 / f64::from(slots);
    println!(
        "the engine over 100 GiB ({} regions, {slots} slots), its executor included: {engine} bytes, {per_block:.1} \
         per block; open took {:?}",
        g.regions,
        tier.recovery().duration
    );
    assert!(per_block <= 48.0, "{per_block:.1} bytes per block");
    drop(tier);
}
