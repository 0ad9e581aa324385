//! Dropping the executor with operations in flight: no panic, every lease released afterwards
//! (so the kernel is done with every row), no temp file left, every published file complete.
//! Rows are large (1 MiB) so that many transfers are still in the kernel when the drop starts,
//! and the directories do not exist yet, so stores are caught in every phase (directory
//! creation, write, rename).

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use kvtier_core::Direction;
use kvtier_core::SlotId;
use kvtier_fs::conformance::Tracker;
use kvtier_fs::conformance::{self, block_path, fill, native, op, pattern, temp_files, NAMESPACE};
use kvtier_fs::format::{self, HEADER_LEN};
use kvtier_fs::region::Access;
use kvtier_fs::{Executor, Wait};
use kvtier_io_uring::{UringConfig, UringExecutor};

const ROW: usize = 1 << 20;
const N: u64 = 96;

fn run(delay: Option<Duration>, config: UringConfig) {
    let dir = conformance::scratch_dir();
    let region = conformance::region(2 * N as usize, ROW);
    for i in 0..N {
        fill(&region, i as u32, i, false);
    }
    let mut exec = UringExecutor::new(Arc::clone(&region), config.clone()).unwrap();
    // Half the blocks first, so loads have something to read.
    let stores = (0..N / 2).map(|i| op(i, Direction::Store, i as u32, &block_path(dir.path(), i), native(i))).collect();
    conformance::run_ops(&mut exec, stores);
    let mut tracker = Tracker::new();
    let mut tokens = Vec::new();
    for i in 0..N / 2 {
        let j = N / 2 + i;
        let load = op(N + i, Direction::Load, (N + i) as u32, &block_path(dir.path(), i), native(i));
        let store = op(j, Direction::Store, j as u32, &block_path(&dir.path().join("new"), j), native(j));
        for o in [load, store] {
            tokens.push(o.token);
            tracker.submit(&mut exec, o).unwrap();
        }
    }
    if let Some(d) = delay {
        std::thread::sleep(d);
        let _ = exec.poll(Wait::No);
    }
    drop(exec);
    // Every op was reported, exactly once, by the time the drop returned.
    let mut done = Vec::new();
    tracker.take(&mut done);
    conformance::collect(done, &tokens);
    for slot in 0..2 * N as u32 {
        assert!(region.lease(SlotId(slot), Access::Write).is_ok(), "slot {slot} still leased after drop");
    }
    assert!(temp_files(dir.path()).is_empty(), "temp files left: {:?}", temp_files(dir.path()));
    let mut published = 0;
    for (root, range) in [(dir.path().to_path_buf(), 0..N / 2), (dir.path().join("new"), N / 2..N)] {
        for i in range {
            if let Ok(bytes) = fs::read(block_path(&root, i)) {
                let header = format::decode_header(&bytes).expect("a published file is complete");
                header
                    .check(&NAMESPACE, &conformance::key(i), &bytes[HEADER_LEN..HEADER_LEN + ROW])
                    .expect("and right");
                published += 1;
            }
        }
    }
    // Loads that ran before the drop filled their rows completely or not at all is not
    // promised (a dropped load may have read part of its block); the stores' sources are
    // untouched.
    for i in 0..N {
        let row = conformance::block(&region, i as u32);
        assert!(row == pattern(i, ROW), "a store modified its source row {i}");
    }
    eprintln!("drop after {delay:?}: {published} files published");
}

#[test]
fn drop_right_after_submitting() {
    let o_direct = kvtier_fs::direct::probe_o_direct(conformance::scratch_dir().path()).unwrap();
    run(None, UringConfig { o_direct, ..UringConfig::default() });
}

#[test]
fn drop_midway() {
    let o_direct = kvtier_fs::direct::probe_o_direct(conformance::scratch_dir().path()).unwrap();
    for ms in [1, 5, 20] {
        run(Some(Duration::from_millis(ms)), UringConfig { o_direct, ..UringConfig::default() });
    }
}

#[test]
fn drop_with_a_queue_behind_a_small_ring() {
    run(None, UringConfig { max_ops: 4, sq_entries: 8, ..UringConfig::default() });
}
