//! `kvtier simulate` end to end, small: 4 KiB blocks, a 2 MiB CPU tier, an FS tier in a
//! temporary directory, a few hundred requests. Checks the outcome, never timings.
//!
//! With `--sync-io` every tier job finishes before the next step, so the hit and miss counts
//! depend on the workload alone; the determinism test relies on it. (Without it, when a
//! promotion lands depends on the disk, and with it which step a request is admitted in.)

use clap::Parser;
use kvtier_cli::simulate::{simulate, SimulateArgs, Simulation};
use serde_json::Value;

fn small(dir: &std::path::Path, extra: &[&str]) -> SimulateArgs {
    let defaults = [
        "--block-bytes=4096",
        "--cpu-bytes=2M",
        "--gpu-blocks=256",
        "--sessions=32",
        "--requests=300",
        "--seed=7",
        "--step-ms=0",
    ];
    let flag = |a: &str| a.split('=').next().unwrap_or(a).to_string();
    let mut argv =
        vec!["simulate".to_string(), "--sync-io".into(), "--quiet".into(), format!("--dir={}", dir.display())];
    argv.extend(defaults.iter().filter(|d| !extra.iter().any(|e| flag(e) == flag(d))).map(|d| d.to_string()));
    argv.extend(extra.iter().map(|s| s.to_string()));
    SimulateArgs::try_parse_from(argv).expect("valid arguments")
}

fn run(dir: &std::path::Path, extra: &[&str]) -> Simulation {
    simulate(&small(dir, extra)).expect("simulate runs")
}

#[test]
fn small_run_flows_through_every_tier_and_beats_no_offloading() {
    let tmp = tempfile::tempdir().unwrap();
    let (svg, prom) = (tmp.path().join("sim.svg"), tmp.path().join("sim.prom"));
    let out = run(
        &tmp.path().join("tier"),
        &[&format!("--plot={}", svg.display()), &format!("--metrics-file={}", prom.display())],
    );
    let r = &out.report;
    eprintln!("{}", r.to_text());
    assert_eq!(r.offload.requests, 300);
    assert_eq!(r.baseline.requests, 300);
    assert_eq!(r.errors.byte_mismatches, 0, "loaded blocks must hold their bytes");
    assert_eq!(r.errors.load_failures, 0);
    assert_eq!(r.errors.protocol_errors, 0);
    assert!(r.setup.working_set_blocks > u64::from(r.setup.cpu_blocks), "the working set must exceed the CPU tier");
    assert!(r.offload.blocks.cpu > 0, "CPU tier hits");
    assert!(r.offload.blocks.disk > 0, "disk tier hits");
    assert!(r.promotions.loaded > 0 && r.bytes.disk_stored > 0 && r.bytes.disk_loaded > 0);
    assert!(r.offload.tokens_recomputed < r.baseline.tokens_recomputed, "offloading must save recomputation");
    assert!(r.offload.hit_rate > r.baseline.hit_rate);
    assert_eq!(r.baseline.blocks.cpu + r.baseline.blocks.disk, 0, "the comparison run has no tiers");
    // Both runs serve the same prompts.
    let total = |s: &kvtier_cli::simulate::report::Sources| s.gpu + s.cpu + s.disk + s.miss;
    assert_eq!(total(&r.offload.blocks), total(&r.baseline.blocks));
    assert_eq!(total(&r.offload.blocks), r.setup.prompt_blocks);

    // The JSON report parses and carries the same figures.
    let json: Value = serde_json::from_str(&serde_json::to_string_pretty(r).unwrap()).unwrap();
    assert_eq!(json["offload"]["blocks"]["disk"], r.offload.blocks.disk);
    assert_eq!(json["errors"]["byte_mismatches"], 0);
    assert!(json["promotions"]["p99_steps"].as_f64().unwrap() >= json["promotions"]["p50_steps"].as_f64().unwrap());
    assert!(json["cpu"]["kvtier_s"].as_f64().unwrap() > 0.0);

    // The metrics file: Prometheus text with kvtier's counters and histograms.
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(Some(&metrics), out.metrics.as_ref());
    for name in [
        "# TYPE kvtier_lookups_total counter",
        "kvtier_lookups_total{result=\"ready\"}",
        "kvtier_blocks_stored_total{tier=\"cpu\"}",
        "kvtier_blocks_stored_total{tier=\"disk\"}",
        "kvtier_blocks_loaded_total{tier=\"disk\"}",
        "kvtier_bytes_loaded_total{tier=\"cpu\"}",
        "kvtier_promotions_total{outcome=\"loaded\"}",
        "kvtier_cpu_evictions_total",
        "# TYPE kvtier_promotion_latency_seconds histogram",
        "kvtier_promotion_latency_seconds_bucket{le=\"0.001\"}",
        "kvtier_promotion_latency_steps_count",
        "kvtier_jobs_in_flight",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }
    let loaded_line = metrics.lines().find(|l| l.starts_with("kvtier_promotions_total{outcome=\"loaded\"}")).unwrap();
    assert_eq!(loaded_line.rsplit(' ').next().unwrap().parse::<u64>().unwrap(), r.promotions.loaded);

    // The plot: an SVG with both charts and their series.
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.len() > 10_000, "a plot with data, {} bytes", svg.len());
    assert!(svg.matches("<polyline").count() >= 8, "eight series");
    for text in ["hit rate", "disk -&gt; CPU", "no offloading"] {
        assert!(svg.contains(text), "plot lacks {text:?}");
    }
}

#[test]
fn same_seed_same_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let a = run(&tmp.path().join("a"), &["--policy=arc"]).report;
    let b = run(&tmp.path().join("b"), &["--policy=arc"]).report;
    assert_eq!(a.errors.byte_mismatches + b.errors.byte_mismatches, 0);
    let counts = |r: &kvtier_cli::simulate::report::Report| {
        let (o, z) = (&r.offload, &r.baseline);
        (
            (o.blocks.gpu, o.blocks.cpu, o.blocks.disk, o.blocks.miss, o.steps),
            (z.blocks.gpu, z.blocks.miss, z.steps),
            (r.promotions.loaded, r.bytes.cpu_stored, r.bytes.disk_stored, r.bytes.disk_loaded),
        )
    };
    assert_eq!(counts(&a), counts(&b));
    let c = run(&tmp.path().join("c"), &["--policy=arc", "--seed=8"]).report;
    assert_ne!(counts(&a).1, counts(&c).1, "another seed, another workload");
}
