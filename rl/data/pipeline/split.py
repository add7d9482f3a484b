"""Sentence splitting: reasoning text -> sentences, each a character span of the text.

Sentences are the units between which blocks may end, so the splitter keeps whole what a block
boundary must not cut: fenced code, LaTeX environments (`\\begin{x} ... \\end{x}`), display and
inline math (`$$ $$`, `\\[ \\]`, `\\( \\)`, `$ $`) and whole lists (consecutive item lines with
their continuation lines) are atomic, and no cut falls inside parentheses. Elsewhere a cut goes
after sentence punctuation followed by space and a non-lowercase character (not after an
abbreviation such as "e.g.") and at every line break. Then, as in the paper's splitter:

- a sentence ending in ":" joins the next one (it introduces it);
- a sentence opening with "Therefore", "Thus", "So" or "Hence" joins the previous one;
- consecutive display-math sentences join;
- a fragment under `min_tokens` tokens joins its neighbour (the previous one, or the next when it
  is first).

Every sentence is a span of the original text, so blocks are cut from the text itself with
their formatting, and the spans tile the text up to whitespace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

ABBREVIATIONS = frozenset({"e.g", "i.e", "etc", "vs", "cf", "resp", "approx", "eq", "eqs", "fig",
                           "dr", "mr", "mrs", "ms", "no", "st", "al"})
CONTINUATION = re.compile(r"(?:Therefore|Thus|So|Hence)\b")
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})", re.MULTILINE)
_ENV_OPEN = re.compile(r"\\begin\{([^}\n]+)\}")
_MATH = (re.compile(r"\$\$.+?\$\$", re.DOTALL), re.compile(r"\\\[.+?\\\]", re.DOTALL),
         re.compile(r"\\\(.+?\\\)", re.DOTALL), re.compile(r"(?<![\\$])\$[^$\n]+?\$"))
_LIST_ITEM = re.compile(r"[ \t]*(?:[-*+•]|\d{1,3}[.)]|[A-Za-z][.)])[ \t]+\S")
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s)")
_DISPLAY = re.compile(r"(?:\$\$|\\\[|\\begin\{).*(?:\$\$|\\\]|\\end\{[^}]+\})", re.DOTALL)


@dataclass(frozen=True)
class Sentence:
    start: int  # character offsets into the text: text[start:end] is the sentence
    end: int
    text: str


def split_sentences(text: str, count_tokens: Callable[[str], int], min_tokens: int = 5
                    ) -> list[Sentence]:
    """Sentences of `text` in order (none when it is blank). `count_tokens` sizes fragments."""
    protected = protected_spans(text)
    cuts = [c for c in cut_points(text) if not any(a < c < b for a, b in protected)]
    spans = []
    for start, end in zip([0, *cuts], [*cuts, len(text)]):
        piece = text[start:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            spans.append((start + lead, start + len(piece.rstrip())))
    return [Sentence(a, b, text[a:b]) for a, b in _merge(text, spans, count_tokens, min_tokens)]


def protected_spans(text: str) -> list[tuple[int, int]]:
    """Sorted, disjoint [start, end) character ranges no cut may fall strictly inside."""
    spans = _fences(text)
    masked = _mask(text, spans)
    spans += _environments(masked)
    masked = _mask(text, spans)
    for pattern in _MATH:
        found = [m.span() for m in pattern.finditer(masked)]
        spans += found
        masked = _mask(text, spans)
    spans += _lists(masked)
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def cut_points(text: str) -> list[int]:
    """Candidate sentence starts: after sentence punctuation and at line breaks, not in parentheses.

    Parenthesis depth resets at blank lines, so one unclosed "(" cannot glue a whole trace.
    """
    depth, depths = 0, []
    for i, ch in enumerate(text):
        if ch == "\n" and text.startswith("\n", i + 1):
            depth = 0
        depths.append(depth)
        depth = depth + 1 if ch == "(" else max(depth - 1, 0) if ch == ")" else depth
    cuts = set()
    for m in _SENTENCE_END.finditer(text):
        word = re.search(r"[\w.]*$", text[:m.start()]).group().lower()
        start = _next_non_space(text, m.end())
        if (start < len(text) and not text[start].islower() and word not in ABBREVIATIONS
                and depths[m.start()] == 0):
            cuts.add(start)
    for m in re.finditer(r"\n", text):
        start = _next_non_space(text, m.end())
        if start < len(text) and depths[m.start()] == 0:
            cuts.add(start)
    return sorted(cuts)


def _next_non_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _mask(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with protected characters made NUL (newlines kept), so later passes skip them."""
    chars = list(text)
    for a, b in spans:
        for i in range(a, b):
            if chars[i] != "\n":
                chars[i] = "\0"
    return "".join(chars)


def _fences(text: str) -> list[tuple[int, int]]:
    """Fenced code blocks; an unclosed fence runs to the end of the text."""
    spans, pos = [], 0
    while (m := _FENCE.search(text, pos)) is not None:
        fence = m.group(1)
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", re.MULTILINE)
        line_end = text.find("\n", m.end())
        end_match = close.search(text, line_end + 1) if line_end != -1 else None
        end = end_match.end() if end_match else len(text)
        spans.append((m.start(), end))
        pos = end
    return spans


def _environments(text: str) -> list[tuple[int, int]]:
    """Outermost `\\begin{name} ... \\end{name}` pairs (same-name nesting counted)."""
    spans, pos = [], 0
    while (m := _ENV_OPEN.search(text, pos)) is not None:
        name = re.escape(m.group(1))
        depth, end = 1, None
        for tag in re.finditer(rf"\\(begin|end)\{{{name}\}}", text[m.end():]):
            depth += 1 if tag.group(1) == "begin" else -1
            if depth == 0:
                end = m.end() + tag.end()
                break
        if end is None:
            pos = m.end()
            continue
        spans.append((m.start(), end))
        pos = end
    return spans


def _lists(text: str) -> list[tuple[int, int]]:
    """Runs of list items, with indented continuation lines and blank lines between items."""
    spans, offset, run = [], 0, None
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        start, end = offset, offset + len(line.rstrip("\n"))
        offset += len(line)
        if _LIST_ITEM.match(line):
            run = (run[0] if run else start, end)
        elif run and line.strip() and line[:1] in " \t":
            run = (run[0], end)
        elif run and not line.strip() and i + 1 < len(lines) and _LIST_ITEM.match(lines[i + 1]):
            continue
        elif run:
            spans.append(run)
            run = None
    if run:
        spans.append(run)
    return spans


def _merge(text: str, spans: list[tuple[int, int]], count_tokens: Callable[[str], int],
           min_tokens: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in spans:
        piece = text[a:b]
        if out:
            prev = text[out[-1][0]:out[-1][1]]
            if (prev.endswith(":") or CONTINUATION.match(piece)
                    or (_DISPLAY.fullmatch(prev) and _DISPLAY.fullmatch(piece))
                    or count_tokens(piece) < min_tokens or count_tokens(prev) < min_tokens):
                out[-1] = (out[-1][0], b)
                continue
        out.append((a, b))
    return out
