//! `kvtier simulate`: an inference server's KV traffic driven through kvtier on this machine,
//! and a report that tells whether offloading pays.
//!
//! A simulated engine ([`driver`]) serves a multi-turn chat workload ([`workload`]) with a
//! "GPU" made of ordinary memory ([`gpu`]): a fixed number of block buffers with a prefix
//! cache, smaller than the workload's working set. Blocks flow GPU -> CPU tier -> disk and
//! back through a real [`TieredCache`] (the primary region and an FS tier in a temporary
//! directory unless told otherwise), every copy moves real bytes, and every loaded block is
//! checked against the content its key implies. The same workload then runs again without
//! offloading (GPU prefix cache alone), so the report compares the two.
//!
//! # Measurements
//!
//! - **Hits** are prompt blocks: reused from the GPU prefix cache, loaded from the CPU tier,
//!   promoted from disk then loaded, or recomputed. Tokens are blocks x 16. "Disk" stands for
//!   the secondary tiers: with a `--config` that puts a memory tier first, its promotions count
//!   there too (the engine does not say which tier served a promotion); disk bytes stored are
//!   the blocks the FS tiers published.
//! - **The GPU** holds `--gpu-blocks` buffers with a prefix cache (LRU of released blocks). A
//!   request's prompt and answer blocks must all fit at once; at most `--max-batch` requests are
//!   admitted per step, and a request decodes one answer block per step.
//! - **Waiting for promotions** is bounded: only a few requests at a time (half the CPU tier's
//!   blocks over the longest request) may hold pinned or promoted blocks across steps, their
//!   ready blocks are pinned until they are admitted, and a request that waited 2 x the
//!   promotion deadline takes what is ready and recomputes the rest.
//! - **Promotion latency** runs from the lookup that reserved the promotion to the end of the
//!   step whose events show the block ready; in steps, and in wall-clock ms (`Instant`).
//! - **CPU time in kvtier** is the scheduler thread's CPU time inside kvtier calls
//!   (`CLOCK_THREAD_CPUTIME_ID` read around each call or batch of calls) plus the CPU time of
//!   every other thread of the process during the run (`CLOCK_PROCESS_CPUTIME_ID` minus the
//!   scheduler thread's), which are the FS tier's I/O threads. The copies between GPU buffers
//!   and rows, the content checks and the workload are the engine's work, not kvtier's.
//! - **Steps** take wall time: a step with work lasts at least `--step-ms` (default 5 ms; a
//!   real engine's step is tens of ms), so promotions are measured against an engine-like clock
//!   instead of a loop that spins through the deadline. `--sync-io` waits for every tier job at
//!   each step end instead, which makes the hit and miss counts independent of disk timing.

pub mod cost;
pub mod driver;
pub mod gpu;
pub mod plot;
pub mod report;
pub mod workload;

use std::error::Error;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kvtier::config::{CacheConfig, ExecutorKind, FsConfig, TierConfig};
use kvtier::TieredCache;
use kvtier_core::PolicyKind;
use kvtier_fs::FsTier;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::args::{config_value, parse_size};
use crate::cputime::{process_cpu, thread_cpu};
use driver::{Offload, SchedConfig, Sim};
use report::{quantile, ratio, BytesMoved, CpuFigures, Errors, Promotions, Report, RunFigures, Setup, Throughput};
use workload::{Workload, WorkloadParams, TOKENS_PER_BLOCK};

/// Llama-3.1-8B's KV block: 16 tokens x 32 layers x (K, V) x 8 KV heads x 128 dims x 2 bytes.
pub const LLAMA_8B_BLOCK_BYTES: u64 = 16 * 32 * 2 * 8 * 128 * 2;
/// Default CPU tier size.
pub const DEFAULT_CPU_BYTES: u64 = 1 << 30;
/// Default disk tier size: below the default workload's working set (13 GiB), so the disk
/// tier evicts too.
pub const DEFAULT_DISK_BYTES: u64 = 8 << 30;

/// Options of `kvtier simulate`. Flags override `--config`.
#[derive(Debug, Clone, Parser)]
#[command(name = "simulate")]
pub struct SimulateArgs {
    /// CPU tier size (e.g. 1G, 512M); its rows = this / block size [default: 1G, or the
    /// config's num_blocks]
    #[arg(long, value_parser = parse_size)]
    pub cpu_bytes: Option<u64>,
    /// Disk tier size (e.g. 8G): a store beyond it evicts the least recently used block and
    /// reuses its file [default: 8G, or the config's max_blocks]
    #[arg(long, value_parser = parse_size)]
    pub disk_bytes: Option<u64>,
    /// Directory of the disk tier (kept afterwards) [default: a temporary directory, removed]
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Executor of the disk tier: threaded, uring, sim or auto [default: auto]
    #[arg(long, value_parser = config_value::<ExecutorKind>)]
    pub executor: Option<ExecutorKind>,
    /// Eviction policy of the CPU tier: lru or arc [default: lru]
    #[arg(long, value_parser = config_value::<PolicyKind>)]
    pub policy: Option<PolicyKind>,
    /// Bytes per KV block (e.g. 2M, 4096) [default: 2 MiB, Llama-3.1-8B's 16-token block]
    #[arg(long, value_parser = parse_size)]
    pub block_bytes: Option<u64>,
    /// GPU KV-cache capacity, blocks
    #[arg(long, default_value_t = 256)]
    pub gpu_blocks: usize,
    /// Chat sessions (users), picked with Zipf popularity
    #[arg(long, default_value_t = 64)]
    pub sessions: usize,
    /// Requests (turns) to serve
    #[arg(long, default_value_t = 800)]
    pub requests: usize,
    /// System prompts shared by the sessions
    #[arg(long, default_value_t = 4)]
    pub system_prompts: usize,
    /// Seed of the workload
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Zipf exponent of session popularity (0: uniform)
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Mean request arrivals per scheduler step
    #[arg(long, default_value_t = 0.5)]
    pub arrivals_per_step: f64,
    /// Most requests admitted per step
    #[arg(long, default_value_t = 4)]
    pub max_batch: usize,
    /// Shortest wall time of a step with work, ms
    #[arg(long, default_value_t = 5)]
    pub step_ms: u64,
    /// Wait for all tier I/O at each step end: hit counts then do not depend on disk timing
    #[arg(long)]
    pub sync_io: bool,
    /// Cache configuration (TOML, the library's CacheConfig)
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    /// Draw hit rate and bytes moved over time into this SVG file
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Write kvtier's metrics (Prometheus text exposition) into this file
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    /// Show no progress bar
    #[arg(long)]
    pub quiet: bool,
}

fn default_fs(root: &Path) -> FsConfig {
    let mut fs = FsConfig::new(root);
    fs.executor = ExecutorKind::Auto;
    fs.model_name = Some("meta-llama/Llama-3.1-8B".into());
    fs
}

/// The cache configuration of `args`: `--config` (or the defaults: a 1 GiB CPU tier of 2 MiB
/// blocks and one FS tier under `root`), then the flags on top.
pub fn cache_config(args: &SimulateArgs, root: Option<&Path>) -> Result<CacheConfig, Box<dyn Error>> {
    let mut cfg = match &args.config {
        Some(path) => CacheConfig::from_toml_file(path)?,
        None => CacheConfig {
            num_blocks: 0,
            block_bytes: LLAMA_8B_BLOCK_BYTES as usize,
            policy: PolicyKind::Lru,
            promotion_deadline_steps: 64,
            shared_memory: None,
            tiers: vec![TierConfig::Fs(Box::new(default_fs(root.unwrap_or(Path::new(".")))))],
        },
    };
    if let Some(b) = args.block_bytes {
        cfg.block_bytes = usize::try_from(b)?;
    }
    if args.cpu_bytes.is_some() || args.config.is_none() {
        let rows = args.cpu_bytes.unwrap_or(DEFAULT_CPU_BYTES) / cfg.block_bytes as u64;
        cfg.num_blocks = u32::try_from(rows).map_err(|_| "--cpu-bytes: too many blocks")?;
    }
    if cfg.num_blocks == 0 {
        return Err("the CPU tier holds no block (raise --cpu-bytes or lower --block-bytes)".into());
    }
    if let Some(p) = args.policy {
        cfg.policy = p;
    }
    for tier in &mut cfg.tiers {
        if let TierConfig::Fs(fs) = tier {
            if let Some(dir) = &args.dir {
                fs.root_dir = dir.clone();
            }
            if let Some(e) = args.executor {
                fs.executor = e;
            }
            if args.disk_bytes.is_some() || args.config.is_none() {
                let blocks = args.disk_bytes.unwrap_or(DEFAULT_DISK_BYTES) / cfg.block_bytes as u64;
                fs.max_blocks = Some(usize::try_from(blocks)?.max(1));
            }
        }
    }
    Ok(cfg)
}

/// What a simulation produced: the report and, when asked for, the metrics text.
#[derive(Debug)]
pub struct Simulation {
    /// The report.
    pub report: Report,
    /// The Prometheus text exposition (with `--metrics-file`; also written there).
    pub metrics: Option<String>,
    /// The temporary directory of the disk tier, removed when dropped (which can take seconds:
    /// it holds the whole working set).
    pub scratch: Option<tempfile::TempDir>,
}

fn progress_bar(args: &SimulateArgs) -> ProgressBar {
    let shown = !args.json && !args.quiet && std::io::stderr().is_terminal();
    let target = if shown { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let bar = ProgressBar::with_draw_target(Some(args.requests as u64), target);
    if let Ok(style) = ProgressStyle::with_template("{msg:>20} [{elapsed_precise}] {wide_bar} {pos}/{len} requests") {
        bar.set_style(style);
    }
    bar
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("kvtier_lookups_total", "kvtier lookups by answer (ready, pending, retry, miss)");
    describe_counter!("kvtier_prefix_blocks_total", "Prompt blocks by where they came from (gpu, cpu, disk, miss)");
    describe_counter!("kvtier_blocks_stored_total", "Blocks stored into a tier (cpu: GPU -> CPU; disk: CPU -> disk)");
    describe_counter!("kvtier_bytes_stored_total", Unit::Bytes, "Bytes stored into a tier");
    describe_counter!("kvtier_blocks_loaded_total", "Blocks loaded from a tier (cpu: CPU -> GPU; disk: disk -> CPU)");
    describe_counter!("kvtier_bytes_loaded_total", Unit::Bytes, "Bytes loaded from a tier");
    describe_counter!("kvtier_promotions_total", "Promotions disk -> CPU by outcome");
    describe_counter!("kvtier_cpu_evictions_total", "Blocks evicted from the CPU tier");
    describe_counter!("kvtier_cascade_jobs_total", "Store jobs cascaded to secondary tiers");
    describe_counter!("kvtier_cascade_jobs_failed_total", "Cascaded store jobs that failed");
    describe_counter!("kvtier_stores_rejected_total", "Blocks prepare_store refused (every CPU slot pinned)");
    describe_counter!("kvtier_verify_mismatched_bytes_total", Unit::Bytes, "Loaded bytes that were wrong");
    describe_counter!("kvtier_steps_total", "Scheduler steps");
    describe_histogram!("kvtier_promotion_latency_seconds", Unit::Seconds, "Promotion latency, lookup to ready");
    describe_histogram!("kvtier_promotion_latency_steps", "Promotion latency in scheduler steps");
    describe_gauge!("kvtier_jobs_in_flight", "Tier jobs submitted and not yet reported");
    describe_gauge!("kvtier_cpu_blocks_used", "Blocks present in the CPU tier");
    describe_gauge!("kvtier_cpu_seconds", Unit::Seconds, "CPU time spent in kvtier during the run");
}

struct OffloadRun {
    tally: driver::Tally,
    samples: Vec<driver::StepSample>,
    wall: Duration,
    kv_cpu: Duration,
    io_cpu: Duration,
    stats: kvtier_core::EngineStats,
}

fn run_offload(
    wl: &Workload,
    sched: SchedConfig,
    cache: TieredCache,
    sync_io: bool,
    bar: &ProgressBar,
) -> Result<OffloadRun, Box<dyn Error>> {
    let mut off = Offload::new(cache, sync_io);
    let (p0, t0, w0) = (process_cpu(), thread_cpu(), Instant::now());
    let mut sim = Sim::new(sched, wl, Some(&mut off));
    let ran = sim.run(bar);
    let (tally, samples) = (std::mem::take(&mut sim.tally), std::mem::take(&mut sim.samples));
    drop(sim);
    let t = thread_cpu();
    off.cache.shutdown();
    off.kv_cpu += thread_cpu().saturating_sub(t);
    let (wall, p1, t1) = (w0.elapsed(), process_cpu(), thread_cpu());
    ran?;
    let mut sim = Sim::new(sched, wl, Some(&mut off));
    sim.tally = tally;
    sim.settle();
    let tally = std::mem::take(&mut sim.tally);
    drop(sim);
    let io_cpu = p1.saturating_sub(p0).saturating_sub(t1.saturating_sub(t0));
    metrics::gauge!("kvtier_cpu_seconds").set((off.kv_cpu + io_cpu).as_secs_f64());
    let stats = *off.cache.engine_ref().stats();
    Ok(OffloadRun { tally, samples, wall, kv_cpu: off.kv_cpu, io_cpu, stats })
}

fn describe_tiers(cache: &mut TieredCache, cfg: &CacheConfig) -> Vec<String> {
    let engine = cache.engine();
    cfg.tiers
        .iter()
        .enumerate()
        .map(|(i, t)| match (t, engine.tier_mut::<FsTier>(i)) {
            (TierConfig::Fs(fs), Some(tier)) => format!(
                "disk (fs) at {}: {} executor, O_DIRECT {}, {}, {} blocks already there",
                fs.root_dir.display(),
                tier.executor_name(),
                if tier.startup().o_direct { "on" } else { "off (buffered I/O)" },
                match fs.max_blocks {
                    Some(n) =>
                        format!("at most {n} blocks ({:.1} GiB)", (n * cfg.block_bytes) as f64 / (1u64 << 30) as f64),
                    None => "no bound".to_string(),
                },
                tier.startup().blocks_indexed
            ),
            _ => "memory".to_string(),
        })
        .collect()
}

/// Runs the simulation of `args`: the workload without offloading, then with kvtier. Writes the
/// plot and the metrics file when asked for.
pub fn simulate(args: &SimulateArgs) -> Result<Simulation, Box<dyn Error>> {
    let params = WorkloadParams {
        seed: args.seed,
        sessions: args.sessions,
        requests: args.requests,
        system_prompts: args.system_prompts,
        zipf_s: args.zipf,
        arrivals_per_step: args.arrivals_per_step,
        ..WorkloadParams::default()
    };
    let tmp = match (&args.dir, &args.config) {
        (None, None) => Some(tempfile::Builder::new().prefix("kvtier-simulate-").tempdir()?),
        _ => None,
    };
    let cfg = cache_config(args, tmp.as_ref().map(|t| t.path()))?;
    let wl = Workload::generate(&params);
    if args.gpu_blocks < wl.max_request_blocks() {
        return Err(format!(
            "--gpu-blocks {} cannot hold the longest request ({} blocks)",
            args.gpu_blocks,
            wl.max_request_blocks()
        )
        .into());
    }
    let sched = SchedConfig {
        gpu_blocks: args.gpu_blocks,
        block_bytes: cfg.block_bytes,
        max_batch: args.max_batch.max(1),
        step_time: Duration::from_millis(args.step_ms),
        promotion_budget: (cfg.num_blocks as usize / 2).max(1),
        promoting_requests: (cfg.num_blocks as usize / 2 / wl.max_request_blocks().max(1)).max(1),
        max_wait_steps: 2 * cfg.promotion_deadline_steps.max(32),
    };
    tracing::info!(?params, ?sched, "workload generated: {} unique blocks", wl.unique_blocks());

    let bar = progress_bar(args);
    bar.set_message("without offloading");
    let started = Instant::now();
    let mut base = Sim::new(sched, &wl, None);
    base.run(&bar)?;
    let base_fig = RunFigures::new(&base.tally, started.elapsed().as_secs_f64());
    tracing::info!(seconds = base_fig.wall_s, "comparison run (no offloading) done");

    bar.reset();
    bar.set_message("with kvtier");
    let mut cache = TieredCache::new(&cfg)?;
    let tiers = describe_tiers(&mut cache, &cfg);
    tracing::info!(?tiers, cpu_blocks = cfg.num_blocks, "cache open");
    let (run, metrics_text) = match &args.metrics_file {
        Some(_) => {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("kvtier_promotion_latency_seconds".into()),
                    &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0],
                )?
                .set_buckets_for_metric(
                    Matcher::Full("kvtier_promotion_latency_steps".into()),
                    &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0, 128.0],
                )?
                .build_recorder();
            let handle = recorder.handle();
            let run = metrics::with_local_recorder(&recorder, || {
                describe_metrics();
                run_offload(&wl, sched, cache, args.sync_io, &bar)
            })?;
            (run, Some(handle.render()))
        }
        None => (run_offload(&wl, sched, cache, args.sync_io, &bar)?, None),
    };
    bar.finish_and_clear();
    tracing::info!(seconds = run.wall.as_secs_f64(), "run with kvtier done");

    let t = &run.tally;
    let bb = cfg.block_bytes as u64;
    let bytes = BytesMoved {
        cpu_stored: t.cpu_stored * bb,
        cpu_loaded: t.cpu_loaded * bb,
        disk_stored: t.disk_stored * bb,
        disk_loaded: t.disk_loaded * bb,
    };
    let wall = run.wall.as_secs_f64();
    let steps: Vec<f64> = t.promo_steps.iter().map(|&s| s as f64).collect();
    let kv = run.kv_cpu.as_secs_f64() + run.io_cpu.as_secs_f64();
    let report = Report {
        setup: Setup {
            seed: args.seed,
            sessions: args.sessions,
            requests: args.requests,
            system_prompts: args.system_prompts,
            block_bytes: cfg.block_bytes,
            tokens_per_block: TOKENS_PER_BLOCK,
            gpu_blocks: args.gpu_blocks,
            cpu_blocks: cfg.num_blocks,
            policy: format!("{:?}", cfg.policy).to_lowercase(),
            tiers,
            working_set_blocks: wl.unique_blocks(),
            prompt_blocks: wl.prompt_blocks(),
            step_ms: args.step_ms,
            sync_io: args.sync_io,
        },
        offload: RunFigures::new(t, wall),
        baseline: base_fig,
        bytes,
        promotions: Promotions {
            reserved: run.stats.promotions_reserved,
            loaded: run.stats.promotions_loaded,
            failed: run.stats.promotions_failed,
            overdue: run.stats.promotions_overdue,
            p50_steps: quantile(&steps, 0.5),
            p99_steps: quantile(&steps, 0.99),
            p50_ms: quantile(&t.promo_ms, 0.5),
            p99_ms: quantile(&t.promo_ms, 0.99),
        },
        throughput: Throughput {
            requests_per_s: ratio(t.requests as f64, wall),
            gb_per_s: ratio(bytes.total() as f64 / 1e9, wall),
        },
        cpu: CpuFigures {
            kvtier_s: kv,
            scheduler_thread_s: run.kv_cpu.as_secs_f64(),
            io_threads_s: run.io_cpu.as_secs_f64(),
            s_per_gb: ratio(kv, bytes.total() as f64 / 1e9),
            method: "scheduler thread: CLOCK_THREAD_CPUTIME_ID around every kvtier call; I/O threads: \
                     CLOCK_PROCESS_CPUTIME_ID minus the scheduler thread's, over the run"
                .into(),
        },
        errors: Errors {
            byte_mismatches: t.mismatched_bytes,
            load_failures: t.load_failed,
            stores_rejected: t.store_rejected,
            protocol_errors: run.stats.protocol_errors,
        },
    };
    if let Some(path) = &args.plot {
        let longest = report.offload.steps.max(report.baseline.steps) as usize;
        let window = longest.div_ceil(120).max(1);
        let with = plot::windows(&run.samples, window, cfg.block_bytes);
        let without = plot::windows(&base.samples, window, cfg.block_bytes);
        plot::draw(path, &with, &without, window)?;
        tracing::info!(path = %path.display(), "plot written");
    }
    if let (Some(path), Some(text)) = (&args.metrics_file, &metrics_text) {
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(Simulation { report, metrics: metrics_text, scratch: tmp })
}

/// `kvtier simulate`: runs [`simulate`] and prints the report (text, or JSON with `--json`).
/// Logs go to standard error through `tracing`, filtered by `RUST_LOG` (default `warn`).
pub fn run(args: &SimulateArgs) -> Result<(), Box<dyn Error>> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    let outcome = simulate(args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome.report)?);
    } else {
        print!("{}", outcome.report.to_text());
    }
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    drop(outcome.scratch);
    tracing::info!("temporary directory removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_block_is_llama_8b_s() {
        assert_eq!(LLAMA_8B_BLOCK_BYTES, 2 << 20);
    }

    #[test]
    fn flags_override_config() {
        let args =
            SimulateArgs::try_parse_from(["simulate", "--cpu-bytes", "64M", "--policy", "arc", "--dir", "/d"]).unwrap();
        let cfg = cache_config(&args, None).unwrap();
        assert_eq!((cfg.num_blocks, cfg.block_bytes, cfg.policy), (32, 2 << 20, PolicyKind::Arc));
        let TierConfig::Fs(fs) = &cfg.tiers[0] else { panic!("fs tier expected") };
        assert_eq!(fs.root_dir, Path::new("/d"));
        assert_eq!(fs.max_blocks, Some(4096), "8 GiB of 2 MiB blocks");
        let args = SimulateArgs::try_parse_from(["simulate"]).unwrap();
        assert_eq!(cache_config(&args, Some(Path::new("/t"))).unwrap().num_blocks, 512);
    }
}
