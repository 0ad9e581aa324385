//! The `kvtier` command-line tool.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// kvtier: multi-tier KV-cache offloading engine.
#[derive(Parser)]
#[command(name = "kvtier", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a JSON-lines trace through the engine (stdin if no file); one JSON line out per line in.
    Replay {
        /// Trace file (JSON lines); standard input when absent.
        file: Option<PathBuf>,
    },
    /// Benchmarks, with ratios against a ceiling or peer measured in the same run.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The core engine alone (no I/O) against a Python model of vLLM's CPU manager.
    Core(kvtier::bench::core::CoreArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay { file } => kvtier::replay::run_cli(file.as_deref()),
        Command::Bench { which: BenchCommand::Core(args) } => kvtier::bench::core::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvtier: {e}");
            ExitCode::FAILURE
        }
    }
}
