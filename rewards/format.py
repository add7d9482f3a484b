"""Memento well-formedness of a response, checked on its text (DESIGN.md section 1):

    <think> ( <|block_start|> reasoning <|block_end|> <|summary_start|> memento <|summary_end|> )* </think> answer

The opening `<think>` is optional (chat templates often put it in the prompt). One linear pass over
the marker positions, so megabyte responses cost milliseconds. The report lists every rule broken;
`format_reward` turns it into the configured bonus or penalty.
"""

import re
from dataclasses import dataclass
from typing import Literal

BLOCK_START, BLOCK_END = "<|block_start|>", "<|block_end|>"
SUMMARY_START, SUMMARY_END = "<|summary_start|>", "<|summary_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_MARKER = re.compile("|".join(re.escape(m) for m in (BLOCK_START, BLOCK_END, SUMMARY_START, SUMMARY_END,
                                                     THINK_OPEN, THINK_CLOSE)))

Problem = Literal[
    "no_blocks",             # fewer than `min_blocks` complete block + memento pairs
    "unclosed_block",        # a block not closed by <|block_end|> before another marker or the end
    "block_without_memento",  # <|block_end|> not followed by <|summary_start|>
    "unclosed_memento",      # a memento not closed by <|summary_end|>
    "empty_memento",
    "memento_without_block",  # <|summary_start|> with no block just before it
    "text_outside_blocks",   # reasoning text between a memento and the next block
    "no_think_end",          # </think> missing (truncated) or repeated
    "marker_in_answer",      # a memento marker after </think>
    "no_answer",             # nothing after </think>
    "memento_too_long",      # total memento chars > max_memento_ratio * total block chars
]

# state -> {marker: next state}; any marker not listed is a problem named by _UNEXPECTED[state]
_NEXT = {
    "between": {BLOCK_START: "block", THINK_CLOSE: "answer", THINK_OPEN: "between"},
    "block": {BLOCK_END: "closed"},
    "closed": {SUMMARY_START: "memento"},
    "memento": {SUMMARY_END: "between"},
}
_UNEXPECTED: dict[str, Problem] = {"between": "memento_without_block", "block": "unclosed_block",
                                   "closed": "block_without_memento", "memento": "unclosed_memento"}


@dataclass(frozen=True)
class FormatReport:
    blocks: int  # complete block + memento pairs
    block_chars: int
    memento_chars: int
    problems: tuple[Problem, ...]  # sorted, without repeats; empty when well formed

    @property
    def well_formed(self) -> bool:
        return not self.problems

    @property
    def memento_ratio(self) -> float:
        """Memento length relative to block length (the paper's compression ratio, about 0.07-0.23)."""
        return self.memento_chars / self.block_chars if self.block_chars else 0.0


def check_format(response: str, min_blocks: int = 1, max_memento_ratio: float = 0.5) -> FormatReport:
    problems: set[Problem] = set()
    state, last_end, block_len = "between", 0, 0
    blocks = block_chars = memento_chars = 0
    for match in _MARKER.finditer(response):
        marker, text = match.group(), response[last_end:match.start()]
        last_end = match.end()
        if state == "answer":
            problems.add("no_think_end" if marker == THINK_CLOSE else "marker_in_answer")
            continue
        if state == "between" and text.strip():
            problems.add("text_outside_blocks")
        following = _NEXT[state].get(marker)
        if following is None:
            problems.add(_UNEXPECTED[state])
            # resynchronise on the marker itself, so one slip is one problem, not a cascade
            following = {BLOCK_START: "block", SUMMARY_START: "memento", THINK_CLOSE: "answer"}.get(marker, "between")
        elif state == "block":
            block_len = len(text)
        elif state == "memento":
            if not text.strip():
                problems.add("empty_memento")
            blocks, block_chars, memento_chars = blocks + 1, block_chars + block_len, memento_chars + len(text)
        state = following
    if state != "answer":
        problems.add("no_think_end")
    elif not response[last_end:].strip():
        problems.add("no_answer")
    if blocks < min_blocks:
        problems.add("no_blocks")
    if block_chars and memento_chars > max_memento_ratio * block_chars:
        problems.add("memento_too_long")
    return FormatReport(blocks, block_chars, memento_chars, tuple(sorted(problems)))


def format_reward(report: FormatReport, penalty: float, bonus: float) -> float:
    """Added to the task score: +bonus when well formed, -penalty otherwise."""
    return bonus if report.well_formed else -penalty
