//! The Python peer of `bench core`: `cli/bench/vllm_cpu_model.py`, our model of vLLM's CPU
//! offloading manager, run as a child that measures one row at a time on request.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::Value;

use super::engine::MixCheck;
use super::workload::{Counts, BATCH, REQUEST_BLOCKS};
use super::CoreArgs;

/// Where the peer lives, relative to this crate.
const PEER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/vllm_cpu_model.py");

/// One row as the Python model measured it.
#[derive(Debug, Clone)]
pub(super) struct PeerRow {
    pub(super) op: String,
    pub(super) wall_rate: f64,
    pub(super) cpu_rate: Option<f64>,
}

/// The Python model, running as a child that measures one row per request (`--serve`), so
/// that each of its rows runs right after the same kvtier row and the two never share the CPU.
pub(super) struct Peer {
    child: Option<(Child, ChildStdin, BufReader<ChildStdout>)>,
    pub(super) python: Option<String>,
    pub(super) rows: Vec<PeerRow>,
    pub(super) mix_check: Option<MixCheck>,
    pub(super) error: Option<String>,
}

impl Peer {
    /// A peer that will not run, for `reason`.
    pub(super) fn absent(reason: Option<String>) -> Self {
        Peer { child: None, python: None, rows: Vec::new(), mix_check: None, error: reason }
    }

    pub(super) fn spawn(args: &CoreArgs, c: Counts) -> Self {
        let script = Path::new(PEER_SCRIPT);
        if !script.is_file() {
            return Self::absent(Some(format!("the Python model {} is missing", script.display())));
        }
        let spawned = Command::new(&args.python)
            .arg(script)
            .arg("--serve")
            .args(["--slots", &args.slots.to_string()])
            .args(["--ops", &c.ops.to_string(), "--warmup", &c.warm.to_string()])
            .args(["--mix-steps", &c.mix_steps.to_string(), "--mix-warmup", &c.mix_warm.to_string()])
            .args(["--seed", &args.seed.to_string()])
            .args(["--batch", &BATCH.to_string(), "--request-blocks", &REQUEST_BLOCKS.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match spawned {
            Ok(mut child) => match (child.stdin.take(), child.stdout.take()) {
                (Some(stdin), Some(stdout)) => {
                    let mut peer = Self::absent(None);
                    peer.child = Some((child, stdin, BufReader::new(stdout)));
                    peer
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    Self::absent(Some("cannot talk to the Python model".to_owned()))
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Self::absent(Some(format!("{} not found", args.python)))
            }
            Err(e) => Self::absent(Some(format!("cannot run {}: {e}", args.python))),
        }
    }

    /// Has the Python model measure row `op` now. A failure stops the peer and is remembered.
    pub(super) fn run_row(&mut self, op: &str) {
        let Some((child, stdin, stdout)) = self.child.as_mut() else {
            return;
        };
        let answer = (|| -> Result<Value, String> {
            writeln!(stdin, "{op}").and_then(|()| stdin.flush()).map_err(|e| e.to_string())?;
            let mut line = String::new();
            if stdout.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                let mut stderr = String::new();
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut stderr);
                }
                return Err(stderr.lines().last().unwrap_or("it exited").to_owned());
            }
            serde_json::from_str(&line).map_err(|e| format!("bad output: {e}"))
        })();
        match answer {
            Ok(v) => {
                self.python = v["python"].as_str().map(str::to_owned);
                if let Some(check) = v.get("mix_check") {
                    self.mix_check = MixCheck::from_json(check);
                }
                self.rows.push(PeerRow {
                    op: op.to_owned(),
                    wall_rate: v["ops_per_s"].as_f64().unwrap_or(f64::NAN),
                    cpu_rate: v["ops_per_cpu_s"].as_f64(),
                });
            }
            Err(e) => {
                self.error = Some(format!("the Python model failed on {op}: {e}"));
                self.stop();
            }
        }
    }

    /// Closes the child's input (it then exits) and reaps it; kills it if it does not exit.
    pub(super) fn stop(&mut self) {
        if let Some((mut child, stdin, _)) = self.child.take() {
            drop(stdin);
            for _ in 0..50 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(super) fn row(&self, op: &str) -> Option<&PeerRow> {
        self.rows.iter().find(|r| r.op == op)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}
