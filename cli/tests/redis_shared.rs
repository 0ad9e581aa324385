//! Two `kvtier` processes (two "inference servers") share one Redis: blocks one stores through
//! its remote tier are found by the other's probe and promoted, bytes intact.

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

#[test]
fn blocks_one_kvtier_process_stores_are_promoted_by_another() {
    let Some((_server, url)) = common::shared_server() else { return };
    let model = common::unique_model("two-kvtier");
    let config = |probe: bool| {
        format!(
            r#"{{"op":"config","num_blocks":2,"block_bytes":4096,"tiers":[{{"type":"redis","url":"{url}","model_name":"{model}","probe_on_miss":{probe}}}]}}"#
        )
    };
    let keys = r#"["31000000","32000000"]"#;
    let first = replay(&[
        config(false),
        format!(r#"{{"op":"prepare_store","req":"a","keys":{keys}}}"#),
        format!(r#"{{"op":"complete_store","req":"a","keys":{keys},"success":true}}"#),
        r#"{"op":"drain"}"#.into(),
        r#"{"op":"end_step"}"#.into(),
    ]);
    assert!(first.iter().all(|a| !a.contains("error")), "{first:?}");
    let second = replay(&[
        config(true),
        r#"{"op":"lookup","req":"b","key":"32000000"}"#.into(),
        r#"{"op":"drain"}"#.into(),
        r#"{"op":"lookup","req":"b","key":"32000000"}"#.into(),
        r#"{"op":"end_step"}"#.into(),
        r#"{"op":"drain"}"#.into(),
        r#"{"op":"lookup","req":"b","key":"32000000"}"#.into(),
        r#"{"op":"verify","keys":["32000000"]}"#.into(),
        r#"{"op":"lookup","req":"b","key":"33000000"}"#.into(),
        r#"{"op":"drain"}"#.into(),
        r#"{"op":"lookup","req":"b","key":"33000000"}"#.into(),
    ]);
    assert_eq!(second[1], r#"{"result":"retry"}"#, "the probe is in flight: {second:?}");
    assert_eq!(second[3], r#"{"result":"pending"}"#, "found by the probe: {second:?}");
    assert_eq!(second[6], r#"{"result":"ready"}"#, "{second:?}");
    assert_eq!(second[7], r#"{"ok":true,"keys":[{"key":"32000000","ready":true,"intact":true}]}"#);
    assert_eq!(second[10], r#"{"result":"miss"}"#, "a block nobody stored: {second:?}");
}
