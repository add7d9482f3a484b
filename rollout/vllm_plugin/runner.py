"""Worker side of the memento plugin (V1 model runner): move KV slots, use physical positions.

The scheduler (scheduler.py) sends, on each SchedulerOutput, the slot moves and block-table
truncations of the compactions it just decided, and for every scheduled request its compacted
count (logical minus physical length). Here:

- `_update_states`: the moves run first, then the truncations, then vLLM's own update. Order
  matters: vLLM zeroes newly allocated pages inside `_update_states`, and a page freed by this
  very compaction may already be re-allocated to another request this step.
- `_prepare_inputs`: RoPE positions stay logical (original token positions); the slot mapping
  and the sequence lengths attention reads become physical (logical minus compacted).

KV layouts differ per backend. All expose a per-layer tensor whose dims are (pages, kv heads,
tokens per page, C). On CUDA (FlashAttention / FlashInfer) a token's K and V are the two halves
of C, so one indexed copy moves both. The CPU backend packs each (page, head) as K transposed
`[head_dim, page]` followed by V `[page, head_dim]`, which needs its own copy (vllm032.md §3).
"""

from __future__ import annotations

import numpy as np
import torch
from vllm.platforms import current_platform
from vllm.v1.worker.gpu_model_runner import GPUModelRunner


def copy_slots(kv: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, cpu_layout: bool) -> None:
    """Copy K and V of flat slots `src` to `dst` (slot = page * page_size + offset) in one layer.

    Index assignment gathers before it scatters, so overlapping moves within a page are safe.
    A backend whose kernel pages subdivide the scheduler's pages still maps slot s to
    (s // page, s % page) with its own page size, which is kv.shape[2].
    """
    pages, heads, page, width = kv.shape
    sp, so, dp, do = src // page, src % page, dst // page, dst % page
    if cpu_layout:
        head_dim = width // 2
        flat = kv.view(pages, heads, 2 * page * head_dim)
        k = flat[..., :page * head_dim].view(pages, heads, head_dim, page)
        v = flat[..., page * head_dim:].view(pages, heads, page, head_dim)
        k[dp, :, :, do] = k[sp, :, :, so]
        v[dp, :, do] = v[sp, :, so]
    else:
        kv[dp, :, do] = kv[sp, :, so]


def _group_layers(runner, group: int) -> list[torch.Tensor]:
    """KV tensors of one KV-cache group, each once (KV-sharing layers alias a tensor)."""
    seen, out = set(), []
    context = runner.compilation_config.static_forward_context
    for name in runner.kv_cache_config.kv_cache_groups[group].layer_names:
        kv = getattr(context.get(name), "kv_cache", None)
        if isinstance(kv, torch.Tensor) and kv.data_ptr() not in seen:
            seen.add(kv.data_ptr())
            out.append(kv)
    return out


def apply_compactions(runner, so) -> None:
    """Run the scheduler's slot moves, then drop the freed pages from the block tables."""
    cpu_layout = current_platform.is_cpu()
    for group, src, dst in getattr(so, "memento_copies", ()):
        src_t = torch.as_tensor(src, device=runner.device)
        dst_t = torch.as_tensor(dst, device=runner.device)
        for kv in _group_layers(runner, group):
            copy_slots(kv, src_t, dst_t, cpu_layout)
    tables = runner.input_batch.block_table.block_tables
    for rid, keep_per_group in getattr(so, "memento_truncations", {}).items():
        state = runner.requests.get(rid)
        if state is None:
            continue
        for ids, keep in zip(state.block_ids, keep_per_group):
            del ids[keep:]
        row = runner.input_batch.req_id_to_index.get(rid)
        if row is None:  # not in the persistent batch: re-added later from state.block_ids
            continue
        for table, keep in zip(tables, keep_per_group):
            table.block_table.np[row, keep:table.num_blocks_per_row[row]] = 0
            table.num_blocks_per_row[row] = keep


def _update_states(original):
    def wrapper(self, scheduler_output):
        apply_compactions(self, scheduler_output)
        return original(self, scheduler_output)
    return wrapper


def _prepare_inputs(original):
    def wrapper(self, scheduler_output, num_scheduled_tokens):
        offsets = getattr(scheduler_output, "memento_offsets", None)
        if not offsets:
            return original(self, scheduler_output, num_scheduled_tokens)
        num_reqs = self.input_batch.num_reqs
        # Rows move (condense, reorder) inside _update_states, so map by request id here.
        per_req = np.array([offsets.get(rid, 0) for rid in self.input_batch.req_ids[:num_reqs]],
                           dtype=np.int64)
        per_token = torch.from_numpy(np.repeat(per_req, num_scheduled_tokens)).to(self.device)
        block_table = self.input_batch.block_table
        logical_slot_mapping = block_table.compute_slot_mapping

        def physical_slot_mapping(n, query_start_loc, positions):
            logical_slot_mapping(n, query_start_loc, positions - per_token)

        block_table.compute_slot_mapping = physical_slot_mapping  # shadows the method once
        try:
            out = original(self, scheduler_output, num_scheduled_tokens)
        finally:
            del block_table.compute_slot_mapping
        per_req_t = torch.from_numpy(per_req)
        self.seq_lens[:num_reqs] -= per_req_t.to(self.seq_lens.device, self.seq_lens.dtype)
        self.optimistic_seq_lens_cpu[:num_reqs] -= per_req_t.to(self.optimistic_seq_lens_cpu.dtype)
        return out
    return wrapper


# --- CPU: seeded requests whose partial-prefill sample is discarded -----------------------------
# vLLM rewinds such a request's generator by its Philox offset, which CPU generators lack, so the
# CPU runner crashes ("CPU Generator does not use offset"). Memento mode discards these samples
# at every prefill segment end (prompts with closed blocks, recompute after preemption), so on
# CPU the generator state is saved before sampling and restored instead.

def _discarded_generators(runner) -> dict[int, torch.Generator]:
    rows = np.flatnonzero(runner.discard_request_mask.np[:runner.input_batch.num_reqs])
    generators = runner.input_batch.generators
    return {int(r): generators[int(r)] for r in rows if int(r) in generators}


def _sample(original):
    def wrapper(self, *args, **kwargs):
        saved = {row: g.get_state() for row, g in _discarded_generators(self).items()}
        out = original(self, *args, **kwargs)
        for row, state in saved.items():
            self.input_batch.generators[row].set_state(state)
        return out
    return wrapper


def _bookkeeping_sync(original):
    def wrapper(self, *args, **kwargs):
        hidden = _discarded_generators(self)  # already restored by _sample
        for row in hidden:
            del self.input_batch.generators[row]
        try:
            return original(self, *args, **kwargs)
        finally:
            self.input_batch.generators.update(hidden)
    return wrapper


PATCHES = [
    (GPUModelRunner, "_update_states", _update_states),
    (GPUModelRunner, "_prepare_inputs", _prepare_inputs),
]
if current_platform.is_cpu():
    PATCHES += [(GPUModelRunner, "_sample", _sample),
                (GPUModelRunner, "_bookkeeping_sync", _bookkeeping_sync)]
