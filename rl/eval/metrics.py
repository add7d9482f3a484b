"""Accuracy metrics of an evaluation: pass@1 with its standard error, pass@k, maj@k.

Pure functions over per-problem sample outcomes, shared by `rl.eval.evaluate` (the command) and its tests
(which check them against brute-force references over every k-subset).

    accuracy_metrics(correct=[[True, False, True], ...], answers=[["4", "5", "4"], ...], ks=[1, 2])
    -> {"pass@1": ..., "pass@1_se": ..., "pass@2": ..., "maj@2": ..., "num_problems": ...}
"""

from __future__ import annotations

import math
from typing import Sequence


def default_ks(n: int) -> list[int]:
    """The k reported for n samples per problem: powers of two up to n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct among n samples (Chen et al. 2021, codex).

    1 - C(n-c, k) / C(n, k), the chance that k samples drawn without replacement hold a correct
    one, written as a product so it stays exact-ish for n in the thousands.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Whether the most frequent extracted answer is correct (maj@k over these samples).

    Samples without an answer (None) do not vote; ties go to the answer seen first; no votes at
    all count as wrong. Answers are compared as stripped strings, so "0.5" and "1/2" are two
    different votes (the verifier's equivalence is not applied between samples).
    """
    votes: dict[str, int] = {}
    first_correct: dict[str, bool] = {}
    for answer, ok in zip(answers, correct):
        if answer is None:
            continue
        key = answer.strip()
        votes[key] = votes.get(key, 0) + 1
        first_correct.setdefault(key, bool(ok))
    if not votes:
        return False
    winner = max(votes, key=votes.get)  # max keeps the first of equal counts (insertion order)
    return first_correct[winner]


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std with ddof=1 over sqrt(N); 0 for N < 2)."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def accuracy_metrics(correct: Sequence[Sequence[bool]], answers: Sequence[Sequence[str | None]],
                     ks: Sequence[int]) -> dict[str, float]:
    """Accuracy over problems, each with the same number n of samples.

    Args:
        correct: [P][n] whether each sample was verified correct.
        answers: [P][n] each sample's extracted answer (None when there was none).
        ks: the k to report; each must be <= n.

    Returns:
        pass@1 and pass@1_se (mean and standard error over problems of the per-problem fraction
        correct), pass@k (unbiased, mean over problems) and maj@k (majority vote over each
        problem's first k samples, mean over problems) for every k, and num_problems.
    """
    out: dict[str, float] = {"num_problems": len(correct)}
    if not correct:
        return out
    per_problem = [sum(map(bool, c)) / len(c) for c in correct]
    out["pass@1"], out["pass@1_se"] = mean_and_stderr(per_problem)
    P = len(correct)
    for k in ks:
        out[f"pass@{k}"] = sum(pass_at_k(len(c), sum(map(bool, c)), k) for c in correct) / P
        out[f"maj@{k}"] = sum(majority_correct(a[:k], c[:k]) for a, c in zip(answers, correct)) / P
    return out
