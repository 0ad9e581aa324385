//! `kvtier replay` with an `fs` tier on a real directory: blocks travel primary -> disk ->
//! primary with their bytes intact, and a second run finds what the first stored.

use kvtier::replay::Replayer;
use serde_json::{json, Value};

fn run(lines: &[Value]) -> Vec<Value> {
    let mut r = Replayer::new();
    let out = lines.iter().map(|l| serde_json::from_str(&r.handle_line(&l.to_string()).unwrap()).unwrap()).collect();
    r.finish();
    out
}

#[test]
fn fs_tier_round_trip_and_second_run_threaded() {
    round_trip_and_second_run("threaded");
}

#[test]
fn fs_tier_round_trip_and_second_run_uring() {
    if let Err(e) = kvtier_io_uring::probe(false) {
        eprintln!("skipped: {e}");
        return;
    }
    round_trip_and_second_run("uring");
}

#[test]
fn fs_tier_round_trip_and_second_run_auto() {
    round_trip_and_second_run("auto");
}

fn round_trip_and_second_run(executor: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = json!({"op":"config","num_blocks":2,"block_bytes":8192,"policy":"lru",
        "tiers":[{"type":"fs","root_dir":dir.path(),"executor":executor,"model_name":"m/x","events":true}]});
    let (a, b, c) = ("aa00000001", "bb00000002", "cc00000003");
    let first = run(&[
        config.clone(),
        json!({"op":"prepare_store","req":"r1","keys":[a, b]}),
        json!({"op":"complete_store","req":"r1","keys":[a, b],"success":true}),
        json!({"op":"end_step"}),
        json!({"op":"drain"}),
        json!({"op":"end_step"}), // the cascade's completion is seen: pins released
        json!({"op":"take_events"}),
        json!({"op":"prepare_store","req":"r2","keys":[c]}), // evicts a (least recent)
        json!({"op":"complete_store","req":"r2","keys":[c],"success":true}),
        json!({"op":"lookup","req":"r3","key":a}), // on disk: promotion reserved (evicts b)
        json!({"op":"end_step"}),
        json!({"op":"drain"}),
        json!({"op":"lookup","req":"r3","key":a}),
        json!({"op":"verify","keys":[a]}),
    ]);
    assert_eq!(first[1]["block_ids"], json!([0, 1]));
    let events = first[6]["events"].as_array().unwrap();
    assert_eq!(events[0], json!({"medium":"CPU","removed":false,"keys":[a, b]}));
    assert_eq!(events[1], json!({"medium":"STORAGE","removed":false,"keys":[a, b]}));
    assert_eq!(first[7]["evicted"], json!([a]));
    assert_eq!(first[9], json!({"result":"pending"}));
    assert_eq!(first[12], json!({"result":"ready"}));
    assert_eq!(first[13], json!({"ok":true,"keys":[{"key":a,"ready":true,"intact":true}]}));

    // A second run on the same directory: the index is rebuilt from disk.
    let second = run(&[
        config,
        json!({"op":"lookup","req":"r1","key":b}),
        json!({"op":"lookup","req":"r1","key":c}),
        json!({"op":"end_step"}),
        json!({"op":"drain"}),
        json!({"op":"lookup","req":"r1","key":b}),
        json!({"op":"lookup","req":"r1","key":c}),
        json!({"op":"verify","keys":[b, c]}),
        json!({"op":"lookup","req":"r1","key":"dd00000004"}),
    ]);
    assert_eq!(second[1], json!({"result":"pending"}));
    assert_eq!(second[2], json!({"result":"pending"}));
    assert_eq!(second[5], json!({"result":"ready"}));
    assert_eq!(second[6], json!({"result":"ready"}));
    assert_eq!(
        second[7],
        json!({"ok":true,"keys":[{"key":b,"ready":true,"intact":true},{"key":c,"ready":true,"intact":true}]})
    );
    assert_eq!(second[8], json!({"result":"miss"}));
}

#[test]
fn fs_tier_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let answers =
        run(&[json!({"op":"config","num_blocks":2,"tiers":[{"type":"fs","root_dir":file}]}), json!({"op":"end_step"})]);
    assert_eq!(answers[0]["error"], "io");
    assert_eq!(answers[1]["error"], "config");
    let answers =
        run(&[json!({"op":"config","num_blocks":2,"tiers":[{"type":"fs","root_dir":dir.path(),"executor":"tape"}]})]);
    assert_eq!(answers[0]["error"], "config");
    // A run config that differs from the one on disk is refused at start-up, never overwritten.
    let ok =
        run(&[json!({"op":"config","num_blocks":2,"tiers":[{"type":"fs","root_dir":dir.path(),"model_name":"m"}]})]);
    assert_eq!(ok[0], json!({"ok":true}));
    let base = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .find(|e| e.path().join("config.json").is_file())
        .unwrap()
        .path();
    let text = std::fs::read_to_string(base.join("config.json")).unwrap();
    std::fs::write(base.join("config.json"), text.replace("\"tp_size\": 1", "\"tp_size\": 2")).unwrap();
    let bad =
        run(&[json!({"op":"config","num_blocks":2,"tiers":[{"type":"fs","root_dir":dir.path(),"model_name":"m"}]})]);
    assert_eq!(bad[0]["error"], "io");
    assert!(bad[0]["message"].as_str().unwrap().contains("tp_size"), "{}", bad[0]);
}
