//! Soak: thousands of mixed stores and loads with random slot reuse, lease conflicts, injected
//! corruption and every kind of poll, checked byte for byte against a model of what is on disk.
//!
//! The seed is printed; `KVTIER_SEED=<n>` replays a run. `KVTIER_SOAK_OPS` sets the number of
//! ops per configuration (default 4000).

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kvtier_core::Direction;
use kvtier_core::SlotId;
use kvtier_fs::conformance::Tracker;
use kvtier_fs::conformance::{self, block, block_path, fill, native, op, pattern, temp_files};
use kvtier_fs::format;
use kvtier_fs::region::Access;
use kvtier_fs::rng::SplitMix64;
use kvtier_fs::{BlockFormat, Executor, Outcome, Wait};
use kvtier_io_uring::{UringConfig, UringExecutor};

/// `SplitMix64::below` for `usize` bounds.
fn below(rng: &mut SplitMix64, n: usize) -> usize {
    rng.below(n as u64) as usize
}

fn seed() -> u64 {
    std::env::var("KVTIER_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    })
}

/// What the model expects of a block's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disk {
    Absent,
    /// Holds the row filled with this seed.
    Holds(u64),
    /// Damaged on purpose: the next load is `Corrupt` and removes it.
    Damaged,
}

/// What an op in flight expects.
#[derive(Debug)]
struct Pending {
    kind: Direction,
    block: u64,
    slot: u32,
    /// The seed a store publishes, or a load must find (`None`: not found / corrupt).
    version: Disk,
    /// The lease was refused at submission: `Failed`, no effect.
    refused: bool,
}

fn format_of(block: u64) -> BlockFormat {
    if block % 2 == 0 {
        native(block)
    } else {
        BlockFormat::Vllm
    }
}

/// Damages a published file so that a load must find it corrupt: a flipped bit in a native
/// file's header or payload (not its padding, which no checksum covers), or one byte too few
/// or too many.
fn damage(path: &Path, block: u64, row_bytes: usize, rng: &mut SplitMix64) {
    let mut bytes = fs::read(path).unwrap();
    if block % 2 == 0 && below(rng, 2) == 0 {
        let at = below(rng, format::HEADER_LEN + row_bytes);
        bytes[at] ^= 0x40;
    } else if below(rng, 2) == 0 {
        bytes.pop();
    } else {
        bytes.push(0);
    }
    fs::write(path, bytes).unwrap();
}

fn soak(seed: u64, row_bytes: usize, config: UringConfig, ops: usize) {
    const ROWS: usize = 48;
    const BLOCKS: u64 = 96;
    println!("soak: seed = {seed} (KVTIER_SEED={seed} replays), {row_bytes}-byte rows, {config:?}");
    let mut rng = SplitMix64::new(seed);
    let dir = conformance::scratch_dir();
    let root = dir.path().join("tier");
    let region = conformance::region(ROWS, row_bytes);
    let mut exec = UringExecutor::new(Arc::clone(&region), config).expect("start the io_uring executor");

    let mut disk: HashMap<u64, Disk> = (0..BLOCKS).map(|b| (b, Disk::Absent)).collect();
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    // Per slot: readers (stores) and whether a load writes it.
    let mut readers = [0u32; ROWS];
    let mut writer = [false; ROWS];
    let busy_block = |pending: &HashMap<u64, Pending>, b: u64| pending.values().any(|p| p.block == b && !p.refused);
    let mut next_version = 1u64;
    let mut tracker = Tracker::new();
    let mut done: Vec<(u64, Outcome)> = Vec::new();
    let mut counts: HashMap<&'static str, usize> = HashMap::new();

    let settle = |exec: &mut UringExecutor,
                  done: &mut Vec<(u64, Outcome)>,
                  pending: &mut HashMap<u64, Pending>,
                  disk: &mut HashMap<u64, Disk>,
                  readers: &mut [u32; ROWS],
                  writer: &mut [bool; ROWS],
                  counts: &mut HashMap<&'static str, usize>| {
        for (token, outcome) in done.drain(..) {
            let p = pending.remove(&token).unwrap_or_else(|| panic!("seed {seed}: unknown or repeated token {token}"));
            if p.refused {
                assert!(matches!(outcome, Outcome::Failed(_)), "seed {seed}: a refused lease: {outcome:?}");
                *counts.entry("lease conflict").or_default() += 1;
                continue;
            }
            let slot = p.slot as usize;
            match p.kind {
                Direction::Store => readers[slot] -= 1,
                Direction::Load => writer[slot] = false,
            }
            // The slot is released by the time its op is reported.
            if readers[slot] == 0 && !writer[slot] {
                assert!(region.lease(SlotId(p.slot), Access::Write).is_ok(), "seed {seed}: slot {slot} still leased");
            }
            match (p.kind, p.version, &outcome) {
                (Direction::Store, Disk::Holds(v), Outcome::Ok) => {
                    disk.insert(p.block, Disk::Holds(v));
                    *counts.entry("store ok").or_default() += 1;
                }
                (Direction::Load, Disk::Holds(v), Outcome::Ok) => {
                    assert!(block(&region, p.slot) == pattern(v, row_bytes), "seed {seed}: block {} differs", p.block);
                    *counts.entry("load ok").or_default() += 1;
                }
                (Direction::Load, Disk::Absent, Outcome::NotFound) => *counts.entry("not found").or_default() += 1,
                (Direction::Load, Disk::Damaged, Outcome::Corrupt(_)) => {
                    assert!(!block_path(&root, p.block).exists(), "seed {seed}: a corrupt file is removed");
                    disk.insert(p.block, Disk::Absent);
                    *counts.entry("corrupt").or_default() += 1;
                }
                (kind, want, got) => {
                    panic!("seed {seed}: {kind:?} of block {} expected {want:?}, got {got:?}", p.block)
                }
            }
        }
        let _ = exec;
    };

    let mut submitted = 0;
    let mut token = 0u64;
    while submitted < ops {
        token += 1;
        if exec.in_flight() > 0 && (below(&mut rng, 8) == 0 || exec.in_flight() > 3 * ROWS / 4) {
            // Make room: the model only picks slots and blocks with nothing in flight.
            let wait = match below(&mut rng, 4) {
                0 => Wait::Forever,
                1 => Wait::Timeout(Duration::from_micros(below(&mut rng, 2000) as u64)),
                _ => Wait::No,
            };
            exec.poll(wait).unwrap();
            tracker.take(&mut done);
            settle(&mut exec, &mut done, &mut pending, &mut disk, &mut readers, &mut writer, &mut counts);
        }
        let roll = below(&mut rng, 100);
        let slot = below(&mut rng, ROWS) as u32;
        let s = slot as usize;
        let b = below(&mut rng, BLOCKS as usize) as u64;
        if roll < 3 && !busy_block(&pending, b) {
            // Damage a published file.
            if let Disk::Holds(_) = disk[&b] {
                damage(&block_path(&root, b), b, row_bytes, &mut rng);
                disk.insert(b, Disk::Damaged);
            }
            continue;
        }
        let kind = if roll < 50 { Direction::Store } else { Direction::Load };
        if busy_block(&pending, b) || writer[s] || (kind == Direction::Load && readers[s] > 0) {
            // Only a slot the model knows is free is used: a slot whose op completed but was
            // not reported yet may already be free, or not.
            continue;
        }
        // Now and then, the slot is leased elsewhere (by this test): the op must fail, at once.
        let refused = below(&mut rng, 20) == 0 && readers[s] == 0;
        let held = refused.then(|| region.lease(SlotId(slot), Access::Write).expect("the model says it is free"));
        let version = match kind {
            Direction::Store if !refused => {
                if readers[s] > 0 {
                    // Another store reads the slot: refilling it would race with it.
                    continue;
                }
                let v = next_version;
                next_version += 1;
                fill(&region, slot, v, below(&mut rng, 2) == 0);
                Disk::Holds(v)
            }
            Direction::Store => Disk::Absent,
            Direction::Load => disk[&b],
        };
        if !refused {
            match kind {
                Direction::Store => readers[s] += 1,
                Direction::Load => writer[s] = true,
            }
        }
        let mut op = op(token, kind, slot, &block_path(&root, b), format_of(b));
        op.op.sync = below(&mut rng, 16) == 0;
        pending.insert(token, Pending { kind, block: b, slot, version, refused });
        loop {
            match tracker.submit(&mut exec, op) {
                Ok(()) => break,
                Err(back) => {
                    op = back;
                    exec.poll(Wait::Forever).unwrap();
                    tracker.take(&mut done);
                    settle(&mut exec, &mut done, &mut pending, &mut disk, &mut readers, &mut writer, &mut counts);
                }
            }
        }
        drop(held);
        submitted += 1;
    }
    while exec.in_flight() > 0 {
        assert!(exec.poll(Wait::Timeout(conformance::STUCK)).unwrap() > 0, "seed {seed}: stuck");
        tracker.take(&mut done);
        settle(&mut exec, &mut done, &mut pending, &mut disk, &mut readers, &mut writer, &mut counts);
    }
    assert!(pending.is_empty(), "seed {seed}: {} ops never reported", pending.len());
    for slot in 0..ROWS as u32 {
        assert!(region.lease(SlotId(slot), Access::Write).is_ok(), "seed {seed}: slot {slot} still leased");
    }
    assert!(temp_files(dir.path()).is_empty(), "seed {seed}: temp files left: {:?}", temp_files(dir.path()));
    // Every file on disk is what the model says.
    for (b, state) in &disk {
        let path = block_path(&root, *b);
        match state {
            Disk::Absent => assert!(!path.exists(), "seed {seed}: block {b} should not exist"),
            Disk::Damaged => assert!(path.exists()),
            Disk::Holds(v) => {
                let bytes = fs::read(&path).unwrap();
                let payload = if b % 2 == 0 {
                    let h = format::decode_header(&bytes).expect("a published native file decodes");
                    h.check(&conformance::NAMESPACE, &conformance::key(*b), &bytes[4096..4096 + row_bytes]).unwrap();
                    assert!(bytes[4096 + row_bytes..].iter().all(|&x| x == 0), "zero padded");
                    &bytes[4096..4096 + row_bytes]
                } else {
                    &bytes[..]
                };
                assert!(payload == pattern(*v, row_bytes).as_slice(), "seed {seed}: block {b} on disk differs");
            }
        }
    }
    exec.shutdown();
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort();
    println!("soak: {counts:?}");
}

fn ops() -> usize {
    std::env::var("KVTIER_SOAK_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(4000)
}

#[test]
fn soak_direct_unaligned_rows_small_ring() {
    let dir = conformance::scratch_dir();
    let o_direct = kvtier_fs::direct::probe_o_direct(dir.path()).unwrap();
    let config = UringConfig { max_ops: 8, sq_entries: 16, queue_capacity: 64, o_direct, ..UringConfig::default() };
    soak(seed(), 5000, config, ops());
}

#[test]
fn soak_direct_aligned_rows() {
    let dir = conformance::scratch_dir();
    let o_direct = kvtier_fs::direct::probe_o_direct(dir.path()).unwrap();
    soak(seed().wrapping_add(1), 64 << 10, UringConfig { o_direct, ..UringConfig::default() }, ops());
}

#[test]
fn soak_buffered() {
    soak(seed().wrapping_add(2), 12288, UringConfig::default(), ops());
}
