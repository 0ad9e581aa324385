//! The engine with an FS tier on the simulated executor (in-memory disk, faults on), driven by
//! fuzz bytes: lookups, loads, stores, GPU-copy completions, steps, crashes and clean restarts.
//! The system and its checks are `kvtier_tests::sim_world`, the same as the `sim_system`
//! test's: after every op, no tier broke the job protocol, the pool's accounting holds, every
//! caller pin is held and every ready block holds exactly the bytes stored for its key; after
//! every restart, every indexed block verifies on the disk, no temp or foreign file is left and
//! a clean restart indexes what was indexed before.
//!
//! Input: byte 0 picks the set-up (policy, fsync, fault rate, latency, seed); each following
//! byte is one op (`op >> 5` the kind, `op & 31` its argument).
#![no_main]

use kvtier_core::PolicyKind;
use kvtier_io_sim::Faults;
use kvtier_tests::sim_world::{SimSetup, World};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, ops)) = data.split_first() else {
        return;
    };
    let ppm = [0, 2_000, 20_000, 100_000][usize::from(first >> 2 & 3)];
    let mut w = World::new(SimSetup {
        seed: u64::from(first),
        exec_seed: u64::from(first),
        keys: 24,
        slots: 8,
        row_bytes: 300,
        policy: if first & 1 == 0 { PolicyKind::Lru } else { PolicyKind::Arc },
        memory_tier: false,
        fsync: first & 2 != 0,
        max_blocks: None,
        regions: (first & 0x80 != 0).then_some(4),
        faults: Faults::all(ppm),
        max_latency: 1 + u32::from(first >> 4 & 7),
        queue_capacity: 16,
        promotion_deadline_steps: 8,
    });
    let mut it = ops.iter().copied();
    while let Some(op) = it.next() {
        let arg = u64::from(op & 31);
        match op >> 5 {
            0..=2 => {
                let n = 1 + u64::from(it.next().unwrap_or(0) % 3);
                w.request(arg, n, u64::from(op >> 5) + 1);
            }
            3 => {
                if !w.held.is_empty() {
                    w.finish_load(arg as usize % w.held.len());
                }
            }
            4 | 5 => {
                if !w.writing.is_empty() {
                    w.finish_store(arg as usize % w.writing.len(), op >> 5 == 4);
                }
            }
            6 => {
                for _ in 0..=arg % 4 {
                    w.end_step();
                }
            }
            _ => match arg {
                0..=3 => w.restart(true),
                4..=7 => w.restart(false),
                _ => w.engine.drain(),
            },
        }
        w.check();
    }
    w.engine.shutdown();
});
