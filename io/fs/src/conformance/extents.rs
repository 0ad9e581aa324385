//! The cases on extents ([`crate::Target::Extent`]): blocks stored at offsets of one file the
//! executor opened ([`Executor::open_file`]), as a region-based disk engine lays them out.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kvtier_core::{Direction, SlotId};

use super::cases::{assert_ok, format_name, formats};
use super::fixtures::*;
use crate::format::{self, HEADER_LEN};
use crate::region::{Access, PrimaryRegion};
use crate::vfs::Vfs;
use crate::{BlockFormat, BlockLayout, Executor, Extent, FileId, OpError, Outcome, DIRECT_ALIGN};

/// Blocks per extent file.
const N: u64 = 16;

/// A file of `len` pattern bytes (seed `seed`) at `dir/name`, created through `disk`.
fn device(disk: &dyn Vfs, dir: &Path, name: &str, len: usize, seed: u64) -> PathBuf {
    let path = dir.join(name);
    disk.write(&path, &pattern(seed, len)).expect("create the extent file");
    path
}

/// Extent `i` of `file` for blocks of `layout`: `pitch` bytes apart, every fifth one 512 bytes
/// past its aligned start (so it goes buffered under `O_DIRECT`).
fn extent(file: FileId, layout: &BlockLayout, pitch: u64, i: u64) -> Extent {
    let skew = if i % 5 == 4 { 512 } else { 0 };
    Extent { file, offset: i * pitch + skew, len: layout.file_len() }
}

/// Room for a block and the skew, aligned.
fn pitch(layout: &BlockLayout) -> u64 {
    (layout.file_len() + 512).next_multiple_of(DIRECT_ALIGN as u64)
}

/// Blocks of every [`ROW_SIZES`] size, in both formats, stored at extents of one file (some at
/// offsets not aligned for `O_DIRECT`) from shuffled slots with dirty tails, and loaded back
/// into slots pre-filled with garbage: byte-exact, each extent laid out as its format says, the
/// bytes between extents untouched, the file's length unchanged, every slot free again.
pub fn extents_round_trip<E: Executor>(disk: &dyn Vfs, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    for row_bytes in ROW_SIZES {
        for fmt in 0..2 {
            let dir = scratch_dir();
            let region = region(2 * N as usize, row_bytes);
            let mut exec = make(Arc::clone(&region), dir.path());
            let format = |i| formats(i)[fmt];
            let what = format!("{} format, {row_bytes}-byte rows, extents", format_name(&format(0)));
            let layout = BlockLayout::new(&format(0), row_bytes, region.stride()).unwrap();
            let pitch = pitch(&layout);
            let len = (N * pitch) as usize;
            let path = device(disk, dir.path(), "device", len, 77);
            let file = exec.open_file(&path).expect("open the extent file");
            let src = |i: u64| ((i * 7) % N) as u32;
            let dst = |i: u64| N as u32 + ((i * 3 + 1) % N) as u32;
            for i in 0..N {
                fill(&region, src(i), i, i % 2 == 1);
                fill(&region, dst(i), 0xdead_0000 + i, true);
            }
            let ext = |i| extent(file, &layout, pitch, i);
            let stores = (0..N).map(|i| extent_op(i, Direction::Store, src(i), ext(i), format(i))).collect();
            for (t, o) in run_ops(&mut exec, stores) {
                assert_ok(&o, &format!("{what}: store {t}"));
                region.lease(SlotId(src(t)), Access::Write).expect("a reported store's slot is released");
            }
            let bytes = disk.read(&path).unwrap();
            assert_eq!(bytes.len(), len, "{what}: stores within the file keep its length");
            let before = pattern(77, len);
            let mut covered = vec![false; len];
            for i in 0..N {
                let e = ext(i);
                let (at, end) = (e.offset as usize, (e.offset + e.len) as usize);
                covered[at..end].fill(true);
                let stored = &bytes[at..end];
                match format(i) {
                    BlockFormat::Vllm => assert!(stored == pattern(i, row_bytes), "{what}: extent {i} is the raw row"),
                    BlockFormat::Native { .. } => {
                        let header = format::decode_header(stored).expect("the header decodes");
                        header.check(&NAMESPACE, &key(i), &pattern(i, row_bytes)).expect("the header checks");
                        assert!(stored[HEADER_LEN..HEADER_LEN + row_bytes] == pattern(i, row_bytes), "{what}: payload");
                        assert!(stored[HEADER_LEN + row_bytes..].iter().all(|&b| b == 0), "{what}: zero padded");
                    }
                }
            }
            let strays = (0..len).filter(|&b| !covered[b] && bytes[b] != before[b]).count();
            assert_eq!(strays, 0, "{what}: bytes outside the extents changed");
            let loads = (0..N).map(|i| extent_op(100 + i, Direction::Load, dst(i), ext(i), format(i))).collect();
            for (t, o) in run_ops(&mut exec, loads) {
                assert_ok(&o, &format!("{what}: load {t}"));
                region.lease(SlotId(dst(t - 100)), Access::Write).expect("a reported load's slot is released");
            }
            for i in 0..N {
                assert!(
                    block(&region, dst(i)) == pattern(i, row_bytes),
                    "{what}: block {i} differs after the round trip"
                );
            }
            exec.shutdown();
        }
    }
}

/// A damaged extent (a flipped payload byte; a block of another key; a range that ends past
/// the end of the file) is `Corrupt` on load, and nothing is removed: the file keeps its name
/// and length, and the other extents still load.
pub fn damaged_extents_are_corrupt_and_kept<E: Executor>(
    disk: &dyn Vfs,
    make: impl Fn(Arc<PrimaryRegion>, &Path) -> E,
) {
    let row_bytes = 12288;
    let dir = scratch_dir();
    let region = region(2, row_bytes);
    let mut exec = make(Arc::clone(&region), dir.path());
    let layout = BlockLayout::new(&native(0), row_bytes, region.stride()).unwrap();
    let pitch = pitch(&layout);
    let len = (3 * pitch) as usize;
    let path = device(disk, dir.path(), "device", len, 5);
    let file = exec.open_file(&path).unwrap();
    let ext = |i| extent(file, &layout, pitch, i);
    for i in 0..3 {
        fill(&region, 0, i, false);
        assert_ok(&run_one(&mut exec, extent_op(i, Direction::Store, 0, ext(i), native(i))), "store");
    }
    let mut bytes = disk.read(&path).unwrap();
    bytes[(ext(1).offset as usize) + HEADER_LEN + 100] ^= 0x20;
    disk.write(&path, &bytes).unwrap();
    let load = |exec: &mut E, t, e, format| run_one(exec, extent_op(t, Direction::Load, 1, e, format));
    let o = load(&mut exec, 10, ext(1), native(1));
    assert_eq!(o, Outcome::Corrupt("payload checksum"), "a flipped payload byte");
    let o = load(&mut exec, 11, ext(2), native(7));
    assert_eq!(o, Outcome::Corrupt("wrong key"), "a block of another key");
    let past = Extent { offset: len as u64 - 4096, ..ext(0) };
    let o = load(&mut exec, 12, past, native(0));
    assert_eq!(o, Outcome::Corrupt("wrong length"), "an extent past the end of the file");
    let vllm_past = Extent { offset: len as u64, len: row_bytes as u64, ..ext(0) };
    let o = load(&mut exec, 13, vllm_past, BlockFormat::Vllm);
    assert_eq!(o, Outcome::Corrupt("wrong length"), "a vLLM-format extent past the end of the file");
    assert_eq!(disk.len(&path).unwrap(), len as u64, "nothing is removed or truncated");
    for i in [0, 2] {
        assert_ok(&load(&mut exec, 20 + i, ext(i), native(i)), "an intact extent");
        assert!(block(&region, 1) == pattern(i, row_bytes));
    }
}

/// Extent ops that cannot run as asked fail, touching nothing: an unknown file, a length that
/// is not the block's, a store that evicts, a slot leased elsewhere. Opening a file that does
/// not exist fails.
pub fn extent_ops_are_checked<E: Executor>(disk: &dyn Vfs, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    let row_bytes = 8192;
    let dir = scratch_dir();
    let region = region(2, row_bytes);
    let mut exec = make(Arc::clone(&region), dir.path());
    assert!(exec.open_file(&dir.path().join("no-such-device")).is_err(), "opening a missing file");
    let layout = BlockLayout::new(&native(0), row_bytes, region.stride()).unwrap();
    let len = 4 * pitch(&layout) as usize;
    let path = device(disk, dir.path(), "device", len, 9);
    let file = exec.open_file(&path).unwrap();
    fill(&region, 0, 1, false);
    let good = Extent { file, offset: 0, len: layout.file_len() };
    let failed = |o: Outcome, e: OpError, what: &str| assert_eq!(o, Outcome::Failed(e), "{what}");

    let unknown = Extent { file: FileId(file.0 + 1000), ..good };
    failed(run_one(&mut exec, extent_op(1, Direction::Store, 0, unknown, native(1))), OpError::Invalid, "unknown file");
    failed(run_one(&mut exec, extent_op(2, Direction::Load, 1, unknown, native(1))), OpError::Invalid, "unknown file");
    let long = Extent { len: layout.file_len() + 1, ..good };
    failed(run_one(&mut exec, extent_op(3, Direction::Store, 0, long, native(1))), OpError::Geometry, "length");
    failed(run_one(&mut exec, extent_op(5, Direction::Load, 1, long, native(1))), OpError::Geometry, "length");
    let mut evicting = extent_op(6, Direction::Store, 0, good, native(1));
    evicting.op.evict = Some(Box::new(crate::Evict { path: dir.path().join("victim"), reuse: true }));
    failed(run_one(&mut exec, evicting), OpError::Invalid, "an extent store that evicts");
    let writer = region.lease(SlotId(1), Access::Write).unwrap();
    failed(run_one(&mut exec, extent_op(7, Direction::Load, 1, good, native(1))), OpError::Busy, "a busy slot");
    drop(writer);
    assert!(disk.read(&path).unwrap() == pattern(9, len), "no refused op wrote anything");
    assert_ok(&run_one(&mut exec, extent_op(9, Direction::Store, 0, good, native(1))), "then a good store");
}
