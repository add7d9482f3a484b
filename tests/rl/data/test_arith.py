"""rl.data.arith: the arithmetic task's problems, exact answers, memento traces and files."""

import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from rewards.math import score_math
from rl.data.arith import (DATA_SOURCE, ArithConfig, ArithProblem, ArithStep, generate_problems,
                           recovered_after_lossy, resolve_files, sft_row, solution_trace,
                           state_memento_share, write_arith_datasets)
from rl.data.prompts import PromptDataset
from rl.data.rows import read_rows
from rl.data.sft_dataset import SFTDataset, check_memento_response
from rollout.layout import MementoConfig, evict_at, memento_stats

_PHRASES = re.compile(r"(Add|Subtract|Multiply by|Divide by) (\d+)\.")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def solve_from_text(question: str) -> int:
    """Independent solver: reads the question text and evaluates it with Python ints."""
    value = int(re.match(r"Start with (\d+)\.", question).group(1))
    for verb, operand in _PHRASES.findall(question):
        operand = int(operand)
        if verb == "Add":
            value += operand
        elif verb == "Subtract":
            value -= operand
        elif verb == "Multiply by":
            value *= operand
        else:
            assert value % operand == 0, f"inexact division in {question!r}"
            value //= operand
    return value


def test_hand_worked_problem():
    # 7 + 5 = 12; 12 * 3 = 36; 36 - 4 = 32; 32 / 8 = 4
    problem = ArithProblem(7, (ArithStep("add", 5), ArithStep("mul", 3), ArithStep("sub", 4),
                               ArithStep("div", 8)))
    assert problem.question == ("Start with 7. Add 5. Multiply by 3. Subtract 4. Divide by 8. "
                                "What is the result?")
    assert problem.values == [12, 36, 32, 4] and problem.answer == 4


def test_hand_worked_trace():
    problem = ArithProblem(9, (ArithStep("sub", 3), ArithStep("div", 2)))
    assert solution_trace(problem) == (
        "<think>\n"
        "<|block_start|>Value is 9. Step 1: 9 - 3 = 6. Now 6.<|block_end|>\n"
        "<|summary_start|>After step 1: 6<|summary_end|>\n"
        "<|block_start|>Value is 6. Step 2: 6 / 2 = 3. Now 3.<|block_end|>\n"
        "<|summary_start|>After step 2: 3<|summary_end|>\n"
        "</think>\n\\boxed{3}")


def test_generation_is_deterministic_distinct_and_prefix_stable():
    problems = generate_problems(300, seed=5)
    assert problems == generate_problems(300, seed=5)
    assert problems[:50] == generate_problems(50, seed=5)
    assert len(set(problems)) == 300
    assert problems != generate_problems(300, seed=6)


@pytest.mark.parametrize("cfg", [ArithConfig(), ArithConfig(min_steps=6, max_steps=8,
                                                            operand_max=20, value_max=5000),
                                 ArithConfig(ops=("add", "sub"), min_steps=1, max_steps=1),
                                 ArithConfig(ops=("add", "sub"), operand_max=5, value_max=20,
                                             nonnegative=True)])
def test_answers_are_exact_and_difficulty_is_respected(cfg):
    for problem in generate_problems(100, seed=1, cfg=cfg):
        assert solve_from_text(problem.question) == problem.answer
        assert cfg.min_steps <= len(problem.steps) <= cfg.max_steps
        assert all(cfg.low <= v <= cfg.value_max for v in problem.values)
        assert all(1 <= s.operand <= cfg.operand_max and s.op in cfg.ops for s in problem.steps)


def test_asking_for_more_problems_than_exist_fails_clearly():
    # One add/sub step from a start in 1..9 with an operand in 1..9: 9 * 2 * 9 = 162 problems.
    cfg = ArithConfig(ops=("add", "sub"), min_steps=1, max_steps=1)
    assert len(generate_problems(162, cfg=cfg)) == 162
    with pytest.raises(ValueError, match="cannot draw 163 distinct problems"):
        generate_problems(163, cfg=cfg)


@pytest.mark.parametrize("steps_per_block", [1, 2])
def test_traces_are_memento_well_formed_and_every_block_is_evicted(tokenizer, steps_per_block):
    mcfg = MementoConfig.from_tokenizer(tokenizer)
    for problem in generate_problems(50, seed=2):
        trace = solution_trace(problem, steps_per_block)
        n_blocks = -(-len(problem.steps) // steps_per_block)
        assert check_memento_response(trace) == n_blocks
        assert trace.endswith(f"</think>\n\\boxed{{{problem.answer}}}")
        assert score_math(trace, str(problem.answer), "math").correct

        ids = tokenizer(trace, add_special_tokens=False)["input_ids"]
        ev = evict_at(ids, mcfg)
        starts = [i for i, t in enumerate(ids) if t == mcfg.block_start]
        ends = [i for i, t in enumerate(ids) if t == mcfg.block_end]
        summary_ends = [i for i, t in enumerate(ids) if t == mcfg.summary_end]
        assert len(starts) == len(ends) == len(summary_ends) == n_blocks
        for s, e, se in zip(starts, ends, summary_ends):
            assert (ev[s + 1:e] == se).all()
        # Only delimiters, mementos and glue stay live: the answer sees no block content.
        assert sum(ev < len(ids)) == sum(e - s - 1 for s, e in zip(starts, ends))


def test_each_memento_carries_the_state_the_next_block_starts_from():
    problem = generate_problems(1, seed=3, cfg=ArithConfig(min_steps=5, max_steps=5))[0]
    trace = solution_trace(problem)
    mementos = re.findall(r"<\|summary_start\|>After step (\d+): (-?\d+)<\|summary_end\|>", trace)
    starts = re.findall(r"<\|block_start\|>Value is (-?\d+)\.", trace)
    assert [int(v) for _, v in mementos] == problem.values
    assert [int(v) for v in starts] == [problem.start, *problem.values[:-1]]


def test_easy_traces_are_short_and_blocks_longer_than_their_mementos(tokenizer):
    mcfg = MementoConfig.from_tokenizer(tokenizer)  # byte-level: 1 char = 1 token
    for problem in generate_problems(200, seed=4):  # default: 2-4 steps
        ids = tokenizer(solution_trace(problem), add_special_tokens=False)["input_ids"]
        assert 100 <= len(ids) <= 300
        assert 2.0 <= memento_stats(ids, mcfg)["compression"] <= 4.0


def test_written_datasets_load_and_splits_are_disjoint(tmp_path, tokenizer):
    files = write_arith_datasets(tmp_path, n_train=40, n_val=10, seed=0)
    train, val = read_rows(files.rl_train), read_rows(files.rl_val)
    assert (len(train), len(val)) == (40, 10)
    assert not {r["prompt"][0]["content"] for r in train} & {r["prompt"][0]["content"] for r in val}
    row = train[0]
    assert row["data_source"] == DATA_SOURCE and row["prompt"][0]["role"] == "user"
    assert "\\boxed{}" in row["prompt"][0]["content"]
    assert row["reward_model"]["ground_truth"] == str(solve_from_text(row["prompt"][0]["content"]))

    prompts = PromptDataset([files.rl_train], tokenizer, max_prompt_length=256)
    assert len(prompts) == 40 and prompts.num_filtered == 0
    sft = SFTDataset([files.sft_train], tokenizer, max_length=1024)
    assert len(sft) == 40 and sft.num_truncated == 0
    # SFT prompt == RL prompt, so SFT trains the exact prompts RL samples from.
    assert sft[0].input_ids[:sft[0].prompt_length] == prompts[0].prompt_ids


def test_a_lossy_memento_drops_the_value_and_the_trace_goes_on_from_the_guess():
    problem = ArithProblem(9, (ArithStep("sub", 3), ArithStep("add", 2)))
    trace = solution_trace(problem, guesses={0: -11})
    assert "<|block_start|>Value is 9. Step 1: 9 - 3 = 6. Now 6.<|block_end|>" in trace
    assert "<|summary_start|>Step 1 done.<|summary_end|>" in trace
    assert "<|block_start|>Value is -11. Step 2: -11 + 2 = -9. Now -9.<|block_end|>" in trace
    assert "<|summary_start|>After step 2: -9<|summary_end|>" in trace
    assert check_memento_response(trace) == 2 and trace.endswith("\\boxed{-9}")
    # After the last block, the answer itself is the guess.
    last = solution_trace(problem, guesses={1: 4})
    assert "<|summary_start|>Step 2 done.<|summary_end|>" in last and last.endswith("\\boxed{4}")


def _dropped_and_guessed(trace: str) -> list[tuple[int, int]]:
    """(value the evicted block ended on, value the trace went on from) per lossy memento."""
    return re.findall(r"Now (-?\d+)\.<\|block_end\|>\n<\|summary_start\|>Step \d+ done\.<\|summary_end\|>"
                      r"\n(?:<\|block_start\|>Value is |</think>\n\\boxed\{)(-?\d+)", trace)


def test_lossy_rate_and_guesses_independent_of_the_dropped_value(tmp_path):
    def lossy_pairs(rate: float, **task) -> tuple[float, list[tuple[int, int]]]:
        cfg = ArithConfig(lossy_memento_rate=rate, **task)
        files = write_arith_datasets(tmp_path / f"{rate}{task}", n_train=600, n_val=10, cfg=cfg)
        texts = [row["response"] for row in read_rows(files.sft_train)]
        pairs = [(int(a), int(b)) for t in texts for a, b in _dropped_and_guessed(t)]
        mementos = sum(len(re.findall(r"<\|summary_start\|>", t)) for t in texts)
        assert sum(len(re.findall(r"Step \d+ done\.", t)) for t in texts) == len(pairs)
        return len(pairs) / mementos, pairs

    # At rate 1 a few mementos stay faithful: no guess in 100 draws kept the divisions exact.
    assert lossy_pairs(0.0)[0] == 0.0 and 0.99 < lossy_pairs(1.0)[0] <= 1.0
    assert lossy_pairs(1.0, ops=("add", "sub"))[0] == 1.0
    assert 0.25 < lossy_pairs(0.3)[0] < 0.35
    # The guess is uniform over [-value_max, value_max] whatever was dropped: it matches the
    # dropped value about once in 2 * value_max + 1 and does not follow it.
    share, pairs = lossy_pairs(0.5, ops=("add", "sub"), operand_max=5, value_max=20)
    dropped, guessed = np.array(pairs).T
    assert abs(share - 0.5) < 0.05 and len(pairs) > 500
    assert guessed.min() == -20 and guessed.max() == 20
    assert np.mean(dropped == guessed) < 0.06
    assert abs(np.corrcoef(dropped, guessed)[0, 1]) < 0.1
    _, pairs = lossy_pairs(0.5, ops=("add", "sub"), operand_max=5, value_max=20, nonnegative=True)
    assert {g for _, g in pairs} == set(range(21))  # non-negative task: guesses in [0, 20]
    # RL prompts do not depend on the trace option.
    assert read_rows(tmp_path / "0.0{}" / "arith_train.jsonl") == \
        read_rows(tmp_path / "0.3{}" / "arith_train.jsonl")
    with pytest.raises(ValueError, match="lossy_memento_rate"):
        ArithConfig(lossy_memento_rate=1.5)


@pytest.mark.parametrize("cfg", [
    ArithConfig(lossy_memento_rate=0.7, max_steps=6, steps_per_block=2),
    ArithConfig(lossy_memento_rate=0.7, ops=("add", "sub"), operand_max=5, value_max=20,
                nonnegative=True)])
def test_guesses_keep_every_step_of_the_trace_exact_and_in_range(cfg):
    rng, steps = random.Random(0), 0
    apply = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
             "/": lambda a, b: a / b}
    for problem in generate_problems(200, seed=7, cfg=cfg):
        trace = sft_row(problem, cfg, rng)["response"]
        for block in re.findall(r"<\|block_start\|>(.*?)<\|block_end\|>", trace):
            value = int(re.match(r"Value is (-?\d+)\.", block).group(1))
            for before, sym, operand, work in re.findall(r"Step \d+: (-?\d+) ([-+*/]) (\d+) = "
                                                         r"(-?\d+)\.", block):
                assert int(before) == value, trace
                after = apply[sym](value, int(operand))
                assert work == f"{after:.0f}", trace
                assert after == int(after) and cfg.low <= after <= cfg.value_max, trace
                value, steps = int(after), steps + 1
            assert block.endswith(f"Now {value}.")
        assert check_memento_response(trace) >= 1
    assert steps == sum(len(p.steps) for p in generate_problems(200, seed=7, cfg=cfg))


def test_recovered_after_lossy_reads_what_follows_each_lossy_memento():
    problem = ArithProblem(9, (ArithStep("sub", 3), ArithStep("add", 2), ArithStep("add", 1)))
    assert recovered_after_lossy(solution_trace(problem)) == []
    assert recovered_after_lossy(solution_trace(problem, guesses={0: 6, 1: 3})) == [True, False]
    assert recovered_after_lossy(solution_trace(problem, guesses={2: 9})) == [True]
    assert recovered_after_lossy(solution_trace(problem, guesses={2: 8})) == [False]
    # A lossy last memento with no answer yet (truncated) or an unparsable next block: skipped.
    truncated = solution_trace(problem, guesses={2: 9}).split("</think>")[0]
    assert recovered_after_lossy(truncated) == []
    garbled = solution_trace(problem, guesses={0: 6}).replace("Value is 6.", "Value 6.")
    assert recovered_after_lossy(garbled) == []


def test_state_memento_share_counts_mementos_that_carry_a_value():
    good = solution_trace(ArithProblem(9, (ArithStep("sub", 3), ArithStep("add", 2))))
    half = solution_trace(ArithProblem(9, (ArithStep("sub", 3), ArithStep("add", 2))),
                          guesses={1: 0})
    garbage = "<think>\n<|block_start|>x<|block_end|>\n<|summary_start|>After step: ?<|summary_end|>"
    assert state_memento_share([good]) == 1.0
    assert state_memento_share([good, half]) == 0.75
    assert state_memento_share([half, garbage]) == pytest.approx(1 / 3)
    assert math.isnan(state_memento_share(["no mementos here", ""]))


def test_builtin_names_resolve_to_the_generated_files(tmp_path):
    rl_val, sft_train, plain = resolve_files(
        ["builtin:arith_val", "builtin:arith_sft", "mine.jsonl"], tmp_path)
    assert (rl_val.name, sft_train.name, plain) == ("arith_val.jsonl", "arith_sft_train.jsonl",
                                                    Path("mine.jsonl"))
    assert "response" in read_rows(sft_train)[0] and "prompt" in read_rows(rl_val)[0]
    with pytest.raises(ValueError, match="unknown builtin dataset 'arith_test'"):
        resolve_files(["builtin:arith_test"], tmp_path)


def test_command_line_writes_the_files_with_its_task_settings(tmp_path):
    from rl.data.arith import main

    main([f"out_dir={tmp_path}", "n_train=30", "n_val=5", "task.ops=[add,mul]",
          "task.max_steps=2", "hydra/job_logging=none", "hydra/hydra_logging=none"])
    rows = read_rows(tmp_path / "arith_train.jsonl")
    assert len(rows) == 30 and len(read_rows(tmp_path / "arith_sft_val.jsonl")) == 5
    words = " ".join(r["prompt"][0]["content"] for r in rows)
    assert "Subtract" not in words and "Divide" not in words and "Multiply" in words
    assert {r["extra_info"]["num_steps"] for r in rows} == {2}
