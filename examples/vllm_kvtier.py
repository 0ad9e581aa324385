#!/usr/bin/env python3
"""kvtier inside vLLM 0.33's KV offloading, on a CPU-only machine.

Builds the scheduler side of vLLM's OffloadingConnector from exactly the
``kv_connector_extra_config`` that ``vllm serve --kv-transfer-config`` takes (the README's
line): vLLM's ``TieringOffloadingSpec`` makes its CPU primary tier (a shared /dev/shm region)
and, from ``"type": "kvtier"``, kvtier's tier. Then it runs what the connector's scheduler does
for three "sessions" of requests that share a system-prompt prefix:

1. session 1 computes and stores every block (prepare_store, the workers' GPU->CPU copy, here
   a memset, complete_store, which cascades each block to kvtier's tier on disk);
2. the CPU tier is reset (as vLLM does on sleep or weight reload): only the disk has the blocks;
3. session 2 looks its blocks up: the shared prefix is found on disk and promoted back
   (HIT_PENDING, then HIT one step later) with its bytes checked; its new blocks are stored;
4. the engine shuts down and a new one starts on the same directory (session 3): kvtier's
   index is rebuilt from the files and the prefix is found again.

Run it with a Python that has vLLM 0.33 and kvtier installed (``python/ci.sh`` makes one):

    python examples/vllm_kvtier.py [--root DIR] [--executor auto|threaded|uring|sim]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
import uuid

import numpy as np

from vllm.plugins import load_general_plugins
from vllm.v1.kv_offload.base import LookupResult, ReqContext, ScheduleEndContext, make_offload_key
from vllm.v1.kv_offload.config import (
    OffloadingCacheConfig,
    OffloadingConfig,
    OffloadingGroupConfig,
    OffloadingModelConfig,
    OffloadingParallelConfig,
)
from vllm.v1.kv_offload.tiering.spec import TieringOffloadingSpec

BLOCK_BYTES = 64 * 1024  # one offloaded block: all layers' K and V of 16 tokens, say
STEP = ScheduleEndContext(new_req_ids=(), preempted_req_ids=())


def kv_transfer_config(root: str, executor: str) -> dict:
    """What `vllm serve --kv-transfer-config` takes (the README's line, with this root)."""
    return {
        "kv_connector": "OffloadingConnector",
        "kv_role": "kv_both",
        "kv_connector_extra_config": {
            "spec_name": "TieringOffloadingSpec",
            "cpu_bytes_to_use": 64 * BLOCK_BYTES,
            "secondary_tiers": [
                {"type": "kvtier", "root_dir": root, "executor": executor, "max_bytes": 1 << 30, "events": True}
            ],
        },
    }


def engine(cfg: dict):
    """The scheduler's offloading manager, as the OffloadingConnector builds it (one worker)."""
    extra = cfg["kv_connector_extra_config"]
    config = OffloadingConfig(
        groups=(OffloadingGroupConfig(16, ("model.layers.0.self_attn.attn",), 0),),
        worker_kv_bytes_per_block=BLOCK_BYTES,
        enable_kv_cache_events=True,
        extra_config=extra,
        engine_id=f"example-{uuid.uuid4().hex[:8]}",
        model=OffloadingModelConfig(name="example/llm", dtype="bfloat16"),
        cache=OffloadingCacheConfig(tokens_per_hash=16, blocks_per_chunk=1),
        parallel=OffloadingParallelConfig(0, 1, 1, 1, 1, 1, 0, 1, None, False),
    )
    spec = TieringOffloadingSpec(config)
    return spec.get_manager()


def block_keys(tokens: list[int]) -> list[bytes]:
    """Chained block hashes, as vLLM's prefix caching makes them (16 tokens a block)."""
    keys, parent = [], b"root"
    for i in range(0, len(tokens) - len(tokens) % 16, 16):
        parent = hashlib.sha256(parent + np.array(tokens[i : i + 16], dtype=np.int32).tobytes()).digest()
        keys.append(make_offload_key(parent, 0))
    return keys


def fill(key: bytes) -> np.ndarray:
    """The bytes the "GPU" holds for a block: derived from its key, so a load can be checked."""
    return np.frombuffer((key * (BLOCK_BYTES // len(key) + 1))[:BLOCK_BYTES], dtype=np.int8)


def run_request(manager, rows, name: str, keys: list[bytes]) -> dict:
    ctx = ReqContext(req_id=name)
    counts = {"hit": 0, "from_disk": 0, "computed": 0}
    with manager.lock:
        manager.on_new_request(ctx)
    # The scheduler asks block by block until the first miss (a prefix), stepping while a
    # promotion from the disk is pending.
    hits = 0
    for k in keys:
        while True:
            with manager.lock:
                r = manager.lookup(k, ctx)
            if r is LookupResult.HIT_PENDING:
                counts["from_disk"] += 1
                while True:
                    with manager.lock:
                        manager.on_schedule_end(STEP)
                        r = manager.lookup(k, ctx)
                    if r is not LookupResult.HIT_PENDING:
                        break
                    time.sleep(0.001)
            if r is not LookupResult.RETRY:
                break
        if r is not LookupResult.HIT:
            break
        hits += 1
    counts["hit"] = hits
    if hits:  # load the prefix to the "GPU" and check its bytes
        with manager.lock:
            spec = manager.prepare_load(keys[:hits], ctx)
        for k, c in zip(keys[:hits], spec.chunk_ids):
            assert (rows[int(c)] == fill(k)).all(), "a block came back with other bytes"
        with manager.lock:
            manager.complete_load(keys[:hits], ctx)
    new = keys[hits:]
    if new:  # compute and store the rest
        with manager.lock:
            out = manager.prepare_store(new, ctx)
        for k, c in zip(out.keys_to_store, out.store_spec.chunk_ids):
            rows[int(c)] = fill(k)
        with manager.lock:
            manager.complete_store(new, ctx)
        counts["computed"] = len(new)
    with manager.lock:
        manager.on_request_finished(ctx)
        manager.on_schedule_end(STEP)
    return counts


def settle(manager) -> None:
    while True:
        with manager.lock:
            manager.on_schedule_end(STEP)
            if not manager.has_pending_work():
                return
        time.sleep(0.001)


def session(manager, label: str, prompts: list[list[int]]) -> None:
    rows = np.asarray(manager.primary_tier.get_kv_memoryview())
    total = {"hit": 0, "from_disk": 0, "computed": 0}
    for i, p in enumerate(prompts):
        for k, v in run_request(manager, rows, f"{label}-{i}", block_keys(p)).items():
            total[k] += v
    settle(manager)
    storage = [e for e in manager.take_events() if e.medium.value == "STORAGE"]
    tier = manager.secondary_tiers[0]
    print(
        f"{label}: {total['hit']} blocks reused ({total['from_disk']} promoted from kvtier's tier), "
        f"{total['computed']} computed and stored; kvtier holds {tier.native.stats()['blocks']} blocks; "
        f"{sum(len(e.keys) for e in storage)} blocks in STORAGE events"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=None, help="kvtier's directory (default: a new temporary one)")
    p.add_argument("--executor", default="auto")
    args = p.parse_args()
    load_general_plugins()  # as vLLM does: registers "kvtier"
    root = args.root or tempfile.mkdtemp(prefix="kvtier-example-")
    cfg = kv_transfer_config(root, args.executor)
    print("--kv-transfer-config '" + json.dumps(cfg) + "'")

    rng = np.random.default_rng(7)
    system = rng.integers(0, 32000, 16 * 12).tolist()  # a 12-block shared system prompt

    def prompts(n: int) -> list[list[int]]:
        return [system + rng.integers(0, 32000, 16 * 4).tolist() for _ in range(n)]

    manager = engine(cfg)
    print(f"kvtier tier at {manager.secondary_tiers[0].native.rank_dir}")
    session(manager, "session 1", prompts(4))
    with manager.lock:
        manager.reset_cache()  # the CPU tier forgets; the disk keeps
        manager.on_reset_flushed()
    session(manager, "session 2 (after reset_cache)", prompts(4))
    manager.shutdown()

    manager = engine(cfg)  # a new engine on the same directory
    session(manager, "session 3 (new engine, same directory)", prompts(2))
    manager.shutdown()


if __name__ == "__main__":
    main()
