"""The memento grammar on text (DESIGN.md section 1), written and checked in one place:

    <think> ( <|block_start|> reasoning <|block_end|> <|summary_start|> memento <|summary_end|> )* </think> answer

`render_memento` writes it (the built-in task's traces, SFT rows assembled from sentences);
`check_format` reads it for the format reward and for SFT data validation. Strictness is a set of
options of that one parser, never a second parser: the reward lets the opening `<think>` sit in the
prompt (chat templates often put it there), and SFT data (`rl.data.sft_dataset`) adds
`require_think_start=True` on top of the reward's defaults, so SFT never teaches what the reward
punishes.

One linear pass over the marker positions, so megabyte responses cost milliseconds. The report lists
every rule broken and describes the first one in words; `format_reward` turns it into the configured
bonus or penalty.

The four memento delimiters are also defined in `rollout.layout` (rewards and rollout import neither
other); tests/rewards/test_format.py keeps the two definitions equal.
"""

import re
from dataclasses import dataclass
from typing import Literal, Sequence

BLOCK_START, BLOCK_END = "<|block_start|>", "<|block_end|>"
SUMMARY_START, SUMMARY_END = "<|summary_start|>", "<|summary_end|>"
MEMENTO_TOKENS = (BLOCK_START, BLOCK_END, SUMMARY_START, SUMMARY_END)
THINK_START, THINK_END = "<think>", "</think>"
MARKERS = (*MEMENTO_TOKENS, THINK_START, THINK_END)
_MARKER = re.compile("|".join(re.escape(m) for m in MARKERS))

Problem = Literal[
    "no_think_start",        # require_think_start and the response does not open with <think>
    "misplaced_think_start",  # <think> anywhere but as the first marker
    "no_blocks",             # fewer than `min_blocks` complete block + memento pairs
    "unclosed_block",        # a block not closed by <|block_end|> before another marker or the end
    "block_without_memento",  # <|block_end|> not followed by <|summary_start|>
    "unclosed_memento",      # a memento not closed by <|summary_end|>
    "empty_memento",
    "memento_without_block",  # <|summary_start|> with no block just before it
    "text_outside_blocks",   # reasoning text outside every block and memento (it is never evicted)
    "no_think_end",          # </think> missing (truncated) or repeated
    "marker_in_answer",      # a memento marker after </think>
    "no_answer",             # nothing after </think>
    "memento_too_long",      # total memento chars > max_memento_ratio * total block chars
]

# state -> {marker: next state}; any marker not listed is a problem named by _UNEXPECTED[state].
# "closed" is between a block's <|block_end|> and its memento's <|summary_start|>.
_NEXT = {
    "between": {BLOCK_START: "block", THINK_END: "answer"},
    "block": {BLOCK_END: "closed"},
    "closed": {SUMMARY_START: "memento"},
    "memento": {SUMMARY_END: "between"},
}
_UNEXPECTED: dict[str, Problem] = {"between": "memento_without_block", "block": "unclosed_block",
                                   "closed": "block_without_memento", "memento": "unclosed_memento"}
_EXPECTED = {"between": BLOCK_START, "block": BLOCK_END, "closed": SUMMARY_START, "memento": SUMMARY_END}


@dataclass(frozen=True)
class FormatReport:
    blocks: int  # complete block + memento pairs
    block_chars: int
    memento_chars: int
    problems: tuple[Problem, ...]  # sorted, without repeats; empty when well formed
    first_problem: str = ""  # the first problem in text order, in words; empty when well formed

    @property
    def well_formed(self) -> bool:
        return not self.problems

    @property
    def memento_ratio(self) -> float:
        """Memento length relative to block length (the paper's compression ratio, about 0.07-0.23)."""
        return self.memento_chars / self.block_chars if self.block_chars else 0.0


def render_memento(blocks: Sequence[str], mementos: Sequence[str], answer: str = "") -> str:
    """A memento-format response from block texts, their mementos and the answer.

    Whitespace (undocumented in the paper) follows the reference vLLM README's drawing: a newline
    after `<think>`, between a block and its memento, after each memento and after `</think>`.
    The result is well formed (`check_format`, strict or not) when every block and memento is
    non-empty and free of markers, the mementos are short enough and the answer is not blank.
    """
    if len(blocks) != len(mementos):
        raise ValueError(f"{len(blocks)} blocks but {len(mementos)} mementos")
    parts = [THINK_START, "\n"]
    for block, memento in zip(blocks, mementos):
        parts += [BLOCK_START, block, BLOCK_END, "\n", SUMMARY_START, memento, SUMMARY_END, "\n"]
    parts += [THINK_END, "\n", answer]
    return "".join(parts)


def check_format(response: str, min_blocks: int = 1, max_memento_ratio: float = 0.5, *,
                 require_think_start: bool = False) -> FormatReport:
    """Every rule of the grammar `response` breaks; the defaults are the format reward's.

    Args:
        min_blocks: fewer complete block + memento pairs is `no_blocks`.
        max_memento_ratio: more memento chars than this times the block chars is `memento_too_long`.
        require_think_start: the response itself must open with `<think>` (SFT data, where the
            prompt never holds it); otherwise an opening `<think>` is optional.
    """
    found: dict[Problem, str] = {}  # problem -> its first occurrence in words, in text order

    def flag(problem: Problem, detail: str) -> None:
        found.setdefault(problem, detail)

    if require_think_start and not response.lstrip().startswith(THINK_START):
        flag("no_think_start", f"response must start with {THINK_START}, starts with {response[:40]!r}")
    state, last_end, block_len, first_marker = "between", 0, 0, True
    blocks = block_chars = memento_chars = think_ends = 0
    for match in _MARKER.finditer(response):
        marker, text = match.group(), response[last_end:match.start()]
        last_end = match.end()
        think_ends += marker == THINK_END
        if state == "answer":
            if marker == THINK_END:
                flag("no_think_end", "")  # worded at the end, with the count
            else:
                flag("marker_in_answer", f"memento delimiter after {THINK_END}: {marker}")
            continue
        if state in ("between", "closed") and text.strip():
            flag("text_outside_blocks", f"text outside the blocks and mementos before block "
                                        f"{blocks + 1}'s {marker}: {text.strip()[:40]!r}")
        if marker == THINK_START and state == "between":
            if not first_marker:
                flag("misplaced_think_start", f"{THINK_START} only opens the response, found another "
                                              f"after {blocks} blocks")
            following = "between"
        else:
            following = _NEXT[state].get(marker)
        first_marker = False
        if following is None:
            expected = _EXPECTED[state]
            flag(_UNEXPECTED[state],
                 f"block {blocks + 1} is unfinished before {THINK_END} (expected {expected})"
                 if marker == THINK_END else f"block {blocks + 1}: expected {expected}, found {marker}")
            # resynchronise on the marker itself, so one slip is one problem, not a cascade
            following = {BLOCK_START: "block", SUMMARY_START: "memento", THINK_END: "answer"}.get(marker, "between")
        elif state == "block":
            block_len = len(text)
        elif state == "memento":
            if not text.strip():
                flag("empty_memento", f"block {blocks + 1}: empty memento")
            blocks, block_chars, memento_chars = blocks + 1, block_chars + block_len, memento_chars + len(text)
        state = following
    if state != "answer":
        flag("no_think_end", "")
    elif not response[last_end:].strip():
        flag("no_answer", f"nothing after {THINK_END}: the answer is missing")
    if "no_think_end" in found:
        found["no_think_end"] = f"response needs exactly one {THINK_END}, found {think_ends}"
    if blocks < min_blocks:
        flag("no_blocks", "response has no memento blocks" if not blocks else
             f"response has {blocks} memento blocks, fewer than min_blocks={min_blocks}")
    if block_chars and memento_chars > max_memento_ratio * block_chars:
        flag("memento_too_long", f"mementos hold {memento_chars} chars for {block_chars} chars of "
                                 f"blocks, more than max_memento_ratio={max_memento_ratio}")
    return FormatReport(blocks, block_chars, memento_chars, tuple(sorted(found)),
                        next(iter(found.values()), ""))


def format_reward(report: FormatReport, penalty: float, bonus: float) -> float:
    """Added to the task score: +bonus when well formed, -penalty otherwise."""
    return bonus if report.well_formed else -penalty
