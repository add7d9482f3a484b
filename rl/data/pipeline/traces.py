"""Raw traces in, seed selection: rows -> `Trace`s, or the reason a row is left out.

Two row forms are read (jsonl or parquet):

- `{problem, reasoning, answer?}`: `reasoning` may carry `<think> ... </think>` (the text after
  `</think>` is then the answer when `answer` is absent) or be the bare reasoning;
- OpenThoughts-style `conversations` (or `messages`): a list of `{from, value}` or
  `{role, content}`; the first user/human turn is the problem, the assistant/gpt turn holds
  `<think> reasoning </think> answer`.

Seed selection (the paper's): drop a trace whose `<think>` is not closed, that is shorter than
`min_reasoning_tokens`, or whose CJK share of non-space characters exceeds `max_cjk_fraction`
(0 by default: any CJK character, as the released pipeline). Reasoning that already contains a
memento delimiter (or an answer with one) is dropped too: the memento grammar could not be
parsed back; so is a trace without a final answer, which the SFT check requires.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Callable

from rl.data.sft_dataset import THINK_END, THINK_START
from rollout.layout import MEMENTO_TOKENS

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_USER, _ASSISTANT = ("user", "human"), ("assistant", "gpt")


@dataclass(frozen=True)
class Trace:
    id: str
    problem: str
    reasoning: str  # the text inside <think> ... </think>, stripped
    answer: str  # the text after </think> (may be empty)


class Rejected(ValueError):
    """A row left out by seed selection; the message says why."""


def parse_trace(row: dict[str, Any], id_key: str, count_tokens: Callable[[str], int],
                min_reasoning_tokens: int, max_cjk_fraction: float) -> Trace:
    """Trace of one row. Raises Rejected (with the reason) when seed selection drops it."""
    if "conversations" in row or "messages" in row:
        problem, text = _from_conversation(row.get("conversations", row.get("messages")))
        if THINK_START not in text:
            raise Rejected(f"assistant turn has no {THINK_START}")
        answer = None
    else:
        problem, text, answer = row.get("problem"), row.get("reasoning"), row.get("answer")
        if not isinstance(text, str):
            raise Rejected("needs 'reasoning' (str) or 'conversations'")
    if not isinstance(problem, str) or not problem.strip():
        raise Rejected("no problem text")
    reasoning, after = _split_think(text)
    answer = answer if isinstance(answer, str) else after
    if any(token in text for token in (*MEMENTO_TOKENS, THINK_START, THINK_END)
           for text in (reasoning, answer)):
        raise Rejected("reasoning or answer already contains memento or think delimiters")
    visible = re.sub(r"\s", "", reasoning)
    cjk = len(_CJK.findall(visible)) / max(len(visible), 1)
    if cjk > max_cjk_fraction:
        raise Rejected(f"CJK share {cjk:.3f} > {max_cjk_fraction}")
    tokens = count_tokens(reasoning)
    if tokens < min_reasoning_tokens:
        raise Rejected(f"reasoning has {tokens} tokens < {min_reasoning_tokens}")
    if not answer.strip():
        raise Rejected(f"no final answer (no 'answer' and nothing after {THINK_END})")
    trace_id = row.get(id_key)
    if trace_id is None:
        trace_id = hashlib.sha1(f"{problem}\0{reasoning}".encode()).hexdigest()[:16]
    return Trace(str(trace_id), problem.strip(), reasoning, answer.strip())


def _from_conversation(turns: Any) -> tuple[str | None, str]:
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise Rejected("conversations must be a list of turns")
    by_role: dict[str, str] = {}
    for turn in turns:
        role = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if isinstance(text, str):
            key = "user" if role in _USER else "assistant" if role in _ASSISTANT else None
            if key and key not in by_role:
                by_role[key] = text
    if "assistant" not in by_role:
        raise Rejected("conversation has no assistant turn")
    return by_role.get("user"), by_role["assistant"]


def _split_think(text: str) -> tuple[str, str]:
    """(reasoning, text after </think>); the whole text when there is no <think>."""
    start = text.find(THINK_START)
    if start == -1:
        if THINK_END in text:
            raise Rejected(f"{THINK_END} without {THINK_START}")
        return text.strip(), ""
    end = text.find(THINK_END, start)
    if end == -1:
        raise Rejected(f"{THINK_START} is never closed")
    return text[start + len(THINK_START):end].strip(), text[end + len(THINK_END):]
