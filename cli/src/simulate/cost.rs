//! The GPU cost model: what a scheduler step costs on the simulated GPU, in seconds of virtual
//! time, and what a KV block weighs.
//!
//! # The model
//!
//! A step batches at most `batch_tokens` tokens of at most `max_seqs` requests (vLLM's
//! `max_num_batched_tokens` and `max_num_seqs`, chunked prefill: decodes first, then prefill
//! chunks). It costs
//!
//! ```text
//! step = decode_step                              (weights read once per step)
//!      + kv_read    x context tokens of the decoding requests   (their KV read once)
//!      + prefill    x prompt tokens computed in the step
//!      + attention  x (query, earlier token) pairs of those tokens   (causal attention)
//! ```
//!
//! A prompt token served from a tier is not computed: it costs its transfer, CPU -> GPU at
//! `pcie_bytes_per_s` (one link per GPU, shared by the requests loading at once; the request
//! waits, the GPU serves others meanwhile, as vLLM's offloading connector does), and for a
//! block promoted from disk first the disk -> CPU time measured on this machine (see
//! `driver`). Stores GPU -> CPU overlap compute (device-to-host, the other PCIe direction) and
//! cost nothing here.
//!
//! # Where the figures come from
//!
//! Every figure is a roofline (the model's FLOPs or bytes over the GPU's datasheet rate)
//! scaled by an efficiency taken from a public vLLM benchmark:
//!
//! - **Prefill (compute-bound)**: `2 x parameters` FLOPs per token plus `4 x layers x query
//!   heads x head_dim` FLOPs per (query, earlier token) pair, at [`PREFILL_EFFICIENCY`] of the
//!   dense BF16 peak. That efficiency is what vLLM reached on a prefill-dominated run: the
//!   Anyscale continuous-batching benchmark (github.com/anyscale/llm-continuous-batching-benchmarks,
//!   `benchmark_configs/vllm_variable_size`: OPT-13B, 1000 prompts of 512 tokens, A100-SXM4-40GB),
//!   as re-run in its issue #4: 512,000 prompt + 15,610 generated tokens in 91.73 s, i.e.
//!   at least 5,582 prompt tokens/s x 2 x 12.9 G FLOPs = 144 TFLOP/s = 46 % of the A100's 312 TFLOP/s
//!   (a lower bound: the time includes the decode steps). That run is vLLM 0.1.2 on an A100;
//!   newer kernels on an H100 may do better, which would make recomputation cheaper and
//!   offloading pay less than shown.
//! - **Decode step (memory-bound)**: the weights read once per step, and each decoding
//!   request's KV read once, at [`DECODE_EFFICIENCY`] of the HBM bandwidth: the share of the
//!   memory roofline vLLM 0.23.0 reached decoding Llama-3.1-8B (BF16) on an A100 40GB at one
//!   request (~75 tokens/s, "roughly 77 % of the memory-bandwidth ceiling"; flat up to 8
//!   concurrent requests): johnmusgrave.com/p/vllm-throughput-latency-sweep-on. Cross-check:
//!   Lambda's vLLM benchmark (github.com/LambdaLabsML/vllm-benchmark, `benchmark_v0.md`, vLLM
//!   0.5.4) measured 19.75 ms (1xH100) and 42.85 ms (1xA100) inter-token latency for
//!   Llama-3.1-8B-FP8 at 320 concurrent prompts, and 38.26 ms / 88.25 ms for 70B on 4 GPUs:
//!   H100 ~2x faster than A100, 70B on 4 GPUs ~2x slower than 8B on one, as here (their
//!   steps carry prefill chunks too, so they are longer than a pure decode step).
//! - **Batch budget**: vLLM's own defaults (`vllm/engine/arg_utils.py`,
//!   `EngineArgs.get_batch_defaults`, OpenAI server): 8192 tokens and 1024 sequences on GPUs
//!   with >= 70 GiB that are not A100s; 2048 and 256 on an A100 (vLLM PR #17885).
//! - **PCIe**: the datasheets' x16 link (H100 SXM: PCIe Gen5, 128 GB/s both directions; A100
//!   SXM: Gen4, 64 GB/s), half per direction, at [`PCIE_EFFICIENCY`]. That 80 % is our
//!   assumption (pinned-memory DMA), not a vLLM figure: `--pcie-gbps` overrides it.
//! - **GPU KV capacity**: 90 % of the GPUs' memory (vLLM's default `gpu_memory_utilization`)
//!   minus the BF16 weights minus [`ACTIVATION_RESERVE`] per GPU for activations and CUDA graphs
//!   (our estimate; vLLM profiles it at start-up).
//!
//! Datasheet rates: H100 SXM 80GB: 989 TFLOP/s dense BF16, 3.35 TB/s HBM3; A100 SXM 80GB: 312
//! TFLOP/s, 2.039 TB/s HBM2e (NVIDIA H100 and A100 datasheets). Llama-3.1-70B runs on 4 GPUs
//! (tensor parallel 4, as in vLLM's `latency_llama70B_tp4` benchmark): rates and PCIe links x4.
//!
//! What the model leaves out: FP8 weights or KV, speculative decoding, CUDA-graph and scheduler
//! overheads, tensor-parallel communication, preemption. It is a stated approximation for
//! comparing configurations on the same traffic, not a prediction of a particular server.

use serde::Serialize;

/// Share of the dense BF16 peak vLLM's prefill reaches (see the module docs).
pub const PREFILL_EFFICIENCY: f64 = 0.46;
/// Share of the HBM bandwidth vLLM's decode reaches (see the module docs).
pub const DECODE_EFFICIENCY: f64 = 0.77;
/// Share of the PCIe link's per-direction rate a KV load reaches (our assumption).
pub const PCIE_EFFICIENCY: f64 = 0.8;
/// Memory per GPU kept for activations and CUDA graphs (our estimate).
pub const ACTIVATION_RESERVE: f64 = 3.0e9;
/// vLLM's default `gpu_memory_utilization`.
pub const GPU_MEMORY_UTILIZATION: f64 = 0.9;

/// A model's shape: what its KV cache weighs and what a token costs to compute.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ModelSpec {
    /// Name, as `--model` spells it.
    pub name: &'static str,
    /// Parameters.
    pub params: f64,
    /// Transformer layers.
    pub layers: u64,
    /// Query heads.
    pub q_heads: u64,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: u64,
    /// Dimension of a head.
    pub head_dim: u64,
    /// GPUs it runs on (tensor parallel).
    pub gpus: u64,
}

impl ModelSpec {
    /// KV bytes per token: layers x KV heads x head_dim x 2 (K and V) x 2 bytes (BF16).
    pub const fn kv_bytes_per_token(&self) -> u64 {
        self.layers * self.kv_heads * self.head_dim * 2 * 2
    }

    /// BF16 weight bytes.
    pub fn weight_bytes(&self) -> f64 {
        self.params * 2.0
    }

    /// FLOPs of the matrix multiplications per token (2 per parameter).
    pub fn flops_per_token(&self) -> f64 {
        self.params * 2.0
    }

    /// Attention FLOPs per (query token, earlier token) pair: QK^T and PV, 2 FLOPs per
    /// multiply-add each, over every layer and query head.
    pub fn attention_flops_per_pair(&self) -> f64 {
        (4 * self.layers * self.q_heads * self.head_dim) as f64
    }
}

/// Llama-3.1-8B: 32 layers, 32 query / 8 KV heads of 128: 32 x 8 x 128 x 2 x 2 = 128 KiB per token.
pub const LLAMA_3_1_8B: ModelSpec =
    ModelSpec { name: "llama-3.1-8b", params: 8.03e9, layers: 32, q_heads: 32, kv_heads: 8, head_dim: 128, gpus: 1 };
/// Llama-3.1-70B: 80 layers, 64 query / 8 KV heads of 128: 80 x 8 x 128 x 2 x 2 = 320 KiB per
/// token; on 4 GPUs.
pub const LLAMA_3_1_70B: ModelSpec =
    ModelSpec { name: "llama-3.1-70b", params: 70.6e9, layers: 80, q_heads: 64, kv_heads: 8, head_dim: 128, gpus: 4 };
/// Qwen-2.5-7B: 28 layers, 28 query / 4 KV heads of 128: 28 x 4 x 128 x 2 x 2 = 56 KiB per token.
pub const QWEN_2_5_7B: ModelSpec =
    ModelSpec { name: "qwen-2.5-7b", params: 7.62e9, layers: 28, q_heads: 28, kv_heads: 4, head_dim: 128, gpus: 1 };

/// The models `--model` knows.
pub const MODELS: [ModelSpec; 3] = [LLAMA_3_1_8B, LLAMA_3_1_70B, QWEN_2_5_7B];

/// A GPU's datasheet figures and vLLM's batch defaults for it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GpuSpec {
    /// Name, as `--gpu` spells it.
    pub name: &'static str,
    /// Dense BF16 FLOP/s.
    pub bf16_flops: f64,
    /// HBM bytes/s.
    pub hbm_bytes_per_s: f64,
    /// Memory, bytes.
    pub memory_bytes: f64,
    /// PCIe x16 bytes/s per direction (datasheet).
    pub pcie_bytes_per_s: f64,
    /// vLLM's default `max_num_batched_tokens` (OpenAI server).
    pub batch_tokens: u64,
    /// vLLM's default `max_num_seqs`.
    pub max_seqs: usize,
}

/// NVIDIA H100 SXM 80GB.
pub const H100: GpuSpec = GpuSpec {
    name: "h100",
    bf16_flops: 989e12,
    hbm_bytes_per_s: 3.35e12,
    memory_bytes: 80e9,
    pcie_bytes_per_s: 64e9,
    batch_tokens: 8192,
    max_seqs: 1024,
};
/// NVIDIA A100 SXM 80GB.
pub const A100: GpuSpec = GpuSpec {
    name: "a100",
    bf16_flops: 312e12,
    hbm_bytes_per_s: 2.039e12,
    memory_bytes: 80e9,
    pcie_bytes_per_s: 32e9,
    batch_tokens: 2048,
    max_seqs: 256,
};

/// The GPUs `--gpu` knows.
pub const GPUS: [GpuSpec; 2] = [H100, A100];

/// Looks a preset up by name (case-insensitive), for clap.
fn by_name<T: Copy>(all: &[T], name: fn(&T) -> &'static str, text: &str) -> Result<T, String> {
    all.iter().copied().find(|x| name(x).eq_ignore_ascii_case(text.trim())).ok_or_else(|| {
        let names: Vec<_> = all.iter().map(name).collect();
        format!("unknown {text:?}: one of {}", names.join(", "))
    })
}

/// Parses `--model`.
pub fn parse_model(text: &str) -> Result<ModelSpec, String> {
    by_name(&MODELS, |m| m.name, text)
}

/// Parses `--gpu`.
pub fn parse_gpu(text: &str) -> Result<GpuSpec, String> {
    by_name(&GPUS, |g| g.name, text)
}

/// The cost model of one (model, GPU) pair, in seconds and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GpuCost {
    /// Seconds per prompt token computed (matrix multiplications).
    pub prefill_s_per_token: f64,
    /// Seconds per (computed token, earlier token) pair (causal attention).
    pub attention_s_per_pair: f64,
    /// Seconds of a step with work (weights read once).
    pub decode_step_s: f64,
    /// Seconds per context token of each decoding request per step (its KV read).
    pub kv_read_s_per_token: f64,
    /// Tokens per step.
    pub batch_tokens: u64,
    /// Requests running at once.
    pub max_seqs: usize,
    /// CPU -> GPU bytes/s (all links).
    pub pcie_bytes_per_s: f64,
    /// KV tokens the GPUs hold.
    pub kv_capacity_tokens: u64,
}

impl GpuCost {
    /// The roofline model of `model` on `model.gpus` x `gpu` (see the module docs).
    pub fn derive(model: &ModelSpec, gpu: &GpuSpec) -> Self {
        let n = model.gpus as f64;
        let flops = n * gpu.bf16_flops * PREFILL_EFFICIENCY;
        let bandwidth = n * gpu.hbm_bytes_per_s * DECODE_EFFICIENCY;
        let kv_bytes = n * gpu.memory_bytes * GPU_MEMORY_UTILIZATION - model.weight_bytes() - n * ACTIVATION_RESERVE;
        GpuCost {
            prefill_s_per_token: model.flops_per_token() / flops,
            attention_s_per_pair: model.attention_flops_per_pair() / flops,
            decode_step_s: model.weight_bytes() / bandwidth,
            kv_read_s_per_token: model.kv_bytes_per_token() as f64 / bandwidth,
            batch_tokens: gpu.batch_tokens,
            max_seqs: gpu.max_seqs,
            pcie_bytes_per_s: n * gpu.pcie_bytes_per_s * PCIE_EFFICIENCY,
            kv_capacity_tokens: (kv_bytes.max(0.0) / model.kv_bytes_per_token() as f64) as u64,
        }
    }

    /// Seconds to compute prompt positions `from..to` (0-based; earlier positions are context).
    pub fn prefill_s(&self, from: u64, to: u64) -> f64 {
        let (a, b) = (from as f64, to as f64);
        // Position p attends to p earlier tokens: sum over from..to = (to^2 - from^2 - (to - from)) / 2.
        self.prefill_s_per_token * (b - a) + self.attention_s_per_pair * (b * b - a * a - (b - a)) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_bytes_per_token_of_the_presets() {
        assert_eq!(LLAMA_3_1_8B.kv_bytes_per_token(), 128 << 10);
        assert_eq!(LLAMA_3_1_70B.kv_bytes_per_token(), 320 << 10);
        assert_eq!(QWEN_2_5_7B.kv_bytes_per_token(), 56 << 10);
    }

    #[test]
    fn derived_costs_are_the_stated_rooflines() {
        let c = GpuCost::derive(&LLAMA_3_1_8B, &H100);
        // 16.06 GFLOP per token at 46 % of 989 TFLOP/s: 35.3 us.
        assert!((c.prefill_s_per_token * 1e6 - 35.3).abs() < 0.1, "{c:?}");
        // 16.06 GB of weights at 77 % of 3.35 TB/s: 6.2 ms.
        assert!((c.decode_step_s * 1e3 - 6.23).abs() < 0.05, "{c:?}");
        assert!((c.pcie_bytes_per_s - 51.2e9).abs() < 1e6);
        assert!((390_000..410_000).contains(&c.kv_capacity_tokens), "{c:?}");
        let a = GpuCost::derive(&LLAMA_3_1_8B, &A100);
        assert!(a.prefill_s_per_token > 3.0 * c.prefill_s_per_token);
        assert_eq!((a.batch_tokens, a.max_seqs), (2048, 256));
        // 70B on 4 GPUs: ~2.2x the 8B's prefill cost per token, ~2.2x its decode step.
        let big = GpuCost::derive(&LLAMA_3_1_70B, &H100);
        assert!((2.0..2.4).contains(&(big.prefill_s_per_token / c.prefill_s_per_token)), "{big:?}");
        assert!((2.0..2.4).contains(&(big.decode_step_s / c.decode_step_s)), "{big:?}");
    }

    #[test]
    fn prefill_cost_adds_causal_attention() {
        let c =
            GpuCost { attention_s_per_pair: 1.0, prefill_s_per_token: 10.0, ..GpuCost::derive(&QWEN_2_5_7B, &A100) };
        // Positions 0, 1, 2 attend to 0 + 1 + 2 = 3 earlier tokens.
        assert_eq!(c.prefill_s(0, 3), 30.0 + 3.0);
        // A chunk after a cached prefix still attends to it: positions 2, 3 attend to 2 + 3.
        assert_eq!(c.prefill_s(2, 4), 20.0 + 5.0);
        assert_eq!(c.prefill_s(0, 3) + c.prefill_s(3, 5), c.prefill_s(0, 5));
    }

    #[test]
    fn presets_by_name() {
        assert_eq!(parse_model("Llama-3.1-70B").unwrap(), LLAMA_3_1_70B);
        assert_eq!(parse_gpu("a100").unwrap(), A100);
        let e = parse_gpu("v100").unwrap_err();
        assert!(e.contains("h100") && e.contains("a100"), "{e}");
    }
}
