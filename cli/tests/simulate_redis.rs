//! `kvtier simulate` with a remote tier on a real Redis server (the one `.ci/run` starts,
//! `KVTIER_REDIS_URL`, or one of the test's own): CPU -> disk -> Redis, CPU -> Redis, a
//! `[[tiers]] type = "redis"` config, and several inference servers sharing the remote tier.
//! Each run stores into a namespace of its own, so tests share the server. Outcomes only,
//! never timings.

#[path = "../../io/redis/tests/common/mod.rs"]
mod common;

use std::process::Command;

use clap::Parser;
use kvtier_cli::simulate::report::{Report, Sources};
use kvtier_cli::simulate::{simulate, SimulateArgs};

/// A small chat: 4 KiB blocks, a CPU tier of 128 blocks (below the 256-block GPU, so that
/// tier hits come from below it), the model's cost figures, the disk timed by the model.
const CHAT: &[&str] = &[
    "--sync-io",
    "--quiet",
    "--bytes-per-token=256",
    "--cpu-bytes=512K",
    "--gpu-blocks=256",
    "--sessions=32",
    "--requests=240",
    "--seed=7",
    "--rate=10",
];

fn run(extra: &[String]) -> Report {
    let argv = ["simulate"].iter().map(|s| s.to_string()).chain(CHAT.iter().map(|s| s.to_string()));
    let args = SimulateArgs::try_parse_from(argv.chain(extra.iter().cloned())).expect("valid arguments");
    let out = simulate(&args).expect("simulate runs");
    eprintln!("{}", out.report.to_text());
    out.report
}

fn total(s: &Sources) -> u64 {
    s.gpu + s.cpu + s.disk + s.remote + s.miss
}

/// What every run with a remote tier must show: every prompt block counted once, no wrong
/// byte, nothing failed, the remote tier's row.
fn check(r: &Report) {
    for run in [&r.offload, &r.cpu_only, &r.baseline] {
        assert_eq!(run.requests, r.setup.requests as u64, "{}", run.name);
        assert_eq!(total(&run.blocks), r.setup.prompt_blocks, "{}: every prompt block is counted once", run.name);
    }
    assert_eq!(r.errors.byte_mismatches, 0, "loaded blocks hold their bytes");
    assert_eq!(r.errors.load_failures, 0);
    assert_eq!(r.errors.protocol_errors, 0);
    let remote = r.remote.as_ref().expect("a remote tier row");
    assert!(remote.stored > 0, "blocks reach the server: {remote:?}");
    assert_eq!((remote.corrupt, remote.timeouts, remote.connection_errors), (0, 0, 0), "{remote:?}");
    assert_eq!(r.cpu_only.blocks.remote + r.baseline.blocks.remote, 0, "only the kvtier run has a remote tier");
    let text = r.to_text();
    assert!(text.contains("remote tier (Redis)") && text.contains("remote tier shared by"), "{text}");
}

#[test]
fn cpu_disk_redis_promotes_from_the_remote_tier() {
    let Some((_server, url)) = common::shared_server() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A disk of 64 blocks: most blocks leave it, and the remote tier still has them.
    let r = run(&[format!("--redis={url}"), format!("--dir={}", dir.path().display()), "--disk-bytes=256K".into()]);
    check(&r);
    assert_eq!(r.setup.tiers.len(), 2, "{:?}", r.setup.tiers);
    assert!(r.setup.tiers[0].starts_with("disk") && r.setup.tiers[1].starts_with("remote"), "{:?}", r.setup.tiers);
    assert!(r.offload.blocks.disk > 0, "disk hits: {:?}", r.offload.blocks);
    assert!(r.offload.blocks.remote > 0, "remote hits below the disk: {:?}", r.offload.blocks);
    assert!(r.bytes.remote_loaded > 0 && r.bytes.remote_stored > 0);
    let remote = r.remote.as_ref().unwrap();
    assert_eq!(remote.servers, 1);
    assert_eq!(remote.loaded_from_other_servers, 0, "one server: every block is its own");
    assert!(r.offload.hit_rate > r.cpu_only.hit_rate, "the tiers below the CPU save recomputation");
}

#[test]
fn servers_share_the_remote_tier_and_hit_each_others_blocks() {
    let Some((_server, url)) = common::shared_server() else { return };
    // Through the binary, as people run it: CPU -> Redis, three servers.
    let out = Command::new(env!("CARGO_BIN_EXE_kvtier"))
        .arg("simulate")
        .args(CHAT)
        .args([format!("--redis={url}"), "--no-disk".into(), "--servers=3".into(), "--json".into()])
        .output()
        .expect("kvtier runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    eprintln!("{}", serde_json::to_string_pretty(&json["remote"]).unwrap());
    assert_eq!(json["setup"]["servers"], 3);
    assert_eq!(json["setup"]["tiers"].as_array().unwrap().len(), 1, "no disk: {}", json["setup"]["tiers"]);
    assert_eq!(json["errors"]["byte_mismatches"], 0);
    assert_eq!(json["errors"]["load_failures"], 0);
    let remote = &json["remote"];
    assert_eq!(remote["servers"], 3);
    assert!(remote["loaded_from_other_servers"].as_u64().unwrap() > 0, "hits on another server's blocks: {remote}");
    assert!(remote["probe_hits"].as_u64().unwrap() > 0, "{remote}");
    assert!(json["offload"]["blocks"]["remote"].as_u64().unwrap() > 0);
    assert_eq!(remote["corrupt"], 0);
    // The same through the library, for the text report's rows.
    let r = run(&[format!("--redis={url}"), "--no-disk".into(), "--servers=3".into()]);
    check(&r);
    assert!(r.remote.as_ref().unwrap().loaded_from_other_servers > 0);
    assert!(r.to_text().contains("3 inference servers"));
}

#[test]
fn a_redis_tier_in_the_config_file() {
    let Some((_server, url)) = common::shared_server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kvtier.toml");
    std::fs::write(
        &config,
        format!(
            "num_blocks = 128\nblock_bytes = 4096\n\n[[tiers]]\ntype = \"redis\"\nurl = \"{url}\"\nmodel_name = \"sim-config-test\"\nconnections = 1\n"
        ),
    )
    .unwrap();
    let r = run(&[format!("--config={}", config.display())]);
    check(&r);
    assert_eq!(r.setup.tiers.len(), 1, "{:?}", r.setup.tiers);
    assert!(r.setup.tiers[0].contains("sim-config-test@sim-"), "the config's model name, tagged: {:?}", r.setup.tiers);
    assert!(r.offload.blocks.remote > 0, "{:?}", r.offload.blocks);
    assert!(r.offload.name.contains("Redis"), "{}", r.offload.name);
}

#[test]
fn bad_remote_settings_are_clear_errors() {
    let parse = |extra: &[&str]| {
        SimulateArgs::try_parse_from(["simulate"].iter().chain(CHAT).chain(extra)).expect("valid arguments")
    };
    let err = |extra: &[&str]| simulate(&parse(extra)).expect_err("refused").to_string();
    assert!(err(&["--servers=2"]).contains("share a remote tier"));
    assert!(err(&["--servers=0"]).contains("--servers"));
    // Nothing listens on a port just released.
    let port = common::free_port();
    let e = err(&[&format!("--redis=redis://127.0.0.1:{port}"), "--no-disk"]);
    assert!(e.contains("did not answer"), "{e}");
}
