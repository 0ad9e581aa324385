//! `kvtier bench core` counts allocations in the `kvtier-bench-core` binary next to it, and
//! only there: a missing or stale counting binary leaves the figures uncounted (never counted
//! by old code), and says why. Small runs without the Python peer; no figure is checked.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

const ARGS: [&str; 7] = ["bench", "core", "--no-peer", "--slots", "64", "--ops", "1000"];

/// Held by each test: two of them write executables, and a child forked by another test while
/// such a file is open for writing would make its `exec` fail with ETXTBSY.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn bench_core(kvtier: &Path, json: bool) -> Output {
    let mut cmd = Command::new(kvtier);
    cmd.args(ARGS);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run kvtier");
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The `allocs_per_op` of every row of a `--json` report.
fn allocs_per_op(out: &Output) -> Vec<serde_json::Value> {
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let rows = report["results"].as_array().expect("results");
    assert_eq!(rows.len(), 7, "{report}");
    rows.iter().map(|r| r["allocs_per_op"].clone()).collect()
}

/// A copy of the `kvtier` binary alone in a new directory.
fn lonely_kvtier(dir: &Path) -> std::path::PathBuf {
    let copy = dir.join("kvtier");
    std::fs::copy(env!("CARGO_BIN_EXE_kvtier"), &copy).unwrap();
    copy
}

#[test]
fn allocations_are_counted_by_the_counting_binary() {
    let _serial = serial();
    let out = bench_core(Path::new(env!("CARGO_BIN_EXE_kvtier")), true);
    assert!(allocs_per_op(&out).iter().all(serde_json::Value::is_f64), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("not counted"));
    // The counting binary runs the same benchmark on its own.
    let direct = Command::new(env!("CARGO_BIN_EXE_kvtier-bench-core")).args(&ARGS[2..]).output().unwrap();
    assert!(direct.status.success());
    assert!(!String::from_utf8_lossy(&direct.stdout).contains("allocs/op: n/a"));
}

#[test]
fn without_the_counting_binary_allocations_are_not_counted_and_the_report_says_why() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let kvtier = lonely_kvtier(dir.path());
    let out = bench_core(&kvtier, true);
    assert!(allocs_per_op(&out).iter().all(serde_json::Value::is_null));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("allocations not counted: kvtier-bench-core is not next to"), "{stderr}");
    let text = String::from_utf8_lossy(&bench_core(&kvtier, false).stdout).into_owned();
    assert!(text.contains("allocs/op: n/a (kvtier-bench-core is not next to"), "{text}");
}

#[test]
fn a_stale_counting_binary_is_not_run() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let kvtier = lonely_kvtier(dir.path());
    // A "counting binary" from other sources: were it run, it would print this, not a report.
    let fake = dir.path().join("kvtier-bench-core");
    std::fs::write(&fake, "#!/bin/sh\necho 0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = bench_core(&kvtier, true);
    assert!(allocs_per_op(&out).iter().all(serde_json::Value::is_null));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("was built from other sources"), "{stderr}");
}
