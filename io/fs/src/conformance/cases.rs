//! The cases on block files ([`crate::Target::Path`]), each a public function taking the
//! disk the executor's files live on and the executor's constructor.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kvtier_core::{Direction, SlotId};

use super::fixtures::*;
use crate::format::{self, HEADER_LEN};
use crate::region::{Access, PrimaryRegion};
use crate::vfs::{HostFs, Vfs};
use crate::{BlockFormat, Executor, Outcome, Wait};

const CHILD_ENV: &str = "KVTIER_CONFORMANCE_CHILD_DIR";
const CHILD_MARKER: &str = "child-passed";

pub(super) fn assert_ok(outcome: &Outcome, what: &str) {
    assert!(outcome.is_ok(), "{what}: {outcome:?}");
}

fn assert_corrupt_and_removed(disk: &dyn Vfs, outcome: Outcome, path: &Path, what: &str) -> &'static str {
    let Outcome::Corrupt(reason) = outcome else { panic!("{what}: expected Corrupt, got {outcome:?}") };
    assert!(!disk.exists(path), "{what}: the corrupt file {} must be removed", path.display());
    reason
}

/// Stores block `i` from `slot` (filled with seed `i`) at `block_path(root, i)`.
pub(super) fn store_block<E: Executor>(
    exec: &mut E,
    region: &Arc<PrimaryRegion>,
    root: &Path,
    i: u64,
    slot: u32,
    format: BlockFormat,
) -> PathBuf {
    fill(region, slot, i, false);
    let path = block_path(root, i);
    assert_ok(&run_one(exec, op(i, Direction::Store, slot, &path, format)), "store");
    path
}

pub(super) fn formats(i: u64) -> [BlockFormat; 2] {
    [BlockFormat::Vllm, native(i)]
}

pub(super) fn format_name(f: &BlockFormat) -> &'static str {
    match f {
        BlockFormat::Vllm => "vllm",
        BlockFormat::Native { .. } => "native",
    }
}

pub(super) fn expected_len(format: &BlockFormat, row_bytes: usize) -> u64 {
    match format {
        BlockFormat::Vllm => row_bytes as u64,
        BlockFormat::Native { .. } => format::native_file_len(row_bytes as u64),
    }
}

/// 64 blocks, in both formats and at every [`ROW_SIZES`] size, stored from slots `0..64` and
/// loaded back into slots `64..128` (pre-filled with garbage): byte-exact, each slot free again
/// as soon as its op is reported, no temp file left.
pub fn round_trip_many_blocks<E: Executor>(disk: &dyn Vfs, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    const N: u64 = 64;
    for row_bytes in ROW_SIZES {
        for fmt in 0..2 {
            let dir = scratch_dir();
            let region = region(2 * N as usize, row_bytes);
            let mut exec = make(Arc::clone(&region), dir.path());
            let format = |i| formats(i)[fmt];
            let what = format!("{} format, {row_bytes}-byte rows", format_name(&format(0)));
            // Slots are shuffled so neighbours on disk are not neighbours in memory.
            let src = |i: u64| ((i * 37) % N) as u32;
            let dst = |i: u64| N as u32 + ((i * 11 + 5) % N) as u32;
            for i in 0..N {
                fill(&region, src(i), i, i % 2 == 1);
                fill(&region, dst(i), 0xdead_0000 + i, true);
            }
            let stores =
                (0..N).map(|i| op(i, Direction::Store, src(i), &block_path(dir.path(), i), format(i))).collect();
            for (t, o) in run_ops(&mut exec, stores) {
                assert_ok(&o, &format!("{what}: store {t}"));
                region.lease(SlotId(src(t)), Access::Write).expect("a reported store's slot is released");
            }
            for i in 0..N {
                let len = disk.len(&block_path(dir.path(), i)).expect("stored file exists");
                assert_eq!(len, expected_len(&format(i), row_bytes), "{what}: file length");
            }
            let loads =
                (0..N).map(|i| op(100 + i, Direction::Load, dst(i), &block_path(dir.path(), i), format(i))).collect();
            for (t, o) in run_ops(&mut exec, loads) {
                assert_ok(&o, &format!("{what}: load {t}"));
                region.lease(SlotId(dst(t - 100)), Access::Write).expect("a reported load's slot is released");
            }
            for i in 0..N {
                assert!(
                    block(&region, dst(i)) == pattern(i, row_bytes),
                    "{what}: block {i} differs after the round trip"
                );
                assert!(block(&region, src(i)) == pattern(i, row_bytes), "{what}: a store modified its source row");
            }
            assert_no_temp_files(disk, dir.path());
            exec.shutdown();
        }
    }
}

/// A vLLM-format file is exactly the row's `row_bytes`; a native file is a header that decodes
/// and checks, the row's bytes, and zero padding (even when the row's tail holds other bytes).
pub fn files_have_the_format_layout<E: Executor>(disk: &dyn Vfs, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    for row_bytes in ROW_SIZES {
        let dir = scratch_dir();
        let region = region(2, row_bytes);
        let mut exec = make(Arc::clone(&region), dir.path());
        fill(&region, 0, 7, true);
        let vllm = dir.path().join("vllm.bin");
        assert_ok(&run_one(&mut exec, op(1, Direction::Store, 0, &vllm, BlockFormat::Vllm)), "vllm store");
        assert!(disk.read(&vllm).unwrap() == pattern(7, row_bytes), "a vllm file is the raw row ({row_bytes} bytes)");

        let nat = dir.path().join("native.bin");
        assert_ok(&run_one(&mut exec, op(2, Direction::Store, 0, &nat, native(7))), "native store");
        let bytes = disk.read(&nat).unwrap();
        assert_eq!(bytes.len() as u64, format::native_file_len(row_bytes as u64));
        let header = format::decode_header(&bytes).expect("the header decodes");
        header.check(&NAMESPACE, &key(7), &pattern(7, row_bytes)).expect("the header checks");
        assert!(bytes[HEADER_LEN..HEADER_LEN + row_bytes] == pattern(7, row_bytes), "the payload follows the header");
        assert!(
            bytes[HEADER_LEN + row_bytes..].iter().all(|&b| b == 0),
            "the payload is zero padded ({row_bytes} bytes)"
        );
        assert_no_temp_files(disk, dir.path());
    }
}

/// Loading a file that does not exist is `NotFound`, in both formats, and creates nothing.
pub fn load_of_a_missing_file_is_not_found<E: Executor>(disk: &dyn Vfs, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    let dir = scratch_dir();
    let region = region(1, 4096);
    let mut exec = make(Arc::clone(&region), dir.path());
    for (t, format) in formats(0).into_iter().enumerate() {
        for path in [dir.path().join("missing.bin"), block_path(&dir.path().join("no-such-dir"), 0)] {
            let o = run_one(&mut exec, op(t as u64, Direction::Load, 0, &path, format));
            assert!(matches!(o, Outcome::NotFound), "{}: {o:?}", path.display());
            assert!(!disk.exists(&path));
        }
    }
    assert!(region.lease(SlotId(0), Access::Write).is_ok());
}

/// A file shorter or longer than its format's length is `Corrupt("wrong length")` and removed.
pub fn wrong_length_is_corrupt_and_removed<E: Executor>(disk: &dyn Vfs, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    for row_bytes in ROW_SIZES {
        let dir = scratch_dir();
        let region = region(2, row_bytes);
        let mut exec = make(Arc::clone(&region), dir.path());
        for format in formats(3) {
            let full = expected_len(&format, row_bytes);
            for len in [0, 1, full - 1, full / 2, full + 1, full + 4096] {
                let path = store_block(&mut exec, &region, dir.path(), 3, 0, format);
                disk.set_len(&path, len).unwrap();
                let what = format!("{} file of {len} bytes instead of {full}", format_name(&format));
                let reason = assert_corrupt_and_removed(
                    disk,
                    run_one(&mut exec, op(9, Direction::Load, 1, &path, format)),
                    &path,
                    &what,
                );
                assert_eq!(reason, "wrong length", "{what}");
                assert!(region.lease(SlotId(1), Access::Write).is_ok());
            }
        }
    }
}

/// A native file with one flipped bit (in the payload, in a header field, in the padding of the
/// header) is `Corrupt` and removed.
pub fn flipped_bytes_are_corrupt_and_removed<E: Executor>(
    disk: &dyn Vfs,
    make: impl Fn(Arc<PrimaryRegion>, &Path) -> E,
) {
    for row_bytes in ROW_SIZES {
        let dir = scratch_dir();
        let region = region(2, row_bytes);
        let mut exec = make(Arc::clone(&region), dir.path());
        let offsets = [HEADER_LEN, HEADER_LEN + row_bytes / 2, HEADER_LEN + row_bytes - 1, 0, 20, 100, 2000];
        for at in offsets {
            let path = store_block(&mut exec, &region, dir.path(), 5, 0, native(5));
            let mut bytes = disk.read(&path).unwrap();
            bytes[at] ^= 0x10;
            disk.write(&path, &bytes).unwrap();
            let what = format!("native {row_bytes}-byte block with byte {at} flipped");
            assert_corrupt_and_removed(
                disk,
                run_one(&mut exec, op(6, Direction::Load, 1, &path, native(5))),
                &path,
                &what,
            );
        }
    }
}

/// A native file written under another namespace or for another key, or a file of the right
/// length that is not a native block at all, is `Corrupt` and removed.
pub fn foreign_native_files_are_corrupt<E: Executor>(disk: &dyn Vfs, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    let row_bytes = 12288;
    let dir = scratch_dir();
    let region = region(2, row_bytes);
    let mut exec = make(Arc::clone(&region), dir.path());
    let foreign_ns = BlockFormat::Native { namespace: OTHER_NAMESPACE, key: key(1) };
    let expect = native(1);
    for (written, what) in [(foreign_ns, "another namespace"), (native(2), "another key")] {
        fill(&region, 0, 1, false);
        let path = block_path(dir.path(), 1);
        assert_ok(&run_one(&mut exec, op(1, Direction::Store, 0, &path, written)), "store");
        assert_corrupt_and_removed(disk, run_one(&mut exec, op(2, Direction::Load, 1, &path, expect)), &path, what);
    }
    let path = block_path(dir.path(), 1);
    disk.write(&path, &pattern(1, format::native_file_len(row_bytes as u64) as usize)).unwrap();
    assert_corrupt_and_removed(
        disk,
        run_one(&mut exec, op(3, Direction::Load, 1, &path, expect)),
        &path,
        "not a native file",
    );
}

/// A store into a directory that does not exist yet creates it (all missing levels).
pub fn store_creates_missing_directories<E: Executor>(disk: &dyn Vfs, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    let dir = scratch_dir();
    let region = region(2, 8192);
    let mut exec = make(Arc::clone(&region), dir.path());
    for (i, format) in formats(4).into_iter().enumerate() {
        let root = dir.path().join(format!("not/yet/there{i}"));
        let path = store_block(&mut exec, &region, &root, 4, 0, format);
        assert!(disk.is_file(&path), "{} published", path.display());
        fill(&region, 1, 99, false);
        assert_ok(&run_one(&mut exec, op(2, Direction::Load, 1, &path, format)), "load back");
        assert!(block(&region, 1) == pattern(4, 8192));
    }
    assert_no_temp_files(disk, dir.path());
}

/// Storing over a published file replaces it atomically: the new content appears under the
/// name, the old file's inode is never written (a hard link to it keeps the old bytes), and no
/// temp file is left.
pub fn store_replaces_a_published_file_atomically<E: Executor>(
    disk: &dyn Vfs,
    make: impl Fn(Arc<PrimaryRegion>, &Path) -> E,
) {
    let row_bytes = 4096;
    let dir = scratch_dir();
    let region = region(1, row_bytes);
    let mut exec = make(Arc::clone(&region), dir.path());
    let path = dir.path().join("block.bin");
    let old = pattern(1, row_bytes);
    disk.write(&path, &old).unwrap();
    let link = dir.path().join("old-inode");
    disk.hard_link(&path, &link).unwrap();
    fill(&region, 0, 2, false);
    assert_ok(&run_one(&mut exec, op(1, Direction::Store, 0, &path, BlockFormat::Vllm)), "store over a published file");
    assert!(disk.read(&path).unwrap() == pattern(2, row_bytes), "the new block is published");
    assert!(disk.read(&link).unwrap() == old, "the published file was modified in place");
    assert_no_temp_files(disk, dir.path());
}

/// A store that evicts a block ([`crate::Evict`]) takes the victim's file out of the
/// namespace, reusing it or unlinking it, and publishes its own block byte-exact, whether the
/// new block's directory exists yet or not; a victim that is already gone is no error. No temp
/// file is left.
pub fn stores_evict_their_victims<E: Executor>(disk: &dyn Vfs, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    let row_bytes = 8192;
    let dir = scratch_dir();
    let region = region(2, row_bytes);
    let mut exec = make(Arc::clone(&region), dir.path());
    let mut i = 10;
    for reuse in [true, false] {
        for native_format in [false, true] {
            let format = |i| if native_format { native(i) } else { BlockFormat::Vllm };
            for case in ["new directory", "same directory", "victim gone"] {
                let what = format!("reuse {reuse}, native {native_format}, {case}");
                let victim = store_block(&mut exec, &region, dir.path(), i, 0, format(i));
                let path = match case {
                    "same directory" => victim.with_file_name(format!("next-{i}.bin")),
                    _ => block_path(dir.path(), i + 1),
                };
                if case == "victim gone" {
                    disk.remove_file(&victim).unwrap();
                }
                fill(&region, 0, i + 1, true);
                let mut store = op(i + 1, Direction::Store, 0, &path, format(i + 1));
                store.op.evict = Some(Box::new(crate::Evict { path: victim.clone(), reuse }));
                assert_ok(&run_one(&mut exec, store), &what);
                assert!(!disk.exists(&victim), "{what}: the victim left the namespace");
                fill(&region, 1, 0, false);
                assert_ok(&run_one(&mut exec, op(i + 2, Direction::Load, 1, &path, format(i + 1))), &what);
                assert!(block(&region, 1) == pattern(i + 1, row_bytes), "{what}: bytes differ");
                assert_eq!(disk.len(&path).unwrap(), expected_len(&format(i + 1), row_bytes), "{what}");
                i += 3;
            }
        }
    }
    assert_no_temp_files(disk, dir.path());
}

/// Issue 11, item 2: a store that reuses a victim's file of another length (written for
/// another block size, or torn) publishes a file of exactly its own block's length, which
/// loads: the reused file is cut (or extended), never left with the victim's tail.
pub fn a_reused_victim_gets_the_new_length<E: Executor>(disk: &dyn Vfs, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    let row_bytes = 8192;
    let dir = scratch_dir();
    let region = region(2, row_bytes);
    let mut exec = make(Arc::clone(&region), dir.path());
    let mut i = 40;
    for native_format in [false, true] {
        let format = |i| if native_format { native(i) } else { BlockFormat::Vllm };
        let want = expected_len(&format(i), row_bytes);
        for victim_len in [3 * want + 100, want / 2, 0] {
            let what = format!("native {native_format}, victim of {victim_len} bytes");
            let victim = block_path(dir.path(), i);
            disk.create_dir_all(victim.parent().unwrap()).unwrap();
            disk.write(&victim, &vec![0xa5; victim_len as usize]).unwrap();
            let path = block_path(dir.path(), i + 1);
            fill(&region, 0, i + 1, true);
            let mut store = op(i + 1, Direction::Store, 0, &path, format(i + 1));
            store.op.evict = Some(Box::new(crate::Evict { path: victim.clone(), reuse: true }));
            assert_ok(&run_one(&mut exec, store), &what);
            assert_eq!(disk.len(&path).unwrap(), want, "{what}: the published file's length");
            fill(&region, 1, 0, false);
            assert_ok(&run_one(&mut exec, op(i + 2, Direction::Load, 1, &path, format(i + 1))), &what);
            assert!(block(&region, 1) == pattern(i + 1, row_bytes), "{what}: bytes differ");
            i += 3;
        }
    }
    assert_no_temp_files(disk, dir.path());
}

/// A store that cannot publish (the final name is a directory; a path component is a file)
/// fails and leaves no temp file and no final file.
pub fn failed_store_leaves_nothing<E: Executor>(disk: &dyn Vfs, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    let dir = scratch_dir();
    let region = region(1, 4096);
    let mut exec = make(Arc::clone(&region), dir.path());
    fill(&region, 0, 1, false);
    let is_dir = dir.path().join("a-directory.bin");
    disk.create_dir(&is_dir).unwrap();
    disk.write(&is_dir.join("keep"), b"x").unwrap();
    let under_file = dir.path().join("a-file").join("block.bin");
    disk.write(&dir.path().join("a-file"), b"x").unwrap();
    for (t, path) in [is_dir.clone(), under_file].iter().enumerate() {
        for format in formats(1) {
            let o = run_one(&mut exec, op(t as u64, Direction::Store, 0, path, format));
            assert!(matches!(o, Outcome::Failed(_)), "store to {}: {o:?}", path.display());
            assert_no_temp_files(disk, dir.path());
        }
    }
    assert!(disk.is_file(&is_dir.join("keep")));
    assert!(!disk.exists(&dir.path().join("a-file").join("block.bin")));
    assert!(region.lease(SlotId(0), Access::Write).is_ok());
}

/// Hundreds of ops in flight at once: 256 stores, then 256 loads of them interleaved with 256
/// more stores, all submitted before any completion is polled (room is made by polling with
/// `Wait::Forever` only when the executor says it is full).
pub fn many_ops_in_flight<E: Executor>(disk: &dyn Vfs, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    const N: u64 = 256;
    let row_bytes = 16384;
    let dir = scratch_dir();
    let region = region(2 * N as usize, row_bytes);
    let mut exec = make(Arc::clone(&region), dir.path());
    let mut tracker = Tracker::new();
    let submit_all = |exec: &mut E, tracker: &mut Tracker, ops: Vec<TestOp>, done: &mut Vec<(u64, Outcome)>| {
        for mut op in ops {
            while let Err(back) = tracker.submit(exec, op) {
                op = back;
                assert!(poll_some(exec, tracker, done, Wait::Forever) > 0, "full, yet nothing completes");
            }
        }
    };
    let drain = |exec: &mut E, tracker: &mut Tracker, done: &mut Vec<(u64, Outcome)>| {
        while exec.in_flight() > 0 {
            let n = poll_some(exec, tracker, done, Wait::Forever);
            assert!(n > 0, "Wait::Forever returned nothing with ops in flight");
        }
        tracker.take(done);
    };
    for i in 0..N {
        fill(&region, i as u32, i, false);
    }
    let mut done = Vec::new();
    let stores: Vec<TestOp> =
        (0..N).map(|i| op(i, Direction::Store, i as u32, &block_path(dir.path(), i), native(i))).collect();
    submit_all(&mut exec, &mut tracker, stores, &mut done);
    drain(&mut exec, &mut tracker, &mut done);
    let tokens: Vec<u64> = (0..N).collect();
    for (t, o) in collect(std::mem::take(&mut done), &tokens) {
        assert_ok(&o, &format!("store {t}"));
    }

    let mut mixed = Vec::new();
    for i in 0..N {
        mixed.push(op(N + i, Direction::Load, (N + i) as u32, &block_path(dir.path(), i), native(i)));
        mixed.push(op(2 * N + i, Direction::Store, i as u32, &block_path(dir.path(), N + i), native(N + i)));
    }
    submit_all(&mut exec, &mut tracker, mixed, &mut done);
    drain(&mut exec, &mut tracker, &mut done);
    let tokens: Vec<u64> = (N..3 * N).collect();
    for (t, o) in collect(done, &tokens) {
        assert_ok(&o, &format!("op {t}"));
    }
    for i in 0..N {
        assert!(block(&region, (N + i) as u32) == pattern(i, row_bytes), "block {i} differs");
        let len = disk.len(&block_path(dir.path(), N + i)).unwrap();
        assert_eq!(len, format::native_file_len(row_bytes as u64));
    }
    assert_no_temp_files(disk, dir.path());
}

/// `poll` with nothing in flight returns at once whatever the wait; `Wait::Forever` returns as
/// soon as an op completes; `in_flight` counts submitted ops until they are polled.
pub fn poll_waits_as_asked<E: Executor>(_disk: &dyn Vfs, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    let dir = scratch_dir();
    let region = region(2, 4096);
    let mut exec = make(Arc::clone(&region), dir.path());
    let mut out = Vec::new();
    let mut tracker = Tracker::new();
    let t0 = std::time::Instant::now();
    assert_eq!(exec.poll(Wait::Forever).unwrap(), 0);
    assert_eq!(exec.poll(Wait::Timeout(Duration::from_millis(20))).unwrap(), 0);
    assert_eq!(exec.poll(Wait::No).unwrap(), 0);
    assert!(t0.elapsed() < Duration::from_secs(10), "poll waited with nothing in flight");
    assert_eq!(exec.in_flight(), 0);

    fill(&region, 0, 1, false);
    tracker.submit(&mut exec, op(1, Direction::Store, 0, &dir.path().join("a.bin"), BlockFormat::Vllm)).unwrap();
    tracker.submit(&mut exec, op(2, Direction::Load, 1, &dir.path().join("missing.bin"), BlockFormat::Vllm)).unwrap();
    assert_eq!(exec.in_flight(), 2);
    while exec.in_flight() > 0 {
        assert!(poll_some(&mut exec, &mut tracker, &mut out, Wait::Forever) > 0);
    }
    tracker.take(&mut out);
    let by = collect(out, &[1, 2]);
    assert_ok(&by[&1], "store");
    assert!(matches!(by[&2], Outcome::NotFound), "{:?}", by[&2]);
    assert_eq!(exec.poll(Wait::Forever).unwrap(), 0);
}

/// `shutdown` with queued work reports every op exactly once (done or `Cancelled`, nothing
/// else), leaves nothing in flight, releases every lease, publishes nothing for a cancelled
/// store and leaves no temp file; ops submitted afterwards are `Cancelled`; it is idempotent.
pub fn shutdown_reports_every_op<E: Executor>(disk: &dyn Vfs, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    const N: u64 = 300;
    let row_bytes = 256 * 1024;
    let dir = scratch_dir();
    let region = region(N as usize + 1, row_bytes);
    let mut exec = make(Arc::clone(&region), dir.path());
    for i in 0..N {
        fill(&region, i as u32, i, false);
    }
    let mut tracker = Tracker::new();
    let mut tokens = Vec::new();
    for i in 0..N {
        if tracker.submit(&mut exec, op(i, Direction::Store, i as u32, &block_path(dir.path(), i), native(i))).is_err()
        {
            break;
        }
        tokens.push(i);
    }
    exec.shutdown();
    let mut done = Vec::new();
    poll_some(&mut exec, &mut tracker, &mut done, Wait::No);
    assert_eq!(exec.in_flight(), 0, "after shutdown, every op must be reported by one poll");
    let mut cancelled = 0;
    for (t, o) in collect(done, &tokens) {
        let path = block_path(dir.path(), t);
        match o {
            Outcome::Ok => assert!(disk.is_file(&path)),
            Outcome::Cancelled => {
                cancelled += 1;
                assert!(!disk.exists(&path), "a cancelled store published {}", path.display());
            }
            o => panic!("op {t} after shutdown: {o:?}"),
        }
    }
    eprintln!("shutdown: {cancelled} of {} queued stores cancelled", tokens.len());
    for slot in 0..=N as u32 {
        assert!(region.lease(SlotId(slot), Access::Write).is_ok(), "slot {slot} still leased after shutdown");
    }
    assert_no_temp_files(disk, dir.path());

    tracker
        .submit(&mut exec, op(1000, Direction::Load, 0, &block_path(dir.path(), 0), native(0)))
        .expect("accepted after shutdown");
    let mut late = Vec::new();
    poll_some(&mut exec, &mut tracker, &mut late, Wait::Forever);
    assert!(matches!(collect(late, &[1000])[&1000], Outcome::Cancelled));
    exec.shutdown();
    assert_eq!(exec.in_flight(), 0);
}

/// Dropping an executor with work in flight is sound: no panic, every op it accepted is
/// reported (once), every lease is released, no temp file is left, and every published file is
/// complete.
pub fn drop_with_work_in_flight_is_sound<E: Executor>(disk: &dyn Vfs, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    const N: u64 = 128;
    let row_bytes = 64 * 1024;
    let dir = scratch_dir();
    let region = region(2 * N as usize, row_bytes);
    {
        let mut exec = make(Arc::clone(&region), dir.path());
        for i in 0..N {
            fill(&region, i as u32, i, false);
        }
        let stores =
            (0..N / 2).map(|i| op(i, Direction::Store, i as u32, &block_path(dir.path(), i), native(i))).collect();
        run_ops(&mut exec, stores);
        let mut tracker = Tracker::new();
        let mut accepted = Vec::new();
        for i in 0..N / 2 {
            let j = N / 2 + i;
            let load = op(N + i, Direction::Load, (N + i) as u32, &block_path(dir.path(), i), native(i));
            let store = op(j, Direction::Store, j as u32, &block_path(dir.path(), j), native(j));
            for o in [load, store] {
                let token = o.token;
                if tracker.submit(&mut exec, o).is_ok() {
                    accepted.push(token);
                }
            }
        }
        let _ = exec.poll(Wait::No);
        drop(exec);
        let mut done = Vec::new();
        tracker.take(&mut done);
        collect(done, &accepted);
    }
    for slot in 0..2 * N as u32 {
        assert!(region.lease(SlotId(slot), Access::Write).is_ok(), "slot {slot} still leased after drop");
    }
    assert_no_temp_files(disk, dir.path());
    for i in 0..N {
        let path = block_path(dir.path(), i);
        if let Ok(bytes) = disk.read(&path) {
            let header = format::decode_header(&bytes).expect("a published file is complete");
            header.check(&NAMESPACE, &key(i), &bytes[HEADER_LEN..HEADER_LEN + row_bytes]).expect("and correct");
        }
    }
}

/// An op whose slot is leased elsewhere fails (it never races the holder): a load into a slot
/// being read, a store from a slot being written, an out-of-range slot. Reads share: a store
/// from a slot being read succeeds. Two loads into one slot submitted together never both
/// write it at once: both are reported, at least one succeeds, and the slot holds the block.
pub fn lease_conflicts_fail_the_op<E: Executor>(disk: &dyn Vfs, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    let row_bytes = 1 << 20;
    let dir = scratch_dir();
    let region = region(3, row_bytes);
    let mut exec = make(Arc::clone(&region), dir.path());
    let path = store_block(&mut exec, &region, dir.path(), 1, 0, native(1));

    let reader = region.lease(SlotId(0), Access::Read).unwrap();
    let o = run_one(&mut exec, op(2, Direction::Load, 0, &path, native(1)));
    assert!(matches!(o, Outcome::Failed(_)), "load into a read-leased slot: {o:?}");
    let other = dir.path().join("shared-read.bin");
    assert_ok(
        &run_one(&mut exec, op(3, Direction::Store, 0, &other, BlockFormat::Vllm)),
        "store from a read-leased slot",
    );
    drop(reader);

    let writer = region.lease(SlotId(1), Access::Write).unwrap();
    let never = dir.path().join("never.bin");
    let o = run_one(&mut exec, op(4, Direction::Store, 1, &never, BlockFormat::Vllm));
    assert!(matches!(o, Outcome::Failed(_)), "store from a write-leased slot: {o:?}");
    assert!(!disk.exists(&never));
    let o = run_one(&mut exec, op(5, Direction::Load, 1, &path, native(1)));
    assert!(matches!(o, Outcome::Failed(_)), "load into a write-leased slot: {o:?}");
    drop(writer);

    let o = run_one(&mut exec, op(6, Direction::Load, 3, &path, native(1)));
    assert!(matches!(o, Outcome::Failed(_)), "load into an out-of-range slot: {o:?}");

    fill(&region, 2, 0xbad, false);
    let twice = vec![op(7, Direction::Load, 2, &path, native(1)), op(8, Direction::Load, 2, &path, native(1))];
    let by = run_ops(&mut exec, twice);
    assert!(by.values().any(Outcome::is_ok), "two loads into one slot: {by:?}");
    assert!(by.values().all(|o| o.is_ok() || matches!(o, Outcome::Failed(_))), "{by:?}");
    assert!(block(&region, 2) == pattern(1, row_bytes), "the slot holds the block");
    assert!(disk.is_file(&path), "a lease conflict never removes the file");
}

/// Issue 11, item 8: removing a corrupt file never removes a file renamed onto its path after
/// it was read. A writer thread keeps putting a corrupt block at a path (a hard link of one
/// corrupt file) and then, after a random short pause, a fresh good copy (a new inode each
/// time, whose descriptor it keeps), while loads of the path run back to back; after each good
/// copy the writer waits, then checks that its file still has a name. A stat-then-unlink
/// removal, racing the writer's rename, unlinks the good copy (its link count drops to 0);
/// one that sets the file aside before it looks never does. A kernel-only case: the race is
/// between threads on the host's file system (runs a few seconds; the loads must meet the
/// corrupt block for the case to count).
pub fn corrupt_removal_spares_a_file_renamed_in_place<E: Executor>(make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const ROW: usize = 8192;
    const CYCLES: u64 = 1500;
    let dir = scratch_dir();
    let region = region(1, ROW);
    let mut exec = make(Arc::clone(&region), dir.path());
    let path = store_block(&mut exec, &region, dir.path(), 7, 0, native(7));
    let (good, bad) = (dir.path().join("good.master"), dir.path().join("bad.master"));
    fs::rename(&path, &good).unwrap();
    let mut bytes = fs::read(&good).unwrap();
    bytes[HEADER_LEN + 10] ^= 0x40;
    fs::write(&bad, &bytes).unwrap();

    let done = AtomicBool::new(false);
    let wrongly_removed = AtomicU64::new(0);
    let (mut corrupt, mut loaded) = (0u64, 0u64);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut rng = crate::rng::SplitMix64::new(8);
            let (tmp_good, tmp_bad) = (dir.path().join("good.next"), dir.path().join("bad.next"));
            for _ in 0..CYCLES {
                fs::copy(&good, &tmp_good).unwrap();
                let copy = fs::File::open(&tmp_good).unwrap();
                fs::hard_link(&bad, &tmp_bad).unwrap();
                fs::rename(&tmp_bad, &path).unwrap();
                let pause = std::time::Instant::now() + std::time::Duration::from_micros(rng.below(120));
                while std::time::Instant::now() < pause {
                    std::hint::spin_loop();
                }
                fs::rename(&tmp_good, &path).unwrap();
                std::thread::sleep(std::time::Duration::from_micros(300));
                if copy.metadata().unwrap().nlink() == 0 {
                    wrongly_removed.fetch_add(1, Ordering::Relaxed);
                }
            }
            done.store(true, Ordering::Release);
        });
        let mut token = 100;
        while !done.load(Ordering::Acquire) {
            token += 1;
            match run_one(&mut exec, op(token, Direction::Load, 0, &path, native(7))) {
                Outcome::Corrupt(_) => corrupt += 1,
                Outcome::Ok => loaded += 1,
                Outcome::NotFound => {}
                o => panic!("a load racing renames: {o:?}"),
            }
        }
    });
    let wrong = wrongly_removed.load(Ordering::Relaxed);
    eprintln!("{CYCLES} cycles: {corrupt} corrupt readings, {loaded} good ones, {wrong} good files removed");
    assert_eq!(wrong, 0, "a good file renamed onto the path was removed");
    assert!(corrupt > 0, "no load ever read the corrupt block: the case tested nothing");
    assert!(fs::metadata(&good).unwrap().nlink() == 1 && fs::metadata(&bad).unwrap().nlink() == 1);
}

/// Issue 11, item 10: a block stored with `sync` survives a power cut under its final name.
/// `fdatasync` of the temp file makes the bytes durable, but the rename onto the final name is
/// only as durable as the directory holding it: without an `fsync` of that directory (and of
/// the parents of directories the store created), a power cut right after the store reported
/// success leaves the block under its temp name, which start-up then sweeps. The power cut is
/// a copy of a loop-mounted ext4 image (no journal) taken while it is mounted (see
/// [`LoopMount::power_cut`]); kernel-only, and skipped where loop devices cannot be mounted.
pub fn synced_stores_survive_a_power_cut<E: Executor>(make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    const ROW: usize = 8192;
    let dir = scratch_dir();
    let Some(mnt) = LoopMount::new(dir.path(), 64) else { return };
    let root = mnt.mount.join("kv");
    fs::create_dir_all(&root).unwrap();
    let region = region(1, ROW);
    let mut exec = make(Arc::clone(&region), &root);
    let mut stored = Vec::new();
    for i in 0..8u64 {
        fill(&region, 0, i, false);
        // Token 4i: `sync` (see the fixtures), each block in directories of its own.
        let path = block_path(&root, i);
        assert_ok(&run_one(&mut exec, op(4 * i, Direction::Store, 0, &path, native(i))), "synced store");
        stored.push((path.strip_prefix(&root).unwrap().to_path_buf(), fs::read(&path).unwrap()));
    }
    let Some(snap) = mnt.power_cut(dir.path()) else { return };
    let lost: Vec<_> = stored
        .iter()
        .filter(|(rel, bytes)| fs::read(snap.mount.join("kv").join(rel)).ok().as_ref() != Some(bytes))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of 8 synced blocks lost to a power cut: {:?}",
        lost.len(),
        lost.iter().map(|l| &l.0).collect::<Vec<_>>()
    );
    drop(exec);
}

/// A load failing for a transient reason keeps the file, and a later load succeeds.
///
/// Run as a test named `test_path` (`module_path!()::name`): it re-runs that test in a child
/// process whose `RLIMIT_NOFILE` is lowered, where the child fills its descriptor table so
/// `open` fails with `EMFILE`. There, a load must be `Transient` (or `Ok`, for an executor that
/// needs no process descriptor, e.g. io_uring direct descriptors) and keep the file, and a
/// store must be `Transient` (or `Ok`) and leave no temp file; with descriptors free again,
/// the load succeeds. When not privileged, a file with mode 000 (`EACCES`) is also checked in
/// this process (root bypasses permission bits, so that half is skipped as root).
pub fn transient_errors_keep_the_file<E: Executor>(test_path: &str, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    const ROW: usize = 8192;
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        return emfile_child(Path::new(&dir), ROW, make);
    }
    let dir = scratch_dir();
    let region = region(2, ROW);
    let mut exec = make(Arc::clone(&region), dir.path());
    let vllm = store_block(&mut exec, &region, dir.path(), 1, 0, BlockFormat::Vllm);
    let nat = store_block(&mut exec, &region, dir.path(), 2, 0, native(2));

    // EACCES, where permission bits are enforced.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&nat, fs::Permissions::from_mode(0o000)).unwrap();
    if fs::File::open(&nat).is_err() {
        let o = run_one(&mut exec, op(3, Direction::Load, 1, &nat, native(2)));
        assert!(matches!(o, Outcome::Transient(_)), "load of a mode-000 file: {o:?}");
        assert!(nat.is_file(), "a transient failure must keep the file");
    } else {
        eprintln!("transient_errors_keep_the_file: privileged (root): the EACCES half is skipped");
    }
    fs::set_permissions(&nat, fs::Permissions::from_mode(0o644)).unwrap();
    exec.shutdown();
    drop(exec);

    // EMFILE, in a child process.
    let name = test_path.split_once("::").map_or(test_path, |(_, rest)| rest);
    let exe = std::env::current_exe().expect("the test binary");
    let output = Command::new("/bin/sh")
        .arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" \"$@\"")
        .arg(exe)
        .args(["--exact", name, "--test-threads=1", "--nocapture"])
        .env(CHILD_ENV, dir.path())
        .output()
        .expect("run the child test");
    let log = format!(
        "child test {name}:\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{log}");
    assert!(dir.path().join(CHILD_MARKER).is_file(), "the child did not run the case (wrong test name?)\n{log}");
    assert!(vllm.is_file() && nat.is_file(), "the files survive the transient failures");
    assert_no_temp_files(&HostFs::default(), dir.path());
}

fn emfile_child<E: Executor>(dir: &Path, row_bytes: usize, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    let region = region(2, row_bytes);
    let mut exec = make(Arc::clone(&region), dir);
    let files = [(block_path(dir, 1), BlockFormat::Vllm, 1), (block_path(dir, 2), native(2), 2)];
    let fresh = block_path(dir, 3);

    let mut hold = Vec::new();
    loop {
        match fs::File::open("/dev/null") {
            Ok(f) => hold.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("filling the descriptor table: {e}"),
        }
        assert!(hold.len() < 100_000, "RLIMIT_NOFILE was not lowered");
    }
    for (t, (path, format, _)) in files.iter().enumerate() {
        let o = run_one(&mut exec, op(t as u64, Direction::Load, 1, path, *format));
        match &o {
            Outcome::Transient(_) => {}
            Outcome::Ok => {
                eprintln!("load under EMFILE succeeded: this executor needs no descriptor")
            }
            o => panic!("load of {} with no descriptor left: {o:?}", path.display()),
        }
        assert!(path.is_file(), "a transient failure must keep the file");
    }
    fill(&region, 0, 3, false);
    let o = run_one(&mut exec, op(5, Direction::Store, 0, &fresh, BlockFormat::Vllm));
    assert!(matches!(o, Outcome::Transient(_) | Outcome::Ok), "store with no descriptor left: {o:?}");
    drop(hold);
    assert_no_temp_files(&HostFs::default(), dir);
    if fresh.exists() {
        fs::remove_file(&fresh).unwrap();
    }

    for (t, (path, format, seed)) in files.iter().enumerate() {
        fill(&region, 1, 0xbad, false);
        assert_ok(
            &run_one(&mut exec, op(10 + t as u64, Direction::Load, 1, path, *format)),
            "load once descriptors are free",
        );
        assert!(block(&region, 1) == pattern(*seed, row_bytes));
    }
    exec.shutdown();
    fs::write(dir.join(CHILD_MARKER), b"ok").unwrap();
}
