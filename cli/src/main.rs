//! The `kvtier` command-line tool: argument parsing and dispatch to [`kvtier_cli`]'s
//! subcommands and [`kvtier::replay`].
#![deny(unsafe_code)]

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
    /// Serve a chat workload or a request trace through kvtier (GPU -> CPU -> disk and back) on
    /// a simulated GPU and report whether offloading pays, in time to first token and
    /// throughput, against its CPU tier alone and against no offloading.
    Simulate(Box<kvtier_cli::simulate::SimulateArgs>),
    /// Run a JSON-lines trace through the engine (stdin if no file); one JSON line out per line in.
    Replay {
        /// Trace file (JSON lines); standard input when absent.
        file: Option<PathBuf>,
    },
    /// What is in an FS-tier root directory, and is it healthy.
    Inspect(kvtier_cli::inspect::InspectArgs),
    /// Benchmarks, with ratios against a ceiling or peer measured in the same run.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The core engine alone (no I/O) against a Python model of vLLM's CPU manager.
    Core(kvtier_cli::bench::core::CoreArgs),
    /// The FS tier against the disk's O_DIRECT ceiling and a Python peer of vLLM's FS tier.
    Fs(Box<kvtier_cli::bench::fs::FsArgs>),
    /// kvtier's tier against vLLM's own fs tier inside vLLM 0.33 (runs bench/vllm_tier.py).
    Vllm(kvtier_cli::bench::vllm::VllmArgs),
    /// The Redis tier against redis-benchmark's SET/GET and a redis-py peer of LMCache's connector.
    Redis(kvtier_cli::bench::redis::RedisArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Simulate(args) => kvtier_cli::simulate::run(&args),
        Command::Replay { file } => kvtier::replay::run_cli(file.as_deref()),
        Command::Inspect(args) => kvtier_cli::inspect::run(&args),
        Command::Bench { which: BenchCommand::Core(args) } => {
            // `kvtier bench core ARGS...`: ARGS go to the counting binary as they are (clap
            // has checked them; no option may precede `bench` or `core`).
            let forwarded: Vec<_> = std::env::args_os().skip(3).collect();
            kvtier_cli::bench::core::launch(&args, &forwarded)
        }
        Command::Bench { which: BenchCommand::Fs(args) } => kvtier_cli::bench::fs::run(&args),
        Command::Bench { which: BenchCommand::Vllm(args) } => kvtier_cli::bench::vllm::run(&args),
        Command::Bench { which: BenchCommand::Redis(args) } => kvtier_cli::bench::redis::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvtier: {e}");
            ExitCode::FAILURE
        }
    }
}
