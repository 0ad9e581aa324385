#!/usr/bin/env python3
"""kvtier's tier against vLLM's own ``fs`` tier, inside vLLM 0.33's real tiering stack.

The same store / lookup / load trace runs through vLLM's ``TieringOffloadingSpec`` and
``TieringOffloadingManager`` with, as the one secondary tier, vLLM's ``fs`` tier (side A) and
kvtier's tier (side B), in the same run, on directories of the same device, in A B B A order
(PERFORMANCE.md: whoever runs right after the other side deleted many files pays for it).

The trace, per side and round (a fresh directory each, removed at the end of the round):

- **store**: ``--requests`` requests of ``--blocks`` blocks of ``--row-kib`` KiB; each step
  the scheduler stores up to ``--per-step`` new requests (``prepare_store`` +
  ``complete_store``, which cascades the blocks to the tier) and ends the step
  (``on_schedule_end``); a step lasts at least ``--step-ms`` (the model's forward pass,
  slept: no CPU). The phase ends when every cascade has finished. The rows are not filled:
  the GPU copy is not what is measured.
- **load**: the primary is emptied (``reset_cache``), then each step up to ``--per-step`` new
  requests look their blocks up, and every request already started looks up the blocks it
  still waits for (as vLLM's scheduler re-asks each step); a request whose blocks are all HIT
  is loaded (``prepare_load`` / ``complete_load``) and finishes. Every block must come back.

Figures: GB/s stored (to the end of the last cascade) and loaded (to the last HIT); the
scheduler thread's CPU per step (``time.thread_time`` around the manager calls: the I/O
threads' CPU is not the scheduler's); lookup latency p50/p99 (one ``manager.lookup`` call);
steps a request waits for its promotion; RETRY answers; and the whole process's CPU per GB
moved (scheduler + I/O threads; kvtier's io_uring work done in the kernel's workers is not
counted there). Each side's best round and the spread between its rounds are printed, and the
ratios kvtier / vLLM.

Run with the Python of an environment that has vLLM 0.33 and kvtier installed (python/ci.sh
makes one): ``python cli/bench/vllm_tier.py [--dir DIR] [--json]``; ``kvtier bench vllm`` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from vllm.plugins import load_general_plugins  # noqa: E402
from vllm.v1.kv_offload.base import LookupResult, ReqContext, ScheduleEndContext, make_offload_key  # noqa: E402
from vllm.v1.kv_offload.config import (  # noqa: E402
    OffloadingCacheConfig,
    OffloadingConfig,
    OffloadingGroupConfig,
    OffloadingModelConfig,
    OffloadingParallelConfig,
)
from vllm.v1.kv_offload.tiering.spec import TieringOffloadingSpec  # noqa: E402

STEP = ScheduleEndContext(new_req_ids=(), preempted_req_ids=())


def make_manager(tier: dict, row_bytes: int, rows: int):
    config = OffloadingConfig(
        groups=(OffloadingGroupConfig(16, ("model.layers.0.self_attn.attn",), 0),),
        worker_kv_bytes_per_block=row_bytes,
        enable_kv_cache_events=False,
        extra_config={"spec_name": "TieringOffloadingSpec", "cpu_bytes_to_use": rows * row_bytes, "secondary_tiers": [tier]},
        engine_id=f"kvtier-bench-{uuid.uuid4().hex[:12]}",
        model=OffloadingModelConfig(name="kvtier/bench-model", dtype="bfloat16"),
        cache=OffloadingCacheConfig(tokens_per_hash=16, blocks_per_chunk=1),
        parallel=OffloadingParallelConfig(0, 1, 1, 1, 1, 1, 0, 1, None, False),
    )
    return TieringOffloadingSpec(config).get_manager()


class Clock:
    """CPU time of the calling (scheduler) thread spent inside manager calls."""

    def __init__(self) -> None:
        self.cpu = 0.0

    def __enter__(self):
        self._t = time.thread_time()
        return self

    def __exit__(self, *exc):
        self.cpu += time.thread_time() - self._t


TIER_CALLS = ("lookup", "submit_store", "submit_load", "get_finished_jobs", "on_schedule_end", "on_request_finished", "touch", "take_events")


def instrument(tier, clock: Clock) -> None:
    """Counts the scheduler thread's CPU inside the tier's own methods (both sides alike)."""
    for name in TIER_CALLS:
        method = getattr(tier, name)

        def timed(*a, _m=method, **kw):
            t = time.thread_time()
            try:
                return _m(*a, **kw)
            finally:
                clock.cpu += time.thread_time() - t

        setattr(tier, name, timed)


def run_side(name: str, tier: dict, args, keys: list[list[bytes]]) -> dict:
    row = args.row_kib * 1024
    manager = make_manager(tier, row, args.primary_rows)
    step_s = args.step_ms / 1000
    clock = Clock()
    tier_clock = Clock()
    instrument(manager.secondary_tiers[0], tier_clock)
    steps = 0

    def end_step(t0: float) -> None:
        nonlocal steps
        with clock, manager.lock:
            manager.on_schedule_end(STEP)
        steps += 1
        left = step_s - (time.perf_counter() - t0)
        if left > 0:
            time.sleep(left)

    # -- store --------------------------------------------------------------------------------
    proc0 = os.times()
    t_start = time.perf_counter()
    todo = list(range(len(keys)))
    stalls = 0
    while todo or manager.has_pending_work():
        t0 = time.perf_counter()
        started = 0
        while todo and started < args.per_step:
            i = todo[0]
            ctx = ReqContext(req_id=f"s{i}")
            with clock, manager.lock:
                manager.on_new_request(ctx)
                out = manager.prepare_store(keys[i], ctx)
                if out is None:  # the primary is full of blocks still cascading
                    manager.on_request_finished(ctx)
                else:
                    manager.complete_store(keys[i], ctx)
                    manager.on_request_finished(ctx)
            if out is None:
                stalls += 1
                break
            todo.pop(0)
            started += 1
        end_step(t0)
    store_s = time.perf_counter() - t_start
    store_steps, store_cpu, store_tier_cpu = steps, clock.cpu, tier_clock.cpu
    proc1 = os.times()

    # -- load ---------------------------------------------------------------------------------
    with clock, manager.lock:
        manager.reset_cache()
        manager.on_reset_flushed()
    steps, clock.cpu, tier_clock.cpu = 0, 0.0, 0.0
    lookups_ns: list[int] = []
    retries = misses = 0
    waits: list[int] = []
    active: dict[int, tuple[ReqContext, list[bytes], int]] = {}
    todo = list(range(len(keys)))
    t_start = time.perf_counter()
    while todo or active:
        t0 = time.perf_counter()
        while todo and len(active) < args.active:
            i = todo.pop(0)
            ctx = ReqContext(req_id=f"l{i}")
            with clock, manager.lock:
                manager.on_new_request(ctx)
            active[i] = (ctx, list(keys[i]), steps)
        for i in list(active):
            ctx, waiting, first_step = active[i]
            still = []
            for k in waiting:
                with clock, manager.lock:
                    a = time.perf_counter_ns()
                    r = manager.lookup(k, ctx)
                    lookups_ns.append(time.perf_counter_ns() - a)
                if r is LookupResult.HIT:
                    continue
                if r is LookupResult.RETRY:
                    retries += 1
                elif r is LookupResult.MISS:
                    misses += 1
                still.append(k)
            if still:
                active[i] = (ctx, still, first_step)
                continue
            with clock, manager.lock:
                manager.prepare_load(keys[i], ctx)
                manager.complete_load(keys[i], ctx)
                manager.on_request_finished(ctx)
            waits.append(steps - first_step)
            del active[i]
        if misses:
            raise SystemExit(f"{name}: {misses} lookups of stored blocks answered MISS")
        end_step(t0)
    load_s = time.perf_counter() - t_start
    proc2 = os.times()
    manager.shutdown()

    total = sum(len(k) for k in keys) * row
    lookups_ns.sort()

    def cpu(a, b):
        return (b.user - a.user) + (b.system - a.system)

    return {
        "side": name,
        "store_gbps": total / store_s / 1e9,
        "load_gbps": total / load_s / 1e9,
        "store_sched_cpu_ms_per_step": store_cpu / store_steps * 1e3,
        "load_sched_cpu_ms_per_step": clock.cpu / steps * 1e3,
        "store_tier_cpu_ms_per_step": store_tier_cpu / store_steps * 1e3,
        "load_tier_cpu_ms_per_step": tier_clock.cpu / steps * 1e3,
        "store_sched_cpu_ms": store_cpu * 1e3,
        "load_sched_cpu_ms": clock.cpu * 1e3,
        "store_steps": store_steps,
        "load_steps": steps,
        "store_stalls": stalls,
        "lookup_p50_us": lookups_ns[len(lookups_ns) // 2] / 1e3,
        "lookup_p99_us": lookups_ns[min(len(lookups_ns) - 1, len(lookups_ns) * 99 // 100)] / 1e3,
        "lookups": len(lookups_ns),
        "retries": retries,
        "promotion_wait_steps_mean": statistics.fmean(waits),
        "promotion_wait_steps_max": max(waits),
        "store_cpu_s_per_gb": cpu(proc0, proc1) / (total / 1e9),
        "load_cpu_s_per_gb": cpu(proc1, proc2) / (total / 1e9),
    }


FIELDS = [
    ("store_gbps", "store GB/s", "{:.2f}", True),
    ("load_gbps", "load GB/s", "{:.2f}", True),
    ("store_sched_cpu_ms_per_step", "sched CPU/step store (ms)", "{:.3f}", False),
    ("load_sched_cpu_ms_per_step", "sched CPU/step load (ms)", "{:.3f}", False),
    ("store_tier_cpu_ms_per_step", "  of it in the tier, store (ms)", "{:.3f}", False),
    ("load_tier_cpu_ms_per_step", "  of it in the tier, load (ms)", "{:.3f}", False),
    ("store_sched_cpu_ms", "sched CPU, whole store (ms)", "{:.0f}", False),
    ("load_sched_cpu_ms", "sched CPU, whole load (ms)", "{:.0f}", False),
    ("lookup_p50_us", "lookup p50 (us)", "{:.1f}", False),
    ("lookup_p99_us", "lookup p99 (us)", "{:.1f}", False),
    ("promotion_wait_steps_mean", "promotion wait (steps, mean)", "{:.2f}", False),
    ("promotion_wait_steps_max", "promotion wait (steps, max)", "{:.0f}", False),
    ("retries", "RETRY answers", "{:.0f}", False),
    ("store_cpu_s_per_gb", "process CPU s/GB store", "{:.2f}", False),
    ("load_cpu_s_per_gb", "process CPU s/GB load", "{:.2f}", False),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=None, help="directory on the device to measure (default: a temporary one under the repo's target/)")
    p.add_argument("--row-kib", type=int, default=256, help="bytes of a primary row (one block), KiB")
    p.add_argument("--requests", type=int, default=96)
    p.add_argument("--blocks", type=int, default=16, help="blocks per request")
    p.add_argument("--per-step", type=int, default=4, help="new requests per step")
    p.add_argument("--active", type=int, default=8, help="requests waiting for promotions at once")
    p.add_argument("--primary-rows", type=int, default=512)
    p.add_argument("--step-ms", type=float, default=5.0, help="least duration of a step (the forward pass, slept)")
    p.add_argument("--rounds", default="ABBA", help="order of the sides: A = vLLM's fs tier, B = kvtier")
    p.add_argument("--warmup", action="store_true", help="first run one unmeasured round of each side, so every measured round finds the file system in the state stores and deletions leave it in")
    p.add_argument("--executor", default="threaded", help="kvtier's executor (threaded: the tier's default in vLLM)")
    p.add_argument("--format", default="vllm", help="kvtier's block format (vllm: the same bytes as vLLM's); files engine only")
    p.add_argument(
        "--engine",
        choices=("files", "regions"),
        default="files",
        help="kvtier's disk engine: a file per block (files), or the region engine on one device file (regions)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args()

    load_general_plugins()
    here = os.path.dirname(os.path.abspath(__file__))
    base = args.dir or os.path.join(os.path.dirname(os.path.dirname(here)), "target", "bench-vllm")
    os.makedirs(base, exist_ok=True)
    keys = [
        [make_offload_key((r * args.blocks + b).to_bytes(8, "big") + os.urandom(24), 0) for b in range(args.blocks)]
        for r in range(args.requests)
    ]
    results = []
    rounds = ("AB" if args.warmup else "") + args.rounds
    for i, side in enumerate(rounds):
        root = tempfile.mkdtemp(prefix=f"round{i}-{side}-", dir=base)
        if side == "A":
            tier = {"type": "fs", "root_dir": root}
            name = "vllm-fs"
        else:
            name = "kvtier"
            if args.engine == "regions":
                # A device file in the round's directory, with room for every block of the
                # round (4 KiB record headers included) and the regions the engine keeps free
                # for reclaims to spare: nothing is evicted.
                need = args.requests * args.blocks * (args.row_kib + 4) * 1024
                capacity = (64 << 10) + (need // (16 << 20) + 5) * (16 << 20)
                tier = {
                    "type": "kvtier",
                    "engine": "regions",
                    "path": os.path.join(root, "kv.dev"),
                    "capacity": capacity,
                    "executor": args.executor,
                }
            else:
                tier = {"type": "kvtier", "root_dir": root, "executor": args.executor, "format": args.format}
        r = run_side(name, tier, args, keys)
        r["round"] = i
        shutil.rmtree(root)
        if args.warmup and i < 2:
            continue
        results.append(r)
        if not args.json:
            print(f"round {i} ({side} {name}): store {r['store_gbps']:.2f} GB/s, load {r['load_gbps']:.2f} GB/s", file=sys.stderr)

    summary = {}
    for name in ("vllm-fs", "kvtier"):
        rs = [r for r in results if r["side"] == name]
        if not rs:
            continue
        s = {}
        for field, _, _, higher in FIELDS:
            vals = [r[field] for r in rs]
            best = max(vals) if higher else min(vals)
            s[field] = {"best": best, "spread": (max(vals) - min(vals)) / best if best else 0.0, "all": vals}
        summary[name] = s
    ratios = {}
    if len(summary) == 2:
        for field, _, _, _ in FIELDS:
            a, b = summary["vllm-fs"][field]["best"], summary["kvtier"][field]["best"]
            ratios[field] = b / a if a else None
    trace = {
        k: getattr(args, k)
        for k in ("row_kib", "requests", "blocks", "per_step", "active", "primary_rows", "step_ms", "executor", "format", "engine")
    }
    trace["bytes_per_side_round"] = args.requests * args.blocks * args.row_kib * 1024
    if args.json:
        print(json.dumps({"trace": trace, "rounds": results, "summary": summary, "ratios": ratios}, indent=2))
        return
    print(f"trace: {json.dumps(trace)}; rounds {args.rounds} (A = vLLM fs tier, B = kvtier), dir {base}")
    print(f"{'figure':32} {'vLLM fs (best, spread)':>26} {'kvtier (best, spread)':>26} {'kvtier/vLLM':>12}")
    for field, label, fmt, _ in FIELDS:
        cells = []
        for name in ("vllm-fs", "kvtier"):
            s = summary.get(name, {}).get(field)
            cells.append(f"{fmt.format(s['best'])} ({s['spread'] * 100:.0f}%)" if s else "-")
        ratio = ratios.get(field)
        print(f"{label:32} {cells[0]:>26} {cells[1]:>26} {('%.2f' % ratio) if ratio is not None else '-':>12}")


if __name__ == "__main__":
    main()
