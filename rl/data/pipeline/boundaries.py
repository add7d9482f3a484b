"""Boundary scoring: an LLM rates each sentence boundary 0-3 as a place to end a block.

One request per window of W consecutive sentences; neighbouring windows share one sentence, so
each boundary is scored exactly once per pass. With several window sizes (the paper's two-pass
mode: 16 and 11, coprime, so window edges rarely coincide) each boundary's scores are averaged;
the averages are multiples of 1 / (number of passes), the grid `segment` needs.
"""

from __future__ import annotations

from typing import Sequence

from rl.data.pipeline.ask import ParseError, Usage, ask_all, extract_json
from rl.data.pipeline.client import ChatRequest
from rl.data.pipeline.config import ScoringConfig

SYSTEM = ("You mark where a long chain of reasoning can be cut into blocks. Each block will "
          "later be replaced by a short summary of it, so a good cut is a point the reasoning "
          "can resume from with only that summary in hand.")

INSTRUCTIONS = """\
Below are consecutive sentences of a reasoning trace, numbered [{first}] to [{last}]. For every \
boundary between sentence [i] and sentence [i+1], rate it as the END of a block:

0 - inside a thought: the next sentence continues this calculation, argument or code, or \
depends on it directly. Always 0 after a sentence ending in ":", "=" or "=>", and before a \
sentence that continues with "Therefore", "Thus" or "Hence".
1 - weak: a small step ends but the same line of work goes straight on.
2 - good: a sub-result is established and the next sentence starts a different step.
3 - strong: a derivation, case or check is finished and the reasoning turns to a new approach, \
phase or question.

{context}Sentences:
{sentences}

Answer with JSON only: {{"scores": [...]}} holding exactly {count} integers from 0 to 3, the \
k-th for the boundary after sentence [{first} + k]."""


def windows(num_sentences: int, size: int) -> list[tuple[int, int]]:
    """Inclusive sentence ranges of `size` sentences, each starting on the previous one's last."""
    spans, start = [], 0
    while start < num_sentences - 1:
        end = min(start + size - 1, num_sentences - 1)
        spans.append((start, end))
        start = end
    return spans


def score_schema(count: int) -> dict:
    return {"type": "object", "additionalProperties": False, "required": ["scores"],
            "properties": {"scores": {"type": "array", "minItems": count, "maxItems": count,
                                      "items": {"type": "integer", "enum": [0, 1, 2, 3]}}}}


def score_request(problem: str, sentences: Sequence[str], span: tuple[int, int],
                  cfg: ScoringConfig) -> ChatRequest:
    first, last = span
    context = f"Problem (context only):\n{problem}\n\n" if cfg.include_problem else ""
    listing = "\n".join(f"[{i}] {sentences[i]}" for i in range(first, last + 1))
    prompt = INSTRUCTIONS.format(first=first, last=last, context=context, sentences=listing,
                                 count=last - first)
    return ChatRequest([{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
                       cfg.max_tokens, score_schema(last - first))


def parse_scores(text: str, count: int) -> list[int]:
    scores = extract_json(text).get("scores")
    if not isinstance(scores, list) or len(scores) != count:
        raise ParseError(f"expected 'scores' with {count} entries, got {str(scores)[:80]}")
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s in (0, 1, 2, 3)
               for s in scores):
        raise ParseError(f"scores must be integers 0-3, got {scores}")
    return [int(s) for s in scores]


def score_boundaries(client, problem: str, sentences: Sequence[str], cfg: ScoringConfig,
                     usage: Usage) -> list[float]:
    """(n-1,) boundary scores, the mean over the passes in `cfg.windows`."""
    n = len(sentences)
    spans = [(w, span) for w in cfg.windows for span in windows(n, w)]
    requests = [score_request(problem, sentences, span, cfg) for _, span in spans]
    answers = ask_all(client, requests, lambda text, i: parse_scores(
        text, spans[i][1][1] - spans[i][1][0]), cfg.parse_retries, usage, "score")
    totals = [0] * max(n - 1, 0)
    for (_, (first, _)), scores in zip(spans, answers):
        for k, s in enumerate(scores):
            totals[first + k] += s
    return [t / len(cfg.windows) for t in totals]
