//! ENOSPC on a small loop-mounted ext4 image: stores fail cleanly (`Failed`, no temp file, no
//! torn file published), every published block loads back intact, and once space is freed,
//! stores succeed again. Skipped (with a message) where a loop device cannot be mounted (it
//! needs root, `mkfs.ext4` and loop devices).

use std::fs;
use std::sync::Arc;

use kvtier_core::Direction;
use kvtier_fs::conformance::TestOp;
use kvtier_fs::conformance::{self, block, block_path, fill, native, op, pattern, temp_files, LoopMount};
use kvtier_fs::{Executor, Outcome};
use kvtier_io_uring::{UringConfig, UringExecutor};

#[test]
fn enospc_fails_cleanly_and_recovers() {
    const ROW: usize = 64 << 10;
    let dir = conformance::scratch_dir();
    let Some(mnt) = LoopMount::new(dir.path(), 8) else { return };
    let root = mnt.mount.join("kv");
    let o_direct = kvtier_fs::direct::probe_o_direct(&mnt.mount).unwrap();
    let region = conformance::region(32, ROW);
    let mut exec = UringExecutor::new(Arc::clone(&region), UringConfig { o_direct, ..UringConfig::default() }).unwrap();
    for slot in 0..16 {
        fill(&region, slot, u64::from(slot), slot % 2 == 1);
    }
    // 8 MiB, 68 KiB per native block file: fill it up, 16 stores at a time.
    let store = |i: u64| -> TestOp { op(i, Direction::Store, (i % 16) as u32, &block_path(&root, i), native(i)) };
    let mut published = Vec::new();
    let mut enospc = 0;
    let mut i = 0;
    while enospc == 0 && i < 4096 {
        for (t, o) in conformance::run_ops(&mut exec, (i..i + 16).map(store).collect()) {
            match o {
                Outcome::Ok => published.push(t),
                Outcome::Failed(e) if e.raw_os_error() == Some(libc::ENOSPC) => enospc += 1,
                o => panic!("store {t}: {o:?}"),
            }
        }
        i += 16;
    }
    assert!(enospc > 0, "the image never filled up ({i} blocks stored)");
    eprintln!("{} blocks published, {enospc} stores failed with ENOSPC", published.len());
    assert!(temp_files(&root).is_empty(), "no temp file may remain after ENOSPC: {:?}", temp_files(&root));
    // Every published file is complete and loads back intact.
    for &t in &published {
        let o = conformance::run_one(&mut exec, op(100_000 + t, Direction::Load, 16, &block_path(&root, t), native(t)));
        assert!(o.is_ok(), "load of published block {t}: {o:?}");
        assert!(block(&region, 16) == pattern(t % 16, ROW), "block {t} differs");
    }
    // Free space: the same stores now succeed.
    for &t in &published[..published.len() / 2] {
        fs::remove_file(block_path(&root, t)).unwrap();
    }
    for (t, o) in conformance::run_ops(&mut exec, (i..i + 16).map(store).collect()) {
        assert!(o.is_ok(), "store {t} after freeing space: {o:?}");
    }
    assert!(temp_files(&root).is_empty());
    exec.shutdown();
}
