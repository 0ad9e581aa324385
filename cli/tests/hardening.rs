//! Issue 11, as a user meets the `kvtier` binary: errors that name the path and the operation,
//! exit statuses a script can trust, and nothing a configuration or a trace says crashes it.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn kvtier() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kvtier"))
}

fn run(args: &[&str], input: &str) -> Output {
    let mut child = kvtier()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvtier");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.as_bytes().to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("wait for kvtier");
    writer.join().unwrap().expect("write the input");
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Exited with status 1 (a reported error), not a panic (101), an abort or a signal.
fn assert_failed_cleanly(out: &Output, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: {:?} (signal {:?}), stderr: {}",
        out.status,
        out.status.signal(),
        text(&out.stderr)
    );
}

/// Issue 11, items 13 and 18: worker counts a process cannot start are a `config` answer
/// naming the field (they used to abort the process with no answer line, exit 134); every
/// later line is answered; and `replay` exits non-zero after a failed config line (it exited
/// 0).
#[test]
fn replay_answers_a_bad_config_line_then_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    let config = format!(
        r#"{{"op":"config","num_blocks":2,"tiers":[{{"type":"fs","root_dir":"{root}","executor":"threaded","read_workers":100000}}]}}"#
    );
    let out = run(&["replay"], &format!("{config}\n{{\"op\":\"end_step\"}}\n{{\"op\":\"state\"}}\n"));
    assert_failed_cleanly(&out, "read_workers = 100000");
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "one answer per line: {stdout}");
    assert!(lines[0].starts_with(r#"{"error":"config""#) && lines[0].contains("tiers[0].read_workers"), "{}", lines[0]);
    assert!(lines[1..].iter().all(|l| l.starts_with(r#"{"error":"config""#)), "{stdout}");
    assert!(text(&out.stderr).contains("config line failed"), "{}", text(&out.stderr));

    let out = run(&["replay"], "{\"op\":\"config\",\"num_blocks\":2,\"block_bytes\":0}\n");
    assert_failed_cleanly(&out, "block_bytes = 0");
    assert!(text(&out.stdout).contains("`block_bytes`"), "{}", text(&out.stdout));
    let out = run(&["replay"], "{\"op\":\"config\",\"num_blocks\":2}\n{\"op\":\"end_step\"}\n");
    assert!(out.status.success(), "a good run still exits 0: {}", text(&out.stderr));
}

/// Issue 11, item 16: `replay` names the path and the operation: a directory given as the
/// trace, a tier root it cannot create.
#[test]
fn replay_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = kvtier().arg("replay").arg(dir.path()).output().unwrap();
    assert_failed_cleanly(&out, "replay DIR");
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("replay: {} is a directory", dir.path().display())), "{stderr}");

    let config = r#"{"op":"config","num_blocks":2,"tiers":[{"type":"fs","root_dir":"/proc/kvtier"}]}"#;
    let out = run(&["replay"], &format!("{config}\n"));
    assert_failed_cleanly(&out, "an fs tier under /proc");
    let answer = text(&out.stdout);
    assert!(answer.starts_with(r#"{"error":"io""#), "{answer}");
    assert!(answer.contains("cannot create directory /proc/kvtier/"), "{answer}");
}

/// A namespace with `n` blocks under `root`, written by `kvtier replay` through an fs tier.
fn make_namespace(root: &Path, n: usize) {
    // 8 bytes of hash, then the 4-byte group: files named {hash}.bin.
    let keys: Vec<String> =
        (0..n).map(|i| format!("\"{:016x}00000000\"", 0xab00_0000_0000_0000u64 + i as u64)).collect();
    let keys = keys.join(",");
    let root = root.display();
    let trace = format!(
        "{{\"op\":\"config\",\"num_blocks\":{n},\"tiers\":[{{\"type\":\"fs\",\"root_dir\":\"{root}\",\"executor\":\"threaded\"}}]}}\n\
         {{\"op\":\"prepare_store\",\"keys\":[{keys}]}}\n\
         {{\"op\":\"complete_store\",\"keys\":[{keys}]}}\n\
         {{\"op\":\"end_step\"}}\n{{\"op\":\"drain\"}}\n{{\"op\":\"end_step\"}}\n"
    );
    let out = run(&["replay"], &trace);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!text(&out.stdout).contains("error"), "{}", text(&out.stdout));
}

/// Block files under `root`.
fn block_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "bin") {
                out.push(path);
            }
        }
    }
    out
}

/// Issue 11, items 16, 17 and 27: `inspect` names a root that is not there; exits non-zero
/// where there is no kvtier data (it exited 0 with "0 namespaces") or, with `--verify`, a
/// corrupt block (it exited 0 reporting it); exits 0 on a healthy root; and reports files
/// others can read.
#[test]
fn inspect_is_a_health_check() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent");
    let out = kvtier().arg("inspect").arg(&missing).output().unwrap();
    assert_failed_cleanly(&out, "inspect of a missing root");
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("inspect: {}: no such directory", missing.display())), "{stderr}");

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("unrelated.txt"), b"x").unwrap();
    let out = kvtier().arg("inspect").arg(&empty).output().unwrap();
    assert_failed_cleanly(&out, "inspect of a root without kvtier data");
    assert!(text(&out.stderr).contains("no kvtier data"), "{}", text(&out.stderr));

    let root = dir.path().join("cache");
    make_namespace(&root, 3);
    for args in [&["inspect"][..], &["inspect", "--verify"], &["inspect", "--verify", "--json"]] {
        let out = kvtier().args(args).arg(&root).output().unwrap();
        assert!(out.status.success(), "{args:?} on a healthy root: {}{}", text(&out.stdout), text(&out.stderr));
        assert!(!text(&out.stdout).contains("others can read"), "{}", text(&out.stdout));
    }

    let blocks = block_files(&root);
    assert_eq!(blocks.len(), 3);
    // Others may read one block (as files made before owner-only were): reported, not damage.
    std::fs::set_permissions(&blocks[0], std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = kvtier().args(["inspect", "--json"]).arg(&root).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["namespaces"][0]["ranks"][0]["others_readable"], 1, "{report}");
    let out = kvtier().arg("inspect").arg(&root).output().unwrap();
    assert!(text(&out.stdout).contains("1 file(s) and directories others can read"), "{}", text(&out.stdout));

    // A corrupt block: flip a payload byte.
    let mut bytes = std::fs::read(&blocks[1]).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blocks[1], bytes).unwrap();
    let out = kvtier().arg("inspect").arg(&root).output().unwrap();
    assert!(out.status.success(), "without --verify blocks are not read: {}", text(&out.stderr));
    let out = kvtier().args(["inspect", "--verify"]).arg(&root).output().unwrap();
    assert_failed_cleanly(&out, "inspect --verify of a corrupt block");
    assert!(text(&out.stdout).contains("2 intact, 1 corrupt"), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("1 corrupt block"), "{}", text(&out.stderr));
}

/// Issue 11, item 12: `block_bytes = 0` in a configuration file is an error naming the field
/// and the file (`simulate` used to divide by it and panic, exit 101).
#[test]
fn simulate_refuses_an_invalid_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kvtier.toml");
    std::fs::write(&config, "num_blocks = 8\nblock_bytes = 0\n").unwrap();
    let out = kvtier().args(["simulate", "--requests", "1", "--config"]).arg(&config).output().unwrap();
    assert_failed_cleanly(&out, "simulate with block_bytes = 0");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("kvtier.toml") && stderr.contains("`block_bytes`"), "{stderr}");
}
