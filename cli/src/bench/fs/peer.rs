//! The peer of `bench fs`: `cli/bench/vllm_fs_peer.py`, our re-implementation of vLLM's FS tier
//! I/O path, run once per block size and state in its own directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{size_name, BoxError, Ctx, FsArgs, State};

/// What the peer printed.
#[derive(Debug, Clone, Copy)]
pub(super) struct PeerFigures {
    pub(super) store_gbps: f64,
    pub(super) load_gbps: f64,
    pub(super) cpu_s_per_gb: f64,
    pub(super) create_us: Option<f64>,
}

/// The interpreter and script to run the peer with, or `None` (with a message) when either is
/// missing.
pub(super) fn find_peer(args: &FsArgs) -> Option<(String, PathBuf)> {
    let script =
        args.peer_script.clone().unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/vllm_fs_peer.py"));
    if !script.is_file() {
        eprintln!("kvtier bench fs: the peer script {} is missing: skipping the peer", script.display());
        return None;
    }
    let ok = Command::new(&args.python)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("kvtier bench fs: {} not found: skipping the peer", args.python);
        return None;
    }
    Some((args.python.clone(), script))
}

pub(super) fn run_peer(
    ctx: &mut Ctx,
    python: &str,
    script: &Path,
    bs: u64,
    n: u64,
    state: State,
) -> Result<PeerFigures, BoxError> {
    let dir = ctx.scratch.join(format!("peer-{}-{}", state.name(), size_name(bs)));
    // The peer has no capacity bound (nor has vLLM's FS tier): in the full state it runs its
    // churn state, the steady state of an unbounded tier whose files something else deletes.
    let churn_files = match state {
        State::Quiet => 0,
        State::Churn | State::Full => ctx.churn_files.max(1),
    };
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg("--dir")
        .arg(&dir)
        .args(["--block-bytes", &bs.to_string()])
        .args(["--blocks", &n.to_string()])
        .args(["--job-blocks", &ctx.job_blocks.to_string()])
        .args(["--churn-files", &churn_files.to_string()])
        .args(["--seed", &bs.to_string()])
        // Deletions are left to this side: the churn pass starts by removing the quiet pass's
        // directories, and the scratch directory goes at the end.
        .arg("--keep");
    let out = cmd.stderr(Stdio::inherit()).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(text.trim()).map_err(|e| format!("peer output is not JSON ({e}): {text}"))?;
    if !out.status.success() {
        return Err(format!("peer exited with {}: {text}", out.status).into());
    }
    let field = |name: &str| {
        v.get(name).and_then(serde_json::Value::as_f64).ok_or_else(|| format!("peer output lacks {name}: {text}"))
    };
    Ok(PeerFigures {
        store_gbps: field("store_gbps")?,
        load_gbps: field("load_gbps")?,
        cpu_s_per_gb: field("cpu_s_per_gb")?,
        create_us: field("create_us").ok(),
    })
}
