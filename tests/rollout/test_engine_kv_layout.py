"""The plugin's slot arithmetic and KV copy, without an engine: fast checks of the two places a
wrong index would corrupt KV silently (vllm032.md §3: a row-major K copy on CPU "runs" too)."""

import numpy as np
import pytest
import torch
from vllm import _custom_ops as ops
from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

from rollout.vllm_plugin.runner import copy_slots
from rollout.vllm_plugin.scheduler import compaction_moves


def test_compaction_moves_keep_survivors_contiguous_in_order():
    # 10 computed tokens, evict logical [2, 5): tokens 5..9 move from slots 5..9 to 2..6.
    src, dst, gone = compaction_moves(np.zeros(0, bool), 2, 5, 10)
    assert src.tolist() == [5, 6, 7, 8, 9] and dst.tolist() == [2, 3, 4, 5, 6]
    # Then evict logical [6, 8) (physical 3, 4): logical 8, 9 move from slots 5, 6 to 3, 4.
    src, dst, gone = compaction_moves(gone, 6, 8, 10)
    assert src.tolist() == [5, 6] and dst.tolist() == [3, 4]
    assert np.flatnonzero(~gone).tolist() == [0, 1, 5, 8, 9]


def test_compaction_moves_ignore_positions_already_gone():
    # Nested eviction: [3, 5) first, then the enclosing [2, 7) removes only 2, 5 and 6.
    _, _, gone = compaction_moves(np.zeros(0, bool), 3, 5, 9)
    src, dst, gone = compaction_moves(gone, 2, 7, 9)
    assert src.tolist() == [5, 6] and dst.tolist() == [2, 3]  # logical 7, 8
    assert int(gone.sum()) == 5


@pytest.mark.parametrize("page,head_dim", [(32, 32), (32, 64), (64, 128)])
def test_cpu_slot_copy_matches_what_the_cpu_kernel_writes(page, head_dim):
    """Copy tokens written on pages 1 and 2 to slots 6, 7 of page 0: page 0 must equal a cache
    where the kernel wrote them at (6, 7) directly."""
    torch.manual_seed(0)
    heads, pages = 2, 3
    isa = _get_attn_isa(torch.float32, page, head_dim)
    key, value = torch.randn(3, heads, head_dim), torch.randn(3, heads, head_dim)

    def written(slots):
        kv = torch.zeros(pages, heads, page, 2 * head_dim)
        k_cache, v_cache = kv.view(pages, heads, 2 * page, head_dim).chunk(2, dim=2)
        ops.cpu_attn_reshape_and_cache(key, value, k_cache, v_cache,
                                       torch.tensor(slots, dtype=torch.int64), isa)
        return kv

    sources = [page + 8, 2 * page + 1]
    moved = written([5] + sources)
    copy_slots(moved, torch.tensor(sources), torch.tensor([6, 7]), cpu_layout=True)
    assert torch.equal(moved[0], written([5, 6, 7])[0])
