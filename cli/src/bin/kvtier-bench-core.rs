//! `kvtier-bench-core`: the core benchmark in a process whose global allocator counts
//! allocations, for its allocations-per-operation column. `kvtier bench core` runs this
//! binary (it sits next to `kvtier`) so that no other subcommand pays for counting; it takes
//! the same options.
#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use kvtier_cli::bench::core::{CoreArgs, CountingAlloc, SOURCE_ID};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The core engine alone (no I/O) against a Python model of vLLM's CPU manager, allocations
/// counted (what `kvtier bench core` runs).
#[derive(Parser)]
#[command(name = "kvtier-bench-core", version)]
struct Cli {
    #[command(flatten)]
    args: CoreArgs,
    /// Print the identity of the sources this binary was built from, and exit.
    #[arg(long, hide = true)]
    source_id: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.source_id {
        println!("{SOURCE_ID}");
        return ExitCode::SUCCESS;
    }
    match kvtier_cli::bench::core::run(&cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvtier: {e}");
            ExitCode::FAILURE
        }
    }
}
