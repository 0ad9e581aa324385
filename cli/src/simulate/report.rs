//! The simulation's report, in the units people choose an offloading engine by: time to first
//! token and throughput, for kvtier (CPU + disk), its CPU tier alone (what vLLM's default CPU
//! offloading gives) and no offloading, side by side; then where the prompt blocks came from,
//! what moved, and what kvtier cost. As text and as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use super::driver::Tally;
use super::trace::TraceInfo;

/// Everything one `kvtier simulate` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What ran.
    pub setup: Setup,
    /// The GPU cost model.
    pub cost: CostFigures,
    /// With kvtier: CPU tier and disk.
    pub offload: RunFigures,
    /// kvtier's CPU tier alone.
    pub cpu_only: RunFigures,
    /// The GPU prefix cache alone.
    pub baseline: RunFigures,
    /// kvtier against no offloading and against its CPU tier alone.
    pub verdict: Verdict,
    /// Data moved through kvtier in the kvtier run, bytes (as moved here, not scaled).
    pub bytes: BytesMoved,
    /// The remote tier in the kvtier run (with a `redis` tier).
    pub remote: Option<RemoteFigures>,
    /// Promotions disk -> CPU tier in the kvtier run.
    pub promotions: Promotions,
    /// CPU time spent in kvtier in the kvtier run.
    pub cpu: CpuFigures,
    /// Failures: mismatches, failed loads and protocol errors must be zero; rejected stores are
    /// back-pressure (every CPU slot pinned or in flight), not corruption.
    pub errors: Errors,
    /// Wall time of the whole simulation on this machine, seconds.
    pub runtime_s: f64,
}

/// The configuration of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    /// The workload, described.
    pub workload: String,
    /// The trace's reading, when the workload is a trace.
    pub trace: Option<TraceInfo>,
    /// Requests served.
    pub requests: usize,
    /// Seconds from the first arrival to the last (virtual, after `--time-scale`).
    pub arrival_span_s: f64,
    /// The model.
    pub model: String,
    /// The model's KV bytes per token.
    pub model_bytes_per_token: u64,
    /// KV bytes per token moved here.
    pub bytes_per_token: u64,
    /// `model_bytes_per_token / bytes_per_token`.
    pub byte_scale: f64,
    /// Tokens per block.
    pub block_tokens: u64,
    /// Bytes per block moved here.
    pub block_bytes: usize,
    /// GPU KV capacity, blocks.
    pub gpu_blocks: usize,
    /// CPU tier capacity, blocks.
    pub cpu_blocks: u32,
    /// Eviction policy of the CPU tier.
    pub policy: String,
    /// Secondary tiers, described.
    pub tiers: Vec<String>,
    /// Distinct blocks of the workload (its working set).
    pub working_set_blocks: u64,
    /// Full prompt blocks over all requests.
    pub prompt_blocks: u64,
    /// Prompt tokens over all requests.
    pub prompt_tokens: u64,
    /// Tier I/O waited for at every iteration and promotions timed by the model: the outcome
    /// depends on the inputs alone.
    pub sync_io: bool,
    /// Inference servers (each its own GPU, CPU tier and disk; a remote tier shared).
    pub servers: usize,
    /// What was scaled down to fit this machine, in words.
    pub scaled: Vec<String>,
}

/// The GPU cost model as it ran, and where its figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct CostFigures {
    /// GPU preset.
    pub gpu: String,
    /// GPUs the model runs on.
    pub gpus: u64,
    /// Microseconds per prompt token computed.
    pub prefill_us_per_token: f64,
    /// Nanoseconds per (computed token, earlier token) pair.
    pub attention_ns_per_pair: f64,
    /// Milliseconds of a step with work.
    pub decode_step_ms: f64,
    /// Nanoseconds per context token of a decoding request per step.
    pub kv_read_ns_per_token: f64,
    /// Tokens per step.
    pub batch_tokens: u64,
    /// Requests running at once.
    pub max_seqs: usize,
    /// CPU -> GPU GB/s.
    pub pcie_gb_per_s: f64,
    /// How disk -> CPU time is found.
    pub disk: String,
    /// KV bytes per second recomputation yields on this GPU (KV bytes per token over the
    /// prefill cost per token, attention aside), GB/s: a disk that reads slower than this
    /// loses to recomputing on an idle GPU, and pays only when the GPU is the bottleneck.
    pub recompute_gb_per_s: f64,
    /// Where the figures come from.
    pub sources: String,
}

/// Where the prompt's full blocks came from.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sources {
    /// The GPU prefix cache.
    pub gpu: u64,
    /// The CPU tier.
    pub cpu: u64,
    /// The disk tier (promoted, then loaded).
    pub disk: u64,
    /// The remote tier (promoted, then loaded).
    pub remote: u64,
    /// Recomputed.
    pub miss: u64,
}

impl Sources {
    fn total(&self) -> u64 {
        self.gpu + self.cpu + self.disk + self.remote + self.miss
    }

    fn share(&self, n: u64) -> f64 {
        ratio(n as f64, self.total() as f64)
    }
}

/// Quantiles of a latency, seconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// The quantiles of `v`.
    pub fn of(v: &[f64]) -> Self {
        Latency {
            p50: quantile(v, 0.5),
            p90: quantile(v, 0.9),
            p99: quantile(v, 0.99),
            mean: ratio(v.iter().sum(), v.len() as f64),
        }
    }
}

/// Figures of one configuration's run, in virtual time (the simulated server's).
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    /// The configuration.
    pub name: String,
    /// Requests completed.
    pub requests: u64,
    /// Time to first token.
    pub ttft: Latency,
    /// Arrival to last token.
    pub e2e: Latency,
    /// Requests completed per second, first arrival to last finish.
    pub requests_per_s: f64,
    /// Output tokens per second, same span.
    pub output_tokens_per_s: f64,
    /// First arrival to last finish, seconds.
    pub makespan_s: f64,
    /// Seconds the GPU computed (sum of step costs).
    pub gpu_busy_s: f64,
    /// GPU steps.
    pub steps: u64,
    /// Full prompt blocks by source.
    pub blocks: Sources,
    /// Prompt tokens not computed (GPU and tier hits) over all prompt tokens.
    pub hit_rate: f64,
    /// Prompt tokens computed (misses, partial last blocks, and the last block of a prompt
    /// found whole).
    pub tokens_computed: u64,
    /// Seconds of CPU -> GPU transfers.
    pub transfer_s: f64,
    /// Seconds the simulated disk was busy (promotions and stores).
    pub disk_busy_s: f64,
    /// Requests that waited for promotions from disk, and their total wait, seconds.
    pub promotion_waits: (u64, f64),
    /// Wall time of this run on this machine, seconds.
    pub wall_s: f64,
}

impl RunFigures {
    /// The figures of a run's counters.
    pub fn new(name: &str, t: &Tally, prompt_tokens: u64, block_tokens: u64, wall_s: f64) -> Self {
        let blocks = Sources { gpu: t.gpu, cpu: t.cpu, disk: t.disk, remote: t.remote, miss: t.miss };
        let makespan = t.last_finish - t.first_arrival;
        let output = t.decode_tokens + t.requests;
        RunFigures {
            name: name.into(),
            requests: t.requests,
            ttft: Latency::of(&t.ttft),
            e2e: Latency::of(&t.e2e),
            requests_per_s: ratio(t.requests as f64, makespan),
            output_tokens_per_s: ratio(output as f64, makespan),
            makespan_s: makespan,
            gpu_busy_s: t.gpu_busy_s,
            steps: t.steps,
            blocks,
            hit_rate: ratio(((t.gpu + t.cpu + t.disk + t.remote) * block_tokens) as f64, prompt_tokens as f64),
            tokens_computed: t.prefill_tokens,
            transfer_s: t.transfer_s,
            disk_busy_s: t.disk_busy_s,
            promotion_waits: (t.promo_waits, t.promo_wait_s),
            wall_s,
        }
    }
}

/// Relative changes of kvtier's figures against another configuration's (negative: lower).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Deltas {
    /// TTFT p50.
    pub ttft_p50: f64,
    /// TTFT p90.
    pub ttft_p90: f64,
    /// TTFT p99.
    pub ttft_p99: f64,
    /// Requests per second.
    pub throughput: f64,
    /// GPU busy time.
    pub gpu_busy: f64,
}

impl Deltas {
    /// `a` against `b`.
    pub fn of(a: &RunFigures, b: &RunFigures) -> Self {
        let d = |x: f64, y: f64| ratio(x - y, y);
        Deltas {
            ttft_p50: d(a.ttft.p50, b.ttft.p50),
            ttft_p90: d(a.ttft.p90, b.ttft.p90),
            ttft_p99: d(a.ttft.p99, b.ttft.p99),
            throughput: d(a.requests_per_s, b.requests_per_s),
            gpu_busy: d(a.gpu_busy_s, b.gpu_busy_s),
        }
    }

    fn line(&self) -> String {
        let p = |x: f64| format!("{:+.0}%", x * 100.0);
        format!(
            "TTFT p50 {}, p90 {}, p99 {}; throughput {}; GPU busy {}",
            p(self.ttft_p50),
            p(self.ttft_p90),
            p(self.ttft_p99),
            p(self.throughput),
            p(self.gpu_busy)
        )
    }
}

/// The verdict.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Verdict {
    /// kvtier against no offloading.
    pub vs_no_offloading: Deltas,
    /// kvtier against its CPU tier alone: what the disk tier adds.
    pub vs_cpu_only: Deltas,
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
    /// CPU tier -> remote tier (blocks the server took).
    pub remote_stored: u64,
    /// Remote tier -> CPU tier (promotions).
    pub remote_loaded: u64,
}

impl BytesMoved {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.cpu_stored
            + self.cpu_loaded
            + self.disk_stored
            + self.disk_loaded
            + self.remote_stored
            + self.remote_loaded
    }
}

/// The remote (Redis) tier in the kvtier run, over all the servers.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteFigures {
    /// Inference servers sharing it.
    pub servers: usize,
    /// Prompt blocks promoted from it, then loaded.
    pub prompt_blocks: u64,
    /// Blocks stored (`SET NX` answered OK).
    pub stored: u64,
    /// Stores skipped: the block was there already (stored by this server or another).
    pub present: u64,
    /// Blocks loaded into a CPU tier, verified.
    pub loaded: u64,
    /// Of those, blocks another server stored (found by a probe, not in this server's index).
    pub loaded_from_other_servers: u64,
    /// Loads that found no value (evicted by the server).
    pub missing: u64,
    /// Loads that failed verification (never served).
    pub corrupt: u64,
    /// Keys the server refused with OOM.
    pub refused_oom: u64,
    /// Probes (`EXISTS` on a lookup that missed the local index).
    pub probes: u64,
    /// Probes that found the block.
    pub probe_hits: u64,
    /// Connections dropped after a timeout.
    pub timeouts: u64,
    /// Connections that failed or broke.
    pub connection_errors: u64,
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
    /// Iterations that promoted blocks (each a batch the disk served together).
    pub batches: u64,
    /// Latency measured here, submission to landing: p50, ms.
    pub p50_ms: f64,
    /// p99, ms.
    pub p99_ms: f64,
    /// Virtual latency (scaled or modelled, queueing excluded): p50, ms.
    pub virtual_p50_ms: f64,
    /// p99, ms.
    pub virtual_p99_ms: f64,
    /// Promotion reads measured here: bytes over the seconds waited for them, GB/s (the
    /// simulated disk's read bandwidth at the model's size, in virtual time).
    pub read_gb_per_s: f64,
    /// Cascaded writes measured here, GB/s (idem, writes).
    pub write_gb_per_s: f64,
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
    /// Blocks not offloaded because the simulated disk was behind: the CPU slots of blocks it
    /// had not written yet count as pinned (back-pressure, not corruption).
    pub disk_behind: u64,
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

/// A size in binary units.
pub fn size(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A count with a k or M suffix.
fn count(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2} M", n / 1e6)
    } else if n >= 1e4 {
        format!("{:.0} k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

/// Seconds, with a unit that fits.
fn secs(s: f64) -> String {
    if s >= 100.0 {
        format!("{s:.0} s")
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.0} ms", s * 1e3)
    }
}

impl Report {
    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let s = &self.setup;
        let c = &self.cost;
        let bb = s.block_bytes as f64;
        let at_model = s.byte_scale;
        let _ = writeln!(o, "kvtier simulate: {}", s.workload);
        if let Some(t) = &s.trace {
            let more = if t.truncated { " (the first ones; the file has more)" } else { "" };
            let _ = writeln!(
                o,
                "  {} requests{more} from {} lines, {} bad lines skipped; {} of arrivals",
                t.requests,
                t.lines_read,
                t.bad_lines.len(),
                secs(s.arrival_span_s)
            );
            for b in t.bad_lines.iter().take(3) {
                let _ = writeln!(o, "    skipped {b}");
            }
        }
        let _ = writeln!(
            o,
            "  model {} on {} x {} ({} KV per token); cost model: prefill {:.1} us/token + {:.2} ns per (token, earlier token); step {:.1} ms + {:.0} ns per context token decoding; {} tokens and {} requests per step; PCIe {:.1} GB/s; disk {}",
            s.model,
            c.gpus,
            c.gpu.to_uppercase(),
            size(s.model_bytes_per_token as f64),
            c.prefill_us_per_token,
            c.attention_ns_per_pair,
            c.decode_step_ms,
            c.kv_read_ns_per_token,
            c.batch_tokens,
            c.max_seqs,
            c.pcie_gb_per_s,
            c.disk
        );
        let _ = writeln!(
            o,
            "  blocks of {} tokens ({} here); GPU KV {} blocks ({} tokens); CPU tier {} blocks ({} here, {} at the model's size, {}); working set {} blocks ({} at the model's size)",
            s.block_tokens,
            size(bb),
            s.gpu_blocks,
            count((s.gpu_blocks as u64 * s.block_tokens) as f64),
            s.cpu_blocks,
            size(f64::from(s.cpu_blocks) * bb),
            size(f64::from(s.cpu_blocks) * bb * at_model),
            s.policy,
            s.working_set_blocks,
            size(s.working_set_blocks as f64 * bb * at_model)
        );
        for t in &s.tiers {
            let _ = writeln!(o, "  tier: {t}");
        }
        if s.servers > 1 {
            let _ = writeln!(
                o,
                "  {} inference servers, each with its own GPU, CPU tier and disk (each column is all of them together); sessions stay on one server, new ones go round-robin",
                s.servers
            );
        }
        for line in &s.scaled {
            let _ = writeln!(o, "  scaled: {line}");
        }
        let _ = writeln!(o);
        let runs = [&self.offload, &self.cpu_only, &self.baseline];
        let _ = writeln!(o, "{:<28}{:>22}{:>16}{:>16}", "virtual time", runs[0].name, runs[1].name, runs[2].name);
        let row = |o: &mut String, name: &str, f: &dyn Fn(&RunFigures) -> String| {
            let _ = writeln!(o, "  {name:<26}{:>22}{:>16}{:>16}", f(runs[0]), f(runs[1]), f(runs[2]));
        };
        row(&mut o, "TTFT p50", &|r| secs(r.ttft.p50));
        row(&mut o, "TTFT p90", &|r| secs(r.ttft.p90));
        row(&mut o, "TTFT p99", &|r| secs(r.ttft.p99));
        row(&mut o, "TTFT mean", &|r| secs(r.ttft.mean));
        row(&mut o, "throughput (requests/s)", &|r| format!("{:.2}", r.requests_per_s));
        row(&mut o, "output tokens/s", &|r| format!("{:.0}", r.output_tokens_per_s));
        row(&mut o, "GPU busy", &|r| secs(r.gpu_busy_s));
        let disk = if self.remote.is_some() { "disk/remote" } else { "disk" };
        row(&mut o, &format!("{disk} busy"), &|r| secs(r.disk_busy_s));
        row(&mut o, "first arrival to last token", &|r| secs(r.makespan_s));
        row(&mut o, "prompt tokens computed", &|r| count(r.tokens_computed as f64));
        row(&mut o, "prompt hit rate", &|r| pct(r.hit_rate));
        let waits = if self.remote.is_some() { "waits (promotions, probes)" } else { "waits for disk (requests)" };
        row(&mut o, waits, &|r| r.promotion_waits.0.to_string());
        let _ = writeln!(o, "kvtier vs no offloading: {}", self.verdict.vs_no_offloading.line());
        let _ = writeln!(o, "kvtier vs CPU tier only: {}", self.verdict.vs_cpu_only.line());
        let _ = writeln!(o);

        let r = &self.offload;
        let bt = s.block_tokens;
        let _ = writeln!(o, "prompt blocks in the kvtier run   blocks        tokens   share");
        for (name, n) in [
            ("GPU prefix cache", r.blocks.gpu),
            ("CPU tier", r.blocks.cpu),
            ("disk tier", r.blocks.disk),
            ("remote tier (Redis)", r.blocks.remote),
            ("computed", r.blocks.miss),
        ] {
            if name.starts_with("remote") && self.remote.is_none() {
                continue;
            }
            let _ = writeln!(o, "  {name:<26} {n:>12} {:>13} {:>7}", n * bt, pct(r.blocks.share(n)));
        }
        let m = &self.bytes;
        let _ = writeln!(o, "data moved here              stored      loaded");
        let _ = writeln!(o, "  CPU tier             {:>8.2} GB {:>8.2} GB", gb(m.cpu_stored), gb(m.cpu_loaded));
        let _ = writeln!(o, "  disk tier            {:>8.2} GB {:>8.2} GB", gb(m.disk_stored), gb(m.disk_loaded));
        if let Some(rt) = &self.remote {
            let _ =
                writeln!(o, "  remote tier          {:>8.2} GB {:>8.2} GB", gb(m.remote_stored), gb(m.remote_loaded));
            let _ = writeln!(
                o,
                "remote tier shared by {} server(s): {} blocks stored ({} skipped, already there), {} loaded, {} of them stored by another server; {} loads missed (evicted), {} failed verification (not served), {} refused (OOM); {} probes, {} found; {} timeouts, {} connection errors",
                rt.servers,
                rt.stored,
                rt.present,
                rt.loaded,
                rt.loaded_from_other_servers,
                rt.missing,
                rt.corrupt,
                rt.refused_oom,
                rt.probes,
                rt.probe_hits,
                rt.timeouts,
                rt.connection_errors
            );
        }
        let p = &self.promotions;
        let _ = writeln!(
            o,
            "promotions {} -> CPU: {} loaded in {} batches ({} reserved, {} failed, {} overdue); latency measured here p50 {:.2} ms, p99 {:.2} ms; virtual p50 {:.1} ms, p99 {:.1} ms",
            disk,
            p.loaded, p.batches, p.reserved, p.failed, p.overdue, p.p50_ms, p.p99_ms, p.virtual_p50_ms, p.virtual_p99_ms
        );
        if s.tiers.iter().any(|t| t.starts_with("disk")) {
            let _ = writeln!(
                o,
                "disk measured here: reads {:.2} GB/s, writes {:.2} GB/s (block files of {}); recomputing yields {:.1} GB/s of KV on this GPU (more with long contexts): reads slower than that only pay when the GPU is the bottleneck",
                p.read_gb_per_s,
                p.write_gb_per_s,
                size(bb),
                c.recompute_gb_per_s
            );
        }
        let cpu = &self.cpu;
        let _ = writeln!(
            o,
            "CPU in kvtier: {:.2} CPU-s ({:.2} s scheduler thread inside kvtier calls + {:.2} s I/O threads), {:.3} CPU-s per GB moved",
            cpu.kvtier_s, cpu.scheduler_thread_s, cpu.io_threads_s, cpu.s_per_gb
        );
        let e = &self.errors;
        let _ = writeln!(
            o,
            "errors: {} mismatched bytes, {} failed loads, {} protocol errors; blocks not offloaded: {} (CPU tier full of pinned blocks), {} (the disk was behind: CPU slots waiting for it)",
            e.byte_mismatches, e.load_failures, e.protocol_errors, e.stores_rejected, e.disk_behind
        );
        let _ = writeln!(
            o,
            "ran in {:.1} s here (kvtier {:.1} s, CPU tier only {:.1} s, no offloading {:.1} s)",
            self.runtime_s, self.offload.wall_s, self.cpu_only.wall_s, self.baseline.wall_s
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_sizes() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let l = Latency::of(&v);
        assert_eq!((l.p50, l.p90, l.p99, l.mean), (50.0, 90.0, 99.0, 50.5));
        assert_eq!(Latency::of(&[]).p99, 0.0);
        assert_eq!(size(2.0 * 1024.0 * 1024.0), "2 MiB");
        assert_eq!(size(1536.0), "1.5 KiB");
        assert_eq!(secs(0.0412), "41 ms");
    }
}
