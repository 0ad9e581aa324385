//! `kvtier bench vllm`: kvtier's tier against vLLM's own `fs` tier, inside vLLM 0.33's real
//! tiering stack (its `TieringOffloadingSpec` and `TieringOffloadingManager`), same trace, same
//! run, same directory device, A B B A order.
//!
//! The measurement is Python (vLLM is): this runs `cli/bench/vllm_tier.py` of this source tree with
//! the Python of an environment that has vLLM 0.33.0 and the `kvtier` package installed, by
//! default the one `python/ci.sh` keeps at `${KVTIER_CACHE:-$HOME/.cache/kvtier}/vllm-0.33.0`.
//! Its arguments after `--` go to the script (`-- --help` lists them).

use std::path::{Path, PathBuf};
use std::process::Command;

type BoxError = Box<dyn std::error::Error>;

/// Arguments of `kvtier bench vllm`.
#[derive(Debug, Clone, clap::Args)]
pub struct VllmArgs {
    /// The Python to run the benchmark with (it needs vLLM 0.33.0 and kvtier installed).
    /// Default: `$KVTIER_CACHE/vllm-0.33.0/bin/python`, `$KVTIER_CACHE` defaulting to
    /// `$HOME/.cache/kvtier`.
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Arguments for `bench/vllm_tier.py` (after `--`), e.g. `-- --warmup --executor threaded --json`.
    #[arg(last = true)]
    pub script_args: Vec<String>,
}

/// Runs `bench/vllm_tier.py`; its output is the benchmark's.
pub fn run(args: &VllmArgs) -> Result<(), BoxError> {
    let python = match &args.python {
        Some(p) => p.clone(),
        None => {
            let cache = std::env::var_os("KVTIER_CACHE")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache").join("kvtier")));
            let cache = cache.ok_or("no $KVTIER_CACHE nor $HOME: give --python")?;
            cache.join("vllm-0.33.0").join("bin").join("python")
        }
    };
    if !python.exists() {
        return Err(format!(
            "{} not found: run python/ci.sh once (it makes the vLLM 0.33.0 environment), or give --python",
            python.display()
        )
        .into());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/vllm_tier.py");
    let status = Command::new(&python).arg(&script).args(&args.script_args).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} {} failed: {status}", python.display(), script.display()).into())
    }
}
