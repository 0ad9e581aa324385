//! The simulation's report: figures a user reads to decide whether offloading pays, as text
//! and as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use super::driver::Tally;
use super::workload::TOKENS_PER_BLOCK;

/// Everything one `kvtier simulate` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What ran.
    pub setup: Setup,
    /// The run with kvtier.
    pub offload: RunFigures,
    /// The same workload with the GPU prefix cache alone.
    pub baseline: RunFigures,
    /// Data moved through kvtier, bytes.
    pub bytes: BytesMoved,
    /// Promotions disk -> CPU tier.
    pub promotions: Promotions,
    /// Throughput of the run with kvtier.
    pub throughput: Throughput,
    /// CPU time spent in kvtier.
    pub cpu: CpuFigures,
    /// Failures: mismatches, failed loads and protocol errors must be zero; rejected stores are
    /// back-pressure (every CPU slot pinned or in flight), not corruption.
    pub errors: Errors,
}

/// The configuration of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    /// Workload seed.
    pub seed: u64,
    /// Sessions.
    pub sessions: usize,
    /// Requests.
    pub requests: usize,
    /// Shared system prompts.
    pub system_prompts: usize,
    /// Bytes per KV block.
    pub block_bytes: usize,
    /// Tokens per block.
    pub tokens_per_block: u64,
    /// GPU KV capacity, blocks.
    pub gpu_blocks: usize,
    /// CPU tier capacity, blocks.
    pub cpu_blocks: u32,
    /// Eviction policy of the CPU tier.
    pub policy: String,
    /// Secondary tiers, described.
    pub tiers: Vec<String>,
    /// Distinct blocks of the workload (its working set), blocks.
    pub working_set_blocks: u64,
    /// Prompt blocks over all requests.
    pub prompt_blocks: u64,
    /// Shortest step with work, ms.
    pub step_ms: u64,
    /// Tier I/O waited for at every step end (deterministic outcome).
    pub sync_io: bool,
}

/// Where the prompt blocks came from, blocks.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sources {
    /// The GPU prefix cache.
    pub gpu: u64,
    /// The CPU tier.
    pub cpu: u64,
    /// The disk tier (promoted, then loaded).
    pub disk: u64,
    /// Recomputed.
    pub miss: u64,
}

impl Sources {
    fn total(&self) -> u64 {
        self.gpu + self.cpu + self.disk + self.miss
    }

    fn share(&self, n: u64) -> f64 {
        ratio(n as f64, self.total() as f64)
    }
}

/// Figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    /// Requests completed.
    pub requests: u64,
    /// Scheduler steps.
    pub steps: u64,
    /// Wall time, seconds.
    pub wall_s: f64,
    /// Prompt blocks by source.
    pub blocks: Sources,
    /// Prompt tokens by source.
    pub tokens: Sources,
    /// Fraction of prompt blocks not recomputed.
    pub hit_rate: f64,
    /// Prompt tokens recomputed.
    pub tokens_recomputed: u64,
    /// Prompt tokens not recomputed.
    pub tokens_not_recomputed: u64,
    /// Request-steps spent waiting for promotions.
    pub wait_steps: u64,
}

impl RunFigures {
    /// The figures of a run's counters.
    pub fn new(t: &Tally, wall_s: f64) -> Self {
        let blocks = Sources { gpu: t.gpu, cpu: t.cpu, disk: t.disk, miss: t.miss };
        let tok = |b: u64| b * TOKENS_PER_BLOCK;
        let tokens = Sources { gpu: tok(t.gpu), cpu: tok(t.cpu), disk: tok(t.disk), miss: tok(t.miss) };
        RunFigures {
            requests: t.requests,
            steps: t.steps,
            wall_s,
            blocks,
            tokens,
            hit_rate: 1.0 - blocks.share(blocks.miss),
            tokens_recomputed: tokens.miss,
            tokens_not_recomputed: tokens.total() - tokens.miss,
            wait_steps: t.waits,
        }
    }
}

/// Bytes stored and loaded per tier.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BytesMoved {
    /// GPU -> CPU tier.
    pub cpu_stored: u64,
    /// CPU tier -> GPU.
    pub cpu_loaded: u64,
    /// CPU tier -> disk (blocks published).
    pub disk_stored: u64,
    /// Disk -> CPU tier (promotions).
    pub disk_loaded: u64,
}

impl BytesMoved {
    /// All four.
    pub fn total(&self) -> u64 {
        self.cpu_stored + self.cpu_loaded + self.disk_stored + self.disk_loaded
    }
}

/// Promotions from disk into the CPU tier.
#[derive(Debug, Clone, Serialize)]
pub struct Promotions {
    /// Reserved by lookups.
    pub reserved: u64,
    /// Loaded (became ready).
    pub loaded: u64,
    /// Failed loads.
    pub failed: u64,
    /// Lookups answered Miss past the deadline.
    pub overdue: u64,
    /// Latency from the reserving lookup to the step whose events show the block ready: p50,
    /// steps.
    pub p50_steps: f64,
    /// p99, steps.
    pub p99_steps: f64,
    /// p50, ms.
    pub p50_ms: f64,
    /// p99, ms.
    pub p99_ms: f64,
}

/// Throughput of the run with kvtier.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Requests per second of wall time.
    pub requests_per_s: f64,
    /// Bytes moved through kvtier (all four directions) per second, GB/s (10^9).
    pub gb_per_s: f64,
}

/// CPU time spent in kvtier.
#[derive(Debug, Clone, Serialize)]
pub struct CpuFigures {
    /// Total, seconds.
    pub kvtier_s: f64,
    /// On the scheduler thread, inside kvtier calls.
    pub scheduler_thread_s: f64,
    /// On the tier's I/O threads (the process's CPU time minus the scheduler thread's).
    pub io_threads_s: f64,
    /// CPU-seconds per GB moved.
    pub s_per_gb: f64,
    /// How it was measured.
    pub method: String,
}

/// Failures of the run (see [`Report::errors`]).
#[derive(Debug, Clone, Serialize)]
pub struct Errors {
    /// Bytes of loaded blocks that differed from what the block must hold.
    pub byte_mismatches: u64,
    /// Ready blocks that could not be loaded.
    pub load_failures: u64,
    /// Blocks `prepare_store` refused (every CPU slot pinned).
    pub stores_rejected: u64,
    /// Tier reports that broke the job protocol.
    pub protocol_errors: u64,
}

/// `n / d`, 0 when `d` is 0.
pub fn ratio(n: f64, d: f64) -> f64 {
    if d > 0.0 {
        n / d
    } else {
        0.0
    }
}

/// The `q` quantile (0..=1) of `v` (nearest rank; 0 when empty).
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn gb(b: u64) -> f64 {
    b as f64 / 1e9
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn size(b: u64) -> String {
    const MIB: u64 = 1 << 20;
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else if b >= MIB {
        format!("{} MiB", b / MIB)
    } else {
        format!("{} KiB", b / 1024)
    }
}

impl Report {
    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let s = &self.setup;
        let (r, b) = (&self.offload, &self.baseline);
        let bb = s.block_bytes as u64;
        let _ = writeln!(
            o,
            "kvtier simulate: {} requests from {} chat sessions ({} shared system prompts), seed {}",
            s.requests, s.sessions, s.system_prompts, s.seed
        );
        let _ = writeln!(
            o,
            "  blocks of {} ({} tokens); GPU KV {} blocks ({}); CPU tier {} blocks ({}, {}); working set {} blocks ({})",
            size(bb),
            s.tokens_per_block,
            s.gpu_blocks,
            size(s.gpu_blocks as u64 * bb),
            s.cpu_blocks,
            size(u64::from(s.cpu_blocks) * bb),
            s.policy,
            s.working_set_blocks,
            size(s.working_set_blocks * bb)
        );
        for t in &s.tiers {
            let _ = writeln!(o, "  tier: {t}");
        }
        let _ = writeln!(
            o,
            "  {} steps in {:.1} s (steps with work last at least {} ms{})",
            r.steps,
            r.wall_s,
            s.step_ms,
            if s.sync_io { "; tier I/O waited for at each step end" } else { "" }
        );
        let _ = writeln!(o);
        let _ = writeln!(o, "prompt blocks served from       blocks        tokens   share");
        for (name, n, t) in [
            ("GPU prefix cache", r.blocks.gpu, r.tokens.gpu),
            ("CPU tier", r.blocks.cpu, r.tokens.cpu),
            ("disk tier", r.blocks.disk, r.tokens.disk),
            ("miss (recomputed)", r.blocks.miss, r.tokens.miss),
        ] {
            let _ = writeln!(o, "  {name:<26} {n:>10} {t:>13} {:>7}", pct(r.blocks.share(n)));
        }
        let offloaded = r.tokens.cpu + r.tokens.disk;
        let _ = writeln!(
            o,
            "tokens not recomputed: {} of {} ({}); {} of them thanks to kvtier",
            r.tokens_not_recomputed,
            r.tokens_not_recomputed + r.tokens_recomputed,
            pct(r.hit_rate),
            offloaded
        );
        let _ = writeln!(o);
        let m = &self.bytes;
        let _ = writeln!(o, "data moved                 stored      loaded");
        let _ = writeln!(o, "  CPU tier             {:>8.2} GB {:>8.2} GB", gb(m.cpu_stored), gb(m.cpu_loaded));
        let _ = writeln!(o, "  disk tier            {:>8.2} GB {:>8.2} GB", gb(m.disk_stored), gb(m.disk_loaded));
        let p = &self.promotions;
        let _ = writeln!(
            o,
            "requests waiting for promotions: {} request-steps ({} extra steps over the run without offloading)",
            r.wait_steps,
            r.steps.saturating_sub(b.steps)
        );
        let _ = writeln!(
            o,
            "promotions disk -> CPU: {} loaded ({} reserved, {} failed, {} overdue); latency p50 {} steps / {:.1} ms, p99 {} steps / {:.1} ms",
            p.loaded, p.reserved, p.failed, p.overdue, p.p50_steps, p.p50_ms, p.p99_steps, p.p99_ms
        );
        let _ = writeln!(
            o,
            "throughput: {:.1} requests/s, {:.2} GB/s through kvtier ({:.1} GB in {:.1} s)",
            self.throughput.requests_per_s,
            self.throughput.gb_per_s,
            gb(m.total()),
            r.wall_s
        );
        let c = &self.cpu;
        let _ = writeln!(
            o,
            "CPU in kvtier: {:.2} CPU-s ({:.2} s scheduler thread inside kvtier calls + {:.2} s I/O threads), {:.3} CPU-s per GB moved",
            c.kvtier_s, c.scheduler_thread_s, c.io_threads_s, c.s_per_gb
        );
        let _ = writeln!(o, "  ({})", c.method);
        let e = &self.errors;
        let _ = writeln!(
            o,
            "errors: {} mismatched bytes, {} failed loads, {} protocol errors; {} blocks not offloaded (CPU tier full of pinned blocks)",
            e.byte_mismatches, e.load_failures, e.protocol_errors, e.stores_rejected
        );
        let _ = writeln!(o);
        let _ = writeln!(o, "same workload without offloading (GPU prefix cache only):");
        let _ = writeln!(o, "                               with kvtier      without");
        let _ = writeln!(o, "  prompt hit rate            {:>13} {:>12}", pct(r.hit_rate), pct(b.hit_rate));
        let _ = writeln!(o, "  GPU prefix-cache hits      {:>13} {:>12}", r.blocks.gpu, b.blocks.gpu);
        let _ = writeln!(o, "  tokens recomputed          {:>13} {:>12}", r.tokens_recomputed, b.tokens_recomputed);
        let _ = writeln!(o, "  scheduler steps            {:>13} {:>12}", r.steps, b.steps);
        let saved = b.tokens_recomputed.saturating_sub(r.tokens_recomputed);
        let _ = writeln!(
            o,
            "kvtier saved {} prompt tokens of recomputation ({} fewer than without offloading)",
            saved,
            pct(ratio(saved as f64, b.tokens_recomputed as f64))
        );
        o
    }
}
