"""Scheduler side of the memento plugin (EngineCore process): when to evict, and which pages.

Each request gets a `RequestKV`: a `LayoutTracker` fed every prompt and sampled token (the same
code the trainer runs, so the engine evicts exactly what `evict_at` says), the logical positions
already evicted from its KV, and its live-KV counters. One rule serves decode, prompts with closed
blocks and recompute after preemption:

- At the start of `schedule()`, every running request whose computed length has reached an
  eviction's position `at` is compacted: surviving KV slots move down to stay contiguous, whole
  pages past the new end go back to the pool, and the slot moves plus block-table truncations ride
  to the workers on the SchedulerOutput. For a decode this is the step after `<|summary_end|>`
  was sampled; the `<|summary_end|>` token's own forward pass already runs without the block.
- Prefill chunks are capped at the next eviction position, so a prompt or a preempted request is
  recomputed segment by segment with the same compactions in between: the same KV as an
  uninterrupted generation, including memento KV computed while its block was visible.
- Positions stay logical everywhere in the scheduler; KV allocation subtracts the compacted count.

Restart mode (the paper's ablation) evicts the whole block with its delimiters and rewinds the
computed length to `<|summary_start|>`, so the memento's KV is recomputed without its block.
"""

from __future__ import annotations

import numpy as np
from vllm.v1.core.kv_cache_coordinator import KVCacheCoordinator
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.kv_cache_interface import FullAttentionSpec

from rollout.layout import Eviction, LayoutTracker, MementoConfig
from rollout.vllm_plugin import read_config


def compaction_moves(evicted: np.ndarray, start: int, end: int, length: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slot moves that evict logical span [start, end) from a compacted KV of `length` tokens.

    Physical slot of a live logical position = number of live positions before it.

    Args:
        evicted: bool (<= length,) logical positions already gone.

    Returns:
        src, dst: int64 (M,) physical slots to copy (src > dst, increasing), and the new
        `evicted` mask (length,).
    """
    gone = np.zeros(length, dtype=bool)
    gone[:min(len(evicted), length)] = evicted[:length]
    old_phys = np.cumsum(~gone) - 1
    gone[start:end] = True
    new_live = ~gone
    new_phys = np.cumsum(new_live) - 1
    moved = new_live & (old_phys != new_phys)
    return old_phys[moved], new_phys[moved], gone


class RequestKV:
    """Layout and physical KV state of one request (tracker None: nothing is evicted)."""

    def __init__(self, cfg: MementoConfig | None, restart: bool):
        self.tracker = LayoutTracker(cfg) if cfg is not None else None
        self.restart = restart
        self.applied = 0  # evictions of tracker.evictions applied to the current KV
        self.evicted = np.zeros(0, dtype=bool)  # logical positions gone from the KV
        self.compacted = 0  # = evicted.sum(): logical minus physical length
        self.peak_tokens = 0
        self.peak_pages = 0
        self.pages_freed: list[int] = []  # per applied eviction
        self.preemptions = 0

    def next_eviction(self) -> Eviction | None:
        if self.tracker is None or self.applied >= len(self.tracker.evictions):
            return None
        return self.tracker.evictions[self.applied]

    def span(self, ev: Eviction) -> tuple[int, int]:
        """Logical positions an eviction removes (restart mode: the block with its delimiters)."""
        return (ev.block_start, ev.block_end + 1) if self.restart else (ev.start, ev.end)

    def reset_kv(self) -> None:
        """The request lost its KV (preemption); the tracker keeps every block it has seen."""
        self.applied, self.compacted = 0, 0
        self.evicted = np.zeros(0, dtype=bool)
        self.pages_freed = []
        self.preemptions += 1

    def stats(self) -> dict:
        return {"kv_peak_tokens": self.peak_tokens, "kv_peak_pages": self.peak_pages,
                "num_evictions": self.applied, "pages_freed": list(self.pages_freed),
                "num_preemptions": self.preemptions}


class KVEvictor:
    """The memento state of one Scheduler: a RequestKV per request and the ops for the next step."""

    def __init__(self, scheduler: Scheduler, conf: dict):
        self.scheduler = scheduler
        self.cfg = MementoConfig(**conf["layout"]) if conf["layout"] else None
        self.evict = bool(conf["evict"])
        self.restart = bool(conf["restart_mode"])
        self.requests: dict[str, RequestKV] = {}
        self.copies: list[tuple[int, np.ndarray, np.ndarray]] = []  # (group, src, dst slots)
        self.truncations: dict[str, list[int]] = {}  # request id -> pages kept per group
        if self.evict:
            self._check_supported()

    def _check_supported(self) -> None:
        s = self.scheduler
        problems = []
        if s.cache_config.enable_prefix_caching:
            problems.append("prefix caching is on (cached pages would hold compacted KV): "
                            "pass enable_prefix_caching=False")
        if s.vllm_config.scheduler_config.async_scheduling:
            problems.append("async scheduling is on (eviction would land one step late): "
                            "pass async_scheduling=False")
        if s.use_v2_model_runner:
            problems.append("the V2 model runner is selected: set VLLM_USE_V2_MODEL_RUNNER=0")
        if s.vllm_config.speculative_config is not None:
            problems.append("speculative decoding is not supported")
        for group in s.kv_cache_config.kv_cache_groups:
            if type(group.kv_cache_spec) is not FullAttentionSpec:
                problems.append(f"KV group {type(group.kv_cache_spec).__name__} is not full "
                                "attention")
        if problems:
            raise ValueError("memento KV eviction cannot run: " + "; ".join(problems))

    # --- request lifecycle -------------------------------------------------------------------

    def add(self, request) -> None:
        """Start tracking; `extra_args["memento"]` may override the layout options per request."""
        params = request.sampling_params
        options = dict(((params.extra_args or {}) if params else {}).get("memento") or {})
        restart = bool(options.pop("restart_mode", self.restart))
        cfg = self.cfg.replace(**options) if self.evict else None
        state = RequestKV(cfg, restart)
        if state.tracker is not None:
            state.tracker.feed_many(request.prompt_token_ids or ())
        self.requests[request.request_id] = state

    def on_tokens(self, request, token_ids: list[int]) -> None:
        state = self.requests.get(request.request_id)
        if state is not None and state.tracker is not None:
            state.tracker.feed_many(token_ids)

    def preempted(self, request) -> None:
        if request.request_id in self.requests:
            self.requests[request.request_id].reset_kv()

    def finished(self, request) -> dict | None:
        state = self.requests.pop(request.request_id, None)
        return None if state is None else state.stats()

    # --- eviction ----------------------------------------------------------------------------

    def compact_due(self) -> None:
        """Apply every eviction whose position the request's computed length has reached."""
        if not self.evict:
            return
        for request in self.scheduler.running:
            state = self.requests.get(request.request_id)
            while state is not None and (ev := state.next_eviction()) is not None \
                    and ev.at <= request.num_computed_tokens:
                self._compact(request, state, ev)

    def _compact(self, request, state: RequestKV, ev: Eviction) -> None:
        rid, length = request.request_id, request.num_computed_tokens
        start, end = state.span(ev)
        src, dst, state.evicted = compaction_moves(state.evicted, start, end, length)
        state.compacted = int(state.evicted.sum())
        live = length - state.compacted
        keep_per_group, freed = [], 0
        for group, mgr in enumerate(self.scheduler.kv_cache_manager.coordinator
                                    .single_type_managers):
            blocks, bs = mgr.req_to_blocks[rid], mgr.block_size
            ids = np.fromiter((b.block_id for b in blocks), dtype=np.int64, count=len(blocks))
            if len(src):
                self.copies.append((group, ids[src // bs] * bs + src % bs,
                                    ids[dst // bs] * bs + dst % bs))
            keep = -(-live // bs)
            tail = blocks[keep:]
            del blocks[keep:]
            mgr.block_pool.free_blocks(reversed(tail))
            if rid in mgr.num_cached_block:
                mgr.num_cached_block[rid] = min(mgr.num_cached_block[rid], keep)
            keep_per_group.append(keep)
            freed += len(tail)
        self.truncations[rid] = keep_per_group
        state.pages_freed.append(freed)
        state.applied += 1
        if state.restart:  # recompute the memento over the compacted cache
            request.num_computed_tokens = ev.summary_start

    def chunk_cap(self, request, num_computed_tokens: int, num_new_tokens: int) -> int:
        """End prefill chunks at the next eviction position (compaction happens in between)."""
        state = self.requests.get(request.request_id)
        ev = state.next_eviction() if state is not None and self.evict else None
        if ev is not None and ev.at > num_computed_tokens:
            return min(num_new_tokens, ev.at - num_computed_tokens)
        return num_new_tokens

    def slot_offset(self, request_id: str, admission: bool) -> int:
        """Logical minus physical token count, to subtract from slot demands.

        For the full-sequence admission check it is the eventual count (every known eviction
        applied), since a recomputed request compacts as it goes.
        """
        state = self.requests.get(request_id)
        if state is None or not self.evict:
            return 0
        if not admission or state.tracker is None:
            return state.compacted
        gone = np.zeros(state.tracker.position, dtype=bool)
        for ev in state.tracker.evictions:
            start, end = state.span(ev)
            gone[start:end] = True
        return int(gone.sum())

    # --- per step ----------------------------------------------------------------------------

    def after_schedule(self, so) -> None:
        """Attach this step's ops for the workers and update the live-KV counters."""
        so.memento_copies, so.memento_truncations = self.copies, self.truncations
        self.copies, self.truncations = [], {}
        so.memento_offsets = {}
        managers = self.scheduler.kv_cache_manager.coordinator.single_type_managers
        for rid in so.num_scheduled_tokens:
            state = self.requests.get(rid)
            if state is None:
                continue
            if state.compacted:
                so.memento_offsets[rid] = state.compacted
            computed = self.scheduler.requests[rid].num_computed_tokens
            state.peak_tokens = max(state.peak_tokens, computed - state.compacted)
            state.peak_pages = max(state.peak_pages,
                                   len(managers[0].req_to_blocks.get(rid, ())))


# --- wrappers: each factory takes the original method and returns its replacement ----------

def _evictor(scheduler) -> KVEvictor | None:
    return getattr(scheduler, "_memento", None)


def _init(original):
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        conf = read_config(self.vllm_config)
        self._memento = KVEvictor(self, conf) if conf else None
        self.kv_cache_manager.coordinator._memento = self._memento
    return __init__


def _add_request(original):
    def add_request(self, request):
        if (m := _evictor(self)) is not None:
            m.add(request)
        return original(self, request)
    return add_request


def _update_request_with_output(original):
    def wrapper(self, request, new_token_ids, *args, **kwargs):
        kept, stopped = original(self, request, new_token_ids, *args, **kwargs)
        if (m := _evictor(self)) is not None:
            m.on_tokens(request, kept)
        return kept, stopped
    return wrapper


def _schedule(original):
    def schedule(self, *args, **kwargs):
        m = _evictor(self)
        if m is not None:
            m.compact_due()
        so = original(self, *args, **kwargs)
        if m is not None:
            m.after_schedule(so)
        return so
    return schedule


def _reserve_prefill_lookahead(original):
    def wrapper(self, request, num_computed_tokens, num_new_tokens):
        n = original(self, request, num_computed_tokens, num_new_tokens)
        m = _evictor(self)
        return n if m is None else m.chunk_cap(request, num_computed_tokens, n)
    return wrapper


def _preempt_request(original):
    def wrapper(self, request, *args, **kwargs):
        original(self, request, *args, **kwargs)
        if (m := _evictor(self)) is not None:
            m.preempted(request)
    return wrapper


def _free_request(original):
    # The stats ride to the client in the slot vLLM reserves for KV-transfer params, the one
    # per-request dict that reaches RequestOutput.
    def wrapper(self, request, *args, **kwargs):
        kv_params, ec_params = original(self, request, *args, **kwargs)
        m = _evictor(self)
        stats = m.finished(request) if m is not None else None
        if stats is not None and kv_params is None:
            kv_params = {"memento": stats}
        return kv_params, ec_params
    return wrapper


def _get_num_blocks_to_allocate(original):
    def wrapper(self, request_id, num_tokens, *args, **kwargs):
        if (m := getattr(self, "_memento", None)) is not None:
            num_tokens -= m.slot_offset(request_id, kwargs.get("apply_admission_cap", False))
        return original(self, request_id, num_tokens, *args, **kwargs)
    return wrapper


def _allocate_new_blocks(original):
    def wrapper(self, request_id, num_tokens, num_tokens_main_model, *args, **kwargs):
        if (m := getattr(self, "_memento", None)) is not None:
            offset = m.slot_offset(request_id, admission=False)
            num_tokens, num_tokens_main_model = num_tokens - offset, num_tokens_main_model - offset
        return original(self, request_id, num_tokens, num_tokens_main_model, *args, **kwargs)
    return wrapper


PATCHES = [
    (Scheduler, "__init__", _init),
    (Scheduler, "add_request", _add_request),
    (Scheduler, "_update_request_with_output", _update_request_with_output),
    (Scheduler, "schedule", _schedule),
    (Scheduler, "_reserve_prefill_lookahead", _reserve_prefill_lookahead),
    (Scheduler, "_preempt_request", _preempt_request),
    (Scheduler, "_free_request", _free_request),
    (KVCacheCoordinator, "get_num_blocks_to_allocate", _get_num_blocks_to_allocate),
    (KVCacheCoordinator, "allocate_new_blocks", _allocate_new_blocks),
]
