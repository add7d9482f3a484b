"""Exact DP segmentation against brute force over every cut set, and its constraints."""

import itertools
import random

import pytest

from rl.data.pipeline.segment import SegmentationError, objective, segment


def brute_force(tokens, scores, min_tokens, min_blocks, max_blocks, cv_weight, mean_over):
    """Best J over all 2^(n-1) cut sets (None when no set meets the constraints)."""
    n, best = len(tokens), None
    for r in range(n):
        for cuts in itertools.combinations(range(1, n), r):
            blocks = list(zip([0, *cuts], [c - 1 for c in cuts] + [n - 1]))
            if not min_blocks <= len(blocks) <= (max_blocks or n):
                continue
            if any(sum(tokens[a:b + 1]) < min_tokens for a, b in blocks):
                continue
            j = objective(tokens, scores, blocks, cv_weight, mean_over)
            best = j if best is None else max(best, j)
    return best


def check_constraints(blocks, tokens, min_tokens, min_blocks, max_blocks):
    assert blocks[0][0] == 0 and blocks[-1][1] == len(tokens) - 1
    assert all(b[1] + 1 == c[0] for b, c in zip(blocks, blocks[1:]))
    assert all(sum(tokens[a:b + 1]) >= min_tokens for a, b in blocks)
    assert min_blocks <= len(blocks) <= (max_blocks or len(tokens))


@pytest.mark.parametrize("mean_over", ["blocks", "cuts"])
@pytest.mark.parametrize("seed", range(4))
def test_dp_matches_brute_force_on_random_small_inputs(seed, mean_over):
    rng = random.Random(seed)
    for _ in range(60):
        n = rng.randint(1, 11)
        tokens = [rng.randint(1, 97) for _ in range(n)]
        scores = [rng.randint(0, 6) / 2 for _ in range(n - 1)]  # two-pass averages
        min_tokens, min_blocks = rng.choice([0, 13, 50, 120]), rng.randint(1, 4)
        max_blocks, cv_weight = rng.choice([None, min_blocks, 5]), rng.choice([0.0, 0.5, 3.0])
        expected = brute_force(tokens, scores, min_tokens, min_blocks, max_blocks, cv_weight,
                               mean_over)
        options = dict(min_block_tokens=min_tokens, min_blocks=min_blocks, max_blocks=max_blocks,
                       cv_weight=cv_weight, mean_over=mean_over)
        if expected is None:
            with pytest.raises(SegmentationError):
                segment(tokens, scores, **options)
            continue
        blocks = segment(tokens, scores, **options)
        check_constraints(blocks, tokens, min_tokens, min_blocks, max_blocks)
        assert objective(tokens, scores, blocks, cv_weight, mean_over) == pytest.approx(
            expected, abs=1e-9)


def test_hand_case_cuts_at_the_strong_boundary_into_equal_halves():
    # Blocks of >= 150 of 400 tokens: only the cut after sentence 1 (score 3), sizes 200/200,
    # CV 0 -> J = 3 / 2 blocks, or 3 / 1 cut.
    blocks = segment([100] * 4, [0, 3, 0], min_block_tokens=150)
    assert blocks == [(0, 1), (2, 3)]
    assert objective([100] * 4, [0, 3, 0], blocks, 0.5) == 1.5
    assert objective([100] * 4, [0, 3, 0], blocks, 0.5, "cuts") == 3.0


def test_dividing_by_blocks_prefers_more_strong_cuts():
    # Three boundaries scoring 3, equal sentences, no balance term: over blocks, 3 cuts give
    # 9/4 against 3/2 for one; over cuts every subset of them gives 3, and the DP keeps the first
    # (fewest blocks) of the ties.
    tokens, scores = [100] * 4, [3, 3, 3]
    assert len(segment(tokens, scores, min_block_tokens=0, cv_weight=0.0)) == 4
    assert len(segment(tokens, scores, min_block_tokens=0, cv_weight=0.0, mean_over="cuts")) == 2


def test_size_balance_outweighs_a_better_boundary_when_the_weight_is_high():
    tokens, scores = [50, 50, 50, 50, 400], [3, 2, 2, 2]
    # cut after 0: sizes 50/550, CV 0.83; cut after 3: 200/400, CV 1/3 (mean cut score 2)
    assert segment(tokens, scores, min_block_tokens=0, cv_weight=0.0,
                   mean_over="cuts") == [(0, 0), (1, 4)]
    assert segment(tokens, scores, min_block_tokens=0, cv_weight=5.0, max_blocks=2,
                   mean_over="cuts") == [(0, 3), (4, 4)]


def test_min_blocks_forces_cuts_and_short_traces_fail_clearly():
    assert len(segment([100] * 6, [0] * 5, min_block_tokens=100, min_blocks=3)) >= 3
    with pytest.raises(SegmentationError, match="blocks of >= 200 tokens"):
        segment([60, 60], [3], min_block_tokens=200)
    with pytest.raises(ValueError, match="multiples of 0.5"):
        segment([100, 100], [0.3])
    with pytest.raises(ValueError, match="boundary scores"):
        segment([100, 100], [])


def test_a_trace_sized_input_segments_within_constraints():
    rng = random.Random(1)
    tokens = [rng.randint(10, 120) for _ in range(150)]
    scores = [rng.randint(0, 6) / 2 for _ in range(149)]
    blocks = segment(tokens, scores)
    check_constraints(blocks, tokens, 200, 1, None)
