//! Times the io_uring executor against the threaded one, and both against the raw `O_DIRECT`
//! ceiling, for stores and loads of 64 KiB to 2 MiB blocks (native format, `O_DIRECT` where
//! supported), to choose the default ring depth and to report the CPU each costs.
//!
//! ```sh
//! cargo run --release -p kvtier-io-uring --example tune_uring [DIR]
//! ```
//!
//! `TUNE_SIZES="64K,1M"` picks block sizes (default 64K,256K,1M,2M); `TUNE_DEPTHS="32,64"` the
//! uring depths (`max_ops`, default 16,32,64,128); `TUNE_MIB=256` the data per phase;
//! `TUNE_ROUNDS=2` the rounds (each runs every executor, in mirrored order in odd rounds);
//! `TUNE_IOWQ=<n>` sets the ring's bounded io-wq worker limit; `TUNE_FORMAT=vllm` stores raw rows (no header or checksum: the executors' own cost);
//! `TUNE_NO_THREADED=1` leaves the threaded executor out, and `TUNE_LOAD_LOOP=<seconds>` repeats
//! each load phase for that long (both for profiling one executor).
//! `DIR` (default: the system temp directory) must be on the disk being measured (check with
//! `df -T` that it is not tmpfs). A warm-up round first creates the directories. Files are
//! kept until the end (so stores run in the "quiet" state; `TUNE_CHURN=1` deletes them after
//! each measurement instead, so stores run in the churn state): the run needs
//! `TUNE_MIB * (1 + rounds * executors)` MiB of space per size.
//!
//! Figures: GB/s of block payload; CPU-seconds (user + sys of the whole process, worker
//! threads and io-wq workers included) per GB; the ceiling is `QD` threads doing random
//! `O_DIRECT` `pread`/`pwrite` of one block on one preallocated file, measured in each round
//! right before the executors.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier_core::{Direction, OffloadKey, SlotId};
use kvtier_fs::conformance::{run_ops, TestOp};
use kvtier_fs::region::{Access, PrimaryRegion};
use kvtier_fs::{BlockFormat, Executor, Wait};
use kvtier_io_threaded::{ThreadedConfig, ThreadedExecutor};
use kvtier_io_uring::{UringConfig, UringExecutor};

/// User + system CPU seconds of the whole process, exited threads (io-wq workers) included,
/// at microsecond resolution (`getrusage(RUSAGE_SELF)`; `/proc/self/stat` counts 10 ms ticks).
fn cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` is valid for writes of one `rusage` for the duration of the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage");
    // SAFETY: zero-initialised, and filled in by the successful call.
    let ru = unsafe { ru.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name).unwrap_or_else(|_| default.to_string()).split(',').map(|s| s.trim().to_string()).collect()
}

fn parse_size(s: &str) -> usize {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'K') => (&s[..s.len() - 1], 1 << 10),
        Some(b'M') => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    num.parse::<usize>().expect("a size like 64K or 1M") * mult
}

/// Block `i`'s file of round `round`: the directories depend on `i` only (the warm-up creates
/// them, as a running tier has them), the name on both.
fn path(root: &Path, round: usize, i: usize) -> PathBuf {
    let hash = |x: usize| format!("{:032x}", (x as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
    let (dir, name) = (hash(i), hash(round * 10_000_019 + i));
    root.join(&dir[..3]).join(format!("{}_g0", &dir[3..5])).join(format!("{name}.bin"))
}

/// The native format, or vLLM's raw rows with `TUNE_FORMAT=vllm` (no header, no checksum to
/// verify: what is left is the executors' own cost).
fn format(i: usize) -> BlockFormat {
    if std::env::var("TUNE_FORMAT").is_ok_and(|f| f == "vllm") {
        return BlockFormat::Vllm;
    }
    let key = OffloadKey::new(&(i as u64).to_le_bytes(), 0).unwrap();
    BlockFormat::Native { namespace: *b"0123456789ab", key }
}

/// Runs `ops` with everything submitted up front; returns wall time and CPU seconds.
fn run(exec: &mut dyn Executor, ops: Vec<TestOp>) -> (Duration, f64) {
    let (t0, c0) = (Instant::now(), cpu_seconds());
    let done = run_ops(exec, ops);
    let bad = done.values().filter(|o| !o.is_ok()).count();
    assert_eq!(bad, 0, "{bad} ops failed: {:?}", done.values().find(|o| !o.is_ok()));
    (t0.elapsed(), cpu_seconds() - c0)
}

#[derive(Default, Clone, Copy)]
struct Figures {
    store: f64,
    load: f64,
    store_cpu: f64,
    load_cpu: f64,
}

impl Figures {
    fn add(&mut self, o: Figures) {
        self.store += o.store;
        self.load += o.load;
        self.store_cpu += o.store_cpu;
        self.load_cpu += o.load_cpu;
    }
}

fn make(name: &str, region: &Arc<PrimaryRegion>, o_direct: bool) -> Box<dyn Executor> {
    if name == "threaded" {
        let config = ThreadedConfig { o_direct, ..ThreadedConfig::default() };
        return Box::new(ThreadedExecutor::new(Arc::clone(region), config).unwrap());
    }
    let depth = name.strip_prefix("uring-").and_then(|d| d.parse().ok()).expect("uring-<depth>");
    let mut config = UringConfig { max_ops: depth, o_direct, ..UringConfig::default() };
    if let Some(w) = std::env::var("TUNE_IOWQ").ok().and_then(|s| s.parse().ok()) {
        config.iowq_workers = w;
    }
    Box::new(UringExecutor::new(Arc::clone(region), config).unwrap())
}

/// Stores `n` blocks from rows `0..n` under names of this round and executor, and loads them
/// back into rows `n..2n`. Nothing is deleted until the end of the run, so that every store
/// runs in the same "quiet" state (ext4 skips recently deleted inodes when it allocates one:
/// creating files right after deleting many costs several times the CPU), unless
/// `TUNE_CHURN=1`: then the files are deleted right after, and the next store runs in the churn
/// state.
fn measure(
    root: &Path,
    region: &Arc<PrimaryRegion>,
    name: &str,
    round: usize,
    n: usize,
    o_direct: bool,
    warm_up: bool,
) -> Figures {
    let gb = (n * region.row_bytes()) as f64 / 1e9;
    let mut exec = make(name, region, o_direct);
    let op = |token: usize, dir: Direction, slot: usize, i: usize| {
        let mut op = kvtier_fs::conformance::op(token as u64, dir, slot as u32, &path(root, round, i), format(i));
        op.op.sync = false;
        op
    };
    let (store_t, store_c) = run(exec.as_mut(), (0..n).map(|i| op(i, Direction::Store, i, i)).collect());
    let (load_t, load_c) = run(exec.as_mut(), (0..n).map(|i| op(n + i, Direction::Load, n + i, i)).collect());
    let looping = std::env::var("TUNE_LOAD_LOOP").ok().and_then(|s| s.parse::<f64>().ok()).filter(|_| !warm_up);
    if let Some(secs) = looping {
        // Profiling aid: loads only, again and again.
        let t0 = Instant::now();
        while t0.elapsed().as_secs_f64() < secs {
            run(exec.as_mut(), (0..n).map(|i| op(n + i, Direction::Load, n + i, i)).collect());
        }
    }
    drop(exec);
    if std::env::var_os("TUNE_CHURN").is_some() {
        for i in 0..n {
            std::fs::remove_file(path(root, round, i)).unwrap();
        }
    }
    Figures {
        store: gb / store_t.as_secs_f64(),
        load: gb / load_t.as_secs_f64(),
        store_cpu: store_c / gb,
        load_cpu: load_c / gb,
    }
}

/// (read, write) GB/s of `qd` threads doing random `O_DIRECT` block I/O on one file of `n`
/// blocks.
fn ceiling(root: &Path, bs: usize, n: usize, qd: usize) -> (f64, f64) {
    let file_path = root.join("ceiling.dat");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&file_path)
        .unwrap();
    let buffers = Arc::new(PrimaryRegion::anonymous(qd, bs).unwrap());
    for t in 0..qd {
        let mut lease = buffers.lease(SlotId(t as u32), Access::Write).unwrap();
        lease.as_mut_slice().unwrap().fill(0x5a);
    }
    let lease = buffers.lease(SlotId(0), Access::Read).unwrap();
    for i in 0..n {
        file.write_all_at(lease.block(), (i * bs) as u64).unwrap();
    }
    drop(lease);
    file.sync_all().unwrap();
    let gb = (n * bs) as f64 / 1e9;
    let go = |write: bool| {
        let next = AtomicUsize::new(0);
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for t in 0..qd {
                let (file, next, buffers): (&File, &AtomicUsize, &Arc<PrimaryRegion>) = (&file, &next, &buffers);
                s.spawn(move || {
                    let mut lease = buffers.lease(SlotId(t as u32), Access::Write).unwrap();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= n {
                            break;
                        }
                        // A fixed permutation of the blocks (n is not a multiple of this prime).
                        let at = ((k * 7919) % n * bs) as u64;
                        if write {
                            file.write_all_at(lease.block(), at).unwrap();
                        } else {
                            file.read_exact_at(&mut lease.as_mut_slice().unwrap()[..bs], at).unwrap();
                        }
                    }
                });
            }
        });
        gb / t0.elapsed().as_secs_f64()
    };
    let write = go(true);
    let read = go(false);
    std::fs::remove_file(&file_path).unwrap();
    (read, write)
}

fn main() {
    let base = std::env::args_os().nth(1).map_or_else(std::env::temp_dir, PathBuf::from);
    let root = tempfile::Builder::new().prefix("kvtier-tune-uring-").tempdir_in(&base).unwrap();
    let o_direct = kvtier_fs::direct::resolve(kvtier_fs::direct::DirectMode::Auto, root.path()).unwrap();
    let sizes: Vec<usize> = env_list("TUNE_SIZES", "64K,256K,1M,2M").iter().map(|s| parse_size(s)).collect();
    let depths = env_list("TUNE_DEPTHS", "16,32,64,128");
    let mib: usize = std::env::var("TUNE_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(256);
    let rounds: usize = std::env::var("TUNE_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let mut names: Vec<String> =
        std::iter::once("threaded".to_string()).chain(depths.iter().map(|d| format!("uring-{d}"))).collect();
    if std::env::var_os("TUNE_NO_THREADED").is_some() {
        names.remove(0);
    }
    println!(
        "dir {} (O_DIRECT {o_direct}), {} CPUs, {mib} MiB per phase, {rounds} rounds",
        root.path().display(),
        num_cpus()
    );
    for size in sizes {
        let n = (mib << 20) / size;
        let region = Arc::new(PrimaryRegion::anonymous(2 * n, size).unwrap());
        for slot in 0..2 * n {
            let mut lease = region.lease(SlotId(slot as u32), Access::Write).unwrap();
            for (k, b) in lease.as_mut_slice().unwrap().iter_mut().enumerate() {
                *b = (k * 31 + slot) as u8;
            }
        }
        // Warm-up: creates the directories.
        measure(root.path(), &region, "threaded", size.trailing_zeros() as usize, n, o_direct, true);
        let mut sums = vec![Figures::default(); names.len()];
        let mut ceil = (0.0, 0.0);
        for round in 1..=rounds {
            let c = ceiling(root.path(), size, n, 32);
            ceil = (ceil.0 + c.0 / rounds as f64, ceil.1 + c.1 / rounds as f64);
            let mut order: Vec<usize> = (0..names.len()).collect();
            if round % 2 == 0 {
                order.reverse();
            }
            for k in order {
                // Each (round, executor, size) has names of its own.
                let tag = (round * 64 + k) * 16 + size.trailing_zeros() as usize;
                sums[k].add(measure(root.path(), &region, &names[k], tag, n, o_direct, false));
            }
        }
        println!(
            "\n{} KiB blocks, {n} per phase; ceiling (QD 32): read {:.2} GB/s, write {:.2} GB/s",
            size >> 10,
            ceil.0,
            ceil.1
        );
        println!(
            "{:>10} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9} {:>9}",
            "executor", "store", "x ceil", "load", "x ceil", "store cpu", "load cpu", "x thr cpu"
        );
        let mean = |f: Figures| Figures {
            store: f.store / rounds as f64,
            load: f.load / rounds as f64,
            store_cpu: f.store_cpu / rounds as f64,
            load_cpu: f.load_cpu / rounds as f64,
        };
        let threaded = mean(sums[0]); // (the first executor when TUNE_NO_THREADED is set)
        for (k, name) in names.iter().enumerate() {
            let f = mean(sums[k]);
            println!(
                "{:>10} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>9.3} {:>9.3} {:>9.2}",
                name,
                f.store,
                f.store / ceil.1,
                f.load,
                f.load / ceil.0,
                f.store_cpu,
                f.load_cpu,
                (f.store_cpu + f.load_cpu) / (threaded.store_cpu + threaded.load_cpu)
            );
        }
    }
    idle(root.path());
}

/// CPU while idle: an executor with nothing in flight, then one whose only op is blocked in
/// the kernel (a load of a FIFO) polled with `Wait::Timeout(100 ms)` for 2 s.
fn idle(root: &Path) {
    let region = Arc::new(PrimaryRegion::anonymous(1, 4096).unwrap());
    let mut exec = UringExecutor::new(Arc::clone(&region), UringConfig::default()).unwrap();
    let (c0, t0) = (cpu_seconds(), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    println!("\nidle, nothing in flight: {:.3} CPU-s over {:.1} s", cpu_seconds() - c0, t0.elapsed().as_secs_f64());
    let fifo = root.join("fifo");
    std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    let mut tracker = kvtier_fs::conformance::Tracker::new();
    let op = kvtier_fs::conformance::op(1, Direction::Load, 0, &fifo, BlockFormat::Vllm);
    tracker.submit(&mut exec, op).unwrap();
    let (c0, t0) = (cpu_seconds(), Instant::now());
    let mut polls = 0;
    while t0.elapsed() < Duration::from_secs(2) {
        exec.poll(Wait::Timeout(Duration::from_millis(100))).unwrap();
        polls += 1;
    }
    println!(
        "idle, one op blocked, {polls} polls of Wait::Timeout(100 ms): {:.3} CPU-s over {:.1} s",
        cpu_seconds() - c0,
        t0.elapsed().as_secs_f64()
    );
    // Unblock the op (it reads an empty FIFO: corrupt, removed) so the executor can drop.
    while exec.in_flight() > 0 {
        if let Ok(f) = OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo) {
            drop(f);
        }
        exec.poll(Wait::Timeout(Duration::from_millis(1))).unwrap();
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
