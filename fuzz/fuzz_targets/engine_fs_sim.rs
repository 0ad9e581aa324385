//! The engine with an FS tier on the simulated executor (in-memory disk, faults on), driven by
//! fuzz bytes: lookups, loads, stores, GPU-copy completions, steps, crashes and clean restarts.
//! After every op: no tier broke the job protocol, the pool's accounting holds, every ready
//! block holds exactly the bytes stored for its key; after a crash with `fsync` on, every
//! indexed block verifies on the disk.
//!
//! Input: byte 0 picks the set-up (policy, fsync, fault rate, latency, executor seed); each
//! following byte is one op (`op >> 5` the kind, `op & 31` its argument).
#![no_main]

use std::sync::Arc;

use kvtier_core::{
    AnyPolicy, EngineConfig, LookupResult, OffloadKey, PolicyKind, ReqContext, SlotId, StorePlan, TieringEngine,
};
use kvtier_fs::direct::DirectMode;
use kvtier_fs::format::{self, HEADER_LEN};
use kvtier_fs::namespace::RunConfig;
use kvtier_fs::region::{Access, PrimaryRegion};
use kvtier_fs::vfs::Vfs;
use kvtier_fs::{FsTier, FsTierConfig};
use kvtier_io_sim::{Faults, SimConfig, SimDisk, SimExecutor};
use libfuzzer_sys::fuzz_target;

const KEYS: u64 = 24;
const SLOTS: u32 = 8;
const ROW_BYTES: usize = 300;

fn key(i: u64) -> OffloadKey {
    OffloadKey::new(&(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1).to_le_bytes(), (i % 2) as u32).expect("a key")
}

fn content(key: &OffloadKey) -> Vec<u8> {
    let h = key.as_bytes().iter().fold(7u64, |h, &b| h.wrapping_mul(131).wrapping_add(u64::from(b)));
    (0..ROW_BYTES).map(|i| (h.wrapping_mul(i as u64 + 1) >> 24) as u8).collect()
}

struct Setup {
    policy: PolicyKind,
    fsync: bool,
    faults: Faults,
    latency: u32,
    seed: u64,
}

struct World {
    setup: Setup,
    disk: SimDisk,
    region: Arc<PrimaryRegion>,
    engine: TieringEngine,
    held: Vec<Vec<OffloadKey>>,
    writing: Vec<Vec<OffloadKey>>,
    boots: u64,
}

fn boot(s: &Setup, boots: u64, disk: &SimDisk) -> (Arc<PrimaryRegion>, TieringEngine) {
    let region = Arc::new(PrimaryRegion::anonymous(SLOTS as usize, ROW_BYTES).expect("region"));
    let (r, d) = (Arc::clone(&region), disk.clone());
    let sim = SimConfig {
        seed: s.seed.wrapping_add(boots),
        max_latency: s.latency,
        queue_capacity: 16,
        faults: s.faults,
        ..SimConfig::default()
    };
    let run = RunConfig { model_name: "fuzz".into(), ..RunConfig::default() };
    let config = FsTierConfig { fsync: s.fsync, o_direct: DirectMode::Auto, ..FsTierConfig::new("/fuzz", run) };
    let fs = FsTier::open_on(&config, Arc::new(disk.clone()), move |o_direct| {
        Ok(Box::new(SimExecutor::new(r, d, SimConfig { o_direct, ..sim })))
    })
    .expect("open the FS tier");
    let engine = TieringEngine::new(
        AnyPolicy::new(s.policy, SLOTS),
        vec![Box::new(fs)],
        EngineConfig { events: false, promotion_deadline_steps: 8 },
    );
    (region, engine)
}

impl World {
    fn fs(&mut self) -> &mut FsTier {
        self.engine.tier_mut::<FsTier>(0).expect("the FS tier")
    }

    fn restart(&mut self, crash: bool) {
        if crash {
            self.disk.crash();
        } else {
            self.engine.shutdown();
        }
        self.held.clear();
        self.writing.clear();
        self.boots += 1;
        let (region, engine) = boot(&self.setup, self.boots, &self.disk);
        drop(std::mem::replace(&mut self.engine, engine));
        self.region = region;
        if self.setup.fsync {
            let layout = self.fs().layout().clone();
            let ns = layout.namespace_bytes();
            for i in 0..KEYS {
                let k = key(i);
                if !self.fs().contains(&k) {
                    continue;
                }
                let bytes = self.disk.read(&layout.block_path(&k)).expect("an indexed block exists");
                let payload = bytes.get(HEADER_LEN..HEADER_LEN + ROW_BYTES).unwrap_or(&[]);
                let ok = format::decode_header(&bytes).and_then(|h| h.check(&ns, &k, payload)).is_ok();
                assert!(ok && payload == &content(&k)[..], "an indexed block does not verify after a crash");
            }
        }
    }

    fn request(&mut self, start: u64, n: u64, req: u64) {
        let req = ReqContext::new(req);
        let keys: Vec<OffloadKey> = (0..n).map(|j| key((start + j) % KEYS)).collect();
        let (mut ready, mut missing) = (Vec::new(), Vec::new());
        for k in &keys {
            match self.engine.lookup(k, req) {
                LookupResult::Ready => ready.push(*k),
                LookupResult::Miss => missing.push(*k),
                _ => {}
            }
        }
        if !ready.is_empty() {
            let mut slots = Vec::new();
            if self.engine.prepare_load(&ready, req, &mut slots).is_ok() {
                for (k, s) in ready.iter().zip(&slots) {
                    self.check_bytes(*s, k);
                }
                self.held.push(ready);
            }
        }
        if !missing.is_empty() {
            let mut plan = StorePlan::new();
            if self.engine.prepare_store(&missing, req, &mut plan).is_ok() && !plan.keys.is_empty() {
                for (k, s) in plan.keys.iter().zip(&plan.slots) {
                    let mut lease = self.region.lease(*s, Access::Write).expect("a slot to store into is free");
                    lease.as_mut_slice().expect("write")[..ROW_BYTES].copy_from_slice(&content(k));
                }
                self.writing.push(plan.keys.clone());
            }
        }
    }

    fn check_bytes(&self, slot: SlotId, key: &OffloadKey) {
        let lease = self.region.lease(slot, Access::Read).expect("a ready slot is not being written");
        assert!(lease.block() == &content(key)[..], "slot {} does not hold its key's bytes", slot.0);
    }

    fn check(&self) {
        assert_eq!(self.engine.last_protocol_error(), None);
        let pool = self.engine.primary();
        assert_eq!(pool.len() + pool.free_slots(), pool.capacity());
        let mut keys = Vec::new();
        for (slot, k, rc) in pool.blocks() {
            assert!(rc >= -1);
            assert!(!keys.contains(k), "a key in two slots");
            keys.push(*k);
            if rc >= 0 {
                self.check_bytes(slot, k);
            }
        }
        for held in &self.held {
            for k in held {
                assert!(pool.find(k).is_some_and(|(_, rc)| rc >= 1), "a caller pin was lost");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, ops)) = data.split_first() else {
        return;
    };
    let ppm = [0, 2_000, 20_000, 100_000][usize::from(first >> 2 & 3)];
    let setup = Setup {
        policy: if first & 1 == 0 { PolicyKind::Lru } else { PolicyKind::Arc },
        fsync: first & 2 != 0,
        faults: Faults::all(ppm),
        latency: 1 + u32::from(first >> 4 & 7),
        seed: u64::from(first),
    };
    let disk = SimDisk::new(u64::from(first));
    let (region, engine) = boot(&setup, 0, &disk);
    let mut w = World { setup, disk, region, engine, held: Vec::new(), writing: Vec::new(), boots: 0 };
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
                    let keys = w.held.remove(arg as usize % w.held.len());
                    w.engine.complete_load(&keys, ReqContext::new(1)).expect("unpin");
                }
            }
            4 | 5 => {
                if !w.writing.is_empty() {
                    let keys = w.writing.remove(arg as usize % w.writing.len());
                    w.engine.complete_store(&keys, ReqContext::new(1), op >> 5 == 4).expect("not shut down");
                }
            }
            6 => {
                for _ in 0..=arg % 4 {
                    w.engine.end_step();
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
