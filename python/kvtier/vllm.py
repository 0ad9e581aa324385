"""kvtier's disk tier (the FS tier, or the region engine) as a vLLM 0.33 secondary tier.

``KvtierTier`` is a ``SecondaryTierManager``: vLLM's ``TieringOffloadingSpec`` builds it from an
entry of ``secondary_tiers`` and its ``TieringOffloadingManager`` drives it from the scheduler,
exactly as it drives vLLM's own ``fs`` tier. Select it with ``"type": "kvtier"`` (the short
name this package registers through its ``vllm.general_plugins`` entry point) or with
``"type": "KvtierTier", "module_path": "kvtier.vllm"``.

What differs from vLLM's ``fs`` tier:

- Lookups are answered at once from kvtier's in-memory index (HIT or MISS, never RETRY): no
  lookup thread, no file-system call on the scheduler thread.
- Blocks move on kvtier's executor (``executor``: ``threaded``, the default here; ``auto``
  picks io_uring where it can be set up, else worker threads; ``uring``; ``sim``, an in-memory
  disk) with the GIL released; polling takes the GIL only to build the results. The default is
  ``threaded``, not kvtier's usual ``auto``, because the tier runs on vLLM's scheduler thread:
  the uring executor checksums each block (CRC-32C of the payload, native format) on the thread
  that submits and polls, which here is the scheduler's (measured with ``kvtier bench vllm`` at
  256 KiB blocks: 0.8-1.5 ms of scheduler CPU per step in the tier, against 0.1 ms with worker
  threads, which checksum on their own threads).
- ``format = "vllm"`` writes exactly what vLLM's ``fs`` tier writes, at the
  same paths (the namespace comes from vLLM's own ``FileMapper``, and the tier checks that its
  directory is the one vLLM computes), so a deployment can switch between the two tiers either
  way and keep its cache. ``format = "native"`` (the default, as in kvtier's TOML) adds a checksummed header to every block (a
  corrupt or torn block is detected and removed, never served) in a namespace of its own.
- A capacity bound (``max_blocks`` or ``max_bytes``): a store beyond it evicts the least
  recently used block; with events on, evictions are announced as removed STORAGE events.
- A block found corrupt by a load is removed and reported missing; a transient error keeps it.

Configuration keys mirror kvtier's TOML ``fs`` tier table: ``root_dir`` (required),
``executor``, ``format``, ``max_blocks``, ``max_bytes``, ``fsync``, ``o_direct``
(``auto``/``on``/``off``), ``probe_on_miss``, ``events``, ``read_workers``, ``write_workers``,
``file_mode`` (permission bits of what the tier creates: owner-only ``0o600`` by default; an
integer such as ``0o640`` or a string of octal digits such as ``"0640"``);
vLLM's ``fs`` tier spellings ``n_read_threads``, ``n_write_threads`` and ``enable_kv_events``
are accepted for the same settings, and ``locality`` as in vLLM. Any other key is an error
that names it. The run-config fields that name the namespace (model, dtype, parallelism, KV
groups...) are not settings: they come from vLLM's offloading spec, as vLLM's ``fs`` tier
computes them.

``engine = "regions"`` runs kvtier's region engine instead of a file per block: one device (a
file it creates and preallocates, or a block device) that one process owns, blocks appended
into regions with large writes and evicted a region at a time; the fastest disk tier, never
shared. Its keys mirror kvtier's TOML ``regions`` table: ``path`` (required), ``capacity``
(bytes, or a string such as ``"100G"``; ``max_bytes`` is accepted for it), ``region_bytes``,
``eviction`` (``lru``/``fifo``), ``reinsert``, ``executor``, ``fsync``, ``o_direct``,
``events``, ``read_workers``, ``write_workers`` (and the vLLM spellings above). Its blocks carry
kvtier's native header (there is no ``format``); its device's header holds the run config, so
a device of another run is an error, never overwritten.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from vllm.v1.kv_offload.base import (
    ConfigInfoMapping,
    Locality,
    LookupResult,
    Medium,
    OffloadingCounterMetadata,
    OffloadingEvent,
    OffloadingGaugeMetadata,
    OffloadingMetricMetadata,
    OffloadKey,
    ReqContext,
    RequestOffloadingContext,
)
from vllm.v1.kv_offload.file_mapper import FileMapper
from vllm.v1.kv_offload.tiering.base import JobResult, SecondaryTierManager, TransferJob

from kvtier._kvtier import Tier

if TYPE_CHECKING:
    from vllm.distributed.kv_transfer.kv_connector.v1.offloading.metrics import (
        OffloadingConnectorStats,
    )
    from vllm.v1.kv_offload.base import OffloadingSpec
    from vllm.v1.kv_offload.tiering.backpressure import BackpressureDetector

logger = logging.getLogger(__name__)

#: The short name this package registers with vLLM's SecondaryTierFactory.
TIER_NAME = "kvtier"

#: Keys of kvtier's TOML ``fs`` tier table that a vLLM tier entry may set.
SETTINGS = frozenset(
    {
        "root_dir",
        "executor",
        "format",
        "max_blocks",
        "max_bytes",
        "fsync",
        "o_direct",
        "probe_on_miss",
        "events",
        "read_workers",
        "write_workers",
        "file_mode",
    }
)

#: Keys of kvtier's TOML ``regions`` tier table that a vLLM tier entry may set (with
#: ``engine = "regions"``; ``max_bytes`` is the ``capacity``).
REGIONS_SETTINGS = frozenset(
    {
        "path",
        "capacity",
        "max_bytes",
        "region_bytes",
        "eviction",
        "reinsert",
        "executor",
        "fsync",
        "o_direct",
        "events",
        "read_workers",
        "write_workers",
    }
)

#: The disk engines, by the name ``engine`` takes: a file per block, or the region engine.
ENGINES = ("files", "regions")

#: vLLM ``fs`` tier spellings, and the kvtier setting each one is.
VLLM_ALIASES = {
    "n_read_threads": "read_workers",
    "n_write_threads": "write_workers",
    "enable_kv_events": "events",
}

#: kvtier's FS tier counters, published as vLLM counters labelled by tier.
COUNTERS = {
    "blocks_stored": "Blocks kvtier's tier stored (files published).",
    "blocks_skipped": "Blocks a store found already on disk.",
    "blocks_loaded": "Blocks kvtier's tier loaded and verified.",
    "corrupt": "Block files a load found corrupt or torn (removed, never served).",
    "missing": "Blocks a load found missing.",
    "transient": "Block loads that failed transiently (file kept).",
    "failed": "Other failed block operations.",
    "evicted": "Blocks evicted to stay within the capacity bound.",
    "refused": "Block stores refused for want of room.",
    "given_up": "Blocks given up after repeated failed loads (dropped from the index, files kept).",
}
METRIC_PREFIX = "vllm:kv_offload_kvtier_"
BLOCKS_GAUGE = METRIC_PREFIX + "blocks"
LABEL = "tier"


def register() -> None:
    """The ``vllm.general_plugins`` entry point: registers ``KvtierTier`` as ``"kvtier"``.

    vLLM may call it more than once in a process; later calls change nothing.
    """
    from vllm.v1.kv_offload.tiering.factory import SecondaryTierFactory

    try:
        SecondaryTierFactory.register_tier(TIER_NAME, __name__, KvtierTier.__name__)
    except ValueError:
        # Already registered (the factory refuses a second registration of a name).
        pass


def file_mapper(root_dir: str, offloading_spec: OffloadingSpec) -> FileMapper:
    """vLLM's ``FileMapper`` for ``root_dir``, built exactly as vLLM 0.33's ``fs`` tier builds
    it: one block per chunk, parallelism-agnostic where the spec allows it."""
    return FileMapper.from_offloading_spec(
        root_dir=root_dir,
        offloading_spec=offloading_spec,
        blocks_per_file=offloading_spec.blocks_per_chunk,
        parallel_agnostic=True,
    )


def tier_config(
    settings: dict[str, Any], offloading_spec: OffloadingSpec
) -> tuple[dict[str, Any], int | None, FileMapper]:
    """The tier table kvtier opens (settings plus the run config vLLM's ``FileMapper``
    computes from the spec), ``max_bytes`` (an FS tier's bound), and that ``FileMapper``.

    ``engine`` picks the table: an ``fs`` table (``"files"``, the default) or a ``regions``
    table (``"regions"``, with ``"type": "regions"``).

    Raises ValueError naming an unknown engine, unknown keys, keys given twice (a kvtier name
    and its vLLM spelling), and a missing ``root_dir`` (``path`` and ``capacity`` for regions).
    """
    settings = dict(settings)
    engine = settings.pop("engine", "files")
    if engine not in ENGINES:
        raise ValueError(f"kvtier tier: engine {engine!r} is not one of {list(ENGINES)}")
    known = REGIONS_SETTINGS if engine == "regions" else SETTINGS
    table: dict[str, Any] = {}
    unknown = []
    for key, value in settings.items():
        name = VLLM_ALIASES.get(key, key)
        if name not in known:
            unknown.append(key)
        elif name in table:
            raise ValueError(f"kvtier tier: {key!r} sets {name!r}, which is already set")
        else:
            table[name] = value
    if unknown:
        raise ValueError(
            f"kvtier tier: unknown key(s) {sorted(unknown)} for engine {engine!r}; known: "
            f"{sorted(known | set(VLLM_ALIASES) | {'engine', 'locality'})}"
        )
    max_bytes = table.pop("max_bytes", None)
    # Worker threads: the scheduler thread does no checksum (see the module docs).
    table.setdefault("executor", "threaded")
    if engine == "regions":
        if "path" not in table:
            raise ValueError("kvtier tier: 'path' (the device) is required with engine 'regions'")
        table["path"] = str(table["path"])
        if max_bytes is not None:
            if "capacity" in table:
                raise ValueError("kvtier tier: give 'capacity' or 'max_bytes', not both")
            table["capacity"] = max_bytes
            max_bytes = None
        if "capacity" not in table:
            raise ValueError("kvtier tier: 'capacity' (or 'max_bytes') is required with engine 'regions'")
        table["type"] = "regions"
        # The mapper only computes the run config here: its root is the device's directory.
        mapper = file_mapper(os.path.dirname(os.path.abspath(table["path"])), offloading_spec)
    else:
        if "root_dir" not in table:
            raise ValueError("kvtier tier: 'root_dir' is required")
        table["root_dir"] = str(table["root_dir"])
        table.setdefault("format", "native")
        mapper = file_mapper(table["root_dir"], offloading_spec)
    run = mapper.get_run_config()
    if run.get("inference_engine") != "vllm":
        raise ValueError(f"kvtier tier: unexpected inference_engine {run.get('inference_engine')!r}")
    table.update(
        model_name=run["model_name"],
        dtype=run["dtype"],
        tokens_per_hash=run["tokens_per_hash"],
        blocks_per_file=run["blocks_per_file"],
        tp_size=run["tp_size"],
        pp_size=run["pp_size"],
        pcp_size=run["pcp_size"],
        dcp_size=run["dcp_size"],
        kv_cache_groups=run["kv_cache_groups"],
        # FileMapper writes the field only when it is False.
        parallel_agnostic=run.get("parallel_agnostic", True),
        replicated_layout=run.get("replicated_layout", False),
        canonical_format=run.get("canonical_format"),
        rank=mapper.rank,
    )
    return table, max_bytes, mapper


class KvtierTier(SecondaryTierManager):
    """A vLLM secondary tier backed by kvtier's FS tier or region engine (see the module docs)."""

    medium: ClassVar[Medium] = Medium.STORAGE

    def __init__(
        self,
        offloading_spec: OffloadingSpec,
        primary_kv_view: memoryview,
        tier_type: str,
        backpressure_detector: BackpressureDetector | None = None,
        locality: str | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(offloading_spec, primary_kv_view, tier_type, backpressure_detector)
        self.locality = Locality(locality) if locality is not None else None
        table, max_bytes, mapper = tier_config(settings, offloading_spec)
        if table.get("events") and not offloading_spec.kv_events_config.enable_kv_cache_events:
            logger.warning(
                "events are enabled on secondary tier '%s' but KV cache events are disabled "
                "globally; the tier will not emit events.",
                tier_type,
            )
            table["events"] = False
        self._format = table.get("format", "native")
        self._executor_setting = table["executor"]
        self._root_dir = table.get("root_dir", table.get("path"))
        self._tier = Tier(primary_kv_view, json.dumps(table), max_bytes)
        if self._format == "vllm" and self._tier.base_path != mapper.base_path:
            # Never write where vLLM would not look: the directories must be the same.
            self._tier.shutdown()
            raise RuntimeError(
                f"kvtier tier: namespace {self._tier.base_path!r} differs from vLLM's "
                f"{mapper.base_path!r} for the same run config"
            )
        if not self._tier.rows_direct_aligned and table.get("o_direct", "auto") == "auto":
            logger.warning(
                "kvtier tier '%s': the primary rows are not 4096-byte aligned (stride %d); "
                "blocks move with buffered I/O",
                tier_type,
                self._tier.block_bytes,
            )
        self._lookup_index = self._tier.lookup
        self._submit = self._tier.submit
        self._reported: dict[str, int] = {}
        logger.info(
            "kvtier tier '%s' at %s: executor %s, format %s, %d blocks on disk",
            tier_type,
            self._tier.location,
            self._tier.stats().get("executor"),
            self._format,
            self._tier.stats().get("blocks", 0),
        )

    # -- paths --------------------------------------------------------------------------------

    @property
    def base_path(self) -> str:
        """The namespace's base directory (where ``config.json`` is)."""
        return self._tier.base_path

    def block_path(self, key: OffloadKey) -> str:
        """The file that holds (or would hold) block ``key``."""
        return self._tier.block_path(key)

    @property
    def native(self) -> Tier:
        """The native tier (counters, paths, geometry)."""
        return self._tier

    # -- SecondaryTierManager -----------------------------------------------------------------

    def on_new_request(self, req_context: ReqContext) -> RequestOffloadingContext:
        return RequestOffloadingContext()

    def lookup(self, key: OffloadKey, req_context: ReqContext) -> LookupResult:
        found = self._lookup_index(key)
        if found is None:
            return LookupResult.RETRY
        return LookupResult.HIT if found else LookupResult.MISS

    def submit_store(self, job_metadata: TransferJob) -> None:
        self._submit(job_metadata.job_id, job_metadata.keys, job_metadata.chunk_ids, False)

    def submit_load(self, job_metadata: TransferJob) -> None:
        self._submit(job_metadata.job_id, job_metadata.keys, job_metadata.chunk_ids, True)

    def get_finished_jobs(self) -> Iterable[JobResult]:
        return [JobResult(*result) for result in self._tier.poll()]

    def has_pending_work(self) -> bool:
        return self._tier.in_flight > 0

    def take_events(self) -> Iterable[OffloadingEvent]:
        return [
            OffloadingEvent(keys=keys, medium=self.medium, removed=removed, locality=self.locality)
            for removed, keys in self._tier.take_events()
        ]

    def drain_jobs(self) -> None:
        self._tier.wait_idle()

    def shutdown(self) -> None:
        # Every queued store is finished first (the executor's own shutdown would cancel the
        # ones not started): what vLLM cascaded before shutting down is on disk for the next
        # start. vLLM polls no more after shutdown, so the results are dropped.
        self._tier.wait_idle()
        self._tier.shutdown()

    # -- metrics ------------------------------------------------------------------------------

    @classmethod
    def build_metric_definitions(cls, extra_config: dict[str, Any]) -> dict[str, OffloadingMetricMetadata]:
        metrics: dict[str, OffloadingMetricMetadata] = {
            METRIC_PREFIX + name: OffloadingCounterMetadata(documentation=doc, labelnames=(LABEL,))
            for name, doc in COUNTERS.items()
        }
        metrics[BLOCKS_GAUGE] = OffloadingGaugeMetadata(
            documentation="Blocks held by kvtier's tier on disk.", labelnames=(LABEL,)
        )
        return metrics

    def get_stats(self) -> OffloadingConnectorStats | None:
        from vllm.distributed.kv_transfer.kv_connector.v1.offloading.metrics import (
            OffloadingConnectorStats,
        )

        now = self._tier.stats()
        if not now:
            return None
        stats = OffloadingConnectorStats()
        labels = (self.tier_type,)
        for name in COUNTERS:
            delta = now[name] - self._reported.get(name, 0)
            if delta:
                stats.increase_counter(METRIC_PREFIX + name, delta, labels)
                self._reported[name] = now[name]
        stats.set_gauge(BLOCKS_GAUGE, now["blocks"], labels)
        return stats

    @classmethod
    def config_info_keys(cls, tier_config: dict[str, Any]) -> tuple[str, ...]:
        return ("kvtier_executor", "kvtier_format", "kvtier_root_dir")

    def config_info(self) -> ConfigInfoMapping:
        return {
            "kvtier_executor": self._tier.stats().get("executor", self._executor_setting),
            "kvtier_format": self._format,
            "kvtier_root_dir": self._root_dir,
        }
