"""kvtier's tier inside vLLM 0.33's real tiering stack (see conftest.py for the harness)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest
import torch

from conftest import WORKER_BYTES, WORLD, files_under, key, kvtier_entry, uring_available, vllm_fs_entry
from vllm.v1.kv_offload.base import LookupResult, Medium, ReqContext
from vllm.v1.kv_offload.tiering.base import TransferJob
from vllm.v1.kv_offload.tiering.factory import SecondaryTierFactory
from vllm.v1.kv_offload.tiering.spec import TieringOffloadingSpec

import kvtier
from kvtier.vllm import KvtierTier, tier_config

EXECUTORS = ["threaded", "uring", "sim", "auto"]


def executor_param(name: str):
    if name == "uring" and not uring_available():
        pytest.fail("io_uring cannot be set up on this machine: the uring executor cannot be tested")
    return name


# -- registration ---------------------------------------------------------------------------


def test_the_plugin_entry_point_registers_the_short_name():
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    assert SecondaryTierFactory.get_tier_class({"type": "kvtier"}) is KvtierTier
    # The out-of-tree spelling works without the plugin too.
    assert SecondaryTierFactory.get_tier_class({"type": "KvtierTier", "module_path": "kvtier.vllm"}) is KvtierTier


# -- store -> cascade -> files, promotion, both workers' slices ------------------------------


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("fmt", ["native", "vllm"])
def test_store_cascades_and_promotion_brings_both_workers_slices_back(tmp_path, engines, executor, fmt):
    e = engines(kvtier_entry(tmp_path, executor=executor_param(executor), format=fmt))
    tier = e.tier
    assert isinstance(tier, KvtierTier)
    keys = [key(i) for i in range(6)]
    data = e.store(keys)
    e.settle()
    stats = tier.native.stats()
    assert stats["blocks_stored"] == 6 and stats["blocks"] == 6
    row = WORKER_BYTES * WORLD
    if executor != "sim":  # the sim executor's disk is in memory
        for k in keys:
            path = tier.block_path(k)
            with open(path, "rb") as f:
                content = f.read()
            if fmt == "vllm":
                assert content == b"".join(data[k]), "vllm format: the raw row"
            else:
                assert len(content) == tier.native.file_bytes > row
                assert content[-row:] == b"".join(data[k])
        assert os.path.exists(os.path.join(tier.base_path, "config.json"))

    e.drop_primary()
    first = e.promote(keys)
    assert first == [LookupResult.HIT_PENDING] * len(keys), "a block on disk promotes at once"
    assert e.read(keys) == data, "both workers' slices come back byte for byte"


def test_lookups_answer_at_once_and_never_retry(tmp_path, engines):
    e = engines(kvtier_entry(tmp_path, executor="threaded"))
    e.store([key(1)])
    e.settle()
    ctx = ReqContext(req_id="direct")
    assert e.tier.lookup(key(1), ctx) is LookupResult.HIT
    assert e.tier.lookup(key(2), ctx) is LookupResult.MISS
    e.drop_primary()
    assert e.promote([key(1), key(2)]) == [LookupResult.HIT_PENDING, LookupResult.MISS]


# -- the region engine ----------------------------------------------------------------------


def regions_entry(device: os.PathLike | str, **settings: Any) -> dict[str, Any]:
    """A kvtier entry on the region engine: a device of 8 regions of 256 KiB."""
    return {"type": "kvtier", "engine": "regions", "path": str(device), "capacity": "2112K", "region_bytes": "256K", **settings}


@pytest.mark.parametrize("executor", EXECUTORS)
def test_the_region_engine_stores_promotes_and_recovers(tmp_path, engines, executor):
    device = tmp_path / "kv.dev"
    entry = regions_entry(device, executor=executor_param(executor))
    e = engines(entry)
    keys = [key(i) for i in range(6)]
    data = e.store(keys)
    e.settle()
    stats = e.tier.native.stats()
    assert stats["blocks_stored"] == 6 and stats["blocks"] == 6, stats
    assert e.tier.native.location == str(device)
    with pytest.raises(RuntimeError, match="no file per block"):
        e.tier.block_path(keys[0])
    e.drop_primary()
    assert e.promote(keys) == [LookupResult.HIT_PENDING] * len(keys), "a block on the device promotes at once"
    assert e.read(keys) == data, "both workers' slices come back byte for byte"
    e.close()
    if executor == "sim":  # the sim executor's device is in memory
        return
    assert device.stat().st_size == 2112 << 10, "the device is preallocated at its capacity"
    again = engines(entry)
    assert again.tier.native.stats()["startup_blocks_indexed"] == 6, "recovery indexes every block"
    assert again.promote(keys) == [LookupResult.HIT_PENDING] * len(keys)
    assert again.read(keys) == data


def test_the_region_engine_evicts_within_its_capacity(tmp_path, engines):
    e = engines(regions_entry(tmp_path / "kv.dev", executor="threaded"), chunks=64)
    # 8 regions of 256 KiB, records of 12 KiB: fewer than 200 blocks fit, far fewer than 400.
    for start in range(0, 400, 40):
        e.store([key(i) for i in range(start, start + 40)])
        e.settle()
    stats = e.tier.native.stats()
    assert stats["regions_reclaimed"] > 0 and stats["evicted"] > 0, stats
    assert stats["blocks"] < 200


def test_region_engine_settings_are_checked(tmp_path):
    spec = None
    with pytest.raises(ValueError, match="'path'"):
        tier_config({"engine": "regions", "capacity": "8M"}, spec)
    with pytest.raises(ValueError, match="'capacity'"):
        tier_config({"engine": "regions", "path": str(tmp_path / "d")}, spec)
    with pytest.raises(ValueError, match="not both"):
        tier_config({"engine": "regions", "path": str(tmp_path / "d"), "capacity": 1, "max_bytes": 1}, spec)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['format', 'root_dir'\] for engine 'regions'"):
        tier_config({"engine": "regions", "path": "d", "capacity": 1, "format": "vllm", "root_dir": "r"}, spec)
    with pytest.raises(ValueError, match="engine 'blocks'"):
        tier_config({"engine": "blocks"}, spec)


# -- reset, restart, shutdown ---------------------------------------------------------------


def test_reset_keeps_the_tier_and_restart_finds_the_blocks(tmp_path, engines):
    entry = kvtier_entry(tmp_path, executor="threaded")
    e = engines(entry)
    keys = [key(i) for i in range(8)]
    data = e.store(keys)
    e.settle()
    e.drop_primary()  # reset_cache: the tier drains, the primary empties
    assert e.tier.native.stats()["blocks"] == 8
    base = e.tier.base_path
    e.close()
    assert e.tier.native.in_flight == 0

    again = engines(entry)
    assert again.tier.base_path == base
    assert again.tier.native.stats()["startup_blocks_indexed"] == 8
    assert again.promote(keys) == [LookupResult.HIT_PENDING] * 8
    assert again.read(keys) == data


def test_shutdown_removes_nothing_that_must_stay(tmp_path, engines):
    e = engines(kvtier_entry(tmp_path, executor="threaded", format="native"))
    keys = [key(i) for i in range(5)]
    e.store(keys)
    # Shut down with the cascade jobs possibly still in flight: they finish first.
    rank_dir = e.tier.native.rank_dir
    base = e.tier.base_path
    paths = [e.tier.block_path(k) for k in keys]
    e.close()
    left = files_under(str(tmp_path))
    assert os.path.join(base, "config.json") in left
    assert all(p in left for p in paths), "every stored block stays"
    assert not [p for p in left if p.endswith(".tmp")], "no temp file left"
    assert not [p for p in os.listdir(rank_dir) if p.startswith(".kvtier-open")], "clean shutdown: no marker"


# -- corruption -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["native", "vllm"])
def test_a_corrupt_block_is_a_miss_and_is_removed(tmp_path, engines, fmt):
    e = engines(kvtier_entry(tmp_path, executor="threaded", format=fmt))
    keys = [key(i) for i in range(3)]
    data = e.store(keys)
    e.settle()
    bad = e.tier.block_path(keys[1])
    if fmt == "native":
        with open(bad, "r+b") as f:  # one flipped bit in the payload
            f.seek(-100, os.SEEK_END)
            b = f.read(1)
            f.seek(-100, os.SEEK_END)
            f.write(bytes([b[0] ^ 1]))
    else:  # the vllm format has no checksum: a torn (short) file is what it can detect
        with open(bad, "r+b") as f:
            f.truncate(100)
    e.drop_primary()
    ctx = e.request()
    assert [e.lookup(k, ctx) for k in keys] == [LookupResult.HIT_PENDING] * 3
    e.settle()
    # The promotion failed for the corrupt block only; the others loaded.
    assert [e.lookup(k, ctx) for k in keys] == [LookupResult.HIT, LookupResult.MISS, LookupResult.HIT]
    assert not os.path.exists(bad), "the corrupt file is removed"
    assert e.tier.native.stats()["corrupt"] == 1
    assert e.read([keys[0], keys[2]]) == {keys[0]: data[keys[0]], keys[2]: data[keys[2]]}


def test_partial_failure_reports_the_keys_that_loaded(tmp_path):
    buf = np.zeros((4, 4096), dtype=np.uint8)
    t = kvtier.Tier(memoryview(buf), json.dumps({"root_dir": str(tmp_path), "executor": "threaded", "format": "vllm"}))
    ks = [key(1), key(2), key(3)]
    buf[:3] = 7
    t.submit("store", ks, np.array([0, 1, 2], dtype=np.int32), False)
    t.wait_idle()
    assert t.poll() == [("store", True, None, pytest.approx(0, abs=60), 3 * 4096)]
    os.remove(t.block_path(ks[1]))
    buf[:] = 0
    job = object()
    t.submit(job, ks, [3, 2, 1], True)
    t.wait_idle()
    [(job_id, ok, successful, _, nbytes)] = t.poll()
    assert job_id is job and not ok and nbytes == 2 * 4096
    assert successful == (ks[0], ks[2]) and successful[0] is ks[0], "the key objects as given"
    assert (buf[3] == 7).all() and (buf[1] == 7).all() and (buf[2] == 0).all()
    t.shutdown()


# -- capacity and events --------------------------------------------------------------------


def test_capacity_bound_and_events(tmp_path, engines):
    e = engines(kvtier_entry(tmp_path, executor="threaded", max_blocks=4, events=True), events=True)
    for i in range(8):
        e.store([key(i)])
        e.settle()
    events = [ev for ev in e.manager.take_events() if ev.medium is Medium.STORAGE]
    stored = [k for ev in events if not ev.removed for k in ev.keys]
    removed = [k for ev in events if ev.removed for k in ev.keys]
    assert stored == [key(i) for i in range(8)]
    assert removed == [key(i) for i in range(4)], "the least recently used blocks go first"
    stats = e.tier.native.stats()
    assert stats["blocks"] == 4 and stats["evicted"] == 4
    on_disk = [p for p in files_under(e.tier.native.rank_dir) if p.endswith(".bin")]
    assert len(on_disk) == 4


def test_max_bytes_is_a_capacity_in_block_files(tmp_path, engines):
    e = engines(kvtier_entry(tmp_path, executor="threaded", format="vllm", max_bytes=3 * WORKER_BYTES * WORLD + 1))
    for i in range(5):
        e.store([key(i)])
        e.settle()
    assert e.tier.native.stats()["blocks"] == 3


def test_events_need_the_global_flag(tmp_path, engines):
    e = engines(kvtier_entry(tmp_path, executor="threaded", events=True), events=False)
    e.store([key(1)])
    e.settle()
    assert [ev for ev in e.manager.take_events() if ev.medium is Medium.STORAGE] == []


def test_metrics_through_vllms_hooks(tmp_path, engines):
    entry = kvtier_entry(tmp_path, executor="threaded")
    defs = TieringOffloadingSpec.build_metric_definitions({"secondary_tiers": [entry]})
    assert "vllm:kv_offload_kvtier_blocks_stored" in defs
    e = engines(entry)
    e.store([key(1), key(2)])
    e.settle()
    reduced = e.manager.get_stats().reduce()
    assert reduced["vllm:kv_offload_kvtier_blocks_stored:('kvtier',)"] == 2
    assert reduced["vllm:kv_offload_kvtier_blocks:('kvtier',)"] == 2
    info = e.manager.config_info()[1]
    assert info["kvtier_format"] == "native" and info["kvtier_executor"] == "threaded"


# -- configuration and the primary buffer ----------------------------------------------------


def _tier(view, spec=None, **settings):
    from vllm.v1.kv_offload.base import OffloadingKVEventsConfig

    class Spec:
        def __init__(self):
            from vllm.v1.kv_offload.config import (
                OffloadingCacheConfig,
                OffloadingConfig,
                OffloadingModelConfig,
                OffloadingParallelConfig,
            )

            self.config = OffloadingConfig(
                groups=(),
                worker_kv_bytes_per_block=0,
                enable_kv_cache_events=False,
                extra_config={},
                engine_id="cfg",
                model=OffloadingModelConfig(name="m", dtype="float16"),
                cache=OffloadingCacheConfig(tokens_per_hash=16, blocks_per_chunk=1),
                parallel=OffloadingParallelConfig(0, 1, 1, 1, 1, 1, 0, 1, None, False),
            )
            self.blocks_per_chunk = 1
            self.kv_events_config = OffloadingKVEventsConfig(False, False)

    return KvtierTier(spec or Spec(), view, "kvtier", **settings)


def test_unknown_keys_are_named(tmp_path):
    view = memoryview(np.zeros((2, 4096), dtype=np.int8))
    with pytest.raises(ValueError, match=r"\['executr', 'n_threads'\]"):
        _tier(view, root_dir=str(tmp_path), executr="uring", n_threads=3)
    with pytest.raises(ValueError, match="root_dir"):
        _tier(view)
    with pytest.raises(ValueError, match="model_name"):
        _tier(view, root_dir=str(tmp_path), model_name="x")
    with pytest.raises(ValueError, match="read_workers"):
        _tier(view, root_dir=str(tmp_path), read_workers=2, n_read_threads=3)
    with pytest.raises(ValueError, match="not both"):
        _tier(view, root_dir=str(tmp_path), max_blocks=2, max_bytes=1 << 20)
    with pytest.raises(ValueError, match="executor"):
        _tier(view, root_dir=str(tmp_path), executor="tape")
    with pytest.raises(ValueError, match="Locality"):
        _tier(view, root_dir=str(tmp_path), locality="local")
    assert not os.listdir(tmp_path), "a refused config creates nothing"


def test_what_the_tier_creates_is_owner_only_unless_file_mode_says(tmp_path):
    """Issue 11, item 27: directories, config.json and the open marker are owner-only by
    default; ``file_mode`` sets other bits (the umask still applies); a mode with more than
    read and write bits is refused, naming the key."""
    view = memoryview(np.zeros((2, 4096), dtype=np.int8))
    umask = os.umask(0)
    os.umask(umask)
    cases = [("default", {}, 0o600, 0o700), ("group", {"file_mode": "0640"}, 0o640, 0o750)]
    for name, settings, file_bits, dir_bits in cases:
        root = tmp_path / name
        tier = _tier(view, root_dir=str(root), **settings)
        seen = 0
        for dirpath, dirnames, filenames in os.walk(root):
            assert os.stat(dirpath).st_mode & 0o7777 == dir_bits & ~umask, dirpath
            for f in filenames:
                path = os.path.join(dirpath, f)
                assert os.stat(path).st_mode & 0o7777 == file_bits & ~umask, path
                seen += 1
        assert seen >= 2, "config.json and the open marker"
        del tier
    with pytest.raises(ValueError, match="file_mode"):
        _tier(view, root_dir=str(tmp_path / "bad"), file_mode="0755")


def test_the_primary_buffer_is_checked(tmp_path):
    root = str(tmp_path)
    ro = memoryview(bytes(8192)).cast("B", (2, 4096))
    with pytest.raises(ValueError, match="read-only"):
        _tier(ro, root_dir=root)
    strided = memoryview(np.zeros((4, 4096), dtype=np.int8)[::2])
    with pytest.raises(ValueError, match="not contiguous"):
        _tier(strided, root_dir=root)
    small = memoryview(np.zeros((4, 16), dtype=np.int8))
    with pytest.raises(ValueError, match="multiple of 4096"):
        _tier(small, root_dir=root)  # native needs page-sized rows
    with pytest.raises(ValueError, match="multiple of 4096.*an fs tier"):
        _tier(small, engine="regions", path=str(tmp_path / "kv.dev"), capacity="2M")  # records are native
    with pytest.raises(ValueError, match="o_direct"):
        _tier(small, root_dir=root, format="vllm", o_direct="on")
    # Rows that cannot use O_DIRECT work buffered in the vllm format.
    t = _tier(small, root_dir=root, format="vllm", executor="threaded")
    assert t.native.block_bytes == 16 and not t.native.rows_direct_aligned
    t.shutdown()


def test_out_of_range_slots_fail_the_job_and_bad_input_raises(tmp_path):
    view = memoryview(np.zeros((2, 4096), dtype=np.int8))
    t = _tier(view, root_dir=str(tmp_path), executor="threaded")
    ctx = ReqContext(req_id="r")
    t.submit_store(TransferJob(1, [key(1)], np.array([2], dtype=np.int64), False, ctx))
    t.drain_jobs()
    [r] = t.get_finished_jobs()
    assert (r.job_id, r.success) == (1, False)
    with pytest.raises(ValueError, match="2 keys but 1 slots"):
        t.submit_store(TransferJob(2, [key(1), key(2)], np.array([0], dtype=np.int32), False, ctx))
    with pytest.raises(ValueError, match="key"):
        t.submit_store(TransferJob(3, [b"x" * 200], np.array([0], dtype=np.int32), False, ctx))
    assert t.native.in_flight == 0 and list(t.get_finished_jobs()) == []
    t.shutdown()
    t.shutdown()  # idempotent


# -- interop with vLLM's own fs tier ---------------------------------------------------------


@pytest.mark.parametrize("writer", ["vllm", "kvtier"])
def test_vllm_format_directories_are_shared_with_vllms_fs_tier(tmp_path, engines, writer):
    kv = kvtier_entry(tmp_path, executor="auto", format="vllm")
    fs = vllm_fs_entry(tmp_path)
    w = engines(fs if writer == "vllm" else kv)
    keys = [key(i) for i in range(6)]
    data = w.store(keys)
    w.settle()
    base = w.tier.base_path if writer == "kvtier" else w.tier.file_mapper.base_path
    w.close()

    r = engines(kv if writer == "vllm" else fs)
    first = r.promote(keys, retry_ok=writer == "kvtier")
    assert LookupResult.MISS not in first
    assert r.read(keys) == data
    if writer == "vllm":
        # kvtier indexed vLLM's files at start-up and computed the same namespace.
        assert r.tier.native.stats()["startup_blocks_indexed"] == 6
        assert r.tier.base_path == base
    else:
        assert r.tier.file_mapper.base_path == base
