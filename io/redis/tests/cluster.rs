//! A 3-node Redis cluster started by the test (`cluster-require-full-coverage no`, joined with
//! `redis-cli --cluster create`): blocks spread over the nodes, the slot map matches the
//! server's `CLUSTER KEYSLOT`, and one node SIGKILLed while traffic runs costs only the
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
    let mut nodes = start_cluster();
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
    // Traffic runs while node 2 is killed: stores and promotions go on.
    let mut served_after = 0;
    for round in 0..10u64 {
        if round == 3 {
            nodes[2].kill();
        }
        let base = 1000 + round * 40;
        cache.store(base..base + 40);
        let mut reader = Cache::new(&cfg, 32, block);
        for i in base..base + 40 {
            if reader.promote(i) && round > 3 {
                served_after += 1;
            }
        }
        cache.wrong += reader.wrong;
    }
    let stats = cache.tier().stats();
    eprintln!("after the kill: {served_after} blocks served; {} wrong; {stats:?}", cache.wrong);
    assert_eq!(cache.wrong + other.wrong, 0, "no wrong block");
    // About two thirds of the blocks live on the two nodes left.
    assert!(served_after > 6 * 40 / 3, "the live nodes keep serving ({served_after} of 240)");
    assert!(served_after < 6 * 40, "the dead node's blocks miss");
}
