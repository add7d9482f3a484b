"""The built-in task: multi-step arithmetic with a running result, solved block by block.

    Start with 7. Add 5. Multiply by 3. Subtract 4. What is the result?

Each reasoning block does one step (or `steps_per_block` steps); its memento
("After step 2: 36") carries the running value forward, so the next block needs only the prompt
and the mementos: the block can be evicted without losing anything. That makes the task a small,
exact test of the memento method, and its difficulty is set by the number of steps and the
operand range. Answers are exact integers (division only when it divides evenly), scored by the
math verifier from `\\boxed{N}` after `</think>`.

    python -m rl.data.arith out_dir=data/arith   # arith_{train,val}.jsonl (RL), arith_sft_*.jsonl
    python -m rl.data.arith task.max_steps=8 task.ops=[add,mul] n_train=10000   # (conf/arith.yaml)

`resolve_files` turns `builtin:<name>` entries of a file list (`builtin:arith`, `builtin:arith_val`
for RL and evaluation, `builtin:arith_sft`, `builtin:arith_sft_val` for SFT) into these files.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Sequence

from rewards.format import (BLOCK_END, BLOCK_START, SUMMARY_END, SUMMARY_START, THINK_END,
                            render_memento)
from rl.data.rows import DataError, write_jsonl

Op = Literal["add", "sub", "mul", "div"]
DATA_SOURCE = "memento_arith"
INSTRUCTION = "Put your final answer in \\boxed{}."

_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_PHRASE = {"add": "Add {}.", "sub": "Subtract {}.", "mul": "Multiply by {}.", "div": "Divide by {}."}


@dataclass(frozen=True)
class ArithConfig:
    """Difficulty. Steps are drawn from [min_steps, max_steps], operands from [1, operand_max]
    (multiplier / divisor from [2, operand_max]); a step that would leave the value outside
    [low, value_max] is redrawn."""

    min_steps: int = 2
    max_steps: int = 4
    operand_max: int = 9
    start_max: int = 9
    value_max: int = 999
    ops: tuple[Op, ...] = ("add", "sub", "mul", "div")
    steps_per_block: int = 1
    # keep every value in [0, value_max] (else [-value_max, value_max]): a small model learns
    # arithmetic on negative numbers far more slowly (about 20% of its steps right, against 60-78%
    # on non-negative ones, after the same short SFT)
    nonnegative: bool = False
    # SFT traces only: the share of mementos that drop the running value ("Step 2 done."), as an
    # imperfect teacher's summaries do. The trace then goes on from a guessed value (see
    # `solution_trace`), so SFT teaches the model to guess once such a block is evicted, and RL
    # can learn to always carry the state forward.
    lossy_memento_rate: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps}, "
                             f"{self.max_steps}")
        if self.operand_max < 2 or self.start_max < 1 or self.value_max < self.operand_max:
            raise ValueError("need operand_max >= 2, start_max >= 1, value_max >= operand_max")
        if not self.ops or not set(self.ops) <= set(_SYMBOL) or set(self.ops) == {"div"}:
            raise ValueError(f"ops must be a non-empty subset of {sorted(_SYMBOL)} other than "
                             f"just 'div', got {self.ops}")
        if self.steps_per_block < 1:
            raise ValueError(f"steps_per_block must be >= 1, got {self.steps_per_block}")
        if not 0.0 <= self.lossy_memento_rate <= 1.0:
            raise ValueError(f"lossy_memento_rate must be in [0, 1], got {self.lossy_memento_rate}")

    @property
    def low(self) -> int:
        """The least value a problem may reach."""
        return 0 if self.nonnegative else -self.value_max


@dataclass(frozen=True)
class ArithStep:
    op: Op
    operand: int

    def apply(self, value: int) -> int:
        if self.op == "add":
            return value + self.operand
        if self.op == "sub":
            return value - self.operand
        if self.op == "mul":
            return value * self.operand
        assert value % self.operand == 0, "division steps are generated only when exact"
        return value // self.operand


@dataclass(frozen=True)
class ArithProblem:
    start: int
    steps: tuple[ArithStep, ...]

    @property
    def values(self) -> list[int]:
        """Running value after each step: values[k] after step k + 1."""
        out, value = [], self.start
        for step in self.steps:
            value = step.apply(value)
            out.append(value)
        return out

    @property
    def answer(self) -> int:
        return self.values[-1]

    @property
    def question(self) -> str:
        phrases = " ".join(_PHRASE[s.op].format(s.operand) for s in self.steps)
        return f"Start with {self.start}. {phrases} What is the result?"


def _draw_step(rng: random.Random, value: int, cfg: ArithConfig) -> ArithStep | None:
    """A step whose result stays within value_max; None if 100 draws found none (e.g. only
    'mul' and 'div' ops from a large prime)."""
    for _ in range(100):
        op = rng.choice(cfg.ops)
        low = 2 if op in ("mul", "div") else 1
        if op == "div":
            divisors = [d for d in range(low, cfg.operand_max + 1) if value % d == 0]
            if value == 0 or not divisors:
                continue
            step = ArithStep(op, rng.choice(divisors))
        else:
            step = ArithStep(op, rng.randint(low, cfg.operand_max))
        if cfg.low <= step.apply(value) <= cfg.value_max:
            return step
    return None


def generate_problems(n: int, seed: int = 0, cfg: ArithConfig = ArithConfig()) -> list[ArithProblem]:
    """`n` distinct problems, deterministic in (n, seed, cfg): a prefix of a longer list."""
    rng = random.Random(f"memento-arith:{seed}")
    problems: list[ArithProblem] = []
    seen: set[ArithProblem] = set()
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(f"cannot draw {n} distinct problems from {cfg}")
        value = rng.randint(1, cfg.start_max)
        start, steps = value, []
        for _ in range(rng.randint(cfg.min_steps, cfg.max_steps)):
            step = _draw_step(rng, value, cfg)
            if step is None:
                break
            steps.append(step)
            value = step.apply(value)
        problem = ArithProblem(start, tuple(steps))
        if len(steps) >= cfg.min_steps and problem not in seen:
            seen.add(problem)
            problems.append(problem)
    return problems


# ----------------------------------------------------------------------------- traces


def _step_text(k: int, step: ArithStep, before: int, after: int) -> str:
    return f"Step {k}: {before} {_SYMBOL[step.op]} {step.operand} = {after}. "


def solution_trace(problem: ArithProblem, steps_per_block: int = 1,
                   guesses: Mapping[int, int] | None = None) -> str:
    """Memento-format solution: one block per `steps_per_block` steps, each memento the state.

    A block states the value it starts from (read from the previous memento), does its steps and
    ends with the new value; its memento is "After step k: v". A block in `guesses` (block index
    -> value) gets a lossy memento, "Step k done.", and the trace goes on from the guessed value
    instead (the next block starts from it, or the answer is it after the last block): with the
    block evicted nothing visible holds the value, and a trace that recovered it anyway would
    teach the model to read it from the memento's KV, which is written while the block is still
    visible (the channel the paper's restart ablation measures; a model trained on such traces
    lost almost nothing to its lossy mementos, leaving RL nothing to fix). The answer follows
    `</think>` as \\boxed{N}. Every trace passes the SFT data check
    (`rl.data.sft_dataset.check_memento_response`), and so the format reward's.
    """
    guesses = guesses or {}
    blocks, mementos, value = [], [], problem.start
    for index, first in enumerate(range(0, len(problem.steps), steps_per_block)):
        last = min(first + steps_per_block, len(problem.steps))
        text = f"Value is {value}. "
        for k in range(first, last):
            after = problem.steps[k].apply(value)
            text += _step_text(k + 1, problem.steps[k], value, after)
            value = after
        blocks.append(text + f"Now {value}.")
        if index in guesses:
            mementos.append(f"Step {last} done.")
            value = guesses[index]
        else:
            mementos.append(f"After step {last}: {value}")
    return render_memento(blocks, mementos, f"\\boxed{{{value}}}")


def draw_guesses(problem: ArithProblem, cfg: ArithConfig, rng: random.Random) -> dict[int, int]:
    """Which blocks of `problem`'s trace get a lossy memento (each with `cfg.lossy_memento_rate`)
    and the value the trace goes on from after each: uniform in [low, value_max] and
    independent of the dropped one, redrawn until the later steps stay within that range and
    their divisions exact, as the problem's own values do (a block whose guess finds none in 100
    draws keeps its value)."""
    guesses: dict[int, int] = {}
    starts = range(0, len(problem.steps), cfg.steps_per_block)
    for index, first in enumerate(starts):
        if rng.random() >= cfg.lossy_memento_rate:
            continue
        rest = problem.steps[first + cfg.steps_per_block:]
        for _ in range(100):
            guess = rng.randint(cfg.low, cfg.value_max)
            if _in_range(guess, rest, cfg):
                guesses[index] = guess
                break
    return guesses


def _in_range(value: int, steps: Sequence[ArithStep], cfg: ArithConfig) -> bool:
    for step in steps:
        if step.op == "div" and value % step.operand:
            return False
        value = step.apply(value)
        if not cfg.low <= value <= cfg.value_max:
            return False
    return True


_MEMENTO = re.compile(re.escape(SUMMARY_START) + "(.*?)" + re.escape(SUMMARY_END), re.S)
_STATE_MEMENTO = re.compile(r"After step \d+: -?\d+")


def state_mementos(response: str) -> list[bool]:
    """For each memento of a response, whether it carries a running value ("After step k: v")
    rather than dropping it ("Step k done.") or saying anything else."""
    return [bool(_STATE_MEMENTO.fullmatch(m)) for m in _MEMENTO.findall(response)]


_PAIR = re.compile(re.escape(BLOCK_START) + "(.*?)" + re.escape(BLOCK_END) + r"\s*"
                   + re.escape(SUMMARY_START) + "(.*?)" + re.escape(SUMMARY_END), re.S)
_LOSSY_MEMENTO = re.compile(r"Step \d+ done\.")
_BLOCK_RESULT = re.compile(r"Now (-?\d+)\.\s*$")
_BLOCK_INPUT = re.compile(r"\s*Value is (-?\d+)\.")
_ANSWER = re.compile(r"\\boxed\{(-?\d+)\}")


def recovered_after_lossy(response: str) -> list[bool]:
    """For each lossy memento ("Step k done.") of a response: whether what comes next (the next
    block's "Value is v", or the answer after the last block) holds the value its evicted block
    ended on. Nothing the model can see after the eviction holds it, so a share above chance
    means the model reads it from the memento's own KV states (the channel `solution_trace`'s
    guesses keep SFT from teaching). Mementos whose block or successor does not parse are
    skipped."""
    pairs = list(_PAIR.finditer(response))
    out = []
    for i, pair in enumerate(pairs):
        ended = _BLOCK_RESULT.search(pair.group(1))
        if not _LOSSY_MEMENTO.fullmatch(pair.group(2)) or ended is None:
            continue
        if i + 1 < len(pairs):
            after = _BLOCK_INPUT.match(pairs[i + 1].group(1))
        else:
            tail = response[pair.end():]
            after = _ANSWER.search(tail) if THINK_END in tail else None
        if after is not None:
            out.append(after.group(1) == ended.group(1))
    return out


def state_memento_share(responses: Sequence[str]) -> float:
    """Share of the mementos in `responses` that carry a running value; NaN if there are none."""
    flags = [flag for text in responses for flag in state_mementos(text)]
    return sum(flags) / len(flags) if flags else float("nan")


def rl_row(problem: ArithProblem, index: int, split: str) -> dict:
    """A verl-format prompt row (the on-disk schema rl.data.prompts reads)."""
    return {
        "prompt": [{"role": "user", "content": f"{problem.question} {INSTRUCTION}"}],
        "data_source": DATA_SOURCE,
        "reward_model": {"ground_truth": str(problem.answer), "style": "rule"},
        "extra_info": {"split": split, "index": index, "num_steps": len(problem.steps)},
    }


def sft_row(problem: ArithProblem, cfg: ArithConfig, rng: random.Random) -> dict:
    """An OpenMementos-format row (`problem`, pre-assembled `response`) that rl.data.sft_dataset reads;
    `rng` draws which mementos are lossy and what the trace guesses after them (`draw_guesses`)."""
    return {"problem": f"{problem.question} {INSTRUCTION}",
            "response": solution_trace(problem, cfg.steps_per_block,
                                       draw_guesses(problem, cfg, rng))}


@dataclass(frozen=True)
class ArithFiles:
    rl_train: Path
    rl_val: Path
    sft_train: Path
    sft_val: Path


def write_arith_datasets(out_dir: str | Path, n_train: int = 2000, n_val: int = 200,
                         seed: int = 0, cfg: ArithConfig = ArithConfig()) -> ArithFiles:
    """RL and SFT jsonl files; the validation problems never occur in the training files."""
    out_dir = Path(out_dir)
    problems = generate_problems(n_val + n_train, seed, cfg)  # distinct, so the splits are disjoint
    splits = {"val": problems[:n_val], "train": problems[n_val:]}
    files = {}
    lossy_rng = random.Random(f"memento-arith-lossy:{seed}")
    for split, items in splits.items():
        files[f"rl_{split}"] = write_jsonl(
            [rl_row(p, i, split) for i, p in enumerate(items)], out_dir / f"arith_{split}.jsonl")
        files[f"sft_{split}"] = write_jsonl(
            [sft_row(p, cfg, lossy_rng) for p in items], out_dir / f"arith_sft_{split}.jsonl")
    return ArithFiles(**files)


BUILTIN_FILES = {"arith": "rl_train", "arith_val": "rl_val",
                 "arith_sft": "sft_train", "arith_sft_val": "sft_val"}


def write_builtin(name: str, data_dir: str | Path) -> Path:
    """Path of the built-in file `name` (a key of BUILTIN_FILES) with default settings."""
    if name not in BUILTIN_FILES:
        raise ValueError(f"unknown builtin dataset {name!r}; known: {sorted(BUILTIN_FILES)}")
    return getattr(write_arith_datasets(data_dir), BUILTIN_FILES[name])


def resolve_files(files: Sequence[str], data_dir: str | Path | None) -> list[Path]:
    """Paths as given, with `builtin:<name>` entries generated into `data_dir`."""
    paths = []
    for f in files:
        if str(f).startswith("builtin:"):
            if data_dir is None:
                raise DataError(f"{f!r} needs a data_dir to generate into")
            paths.append(write_builtin(str(f).removeprefix("builtin:"), data_dir))
        else:
            paths.append(Path(f))
    return paths


@dataclass
class ArithFilesConfig:
    """`python -m rl.data.arith`: write the task's files (conf/arith.yaml)."""

    out_dir: str = "data/arith"
    n_train: int = 2000
    n_val: int = 200
    seed: int = 0
    task: ArithConfig = field(default_factory=ArithConfig)


def main(argv: list[str] | None = None) -> None:
    from rl.config import run_hydra

    run_hydra("arith", ArithFilesConfig, lambda cfg: print(write_arith_datasets(
        cfg.out_dir, cfg.n_train, cfg.n_val, cfg.seed, cfg.task)), argv)


if __name__ == "__main__":
    main()
