//! A 3-node Redis cluster started by the test (`cluster-require-full-coverage no`, joined with
//! `redis-cli --cluster create`): blocks spread over the nodes, the slot map matches the
//! server's `CLUSTER KEYSLOT`, and one node SIGKILLed (from another thread) while traffic runs costs only the
//! blocks it held, with 0 wrong blocks served.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn start_cluster() -> Vec<Server> {
    let nodes: Vec<Server> = (0..3)
        .map(|_| {
            Server::start(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
                "--cluster-require-full-coverage",
                "no",
                "--appendonly",
                "no",
            ])
        })
        .collect();
    let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let out = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli --cluster create runs");
    assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
    let start = Instant::now();
    for n in &nodes {
        while !n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
            assert!(start.elapsed() < Duration::from_secs(30), "the cluster did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    nodes
}

#[test]
fn a_three_node_cluster_survives_losing_a_node() {
    if !have_server() {
        return;
    }
    let nodes = start_cluster();
    let mut cfg = tier_config(&nodes[0].url(), "cluster-test");
    cfg.probe_on_miss = true;
    let block = 16384;
    let mut cache = Cache::new(&cfg, 32, block);
    let startup = cache.tier().startup().clone();
    assert!(startup.cluster && startup.nodes == 3, "{startup:?}");
    // Our slot function is the server's.
    for i in 0..20 {
        let name = cache.tier().names().block_key_string(&key(i));
        let server: u16 = nodes[0].cli(&["CLUSTER", "KEYSLOT", &name]).trim().parse().unwrap();
        assert_eq!(kvtier_redis::names::slot(name.as_bytes()), server, "{name}");
    }
    cache.store(0..300);
    let per_node: Vec<u64> = nodes.iter().map(|n| n.cli(&["DBSIZE"]).trim().parse().unwrap()).collect();
    eprintln!("keys per node: {per_node:?}");
    assert!(per_node.iter().all(|&n| n > 50), "blocks spread over the nodes: {per_node:?}");
    // A second process sees them all (probe), from every node.
    let mut other = Cache::new(&cfg, 32, block);
    for i in 0..300 {
        assert!(other.promote(i), "block {i}");
    }
    // Traffic runs while node 2 is SIGKILLed from another thread, at a moment the traffic
    // does not choose: stores and promotions go on. Rounds that start after the kill count
    // what the nodes left serve.
    let killed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (pid, killed) = (nodes[2].pid(), std::sync::Arc::clone(&killed));
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            // SAFETY: the pid of a child this test spawned and has not reaped (the Server
            // reaps it when dropped, after this thread is joined).
            assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
            killed.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let (mut served_after, mut checked, mut rounds_after, mut straddled) = (0, 0u64, 0u64, 0u64);
    let mut round = 0u64;
    while rounds_after < 6 {
        let after = killed.load(std::sync::atomic::Ordering::SeqCst);
        let base = 1000 + round * 40;
        round += 1;
        cache.store(base..base + 40);
        let mut reader = Cache::new(&cfg, 32, block);
        let mut served = 0;
        for i in base..base + 40 {
            if reader.promote(i) {
                served += 1;
            }
        }
        checked += reader.served;
        cache.wrong += reader.wrong;
        if after {
            served_after += served;
            rounds_after += 1;
        } else if killed.load(std::sync::atomic::Ordering::SeqCst) {
            straddled += 1;
        }
        assert!(round < 10_000, "the killer thread never ran");
    }
    killer.join().unwrap();
    let stats = cache.tier().stats();
    eprintln!(
        "cluster, node killed under traffic: {round} rounds of 40 blocks ({straddled} straddling the kill); \
         {} blocks checked before, {checked} during and after; {served_after} of {} served after the kill; \
         {} wrong; {stats:?}",
        other.served,
        rounds_after * 40,
        cache.wrong + other.wrong
    );
    assert_eq!(cache.wrong + other.wrong, 0, "no wrong block");
    let served_after = served_after as u64;
    // About two thirds of the blocks live on the two nodes left.
    assert!(served_after > 6 * 40 / 3, "the live nodes keep serving ({served_after} of 240)");
    assert!(served_after < 6 * 40, "the dead node's blocks miss");
}
