//! `kvtier replay` with a `regions` tier on a real device file: blocks travel primary ->
//! device -> primary with their bytes intact, a second run finds what the first stored, and a
//! device made for another run config is refused.

use kvtier::replay::Replayer;
use serde_json::{json, Value};

fn run(lines: &[Value]) -> Vec<Value> {
    let mut r = Replayer::new();
    let out = lines.iter().map(|l| serde_json::from_str(&r.handle_line(&l.to_string()).unwrap()).unwrap()).collect();
    r.finish();
    out
}

fn tier(path: &std::path::Path, executor: &str, model: &str) -> Value {
    json!({"type":"regions","path":path,"capacity":"4M","region_bytes":"512K","executor":executor,
           "model_name":model,"events":true})
}

#[test]
fn regions_tier_round_trip_and_second_run() {
    for executor in ["threaded", "auto", "sim"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.dev");
        let config = json!({"op":"config","num_blocks":2,"block_bytes":8192,"policy":"lru",
            "tiers":[tier(&path, executor, "m/x")]});
        let (a, b, c) = ("aa00000001", "bb00000002", "cc00000003");
        let first = run(&[
            config.clone(),
            json!({"op":"prepare_store","req":"r1","keys":[a, b]}),
            json!({"op":"complete_store","req":"r1","keys":[a, b],"success":true}),
            json!({"op":"end_step"}),
            json!({"op":"drain"}),
            json!({"op":"end_step"}),
            json!({"op":"take_events"}),
            json!({"op":"prepare_store","req":"r2","keys":[c]}), // evicts a from the primary
            json!({"op":"complete_store","req":"r2","keys":[c],"success":true}),
            json!({"op":"lookup","req":"r3","key":a}), // on the device: promotion reserved
            json!({"op":"end_step"}),
            json!({"op":"drain"}),
            json!({"op":"lookup","req":"r3","key":a}),
            json!({"op":"verify","keys":[a]}),
        ]);
        let events = first[6]["events"].as_array().unwrap();
        assert_eq!(events[1], json!({"medium":"STORAGE","removed":false,"keys":[a, b]}), "{executor}");
        assert_eq!(first[9], json!({"result":"pending"}), "{executor}");
        assert_eq!(first[12], json!({"result":"ready"}), "{executor}");
        assert_eq!(first[13], json!({"ok":true,"keys":[{"key":a,"ready":true,"intact":true}]}), "{executor}");
        if executor == "sim" {
            assert!(!path.exists(), "the sim executor's device lives in memory");
            continue;
        }
        let second = run(&[
            config,
            json!({"op":"lookup","req":"r1","key":b}),
            json!({"op":"end_step"}),
            json!({"op":"drain"}),
            json!({"op":"lookup","req":"r1","key":b}),
            json!({"op":"verify","keys":[b]}),
            json!({"op":"lookup","req":"r1","key":"dd00000004"}),
        ]);
        assert_eq!(second[1], json!({"result":"pending"}), "{executor}");
        assert_eq!(second[4], json!({"result":"ready"}), "{executor}");
        assert_eq!(second[5], json!({"ok":true,"keys":[{"key":b,"ready":true,"intact":true}]}), "{executor}");
        assert_eq!(second[6], json!({"result":"miss"}), "{executor}");
        // Another model's run config: refused at start-up, the device untouched.
        let before = std::fs::read(&path).unwrap();
        let bad =
            run(&[json!({"op":"config","num_blocks":2,"block_bytes":8192,"tiers":[tier(&path, executor, "m/y")]})]);
        assert_eq!(bad[0]["error"], "io", "{executor}");
        assert!(bad[0]["message"].as_str().unwrap().contains("model_name"), "{}", bad[0]);
        assert!(std::fs::read(&path).unwrap() == before);
    }
}

#[test]
fn regions_tier_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let t = |extra: Value| {
        let mut t = json!({"type":"regions","path":dir.path().join("d"),"capacity":"4M"});
        t.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        run(&[json!({"op":"config","num_blocks":2,"block_bytes":8192,"tiers":[t]})])[0].clone()
    };
    assert_eq!(t(json!({"capacty": 1}))["error"], "config");
    assert_eq!(t(json!({"capacity": "4Q"}))["error"], "config");
    assert_eq!(t(json!({"eviction": "random"}))["error"], "config");
    let small = t(json!({"capacity": 100_000}));
    assert_eq!(small["error"], "io");
    assert!(small["message"].as_str().unwrap().contains("regions"), "{small}");
}
