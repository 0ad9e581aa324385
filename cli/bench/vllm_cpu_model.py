#!/usr/bin/env python3
"""The peer of `kvtier bench core`: our own model of vLLM's CPU offloading manager.

This is the bookkeeping of vLLM's CPU primary tier (an ``OrderedDict`` LRU of key -> block
status, plus the CPU backend's block-id free list), written by us the way vLLM writes it:
plain Python, dicts and lists, no torch, no numpy. It is neither deliberately slow nor
optimized beyond that. A block's status is a ``ctypes.Structure``, as in vLLM. One deviation is
in the model's favour: vLLM builds a ``CPULoadStoreSpec`` (a numpy array of block ids) per
prepare_store/prepare_load; this model returns a plain list.

The semantics match kvtier's primary pool (SEMANTICS.md, "Primary pool" and "LRU"): fresh block
ids first, then freed ids last-freed-first; eviction takes the least-recent blocks with
``ref_cnt == 0`` that are not among the call's input keys; ``touch`` walks its keys in reverse.

The script runs the same operation stream as the Rust side of the benchmark: both generate it
from the same seed with the same splitmix64 generator and the same key function (see
``cli/src/bench/core/workload.rs``). Keys are 36-byte ``bytes`` (32 hash bytes + a 4-byte group
index), as vLLM's offload keys are. All keys and key lists are built before the clock starts.
The step mix reports counters (hits, stored blocks, evictions, a sum of allocated block ids)
that the Rust side compares with its own run over the same steps, to prove both sides did the
same work.

Output: one JSON object on stdout.
"""

import argparse
import ctypes
import json
import struct
import sys
import time
from collections import OrderedDict

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15

# Key-id namespaces, shared with core.rs.
MISS_BASE = 1 << 40
DOC_BASE = 2 << 40

# Phase numbers: each phase draws from its own generator, seeded from (seed, phase).
PHASE_HIT = 1
PHASE_MISS = 2
PHASE_TOUCH = 3
PHASE_LOAD = 4
PHASE_MIX = 5


# ---------------------------------------------------------------------------------------------
# The model of vLLM's CPU offloading manager.
# ---------------------------------------------------------------------------------------------


class BlockStatus(ctypes.Structure):
    """A block's state: ref_cnt -1 while its write is in flight, 0 ready, k > 0 pinned.

    A ``ctypes.Structure``, as in vLLM (``vllm/v1/kv_offload/backend.py``)."""

    _fields_ = [("ref_cnt", ctypes.c_int32)]

    def __init__(self):
        super().__init__()
        self.ref_cnt = -1

    @property
    def is_ready(self) -> bool:
        return self.ref_cnt >= 0


class CPUBlockStatus(BlockStatus):
    """The CPU backend's status: adds the block id (vLLM's ``CPUBlockStatus``)."""

    _fields_ = BlockStatus._fields_ + [("block_id", ctypes.c_int64)]

    def __init__(self, block_id: int):
        super().__init__()
        self.block_id = block_id


class CPUBackend:
    """Block-id allocation: never-used ids in increasing order first, then freed ids (a stack)."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.num_allocated_blocks = 0
        self.allocated_blocks_free_list: list[int] = []

    def get_num_free_blocks(self) -> int:
        return len(self.allocated_blocks_free_list) + self.num_blocks - self.num_allocated_blocks

    def allocate_blocks(self, keys: list) -> list[BlockStatus]:
        num_fresh_blocks = min(len(keys), self.num_blocks - self.num_allocated_blocks)
        num_reused_blocks = len(keys) - num_fresh_blocks
        assert len(self.allocated_blocks_free_list) >= num_reused_blocks

        blocks: list[BlockStatus] = []
        for _ in range(num_fresh_blocks):
            blocks.append(CPUBlockStatus(self.num_allocated_blocks))
            self.num_allocated_blocks += 1
        for _ in range(num_reused_blocks):
            block_id = self.allocated_blocks_free_list.pop()
            blocks.append(CPUBlockStatus(block_id))
        return blocks

    def free(self, block: BlockStatus):
        self.allocated_blocks_free_list.append(block.block_id)

    def get_load_store_spec(self, keys, blocks) -> list[int]:
        return [block.block_id for block in blocks]


class OffloadingEvent:
    __slots__ = ("keys", "medium", "removed")

    def __init__(self, keys: list, medium: str, removed: bool):
        self.keys = keys
        self.medium = medium
        self.removed = removed


class PrepareStoreOutput:
    __slots__ = ("keys_to_store", "store_spec", "keys_evicted")

    def __init__(self, keys_to_store: list, store_spec: list[int], keys_evicted: list):
        self.keys_to_store = keys_to_store
        self.store_spec = store_spec
        self.keys_evicted = keys_evicted


class CPUOffloadingManager:
    """vLLM's LRU CPU offloading manager: an OrderedDict from key to BlockStatus."""

    def __init__(self, num_blocks: int, enable_events: bool = True):
        self.backend = CPUBackend(num_blocks)
        # key -> BlockStatus, least-recent first
        self.blocks: OrderedDict[bytes, BlockStatus] = OrderedDict()
        self.events: list[OffloadingEvent] | None = [] if enable_events else None

    def lookup(self, key: bytes, req_context=None) -> bool | None:
        """True: ready; None: write in flight; False: absent. Does not change recency."""
        block = self.blocks.get(key)
        if block is None:
            return False
        if not block.is_ready:
            return None
        return True

    def prepare_load(self, keys, req_context=None) -> list[int]:
        blocks = []
        for key in keys:
            block = self.blocks[key]
            assert block.is_ready
            block.ref_cnt += 1
            blocks.append(block)
        return self.backend.get_load_store_spec(keys, blocks)

    def touch(self, keys, req_context=None):
        for key in reversed(list(keys)):
            if key in self.blocks:
                self.blocks.move_to_end(key)

    def complete_load(self, keys, req_context=None):
        for key in keys:
            block = self.blocks[key]
            assert block.ref_cnt > 0
            block.ref_cnt -= 1

    def prepare_store(self, keys, req_context=None) -> PrepareStoreOutput | None:
        # filter out blocks that are already stored (or being stored)
        keys_to_store = [key for key in keys if key not in self.blocks]
        if not keys_to_store:
            return PrepareStoreOutput([], [], [])

        num_blocks_to_evict = len(keys_to_store) - self.backend.get_num_free_blocks()

        # build the list of blocks to evict, least-recent first
        to_evict = []
        if num_blocks_to_evict > 0:
            # the call's own keys must survive it
            protected = set(keys)
            for key, block in self.blocks.items():
                if block.ref_cnt == 0 and key not in protected:
                    to_evict.append(key)
                    num_blocks_to_evict -= 1
                    if num_blocks_to_evict == 0:
                        break
            else:
                # we could not evict enough blocks
                return None

        for key in to_evict:
            self.backend.free(self.blocks.pop(key))

        if to_evict and self.events is not None:
            self.events.append(OffloadingEvent(to_evict, "CPU", True))

        blocks = self.backend.allocate_blocks(keys_to_store)
        assert len(blocks) == len(keys_to_store)
        for key, block in zip(keys_to_store, blocks):
            self.blocks[key] = block

        store_spec = self.backend.get_load_store_spec(keys_to_store, blocks)
        return PrepareStoreOutput(keys_to_store, store_spec, to_evict)

    def complete_store(self, keys, success: bool = True, req_context=None):
        stored_keys = []
        if success:
            for key in keys:
                block = self.blocks.get(key)
                if block is not None and not block.is_ready:
                    block.ref_cnt = 0
                    stored_keys.append(key)
        else:
            for key in keys:
                block = self.blocks.get(key)
                if block is not None and not block.is_ready:
                    self.backend.free(block)
                    del self.blocks[key]

        if stored_keys and self.events is not None:
            self.events.append(OffloadingEvent(stored_keys, "CPU", False))

    def take_events(self):
        if self.events is not None:
            yield from self.events
            self.events.clear()


# ---------------------------------------------------------------------------------------------
# The workload, identical to core.rs's.
# ---------------------------------------------------------------------------------------------


def mix64(z: int) -> int:
    """splitmix64's finalizer."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


class SplitMix64:
    __slots__ = ("state",)

    def __init__(self, seed: int):
        self.state = seed & MASK64

    def next(self) -> int:
        self.state = (self.state + GOLDEN) & MASK64
        return mix64(self.state)


def phase_rng(seed: int, phase: int) -> SplitMix64:
    return SplitMix64(mix64((seed + phase) & MASK64))


_pack = struct.Struct("<4Q").pack
_GROUP0 = b"\x00\x00\x00\x00"


def make_key(ident: int) -> bytes:
    """32 hash bytes derived from `ident`, then group 0 (big-endian u32)."""
    m = mix64(ident)
    return _pack(m, ident, m ^ MASK64, ident ^ MASK64) + _GROUP0


def num_docs(slots: int, request_blocks: int) -> int:
    return max(1, (3 * slots) // (2 * request_blocks))


def rounded(n: int, batch: int) -> int:
    return (n + batch - 1) // batch * batch


def fill(mgr: CPUOffloadingManager, keys: list, batch: int):
    for i in range(0, len(keys), batch):
        out = mgr.prepare_store(keys[i : i + batch])
        mgr.complete_store(out.keys_to_store, True)
        for _ in mgr.take_events():
            pass


class Timer:
    """Wall and thread-CPU time of one timed region."""

    def __enter__(self):
        self.cpu0 = time.thread_time_ns()
        self.wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall0
        self.cpu = (time.thread_time_ns() - self.cpu0) / 1e9


def timed_result(op: str, n: int, t: Timer) -> dict:
    return {
        "op": op,
        "ops": n,
        "seconds": t.wall,
        "cpu_seconds": t.cpu,
        "ops_per_s": n / t.wall if t.wall > 0 else None,
        "ops_per_cpu_s": n / t.cpu if t.cpu > 0 else None,
    }


def run_steps(mgr: CPUOffloadingManager, steps: list, first: int, check: dict):
    """One engine step per request: look its blocks up until the first miss, pin the hit prefix,
    store the rest (evicting), unpin and touch the prefix, drain the events."""
    hits = pending = stored = evicted = store_failures = load_failures = slot_sum = 0
    for req, keys in enumerate(steps, first):
        h = 0
        for key in keys:
            r = mgr.lookup(key, req)
            if r:
                h += 1
            else:
                if r is None:
                    pending += 1
                break
        hit = keys[:h]
        pinned = False
        if hit:
            try:
                mgr.prepare_load(hit, req)
                pinned = True
            except (KeyError, AssertionError):
                load_failures += 1
        if h < len(keys):
            out = mgr.prepare_store(keys[h:], req)
            if out is None:
                store_failures += 1
            else:
                mgr.complete_store(out.keys_to_store, True, req)
                stored += len(out.keys_to_store)
                evicted += len(out.keys_evicted)
                slot_sum += sum(out.store_spec)
        if pinned:
            mgr.complete_load(hit, req)
            mgr.touch(hit, req)
        for _ in mgr.take_events():
            pass
        hits += h
    check["steps"] += len(steps)
    check["hits"] += hits
    check["pending"] += pending
    check["stored"] += stored
    check["evicted"] += evicted
    check["store_failures"] += store_failures
    check["load_failures"] += load_failures
    check["slot_sum"] += slot_sum


def rows(args):
    """Runs the rows in the Rust side's order, yielding each one's result as it finishes."""
    slots, seed, batch, req_blocks = args.slots, args.seed, args.batch, args.request_blocks
    warm, ops = args.warmup, args.ops

    table = [make_key(i) for i in range(2 * slots)]
    miss_table = [make_key(MISS_BASE + i) for i in range(slots)]

    # -- single-operation rows, one manager, pool full of table[0..slots) --
    mgr = CPUOffloadingManager(slots)
    fill(mgr, table[:slots], batch)

    # lookup hit
    rng = phase_rng(seed, PHASE_HIT)
    keys = [table[rng.next() % slots] for _ in range(warm + ops)]
    lookup = mgr.lookup
    for key in keys[:warm]:
        lookup(key, None)
    hits = 0
    with Timer() as t:
        for key in keys[warm:]:
            if lookup(key, None):
                hits += 1
    assert hits == ops
    yield timed_result("lookup_hit", ops, t)

    # lookup miss
    rng = phase_rng(seed, PHASE_MISS)
    keys = [miss_table[rng.next() % slots] for _ in range(warm + ops)]
    for key in keys[:warm]:
        lookup(key, None)
    misses = 0
    with Timer() as t:
        for key in keys[warm:]:
            if lookup(key, None) is False:
                misses += 1
    assert misses == ops
    del keys
    yield timed_result("lookup_miss", ops, t)

    # touch, batches of `batch` random present keys
    n_warm, n_ops = rounded(warm, batch), rounded(ops, batch)
    w = n_warm // batch
    rng = phase_rng(seed, PHASE_TOUCH)
    batches = [[table[rng.next() % slots] for _ in range(batch)] for _ in range((n_warm + n_ops) // batch)]
    for keys in batches[:w]:
        mgr.touch(keys, None)
    with Timer() as t:
        for keys in batches[w:]:
            mgr.touch(keys, None)
    yield timed_result("touch", n_ops, t)

    # load: prepare_load + complete_load of a batch of random present keys
    rng = phase_rng(seed, PHASE_LOAD)
    batches = [[table[rng.next() % slots] for _ in range(batch)] for _ in range((n_warm + n_ops) // batch)]
    for keys in batches[:w]:
        mgr.prepare_load(keys, None)
        mgr.complete_load(keys, None)
    with Timer() as t:
        for keys in batches[w:]:
            mgr.prepare_load(keys, None)
            mgr.complete_load(keys, None)
    yield timed_result("load_pin_unpin", n_ops, t)

    # store with eviction: new keys from a ring of 2 * slots keys, batch by batch
    ring = 2 * slots
    batches = [
        [table[(slots + b * batch + j) % ring] for j in range(batch)] for b in range((n_warm + n_ops) // batch)
    ]
    for keys in batches[:w]:
        out = mgr.prepare_store(keys, None)
        mgr.complete_store(out.keys_to_store, True)
        for _ in mgr.take_events():
            pass
    evicted = 0
    with Timer() as t:
        for keys in batches[w:]:
            out = mgr.prepare_store(keys, None)
            mgr.complete_store(out.keys_to_store, True)
            evicted += len(out.keys_evicted)
            for _ in mgr.take_events():
                pass
    assert evicted == n_ops
    del batches, mgr, table, miss_table
    yield timed_result("store_evict", n_ops, t)

    # engine-step mix, a new manager prefilled with whole requests
    ndocs = num_docs(slots, req_blocks)
    docs = [make_key(DOC_BASE + i) for i in range(ndocs * req_blocks)]
    requests = [docs[d * req_blocks : (d + 1) * req_blocks] for d in range(ndocs)]
    mgr = CPUOffloadingManager(slots)
    for keys in requests[: min(ndocs, slots // req_blocks)]:
        out = mgr.prepare_store(keys, None)
        if out is not None:
            mgr.complete_store(out.keys_to_store, True)
        for _ in mgr.take_events():
            pass
    rng = phase_rng(seed, PHASE_MIX)
    steps = [requests[rng.next() % ndocs] for _ in range(args.mix_warmup + args.mix_steps)]
    check = dict.fromkeys(["steps", "hits", "pending", "stored", "evicted", "store_failures", "load_failures", "slot_sum"], 0)
    run_steps(mgr, steps[: args.mix_warmup], 0, check)
    with Timer() as t:
        run_steps(mgr, steps[args.mix_warmup :], args.mix_warmup, check)
    check["slot_sum"] &= MASK64
    result = timed_result("step_mix", args.mix_steps, t)
    result["mix_check"] = check
    yield result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slots", type=int, default=100_000)
    p.add_argument("--ops", type=int, default=200_000, help="timed operations per micro measurement")
    p.add_argument("--warmup", type=int, default=20_000, help="untimed operations before each")
    p.add_argument("--mix-steps", type=int, default=10_000, help="timed engine steps")
    p.add_argument("--mix-warmup", type=int, default=1_000, help="untimed engine steps before them")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch", type=int, default=16, help="keys per touch/load/store call")
    p.add_argument("--request-blocks", type=int, default=32, help="blocks per request in the mix")
    p.add_argument("--serve", action="store_true", help="run one row per name read from stdin (JSON line each)")
    args = p.parse_args()
    if args.slots < args.request_blocks or args.batch < 1:
        p.error("--slots must be at least --request-blocks, and --batch at least 1")
    python = sys.version.split()[0]
    if not args.serve:
        results = [dict(r, python=python) for r in rows(args)]
        json.dump({"model": "vllm_cpu_model", "python": python, "slots": args.slots, "results": results}, sys.stdout)
        sys.stdout.write("\n")
        return
    # Line protocol: read a row's name, run it, answer with its JSON on one line. The caller
    # times its own rows while this process waits, so the two never share the CPU.
    gen = rows(args)
    for line in sys.stdin:
        name = line.strip()
        result = next(gen, None)
        if result is None or result["op"] != name:
            sys.exit(f"vllm_cpu_model: asked for {name!r}, next row is {result and result['op']!r}")
        result["python"] = python
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
