//! Shared helpers for the integration tests in `tests/tests/` (running replay traces and
//! comparing their answers with golden files, a seeded generator) and [`sim_world`], the whole
//! system on the simulated disk that the `sim_system` test and the `engine_fs_sim` fuzz target
//! both drive.

use std::path::{Path, PathBuf};

use kvtier::replay::Replayer;
use serde_json::Value;

pub mod sim_world;

/// The error kinds a replay answer may carry (SEMANTICS.md, "Replay traces").
pub const ERROR_KINDS: [&str; 9] = [
    "not_present",
    "not_ready",
    "not_pinned",
    "invalid_key",
    "invalid_request",
    "unknown_op",
    "unknown_tier",
    "config",
    "io",
];

/// `tests/traces/`, where the golden traces live.
pub fn traces_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("traces")
}

/// Reads `tests/traces/{name}.jsonl` and `tests/traces/{name}.expected.jsonl`.
pub fn read_golden(name: &str) -> (String, String) {
    let dir = traces_dir();
    let read =
        |file: String| std::fs::read_to_string(dir.join(&file)).unwrap_or_else(|e| panic!("cannot read {file}: {e}"));
    (read(format!("{name}.jsonl")), read(format!("{name}.expected.jsonl")))
}

/// Runs a whole trace through a [`Replayer`] (then shuts it down) and returns its answers.
pub fn replay(trace: &str) -> Vec<String> {
    let mut replayer = Replayer::new();
    let answers = trace.lines().filter_map(|line| replayer.handle_line(line)).collect();
    replayer.finish();
    answers
}

/// Runs a trace through [`kvtier::replay::run`] (the CLI's streaming path) and returns its
/// output lines.
pub fn replay_stream(trace: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    kvtier::replay::run(trace, &mut out).expect("in-memory replay cannot fail");
    String::from_utf8(out).expect("answers are UTF-8").lines().map(str::to_owned).collect()
}

/// Does `actual` answer as `expected` says? JSON values must be equal, numbers by value
/// (`1` equals `1.0`). An expected error without a `message` matches any error of that kind
/// that carries a string message.
pub fn answer_matches(expected: &Value, actual: &Value) -> bool {
    if let (Some(kind), None) = (expected.get("error"), expected.get("message")) {
        let Some(obj) = actual.as_object() else {
            return false;
        };
        return obj.len() == 2 && obj.get("error") == Some(kind) && obj.get("message").is_some_and(Value::is_string);
    }
    json_eq(expected, actual)
}

/// JSON equality with numbers compared by value.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Compares answers with the expected lines (blank expected lines ignored), line by line.
pub fn check_answers(name: &str, expected: &str, actual: &[String]) -> Result<(), String> {
    let expected: Vec<&str> = expected.lines().filter(|l| !l.trim().is_empty()).collect();
    for (i, (want, got)) in expected.iter().zip(actual).enumerate() {
        let want_v: Value = serde_json::from_str(want).map_err(|e| format!("{name}: expected line {}: {e}", i + 1))?;
        let got_v: Value =
            serde_json::from_str(got).map_err(|e| format!("{name}: answer {} is not JSON ({e}): {got}", i + 1))?;
        if !answer_matches(&want_v, &got_v) {
            return Err(format!("{name}: answer {} differs\n  expected: {want}\n  actual:   {got}", i + 1));
        }
    }
    if expected.len() != actual.len() {
        return Err(format!("{name}: {} answers, expected {}", actual.len(), expected.len()));
    }
    Ok(())
}

/// Is `line` a well-formed answer: one JSON object of a shape SEMANTICS.md lists?
pub fn is_well_formed_answer(line: &str) -> bool {
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line) else {
        return false;
    };
    if let Some(kind) = obj.get("error") {
        return obj.len() == 2
            && kind.as_str().is_some_and(|k| ERROR_KINDS.contains(&k))
            && obj.get("message").is_some_and(Value::is_string);
    }
    if let Some(result) = obj.get("result") {
        return obj.len() == 1 && matches!(result.as_str(), Some("ready" | "pending" | "retry" | "miss"));
    }
    if let Some(events) = obj.get("events") {
        return obj.len() == 1 && events.is_array();
    }
    obj.get("ok").is_some_and(Value::is_boolean)
}

/// A small deterministic generator (kvtier-fs's SplitMix64, the simulator's) for randomized tests;
/// every test prints its seed and takes it from `KVTIER_TEST_SEED` when set.
#[derive(Debug, Clone)]
pub struct Rng(kvtier_fs::rng::SplitMix64);

impl Rng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(kvtier_fs::rng::SplitMix64::new(seed))
    }

    /// A generator from `KVTIER_TEST_SEED`, or from `default`; prints the seed.
    pub fn from_env(default: u64) -> Self {
        let seed = std::env::var("KVTIER_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
        println!("seed {seed} (replay with KVTIER_TEST_SEED={seed})");
        Rng::new(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// One element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}
