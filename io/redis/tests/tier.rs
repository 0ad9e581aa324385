//! The remote tier's equivalent of the executor conformance suite, on a real server, for both
//! data paths (the thin codec and the `redis` crate's client): byte-exact round trips at
//! aligned and unaligned row sizes, per-key outcomes, hundreds of jobs in flight each
//! reported exactly once (across `shutdown` too), leases released before a job is reported,
//! a full job table, lookups from the index and by probe, and the namespace record.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::*;
use kvtier_core::{Completions, Job, JobId, OffloadKey, SecondaryTier, SlotId, TierLookup};
use kvtier_fs::region::{Access, PrimaryRegion};
use kvtier_redis::{ClientKind, RedisTier, RedisTierConfig};

fn fill(region: &Arc<PrimaryRegion>, slot: u32, bytes: &[u8]) {
    let mut lease = region.lease(SlotId(slot), Access::Write).unwrap();
    let row = lease.as_mut_slice().unwrap();
    row.fill(0);
    row[..bytes.len()].copy_from_slice(bytes);
}

fn row(region: &Arc<PrimaryRegion>, slot: u32) -> Vec<u8> {
    region.lease(SlotId(slot), Access::Read).unwrap().block().to_vec()
}

/// Polls until every job of `ids` is reported; returns (id, per-key outcomes).
fn wait_jobs(tier: &mut RedisTier, ids: &[u64], keys_per_job: &[usize]) -> Vec<(u64, Vec<bool>)> {
    tier.wait_idle();
    let mut out = Completions::new();
    tier.poll_finished(&mut out);
    let mut got: Vec<(u64, Vec<bool>)> = out
        .iter()
        .map(|r| {
            let per_key = out.key_outcomes(r).map(<[bool]>::to_vec);
            let n = keys_per_job[ids.iter().position(|&i| i == r.job.0).expect("a job we submitted")];
            (r.job.0, per_key.unwrap_or_else(|| vec![r.success; n]))
        })
        .collect();
    got.sort_by_key(|(id, _)| *id);
    let reported: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    let mut want = ids.to_vec();
    want.sort_unstable();
    assert_eq!(reported, want, "every job reported exactly once");
    got
}

fn job<'a>(id: u64, keys: &'a [OffloadKey], slots: &'a [SlotId]) -> Job<'a> {
    Job { id: JobId(id), req: REQ, keys, slots }
}

fn round_trips(client: ClientKind) {
    let Some((_server, url)) = shared_server() else { return };
    for &block in &[4096usize, 5000, 65536, (1 << 20) + 3] {
        let n = 12u32;
        let region = Arc::new(PrimaryRegion::anonymous(2 * n as usize, block).unwrap());
        let mut cfg = tier_config(&url, &unique_model("round-trip"));
        cfg.client = client;
        cfg.pipeline = 5;
        let mut tier = RedisTier::open(&cfg, Arc::clone(&region)).unwrap();
        assert!(tier.startup().namespace_checked);
        let keys: Vec<OffloadKey> = (0..n as u64).map(key).collect();
        let store_slots: Vec<SlotId> = (0..n).map(SlotId).collect();
        for i in 0..n {
            fill(&region, i, &pattern(u64::from(i), block));
        }
        tier.submit_store(job(1, &keys, &store_slots));
        assert_eq!(wait_jobs(&mut tier, &[1], &[n as usize]), [(1, vec![true; n as usize])]);
        // Stores released their read leases: the rows can be written again.
        for i in 0..n {
            assert!(region.lease(SlotId(i), Access::Write).is_ok(), "row {i} leased after its job was reported");
        }
        assert!(keys.iter().all(|k| tier.contains(k)), "stored keys are indexed");
        let load_slots: Vec<SlotId> = (n..2 * n).map(SlotId).collect();
        // Load into the second half, twice: a reversed key order as well.
        let mut rev = keys.clone();
        rev.reverse();
        tier.submit_load(job(2, &keys, &load_slots));
        assert_eq!(wait_jobs(&mut tier, &[2], &[n as usize]), [(2, vec![true; n as usize])]);
        for i in 0..n {
            assert_eq!(row(&region, n + i), pattern(u64::from(i), block), "block {i} at {block} bytes");
        }
        tier.submit_load(job(3, &rev, &load_slots));
        assert_eq!(wait_jobs(&mut tier, &[3], &[n as usize]), [(3, vec![true; n as usize])]);
        for i in 0..n {
            assert_eq!(row(&region, n + i), pattern(u64::from(n - 1 - i), block));
        }
        // A store of keys already there is a success that moves nothing.
        let before = tier.stats();
        tier.submit_store(job(4, &keys[..3], &store_slots[..3]));
        assert_eq!(wait_jobs(&mut tier, &[4], &[3]), [(4, vec![true; 3])]);
        assert_eq!(tier.stats().stored, before.stored);
        assert_eq!(tier.stats().present, before.present + 3);
        let s = tier.stats();
        assert_eq!((s.stored, s.loaded, s.corrupt, s.timeouts), (u64::from(n), 2 * u64::from(n), 0, 0));
    }
}

#[test]
fn round_trips_thin() {
    round_trips(ClientKind::Thin);
}

#[test]
fn round_trips_crate() {
    round_trips(ClientKind::Crate);
}

fn per_key_outcomes_and_many_jobs(client: ClientKind) {
    let Some((_server, url)) = shared_server() else { return };
    let block = 8192;
    let region = Arc::new(PrimaryRegion::anonymous(1024, block).unwrap());
    let mut cfg = tier_config(&url, &unique_model("many-jobs"));
    cfg.client = client;
    cfg.connections = 3;
    let mut tier = RedisTier::open(&cfg, Arc::clone(&region)).unwrap();
    // Half the keys stored; a load of all of them succeeds key by key.
    let keys: Vec<OffloadKey> = (0..20).map(key).collect();
    let slots: Vec<SlotId> = (0..20).map(SlotId).collect();
    for i in 0..20 {
        fill(&region, i, &pattern(u64::from(i), block));
    }
    tier.submit_store(job(1, &keys[..10], &slots[..10]));
    wait_jobs(&mut tier, &[1], &[10]);
    let load_slots: Vec<SlotId> = (100..120).map(SlotId).collect();
    tier.submit_load(job(2, &keys, &load_slots));
    let got = wait_jobs(&mut tier, &[2], &[20]);
    let want: Vec<bool> = (0..20).map(|i| i < 10).collect();
    assert_eq!(got[0].1, want);
    assert_eq!(tier.stats().missing, 10);
    // Hundreds of jobs in flight at once, of 1 to 5 keys, stores and loads mixed: each is
    // reported once, with the right outcome per key.
    let mut ids = Vec::new();
    let mut sizes = Vec::new();
    let mut expect = Vec::new();
    let mut slot = 200u32;
    let all: Vec<OffloadKey> = (1000..1800).map(key).collect();
    let mut stored_keys = HashSet::new();
    for j in 0..300u64 {
        let n = 1 + (j % 5) as usize;
        let start = ((j * 7) % 790) as usize;
        let ks = &all[start..start + n];
        let ss: Vec<SlotId> = (0..n as u32).map(|x| SlotId(slot + x)).collect();
        slot = 200 + (slot - 200 + n as u32) % 700;
        if j % 3 == 2 {
            tier.submit_load(job(100 + j, ks, &ss));
            expect.push(None);
        } else {
            for (k, s) in ks.iter().zip(&ss) {
                fill(&region, s.0, &k.as_bytes().repeat(block / k.as_bytes().len() + 1)[..block]);
                stored_keys.insert(*k);
            }
            tier.submit_store(job(100 + j, ks, &ss));
            expect.push(Some(vec![true; n]));
        }
        ids.push(100 + j);
        sizes.push(n);
        // Keep leases from colliding: a row is reused only once its job was reported.
        if slot > 850 {
            let _ = wait_jobs(&mut tier, &ids, &sizes);
            ids.clear();
            sizes.clear();
            expect.clear();
            slot = 200;
        }
    }
    let got = wait_jobs(&mut tier, &ids, &sizes);
    for ((_, outcome), want) in got.iter().zip(&expect) {
        if let Some(want) = want {
            assert_eq!(outcome, want, "stores succeed");
        }
    }
    let stats = tier.job_table_stats();
    assert_eq!(stats.opened, stats.finished, "every job taken");
}

#[test]
fn per_key_outcomes_and_many_jobs_thin() {
    per_key_outcomes_and_many_jobs(ClientKind::Thin);
}

#[test]
fn per_key_outcomes_and_many_jobs_crate() {
    per_key_outcomes_and_many_jobs(ClientKind::Crate);
}

#[test]
fn shutdown_reports_every_job_and_a_full_table_fails_jobs_at_once() {
    let Some((_server, url)) = shared_server() else { return };
    let block = 65536;
    let region = Arc::new(PrimaryRegion::anonymous(64, block).unwrap());
    let mut cfg = tier_config(&url, &unique_model("shutdown"));
    cfg.max_jobs = 8;
    cfg.max_parts = 40;
    let mut tier = RedisTier::open(&cfg, Arc::clone(&region)).unwrap();
    let keys: Vec<OffloadKey> = (0..64).map(key).collect();
    let slots: Vec<SlotId> = (0..64).map(SlotId).collect();
    let mut ids = Vec::new();
    for j in 0..12u64 {
        let r = (j as usize * 5)..(j as usize * 5 + 5);
        tier.submit_store(job(j, &keys[r.clone()], &slots[r]));
        ids.push(j);
    }
    let mut out = Completions::new();
    tier.shutdown(&mut out);
    let mut reported: Vec<u64> = out.iter().map(|r| r.job.0).collect();
    reported.sort_unstable();
    assert_eq!(reported, ids, "every job reported exactly once by shutdown");
    // 40 parts: at most 8 jobs of 5 keys fit; the others failed at once.
    let failed_whole = out.iter().filter(|r| !r.success && out.key_outcomes(r).is_none()).count();
    assert!(failed_whole >= 4, "{failed_whole} jobs refused for want of room");
    assert_eq!(tier.stats().jobs_refused as usize, failed_whole);
    let mut again = Completions::new();
    tier.shutdown(&mut again);
    assert!(again.is_empty(), "nothing reported twice");
    for i in 0..64 {
        assert!(region.lease(SlotId(i), Access::Write).is_ok(), "row {i} released");
    }
}

#[test]
fn lookups_answer_from_the_index_and_probe_in_the_background() {
    let Some((_server, url)) = shared_server() else { return };
    let block = 4096;
    let model = unique_model("lookup");
    let region = Arc::new(PrimaryRegion::anonymous(16, block).unwrap());
    let mut writer = RedisTier::open(&tier_config(&url, &model), Arc::clone(&region)).unwrap();
    let keys: Vec<OffloadKey> = (0..4).map(key).collect();
    let slots: Vec<SlotId> = (0..4).map(SlotId).collect();
    writer.submit_store(job(1, &keys, &slots));
    wait_jobs(&mut writer, &[1], &[4]);
    assert_eq!(writer.lookup(&keys[0], REQ), TierLookup::Hit);
    assert_eq!(writer.lookup(&key(99), REQ), TierLookup::Miss, "no probe: a miss, never Retry");
    // Another tier on the same namespace: no probe, no hit; with the probe, Busy then Hit.
    let mut plain = RedisTier::open(&tier_config(&url, &model), Arc::clone(&region)).unwrap();
    assert_eq!(plain.lookup(&keys[0], REQ), TierLookup::Miss);
    let mut cfg = tier_config(&url, &model);
    cfg.probe_on_miss = true;
    let mut prober = RedisTier::open(&cfg, Arc::clone(&region)).unwrap();
    assert_eq!(prober.lookup(&keys[1], REQ), TierLookup::Busy);
    assert_eq!(prober.lookup(&key(99), REQ), TierLookup::Busy);
    prober.wait_idle();
    assert_eq!(prober.lookup(&keys[1], REQ), TierLookup::Hit, "found by the probe");
    assert_eq!(prober.lookup(&key(99), REQ), TierLookup::Miss, "absent: cached, no Retry");
    assert_eq!(prober.stats().probes, 2);
    assert_eq!(prober.stats().probe_hits, 1);
    // Loading the block another tier stored counts as a shared hit; the writer's own does not.
    let (k, s) = ([keys[1]], [SlotId(8)]);
    prober.submit_load(job(7, &k, &s));
    wait_jobs(&mut prober, &[7], &[1]);
    writer.submit_load(job(8, &k, &s));
    wait_jobs(&mut writer, &[8], &[1]);
    assert_eq!((prober.stats().loaded_shared, writer.stats().loaded_shared), (1, 0));
}

#[test]
fn the_config_record_is_written_once_and_a_mismatch_is_an_error() {
    let Some((_server, url)) = shared_server() else { return };
    let model = unique_model("record");
    let region = Arc::new(PrimaryRegion::anonymous(2, 4096).unwrap());
    let cfg = tier_config(&url, &model);
    let tier = RedisTier::open(&cfg, Arc::clone(&region)).unwrap();
    let record_key = tier.names().config_key();
    drop(tier);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let text = cli(port, &["GET", &record_key]);
    assert!(text.contains(&format!("\"model_name\": \"{model}\"")), "{text}");
    assert!(text.contains("kvtier-native-v1"), "{text}");
    // Same run: opens again. Another client rewrote the record for another run: refused.
    RedisTier::open(&cfg, Arc::clone(&region)).unwrap();
    let forged = text.replace("\"bfloat16\"", "\"float32\"");
    cli_set_raw(port, &record_key, forged.trim_end().as_bytes());
    let err = RedisTier::open(&cfg, Arc::clone(&region)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("dtype"), "{err}");
    let bad = RedisTierConfig { urls: vec!["notaurl".into()], ..cfg.clone() };
    assert_eq!(RedisTier::open(&bad, Arc::clone(&region)).unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
    let zero = RedisTierConfig { connections: 0, ..cfg };
    assert_eq!(RedisTier::open(&zero, region).unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
}
