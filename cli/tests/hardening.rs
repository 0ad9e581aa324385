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

/// A small `simulate` run (`--sync-io`, 20 requests, 4 KiB blocks unless `args` give
/// `--bytes-per-token`) with `args` on top, its temporary directory (if any) under `tmpdir`.
fn simulate(tmpdir: &Path, args: &[&str]) -> Output {
    let bpt =
        if args.iter().any(|a| a.starts_with("--bytes-per-token")) { None } else { Some("--bytes-per-token=256") };
    kvtier()
        .env("TMPDIR", tmpdir)
        .args(["simulate", "--quiet", "--sync-io", "--requests=20"])
        .args(bpt)
        .args(args)
        .output()
        .expect("run kvtier simulate")
}

/// Issue 11, item 15: a CPU tier of tiny blocks is sized by what a row takes (a 4096-byte
/// stride), and the report says so. `--bytes-per-token 1` (16-byte blocks) made the default
/// 2 GiB tier 2^27 rows, a 512 GiB mapping, and failed with "Cannot allocate memory".
#[test]
fn simulate_counts_cpu_rows_by_stride() {
    let tmp = tempfile::tempdir().unwrap();
    let out = simulate(tmp.path(), &["--bytes-per-token=1", "--disk-bytes=1M"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("CPU tier 524288 blocks"), "2 GiB of 4 KiB strides: {stdout}");
    assert!(stdout.contains("each row of 16 B takes a 4 KiB stride in memory here"), "{stdout}");
}

/// The `kvtier-simulate-*` directories under `tmpdir`.
fn scratch_dirs(tmpdir: &Path) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(tmpdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("kvtier-simulate-")))
        .collect();
    dirs.sort();
    dirs
}

/// Issue 11, item 14: sizes whose products overflow are a clear error naming the flag, never a
/// panic, an abort or a wrapped figure. `--block-tokens 2^60` made the block size wrap to 0 and
/// `simulate` divide by it (exit 101); `--gpu-blocks 2^52 + 1` of 4 KiB wrapped to 4 KiB of
/// GPU and passed the memory check; a configuration's `max_blocks` of 2^63 - 1 was printed as
/// 16 EiB wrapped ("17179869184.0 GiB").
#[test]
fn simulate_refuses_sizes_that_overflow() {
    let tmp = tempfile::tempdir().unwrap();
    for (flag, value) in [("--block-tokens", "1152921504606846976"), ("--gpu-blocks", "4503599627370497")] {
        let out = simulate(tmp.path(), &[&format!("{flag}={value}")]);
        assert_failed_cleanly(&out, flag);
        assert!(text(&out.stderr).contains(&format!("{flag} {value}")), "{}", text(&out.stderr));
    }
    let config = tmp.path().join("huge.toml");
    let root = tmp.path().join("root");
    std::fs::write(
        &config,
        format!(
            "num_blocks = 64\nblock_bytes = 4096\n[[tiers]]\ntype = \"fs\"\nroot_dir = \"{}\"\nexecutor = \"threaded\"\nmax_blocks = 9223372036854775807\n",
            root.display()
        ),
    )
    .unwrap();
    let out = simulate(tmp.path(), &["--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // (2^63 - 1) x 4 KiB = 2^45 TiB.
    assert!(stdout.contains("at most 9223372036854775807 blocks (34359738368 TiB)"), "{stdout}");
}

/// Issue 11, item 19: the header says what runs. `--sessions 0` printed "0 sessions" and ran
/// one; `--executor sim` said "disk (fs) at DIR" (its disk is in memory) and made a temporary
/// directory it never used.
#[test]
fn simulate_prints_what_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = simulate(tmp.path(), &["--sessions=0"]);
    assert_failed_cleanly(&out, "--sessions 0");
    assert!(text(&out.stderr).contains("--sessions 0"), "{}", text(&out.stderr));
    let out = simulate(tmp.path(), &["--zipf", "-1"]);
    assert_failed_cleanly(&out, "--zipf -1");
    assert!(text(&out.stderr).contains("--zipf -1"), "{}", text(&out.stderr));

    let out = simulate(tmp.path(), &["--sessions=3", "--system-prompts=2", "--zipf=1.5", "--executor=sim"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let header = stdout.lines().next().unwrap();
    assert!(
        header.contains("20 chat requests from 3 sessions (Zipf popularity, exponent 1.5; 2 shared system prompts)"),
        "{header}"
    );
    let tier = stdout.lines().find(|l| l.trim_start().starts_with("tier:")).unwrap();
    assert!(tier.contains("simulated in memory") && tier.contains("sim executor"), "{tier}");
    assert!(!tier.contains("disk (fs) at"), "{tier}");
    assert_eq!(scratch_dirs(tmp.path()), Vec::<std::path::PathBuf>::new(), "no directory for an in-memory disk");
    let out = simulate(tmp.path(), &["--executor=sim", "--dir", tmp.path().join("d").to_str().unwrap()]);
    assert_failed_cleanly(&out, "--dir with --executor sim");
    assert!(text(&out.stderr).contains("--dir"), "{}", text(&out.stderr));
}

/// The first `.bin` file under `dir`, if any (walking what can be read: the tier is writing).
fn any_block_file(dir: &Path) -> bool {
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "bin") {
                return true;
            }
        }
    }
    false
}

/// Issue 11, items 20 and 27: a `simulate` killed by SIGTERM or SIGINT while its disk tier
/// writes removes its temporary directory (it was left behind: 4.8 GB seen), then ends by that
/// signal; the directory is owner-only while it lives (it was 0755). A real process: the
/// `kvtier` binary, its temporary directory under a `TMPDIR` of the test's.
#[test]
fn simulate_killed_by_a_signal_removes_its_temporary_directory() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = kvtier()
            .env("TMPDIR", tmp.path())
            .args(["simulate", "--quiet", "--sync-io", "--bytes-per-token=256", "--requests=20000"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kvtier simulate");
        // Until the disk tier has written a block into the temporary directory.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        let scratch = loop {
            if let Some(dir) = scratch_dirs(tmp.path()).pop() {
                if any_block_file(&dir) {
                    break dir;
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("simulate ended before writing a block: {status:?}");
            }
            assert!(std::time::Instant::now() < deadline, "no block written within 300 s");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mode = std::fs::metadata(&scratch).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}: others may not read the KV blocks in it", scratch.display());
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: kill(2) with the pid of our own child, which has not been waited for (so the
        // pid is still its own), and a valid signal number.
        let sent = unsafe { libc::kill(pid, sig) };
        assert_eq!(sent, 0, "kill: {}", std::io::Error::last_os_error());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.signal(), Some(sig), "ended by the signal: {:?}, {}", out.status, text(&out.stderr));
        assert!(!scratch.exists(), "{} left behind", scratch.display());
        assert_eq!(scratch_dirs(tmp.path()), Vec::<std::path::PathBuf>::new());
        let name = if sig == libc::SIGTERM { "SIGTERM" } else { "SIGINT" };
        assert!(text(&out.stderr).contains(&format!("interrupted by {name}")), "{}", text(&out.stderr));
    }
}
