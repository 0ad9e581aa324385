//! Waiting costs no CPU: with an op in flight that cannot complete yet (a load of a FIFO no one
//! writes: its `openat` blocks in the kernel), `poll` with a timeout waits in `io_uring_enter`,
//! and an idle executor runs no thread of its own. The figures are printed.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier_core::Direction;
use kvtier_fs::conformance::{self, op, Tracker};
use kvtier_fs::{BlockFormat, Executor, Outcome, Wait};
use kvtier_io_uring::{UringConfig, UringExecutor};

/// User + system CPU seconds of `/proc/{which}/stat` (`self`: the process, `thread-self`: the
/// calling thread), at the kernel's 100 Hz tick.
fn cpu_seconds(which: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{which}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

#[test]
fn waiting_is_done_in_the_kernel() {
    let dir = conformance::scratch_dir();
    let region = conformance::region(1, 4096);
    let mut exec = UringExecutor::new(Arc::clone(&region), UringConfig::default()).unwrap();

    // Idle: nothing in flight, nothing runs.
    let (c0, t0) = (cpu_seconds("self"), Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    let idle = cpu_seconds("self") - c0;
    println!("idle executor: {idle:.3} CPU-s (process) over {:.2} s", t0.elapsed().as_secs_f64());
    assert!(idle < 0.1, "an idle executor used {idle} CPU-s in 1 s");

    // One op in flight, blocked in the kernel: polls with a timeout wait there.
    let fifo = dir.path().join("fifo.bin");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success(), "mkfifo {c:?}");
    let mut tracker = Tracker::new();
    tracker.submit(&mut exec, op(1, Direction::Load, 0, &fifo, BlockFormat::Vllm)).unwrap();
    let mut out = Vec::new();
    let (c0, t0) = (cpu_seconds("thread-self"), Instant::now());
    let mut polls = 0;
    while t0.elapsed() < Duration::from_millis(1500) {
        assert_eq!(exec.poll(Wait::Timeout(Duration::from_millis(100))).unwrap(), 0);
        polls += 1;
    }
    let (cpu, wall) = (cpu_seconds("thread-self") - c0, t0.elapsed().as_secs_f64());
    println!("{polls} polls of Wait::Timeout(100 ms) with one op blocked: {cpu:.3} CPU-s over {wall:.2} s");
    // Each poll waited for its timeout: never early (a loaded machine may make them late, so
    // there is no lower bound). CPU use is robust to load: a waiting thread uses none.
    assert!(polls <= 16, "{polls} polls of 100 ms in {wall:.2} s");
    assert!(cpu < 0.15, "polling with an op in flight used {cpu} CPU-s in {wall:.2} s");

    // Unblock it: open the FIFO for writing (and close it, so reads see end of file) until the
    // op is done. It reads 0 bytes of 4096: the wrong length, so corrupt (and removed).
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, fifo) = (Arc::clone(&stop), fifo.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo) {
                    Ok(f) => drop(f),
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        })
    };
    let t0 = Instant::now();
    while exec.in_flight() > 0 {
        exec.poll(Wait::Forever).unwrap();
        assert!(t0.elapsed() < conformance::STUCK);
    }
    tracker.take(&mut out);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(out, [(1, Outcome::Corrupt("wrong length"))]);
    assert!(!fifo.exists(), "the corrupt file was removed");
}
