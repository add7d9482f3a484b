"""Packing: token-budgeted bins, original positions, and response log-prob indexing."""

import numpy as np
import torch

from rl.batch import RolloutBatch, balance_token_bins, make_micro_batches, pack
from rollout.layout import MementoConfig, evict_at

BS, BE, SS, SE = 100, 101, 102, 103


def test_bins_respect_the_budget_and_cover_every_sequence():
    lengths = np.array([7, 3, 9, 2, 5, 5, 1, 8])
    bins = balance_token_bins(lengths, max_tokens=10, num_bins_multiple=3)
    assert len(bins) % 3 == 0
    assert sorted(i for b in bins for i in b) == list(range(8))
    assert all(lengths[b].sum() <= 10 for b in bins if b)


def test_oversized_sequence_gets_its_own_bin():
    bins = balance_token_bins(np.array([50, 3]), max_tokens=10)
    assert [0] in bins and [1] in bins


def test_packed_micro_batch_keeps_positions_layout_and_targets():
    cfg = MementoConfig(BS, BE, SS, SE)
    batch = RolloutBatch.from_sequences([[1, 2], [3]], [[BS, 4, BE, SS, 5, SE, 6], [7, 8]])
    batch.compute_layout(cfg)
    (mbs,) = make_micro_batches(batch, max_tokens=100)
    (mb,) = mbs
    assert mb.indices == [0, 1]
    assert mb.position_ids.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2]
    # sequence 0: block content at packed 3 evicted at its summary_end (packed 7)
    assert mb.evict_at.tolist() == [9, 9, 9, 7, 9, 9, 9, 9, 9, 12, 12, 12]
    assert mb.targets.tolist() == [2, BS, 4, BE, SS, 5, SE, 6, -100, 7, 8, -100]
    # flat index predicting each response's first token: prompt end - 1
    assert mb.response_starts == [1, 9] and mb.response_lengths == [7, 2]
    flat = torch.arange(12, dtype=torch.float32)
    # rows read the positions that predict their response tokens
    assert mb.gather_responses(flat, 7).tolist() == [[1, 2, 3, 4, 5, 6, 7], [9, 10, 0, 0, 0, 0, 0]]
    assert mb.targets[torch.tensor([1, 2, 3, 4, 5, 6, 7])].tolist() == batch.response_ids[0]


def visible(ev: np.ndarray) -> np.ndarray:
    """Dense (N, N) visibility from evict_at: query i sees key j iff j <= i < evict_at[j]."""
    i, j = np.arange(len(ev))[:, None], np.arange(len(ev))[None, :]
    return (j <= i) & (i < ev[None, :])


def test_packed_layout_caps_at_sequence_end_and_resets_positions():
    cfg = MementoConfig(BS, BE, SS, SE)
    batch = RolloutBatch.from_sequences([[BS, 1], [4]], [[BE, SS, 2, SE, 3], [5, 6]])
    batch.compute_layout(cfg)
    mb = pack(batch, [0, 1])
    assert mb.position_ids.tolist() == [0, 1, 2, 3, 4, 5, 6, 0, 1, 2]
    assert mb.evict_at.tolist() == [7, 5, 7, 7, 7, 7, 7, 10, 10, 10]  # capped at 7, then at 10
    assert not visible(mb.evict_at.numpy())[7:, :7].any()  # no query of sequence 1 sees sequence 0
    assert pack(batch, []).evict_at.numel() == 0


def test_packed_visibility_is_each_sequence_alone_on_the_diagonal():
    """Awkward lengths, options and a block left open: the packed row's visibility is block-diagonal,
    each block the sequence's own layout."""
    cfg = MementoConfig(BS, BE, SS, SE, keep_last_n_blocks=1, mask_delimiters=True)
    prompts = [[7, 7, 7], [8], [9, 9]]
    responses = [[BS, 1, 1, BE, SS, 2, SE, BS, 3, BE, SS, 4, SE, 5], [BS, 6, BE, SS], [BS, 1, BE, SS, 2, SE, BS, 3]]
    batch = RolloutBatch.from_sequences(prompts, responses)
    batch.compute_layout(cfg)
    mb = pack(batch, [2, 0, 1])
    expected = np.zeros((mb.num_tokens, mb.num_tokens), dtype=bool)
    causal = expected.copy()
    offset = 0
    for i in [2, 0, 1]:
        seq = prompts[i] + responses[i]
        rows = slice(offset, offset + len(seq))
        expected[rows, rows] = visible(evict_at(seq, cfg))
        causal[rows, rows] = np.tril(np.ones((len(seq), len(seq)), dtype=bool))
        offset += len(seq)
    np.testing.assert_array_equal(visible(mb.evict_at.numpy()), expected)
    assert (expected != causal).any()  # the layout evicts something, so the comparison has teeth


def test_micro_batches_split_evenly_across_ranks():
    batch = RolloutBatch.from_sequences([[1]] * 5, [[2, 3]] * 5)
    batch.compute_layout(None)
    per_rank = make_micro_batches(batch, max_tokens=6, num_ranks=2)
    assert len(per_rank[0]) == len(per_rank[1])
    assert sorted(i for mbs in per_rank for mb in mbs for i in mb.indices) == list(range(5))


def test_select_slices_every_field():
    batch = RolloutBatch.from_sequences([[1], [2], [3]], [[4], [5, 6], [7]])
    batch.rewards = torch.tensor([0.0, 1.0, 2.0])
    sub = batch.select([2, 0])
    assert sub.response_ids == [[7], [4]] and sub.rewards.tolist() == [2.0, 0.0]
    assert sub.group_ids.tolist() == [2, 0]


def test_concat_joins_samples_and_repads_token_tensors():
    a = RolloutBatch.from_sequences([[1]], [[4, 5, 6]])
    b = RolloutBatch.from_sequences([[2], [3]], [[7], [8, 9]], group_ids=[5, 6])
    a.rewards, b.rewards = torch.tensor([1.0]), torch.tensor([0.0, 2.0])
    both = a.concat(b)
    assert both.response_ids == [[4, 5, 6], [7], [8, 9]] and both.group_ids.tolist() == [0, 5, 6]
    assert both.response_mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert both.rewards.tolist() == [1.0, 0.0, 2.0]
