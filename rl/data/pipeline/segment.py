"""Segmentation: sentences -> blocks, exactly maximising the paper's objective.

For blocks with token sizes l_1..l_k and the k-1 sentence boundaries they cut at,

    J = (sum of the cut boundaries' scores) / D - cv_weight * std(l) / mean(l)

(population std), subject to every block holding at least `min_block_tokens` tokens and
min_blocks <= k <= max_blocks. D is k with `mean_over="blocks"`, the released pipeline's
(the first block enters with no boundary, scoring 0; OpenMementos was built with it), or k - 1
with `mean_over="cuts"`, the plain mean over the cuts, which is indifferent to adding more cuts
as strong as the ones already made (a single block scores 0 either way).

J is not a sum over blocks, so a DP that keeps one running best per state is only approximate
(the released pipeline's is). It becomes exact with the score sum in the state: for fixed k the
mean block size T/k is fixed, so J depends only on the cut-score total U and the sum of squared
sizes Q, rising in U and falling in Q. The DP keeps, for every (k, sentences covered, U), the
least Q; J is then maximised over the (k, U) cells. Scores must lie on a grid of step
`score_resolution` (0.5 for the two-pass average of 0-3 integer scores), so U is an integer.

Cost O(K n^2 U) for n sentences, K blocks, U score units, vectorised over U: about a second for
a 200-sentence, 11K-token trace.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np


MeanOver = Literal["blocks", "cuts"]


class SegmentationError(ValueError):
    """No segmentation satisfies the constraints (the trace is too short for them)."""


def objective(token_counts: Sequence[int], boundary_scores: Sequence[float],
              blocks: Sequence[tuple[int, int]], cv_weight: float,
              mean_over: MeanOver = "blocks") -> float:
    """J of `blocks` (inclusive [start, end] sentence ranges tiling the sentences)."""
    sizes = [sum(token_counts[a:b + 1]) for a, b in blocks]
    cuts = [boundary_scores[a - 1] for a, _ in blocks[1:]]
    mean_score = sum(cuts) / _divisor(len(blocks), mean_over) if cuts else 0.0
    mean = sum(sizes) / len(sizes)
    std = math.sqrt(max(sum(s * s for s in sizes) / len(sizes) - mean * mean, 0.0))
    return mean_score - cv_weight * std / mean


def segment(token_counts: Sequence[int], boundary_scores: Sequence[float], *,
            min_block_tokens: int = 200, min_blocks: int = 1, max_blocks: int | None = None,
            cv_weight: float = 0.5, score_resolution: float = 0.5,
            mean_over: MeanOver = "blocks") -> list[tuple[int, int]]:
    """Blocks maximising J, as inclusive [start, end] sentence ranges in order.

    Args:
        token_counts: (n,) tokens of each sentence.
        boundary_scores: (n-1,) score of the boundary after sentence i, multiples of
            `score_resolution`.
    Raises:
        SegmentationError: when no segmentation meets the size and count constraints.
    """
    n = len(token_counts)
    if n == 0 or len(boundary_scores) != n - 1:
        raise ValueError(f"{n} sentences need {max(n - 1, 0)} boundary scores, "
                         f"got {len(boundary_scores)}")
    units = [round(s / score_resolution) for s in boundary_scores]
    if any(u < 0 or abs(u * score_resolution - s) > 1e-9 for u, s in zip(units, boundary_scores)):
        raise ValueError(f"boundary scores must be non-negative multiples of {score_resolution}")
    prefix = np.concatenate([[0], np.cumsum(token_counts)]).astype(np.float64)  # (n+1,)
    if prefix[-1] <= 0:
        raise ValueError("the sentences hold no tokens")
    total = prefix[-1]
    k_max = min(n, max_blocks or n, int(total // max(min_block_tokens, 1)) or 1)
    u_max = sum(sorted(units, reverse=True)[:k_max - 1])

    # least_q[k][i, u]: least sum of squared block sizes splitting sentences [0, i) into k
    # blocks whose cut boundaries score u units in total; came_from[k][i, u] = start of block k.
    inf = np.inf
    least_q = np.full((n + 1, u_max + 1), inf)
    valid_end = prefix >= min_block_tokens
    least_q[valid_end, 0] = prefix[valid_end] ** 2
    tables, came_from = [least_q], [np.zeros((n + 1, u_max + 1), dtype=np.int32)]
    for _ in range(2, k_max + 1):
        prev = tables[-1]
        # shifted[j, u] = prev[j, u - units[j-1]]: block k starts at sentence j, cutting there.
        shifted = np.full_like(prev, inf)
        for j in range(1, n):
            shifted[j, units[j - 1]:] = prev[j, :u_max + 1 - units[j - 1]]
        cur = np.full_like(prev, inf)
        arg = np.zeros(prev.shape, dtype=np.int32)
        for i in range(2, n + 1):
            j_last = int(np.searchsorted(prefix, prefix[i] - min_block_tokens, side="right")) - 1
            j_last = min(j_last, i - 1)
            if j_last < 1:
                continue
            cand = shifted[1:j_last + 1] + ((prefix[i] - prefix[1:j_last + 1]) ** 2)[:, None]
            best = cand.argmin(0)
            cur[i] = cand[best, np.arange(u_max + 1)]
            arg[i] = best + 1
        tables.append(cur)
        came_from.append(arg)

    best_j, best_cell = -inf, None
    for k in range(max(min_blocks, 1), k_max + 1):
        mean = total / k
        for u in np.flatnonzero(np.isfinite(tables[k - 1][n])):
            q = tables[k - 1][n, u]
            cv = math.sqrt(max(q / k - mean * mean, 0.0)) / mean
            score = (u * score_resolution / _divisor(k, mean_over) if k > 1 else 0.0
                     ) - cv_weight * cv
            if score > best_j + 1e-12:
                best_j, best_cell = score, (k, int(u))
    if best_cell is None:
        raise SegmentationError(f"no split of {n} sentences ({int(total)} tokens) into "
                                f"{min_blocks}..{k_max} blocks of >= {min_block_tokens} tokens")
    return _backtrack(best_cell, n, units, came_from)


def _divisor(k: int, mean_over: MeanOver) -> int:
    return k if mean_over == "blocks" else k - 1


def _backtrack(cell: tuple[int, int], n: int, units: list[int], came_from) -> list[tuple[int, int]]:
    k, u = cell
    blocks, end = [], n
    while k > 1:
        start = int(came_from[k - 1][end, u])
        blocks.append((start, end - 1))
        u -= units[start - 1]
        end, k = start, k - 1
    blocks.append((0, end - 1))
    return blocks[::-1]
