"""Boundary scoring and memento rounds with a scripted model: windows, averaging, refinement,
retries on malformed answers. (The same stages against a real vLLM server: test_pipeline_server.)"""

import json
import re
from concurrent.futures import Future

import pytest

from rl.data.pipeline.ask import ParseError, StageFailure, Usage
from rl.data.pipeline.boundaries import score_boundaries, windows
from rl.data.pipeline.client import ChatReply
from rl.data.pipeline.config import MementoConfig, ScoringConfig
from rl.data.pipeline.mementos import parse_verdict, write_mementos


class ScriptedClient:
    """Replies answer(prompt) for every request, as a resolved future; logs the prompts."""

    def __init__(self, answer):
        self.answer, self.prompts = answer, []

    def submit(self, request):
        prompt = request.messages[-1]["content"]
        self.prompts.append(prompt)
        future = Future()
        future.set_result(ChatReply(self.answer(prompt), len(prompt), 5, "stop"))
        return future


def test_windows_share_one_sentence_so_each_boundary_is_scored_once():
    assert windows(10, 4) == [(0, 3), (3, 6), (6, 9)]
    assert windows(5, 16) == [(0, 4)]
    assert windows(1, 16) == []


def test_two_passes_are_averaged_per_boundary():
    sentences = [f"Sentence {i}." for i in range(7)]

    def answer(prompt):  # pass with 3-sentence windows says 1, with 4-sentence windows 2
        first, last = map(int, re.search(r"numbered \[(\d+)\] to \[(\d+)\]", prompt).groups())
        count = last - first
        return "```json\n" + json.dumps({"scores": [1 if count == 2 else 2] * count}) + "\n```"

    usage = Usage()
    client = ScriptedClient(answer)
    scores = score_boundaries(client, "p", sentences, ScoringConfig(windows=[3, 4]), usage)
    assert scores == [1.5] * 6
    assert usage.by_stage["score"]["calls"] == 3 + 2


def test_malformed_scores_are_re_asked_then_fail_the_stage():
    replies = iter(["not json", json.dumps({"scores": [0, 5]}), json.dumps({"scores": [3, 0]})])
    usage = Usage()
    client = ScriptedClient(lambda _: next(replies))
    scores = score_boundaries(client, "p", ["A a.", "B b.", "C c."],
                              ScoringConfig(windows=[16], parse_retries=2), usage)
    assert scores == [3.0, 0.0] and usage.by_stage["score"]["calls"] == 3
    with pytest.raises(StageFailure, match="malformed after 2 tries"):
        score_boundaries(ScriptedClient(lambda _: "{}"), "p", ["A a.", "B b."],
                         ScoringConfig(parse_retries=1), Usage())


def verdict(score, feedback="add the formula"):
    points = dict(formulas=3, values=2, methods=2, validation=1, correctness=1, result_first=1)
    return json.dumps({"feedback": feedback, **points, "penalty": 10 - score})


def test_verdict_is_rubric_sum_minus_penalty_clipped():
    assert parse_verdict(verdict(7)).score == 7.0
    over = json.loads(verdict(7))
    over["penalty"] = 0
    assert parse_verdict(json.dumps(over)).score == 10.0
    over["formulas"] = 4
    with pytest.raises(ParseError, match="formulas"):
        parse_verdict(json.dumps(over))


def test_rounds_rewrite_only_failing_blocks_and_keep_the_best_memento():
    # Judge: block A passes at once; B passes after one rewrite; C never passes, its second
    # memento scoring best. Mementos are "m<block><version>".
    scores = {"mA0": 9, "mB0": 4, "mB1": 8, "mC0": 5, "mC1": 7, "mC2": 6}

    def answer(prompt):
        block = re.search(r"<<<\n(\w)", prompt).group(1)
        if prompt.startswith("Block of reasoning"):
            return verdict(scores[re.findall(r"<<<\n(\w+)", prompt)[1]])
        version = 0 if "Memento written for it" not in prompt else 1 + int(
            re.search(r"Memento written for it:\n<<<\nm\w(\d)", prompt).group(1))
        return f"m{block}{version}"

    usage = Usage()
    results = write_mementos(ScriptedClient(answer), "p", ["A block", "B block", "C block"],
                             [100, 100, 100], MementoConfig(), usage)
    assert [r.memento for r in results] == ["mA0", "mB1", "mC1"]
    assert [r.round_scores for r in results] == [[9], [4, 8], [5, 7, 6]]
    assert [r.score for r in results] == [9, 8, 7]
    calls = {stage: u["calls"] for stage, u in usage.by_stage.items()}
    assert calls == {"write/0": 3, "judge/0": 3, "write/1": 2, "judge/1": 2, "write/2": 1,
                     "judge/2": 1}


def test_a_memento_with_delimiters_is_rejected_and_the_stage_fails():
    client = ScriptedClient(lambda p: "x <|block_end|>" if "Write the memento" in p else verdict(9))
    with pytest.raises(StageFailure, match="write/0.*delimiters"):
        write_mementos(client, "p", ["A block"], [100], MementoConfig(parse_retries=1), Usage())
