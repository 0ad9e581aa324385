//! The simulated executor's faults, determinism and crashes, op by op.

use std::path::Path;
use std::sync::Arc;

use kvtier_core::Direction;
use kvtier_fs::conformance::{block, block_path, fill, native, op, pattern, region, run_one, run_ops, Tracker};
use kvtier_fs::vfs::Vfs;
use kvtier_fs::{BlockFormat, Executor, Outcome, Wait};
use kvtier_io_sim::{Faults, SimConfig, SimDisk, SimExecutor};

const ROOT: &str = "/t";

fn setup(config: SimConfig) -> (SimDisk, Arc<kvtier_fs::region::PrimaryRegion>, SimExecutor) {
    let disk = SimDisk::new(config.seed);
    disk.create_dir_all(Path::new(ROOT)).unwrap();
    let region = region(4, 8192);
    let exec = SimExecutor::new(Arc::clone(&region), disk.clone(), config);
    (disk, region, exec)
}

fn store(exec: &mut SimExecutor, region: &Arc<kvtier_fs::region::PrimaryRegion>, i: u64) -> Outcome {
    fill(region, 0, i, false);
    run_one(exec, op(i, Direction::Store, 0, &block_path(Path::new(ROOT), i), native(i)))
}

#[test]
fn emfile_and_eio_are_transient_and_keep_the_file() {
    let (disk, region, mut quiet) = setup(SimConfig::default());
    assert!(store(&mut quiet, &region, 1).is_ok());
    let path = block_path(Path::new(ROOT), 1);
    for faults in [Faults { emfile: 1_000_000, ..Faults::NONE }, Faults { eio: 1_000_000, ..Faults::NONE }] {
        let mut exec =
            SimExecutor::new(Arc::clone(&region), disk.clone(), SimConfig { faults, ..SimConfig::default() });
        let o = run_one(&mut exec, op(2, Direction::Load, 1, &path, native(1)));
        assert!(matches!(o, Outcome::Transient(_)), "{faults:?}: {o:?}");
        assert!(disk.is_file(&path), "a transient failure keeps the file");
        let o = store(&mut exec, &region, 3);
        assert!(matches!(o, Outcome::Transient(_) | Outcome::Failed(_)), "{o:?}");
        assert!(!disk.exists(&block_path(Path::new(ROOT), 3)));
    }
    assert!(run_one(&mut quiet, op(4, Direction::Load, 1, &path, native(1))).is_ok());
    assert!(block(&region, 1) == pattern(1, 8192));
    assert!(kvtier_fs::conformance::temp_files_on(&disk, Path::new(ROOT)).is_empty());
}

#[test]
fn enospc_fails_the_store_and_publishes_nothing() {
    let (disk, region, mut exec) =
        setup(SimConfig { faults: Faults { enospc: 1_000_000, ..Faults::NONE }, ..SimConfig::default() });
    let o = store(&mut exec, &region, 1);
    assert!(matches!(&o, Outcome::Failed(e) if e.raw_os_error() == Some(libc::ENOSPC)), "{o:?}");
    assert!(disk.files().is_empty());
    assert_eq!(exec.stats().enospc, 1);
}

#[test]
fn bit_flips_and_short_reads_are_corrupt_in_the_native_format() {
    for faults in [Faults { bit_flip: 1_000_000, ..Faults::NONE }, Faults { short_read: 1_000_000, ..Faults::NONE }] {
        let (disk, region, mut quiet) = setup(SimConfig::default());
        assert!(store(&mut quiet, &region, 1).is_ok());
        let path = block_path(Path::new(ROOT), 1);
        let mut exec =
            SimExecutor::new(Arc::clone(&region), disk.clone(), SimConfig { faults, ..SimConfig::default() });
        let o = run_one(&mut exec, op(2, Direction::Load, 1, &path, native(1)));
        assert!(matches!(o, Outcome::Corrupt(_)), "{faults:?}: {o:?}");
        assert!(!disk.exists(&path), "the executor removes what it read as corrupt");
    }
}

#[test]
fn misaligned_direct_transfers_are_einval_when_strict() {
    let strict = SimConfig { o_direct: true, strict_direct: true, ..SimConfig::default() };
    let disk = SimDisk::new(0);
    disk.create_dir_all(Path::new(ROOT)).unwrap();
    let region = region(2, 5000);
    let mut exec = SimExecutor::new(Arc::clone(&region), disk.clone(), strict);
    fill(&region, 0, 1, false);
    let vllm = Path::new(ROOT).join("v.bin");
    let o = run_one(&mut exec, op(1, Direction::Store, 0, &vllm, BlockFormat::Vllm));
    assert!(matches!(&o, Outcome::Failed(e) if e.raw_os_error() == Some(libc::EINVAL)), "{o:?}");
    // The native format pads to 4096: aligned, accepted.
    assert!(run_one(&mut exec, op(2, Direction::Store, 0, &block_path(Path::new(ROOT), 1), native(1))).is_ok());
    assert_eq!(exec.stats().einval, 1);
}

/// Same seed, same submissions: same completion order and outcomes; another seed reorders.
#[test]
fn completions_are_deterministic_and_reorder() {
    let order = |seed: u64| {
        let (_disk, _region, mut exec) = setup(SimConfig { seed, max_latency: 16, ..SimConfig::default() });
        let ops = (0..4u64).map(|i| op(i, Direction::Load, i as u32, &block_path(Path::new(ROOT), i), native(i)));
        let mut tracker = Tracker::new();
        for o in ops {
            tracker.submit(&mut exec, o).unwrap();
        }
        let mut done = Vec::new();
        while exec.in_flight() > 0 {
            exec.poll(Wait::No).unwrap();
            tracker.take(&mut done);
        }
        done.iter().map(|d| d.0).collect::<Vec<_>>()
    };
    assert_eq!(order(7), order(7));
    assert!((0..20).any(|s| order(s) != [0, 1, 2, 3]), "latencies never reorder completions");
}

#[test]
fn a_crash_kills_the_executor_and_spares_synced_blocks() {
    let (disk, region, mut exec) = setup(SimConfig::default());
    let ops = (0..4u64)
        .map(|i| {
            fill(&region, i as u32, i, false);
            let mut o = op(i, Direction::Store, i as u32, &block_path(Path::new(ROOT), i), native(i));
            o.op.sync = i % 2 == 0;
            o
        })
        .collect();
    for (t, o) in run_ops(&mut exec, ops) {
        assert!(o.is_ok(), "store {t}: {o:?}");
    }
    disk.crash();
    for i in [0, 2] {
        let bytes = disk.read(&block_path(Path::new(ROOT), i)).unwrap();
        assert_eq!(bytes.len(), 8192 + 4096);
    }
    // The old executor is dead: its ops do nothing.
    fill(&region, 0, 9, false);
    let o = run_one(&mut exec, op(9, Direction::Store, 0, &block_path(Path::new(ROOT), 9), native(9)));
    assert!(matches!(o, Outcome::Cancelled), "{o:?}");
    assert!(!disk.exists(&block_path(Path::new(ROOT), 9)));
}
