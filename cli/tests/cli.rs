//! The real `kvtier replay` binary: traces on standard input or in a file, one answer line per
//! non-blank input line, and a clean failure for a missing file.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const TRACE: &str = r#"{"op":"config","num_blocks":2,"block_bytes":32,"tiers":[{"type":"memory"}]}
{"op":"tier_insert","tier":0,"keys":["aaaa0000"]}

{"op":"lookup","req":"r1","key":"aaaa0000"}
{"op":"end_step"}
{"op":"lookup","req":"r1","key":"aaaa0000"}
{"op":"verify","keys":["aaaa0000"]}
not json
{"op":"take_events"}
"#;

const ANSWERS: [&str; 8] = [
    r#"{"ok":true}"#,
    r#"{"ok":true}"#,
    r#"{"result":"pending"}"#,
    r#"{"ok":true}"#,
    r#"{"result":"ready"}"#,
    r#"{"ok":true,"keys":[{"key":"aaaa0000","ready":true,"intact":true}]}"#,
    r#"{"error":"invalid_request","#,
    r#"{"events":[{"medium":"CPU","removed":false,"keys":["aaaa0000"]}]}"#,
];

fn kvtier() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kvtier"))
}

fn run_with_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = kvtier()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvtier");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("wait for kvtier");
    writer.join().unwrap().expect("write the trace");
    out
}

fn check(out: &Output) {
    assert!(out.status.success(), "status {:?}, stderr: {}", out.status, String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), ANSWERS.len(), "{stdout}");
    for (line, want) in lines.iter().zip(ANSWERS) {
        assert!(line.starts_with(want), "expected {want}, got {line}");
    }
}

#[test]
fn replays_standard_input() {
    check(&run_with_stdin(&["replay"], TRACE.as_bytes()));
}

#[test]
fn replays_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.jsonl");
    std::fs::write(&path, TRACE).unwrap();
    let out = kvtier().arg("replay").arg(&path).output().unwrap();
    check(&out);
}

#[test]
fn a_missing_file_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = kvtier().arg("replay").arg(dir.path().join("absent.jsonl")).output().unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent.jsonl"));
}

#[test]
fn garbage_on_standard_input_answers_every_line() {
    let mut input = b"{\"op\":\"config\",\"num_blocks\":1}\n".to_vec();
    let garbage: [&[u8]; 6] =
        [b"{", b"\xff\xfe", b"[1]", b"{\"op\":\"lookup\",\"key\":1e999}", b"{\"op\":\"x\"}", b"null"];
    for line in garbage {
        input.extend_from_slice(line);
        input.push(b'\n');
    }
    input.extend_from_slice(format!("{{\"op\":\"lookup\",\"key\":\"{}\"}}\n", "ab".repeat(5000)).as_bytes());
    let out = run_with_stdin(&["replay"], &input);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 8, "{stdout}");
    assert_eq!(lines[0], r#"{"ok":true}"#);
    for line in &lines[1..] {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["error"].is_string() && v["message"].is_string(), "{line}");
    }
}

#[test]
fn empty_input_answers_nothing() {
    let out = run_with_stdin(&["replay"], b"");
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
}

/// A driver that sends one line and waits for its answer before sending the next gets every
/// answer without closing its end (answers are flushed when the input runs dry).
#[test]
fn answers_an_interactive_driver_line_by_line() {
    use std::io::{BufRead, BufReader};
    use std::sync::mpsc;
    use std::time::Duration;

    let mut child = kvtier().arg("replay").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn kvtier");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let lines = TRACE.lines().filter(|l| !l.trim().is_empty());
    for (line, want) in lines.zip(ANSWERS) {
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(got) => assert!(got.starts_with(want), "{line}: expected {want}, got {got}"),
            Err(_) => {
                child.kill().unwrap();
                panic!("no answer to {line} while the input stays open");
            }
        }
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
}
