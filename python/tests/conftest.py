"""Drives kvtier's tier through vLLM 0.33's real TieringOffloadingSpec and
TieringOffloadingManager on CPU: the scheduler side exactly as the engine runs it, and the
workers' side as two SharedOffloadRegion mappings of the same /dev/shm rows, each worker
writing and reading its own slice of every row (what the GPU copy does on a real machine).
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from vllm.v1.kv_offload.base import LookupResult, ReqContext, ScheduleEndContext, make_offload_key
from vllm.v1.kv_offload.config import (
    OffloadingCacheConfig,
    OffloadingConfig,
    OffloadingGroupConfig,
    OffloadingModelConfig,
    OffloadingParallelConfig,
)
from vllm.v1.kv_offload.cpu.shared_offload_region import SharedOffloadRegion
from vllm.v1.kv_offload.tiering.spec import TieringOffloadingSpec

# As vLLM does in every process it starts: this runs kvtier's entry point, which registers
# the "kvtier" tier type.
from vllm.plugins import load_general_plugins

load_general_plugins()

#: Bytes one worker holds per block (one page per worker and row).
WORKER_BYTES = 4096
WORLD = 2
STEP = ScheduleEndContext(new_req_ids=(), preempted_req_ids=())
_seed = int(os.environ.get("KVTIER_TEST_SEED", "1234"))


def key(n: int, group: int = 0) -> bytes:
    """A 36-byte vLLM offload key: a 32-byte hash and the group index."""
    return make_offload_key(n.to_bytes(32, "big"), group)


def kvtier_entry(root: os.PathLike | str, **settings: Any) -> dict[str, Any]:
    return {"type": "kvtier", "root_dir": str(root), **settings}


def vllm_fs_entry(root: os.PathLike | str) -> dict[str, Any]:
    return {"type": "fs", "root_dir": str(root), "n_read_threads": 2, "n_write_threads": 2}


@dataclass
class Engine:
    """One engine instance: the scheduler's spec and manager, and the workers' mappings."""

    spec: TieringOffloadingSpec
    workers: list[SharedOffloadRegion]
    views: list[torch.Tensor]
    step_count: int = 0
    closed: bool = False
    _requests: itertools.count = field(default_factory=itertools.count)

    @property
    def manager(self):
        return self.spec.get_manager()

    @property
    def tier(self):
        return self.manager.secondary_tiers[0]

    def request(self) -> ReqContext:
        ctx = ReqContext(req_id=f"req-{next(self._requests)}")
        with self.manager.lock:
            self.manager.on_new_request(ctx)
        return ctx

    def step(self) -> None:
        with self.manager.lock:
            self.manager.on_schedule_end(STEP)
        self.step_count += 1

    def settle(self, timeout: float = 20.0) -> None:
        """Steps until no transfer is in flight."""
        deadline = time.monotonic() + timeout
        while True:
            self.step()
            with self.manager.lock:
                if not self.manager.has_pending_work():
                    return
            assert time.monotonic() < deadline, "transfers did not finish"
            time.sleep(0.001)

    def store(self, keys: list[bytes], ctx: ReqContext | None = None) -> dict[bytes, list[bytes]]:
        """Stores `keys` as the engine does: prepare_store, each worker fills its slice of
        the rows, complete_store (which cascades to the tiers). Returns each key's slices."""
        ctx = ctx or self.request()
        with self.manager.lock:
            out = self.manager.prepare_store(keys, ctx)
        assert out is not None, "the primary tier could not make room"
        data = {}
        for k, chunk in zip(out.keys_to_store, out.store_spec.chunk_ids):
            slices = [worker_bytes(k, w) for w in range(WORLD)]
            for w, view in enumerate(self.views):
                view[int(chunk)] = torch.frombuffer(bytearray(slices[w]), dtype=torch.int8)
            data[k] = slices
        with self.manager.lock:
            self.manager.complete_store(keys, ctx)
        return data

    def lookup(self, k: bytes, ctx: ReqContext) -> LookupResult:
        with self.manager.lock:
            return self.manager.lookup(k, ctx)

    def promote(
        self, keys: list[bytes], ctx: ReqContext | None = None, timeout: float = 20.0, retry_ok: bool = False
    ) -> list[LookupResult]:
        """Looks `keys` up until each one is a HIT or a MISS, stepping in between; returns
        the first answer of each key other than RETRY (so a promotion shows as HIT_PENDING).
        Unless `retry_ok` (vLLM's fs tier answers RETRY until its lookup thread has looked),
        a RETRY fails the test."""
        ctx = ctx or self.request()
        first: dict[bytes, LookupResult] = {}
        pending = list(keys)
        deadline = time.monotonic() + timeout
        while True:
            results = [self.lookup(k, ctx) for k in pending]
            assert retry_ok or LookupResult.RETRY not in results, "kvtier's lookups never answer RETRY"
            for k, r in zip(pending, results):
                if r is not LookupResult.RETRY:
                    first.setdefault(k, r)
            pending = [k for k, r in zip(pending, results) if r in (LookupResult.HIT_PENDING, LookupResult.RETRY)]
            if not pending:
                return [first[k] for k in keys]
            assert time.monotonic() < deadline, "promotions did not finish"
            self.step()
            time.sleep(0.001)

    def read(self, keys: list[bytes]) -> dict[bytes, list[bytes]]:
        """Each worker's slice of each (ready) key's row, read as the engine's load does."""
        ctx = self.request()
        with self.manager.lock:
            spec = self.manager.prepare_load(keys, ctx)
        out = {k: [bytes(v[int(c)].numpy().tobytes()) for v in self.views] for k, c in zip(keys, spec.chunk_ids)}
        with self.manager.lock:
            self.manager.complete_load(keys, ctx)
        return out

    def drop_primary(self) -> None:
        """Empties the primary tier (vLLM's reset_cache: tiers drain first), so later
        lookups must promote from the secondary tier."""
        with self.manager.lock:
            self.manager.reset_cache()
            self.manager.on_reset_flushed()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # The workers' views are exports of their mappings: drop them first.
        self.views.clear()
        for w in self.workers:
            w.cleanup()
        self.manager.shutdown()


def worker_bytes(k: bytes, worker: int) -> bytes:
    """The bytes worker `worker` holds for block `k`: seeded, distinct per key and worker."""
    rng = np.random.default_rng([_seed, worker, int.from_bytes(k[:8], "big") ^ int.from_bytes(k[24:36], "big")])
    return rng.integers(0, 256, WORKER_BYTES, dtype=np.uint8).tobytes()


def make_engine(
    tier_entry: dict[str, Any],
    *,
    chunks: int = 16,
    events: bool = False,
    engine_id: str | None = None,
    extra_tiers: list[dict[str, Any]] | None = None,
) -> Engine:
    """An engine with one CPU primary of `chunks` rows (two workers' pages per row) and the
    given secondary tier, built by vLLM's TieringOffloadingSpec from its extra config."""
    engine_id = engine_id or f"kvtier-test-{uuid.uuid4().hex[:12]}"
    config = OffloadingConfig(
        groups=(OffloadingGroupConfig(16, ("model.layers.0.self_attn.attn",), 0),),
        worker_kv_bytes_per_block=WORKER_BYTES,
        enable_kv_cache_events=events,
        extra_config={
            "spec_name": "TieringOffloadingSpec",
            "cpu_bytes_to_use": chunks * WORKER_BYTES * WORLD,
            "secondary_tiers": [tier_entry, *(extra_tiers or [])],
        },
        engine_id=engine_id,
        model=OffloadingModelConfig(name="kvtier/test-model", dtype="bfloat16"),
        cache=OffloadingCacheConfig(tokens_per_hash=16, blocks_per_chunk=1),
        parallel=OffloadingParallelConfig(
            rank=0,
            world_size=WORLD,
            tp_size=WORLD,
            pp_size=1,
            pcp_size=1,
            dcp_size=1,
            data_parallel_index=0,
            data_parallel_size=1,
            data_parallel_rank_local=None,
            is_parallelism_agnostic=False,
        ),
    )
    spec = TieringOffloadingSpec(config)
    spec.get_manager()  # maps the primary region (the scheduler's mapping)
    workers, views = [], []
    for rank in range(WORLD):
        region = SharedOffloadRegion(
            engine_id=engine_id,
            num_chunks=spec.num_chunks,
            rank=rank,
            kv_bytes_per_chunk=spec.kv_bytes_per_chunk,
            cpu_page_size=spec.cpu_page_size_per_worker,
        )
        workers.append(region)
        views.append(region.create_next_worker_view(WORKER_BYTES))
    return Engine(spec=spec, workers=workers, views=views)


@pytest.fixture
def engines():
    """Engines made by a test, closed after it (shutdown of the manager and the mappings)."""
    made: list[Engine] = []

    def make(*args, **kwargs) -> Engine:
        e = make_engine(*args, **kwargs)
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


def uring_available() -> bool:
    """Whether io_uring can be set up here (the kvtier tier refuses `executor = "uring"`
    otherwise, and `auto` falls back to threads)."""
    import kvtier

    buf = bytearray(4096)
    root = f"/tmp/kvtier-uring-probe-{os.getpid()}"
    try:
        t = kvtier.Tier(memoryview(buf), f'{{"root_dir": "{root}", "executor": "uring", "format": "vllm"}}')
    except OSError:
        return False
    t.shutdown()
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    return True


def files_under(path: str) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(path):
        out.extend(os.path.join(dirpath, n) for n in names)
    return sorted(out)
