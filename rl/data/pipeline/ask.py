"""Sending a round of requests and parsing the answers: retries on malformed output, token costs.

`ask_all` submits every request at once, parses each reply, and re-asks only the ones whose
answer did not parse, up to `retries` more times; then the trace fails with `StageFailure`
(recorded, never raised past the trace). Every attempt's tokens go to `Usage` under its stage.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Callable, Sequence, TypeVar

from rl.data.pipeline.client import ChatRequest, ClientError

T = TypeVar("T")


class ParseError(ValueError):
    """A reply that does not have the expected form."""


class StageFailure(RuntimeError):
    """A trace that cannot finish: a request failed for good or answers stayed malformed."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage}: {message}")
        self.stage = stage


class Usage:
    """Tokens and calls per stage of one trace ("score", "write/0", "judge/0", "write/1", ...)."""

    def __init__(self):
        self.by_stage: dict[str, dict[str, int]] = defaultdict(
            lambda: {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0})

    def add(self, stage: str, prompt_tokens: int, completion_tokens: int) -> None:
        entry = self.by_stage[stage]
        entry["calls"] += 1
        entry["prompt_tokens"] += prompt_tokens
        entry["completion_tokens"] += completion_tokens

    def total(self, key: str) -> int:
        return sum(entry[key] for entry in self.by_stage.values())

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {stage: dict(entry) for stage, entry in sorted(self.by_stage.items())}


def ask_all(client, requests: Sequence[ChatRequest], parse: Callable[[str, int], T],
            retries: int, usage: Usage, stage: str) -> list[T]:
    """Parsed answers in request order. `parse(text, i)` raises ParseError on a bad answer."""
    results: list[Any] = [None] * len(requests)
    pending, errors = list(range(len(requests))), {}
    for _ in range(retries + 1):
        futures = {i: client.submit(requests[i]) for i in pending}
        for i, future in futures.items():
            try:
                reply = future.result()
            except ClientError as e:
                raise StageFailure(stage, str(e)) from e
            usage.add(stage, reply.prompt_tokens, reply.completion_tokens)
            try:
                results[i] = parse(reply.text, i)
                errors.pop(i, None)
            except ParseError as e:
                errors[i] = f"{e} (finish_reason={reply.finish_reason}, text={reply.text[:120]!r})"
        pending = sorted(errors)
        if not pending:
            return results
    raise StageFailure(stage, f"{len(pending)} of {len(requests)} answers malformed after "
                              f"{retries + 1} tries; first: {errors[pending[0]]}")


def extract_json(text: str) -> dict:
    """The JSON object in `text`: the whole text, else its outermost {...} (code fences allowed).

    Raw control characters inside strings are accepted (`strict=False`): grammar-constrained
    decoders such as xgrammar let them through.
    """
    for candidate in (text.strip(), text[text.find("{"):text.rfind("}") + 1]):
        try:
            value = json.loads(candidate, strict=False)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise ParseError("no JSON object in the answer")
