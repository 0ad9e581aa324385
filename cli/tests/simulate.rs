//! `kvtier simulate` end to end, small: 4 KiB blocks (256 bytes per token of 16-token blocks, or
//! 128 bytes per token of 32-token blocks), a CPU tier of a few MiB, an FS tier in a temporary
//! directory. Checks outcomes, never timings.
//!
//! With `--sync-io` every tier job finishes within the iteration that started it and promotions
//! are timed by the model instead of measured, so every figure, virtual times included, depends
//! on the inputs alone; the determinism and hit-accounting tests rely on it.

use clap::Parser;
use kvtier_cli::simulate::report::{Report, RunFigures, Sources};
use kvtier_cli::simulate::{simulate, SimulateArgs, Simulation};
use serde_json::Value;

fn args(dir: &std::path::Path, defaults: &[&str], extra: &[&str]) -> SimulateArgs {
    let flag = |a: &str| a.split('=').next().unwrap_or(a).to_string();
    let mut argv =
        vec!["simulate".to_string(), "--sync-io".into(), "--quiet".into(), format!("--dir={}", dir.display())];
    argv.extend(defaults.iter().filter(|d| !extra.iter().any(|e| flag(e) == flag(d))).map(|d| d.to_string()));
    argv.extend(extra.iter().map(|s| s.to_string()));
    SimulateArgs::try_parse_from(argv).expect("valid arguments")
}

const CHAT: &[&str] = &[
    "--bytes-per-token=256",
    "--cpu-bytes=2M",
    "--gpu-blocks=256",
    "--sessions=32",
    "--requests=300",
    "--seed=7",
    "--rate=10",
];

fn chat(dir: &std::path::Path, extra: &[&str]) -> Simulation {
    simulate(&args(dir, CHAT, extra)).expect("simulate runs")
}

fn total(s: &Sources) -> u64 {
    s.gpu + s.cpu + s.disk + s.remote + s.miss
}

#[test]
fn chat_run_flows_through_every_tier_and_reports_ttft() {
    let tmp = tempfile::tempdir().unwrap();
    let (svg, prom) = (tmp.path().join("sim.svg"), tmp.path().join("sim.prom"));
    let out = chat(
        &tmp.path().join("tier"),
        &[&format!("--plot={}", svg.display()), &format!("--metrics-file={}", prom.display())],
    );
    let r = &out.report;
    eprintln!("{}", r.to_text());
    for run in [&r.offload, &r.cpu_only, &r.baseline] {
        assert_eq!(run.requests, 300, "{}", run.name);
        assert_eq!(total(&run.blocks), r.setup.prompt_blocks, "{}: every prompt block is counted once", run.name);
        assert!(run.ttft.p50 > 0.0 && run.ttft.p50 <= run.ttft.p90 && run.ttft.p90 <= run.ttft.p99, "{}", run.name);
        assert!(run.gpu_busy_s > 0.0 && run.requests_per_s > 0.0, "{}", run.name);
    }
    assert_eq!(r.errors.byte_mismatches, 0, "loaded blocks must hold their bytes");
    assert_eq!(r.errors.load_failures, 0);
    assert_eq!(r.errors.protocol_errors, 0);
    assert!(r.setup.working_set_blocks > u64::from(r.setup.cpu_blocks), "the working set must exceed the CPU tier");
    assert!(r.offload.blocks.cpu > 0, "CPU tier hits");
    assert!(r.offload.blocks.disk > 0, "disk tier hits");
    assert_eq!(r.cpu_only.blocks.disk, 0, "no disk in the CPU-only run");
    assert_eq!(r.baseline.blocks.cpu + r.baseline.blocks.disk, 0, "the comparison run has no tiers");
    assert!(r.promotions.loaded > 0 && r.bytes.disk_stored > 0 && r.bytes.disk_loaded > 0);
    assert!(r.offload.tokens_computed < r.cpu_only.tokens_computed, "the disk tier must save recomputation");
    assert!(r.cpu_only.tokens_computed < r.baseline.tokens_computed, "the CPU tier must save recomputation");
    assert!(r.offload.hit_rate > r.cpu_only.hit_rate && r.cpu_only.hit_rate > r.baseline.hit_rate);
    // Fewer tokens computed, less GPU time: step cost depends on the tokens computed.
    assert!(r.offload.gpu_busy_s < r.baseline.gpu_busy_s);
    assert!(r.setup.scaled.iter().any(|s| s.contains("1/512")), "{:?}", r.setup.scaled);
    let text = r.to_text();
    for needle in ["TTFT p50", "TTFT p99", "throughput (requests/s)", "GPU busy", "kvtier vs no offloading: TTFT p50"] {
        assert!(text.contains(needle), "report lacks {needle:?}");
    }

    // The JSON report parses and carries the same figures.
    let json: Value = serde_json::from_str(&serde_json::to_string_pretty(r).unwrap()).unwrap();
    assert_eq!(json["offload"]["blocks"]["disk"], r.offload.blocks.disk);
    assert_eq!(json["baseline"]["ttft"]["p99"].as_f64(), Some(r.baseline.ttft.p99));
    assert_eq!(json["verdict"]["vs_no_offloading"]["ttft_p50"].as_f64(), Some(r.verdict.vs_no_offloading.ttft_p50));
    assert!(json["cost"]["prefill_us_per_token"].as_f64().unwrap() > 0.0);
    assert_eq!(json["errors"]["byte_mismatches"], 0);
    assert!(json["cpu"]["kvtier_s"].as_f64().unwrap() > 0.0);

    // The metrics file: Prometheus text with kvtier's counters and histograms, and the summary.
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(Some(&metrics), out.metrics.as_ref());
    for name in [
        "# TYPE kvtier_lookups_total counter",
        "kvtier_lookups_total{result=\"ready\"}",
        "kvtier_blocks_stored_total{tier=\"disk\"}",
        "kvtier_blocks_loaded_total{tier=\"disk\"}",
        "kvtier_promotions_total{outcome=\"loaded\"}",
        "kvtier_cpu_evictions_total",
        "# TYPE kvtier_promotion_latency_seconds histogram",
        "kvtier_promotion_virtual_seconds_bucket",
        "# TYPE kvtier_ttft_seconds histogram",
        "kvtier_sim_ttft_seconds{config=\"none\",quantile=\"0.99\"}",
        "kvtier_sim_requests_per_second{config=\"cpu_only\"}",
        "kvtier_sim_gpu_busy_seconds{config=\"kvtier\"}",
        "kvtier_jobs_in_flight",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }
    let value = |prefix: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("kvtier_promotions_total{outcome=\"loaded\"}") as u64, r.promotions.loaded);
    assert_eq!(value("kvtier_ttft_seconds_count") as u64, r.offload.requests);
    assert_eq!(value("kvtier_sim_ttft_seconds{config=\"kvtier\",quantile=\"0.5\"}"), r.offload.ttft.p50);

    // The plot: an SVG with the three panels and their series.
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.matches("<polyline").count() >= 11, "eleven series");
    for text in ["hit rate", "disk -&gt; CPU", "no offloading", "Time to first token", "TTFT kvtier"] {
        assert!(svg.contains(text), "plot lacks {text:?}");
    }
}

#[test]
fn same_inputs_same_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let a = chat(&tmp.path().join("a"), &["--policy=arc"]).report;
    let b = chat(&tmp.path().join("b"), &["--policy=arc"]).report;
    assert_eq!(a.errors.byte_mismatches + b.errors.byte_mismatches, 0);
    let figures = |r: &Report| {
        let f = |x: &RunFigures| {
            format!("{:?} {} {:?} {} {}", x.blocks, x.tokens_computed, x.ttft, x.gpu_busy_s, x.requests_per_s)
        };
        (
            f(&r.offload),
            f(&r.cpu_only),
            f(&r.baseline),
            (r.promotions.loaded, r.bytes.cpu_stored, r.bytes.disk_stored, r.bytes.disk_loaded),
        )
    };
    assert_eq!(figures(&a), figures(&b), "virtual times and counts depend on the inputs alone");
    let c = chat(&tmp.path().join("c"), &["--policy=arc", "--seed=8"]).report;
    assert_ne!(figures(&a).2, figures(&c).2, "another seed, another workload");
}

/// Three requests of 32-token blocks (16 per 512-token trace id), 100 s apart so that each
/// runs alone, on a GPU of 66 blocks:
///
/// - A: ids [1, 2], 1024 tokens: 32 blocks, all computed. The GPU keeps them when A ends (its
///   last block released first, so evicted first), kvtier stores them.
/// - B: ids [3, 4, 6, 7], 2048 tokens: 64 blocks, all computed; taking 65 GPU blocks evicts all
///   of A's but A0.
/// - C: ids [1, 2, 5], 1100 tokens: 34 full blocks (A's 32 and 2 of id 5) and 12 tokens. A0 is
///   on the GPU; A1..A31 come from kvtier if it still has them; C's own 2 blocks are computed.
const TRACE: &str = r#"{"timestamp": 0, "input_length": 1024, "output_length": 1, "hash_ids": [1, 2]}
{"timestamp": 100000, "input_length": 2048, "output_length": 1, "hash_ids": [3, 4, 6, 7]}
{"timestamp": 200000, "input_length": 1100, "output_length": 1, "hash_ids": [1, 2, 5]}
"#;

fn trace_run(dir: &std::path::Path, trace: &str, extra: &[&str]) -> Report {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("trace.jsonl");
    std::fs::write(&file, trace).unwrap();
    let defaults = ["--block-tokens=32", "--bytes-per-token=128", "--gpu-blocks=66"];
    let mut extra: Vec<&str> = extra.to_vec();
    let flag = format!("--trace={}", file.display());
    extra.push(&flag);
    simulate(&args(&dir.join("tier"), &defaults, &extra)).expect("simulate runs").report
}

fn sources(gpu: u64, cpu: u64, disk: u64, miss: u64) -> String {
    format!("{:?}", Sources { gpu, cpu, disk, remote: 0, miss })
}

#[test]
fn a_trace_with_known_sharing_counts_hits_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    // A CPU tier of 256 blocks keeps everything: C's A1..A31 are CPU hits.
    let big = trace_run(&tmp.path().join("big"), TRACE, &["--cpu-bytes=1M"]);
    eprintln!("{}", big.to_text());
    let expect = |a: (u64, u64, u64, u64), b: (u64, u64, u64, u64)| sources(a.0 + b.0, a.1 + b.1, a.2 + b.2, a.3 + b.3);
    // A and B: 32 + 64 blocks computed.
    let ab = (0, 0, 0, 96);
    assert_eq!(format!("{:?}", big.offload.blocks), expect(ab, (1, 31, 0, 2)));
    assert_eq!(format!("{:?}", big.cpu_only.blocks), expect(ab, (1, 31, 0, 2)));
    assert_eq!(format!("{:?}", big.baseline.blocks), expect(ab, (1, 0, 0, 33)));
    // Tokens computed: A 1024 + B 2048, then C's 1100 - 32 x 32 with the tiers, 1100 - 32 without.
    assert_eq!(big.offload.tokens_computed, 1024 + 2048 + 76);
    assert_eq!(big.baseline.tokens_computed, 1024 + 2048 + 1068);
    assert_eq!(big.bytes.cpu_loaded, 31 * 4096);
    assert_eq!(big.bytes.cpu_stored, (96 + 2) * 4096);
    assert_eq!(big.promotions.loaded, 0);

    // A CPU tier of 64 blocks: B's stores evict all of A's; C promotes A1..A31 from disk (each
    // promotion evicts one of B's blocks), then loads them.
    let small = trace_run(&tmp.path().join("small"), TRACE, &["--cpu-bytes=256K"]);
    eprintln!("{}", small.to_text());
    assert_eq!(format!("{:?}", small.offload.blocks), expect(ab, (1, 0, 31, 2)));
    assert_eq!(format!("{:?}", small.cpu_only.blocks), expect(ab, (1, 0, 0, 33)));
    assert_eq!(format!("{:?}", small.baseline.blocks), expect(ab, (1, 0, 0, 33)));
    assert_eq!((small.promotions.reserved, small.promotions.loaded, small.promotions.batches), (31, 31, 1));
    assert_eq!(small.bytes.disk_stored, (96 + 2) * 4096, "every stored block reaches the disk");
    assert_eq!(small.bytes.disk_loaded, 31 * 4096);
    assert_eq!(small.offload.promotion_waits.0, 1, "C waited for its promotions");
    // C waited for the modelled disk: 31 blocks x 32 tokens x 128 KiB at 1 GB/s.
    let disk_s = 31.0 * 32.0 * 131072.0 / 1e9;
    assert!(small.offload.promotion_waits.1 >= disk_s, "{:?}", small.offload.promotion_waits);
    for r in [&big, &small] {
        assert_eq!(r.errors.byte_mismatches + r.errors.load_failures + r.errors.protocol_errors, 0);
        assert_eq!(r.setup.trace.as_ref().unwrap().requests, 3);
    }
}

#[test]
fn bad_trace_lines_are_named_skipped_and_the_rest_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = format!(
        "{}\n{{\"timestamp\": 5}}\n\nnot json\n{}{{\"timestamp\": 300000, \"input_length\": 600, \"output_length\": 2, \"hash_ids\": [1]}}\n",
        TRACE.lines().next().unwrap(),
        TRACE.lines().skip(1).map(|l| format!("{l}\n")).collect::<String>()
    );
    let r = trace_run(&tmp.path().join("bad"), &trace, &["--cpu-bytes=1M"]);
    let info = r.setup.trace.as_ref().unwrap();
    let bad: Vec<usize> = info.bad_lines.iter().map(|b| b.line).collect();
    assert_eq!(bad, [2, 4, 7]);
    assert!(info.bad_lines[2].error.contains("needs 2 hash_ids"), "{:?}", info.bad_lines);
    assert_eq!(info.requests, 3);
    for run in [&r.offload, &r.cpu_only, &r.baseline] {
        assert_eq!(run.requests, 3);
    }
    assert!(r.to_text().contains("3 bad lines skipped"), "{}", r.to_text());
    assert!(r.to_text().contains("skipped line 4: not a request"), "{}", r.to_text());
}

#[test]
fn unusable_settings_are_refused_before_running() {
    let tmp = tempfile::tempdir().unwrap();
    let refused = |extra: &[&str]| simulate(&args(tmp.path(), CHAT, extra)).unwrap_err().to_string();
    assert!(refused(&["--gpu-blocks=8"]).contains("cannot hold the longest request"));
    assert!(refused(&["--bytes-per-token=1M"]).contains("scales the model's KV down"));
    assert!(refused(&["--time-scale=0"]).contains("--time-scale"));
    let missing = tmp.path().join("missing.jsonl");
    let e = simulate(&args(tmp.path(), &[], &[&format!("--trace={}", missing.display())])).unwrap_err().to_string();
    assert!(e.contains("cannot open the trace"), "{e}");
    // The default 2 MiB blocks of a real GPU's capacity do not fit in memory here.
    std::fs::write(tmp.path().join("t.jsonl"), TRACE).unwrap();
    let e = simulate(
        &SimulateArgs::try_parse_from([
            "simulate",
            "--quiet",
            &format!("--trace={}", tmp.path().join("t.jsonl").display()),
        ])
        .unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--bytes-per-token"), "{e}");
}

/// The same trace with the disk tier on the region engine: the same hits, exactly; the device
/// left behind closes cleanly and `inspect --verify` finds every stored block intact, named by
/// its region's summary, and a flipped payload byte as a corrupt record its summary names.
#[test]
fn a_trace_on_the_region_engine_counts_the_same_and_leaves_a_verifiable_device() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("regions");
    let r = trace_run(&dir, TRACE, &["--cpu-bytes=256K", "--disk-engine=regions", "--disk-bytes=64M"]);
    eprintln!("{}", r.to_text());
    let ab = (0, 0, 0, 96);
    assert_eq!(format!("{:?}", r.offload.blocks), sources(ab.0 + 1, ab.1, ab.2 + 31, ab.3 + 2));
    assert_eq!((r.promotions.reserved, r.promotions.loaded), (31, 31));
    assert_eq!(r.bytes.disk_stored, (96 + 2) * 4096);
    assert_eq!(r.bytes.disk_loaded, 31 * 4096);
    assert_eq!(r.errors.byte_mismatches + r.errors.load_failures + r.errors.protocol_errors, 0);
    assert!(r.setup.tiers.iter().any(|t| t.starts_with("disk (regions)")), "{:?}", r.setup.tiers);

    let device = dir.join("tier").join("regions.dev");
    let fs = kvtier_fs::vfs::HostFs::default();
    let rep = kvtier_regions::inspect_device(&fs, &device, true).unwrap();
    eprintln!("{rep:?}");
    assert_eq!((rep.state, rep.in_use, rep.block_bytes), ("closed", false, 4096));
    let v = rep.verify.unwrap();
    assert_eq!((v.intact, v.corrupt, v.summary_mismatches, v.unsummarized), (98, 0, 0, 0));
    assert_eq!(rep.blocks_summarized, 98, "a clean close seals every region written");
    // One payload byte flipped in the first record: corrupt, and its summary entry no longer
    // matches a record.
    let g = kvtier_regions::Geometry::new(rep.capacity, rep.region_bytes, rep.block_bytes).unwrap();
    let mut bytes = std::fs::read(&device).unwrap();
    let written = (0..g.slots())
        .map(|s| g.slot_offset(s) as usize)
        .find(|&o| bytes[o..o + 64].iter().any(|&b| b != 0))
        .expect("a record");
    let at = written + kvtier_fs::format::HEADER_LEN + 7;
    bytes[at] ^= 0x40;
    std::fs::write(&device, &bytes).unwrap();
    let v = kvtier_regions::inspect_device(&fs, &device, true).unwrap().verify.unwrap();
    assert_eq!((v.intact, v.corrupt, v.summary_mismatches), (97, 1, 1));
}
