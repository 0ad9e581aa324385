"""A pytest plugin that runs vLLM 0.33's own tiering tests with kvtier's tier in place of
vLLM's tiers. None of vLLM's test code is in this repository: `run.sh` extracts the tests from
vLLM's 0.33.0 source release and runs them with ``-p kvtier_substitute``.

Loaded before the test modules are imported, it replaces, in vLLM's modules and in its tier
factory:

- ``FileSystemTierManager`` (vLLM's ``fs`` tier; ``test_fs_tier.py``) by ``KvtierAsFsTier``:
  ``KvtierTier`` in the ``vllm`` format (the same files at the same paths), taking the ``fs``
  tier's constructor arguments. Executor: ``$KVTIER_VLLM_EXECUTOR`` (default ``auto``).
- ``ExampleSecondaryTierManager`` (the synchronous in-memory tier the orchestrator tests of
  ``test_tiering_offloading.py`` drive) by ``KvtierAsExampleTier``: ``KvtierTier`` on the sim
  executor (an in-memory disk, as the example tier keeps its blocks in memory), made
  synchronous as the example tier is (each job is waited for and its result queued at
  submission), with the example tier's test-facing surface: ``chunks[key] = True`` stores the
  key through kvtier, ``completed_jobs`` is the queue of results, ``get_num_chunks()`` counts
  the blocks kvtier holds.

Tests that do not apply to kvtier are deselected, each with its reason (``NOT_APPLICABLE``),
and the closing summary says how many of the tests that passed had a kvtier tier in them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest

from vllm.v1.kv_offload.base import OffloadingKVEventsConfig, OffloadKey
from vllm.v1.kv_offload.config import (
    OffloadingCacheConfig,
    OffloadingConfig,
    OffloadingModelConfig,
    OffloadingParallelConfig,
)
from vllm.v1.kv_offload.tiering import factory as tier_factory
from vllm.v1.kv_offload.tiering.base import JobResult, TransferJob
from vllm.v1.kv_offload.tiering.example import manager as example_module
from vllm.v1.kv_offload.tiering.fs import manager as fs_module

from kvtier.vllm import KvtierTier

EXECUTOR = os.environ.get("KVTIER_VLLM_EXECUTOR", "auto")

#: Tests that cannot apply to kvtier's tier, by the end of their node id, with the reason.
NOT_APPLICABLE: dict[str, str] = {}


def _na(reason: str, *tests: str) -> None:
    for t in tests:
        NOT_APPLICABLE[t] = reason


_PRIVATE_LOOKUP = (
    "asserts on the private state of vLLM's asynchronous lookup thread (_lookup_manager, "
    "_lookup_batch); kvtier has no lookup thread: its lookups are answered from its index"
)
_na(
    _PRIVATE_LOOKUP,
    "test_fs_tier.py::test_failed_load_corrects_verdict_and_removes_corrupt_file[True]",
    "test_fs_tier.py::test_failed_load_corrects_verdict_and_removes_corrupt_file[False]",
    "test_fs_tier.py::test_batched_partial_load_failure_keeps_loaded_blocks[True]",
    "test_fs_tier.py::test_batched_partial_load_failure_keeps_loaded_blocks[False]",
)
_na(
    "expects RETRY from a lookup while vLLM's lookup thread has not looked yet; kvtier "
    "answers at once and never RETRY (a design goal: no scheduler round trip)",
    "test_fs_tier.py::test_failed_load_after_abort_does_not_break_newer_probe",
)
_na(
    "injects faults by replacing vLLM's own I/O functions (fs.io / fs.manager "
    "batch_store_block, os.replace); kvtier's I/O is its executor's (its faults are tested by "
    "kvtier's sim executor and conformance suite)",
    "test_fs_tier.py::test_store_accepts_block_published_by_another_writer",
    "test_fs_tier.py::test_mixed_job_results_emit_event_only_for_successful_job",
    "test_fs_tier.py::test_partially_failed_store_emits_no_event",
)
_na(
    "reads vLLM's private attributes (_use_o_direct, events, _store_job_keys) and patches "
    "vLLM's probe_o_direct; kvtier probes O_DIRECT itself and keeps no such attributes",
    "test_fs_tier.py::test_store_load_roundtrip_without_o_direct",
    "test_fs_tier.py::test_events_disabled_by_default",
    "test_fs_tier.py::test_events_require_global_kv_events_flag",
)
_na(
    "tests vLLM's DualQueueThreadPool and its C extension, not a tier",
    "test_fs_tier.py::test_wait_idle_blocks_until_tasks_complete",
    "test_fs_tier.py::test_batch_lookup_c_extension",
)
_na(
    "reads vLLM's thread pool (_pool); kvtier also finishes queued stores at shutdown instead "
    "of discarding them, so what vLLM cascaded is on disk at the next start",
    "test_fs_tier.py::test_shutdown_discards_pending_tasks",
)
_na(
    "expects a batched load to stop at its first bad block and fail the rest; kvtier loads "
    "every block of a batch on its own, so the others load and are reported in "
    "successful_keys (the test's cached per-request MISS verdicts are vLLM's lookup thread's)",
    "test_fs_tier.py::test_batched_load_first_block_fails_marks_whole_batch[True]",
    "test_fs_tier.py::test_batched_load_first_block_fails_marks_whole_batch[False]",
)
_na(
    "filters tiers by the example tier's medium (CPU); kvtier's tier is a STORAGE tier",
    "test_tiering_offloading.py::TestTieringOffloadingManager::test_tier_filter_skips_filtered_secondary[non_matching_medium]",
    "test_tiering_offloading.py::TestTieringOffloadingManager::test_tier_filter_allows_matching_secondary[explicit_cpu]",
)
_na(
    "tests the example tier's own config_info (example_info=custom_param), not the orchestrator",
    "test_tiering_offloading.py::TestExampleSecondaryTierManager::test_config_info_keys_match_the_filled_values",
)


# -- the substitutes ---------------------------------------------------------------------------

constructed = 0


class _FileMapperView:
    """What the fs tier tests read of vLLM's FileMapper, answered by kvtier's namespace."""

    def __init__(self, tier: KvtierTier) -> None:
        self._tier = tier
        self.base_path = tier.base_path

    def get_file_name(self, key: OffloadKey) -> str:
        return self._tier.block_path(key)

    def get_config_file_path(self) -> str:
        return os.path.join(self.base_path, "config.json")


class _ResolvedLookups:
    """The test helper ``lookup_and_wait`` waits until vLLM's lookup thread has queued a
    result (``_lookup_manager._pending_results``). kvtier resolves lookups at once: there is
    always a result, so the wait ends immediately. Nothing asserts on this."""

    class _Queue:
        def empty(self) -> bool:
            return False

    _pending_results = _Queue()


class KvtierAsFsTier(KvtierTier):
    """kvtier's tier in the ``vllm`` format, built from vLLM ``fs`` tier arguments."""

    def __init__(
        self,
        offloading_spec,
        primary_kv_view: memoryview,
        tier_type: str,
        root_dir: str,
        n_read_threads: int = 16,
        n_write_threads: int = 16,
        enable_kv_events: bool = False,
        locality: str | None = None,
        backpressure_detector=None,
    ) -> None:
        global constructed
        super().__init__(
            offloading_spec,
            primary_kv_view,
            tier_type,
            backpressure_detector,
            locality=locality,
            root_dir=root_dir,
            format="vllm",
            executor=EXECUTOR,
            read_workers=n_read_threads,
            write_workers=n_write_threads,
            events=enable_kv_events,
        )
        constructed += 1
        self.file_mapper = _FileMapperView(self)
        self._lookup_manager = _ResolvedLookups()


def _spec_for():
    """The orchestrator tests hand their example tiers a MagicMock spec: kvtier needs a real
    run config to name its namespace, so the substitute uses a fixed one."""

    class Spec:
        blocks_per_chunk = 1
        kv_events_config = OffloadingKVEventsConfig(False, False)
        config = OffloadingConfig(
            groups=(),
            worker_kv_bytes_per_block=0,
            enable_kv_cache_events=False,
            extra_config={},
            engine_id="kvtier-substitute",
            model=OffloadingModelConfig(name="kvtier-substitute", dtype="int8"),
            cache=OffloadingCacheConfig(tokens_per_hash=16, blocks_per_chunk=1),
            parallel=OffloadingParallelConfig(0, 1, 1, 1, 1, 1, 0, 1, None, True),
        )

    return Spec()


class KvtierAsExampleTier(KvtierTier):
    """kvtier's tier on the sim executor, synchronous like the example tier it replaces."""

    def __init__(
        self,
        offloading_spec,
        primary_kv_view: memoryview,
        tier_type: str,
        custom_param: int = 0,
        backpressure_detector=None,
    ) -> None:
        global constructed
        # The sim executor's disk is in memory: nothing is written under this directory.
        self._root = tempfile.mkdtemp(prefix="kvtier-substitute-")
        super().__init__(
            _spec_for(),
            primary_kv_view,
            tier_type,
            backpressure_detector,
            root_dir=self._root,
            format="vllm",
            executor="sim",
        )
        constructed += 1
        self.completed_jobs: list[JobResult] = []
        self.chunks = _Chunks(self)
        self._seeding = 0

    def _settle(self) -> None:
        # Not self.drain_jobs(): tests count the manager's calls of it.
        self.native.wait_idle()
        for result in super().get_finished_jobs():
            if not (isinstance(result.job_id, tuple) and result.job_id[0] == "seed"):
                self.completed_jobs.append(result)

    def submit_store(self, job_metadata: TransferJob) -> None:
        super().submit_store(job_metadata)
        self._settle()

    def submit_load(self, job_metadata: TransferJob) -> None:
        super().submit_load(job_metadata)
        self._settle()

    def get_finished_jobs(self) -> Iterable[JobResult]:
        results, self.completed_jobs = self.completed_jobs, []
        return results

    def get_num_chunks(self) -> int:
        return self.native.stats()["blocks"]

    def seed(self, key: OffloadKey) -> None:
        """Makes ``key`` present, by storing it through kvtier (from row 0)."""
        self._seeding += 1
        self.native.submit(("seed", self._seeding), [key], np.zeros(1, dtype=np.int64), False)
        self._settle()
        assert self.native.lookup(key), "seeding a block through kvtier failed"

    def shutdown(self) -> None:
        super().shutdown()
        os.rmdir(self._root)


class _Chunks:
    """``tier.chunks[key] = True`` (how the tests put a block into the example tier) stores
    the key through kvtier; ``key in tier.chunks`` asks kvtier."""

    def __init__(self, tier: KvtierAsExampleTier) -> None:
        self._tier = tier

    def __setitem__(self, key: OffloadKey, value: Any) -> None:
        assert value is True
        self._tier.seed(key)

    def __contains__(self, key: OffloadKey) -> bool:
        return bool(self._tier.native.lookup(key))

    def __len__(self) -> int:
        return self._tier.get_num_chunks()


fs_module.FileSystemTierManager = KvtierAsFsTier
example_module.ExampleSecondaryTierManager = KvtierAsExampleTier
tier_factory.SecondaryTierFactory._registry["fs"] = lambda: KvtierAsFsTier
tier_factory.SecondaryTierFactory._registry["example"] = lambda: KvtierAsExampleTier


# -- pytest hooks ------------------------------------------------------------------------------

_with_kvtier: set[str] = set()
_passed: set[str] = set()


def pytest_collection_modifyitems(config, items):
    keep, dropped = [], []
    for item in items:
        if any(item.nodeid.endswith(t) for t in NOT_APPLICABLE):
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
    config._kvtier_not_applicable = dropped


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    # Setup included: most tests get their tiers from fixtures.
    before = constructed
    try:
        return (yield)
    finally:
        if constructed != before:
            _with_kvtier.add(item.nodeid)


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed:
        _passed.add(report.nodeid)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tr = terminalreporter
    dropped = getattr(config, "_kvtier_not_applicable", [])
    tr.section("kvtier substituted for vLLM's tiers")
    tr.write_line(f"executor for the fs tier tests: {EXECUTOR}")
    tr.write_line(
        f"passed with a kvtier tier in the test: {len(_passed & _with_kvtier)}; "
        f"passed without building a tier: {len(_passed - _with_kvtier)}"
    )
    tr.write_line(f"not applicable (deselected): {len(dropped)}")
    for item in dropped:
        reason = next(r for t, r in NOT_APPLICABLE.items() if item.nodeid.endswith(t))
        tr.write_line(f"  {item.nodeid}: {reason}")
