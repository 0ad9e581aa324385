//! Faults on real servers, each test with its own `redis-server` on its own port (stopped by
//! pid), and each ending with 0 wrong blocks served: the server SIGKILLed mid-pipeline and
//! restarted (empty, and with an append-only file), SIGSTOPped past the timeout then
//! continued, `maxmemory` reached under `allkeys-lru` and `noeviction`, values corrupted,
//! truncated, of another key, of another namespace and of another type written by another
//! client, and two processes storing and loading the same keys at once.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use kvtier_core::{Completions, Job, JobId, OffloadKey, SecondaryTier, SlotId};
use kvtier_fs::region::{Access, PrimaryRegion};
use kvtier_redis::resp::Reply;
use kvtier_redis::RedisTier;

const BLOCK: usize = 65536;

fn report(name: &str, c: &Cache) {
    eprintln!("{name}: {} blocks served, {} wrong; tier stats {:?}", c.served, c.wrong, c.engine_stats_line());
}

trait StatsLine {
    fn engine_stats_line(&self) -> String;
}

impl StatsLine for Cache {
    fn engine_stats_line(&self) -> String {
        format!("{:?}", self.engine.stats())
    }
}

fn killed_mid_pipeline(appendonly: bool) {
    if !have_server() {
        return;
    }
    let extra: &[&str] = if appendonly { &["--appendonly", "yes"] } else { &["--appendonly", "no"] };
    let mut server = Server::start(extra);
    let cfg = tier_config(&server.url(), "kill-test");
    // Stores straight on the tier, so the test knows which keys the server acknowledged.
    let block = 1 << 20;
    let region = Arc::new(PrimaryRegion::anonymous(64, block).unwrap());
    let mut tier = RedisTier::open(&cfg, Arc::clone(&region)).unwrap();
    let keys: Vec<OffloadKey> = (0..64).map(key).collect();
    let slots: Vec<SlotId> = (0..64).map(SlotId).collect();
    for i in 0..64u32 {
        let mut lease = region.lease(SlotId(i), Access::Write).unwrap();
        lease.as_mut_slice().unwrap()[..block].copy_from_slice(&pattern(u64::from(i), block));
    }
    for j in 0..8u64 {
        let r = (j as usize * 8)..(j as usize * 8 + 8);
        tier.submit_store(Job { id: JobId(j), req: REQ, keys: &keys[r.clone()], slots: &slots[r] });
    }
    // 64 MiB of pipelined SETs are in flight: kill the server under them, once it has taken
    // the first of them (so the kill lands mid-pipeline, not before it).
    let start = std::time::Instant::now();
    while raw(server.port, &[b"DBSIZE"]).0 == Reply::Int(1) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_micros(200));
    }
    server.kill();
    tier.wait_idle();
    let mut out = Completions::new();
    tier.poll_finished(&mut out);
    let mut acknowledged = Vec::new();
    for r in out.iter() {
        let per_key = out.key_outcomes(r).map(<[bool]>::to_vec).unwrap_or_else(|| vec![r.success; 8]);
        for (k, ok) in per_key.into_iter().enumerate() {
            if ok {
                acknowledged.push(r.job.0 * 8 + k as u64);
            }
        }
    }
    assert_eq!(out.len(), 8, "every job reported");
    let stats = tier.stats();
    assert!(stats.timeouts + stats.connection_errors > 0 || acknowledged.len() == 64, "{stats:?}");
    drop(tier);
    server.restart();
    // A fresh process finds what survived: every block served is the right one.
    let mut cfg = cfg.clone();
    cfg.probe_on_miss = true;
    let mut cache = Cache::new(&cfg, 8, block);
    let mut found = Vec::new();
    for i in 0..64 {
        if cache.promote(i) {
            found.push(i);
        }
    }
    eprintln!(
        "killed mid-pipeline (appendonly {appendonly}): {} of 64 acknowledged, {} found after restart, {} wrong",
        acknowledged.len(),
        found.len(),
        cache.wrong
    );
    assert_eq!(cache.wrong, 0, "no wrong block");
    if appendonly {
        for i in &acknowledged {
            assert!(found.contains(i), "block {i} was acknowledged, so it is in the append-only file");
        }
    } else {
        assert!(found.is_empty(), "an empty restart serves nothing");
    }
    // The tier works again after the restart.
    cache.store(100..104);
    cache.flush_primary(1000, 8);
    for i in 100..104 {
        assert!(cache.promote(i));
    }
    assert_eq!(cache.wrong, 0);
}

#[test]
fn killed_mid_pipeline_and_restarted_empty() {
    killed_mid_pipeline(false);
}

#[test]
fn killed_mid_pipeline_and_restarted_with_appendonly() {
    killed_mid_pipeline(true);
}

#[test]
fn stopped_past_the_timeout_then_continued() {
    if !have_server() {
        return;
    }
    let server = Server::start(&[]);
    let cfg = tier_config(&server.url(), "stop-test");
    let mut cache = Cache::new(&cfg, 8, BLOCK);
    cache.store(0..16); // 0..8 leave the primary: they are promoted from the server below
    for i in 0..4 {
        assert!(cache.promote(i));
    }
    server.signal(libc::SIGSTOP);
    // Promotions now time out (300 ms each) and miss; after three failures the breaker
    // opens, and lookups of indexed blocks answer Miss without touching the network.
    let mut missed = 0;
    for i in 4..8 {
        if !cache.promote(i) {
            missed += 1;
        }
    }
    let opened = cache.tier().breaker_openings();
    let stats = cache.tier().stats();
    eprintln!("while stopped: {missed} of 4 promotions missed; breaker opened {opened} times; {stats:?}");
    assert_eq!(missed, 4, "a stopped server is a miss");
    assert!(stats.timeouts >= 1, "{stats:?}");
    assert!(opened >= 1, "the breaker opened");
    // Stores while stopped are dropped, not failed upwards.
    cache.store(200..204);
    server.signal(libc::SIGCONT);
    // The server now answers the requests it had queued, on connections the tier dropped:
    // those late replies reach nobody. After the backoff, everything is served right.
    let mut served_after = 0;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        served_after = (8..16).filter(|&i| cache.promote(i)).count();
        if served_after > 0 {
            break;
        }
    }
    cache.flush_primary(1000, 8);
    for i in 0..16 {
        cache.promote(i);
    }
    report("stop/cont", &cache);
    assert!(served_after > 0, "the tier recovers after SIGCONT");
    assert_eq!(cache.wrong, 0, "no late reply was read as another request's");
}

fn full_server(policy: &str) -> (u64, u64, u64) {
    let server = Server::start(&["--maxmemory", "8mb", "--maxmemory-policy", policy]);
    let cfg = tier_config(&server.url(), "maxmemory-test");
    let mut cache = Cache::new(&cfg, 16, BLOCK);
    // 400 blocks of 64 KiB + header: over 26 MiB into 8 MiB.
    for chunk in 0..25u64 {
        cache.store(chunk * 16..chunk * 16 + 16);
    }
    let stats = cache.tier().stats();
    let mut served = 0;
    for i in 0..400 {
        if cache.promote(i) {
            served += 1;
        }
    }
    report(policy, &cache);
    assert_eq!(cache.wrong, 0, "no wrong block under {policy}");
    (stats.stored, stats.oom, served)
}

#[test]
fn maxmemory_under_allkeys_lru_and_noeviction() {
    if !have_server() {
        return;
    }
    let (stored, oom, served) = full_server("allkeys-lru");
    eprintln!("allkeys-lru: {stored} stored, {oom} refused, {served} served of 400");
    assert_eq!(oom, 0, "allkeys-lru evicts instead of refusing");
    assert!(served < 400 && served > 16, "some blocks were evicted, recent ones kept ({served})");
    let (stored, oom, served) = full_server("noeviction");
    eprintln!("noeviction: {stored} stored, {oom} refused, {served} served of 400");
    assert!(oom > 0, "a full server refuses stores with OOM");
    assert!(stored > 16 && served >= 16, "what fitted is served ({stored} stored, {served} served)");
}

#[test]
fn corrupt_truncated_foreign_and_mistyped_values_are_never_served() {
    if !have_server() {
        return;
    }
    for client in [kvtier_redis::ClientKind::Thin, kvtier_redis::ClientKind::Crate] {
        damaged_values(client);
    }
}

fn damaged_values(client: kvtier_redis::ClientKind) {
    let server = Server::start(&[]);
    let port = server.port;
    let mut cfg = tier_config(&server.url(), "corrupt-test");
    cfg.client = client;
    let mut cache = Cache::new(&cfg, 8, BLOCK);
    cache.store(0..16);
    let name = |i: u64, c: &mut Cache| c.tier().names().block_key_string(&key(i));
    let k: Vec<String> = (0..16).map(|i| name(i, &mut cache)).collect();
    let value = |key: &str| raw(port, &[b"GET", key.as_bytes()]).1;
    // 0: a flipped payload bit; 1: truncated; 2: another key's valid value; 3: the same key's
    // block from another namespace; 4: another type; 5: empty; 6: a flipped header bit.
    let mut v = value(&k[0]);
    v[4096 + 100] ^= 1;
    raw(port, &[b"SET", k[0].as_bytes(), &v]);
    let v = value(&k[1]);
    raw(port, &[b"SET", k[1].as_bytes(), &v[..4096 + 10]]);
    let v = value(&k[9]);
    raw(port, &[b"SET", k[2].as_bytes(), &v]);
    let foreign_cfg = tier_config(&server.url(), "another-model");
    let mut foreign = Cache::new(&foreign_cfg, 8, BLOCK);
    foreign.store([3]);
    let foreign_key = foreign.tier().names().block_key_string(&key(3));
    let v = value(&foreign_key);
    assert_eq!(v.len(), 4096 + BLOCK);
    raw(port, &[b"SET", k[3].as_bytes(), &v]);
    raw(port, &[b"DEL", k[4].as_bytes()]);
    raw(port, &[b"HSET", k[4].as_bytes(), b"f", b"v"]);
    raw(port, &[b"SET", k[5].as_bytes(), b""]);
    let mut v = value(&k[6]);
    v[40] ^= 0x10;
    raw(port, &[b"SET", k[6].as_bytes(), &v]);
    for i in 0..7 {
        assert!(!cache.promote(i), "damaged block {i} must not be served");
        let (exists, _) = raw(port, &[b"EXISTS", k[i as usize].as_bytes()]);
        assert_eq!(exists, Reply::Int(0), "damaged value {i} deleted");
        assert!(!cache.tier().contains(&key(i)));
    }
    for i in 7..9 {
        assert!(cache.promote(i), "intact neighbours still load");
    }
    let stats = cache.tier().stats();
    report("corrupt", &cache);
    assert_eq!((stats.corrupt, stats.deleted), (7, 7), "{stats:?}");
    assert_eq!(cache.wrong, 0);
}

/// Child side of `two_processes_store_and_load_the_same_keys` (does nothing on its own).
#[test]
fn two_process_child() {
    let (Ok(url), Ok(first)) = (std::env::var("KVTIER_CHILD_URL"), std::env::var("KVTIER_CHILD_FIRST")) else {
        return;
    };
    let first: u64 = first.parse().unwrap();
    let flags = std::env::var("KVTIER_CHILD_FLAGS").unwrap();
    let mut cfg = tier_config(&url, "two-process-test");
    cfg.probe_on_miss = true;
    cfg.timeout = Duration::from_secs(2);
    let mut cache = Cache::new(&cfg, 64, BLOCK);
    // Overlapping ranges (0..48 and 16..64), stored by both at once, loaded back at once.
    for round in 0..3 {
        for chunk in (first..first + 48).collect::<Vec<_>>().chunks(8) {
            cache.store(chunk.iter().copied());
        }
        cache.flush_primary(10_000 + first * 100 + round * 64, 64);
    }
    std::fs::write(Path::new(&flags).join(format!("done-{first}")), b"").unwrap();
    let other = Path::new(&flags).join(format!("done-{}", 16 - first));
    while !other.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    // A fresh process: the other's blocks come through the probe.
    let mut cache = Cache::new(&cfg, 64, BLOCK);
    for i in 0..64 {
        assert!(cache.promote(i), "process {first}: block {i}");
    }
    eprintln!("two processes, same keys: process {first} checked {} blocks, {} wrong", cache.served, cache.wrong);
    assert_eq!(cache.wrong, 0, "process {first}");
}

#[test]
fn two_processes_store_and_load_the_same_keys() {
    if !have_server() {
        return;
    }
    let server = Server::start(&[]);
    let flags = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = [0u64, 16]
        .iter()
        .map(|first| {
            Command::new(&exe)
                .args(["--exact", "two_process_child", "--nocapture", "--test-threads=1"])
                .env("KVTIER_CHILD_URL", server.url())
                .env("KVTIER_CHILD_FIRST", first.to_string())
                .env("KVTIER_CHILD_FLAGS", flags.path())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success(), "a child process failed");
    }
}
