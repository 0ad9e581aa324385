//! Two `kvtier` processes (two "inference servers") share one Redis: blocks one stores through
//! its remote tier are found by the other's probe and promoted, bytes intact; a block nobody
//! stored is a miss.

#[path = "../../io/redis/tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `kvtier replay` on `lines`; returns its answers.
fn replay(lines: &[String]) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvtier"))
        .arg("replay")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn kvtier");
    child.stdin.take().unwrap().write_all(lines.join("\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

/// Blocks the first process stores and the second promotes.
const BLOCKS: usize = 24;

#[test]
fn blocks_one_kvtier_process_stores_are_promoted_by_another() {
    let Some((_server, url)) = common::shared_server() else { return };
    let model = common::unique_model("two-kvtier");
    let config = |probe: bool| {
        format!(
            r#"{{"op":"config","num_blocks":{BLOCKS},"block_bytes":4096,"tiers":[{{"type":"redis","url":"{url}","model_name":"{model}","probe_on_miss":{probe}}}]}}"#
        )
    };
    let hex: Vec<String> = (0..BLOCKS).map(|i| format!("3{:07x}", i + 1)).collect();
    let keys = serde_json::to_string(&hex).unwrap();
    let first = replay(&[
        config(false),
        format!(r#"{{"op":"prepare_store","req":"a","keys":{keys}}}"#),
        format!(r#"{{"op":"complete_store","req":"a","keys":{keys},"success":true}}"#),
        r#"{"op":"drain"}"#.into(),
        r#"{"op":"end_step"}"#.into(),
    ]);
    assert!(first.iter().all(|a| !a.contains("error")), "{first:?}");
    // The second process looks every block up (each probe in flight: Retry), then again once
    // the probes answered (found: a promotion, Pending), then once promoted (Ready), and
    // checks the bytes of each.
    let lookups = |from: usize| hex.iter().enumerate().map(move |(i, k)| (from + i, k));
    let mut lines = vec![config(true)];
    for (_, k) in lookups(0) {
        lines.push(format!(r#"{{"op":"lookup","req":"b","key":"{k}"}}"#));
    }
    lines.push(r#"{"op":"drain"}"#.into());
    for (_, k) in lookups(0) {
        lines.push(format!(r#"{{"op":"lookup","req":"b","key":"{k}"}}"#));
    }
    lines.push(r#"{"op":"end_step"}"#.into());
    lines.push(r#"{"op":"drain"}"#.into());
    for (_, k) in lookups(0) {
        lines.push(format!(r#"{{"op":"lookup","req":"b","key":"{k}"}}"#));
    }
    lines.push(format!(r#"{{"op":"verify","keys":{keys}}}"#));
    lines.push(r#"{"op":"lookup","req":"b","key":"3f000000"}"#.into());
    lines.push(r#"{"op":"drain"}"#.into());
    lines.push(r#"{"op":"lookup","req":"b","key":"3f000000"}"#.into());
    let second = replay(&lines);
    let n = BLOCKS;
    assert!(second[1..=n].iter().all(|a| a == r#"{"result":"retry"}"#), "the probes are in flight: {second:?}");
    let found = &second[n + 2..=2 * n + 1];
    assert!(found.iter().all(|a| a == r#"{"result":"pending"}"#), "found by the probes: {found:?}");
    let ready = &second[2 * n + 4..=3 * n + 3];
    assert!(ready.iter().all(|a| a == r#"{"result":"ready"}"#), "promoted: {ready:?}");
    let verify: serde_json::Value = serde_json::from_str(&second[3 * n + 4]).unwrap();
    let checked = verify["keys"].as_array().unwrap();
    let wrong = checked.iter().filter(|k| k["intact"] != true || k["ready"] != true).count();
    eprintln!("two kvtier processes: {} blocks checked, {wrong} wrong", checked.len());
    assert_eq!((checked.len(), wrong), (n, 0), "{verify}");
    assert_eq!(second[3 * n + 7], r#"{"result":"miss"}"#, "a block nobody stored: {second:?}");
}
