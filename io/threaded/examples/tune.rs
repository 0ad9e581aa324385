//! Times the threaded executor's stores and loads (native format, `O_DIRECT` where supported)
//! for a few read/write worker combinations, to choose the default worker counts.
//!
//! ```sh
//! cargo run --release -p kvtier-io-threaded --example tune [DIR]
//! ```
//!
//! `TUNE_COMBOS="8x8,16x16"` picks the read x write combinations (default: a fixed list).
//! `DIR` (default: the system temp directory) must be on the disk being measured: check with
//! `df -T` that it is not tmpfs. Each combination runs twice, in mirrored order, after a
//! warm-up round (which also creates the directories, as a running tier has them), so every
//! measured store runs in the same "churn" state (files were deleted before). Figures: GB/s of block payload, and CPU-seconds (user+sys, whole process) per GB.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier_core::{Direction, OffloadKey, SlotId};
use kvtier_fs::conformance::{run_ops, TestOp};
use kvtier_fs::region::{Access, PrimaryRegion};
use kvtier_fs::BlockFormat;
use kvtier_io_threaded::{ThreadedConfig, ThreadedExecutor};

const COMBOS: [(usize, usize); 6] = [(1, 1), (2, 2), (4, 4), (8, 8), (16, 16), (4, 12)];

/// The combinations to run: `TUNE_COMBOS="8x8,16x16"` (read x write), or [`COMBOS`].
fn combos() -> Vec<(usize, usize)> {
    let Ok(spec) = std::env::var("TUNE_COMBOS") else { return COMBOS.to_vec() };
    let parse = |c: &str| {
        let (r, w) = c.split_once('x')?;
        Some((r.trim().parse().ok()?, w.trim().parse().ok()?))
    };
    spec.split(',').map(|c| parse(c).expect("TUNE_COMBOS: RxW,RxW...")).collect()
}
const SIZES: [(usize, usize); 2] = [(1 << 20, 256), (64 << 10, 1024)];

fn cpu_seconds() -> f64 {
    // utime and stime, fields 14 and 15 of /proc/self/stat, in clock ticks (100 Hz on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn path(root: &Path, i: usize) -> PathBuf {
    let h = format!("{:032x}", (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
    root.join(&h[..3]).join(format!("{}_g0", &h[3..5])).join(format!("{h}.bin"))
}

fn format(i: usize) -> BlockFormat {
    let key = OffloadKey::new(&(i as u64).to_le_bytes(), 0).unwrap();
    BlockFormat::Native { namespace: *b"0123456789ab", key }
}

/// Runs `ops` with everything submitted up front; returns wall time and CPU seconds.
fn run(exec: &mut ThreadedExecutor, ops: Vec<TestOp>) -> (Duration, f64) {
    let (t0, c0) = (Instant::now(), cpu_seconds());
    let done = run_ops(exec, ops);
    let bad = done.values().filter(|o| !o.is_ok()).count();
    assert_eq!(bad, 0, "{bad} ops failed: {:?}", done.values().find(|o| !o.is_ok()));
    (t0.elapsed(), cpu_seconds() - c0)
}

struct Figures {
    store: f64,
    load: f64,
    mixed: f64,
    store_cpu: f64,
    load_cpu: f64,
}

/// Stores `n` blocks, loads them back, then runs loads of those and stores of `n` new blocks
/// together; removes the files (the directories stay, as they do in a running tier).
fn measure(root: &Path, region: &Arc<PrimaryRegion>, (r, w): (usize, usize), n: usize, o_direct: bool) -> Figures {
    let size = region.row_bytes();
    let gb = (n * size) as f64 / 1e9;
    let dir = root.to_path_buf();
    let config = ThreadedConfig { read_workers: r, write_workers: w, queue_capacity: 4096, o_direct };
    let mut exec = ThreadedExecutor::new(Arc::clone(region), config).unwrap();
    let op = |token: usize, dir_: Direction, slot: usize, i: usize| {
        let mut op = kvtier_fs::conformance::op(token as u64, dir_, slot as u32, &path(&dir, i), format(i));
        op.op.sync = false;
        op
    };
    let stores = (0..n).map(|i| op(i, Direction::Store, i, i)).collect();
    let (store_t, store_c) = run(&mut exec, stores);
    let loads = (0..n).map(|i| op(n + i, Direction::Load, n + i, i)).collect();
    let (load_t, load_c) = run(&mut exec, loads);
    let mut mixed = Vec::new();
    for i in 0..n {
        mixed.push(op(2 * n + i, Direction::Load, n + i, i));
        mixed.push(op(3 * n + i, Direction::Store, i, n + i));
    }
    let (mixed_t, _) = run(&mut exec, mixed);
    drop(exec);
    for i in 0..2 * n {
        std::fs::remove_file(path(&dir, i)).unwrap();
    }
    Figures {
        store: gb / store_t.as_secs_f64(),
        load: gb / load_t.as_secs_f64(),
        mixed: 2.0 * gb / mixed_t.as_secs_f64(),
        store_cpu: store_c / gb,
        load_cpu: load_c / gb,
    }
}

fn main() {
    let base = std::env::args_os().nth(1).map_or_else(std::env::temp_dir, PathBuf::from);
    let root = tempfile::Builder::new().prefix("kvtier-tune-").tempdir_in(&base).unwrap();
    let o_direct = kvtier_fs::direct::resolve(kvtier_fs::direct::DirectMode::Auto, root.path()).unwrap();
    println!("dir {} (O_DIRECT {o_direct}), {} CPUs", root.path().display(), num_cpus());
    for (size, n) in SIZES {
        let region = Arc::new(PrimaryRegion::anonymous(2 * n, size).unwrap());
        for slot in 0..2 * n {
            let mut lease = region.lease(SlotId(slot as u32), Access::Write).unwrap();
            let row = lease.as_mut_slice().unwrap();
            for (k, b) in row.iter_mut().enumerate() {
                *b = (k * 31 + slot) as u8;
            }
        }
        println!("\n{} KiB blocks, {n} per phase (GB/s; CPU-s/GB)", size >> 10);
        println!("{:>8} {:>8} {:>8} {:>8} {:>9} {:>9}", "workers", "store", "load", "mixed", "store cpu", "load cpu");
        measure(root.path(), &region, (4, 4), n, o_direct); // warm-up: puts the disk in churn state
        let combos = combos();
        let mut runs: Vec<Vec<Figures>> = combos.iter().map(|_| Vec::new()).collect();
        let order: Vec<usize> = (0..combos.len()).chain((0..combos.len()).rev()).collect();
        for k in order {
            runs[k].push(measure(root.path(), &region, combos[k], n, o_direct));
        }
        for (k, figs) in runs.iter().enumerate() {
            let mean = |f: fn(&Figures) -> f64| figs.iter().map(f).sum::<f64>() / figs.len() as f64;
            println!(
                "{:>8} {:>8.2} {:>8.2} {:>8.2} {:>9.3} {:>9.3}",
                format!("{}r+{}w", combos[k].0, combos[k].1),
                mean(|f| f.store),
                mean(|f| f.load),
                mean(|f| f.mixed),
                mean(|f| f.store_cpu),
                mean(|f| f.load_cpu)
            );
        }
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
