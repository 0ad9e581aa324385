//! `bench core`'s report: a table, or one JSON object (`--json`), on standard output.

use serde_json::{json, Value};

use super::engine::{MixCheck, Sample};
use super::peer::Peer;
use super::workload::{Counts, BATCH, REQUEST_BLOCKS};
use super::CoreArgs;

/// What one run measured.
pub(super) struct Results<'a> {
    pub(super) args: &'a CoreArgs,
    pub(super) slots: usize,
    /// Operation counts of the kvtier side and of the Python model.
    pub(super) ours: Counts,
    pub(super) theirs: Counts,
    /// Whether allocations were counted (the counting allocator is this process's), and why
    /// not when they were not.
    pub(super) counting: bool,
    pub(super) uncounted: &'a str,
    pub(super) rows: Vec<Sample>,
    /// The mix's counters at the Python run's last step, and at the end of each mix.
    pub(super) snapshot: Option<MixCheck>,
    pub(super) mix_counters: MixCheck,
    pub(super) memtier_counters: MixCheck,
    pub(super) peer: &'a Peer,
    /// Seconds the whole run took.
    pub(super) total: f64,
    pub(super) load_before: Option<String>,
    pub(super) load_after: Option<String>,
}

/// Prints `results` as a table, or as one JSON object with `--json`.
pub(super) fn print(results: Results<'_>) {
    let Results {
        args,
        slots,
        ours,
        theirs,
        counting,
        uncounted,
        rows,
        snapshot,
        mix_counters,
        memtier_counters,
        peer,
        total,
        load_before,
        load_after,
    } = results;
    // Did both sides do the same work? Compare the mix counters over the Python run's steps.
    let streams_match = match (peer.mix_check, snapshot) {
        (Some(theirs), Some(ours)) => Some(theirs == ours),
        _ => None,
    };
    // Rates per CPU-second of the measuring thread when both sides report them: a shared
    // machine's other load then neither slows one side down nor flatters the other.
    let cpu_basis = rows.iter().all(|r| r.cpu_seconds.is_some()) && peer.rows.iter().all(|r| r.cpu_rate.is_some());
    let peer_row = |op: &str| peer.row(if op == "step_mix_memtier" { "step_mix" } else { op });
    let lines: Vec<Line> = rows
        .iter()
        .map(|r| {
            let py = peer_row(r.op);
            let rate = if cpu_basis { r.cpu_rate().unwrap_or(f64::NAN) } else { r.wall_rate() };
            let py_rate = py.map(|p| if cpu_basis { p.cpu_rate.unwrap_or(f64::NAN) } else { p.wall_rate });
            Line {
                op: r.op,
                unit: r.unit,
                rate,
                py_rate,
                ratio: py_rate.map(|p| rate / p),
                wall_rate: r.wall_rate(),
                py_wall_rate: py.map(|p| p.wall_rate),
                ratio_wall: py.map(|p| r.wall_rate() / p.wall_rate),
                allocs_per_op: counting.then(|| r.allocs as f64 / r.ops as f64),
                allocs: counting.then_some(r.allocs),
                ops: r.ops,
                tierless_peer: r.op == "step_mix_memtier" && py.is_some(),
            }
        })
        .collect();
    let basis = if cpu_basis { "thread_cpu" } else { "wall" };

    if args.json {
        let results: Vec<Value> = lines
            .iter()
            .map(|l| {
                json!({
                    "op": l.op,
                    "unit": l.unit,
                    "kvtier_ops_per_s": l.rate,
                    "python_ops_per_s": l.py_rate,
                    "ratio": l.ratio,
                    "allocs_per_op": l.allocs_per_op,
                    "kvtier_wall_ops_per_s": l.wall_rate,
                    "python_wall_ops_per_s": l.py_wall_rate,
                    "ratio_wall": l.ratio_wall,
                    "kvtier_ops": l.ops,
                    "kvtier_allocs": l.allocs,
                    "peer_is_tierless_mix": l.tierless_peer,
                })
            })
            .collect();
        let out = json!({
            "slots": slots,
            "seed": args.seed,
            "policy": "lru",
            "batch": BATCH,
            "request_blocks": REQUEST_BLOCKS,
            "rate_basis": basis,
            "kvtier_ops": ours.ops,
            "kvtier_mix_steps": ours.mix_steps,
            "python": peer.python,
            "python_ops": theirs.ops,
            "python_mix_steps": theirs.mix_steps,
            "peer_error": peer.error,
            "streams_match": streams_match,
            "loadavg": [load_before, load_after],
            "mix_counters": {
                "step_mix": mix_counters.to_json(),
                "step_mix_memtier": memtier_counters.to_json(),
            },
            "seconds": total,
            "results": results,
        });
        println!("{out}");
        return;
    }

    println!(
        "kvtier bench core: {slots} slots, LRU, seed {}; kvtier times {} ops per row ({} mix steps), \
         the Python model {} ({} mix steps)",
        args.seed, ours.ops, ours.mix_steps, theirs.ops, theirs.mix_steps
    );
    match (&peer.python, &peer.error) {
        (_, Some(e)) => println!("peer: {e}; kvtier figures only"),
        (Some(v), None) => println!("peer: cli/bench/vllm_cpu_model.py on Python {v}"),
        (None, None) => println!("peer: not run (--no-peer)"),
    }
    println!(
        "rates: operations per {}; load average {} -> {}",
        if cpu_basis { "CPU-second of the measuring thread" } else { "wall-clock second" },
        load_before.as_deref().unwrap_or("?"),
        load_after.as_deref().unwrap_or("?"),
    );
    println!();
    println!(
        "{:<18} {:<6} {:>13} {:>13} {:>8} {:>10} {:>10}",
        "operation", "unit", "kvtier ops/s", "python ops/s", "ratio", "wall ratio", "allocs/op"
    );
    let ratio = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.1}x"));
    for l in &lines {
        let mark = if l.tierless_peer { "*" } else { "" };
        println!(
            "{:<18} {:<6} {:>13} {:>13} {:>8} {:>10} {:>10}",
            l.op,
            l.unit,
            human(l.rate),
            l.py_rate.map_or("-".to_owned(), |p| format!("{}{mark}", human(p))),
            ratio(l.ratio),
            ratio(l.ratio_wall),
            l.allocs_per_op.map_or("n/a".to_owned(), |a| if a == 0.0 { "0".to_owned() } else { format!("{a:.1e}") }),
        );
    }
    println!();
    println!("key: one lookup, or one key of a touch / prepare_load+complete_load call of {BATCH} keys;");
    println!("block: one block of a prepare_store+complete_store of {BATCH} new blocks into a full pool ({BATCH} evictions);");
    println!(
        "step: one {REQUEST_BLOCKS}-block request through an engine step (lookup, pin, store, unpin, touch, end_step)."
    );
    if lines.iter().any(|l| l.tierless_peer) {
        println!("* the Python model has no tiers: compared with its tierless mix, which does less work.");
    }
    let per_step = |n: u64, c: &MixCheck| n as f64 / c.steps.max(1) as f64;
    for (name, c) in [("step_mix", &mix_counters), ("step_mix_memtier", &memtier_counters)] {
        println!(
            "{name}: per step {:.1} hits, {:.1} stored, {:.1} evicted, {:.2} stopped at a pending \
             block, {:.4} failed pins",
            per_step(c.hits, c),
            per_step(c.stored, c),
            per_step(c.evicted, c),
            per_step(c.pending, c),
            per_step(c.load_failures, c),
        );
    }
    if !counting {
        println!("allocs/op: n/a ({uncounted})");
    }
    match streams_match {
        Some(true) => println!(
            "same work: the mix counters agree over the first {} steps (hits, stores, evictions, slot ids)",
            theirs.mix_warm + theirs.mix_steps
        ),
        Some(false) => println!("WARNING: the mix counters differ: kvtier {snapshot:?}, Python {:?}", peer.mix_check),
        None if peer.mix_check.is_some() => {
            println!("same work: not checked (the Python model ran more mix steps than kvtier)")
        }
        None => {}
    }
    println!("total {total:.1} s");
}

/// One row of the report.
struct Line {
    op: &'static str,
    unit: &'static str,
    rate: f64,
    py_rate: Option<f64>,
    ratio: Option<f64>,
    wall_rate: f64,
    py_wall_rate: Option<f64>,
    ratio_wall: Option<f64>,
    allocs_per_op: Option<f64>,
    allocs: Option<u64>,
    ops: usize,
    tierless_peer: bool,
}

/// The 1-, 5- and 15-minute load averages, as the kernel prints them.
pub(super) fn loadavg() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(text.split_ascii_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn human(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.2} G", x / 1e9),
        x if x >= 1e6 => format!("{:.2} M", x / 1e6),
        x if x >= 1e3 => format!("{:.1} k", x / 1e3),
        x => format!("{x:.0}"),
    }
}
