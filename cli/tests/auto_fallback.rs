//! `executor = "auto"` where io_uring is unavailable (forced here with `KVTIER_URING_DISABLE`,
//! in a child process so the variable reaches no other test): the disk tiers run on the threaded
//! executor, and the reason is told once, however many tiers fall back.

use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn auto_falls_back_to_threaded_with_one_warning() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let tier = |d: &tempfile::TempDir| serde_json::json!({"type":"fs","root_dir":d.path(),"executor":"auto","model_name":"m/x"});
    let trace = [
        serde_json::json!({"op":"config","num_blocks":2,"block_bytes":4096,"tiers":[tier(&dirs[0]), tier(&dirs[1])]}),
        serde_json::json!({"op":"prepare_store","req":"r1","keys":["aa000001"]}),
        serde_json::json!({"op":"complete_store","req":"r1","keys":["aa000001"],"success":true}),
        serde_json::json!({"op":"end_step"}),
        serde_json::json!({"op":"drain"}),
        serde_json::json!({"op":"verify","keys":["aa000001"]}),
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvtier"))
        .arg("replay")
        .env("KVTIER_URING_DISABLE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for line in &trace {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let answers: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers[0], serde_json::json!({"ok":true}), "{stdout}");
    assert_eq!(answers[5]["keys"][0]["intact"], true, "{stdout}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let warning = "warning: io_uring is unavailable: disabled by KVTIER_URING_DISABLE=1; \
                   disk tiers use the threaded executor";
    assert_eq!(stderr.matches(warning).count(), 1, "stderr: {stderr}");
}
