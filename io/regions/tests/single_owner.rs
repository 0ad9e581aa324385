//! One owner per device, across processes: a child process (this test binary, re-executed)
//! opens the device and stores blocks; while it lives this process cannot open the device
//! (a clear error naming the lock) and `inspect` says it is in use; once the child is killed
//! (SIGKILL: the kernel drops its `flock`) the device opens here and recovery finds the
//! child's blocks.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::*;
use kvtier_fs::region::PrimaryRegion;
use kvtier_regions::geometry::HEADER_AREA;
use kvtier_regions::Mode;

const BLOCK: usize = 8192;
const REGION: u64 = 256 << 10;
/// Set in the child's environment: the device it holds.
const HOLD: &str = "KVTIER_REGIONS_TEST_HOLD";

/// The child's part (run by the parent with `--ignored`, never on its own): opens the device
/// in `HOLD`, stores 20 blocks, says `KVTIER-HOLDING`, then waits for its standard input to close.
#[test]
#[ignore = "the child process of another_process_cannot_open_a_device_in_use"]
fn child_holds_the_device() {
    let Ok(path) = std::env::var(HOLD) else { return };
    let cfg = config(std::path::Path::new(&path), HEADER_AREA + 4 * REGION, REGION);
    let region = Arc::new(PrimaryRegion::anonymous(20, BLOCK).unwrap());
    let mut tier = open_host(&cfg, &region).unwrap();
    let keys: Vec<_> = (0..20).map(key).collect();
    assert!(store(&mut tier, &region, 1, &keys).iter().all(|&ok| ok));
    println!("KVTIER-HOLDING");
    std::io::stdout().flush().unwrap();
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}

#[test]
fn another_process_cannot_open_a_device_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_holds_the_device", "--nocapture", "--test-threads=1"])
        .env(HOLD, &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    // libtest may print the test's name on the same line first.
    while !line.trim_end().ends_with("KVTIER-HOLDING") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the child ended before it held the device");
    }

    let cfg = config(&path, HEADER_AREA + 4 * REGION, REGION);
    let region = Arc::new(PrimaryRegion::anonymous(20, BLOCK).unwrap());
    let e = open_host(&cfg, &region).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
    assert!(e.to_string().contains("in use by another process"), "{e}");
    let seen = kvtier_regions::inspect_device(&kvtier_fs::vfs::HostFs::default(), &path, false).unwrap();
    assert!(seen.in_use && seen.state == "open", "{seen:?}");
    assert_eq!(seen.pid, child.id(), "the header names the owner");

    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed: {status}");
    let mut tier = open_host(&cfg, &region).expect("the lock died with its owner");
    let rep = tier.recovery().clone();
    assert_eq!((rep.mode, rep.blocks_indexed, rep.dropped_corrupt), (Mode::Fast, 20, 0), "{rep:?}");
    let keys: Vec<_> = (0..20).map(key).collect();
    assert!(load(&mut tier, &region, 2, &keys).iter().all(|&ok| ok), "the child's blocks load here");
}
