"""rl.eval.metrics against slow, obviously-correct references (every k-subset enumerated)."""

import itertools
import math
import random
import statistics
from collections import Counter

import pytest

from rl.eval.metrics import (accuracy_metrics, default_ks, majority_correct, mean_and_stderr,
                             pass_at_k)


def pass_at_k_reference(correct: list[bool], k: int) -> float:
    """Fraction of the k-subsets of the samples that hold a correct one."""
    subsets = list(itertools.combinations(correct, k))
    return sum(any(s) for s in subsets) / len(subsets)


def majority_reference(answers, correct) -> bool:
    counts = Counter(a.strip() for a in answers if a is not None)
    if not counts:
        return False
    best = max(counts.values())
    winner = next(a.strip() for a in answers if a is not None and counts[a.strip()] == best)
    return next(c for a, c in zip(answers, correct) if a is not None and a.strip() == winner)


@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_pass_at_k_matches_subset_enumeration(n):
    rng = random.Random(n)
    for _ in range(20):
        correct = [rng.random() < 0.4 for _ in range(n)]
        for k in range(1, n + 1):
            assert pass_at_k(n, sum(correct), k) == pytest.approx(pass_at_k_reference(correct, k))


def test_pass_at_k_hand_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 2, 3) == 1.0  # only 2 wrong samples: every 3-subset has a correct one
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_majority_vote_ties_and_missing_answers():
    assert majority_correct(["3", "4", "4", None, None], [False, True, True, False, False])
    assert not majority_correct(["3", "4"], [False, True])  # tie: the first answer seen wins
    assert not majority_correct([None, None], [False, False])  # nobody voted
    assert majority_correct([" 7", "7 ", "8"], [True, True, False])  # compared stripped
    rng = random.Random(0)
    for _ in range(200):
        answers = [rng.choice(["1", "2", "3", None]) for _ in range(rng.randint(1, 6))]
        correct = [a == "2" for a in answers]
        assert majority_correct(answers, correct) == majority_reference(answers, correct)


def test_mean_and_stderr():
    values = [0.0, 0.5, 1.0, 0.25]
    mean, se = mean_and_stderr(values)
    assert mean == pytest.approx(statistics.mean(values))
    assert se == pytest.approx(statistics.stdev(values) / math.sqrt(len(values)))
    assert mean_and_stderr([0.3]) == (0.3, 0.0)


def test_accuracy_metrics_two_problems():
    # Problem A: 3 of 4 correct; B: 0 of 4. pass@1 = (0.75 + 0) / 2; SE = stdev([.75, 0]) / sqrt 2.
    correct = [[True, True, False, True], [False] * 4]
    answers = [["5", "5", "6", "5"], ["1", None, "2", "2"]]
    m = accuracy_metrics(correct, answers, default_ks(4))
    assert default_ks(4) == [1, 2, 4] and default_ks(6) == [1, 2, 4, 6]
    assert m["num_problems"] == 2
    assert m["pass@1"] == pytest.approx(0.375)
    assert m["pass@1_se"] == pytest.approx(statistics.stdev([0.75, 0.0]) / math.sqrt(2))
    assert m["pass@2"] == pytest.approx((1.0 + 0.0) / 2)  # A has one wrong: every pair hits
    assert m["pass@4"] == pytest.approx(0.5)
    assert m["maj@1"] == pytest.approx(0.5)  # A's first sample is right, B's wrong
    assert m["maj@4"] == pytest.approx(0.5)
