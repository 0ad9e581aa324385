//! The cases on batches ([`Executor::submit_batch`]): several blocks written as one transfer at
//! an offset of an opened file, bytes an engine owns, and copies of a block within the file, as
//! a region-based disk engine appends, summarizes and reinserts.

use std::path::Path;
use std::sync::Arc;

use kvtier_core::{Direction, JobTable, SlotId};

use super::cases::{assert_ok, formats};
use super::fixtures::*;
use crate::format::{self, HEADER_LEN};
use crate::region::{Access, PrimaryRegion};
use crate::vfs::Vfs;
use crate::{
    Batch, BatchBlock, BatchData, BatchFull, BlockFormat, BlockLayout, Executor, Extent, FileId, OpError, Outcome,
    Wait, DIRECT_ALIGN,
};

/// Blocks per batch in the round trip.
const N: u64 = 12;

/// Submits `batch` with one job of as many parts as it asks for (`parts`: that many, whatever
/// the batch says, to check mismatches), polls until the executor has nothing in flight, and
/// returns the parts' outcomes in order.
pub fn run_batch<E: Executor + ?Sized>(exec: &mut E, batch: Batch, parts: usize) -> Vec<Outcome> {
    let mut table = JobTable::new(1, parts.max(1));
    let job = table.open().expect("a job");
    let parts: Vec<_> = (0..parts).map(|_| table.add_part(job).expect("a part")).collect();
    table.close(job).expect("open");
    let (mut batch, mut parts) = (batch, parts);
    loop {
        match exec.submit_batch(batch, parts) {
            Ok(()) => break,
            Err(BatchFull { batch: b, parts: p }) => {
                (batch, parts) = (b, p);
                assert!(exec.in_flight() > 0, "executor full with nothing in flight");
                exec.poll(Wait::Timeout(STUCK)).expect("poll");
            }
        }
    }
    while exec.in_flight() > 0 {
        let n = exec.poll(Wait::Timeout(STUCK)).expect("poll");
        assert!(n > 0, "no completion within {STUCK:?}");
    }
    let mut codes = Vec::new();
    assert!(table.take_finished(&mut codes).is_some(), "the batch's job finished once every part was reported");
    codes.into_iter().map(Outcome::from_code).collect()
}

/// A file of `len` pattern bytes (seed `seed`) at `dir/name`, created through `disk`.
fn device(disk: &dyn Vfs, dir: &Path, name: &str, len: usize, seed: u64) -> std::path::PathBuf {
    let path = dir.join(name);
    disk.write(&path, &pattern(seed, len)).expect("create the device file");
    path
}

fn blocks_batch(file: FileId, offset: u64, blocks: Vec<BatchBlock>, sync: bool) -> Batch {
    Batch { file, offset, data: BatchData::Blocks(blocks), sync }
}

/// Batches of blocks of every [`ROW_SIZES`] size, the two formats mixed in one batch, from
/// shuffled slots with dirty tails, at an aligned and at a misaligned offset (which goes
/// buffered under `O_DIRECT`), with and without `sync`: each block lies back to back as its
/// format lays it out, a native header carries the block's sequence number, nothing outside
/// the batch changes, every slot is free again, and each block loads back byte-exact as an
/// extent. Then a batch of bytes lands as it is.
pub fn batches_round_trip<E: Executor>(disk: &dyn Vfs, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    for row_bytes in ROW_SIZES {
        for (offset, sync) in [(0u64, false), (3 * DIRECT_ALIGN as u64 + 512, true)] {
            let dir = scratch_dir();
            let region = region(2 * N as usize, row_bytes);
            let mut exec = make(Arc::clone(&region), dir.path());
            let what = format!("{row_bytes}-byte rows, batch at {offset}");
            let format = |i: u64| formats(i)[(i % 2) as usize];
            let layouts: Vec<BlockLayout> =
                (0..N).map(|i| BlockLayout::new(&format(i), row_bytes, region.stride()).unwrap()).collect();
            let total: u64 = layouts.iter().map(|l| l.file_len()).sum();
            let len = (offset + total + 3 * DIRECT_ALIGN as u64) as usize;
            let path = device(disk, dir.path(), "device", len, 41);
            let file = exec.open_file(&path).expect("open the device");
            let src = |i: u64| ((i * 5) % N) as u32;
            for i in 0..N {
                fill(&region, src(i), i, i % 3 != 0);
            }
            let blocks =
                (0..N).map(|i| BatchBlock { slot: SlotId(src(i)), format: format(i), seq: 1000 + i }).collect();
            let outcomes = run_batch(&mut exec, blocks_batch(file, offset, blocks, sync), N as usize);
            assert_eq!(outcomes.len(), N as usize, "{what}: one outcome per block");
            for o in &outcomes {
                assert_ok(o, &what);
            }
            for i in 0..N {
                region.lease(SlotId(src(i)), Access::Write).expect("a reported batch's rows are released");
            }
            let bytes = disk.read(&path).unwrap();
            assert_eq!(bytes.len(), len, "{what}: the file keeps its length");
            let before = pattern(41, len);
            assert!(bytes[..offset as usize] == before[..offset as usize], "{what}: bytes before the batch changed");
            let end = (offset + total) as usize;
            assert!(bytes[end..] == before[end..], "{what}: bytes after the batch changed");
            let mut at = offset;
            let mut extents = Vec::new();
            for i in 0..N {
                let l = &layouts[i as usize];
                let stored = &bytes[at as usize..(at + l.file_len()) as usize];
                match format(i) {
                    BlockFormat::Vllm => assert!(stored == pattern(i, row_bytes), "{what}: block {i} is the raw row"),
                    BlockFormat::Native { .. } => {
                        let h = format::decode_header(stored).expect("the header decodes");
                        h.check(&NAMESPACE, &key(i), &pattern(i, row_bytes)).expect("the header checks");
                        assert_eq!(h.seq, 1000 + i, "{what}: block {i}'s sequence number");
                        assert!(stored[HEADER_LEN + row_bytes..].iter().all(|&b| b == 0), "{what}: zero padded");
                    }
                }
                extents.push(Extent { file, offset: at, len: l.file_len() });
                at += l.file_len();
            }
            let loads =
                (0..N).map(|i| extent_op(i, Direction::Load, (N + i) as u32, extents[i as usize], format(i))).collect();
            for (t, o) in run_ops(&mut exec, loads) {
                assert_ok(&o, &format!("{what}: load {t}"));
            }
            for i in 0..N {
                assert!(block(&region, (N + i) as u32) == pattern(i, row_bytes), "{what}: block {i} round trip");
            }
            let bytes = pattern(7, 5000);
            let batch = Batch { file, offset: 100, data: BatchData::Bytes(bytes.clone()), sync };
            assert_ok(&run_batch(&mut exec, batch, 1)[0], &format!("{what}: bytes"));
            assert!(disk.read(&path).unwrap()[100..5100] == bytes[..], "{what}: bytes land as they are");
            exec.shutdown();
        }
    }
}

/// A copy verifies the block at its source and rewrites it at the destination with the new
/// sequence number (it then loads from there); a damaged source, a block of another key, or a
/// source past the end of the file is `Corrupt` and writes nothing.
pub fn batch_copies_verify_and_renumber<E: Executor>(disk: &dyn Vfs, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    let row_bytes = 12288;
    let dir = scratch_dir();
    let region = region(2, row_bytes);
    let mut exec = make(Arc::clone(&region), dir.path());
    let layout = BlockLayout::new(&native(0), row_bytes, region.stride()).unwrap();
    let rec = layout.file_len();
    let len = (5 * rec) as usize;
    let path = device(disk, dir.path(), "device", len, 3);
    let file = exec.open_file(&path).unwrap();
    fill(&region, 0, 9, true);
    let store = blocks_batch(file, 0, vec![BatchBlock { slot: SlotId(0), format: native(9), seq: 5 }], false);
    assert_ok(&run_batch(&mut exec, store, 1)[0], "store the source");
    let copy =
        |from, to, seq, format| Batch { file, offset: to, data: BatchData::Copy { from, format, seq }, sync: false };
    assert_ok(&run_batch(&mut exec, copy(0, 2 * rec, 77, native(9)), 1)[0], "a copy");
    let bytes = disk.read(&path).unwrap();
    let h = format::decode_header(&bytes[2 * rec as usize..]).expect("the copy's header");
    assert_eq!(h.seq, 77, "the copy carries its new sequence number");
    assert_eq!(format::decode_header(&bytes).unwrap().seq, 5, "the source is untouched");
    let load = extent_op(1, Direction::Load, 1, Extent { file, offset: 2 * rec, len: rec }, native(9));
    assert_ok(&run_one(&mut exec, load), "load the copy");
    assert!(block(&region, 1) == pattern(9, row_bytes));

    let untouched = |disk: &dyn Vfs, what: &str| {
        let now = disk.read(&path).unwrap();
        assert!(now[3 * rec as usize..] == pattern(3, len)[3 * rec as usize..], "{what}: the destination was written");
    };
    let o = run_batch(&mut exec, copy(0, 3 * rec, 78, native(10)), 1)[0];
    assert_eq!(o, Outcome::Corrupt("wrong key"), "a block of another key");
    untouched(disk, "wrong key");
    let mut damaged = disk.read(&path).unwrap();
    damaged[HEADER_LEN + 17] ^= 4;
    disk.write(&path, &damaged).unwrap();
    let o = run_batch(&mut exec, copy(0, 3 * rec, 79, native(9)), 1)[0];
    assert_eq!(o, Outcome::Corrupt("payload checksum"), "a damaged source");
    untouched(disk, "damaged source");
    let o = run_batch(&mut exec, copy(len as u64 - DIRECT_ALIGN as u64, 3 * rec, 80, native(9)), 1)[0];
    assert_eq!(o, Outcome::Corrupt("wrong length"), "a source past the end");
    untouched(disk, "past the end");
}

/// Batches that cannot run as asked fail every part and write nothing: an unknown file, parts
/// that do not match the blocks, a row leased elsewhere (the other rows' leases are released);
/// a batch with no block is counted and writes nothing; after `shutdown`, a batch is
/// `Cancelled`.
pub fn batches_are_checked<E: Executor>(disk: &dyn Vfs, make: impl Fn(Arc<PrimaryRegion>, &Path) -> E) {
    let row_bytes = 8192;
    let dir = scratch_dir();
    let region = region(3, row_bytes);
    let mut exec = make(Arc::clone(&region), dir.path());
    let len = 16 * DIRECT_ALIGN;
    let path = device(disk, dir.path(), "device", len, 8);
    let file = exec.open_file(&path).unwrap();
    for slot in 0..3 {
        fill(&region, slot, u64::from(slot), false);
    }
    let two = |file| {
        let blocks = (0..2).map(|i| BatchBlock { slot: SlotId(i as u32), format: native(i), seq: 1 }).collect();
        blocks_batch(file, 0, blocks, false)
    };
    let invalid = Outcome::Failed(OpError::Invalid);
    assert_eq!(run_batch(&mut exec, two(FileId(file.0 + 100)), 2), vec![invalid; 2], "an unknown file");
    assert_eq!(run_batch(&mut exec, two(file), 3), vec![invalid; 3], "more parts than blocks");
    assert_eq!(run_batch(&mut exec, two(file), 1), vec![invalid; 1], "fewer parts than blocks");
    assert!(run_batch(&mut exec, blocks_batch(file, 0, Vec::new(), false), 0).is_empty(), "no block");
    let writer = region.lease(SlotId(1), Access::Write).unwrap();
    assert_eq!(run_batch(&mut exec, two(file), 2), vec![Outcome::Failed(OpError::Busy); 2], "a busy row");
    drop(writer);
    region.lease(SlotId(0), Access::Write).expect("the other row's lease was released");
    assert!(disk.read(&path).unwrap() == pattern(8, len), "no refused batch wrote anything");
    assert_ok(&run_batch(&mut exec, two(file), 2)[1], "then a good batch");
    exec.shutdown();
    assert_eq!(run_batch(&mut exec, two(file), 2), vec![Outcome::Cancelled; 2], "after shutdown");
}
