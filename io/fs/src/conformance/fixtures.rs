//! What the cases are built from: scratch directories and regions, deterministic blocks and
//! keys, ops named by a token, and a [`Tracker`] that gives each op a job of its own in a
//! [`JobTable`] and reads its outcome back from there, as the FS tier does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kvtier_core::{Direction, JobTable, OffloadKey, Part, SlotId};
use tempfile::TempDir;

use crate::region::{Access, PrimaryRegion};
use crate::rng::SplitMix64;
use crate::vfs::{HostFs, Vfs};
use crate::{tmpname, BlockFormat, Executor, Extent, FileOp, Full, Outcome, Target, Wait};

/// The namespace digest native blocks are written under.
pub const NAMESPACE: [u8; 12] = *b"0123456789ab";
/// Another namespace: its blocks are foreign to [`NAMESPACE`].
pub const OTHER_NAMESPACE: [u8; 12] = *b"ba9876543210";

/// Longest a case waits for one completion before declaring the executor stuck.
pub const STUCK: Duration = Duration::from_secs(120);

/// Row sizes every round trip is run with: one page, three pages, and an unaligned size.
pub const ROW_SIZES: [usize; 3] = [4096, 12288, 5000];

/// A fresh scratch directory under [`std::env::temp_dir`].
pub fn scratch_dir() -> TempDir {
    tempfile::Builder::new().prefix("kvtier-conformance-").tempdir().expect("create a scratch directory")
}

/// A region of `rows` rows of `row_bytes`.
pub fn region(rows: usize, row_bytes: usize) -> Arc<PrimaryRegion> {
    Arc::new(PrimaryRegion::anonymous(rows, row_bytes).expect("map a region"))
}

/// The `x`-th output of a [`SplitMix64`] started at 0 (a bijective mix of `x`).
fn splitmix(x: u64) -> u64 {
    SplitMix64::new(x).next_u64()
}

/// `len` pseudo-random bytes determined by `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(&splitmix(seed.wrapping_mul(0x1_0000_0001).wrapping_add(i)).to_le_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// Block `i`'s key: a 16-byte hash part and group `i % 3`.
pub fn key(i: u64) -> OffloadKey {
    let mut hash = [0u8; 16];
    hash[..8].copy_from_slice(&splitmix(i).to_le_bytes());
    hash[8..].copy_from_slice(&splitmix(!i).to_le_bytes());
    OffloadKey::new(&hash, (i % 3) as u32).expect("a 20-byte key")
}

/// Block `i`'s file under `root`, laid out like the FS tier's (`{h[0:3]}/{h[3:5]}_g{g}/{h}.bin`).
pub fn block_path(root: &Path, i: u64) -> PathBuf {
    let k = key(i);
    let h: String = k.hash().iter().map(|b| format!("{b:02x}")).collect();
    root.join(&h[..3]).join(format!("{}_g{}", &h[3..5], k.group())).join(format!("{h}.bin"))
}

/// The native format for block `i` under [`NAMESPACE`].
pub fn native(i: u64) -> BlockFormat {
    BlockFormat::Native { namespace: NAMESPACE, key: key(i) }
}

/// Fills row `slot` with `pattern(seed)`; with `dirty_tail`, the bytes between `row_bytes` and
/// the stride are set to a non-zero value too (a well-behaved executor never writes them to a
/// file: the native format pads with zeros).
pub fn fill(region: &Arc<PrimaryRegion>, slot: u32, seed: u64, dirty_tail: bool) {
    let mut lease = region.lease(SlotId(slot), Access::Write).expect("fill: slot is free");
    let row_bytes = region.row_bytes();
    let row = lease.as_mut_slice().expect("a write lease");
    row[..row_bytes].copy_from_slice(&pattern(seed, row_bytes));
    row[row_bytes..].fill(if dirty_tail { 0xee } else { 0 });
}

/// A copy of row `slot`'s block bytes.
pub fn block(region: &Arc<PrimaryRegion>, slot: u32) -> Vec<u8> {
    region.lease(SlotId(slot), Access::Read).expect("block: slot is not write-leased").block().to_vec()
}

/// An op, and the token a case knows it by.
#[derive(Debug, Clone)]
pub struct TestOp {
    /// The case's name for the op.
    pub token: u64,
    /// The op.
    pub op: FileOp,
}

/// An op on a block file (`sync` on every fourth token).
pub fn op(token: u64, dir: Direction, slot: u32, path: &Path, format: BlockFormat) -> TestOp {
    with_target(token, dir, slot, Target::Path(path.to_path_buf()), format)
}

/// An op on an extent of an opened file (`sync` on every fourth token).
pub fn extent_op(token: u64, dir: Direction, slot: u32, extent: Extent, format: BlockFormat) -> TestOp {
    with_target(token, dir, slot, Target::Extent(extent), format)
}

fn with_target(token: u64, dir: Direction, slot: u32, target: Target, format: BlockFormat) -> TestOp {
    let op =
        FileOp { dir, slot: SlotId(slot), target, format, sync: token % 4 == 0, mode: Default::default(), evict: None };
    TestOp { token, op }
}

/// Ops submitted through a [`JobTable`], one job of one part per op, and their outcomes read
/// back from it: what the FS tier does, with tokens for jobs.
#[derive(Debug)]
pub struct Tracker {
    table: JobTable,
    /// Token of each job in flight, by job index.
    tokens: HashMap<usize, u64>,
    /// Parts of ops the executor handed back (full), for their resubmission.
    waiting: HashMap<u64, Part>,
    codes: Vec<u32>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    /// Room for 16384 ops in flight.
    pub fn new() -> Tracker {
        Tracker {
            table: JobTable::new(16384, 16384),
            tokens: HashMap::new(),
            waiting: HashMap::new(),
            codes: Vec::new(),
        }
    }

    /// Submits `op` with a part of a job of its own; an op the executor is too full for comes
    /// back (its part is kept for the next try).
    // Back by value, as `Executor::submit` hands it: the rare path.
    #[allow(clippy::result_large_err)]
    pub fn submit<E: Executor + ?Sized>(&mut self, exec: &mut E, op: TestOp) -> Result<(), TestOp> {
        let part = match self.waiting.remove(&op.token) {
            Some(part) => part,
            None => {
                let job = self.table.open().expect("the tracker's table has room");
                let part = self.table.add_part(job).expect("the tracker's table has room");
                self.table.close(job).expect("just opened");
                assert!(self.tokens.insert(job.index(), op.token).is_none(), "token {} in flight twice", op.token);
                part
            }
        };
        match exec.submit(op.op, part) {
            Ok(()) => Ok(()),
            Err(Full { op: back, part }) => {
                self.waiting.insert(op.token, part);
                Err(TestOp { token: op.token, op: back })
            }
        }
    }

    /// Appends the `(token, outcome)` of every op finished since the last call.
    pub fn take(&mut self, out: &mut Vec<(u64, Outcome)>) {
        while let Some(job) = self.table.take_finished(&mut self.codes) {
            let token = self.tokens.remove(&job.index()).expect("a tracked job");
            assert_eq!(self.codes.len(), 1, "token {token}: one part per job");
            out.push((token, Outcome::from_code(self.codes[0])));
        }
    }

    /// Ops submitted whose outcome was not taken yet.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.waiting.len()
    }
}

/// A small ext4 image mounted on a loop device, unmounted on drop.
pub struct LoopMount {
    image: PathBuf,
    /// Where the file system is mounted.
    pub mount: PathBuf,
}

impl LoopMount {
    /// Makes a `mib` MiB ext4 image (no journal) in `dir` and mounts it at `dir/mnt`; `None`
    /// (with a "skipped" line) where that cannot be done (needs root, `mkfs.ext4`, loop devices).
    pub fn new(dir: &Path, mib: u32) -> Option<LoopMount> {
        let image = dir.join("fs.img");
        let mount = dir.join("mnt");
        std::fs::create_dir_all(&mount).ok()?;
        let run = |cmd: &str, args: &[&str]| {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .map(|o| o.status.success().then_some(()).ok_or(o))
                .ok()?
                .ok()
        };
        let img = image.to_str()?;
        if run("truncate", &["-s", &format!("{mib}M"), img]).is_none()
            || run("mkfs.ext4", &["-q", "-F", "-O", "^has_journal", img]).is_none()
            || run("mount", &["-o", "loop", img, mount.to_str()?]).is_none()
        {
            eprintln!("skipped: cannot mount a loop device here (needs root, mkfs.ext4 and loop devices)");
            return None;
        }
        Some(LoopMount { image, mount })
    }
}

impl LoopMount {
    /// What a power cut would leave of the file system now, mounted read-only at `dir/snap`:
    /// a copy of the image taken while it is mounted holds every write the file system has
    /// issued to the device (the loop device writes through to the image file) and nothing it
    /// still holds in memory (dirty directory blocks, say), repaired by `e2fsck` as a boot
    /// would. `None` (with a "skipped" line) where that cannot be done.
    pub fn power_cut(&self, dir: &Path) -> Option<LoopMount> {
        let image = dir.join("snap.img");
        let mount = dir.join("snap");
        std::fs::create_dir_all(&mount).ok()?;
        let ok = |cmd: &mut std::process::Command| cmd.output().is_ok_and(|o| o.status.success());
        let copied = ok(std::process::Command::new("cp").arg("--sparse=always").arg(&self.image).arg(&image));
        // e2fsck exits 1 when it repaired the file system: expected after a power cut.
        let checked = std::process::Command::new("e2fsck")
            .arg("-fy")
            .arg(&image)
            .output()
            .is_ok_and(|o| matches!(o.status.code(), Some(0 | 1)));
        let mounted = ok(std::process::Command::new("mount").arg("-o").arg("loop,ro").arg(&image).arg(&mount));
        if !(copied && checked && mounted) {
            eprintln!("skipped: cannot copy, repair and mount the image (cp, e2fsck, mount)");
            let _ = std::fs::remove_file(&image);
            return None;
        }
        Some(LoopMount { image, mount })
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mount).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Every temp file (by [`tmpname::parse_temp`]) under `root`.
pub fn temp_files(root: &Path) -> Vec<PathBuf> {
    temp_files_on(&HostFs::default(), root)
}

/// Every temp file (by [`tmpname::parse_temp`]) under `root` on `disk`.
pub fn temp_files_on(disk: &dyn Vfs, root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = disk.read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = dir.join(&entry.name);
            if entry.is_dir {
                stack.push(path);
            } else if tmpname::parse_temp(&entry.name).is_some() {
                found.push(path);
            }
        }
    }
    found
}

pub(super) fn assert_no_temp_files(disk: &dyn Vfs, root: &Path) {
    let left = temp_files_on(disk, root);
    assert!(left.is_empty(), "temp files left behind: {left:?}");
}

/// Polls once with `wait`, checking the count against `in_flight`, and appends what finished.
pub fn poll_some<E: Executor + ?Sized>(
    exec: &mut E,
    tracker: &mut Tracker,
    out: &mut Vec<(u64, Outcome)>,
    wait: Wait,
) -> usize {
    let before = exec.in_flight();
    let n = exec.poll(wait).expect("poll");
    assert_eq!(exec.in_flight(), before - n, "in_flight must drop by what poll returned");
    tracker.take(out);
    n
}

/// Submits every op (polling for room whenever the executor is full), then polls until nothing
/// is in flight. Returns each op's outcome by token; panics on a token reported twice or never.
pub fn run_ops<E: Executor + ?Sized>(exec: &mut E, ops: Vec<TestOp>) -> HashMap<u64, Outcome> {
    let tokens: Vec<u64> = ops.iter().map(|o| o.token).collect();
    let mut tracker = Tracker::new();
    let mut done = Vec::new();
    let base = exec.in_flight();
    let mut counted = 0;
    for (submitted, mut op) in ops.into_iter().enumerate() {
        loop {
            match tracker.submit(exec, op) {
                Ok(()) => break,
                Err(back) => {
                    op = back;
                    assert!(exec.in_flight() > 0, "executor full with nothing in flight");
                    counted += poll_some(exec, &mut tracker, &mut done, Wait::Timeout(STUCK));
                }
            }
        }
        assert_eq!(exec.in_flight() + counted, base + submitted + 1, "in_flight counts submitted, not polled ops");
    }
    while exec.in_flight() > 0 {
        let n = poll_some(exec, &mut tracker, &mut done, Wait::Timeout(STUCK));
        assert!(n > 0, "no completion within {STUCK:?}");
    }
    // Every op was counted by a poll, so every part was reported before.
    tracker.take(&mut done);
    assert_eq!(tracker.pending(), 0, "ops counted by poll but not reported");
    collect(done, &tokens)
}

/// The outcomes by token, checking each of `tokens` was reported exactly once.
pub fn collect(done: Vec<(u64, Outcome)>, tokens: &[u64]) -> HashMap<u64, Outcome> {
    let mut by_token = HashMap::new();
    for (token, outcome) in done {
        assert!(tokens.contains(&token), "unknown token {token} reported");
        assert!(by_token.insert(token, outcome).is_none(), "token {token} reported twice");
    }
    for t in tokens {
        assert!(by_token.contains_key(t), "token {t} never reported");
    }
    by_token
}

/// Runs one op and returns its outcome.
pub fn run_one<E: Executor + ?Sized>(exec: &mut E, op: TestOp) -> Outcome {
    let token = op.token;
    run_ops(exec, vec![op]).remove(&token).expect("reported")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn fixtures_are_deterministic_and_distinct() {
        assert_eq!(pattern(1, 5000), pattern(1, 5000));
        assert_ne!(pattern(1, 64), pattern(2, 64));
        assert_eq!(pattern(3, 4097).len(), 4097);
        assert_ne!(key(1), key(2));
        let root = Path::new("/r");
        let p = block_path(root, 1);
        let h: String = key(1).hash().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(p, root.join(&h[..3]).join(format!("{}_g1", &h[3..5])).join(format!("{h}.bin")));
    }

    #[test]
    fn temp_files_are_found_at_any_depth() {
        let dir = scratch_dir();
        let deep = dir.path().join("a/b");
        fs::create_dir_all(&deep).unwrap();
        let t = tmpname::temp_path(&deep.join("x.bin"), 7);
        fs::write(&t, b"").unwrap();
        fs::write(deep.join("x.bin"), b"").unwrap();
        assert_eq!(temp_files(dir.path()), vec![t]);
    }
}
