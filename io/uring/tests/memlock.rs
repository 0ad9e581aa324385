//! Issue 11, item 26: the uring executor registers (pins) the whole primary region at once,
//! which counts against `RLIMIT_MEMLOCK` unless the process has `CAP_IPC_LOCK`. When that
//! fails, the error says so: that the whole region is pinned and how large it is, the limit in
//! force, and how to raise it (or to use the threaded executor); the same text is what the
//! `auto` executor's fallback warning prints. (Before, it said only "Cannot allocate memory
//! (RLIMIT_MEMLOCK too low?)".)
//!
//! A real process: the test re-runs itself with `CAP_IPC_LOCK` dropped (`setpriv`) and a
//! 1 MiB memlock limit (`ulimit -l`), where registering a 64 MiB region fails. Skipped (with a
//! message) where `setpriv` is missing or io_uring cannot run.

use std::process::Command;
use std::sync::Arc;

use kvtier_fs::region::PrimaryRegion;
use kvtier_io_uring::{UringConfig, UringExecutor};

const CHILD: &str = "KVTIER_MEMLOCK_CHILD";

#[test]
fn a_region_beyond_memlock_names_the_pinned_size_and_the_limit() {
    if std::env::var_os(CHILD).is_some() {
        let region = Arc::new(PrimaryRegion::anonymous(64, 1 << 20).unwrap());
        match UringExecutor::new(region, UringConfig::default()) {
            Ok(_) => println!("RESULT registered"),
            Err(e) => println!("RESULT {e}"),
        }
        return;
    }
    if let Err(e) = kvtier_io_uring::probe(false) {
        eprintln!("skipped: {e}");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let output = Command::new("setpriv")
        .args(["--bounding-set", "-ipc_lock", "--inh-caps", "-ipc_lock", "/bin/sh", "-c"])
        .arg("ulimit -l 1024 && exec \"$0\" \"$@\"")
        .arg(exe)
        .args(["--exact", "a_region_beyond_memlock_names_the_pinned_size_and_the_limit", "--nocapture"])
        .env(CHILD, "1")
        .output();
    let Some(output) = output.ok().filter(|o| o.status.success()) else {
        eprintln!("skipped: cannot run the child without CAP_IPC_LOCK (setpriv)");
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")).expect("the child's result");
    println!("{result}");
    assert_ne!(result, "registered", "a 64 MiB region cannot be pinned under a 1 MiB memlock limit");
    for needle in ["pins all of it in memory at once (64.0 MiB", "RLIMIT_MEMLOCK", "1.0 MiB here", "ulimit -l"] {
        assert!(result.contains(needle), "{needle:?} missing from: {result}");
    }
}
