"""Mementos: write one per block, judge it on the paper's rubric, rewrite it from the feedback.

Rounds run in lockstep over a trace's blocks, so one round's requests go out together:

    round 0:  write every memento, judge every memento
    round r:  rewrite each block still below `pass_score` from its judge's feedback, judge it

for at most `max_rounds` judged rounds. A block keeps its best-scoring memento (the passing one
when it passes); its per-round scores are kept for the pass-rate report.

Departure from the released pipeline: each memento is written by its own request that sees the
problem and its block only (the paper's writer sees the whole trace in one request and is told
to use block i only). The memento is the reply's plain text, so any model or server can write
one, and only the judge's verdict needs structured output.

The rubric (paper): formulas 0-3, values 0-2, methods 0-2, validation 0-1, correctness 0-1,
result-first 0-1, minus penalties (invented content, narrative, a missing key formula); the
score is clipped to [0, 10].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from rl.data.pipeline.ask import ParseError, Usage, ask_all, extract_json
from rl.data.pipeline.client import ChatRequest
from rl.data.pipeline.config import MementoConfig
from rl.data.sft_dataset import THINK_END, THINK_START
from rollout.layout import MEMENTO_TOKENS

RUBRIC = {"formulas": 3, "values": 2, "methods": 2, "validation": 1, "correctness": 1,
          "result_first": 1}
MAX_PENALTY = 10

WRITER = ("You compress blocks of reasoning into mementos: terse notes that later reasoning "
          "reads instead of the block, so it can carry on without it.")

RULES = """\
- Use only this block: add nothing it does not say, fix none of its mistakes, derive nothing new.
- Lead with what the block concluded or computed, then what supports it.
- Keep, written exactly, every formula, equation and definition the block relies on; every \
concrete value and intermediate result; the method used, and approaches it rejected, briefly; \
checks it ran and their outcome.
- Terse notation, no narrative ("I think", "wait", "let me").
- Length: about {low} to {high} tokens ({pct_low}-{pct_high}% of the block's {tokens})."""

BLOCK_CONTEXT = """\
Problem (context only; do not solve it):
{problem}

Block {index} of {count} of the reasoning:
<<<
{block}
>>>

"""

WRITE = BLOCK_CONTEXT + """\
Write the memento of this block.
{rules}
Answer with the memento text only."""

REWRITE = BLOCK_CONTEXT + """\
Memento written for it:
<<<
{memento}
>>>

A reviewer scored this memento {score:g}/10 and wrote: {feedback}

Rewrite the memento so it fixes what the reviewer found.
{rules}
Answer with the memento text only."""

JUDGE_SYSTEM = "You review mementos, compressed notes that replace a block of reasoning."

JUDGE = """\
Block of reasoning:
<<<
{block}
>>>

Memento meant to replace it:
<<<
{memento}
>>>

Score the memento. Points:
- formulas (0-3): every formula or equation the block relies on appears, exactly.
- values (0-2): its concrete numbers and intermediate results are kept.
- methods (0-2): the methods used, and approaches tried and dropped, are named.
- validation (0-1): checks the block ran are stated with their outcome.
- correctness (0-1): nothing in the memento contradicts the block.
- result_first (0-1): it opens with the block's result.
- penalty (0-10): points off for anything not in the block, narrative filler, or a key formula \
missing.

Answer with JSON only: {{"feedback": "<what to fix, concretely>", "formulas": n, "values": n, \
"methods": n, "validation": n, "correctness": n, "result_first": n, "penalty": n}}"""


@dataclass
class Verdict:
    score: float  # sum of rubric points minus the penalty, clipped to [0, 10]
    feedback: str


@dataclass
class BlockMemento:
    memento: str  # the best-scoring memento written for the block
    score: float
    round_scores: list[float] = field(default_factory=list)  # judge score of each round


def judge_schema(feedback_max_chars: int) -> dict:
    points = {name: {"type": "integer", "enum": list(range(top + 1))}
              for name, top in RUBRIC.items()}
    return {"type": "object", "additionalProperties": False,
            "required": ["feedback", *RUBRIC, "penalty"],
            "properties": {"feedback": {"type": "string", "maxLength": feedback_max_chars},
                           **points,
                           "penalty": {"type": "integer", "enum": list(range(MAX_PENALTY + 1))}}}


def parse_verdict(text: str) -> Verdict:
    answer = extract_json(text)
    points = 0
    for name, top in {**RUBRIC, "penalty": MAX_PENALTY}.items():
        value = answer.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= top:
            raise ParseError(f"'{name}' must be a number in [0, {top}], got {value!r:.40}")
        points += -value if name == "penalty" else value
    feedback = answer.get("feedback")
    if not isinstance(feedback, str):
        raise ParseError("'feedback' must be a string")
    return Verdict(float(min(max(points, 0), 10)), feedback.strip())


def parse_memento(text: str) -> str:
    memento = text.strip()
    if not memento:
        raise ParseError("empty memento")
    found = [t for t in (*MEMENTO_TOKENS, THINK_START, THINK_END) if t in memento]
    if found:
        raise ParseError(f"memento contains delimiters {found}")
    return memento


def write_mementos(client, problem: str, blocks: Sequence[str], block_tokens: Sequence[int],
                   cfg: MementoConfig, usage: Usage) -> list[BlockMemento]:
    """One judged memento per block, refined for up to `cfg.max_rounds` rounds."""
    def rules(i: int) -> str:
        low, high = cfg.target_ratio
        return RULES.format(low=max(round(low * block_tokens[i]), 1),
                            high=max(round(high * block_tokens[i]), 1), pct_low=round(100 * low),
                            pct_high=round(100 * high), tokens=block_tokens[i])

    def common(i: int) -> dict:
        return dict(problem=problem, index=i + 1, count=len(blocks), block=blocks[i],
                    rules=rules(i))

    def judge(todo: list[int], mementos: dict[int, str], stage: str) -> dict[int, Verdict]:
        requests = [ChatRequest([{"role": "system", "content": JUDGE_SYSTEM}, {
            "role": "user", "content": JUDGE.format(block=blocks[i], memento=mementos[i])}],
            cfg.judge_max_tokens, judge_schema(cfg.feedback_max_chars)) for i in todo]
        verdicts = ask_all(client, requests, lambda text, _: parse_verdict(text),
                           cfg.parse_retries, usage, stage)
        return dict(zip(todo, verdicts))

    def write(todo: list[int], prompts: list[str], stage: str) -> dict[int, str]:
        requests = [ChatRequest([{"role": "system", "content": WRITER},
                                 {"role": "user", "content": p}], cfg.max_tokens) for p in prompts]
        return dict(zip(todo, ask_all(client, requests, lambda text, _: parse_memento(text),
                                      cfg.parse_retries, usage, stage)))

    todo = list(range(len(blocks)))
    latest = write(todo, [WRITE.format(**common(i)) for i in todo], "write/0")
    verdicts = judge(todo, latest, "judge/0")
    results = [BlockMemento(latest[i], verdicts[i].score, [verdicts[i].score]) for i in todo]
    for round_ in range(1, cfg.max_rounds):
        todo = [i for i in todo if verdicts[i].score < cfg.pass_score]
        if not todo:
            break
        latest = write(todo, [REWRITE.format(**common(i), memento=latest[i],
                                             score=verdicts[i].score,
                                             feedback=verdicts[i].feedback or "(none)")
                              for i in todo], f"write/{round_}")
        verdicts = judge(todo, latest, f"judge/{round_}")
        for i in todo:
            result = results[i]
            result.round_scores.append(verdicts[i].score)
            if verdicts[i].score >= result.score:
                result.memento, result.score = latest[i], verdicts[i].score
    return results
